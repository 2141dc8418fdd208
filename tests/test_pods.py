"""A pod rehearsed on one machine: `python -m dfjax.launch` with 2 processes x 2 CPU devices.

The runs are tiny (the random 8x8 image bank and the field of test_cli.py), on CPU devices
forced with XLA_FLAGS, their processes joined by JAX's distributed runtime on a free
localhost port, with gloo for the cross-process collectives. Twelve processes in two waves
(five, then seven, most of them loading the first wave's compiled steps from the cache), for
the wall-clock time on two cores:
1. an uninterrupted 1 process x 4 devices run (`python -m dfjax.main`, the reference); a
   2 processes x 2 devices run (the launcher) sent SIGTERM (to process 1 only) after its
   first checkpoint; and a 2 x 2 run whose process 1 is SIGKILLed;
2. the SIGTERMed run's command again (it resumes and finishes); its checkpoint before that
   resumed on 1 x 4; the 1 x 4 run's checkpoint at step RESUME_FROM resumed on 2 x 2; and an
   uninterrupted 2 x 2 run, which the resumed one must equal bit for bit.

Tolerance between topologies: the views are the same (keys from (seed, step, global device
index), and the mesh orders devices alike: process 0's, then process 1's), but the mean over
devices is an all-reduce whose summation order differs between gloo (two processes) and
XLA's in-process all-reduce (one), so results agree to float32 rounding, not bit for bit:
relative 1e-6 on the first step's metrics and on the timestep drawn at every step, and 1e-3
(RTOL) over STEPS Adam steps (measured: about 1e-6 relative over the first 6 steps). Runs on
the same topology are compared bit for bit.
"""
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_cli import write_tiny_bank, restore_state, metrics_by_step, complete_steps

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
CHECKPOINT_EVERY = 4
RESUME_FROM = 8          # the topology changes resume from this checkpoint
PROMPT = "a thing"
TIMEOUT = 600            # seconds for any one command; a hang fails instead of blocking
HEARTBEAT_SECONDS = 10   # the SIGKILL run's bound on detecting a dead process
GRACE_SECONDS = 30       # dfjax.launch.GRACE_SECONDS
RTOL = 1e-3


def tiny_flags(bank: str, workdir: str, steps: int = STEPS) -> list[str]:
  return [f"--config={os.path.join(REPO_ROOT, 'configs', 'bank.py')}",
          f"--config.prior.bank={bank}", f"--config.prompt={PROMPT}",
          "--config.field.num_blocks=1", "--config.field.hidden_units=16",
          "--config.field.max_deg=4", "--config.render.num_samples=8",
          f"--config.train.steps={steps}", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.keep_checkpoints=100", "--config.train.log_every=1",
          "--config.train.image_every=0", "--config.export.at_end=False",
          f"--workdir={workdir}"]


@dataclasses.dataclass
class Job:
  process: subprocess.Popen
  name: str
  root: str
  ended_at: float | None = None

  def wait(self) -> "Job":
    try:
      self.process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      self.process.kill()
      pytest.fail(f"{self.name} timed out after {TIMEOUT} s")
    if self.ended_at is None:
      self.ended_at = time.monotonic()
    return self

  @property
  def returncode(self) -> int:
    return self.process.returncode

  def output(self, stream: str) -> str:
    with open(os.path.join(self.root, f"{self.name}.{stream}")) as f:
      return f.read()

  def children(self) -> dict[int, int]:
    """{process id in the run: pid} of the launcher's children."""
    path = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
    found = {}
    with open(path) as f:
      for pid in map(int, f.read().split()):
        with open(f"/proc/{pid}/environ", "rb") as env:
          variables = dict(item.split(b"=", 1) for item in env.read().split(b"\0") if b"=" in item)
        found[int(variables[b"DFJAX_PROCESS_ID"])] = pid
    return found


