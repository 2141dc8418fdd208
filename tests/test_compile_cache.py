"""The persistent compilation cache: where it goes, how it is turned off, and that it fills."""
import os
import subprocess
import sys

import jax

from dfjax.train import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("DFJAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  assert compile_cache.cache_directory() == str(tmp_path / "cache" / compile_cache.CACHE_SUBDIR)
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "elsewhere"))
  assert compile_cache.cache_directory() == str(tmp_path / "elsewhere")
  for off in ("0", "off", "OFF"):
    monkeypatch.setenv(compile_cache.ENV_VAR, off)
    assert compile_cache.cache_directory() is None


def test_a_folder_set_through_jax_is_kept(tmp_path, monkeypatch):
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "users"))
  try:
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "ours"))
    assert compile_cache.enable_compilation_cache() == str(tmp_path / "users")
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)


def test_a_compiled_function_lands_in_the_cache_and_a_second_process_reads_it(tmp_path):
  program = (
      "import jax, jax.numpy as jnp\n"
      "from jax._src import monitoring\n"
      "from dfjax.train import compile_cache\n"
      "hits = []\n"
      "monitoring.register_event_listener(\n"
      "    lambda event, **kw: hits.append(event) if event.endswith('cache_hits') else None)\n"
      "print(compile_cache.enable_compilation_cache())\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.ones(3)).block_until_ready()\n"
      "print(len(hits))\n")
  env = dict(os.environ, DFJAX_CACHE_DIR=str(tmp_path), PYTHONPATH=ROOT)
  env.pop(compile_cache.ENV_VAR, None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = [subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                         text=True, check=True).stdout.split() for _ in range(2)]
  folder = tmp_path / compile_cache.CACHE_SUBDIR
  assert runs[0][0] == str(folder) and os.listdir(folder)
  assert int(runs[0][1]) == 0 and int(runs[1][1]) >= 1  # the second process hit the cache
