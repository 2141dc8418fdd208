"""Several processes as one run: joining JAX's distributed runtime, and who writes what.

A run spans several processes on a TPU pod slice (one per host), a GPU cluster (one per GPU
or per node, under SLURM or MPI), or one machine (`python -m dfjax.launch`, and the tests).
Every process runs the same command; after `initialize` the train step's mesh holds every
process's devices, so the step is one global data-parallel computation (`train.step`).

Where the cluster is described:
* TPU pods, SLURM and Open MPI: JAX detects it; ask for it with `--config.multihost=True` or
  `DFJAX_MULTIHOST=1`.
* Anywhere else: the coordinator's `host:port` (`--coordinator_address` or JAX's own
  `JAX_COORDINATOR_ADDRESS`), the number of processes (`--num_processes` or
  `DFJAX_NUM_PROCESSES`) and this process's index (`--process_id` or `DFJAX_PROCESS_ID`).
  A flag wins over the environment.

Faults: JAX's distributed service counts a process dead when its heartbeats stop for
`heartbeat_timeout_seconds` (`--heartbeat_timeout` or `DFJAX_HEARTBEAT_TIMEOUT`), and then
terminates every other process (SIGABRT, with its own message) instead of letting them wait
in a collective for ever. A process whose coordinator (process 0) dies is terminated at once.

Rendezvous: on CPU devices every new group of cross-process collectives opens a gloo context,
and gloo gives the processes a fixed 30 s to meet there; a process still compiling when the
other one arrives (one host busier than another) would fail the run. So every first
collective of a kind follows `barrier` (the distributed service's own barrier, which waits as
long as the processes need and fails at once when one of them dies).

JAX is imported inside the functions, so that the entry point can read the settings before
JAX loads.

Data flow: the bottom of train (JAX only) -> train.checkpoint, train.loop, dfjax.main.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Mapping

from dfjax.errors import UserError

ENV_MULTIHOST = "DFJAX_MULTIHOST"
ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"  # JAX's own name
ENV_NUM_PROCESSES = "DFJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DFJAX_PROCESS_ID"
ENV_HEARTBEAT_TIMEOUT = "DFJAX_HEARTBEAT_TIMEOUT"
# Seconds without heartbeats before a process counts as dead and the others are stopped.
# JAX's default (100 s) is kept: a shorter bound risks stopping a healthy run whose host is
# briefly overloaded.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 100


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process joins the run (None fields: JAX detects them on pods and clusters).

  Attributes:
    coordinator_address: "host:port" of process 0's coordination service.
    num_processes: how many processes take part.
    process_id: this process's index in [0, num_processes).
    heartbeat_timeout_seconds: see the module docstring.
  """
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS


def _int_setting(flag_name: str, flag_value, env_name: str, environ) -> int | None:
  if flag_value is not None:
    return int(flag_value)
  text = environ.get(env_name, "").strip()
  if not text:
    return None
  try:
    return int(text)
  except ValueError:
    raise UserError(f"{env_name}={text!r} is not an integer (or pass --{flag_name})") from None