class Runs:
  """Starts `dfjax.main` on one process or `dfjax.launch` on two, offline, on CPU devices,
  sharing a persistent compilation cache."""

  def __init__(self, root):
    self.root = str(root)
    self.bank = self.path("bank.npz")
    write_tiny_bank(self.bank)
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
                    JAX_COMPILATION_CACHE_DIR=self.path("jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       self.env.get("XLA_FLAGS", ""))
    self.env["XLA_FLAGS"] = f"{xla_flags} --xla_backend_optimization_level=0".strip()
    self.jobs = []

  def path(self, name: str) -> str:
    return os.path.join(self.root, name)

  def _start(self, name: str, command: list[str], env: dict) -> Job:
    with open(self.path(f"{name}.stdout"), "w") as out, open(self.path(f"{name}.stderr"),
                                                               "w") as err:
      process = subprocess.Popen([sys.executable, "-m", *command], cwd=REPO_ROOT, env=env,
                                 stdout=out, stderr=err)
    self.jobs.append(Job(process, name, self.root))
    return self.jobs[-1]

  def single(self, name: str, devices: int, *, steps: int = STEPS) -> Job:
    """One process with `devices` CPU devices."""
    env = dict(self.env, XLA_FLAGS=f"{self.env['XLA_FLAGS']} "
               f"--xla_force_host_platform_device_count={devices}")
    return self._start(name, ["dfjax.main", *tiny_flags(self.bank, self.path(name), steps)],
                       env)

  def pod(self, name: str, *, workdir: str | None = None, steps: int = STEPS,
          launcher_flags: tuple[str, ...] = ()) -> Job:
    """2 processes x 2 CPU devices through the launcher."""
    workdir = self.path(workdir or name)
    return self._start(name, ["dfjax.launch", "--processes=2", "--devices_per_process=2",
                              f"--output_dir={self.path(name + '.processes')}",
                              *launcher_flags, "--",
                              *tiny_flags(self.bank, workdir, steps)], self.env)

  def copy_until(self, source: str, name: str, step: int) -> str:
    """A copy of run `source` with only its checkpoints up to `step`."""
    destination = self.path(name)
    shutil.copytree(self.path(source), destination)
    for later in [s for s in complete_steps(destination) if s > step]:
      shutil.rmtree(os.path.join(destination, "checkpoints", str(later)))
    return destination

  def close(self) -> None:
    for job in self.jobs:
      if job.process.poll() is None:
        job.process.kill()
        job.process.wait()


def wait_for_checkpoint(job: Job, workdir: str) -> int:
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    if complete_steps(workdir):
      return complete_steps(workdir)[0]
    if job.process.poll() is not None:
      pytest.fail(f"{job.name} ended (status {job.returncode}) before its first checkpoint:\n"
                  f"{job.output('stderr')[-2000:]}")
    time.sleep(0.01)
  pytest.fail(f"no checkpoint in {workdir} within {TIMEOUT} s")


def assert_succeeded(job: Job) -> None:
  job.wait()
  assert job.returncode == 0, f"{job.name}: status {job.returncode}\n{job.output('stderr')[-3000:]}"


def assert_states_close(actual, expected, *, rtol: float) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    got, want = np.asarray(got), np.asarray(want)
    if rtol == 0:
      assert got.tobytes() == want.tobytes()
    else:
      scale = np.max(np.abs(want)) + 1e-6
      np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  started = Runs(tmp_path_factory.mktemp("pods"))
  yield started
  started.close()


@dataclasses.dataclass
class Wave1:
  single: Job
  terminated: Job
  terminated_after: int  # the first checkpoint, seen before SIGTERM was sent
  killed: Job
  killed_at: float


@pytest.fixture(scope="module")
def wave1(runs):
  single = runs.single("single4", devices=4)
  terminated = runs.pod("terminated")
  killed = runs.pod("killed", steps=100000,
                    launcher_flags=(f"--heartbeat_timeout={HEARTBEAT_SECONDS}",))
  first = wait_for_checkpoint(terminated, runs.path("terminated"))
  assert terminated.process.poll() is None, "the run ended before SIGTERM"
  os.kill(terminated.children()[1], signal.SIGTERM)   # one process only
  wait_for_checkpoint(killed, runs.path("killed"))
  os.kill(killed.children()[1], signal.SIGKILL)
  killed_at = time.monotonic()
  killed.wait()                   # first: its end time is the bound's measure
  for job in (single, terminated):
    job.wait()
  return Wave1(single, terminated, first, killed, killed_at)


@dataclasses.dataclass
class Wave2:
  stopped_at: int        # the SIGTERMed run's last checkpoint, where on_single4 resumes
  resumed: Job
  on_single4: Job
  on_pod: Job
  pod: Job


@pytest.fixture(scope="module")
def wave2(runs, wave1):
  assert_succeeded(wave1.single)
  assert_succeeded(wave1.terminated)
  stopped_at = complete_steps(runs.path("terminated"))[-1]
  runs.copy_until("terminated", "on_single4", stopped_at)
  runs.copy_until("single4", "on_pod", RESUME_FROM)
  resumed = runs.pod("resumed", workdir="terminated")   # the same command as before
  on_single4 = runs.single("on_single4", devices=4)
  on_pod = runs.pod("on_pod")
  pod = runs.pod("pod")
  return Wave2(stopped_at, resumed.wait(), on_single4.wait(), on_pod.wait(), pod.wait())


def assert_matches_single4(runs, name: str, *, first_step: int = 1) -> None:
  """Run `name` (steps first_step..STEPS) computed what the 1 x 4 run did, to RTOL."""
  got, want = metrics_by_step(runs.path(name)), metrics_by_step(runs.path("single4"))
  assert sorted(want) == list(range(1, STEPS + 1))
  assert list(range(first_step, STEPS + 1)) == [s for s in sorted(got) if s >= first_step]
  for step in range(first_step, STEPS + 1):
    assert got[step]["devices"] == want[step]["devices"] == 4
    # The same views: the same timestep draw on every step.
    assert got[step]["t"] == pytest.approx(want[step]["t"], rel=1e-6), step
    for key in ("loss", "loss_sds", "grad_norm", "accumulated_alpha"):
      assert got[step][key] == pytest.approx(want[step][key], rel=RTOL, abs=1e-5), (step, key)
  assert_states_close(restore_state(runs.path(name), STEPS),
                      restore_state(runs.path("single4"), STEPS), rtol=RTOL)


def test_sigterm_to_one_process_saves_on_both_and_the_same_command_resumes(runs, wave1, wave2):
  assert_succeeded(wave1.terminated)          # the launcher: both processes exited 0
  logs = runs.path("terminated.processes")
  stopped = [re.search(r"stopped by preemption at step (\d+)",
                       open(os.path.join(logs, f"process_{i}.stdout")).read()) for i in (0, 1)]
  assert all(stopped), [open(os.path.join(logs, f"process_{i}.stdout")).read() for i in (0, 1)]
  step = int(stopped[0].group(1))
  assert int(stopped[1].group(1)) == step == wave2.stopped_at
  assert wave1.terminated_after <= step < STEPS
  assert_succeeded(wave2.resumed)
  assert f"resumed from step {step}" in wave2.resumed.output("stdout")
  # Same topology, the same steps: bit for bit the uninterrupted run's.
  assert_succeeded(wave2.pod)
  assert_states_close(restore_state(runs.path("terminated"), STEPS),
                      restore_state(runs.path("pod"), STEPS), rtol=0)
  # Its metrics: steps 1..stop from the first command, the rest from the second.
  resumed, reference = metrics_by_step(runs.path("terminated")), metrics_by_step(runs.path("pod"))
  assert sorted(resumed) == sorted(reference) == list(range(1, STEPS + 1))
  assert all(resumed[s]["loss"] == reference[s]["loss"] for s in reference)


def test_two_processes_match_one_process_with_as_many_devices(runs, wave1, wave2):
  assert_succeeded(wave2.resumed)
  assert_matches_single4(runs, "terminated")
  pod, single = metrics_by_step(runs.path("terminated")), metrics_by_step(runs.path("single4"))
  for key in ("loss", "loss_sds", "grad_norm"):
    assert pod[1][key] == pytest.approx(single[1][key], rel=1e-6), key
  # Process 0 alone wrote the metrics (each step once) and the launcher showed its lines.
  assert wave2.resumed.output("stderr").count(f"step {STEPS}/{STEPS} ") == 1
  assert "[Gloo]" not in wave2.resumed.output("stdout")


def test_sigkill_of_one_process_stops_the_other_within_the_bound(wave1):
  job = wave1.killed
  elapsed = job.ended_at - wave1.killed_at
  assert job.returncode != 0
  lines = job.output("stderr").splitlines()
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
  assert "process 1 was killed by SIGKILL" in errors[0]
  assert "Traceback" not in job.output("stderr")
  # JAX's distributed service stops process 0 once process 1's heartbeats have been missing
  # for HEARTBEAT_SECONDS; the launcher would kill it GRACE_SECONDS later at the latest.
  print(f"process 0 stopped {elapsed:.1f} s after process 1 was killed")
  assert elapsed < HEARTBEAT_SECONDS + GRACE_SECONDS + 15, elapsed
  assert "then process 0" in errors[0], errors[0]


def test_a_two_process_checkpoint_resumes_on_one_process(runs, wave2):
  assert_succeeded(wave2.on_single4)
  assert f"resumed from step {wave2.stopped_at}" in wave2.on_single4.output("stdout")
  assert_matches_single4(runs, "on_single4", first_step=wave2.stopped_at + 1)


def test_a_one_process_checkpoint_resumes_on_two_processes(runs, wave2):
  assert_succeeded(wave2.on_pod)
  assert f"resumed from step {RESUME_FROM}" in wave2.on_pod.output("stdout")
  assert_matches_single4(runs, "on_pod", first_step=RESUME_FROM + 1)


# ---------------------------------------------------------------------------------------------
# The settings, without processes.


def test_the_cluster_comes_from_flags_then_the_environment():
  from dfjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from dfjax.train import distributed  # pylint: disable=g-import-not-at-top
  assert distributed.cluster_from(environ={}) is None
  assert distributed.cluster_from(multihost=True, environ={}) == distributed.Cluster()
  assert distributed.cluster_from(environ={"DFJAX_MULTIHOST": "1"}) == distributed.Cluster()
  environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "DFJAX_NUM_PROCESSES": "4",
             "DFJAX_PROCESS_ID": "3", "DFJAX_HEARTBEAT_TIMEOUT": "20"}
  assert distributed.cluster_from(environ=environ) == distributed.Cluster(
      "10.0.0.2:1234", 4, 3, heartbeat_timeout_seconds=20)
  assert distributed.cluster_from(process_id=1, coordinator_address="h:1",
                                  environ=environ) == distributed.Cluster("h:1", 4, 1, 20)
  for bad, fragment in [({"DFJAX_NUM_PROCESSES": "2"}, "both"),
                        ({"DFJAX_NUM_PROCESSES": "2", "DFJAX_PROCESS_ID": "2"}, "not in [0, 2)"),
                        ({"DFJAX_NUM_PROCESSES": "2", "DFJAX_PROCESS_ID": "1"},
                         "coordinator's host:port"),
                        ({"DFJAX_PROCESS_ID": "x"}, "not an integer"),
                        ({"DFJAX_MULTIHOST": "1", "DFJAX_HEARTBEAT_TIMEOUT": "0"}, "positive")]:
    with pytest.raises(UserError, match=re.escape(fragment)):
      distributed.cluster_from(environ=bad)


