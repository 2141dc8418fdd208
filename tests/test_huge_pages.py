"""The command lines restart themselves with glibc's huge-page tunable (dfjax.cli)."""
import os
import subprocess
import sys
import textwrap

import pytest

from dfjax import cli

TUNABLE = cli.HUGE_PAGES_TUNABLE


def test_the_tunable_is_added_appended_or_left_alone():
  assert cli.huge_pages_environment({}, "linux")["GLIBC_TUNABLES"] == TUNABLE
  assert (cli.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux")
          ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + TUNABLE)
  assert cli.huge_pages_environment({"GLIBC_TUNABLES": TUNABLE}, "linux") is None
  assert cli.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux") is None
  assert cli.huge_pages_environment({"DFJAX_HUGE_PAGES": "0"}, "linux") is None
  assert cli.huge_pages_environment({}, "darwin") is None
  assert cli.huge_pages_environment({"PATH": "/bin"}, "linux")["PATH"] == "/bin"


@pytest.mark.parametrize("orig_argv, argv, expected", [
    (["python", "-m", "dfjax.main", "--a=1"], ["/x/dfjax/main.py", "--a=1"], True),
    (["python", "-m", "dfjax.main"], ["/x/dfjax/main.py"], True),
    (["python", "-X", "importtime", "s.py", "--b"], ["s.py", "--b"], True),
    # A notebook kernel that ran the module: restarting would replace the kernel.
    (["python", "-m", "ipykernel_launcher", "-f", "k.json"], ["main.py"], False),
    (["python", "-m", "ipykernel_launcher", "-f", "k.json"], ["main.py", "k.json"], False),
    (["python", "-c", "print()"], ["-c"], False),
])
def test_only_a_process_started_as_the_command_restarts(orig_argv, argv, expected):
  assert cli.started_as_command(orig_argv, argv) is expected


SCRIPT = textwrap.dedent("""
    import ctypes, os, sys
    from dfjax import cli

    def main(argv):
      libc = ctypes.CDLL(None)  # plain malloc, as XLA's buffers (numpy madvises on its own)
      libc.malloc.restype = ctypes.c_void_p
      block = libc.malloc(64 << 20)  # 64 MiB: glibc mmaps it
      ctypes.memset(block, 1, 64 << 20)
      with open("/proc/self/smaps_rollup") as f:
        huge = [l for l in f if l.startswith("AnonHugePages:")]
      print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), huge[0].split()[1] if huge else 0,
            " ".join(argv[1:]), ctypes.cast(block, ctypes.POINTER(ctypes.c_uint8))[0])

    cli.run(main)
""")


def _run(tmp_path, **environment):
  script = tmp_path / "command.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "DFJAX_HUGE_PAGES")}
  env.update(environment, PYTHONPATH=os.path.dirname(os.path.dirname(cli.__file__)))
  out = subprocess.run([sys.executable, str(script), "--", "x", "y z"], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[1:] if out[1].startswith("glibc") else [""] + out[1:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables are Linux's")
def test_a_command_restarts_once_with_huge_pages_and_its_arguments(tmp_path):
  tunables, huge_kib, *rest = _run(tmp_path)
  assert tunables == TUNABLE
  assert rest == ["x", "y", "z", "1"]  # the arguments survive the restart unchanged
  opted_out, opted_out_huge_kib, *_ = _run(tmp_path, DFJAX_HUGE_PAGES="0")
  assert opted_out == ""
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      mode = f.read()
  except OSError:
    mode = "[never]"
  if "[never]" in mode:
    pytest.skip("this kernel has transparent huge pages off: only the restart is checked")
  # With THP in "madvise" mode only the tunable gives huge pages; in "always" both have them.
  assert int(huge_kib) >= 32 << 10
  if "[madvise]" in mode:
    assert int(opted_out_huge_kib) < 32 << 10
