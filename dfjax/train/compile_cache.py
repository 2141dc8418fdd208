"""JAX's persistent compilation cache, on by default: a second run compiles in seconds.

Compiling the train step takes tens of seconds on a CPU, and longer with a Stable
Diffusion-sized prior; the export's renders compile again. JAX can keep compiled executables
on disk (`jax_compilation_cache_dir`), keyed by the computation, the devices and the flags, so
the same command run again, or a run of the same config in another workdir, loads them
instead. dfjax turns the cache on under its cache folder (`CACHE_SUBDIR` inside
`dfjax.toy.banks.cache_dir()`, i.e. $DFJAX_CACHE_DIR or ~/.cache/dfjax).

The environment variable DFJAX_COMPILATION_CACHE chooses: unset for the default folder, a
path for another folder (a shared disk, or a gs:// bucket on TPU VMs), "0" or "off" for no
cache. A cache folder set through JAX's own JAX_COMPILATION_CACHE_DIR is left as it is.

Data flow: toy.banks (the cache folder) -> here -> train.loop, before anything is compiled.
"""
import os

import jax

from dfjax.toy import banks as toy_banks

CACHE_SUBDIR = "jax_compilation_cache"
ENV_VAR = "DFJAX_COMPILATION_CACHE"


def cache_directory() -> str | None:
  """The folder dfjax's runs cache compiled executables in, or None when turned off."""
  choice = os.environ.get(ENV_VAR, "").strip()
  if choice.lower() in ("0", "off", "false", "no"):
    return None
  return choice or os.path.join(toy_banks.cache_dir(), CACHE_SUBDIR)


def enable_compilation_cache() -> str | None:
  """Points JAX's persistent compilation cache at `cache_directory()` unless the user already
  set one. Returns the folder in use (None: no cache)."""
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  directory = cache_directory()
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", directory)
  return directory