def test_the_launcher_gives_each_process_its_settings():
  from dfjax import launch  # pylint: disable=g-import-not-at-top
  env = launch.child_environment(
      {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --other", "KEEP": "1"},
      process_id=1, num_processes=2, address="127.0.0.1:999", devices_per_process=2,
      heartbeat_timeout=10)
  assert env["KEEP"] == "1" and env["JAX_PLATFORMS"] == "cpu"
  assert env["XLA_FLAGS"].split() == ["--other", "--xla_force_host_platform_device_count=2"]
  assert (env["JAX_COORDINATOR_ADDRESS"], env["DFJAX_NUM_PROCESSES"], env["DFJAX_PROCESS_ID"],
          env["DFJAX_HEARTBEAT_TIMEOUT"]) == ("127.0.0.1:999", "2", "1", "10")
  assert launch.describe_status(-9) == "was killed by SIGKILL"
  assert launch.describe_status(2) == "exited with status 2"
  assert 0 < launch.free_port() < 65536


def test_the_launcher_refuses_a_bad_command_in_one_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  for args, fragment in [(["--processes=2"], "give the training flags after --"),
                         (["--", "--config=configs/toy.py"], "--processes=N"),
                         (["--processes=2", "--", "--process_id=1"], "set by the launcher")]:
    result = subprocess.run([sys.executable, "-m", "dfjax.launch", *args], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
