"""Run one training as N processes on this machine: `python -m dfjax.launch --processes=N -- ARGS`.

  python -m dfjax.launch --processes=2 --devices_per_process=2 -- \
      --config=configs/toy.py --workdir=runs/toy2

starts N `python -m dfjax.main ARGS` processes that join one run through JAX's distributed
runtime (coordinator on a free localhost port; see dfjax.train.distributed), as the hosts of
a pod would. `--devices_per_process` gives each process that many CPU devices, which is how a
pod is rehearsed (and tested) on one machine.

Process 0's output is shown as it comes; every process's output is also written to
OUTPUT_DIR/process_<i>.stdout and .stderr. SIGTERM or SIGINT (Ctrl-C) is passed on to every
process as SIGTERM: they save a checkpoint at one agreed step and exit 0; running the same
command again resumes. A second signal kills them. If a process fails, the others are
stopped by JAX's distributed service (within `--heartbeat_timeout` seconds), or killed by the
launcher after that bound plus `GRACE_SECONDS`; the launcher then exits non-zero with one
line, `error: process I ...`.

Data flow: the top, beside dfjax.main (which it runs in subprocesses; it imports only the
names of the settings from train.distributed and the CLI helpers).
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from dfjax import cli
from dfjax.errors import UserError, one_line
from dfjax.train import distributed

FLAGS = flags.FLAGS
# Seconds the launcher waits, beyond the heartbeat timeout, for the other processes to end
# after one failed, before it kills them.
GRACE_SECONDS = 30
_CHILD_FLAGS = ("coordinator_address", "num_processes", "process_id", "heartbeat_timeout")


def define_flags():
  flags.DEFINE_integer("processes", None, "Number of processes to start (>= 1).")
  flags.DEFINE_integer("devices_per_process", None,
                       "CPU devices per process (sets JAX_PLATFORMS=cpu); default: the "
                       "platform's own devices.")
  flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
  flags.DEFINE_integer("heartbeat_timeout", None,
                       "Seconds before a silent process counts as dead (default "
                       f"{distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS}).")
  flags.DEFINE_string("output_dir", None, "Where each process's output is written "
                      "(default: a new temporary directory).")


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def child_environment(environ, *, process_id: int, num_processes: int, address: str,
                      devices_per_process: int | None,
                      heartbeat_timeout: int | None) -> dict[str, str]:
  """The environment of process `process_id`: the cluster settings and its CPU devices."""
  env = dict(environ)
  env[distributed.ENV_COORDINATOR_ADDRESS] = address
  env[distributed.ENV_NUM_PROCESSES] = str(num_processes)
  env[distributed.ENV_PROCESS_ID] = str(process_id)
  if heartbeat_timeout is not None:
    env[distributed.ENV_HEARTBEAT_TIMEOUT] = str(heartbeat_timeout)
  if devices_per_process is not None:
    env["JAX_PLATFORMS"] = "cpu"
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                       env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = (f"{xla_flags} "
                        f"--xla_force_host_platform_device_count={devices_per_process}").strip()
  return env


def describe_status(returncode: int) -> str:
  """'exited with status 2' or 'was killed by SIGKILL'."""
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with status {returncode}"


@dataclasses.dataclass
class Child:
  """One `dfjax.main` process and the threads copying its output."""
  index: int
  process: subprocess.Popen
  log_paths: tuple[str, str]
  last_error_line: str = ""
  threads: list = dataclasses.field(default_factory=list)


class Launch:
  """N children, their output, the signals passed on to them, and how they ended."""

  def __init__(self, args: list[str], *, num_processes: int, log_dir: str, env_for):
    self.log_dir = log_dir
    self.echo = threading.Event()   # set while process 0's output is shown
    self.echo.set()
    self.signals_received = 0
    self.children = []
    for index in range(num_processes):
      process = subprocess.Popen(
          [sys.executable, "-m", "dfjax.main", *args], env=env_for(index),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
          start_new_session=True)  # a terminal's Ctrl-C reaches the launcher only
      paths = tuple(os.path.join(log_dir, f"process_{index}.{name}")
                    for name in ("stdout", "stderr"))
      child = Child(index, process, paths)
      for stream, path, target in ((process.stdout, paths[0], sys.stdout),
                                   (process.stderr, paths[1], sys.stderr)):
        thread = threading.Thread(target=self._copy, args=(child, stream, path, target),
                                  daemon=True)
        thread.start()
        child.threads.append(thread)
      self.children.append(child)

  def _copy(self, child: Child, stream, path: str, target) -> None:
    """Copies one output stream of a child to its log file (and process 0's to ours)."""
    with open(path, "w") as log:
      for line in stream:
        log.write(line)
        log.flush()
        if line.startswith("error: "):
          child.last_error_line = line[len("error: "):].strip()
          continue  # the launcher's own line reports it
        if child.index == 0 and self.echo.is_set() and not line.startswith("[Gloo]"):
          target.write(line)
          target.flush()

  def forward(self, signum, frame) -> None:
    """SIGTERM/SIGINT: the children save and stop (SIGTERM); a second signal kills them."""
    del frame
    self.signals_received += 1
    for child in self.children:
      if child.process.poll() is None:
        os.kill(child.process.pid,
                signal.SIGTERM if self.signals_received == 1 else signal.SIGKILL)
    del signum

  def wait(self, *, grace_seconds: float) -> str | None:
    """Waits for every child; returns None when all exited 0, else the one-line report."""
    first_failure, failed_at = None, None
    while any(child.process.poll() is None for child in self.children):
      for child in self.children:
        if first_failure is None and child.process.poll() not in (None, 0):
          first_failure, failed_at = child, time.monotonic()
          self.echo.clear()
      if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
        for child in self.children:
          if child.process.poll() is None:
            child.process.kill()
      time.sleep(0.1)
    for child in self.children:
      for thread in child.threads:
        thread.join(timeout=5)
    if first_failure is None:
      first_failure = next((c for c in self.children if c.process.returncode != 0), None)
    if first_failure is None:
      return None
    others = [f"process {c.index} {describe_status(c.process.returncode)}"
              for c in self.children if c is not first_failure and c.process.returncode != 0]
    report = f"process {first_failure.index} {describe_status(first_failure.process.returncode)}"
    if first_failure.last_error_line:
      report += f" ({first_failure.last_error_line})"
    if others:
      report += "; then " + ", ".join(others)
    return f"{report}; the output of every process is in {self.log_dir}"


def _check_arguments(args: list[str]) -> None:
  if FLAGS.processes is None or FLAGS.processes < 1:
    raise UserError("--processes=N (N >= 1) is required, e.g. python -m dfjax.launch "
                    "--processes=2 -- --config=configs/toy.py --workdir=runs/toy")
  if FLAGS.devices_per_process is not None and FLAGS.devices_per_process < 1:
    raise UserError(f"--devices_per_process must be >= 1, got {FLAGS.devices_per_process}")
  if not args:
    raise UserError("give the training flags after --, e.g. -- --config=configs/toy.py "
                    "--workdir=runs/toy")
  for arg in args:
    name = arg.lstrip("-").split("=", 1)[0]
    if arg.startswith("-") and name in _CHILD_FLAGS:
      raise UserError(f"{arg.split('=', 1)[0]} is set by the launcher; give it to "
                      "dfjax.launch, not after --")


def main(argv):
  with cli.user_errors():
    args = argv[1:]
    _check_arguments(args)
    address = f"127.0.0.1:{FLAGS.port or free_port()}"
    log_dir = FLAGS.output_dir or tempfile.mkdtemp(prefix="dfjax-launch-")
    os.makedirs(log_dir, exist_ok=True)
    env_for = lambda index: child_environment(
        os.environ, process_id=index, num_processes=FLAGS.processes, address=address,
        devices_per_process=FLAGS.devices_per_process,
        heartbeat_timeout=FLAGS.heartbeat_timeout)
    launch = Launch(args, num_processes=FLAGS.processes, log_dir=log_dir, env_for=env_for)
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, launch.forward)
    heartbeat = FLAGS.heartbeat_timeout or distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
    report = launch.wait(grace_seconds=heartbeat + GRACE_SECONDS)
    if report is not None:
      print(f"error: {one_line(report)}", file=sys.stderr, flush=True)
      codes = [c.process.returncode for c in launch.children if c.process.returncode > 0]
      sys.exit(codes[0] if codes else 1)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