def cluster_from(*, multihost: bool = False, coordinator_address: str | None = None,
                 num_processes: int | None = None, process_id: int | None = None,
                 heartbeat_timeout_seconds: int | None = None,
                 environ: Mapping[str, str] | None = None) -> Cluster | None:
  """The Cluster the flags and the environment ask for, or None for a single process.

  Raises:
    UserError: a partial or inconsistent description (a process id without a count, an id
      out of range, a count without a coordinator address).
  """
  environ = os.environ if environ is None else environ
  address = coordinator_address or environ.get(ENV_COORDINATOR_ADDRESS) or None
  count = _int_setting("num_processes", num_processes, ENV_NUM_PROCESSES, environ)
  index = _int_setting("process_id", process_id, ENV_PROCESS_ID, environ)
  heartbeat = _int_setting("heartbeat_timeout", heartbeat_timeout_seconds,
                           ENV_HEARTBEAT_TIMEOUT, environ)
  multihost = multihost or environ.get(ENV_MULTIHOST, "") == "1"
  if not (multihost or address or count is not None or index is not None):
    return None
  if heartbeat is not None and heartbeat <= 0:
    raise UserError(f"the heartbeat timeout must be a positive number of seconds, got {heartbeat}")
  if (count is None) != (index is None):
    raise UserError("give both the number of processes and this process's id "
                    f"(--num_processes/{ENV_NUM_PROCESSES}, --process_id/{ENV_PROCESS_ID}), "
                    "or neither, so that JAX detects them")
  if count is not None:
    if count < 1 or not 0 <= index < count:
      raise UserError(f"process id {index} is not in [0, {count}) processes")
    if not address:
      raise UserError(f"{count} processes need the coordinator's host:port "
                      f"(--coordinator_address or {ENV_COORDINATOR_ADDRESS})")
  return Cluster(coordinator_address=address, num_processes=count, process_id=index,
                 heartbeat_timeout_seconds=heartbeat or DEFAULT_HEARTBEAT_TIMEOUT_SECONDS)


def initialize(cluster: Cluster) -> None:
  """Joins the distributed runtime; call before any JAX computation.

  Cross-process collectives on CPU devices use gloo (the default, none, cannot span
  processes); the setting concerns the CPU backend only, so it is harmless on TPUs and GPUs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=cluster.coordinator_address, num_processes=cluster.num_processes,
      process_id=cluster.process_id,
      heartbeat_timeout_seconds=cluster.heartbeat_timeout_seconds)


# How long `barrier` waits for the slowest process (e.g. still compiling the step).
BARRIER_TIMEOUT_SECONDS = 3600
_barriers_called = 0   # the same count on every process: each one calls the same barriers


def barrier(name: str, *, timeout_seconds: int = BARRIER_TIMEOUT_SECONDS) -> None:
  """Waits until every process has called `barrier(name)`; a no-op on one process.

  Uses the distributed service's barrier (no device collective, so no gloo context); every
  process must call the same barriers in the same order.

  Raises:
    UserError: a process did not arrive within `timeout_seconds`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  # The client that `jax.distributed.initialize` made; JAX has no public handle on it (orbax
  # reaches it the same way for its own barriers).
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  global _barriers_called
  _barriers_called += 1
  try:
    jax_distributed.global_state.client.wait_at_barrier(f"dfjax {_barriers_called}: {name}",
                                                        timeout_seconds * 1000)
  except jax.errors.JaxRuntimeError as error:
    if "DEADLINE_EXCEEDED" not in str(error):
      raise
    raise UserError(f"not every process reached {name} within {timeout_seconds} s; see the "
                    "other processes' output for why") from None


@contextlib.contextmanager
def peer_loss_as_one_line():
  """Turns a cross-process exchange that failed because another process of the run died
  (gloo: "Connection closed by peer") into a one-line UserError instead of a traceback; the
  distributed service or the launcher stops this process soon after anyway."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    yield
  except jax.errors.JaxRuntimeError as error:
    if jax.process_count() == 1 or "by peer" not in str(error):
      raise
    raise UserError("another process of this run stopped during a cross-process exchange (its "
                    "output says why); run the same command to resume from the last "
                    "checkpoint") from None


def is_primary() -> bool:
  """Whether this process writes the files one process writes (config, metrics, exports)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def assert_same_everywhere(value: int, what: str) -> None:
  """Raises UserError unless every process holds the same integer (a collective: every
  process must call it). A no-op on one process."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  barrier(f"the check of {what}")
  values = np.asarray(multihost_utils.process_allgather(np.int64(value))).reshape(-1)
  if len(set(values.tolist())) != 1:
    raise UserError(f"the processes disagree on {what}: {values.tolist()} (by process); "
                    "every process must see the same --workdir")
