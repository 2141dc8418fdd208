"""End-to-end tests of the command line: resuming, SIGTERM, bad input, export, config changes.

Every check runs `python -m dfjax.main` / `python -m dfjax.export` in a subprocess, on a tiny
random image bank (16 images of 8×8) and a tiny field, on one CPU device. The order, chosen
for the wall-clock time on two cores:
1. the reference run starts; once it has compiled its step (into a persistent compilation
   cache shared by all the commands), the same command starts in a second workdir and is
   SIGKILLed after its first checkpoint;
2. the bad-input, export and config-change commands start in the background, each on its
   own copy of the finished reference run;
3. meanwhile the killed run is started again with the same command, and a copy of it is
   continued with a changed config (--allow_config_change) and stopped with SIGTERM.
The tests then check what each command did.
"""
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from dfjax.priors import bank as bank_lib
from dfjax.scene import cameras
from dfjax.train import checkpoint
from dfjax.train import model as model_lib
from dfjax.train import step as step_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 48
CHECKPOINT_EVERY = 4
EXPORT_STEP = 8
PROMPT = "a thing"
TIMEOUT = 600  # seconds for any one command; a hang fails instead of blocking the suite
# A config change that leaves the compiled step as it is (so the compilation cache serves).
CHANGED_CONFIG = "--config.train.keep_checkpoints=99"


def tiny_flags(bank_path: str) -> list[str]:
  """configs/bank.py made tiny; every run of the same scene uses exactly these flags."""
  return [f"--config={os.path.join(REPO_ROOT, 'configs', 'bank.py')}",
          f"--config.prior.bank={bank_path}", f"--config.prompt={PROMPT}",
          "--config.field.num_blocks=1", "--config.field.hidden_units=16",
          "--config.field.max_deg=4", "--config.render.num_samples=8",
          f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.keep_checkpoints=100", "--config.train.log_every=1",
          "--config.train.image_every=0", "--config.export.at_end=False",
          "--config.export.resolution=16", "--config.export.video_frames=2",
          "--config.export.video_resolution=8"]


def write_tiny_bank(path: str, *, num=16, size=8, seed=0) -> None:
  rng = np.random.default_rng(seed)
  c2w = np.stack([np.asarray(cameras.camera_from_angles(
      azimuth_deg=a, elevation_deg=e, distance=1.4, fov_deg=50.0, width=size, height=size).c2w)
      for a, e in zip(rng.uniform(0, 360, num), rng.uniform(-10, 70, num))])
  bank_lib.save_bank(path, images=rng.integers(0, 256, (num, size, size, 3), np.uint8),
                     prompts=np.array([PROMPT] * (num // 2) + ["other"] * (num - num // 2)),
                     c2w=c2w.astype(np.float32), fov_deg=np.full(num, 50.0, np.float32))


@dataclasses.dataclass
class Job:
  """A CLI command running in the background, its output going to files."""
  process: subprocess.Popen
  stdout_path: str
  stderr_path: str
  returncode: int | None = None

  def wait(self) -> "Job":
    if self.returncode is None:
      try:
        self.returncode = self.process.wait(timeout=TIMEOUT)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
        pytest.fail(f"command timed out after {TIMEOUT} s: {self.process.args}")
    return self

  @property
  def stdout(self) -> str:
    with open(self.stdout_path) as f:
      return f.read()

  @property
  def stderr(self) -> str:
    with open(self.stderr_path) as f:
      return f.read()


class Cli:
  """Starts CLI commands with one CPU device, offline, and a shared compilation cache."""

  def __init__(self, root):
    self.root = str(root)
    self.bank = os.path.join(self.root, "bank.npz")
    write_tiny_bank(self.bank)
    self.env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
                    JAX_COMPILATION_CACHE_DIR=os.path.join(self.root, "jax_cache"),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    # conftest.py forces 4 host devices for in-process tests; one device compiles faster,
    # and without LLVM's optimisations about twice as fast (every run compiles alike, so
    # runs stay comparable bit for bit).
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       self.env.get("XLA_FLAGS", ""))
    self.env["XLA_FLAGS"] = f"{xla_flags} --xla_backend_optimization_level=0".strip()
    self.jobs = []

  def close(self) -> None:
    """Kills the commands still running (a failed test may leave some)."""
    for job in self.jobs:
      if job.process.poll() is None:
        job.process.kill()
        job.process.wait()

  def path(self, name: str) -> str:
    return os.path.join(self.root, name)

  def start(self, module: str, *args: str) -> Job:
    out, err = (self.path(f"job{len(self.jobs)}.{s}") for s in ("stdout", "stderr"))
    with open(out, "w") as stdout, open(err, "w") as stderr:
      process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                                 env=self.env, stdout=stdout, stderr=stderr)
    self.jobs.append(Job(process, out, err))
    return self.jobs[-1]

  def train(self, workdir: str, *extra: str) -> Job:
    return self.start("dfjax.main", *tiny_flags(self.bank), f"--workdir={workdir}", *extra)


def complete_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints (orbax renames `<step>.orbax-checkpoint-tmp` to
  `<step>` once a save is complete)."""
  directory = os.path.join(workdir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def wait_for_checkpoint_after(job: Job, workdir: str, step: int) -> int:
  """Polls until a complete checkpoint later than `step` exists; returns its step."""
  deadline = time.monotonic() + TIMEOUT
  while time.monotonic() < deadline:
    later = [s for s in complete_steps(workdir) if s > step]
    if later:
      return later[0]
    if job.process.poll() is not None:
      pytest.fail(f"run ended (status {job.process.returncode}) before a checkpoint after "
                  f"step {step}:\n{job.stderr[-2000:]}")
    time.sleep(0.01)
  pytest.fail(f"no checkpoint after step {step} in {workdir} within {TIMEOUT} s")


def wait_for_file(job: Job, path: str) -> None:
  """Polls until `path` exists, failing if the command ends first."""
  deadline = time.monotonic() + TIMEOUT
  while not os.path.exists(path):
    if job.process.poll() is not None or time.monotonic() > deadline:
      pytest.fail(f"{path} did not appear (status {job.process.poll()}):\n"
                  f"{job.stderr[-2000:]}")
    time.sleep(0.01)


def snapshot(directory: str) -> dict[str, bytes]:
  """Every file under `directory` (relative path -> bytes), directories as b"<dir>"."""
  files = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs:
      files[os.path.relpath(os.path.join(root, name), directory) + "/"] = b"<dir>"
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        files[os.path.relpath(os.path.join(root, name), directory)] = f.read()
  return files


def restore_state(workdir: str, step: int) -> step_lib.TrainState:
  """The whole TrainState of checkpoint `step`, restored onto one device."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  scene = model_lib.create_scene(config, prior=None, camera_kwargs={})
  optimizer = step_lib.create_optimizer(config)
  abstract = jax.eval_shape(
      lambda: step_lib.create_train_state(scene, optimizer, jax.random.PRNGKey(0)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          abstract)
  with checkpoint.Checkpointer(workdir, save_every=1, keep=10**6,
                               async_save=False) as checkpointer:
    return checkpointer.restore(abstract, step=step)


def metrics_by_step(workdir: str) -> dict[int, dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {record["step"]: record for record in records}


def assert_one_line_error(job: Job, *fragments: str) -> None:
  job.wait()
  stderr = job.stderr
  assert job.returncode == 2, f"status {job.returncode}, stderr:\n{stderr[-3000:]}"
  lines = stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr:\n{stderr[-3000:]}"
  assert "Traceback" not in stderr
  for fragment in fragments:
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# ---------------------------------------------------------------------------------------------
# The runs.


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  commands = Cli(tmp_path_factory.mktemp("cli"))
  yield commands
  commands.close()


@dataclasses.dataclass
class Runs:
  reference: str      # workdir of the uninterrupted run
  interrupted: str    # workdir of the run killed with SIGKILL after its first checkpoint
  killed_after: int   # the latest complete checkpoint when the kill landed
  reference_job: Job


@pytest.fixture(scope="module")
def runs(cli):
  """An uninterrupted run, and the same command in another workdir SIGKILLed after its
  first checkpoint (started once the first run has compiled the step into the cache)."""
  reference, interrupted = cli.path("reference"), cli.path("interrupted")
  reference_job = cli.train(reference)
  wait_for_file(reference_job, os.path.join(reference, "metrics.jsonl"))
  interrupted_job = cli.train(interrupted)
  wait_for_checkpoint_after(interrupted_job, interrupted, 0)
  assert interrupted_job.process.poll() is None, "the run ended before it could be killed"
  interrupted_job.process.send_signal(signal.SIGKILL)
  interrupted_job.wait()
  assert interrupted_job.returncode == -signal.SIGKILL
  killed_after = complete_steps(interrupted)[-1]
  assert killed_after < STEPS, "the kill landed after the last step: raise STEPS"
  reference_job.wait()
  assert reference_job.returncode == 0, reference_job.stderr[-3000:]
  assert complete_steps(reference)[-1] == STEPS
  return Runs(reference, interrupted, killed_after, reference_job)


def copy_of_reference(cli: Cli, runs: Runs, name: str) -> str:
  destination = cli.path(name)
  shutil.copytree(runs.reference, destination)
  return destination


@pytest.fixture(scope="module")
def bad_input_jobs(cli, runs):
  """Commands that must fail, each on its own copy of the finished reference run, started
  at once in the background. Value: {case: (job, workdir, snapshot before)}."""
  malformed_bank = cli.path("malformed.npz")
  with open(malformed_bank, "wb") as f:
    f.write(b"this is not an npz archive")
  dreamfusion = f"--config={os.path.join(REPO_ROOT, 'configs', 'dreamfusion.py')}"
  # Overrides of the tiny bank run's flags, or (a different --config) whole command lines.
  cases = {
      "unknown_config_file": ["--config=configs/no_such_config.py"],
      "misspelt_field": ["--config.train.stepz=3"],
      "negative_steps": ["--config.train.steps=-3"],
      "missing_bank": [f"--config.prior.bank={cli.path('no_such_bank.npz')}"],
      "malformed_bank": [f"--config.prior.bank={malformed_bank}"],
      "unknown_prompt": ["--config.prompt=a purple dragon"],
      "missing_model": [dreamfusion, "--config.prior.model=/nonexistent"],
      "empty_model": [dreamfusion, "--config.prior.model="],
      "elevation_outside": ["--config.camera.elevation_range=(-100.0, 90.0)"],
      "empty_range": ["--config.camera.azimuth_range=(30.0, 30.0)"],
      "negative_resolution": ["--config.camera.resolution=-8"],
  }
  jobs = {}
  for case, args in cases.items():
    workdir = copy_of_reference(cli, runs, f"bad_{case}")
    before = snapshot(workdir)
    # --allow_config_change lets each reach the check of its own input, past the workdir's.
    args = [*args, "--allow_config_change"]
    if args[0].startswith("--config="):
      job = cli.start("dfjax.main", *args, f"--workdir={workdir}")
    else:
      job = cli.train(workdir, *args)
    jobs[case] = (job, workdir, before)
  return jobs


@pytest.fixture(scope="module")
def background_jobs(cli, runs, bad_input_jobs):
  """Export and config-change commands, started in the background on copies of the run."""
  jobs = {}
  export_dir = copy_of_reference(cli, runs, "export")
  jobs["export"] = (cli.start("dfjax.export", f"--workdir={export_dir}",
                              f"--step={EXPORT_STEP}", "--resolution=16"), export_dir)
  textured_dir = copy_of_reference(cli, runs, "export_textured")
  jobs["export_textured"] = (cli.start(
      "dfjax.export", f"--workdir={textured_dir}", f"--step={EXPORT_STEP}", "--resolution=16",
      "--format=obj,glb", "--texture_size=64", "--faces=100", "--video_format=gif"),
                             textured_dir)
  jobs["export_missing_workdir"] = (cli.start("dfjax.export",
                                              f"--workdir={cli.path('no_such_run')}"), None)
  jobs["export_bad_format"] = (cli.start("dfjax.export", f"--workdir={export_dir}",
                                         "--format=glb,stl"), None)
  jobs["export_bad_texture_size"] = (cli.start("dfjax.export", f"--workdir={export_dir}",
                                               "--texture_size=8"), None)
  jobs["export_unknown_step"] = (cli.start(
      "dfjax.export", f"--workdir={copy_of_reference(cli, runs, 'export_unknown_step')}",
      "--step=5", "--novideo"), None)
  workdir = copy_of_reference(cli, runs, "config_changed")
  jobs["config_changed"] = (cli.train(workdir, CHANGED_CONFIG), workdir)
  return jobs


# ---------------------------------------------------------------------------------------------
# Resuming.


@dataclasses.dataclass
class Restarts:
  resumed: Job        # the interrupted run's command, run again to the end
  fake_save: str      # a half-written checkpoint directory added before the restart
  stopped: Job        # a copy of the interrupted run, continued with a changed config
  stopped_dir: str    # (--allow_config_change) and stopped with SIGTERM
  first_new_checkpoint: int


@pytest.fixture(scope="module")
def restarts(cli, runs, background_jobs):
  """Concurrently: the SIGKILLed run started again with the same command (after faking a
  half-written later save), and a copy of it continued with a different config and
  --allow_config_change, then sent SIGTERM once it has saved a new checkpoint."""
  del background_jobs  # started first, so they run meanwhile
  stopped_dir = cli.path("stopped")
  shutil.copytree(runs.interrupted, stopped_dir)
  checkpoints = os.path.join(runs.interrupted, "checkpoints")
  # A save that died half way, later than any real one (orbax 0.12 naming).
  fake = os.path.join(checkpoints, f"{STEPS + 100}.orbax-checkpoint-tmp")
  shutil.copytree(os.path.join(checkpoints, str(runs.killed_after)), fake)
  os.rename(os.path.join(fake, "state"), os.path.join(fake, "state.orbax-checkpoint-tmp"))
  resumed = cli.train(runs.interrupted)
  stopped = cli.train(stopped_dir, CHANGED_CONFIG, "--allow_config_change")
  first = wait_for_checkpoint_after(stopped, stopped_dir, runs.killed_after)
  assert stopped.process.poll() is None, "the run ended before SIGTERM"
  stopped.process.send_signal(signal.SIGTERM)
  return Restarts(resumed.wait(), fake, stopped.wait(), stopped_dir, first)


def test_resume_after_sigkill_is_bitwise_equal(runs, restarts):
  """SIGKILL after the first checkpoint, a fake half-written later save, and the same
  command again: the final state equals the uninterrupted run's bit for bit."""
  job = restarts.resumed
  assert job.returncode == 0, job.stderr[-3000:]
  assert f"resumed from step {runs.killed_after} in {runs.interrupted}" in job.stdout
  assert not os.path.exists(restarts.fake_save)  # ignored, then removed
  resumed = restore_state(runs.interrupted, STEPS)
  expected = restore_state(runs.reference, STEPS)
  assert int(resumed.step) == STEPS
  assert jax.tree.structure(resumed) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype and np.array_equal(np.asarray(got), np.asarray(want))


def test_sigterm_saves_the_current_step_and_exits_cleanly(runs, restarts):
  job = restarts.stopped
  assert job.returncode == 0, job.stderr[-3000:]
  stopped = re.search(r"stopped by SIGTERM at step (\d+)", job.stdout)
  assert stopped, job.stdout[-2000:]
  step = int(stopped.group(1))
  assert restarts.first_new_checkpoint < step < STEPS
  assert complete_steps(restarts.stopped_dir)[-1] == step
  assert not [name for name in os.listdir(os.path.join(restarts.stopped_dir, "checkpoints"))
              if not name.isdigit()]                       # no save left half-written
  assert int(restore_state(restarts.stopped_dir, step).step) == step
  # The steps it logged (before the kill, then after the restart) are the uninterrupted
  # run's: same seed, same keys per step.
  logged, reference = metrics_by_step(restarts.stopped_dir), metrics_by_step(runs.reference)
  assert sorted(logged) == list(range(1, step + 1))
  assert all(logged[s]["loss"] == reference[s]["loss"] for s in logged)


def test_a_run_prints_progress_lines_only(runs):
  """No library deprecation warnings or absl INFO logs (orbax logs every save) on stderr:
  only the progress lines, one per logged step."""
  lines = runs.reference_job.stderr.splitlines()
  assert len(lines) == STEPS and all(re.match(rf"step {i + 1}/{STEPS} ", line)
                                     for i, line in enumerate(lines)), lines[:5]
  assert runs.reference_job.stdout == ""


def test_resumed_metrics_match_the_uninterrupted_run(runs, restarts):
  """After the kill and restart, metrics.jsonl holds each step once, with the reference's
  losses (the runs compute bitwise the same steps)."""
  del restarts
  resumed, reference = metrics_by_step(runs.interrupted), metrics_by_step(runs.reference)
  assert sorted(resumed) == sorted(reference) == list(range(1, STEPS + 1))
  for step in reference:
    for key in ("loss", "loss_sds", "t", "grad_norm"):
      assert resumed[step][key] == reference[step][key], (step, key)


# ---------------------------------------------------------------------------------------------
# Bad input.


BAD_INPUT_MESSAGES = {
    "unknown_config_file": ("configs/no_such_config.py", "configs/bank.py"),
    "misspelt_field": ("--config.train.stepz", "steps"),
    "negative_steps": ("config.train.steps", "-3"),
    "missing_bank": ("no_such_bank.npz",),
    "malformed_bank": ("malformed.npz", "not a readable .npz"),
    "unknown_prompt": ("a purple dragon", f"'{PROMPT}'", "'other'"),
    "missing_model": ("/nonexistent", "does not exist"),
    "empty_model": ("config.prior.model is empty",),
    "elevation_outside": ("config.camera.elevation_range", "[-90.0, 90.0]"),
    "empty_range": ("config.camera.azimuth_range", "empty range"),
    "negative_resolution": ("config.camera.resolution", "-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_MESSAGES))
def test_bad_input_is_one_line_and_leaves_the_workdir_untouched(case, bad_input_jobs):
  job, workdir, before = bad_input_jobs[case]
  assert_one_line_error(job, *BAD_INPUT_MESSAGES[case])
  after = snapshot(workdir)
  assert sorted(after) == sorted(before)
  assert after == before


def test_a_different_config_is_refused(background_jobs):
  job, workdir = background_jobs["config_changed"]
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    saved = f.read()
  assert_one_line_error(job, "different config", "train.keep_checkpoints: 100 -> 99",
                        "--allow_config_change")
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == saved


def test_allow_config_change_continues_the_run_with_the_new_config(runs, restarts):
  job = restarts.stopped
  assert job.returncode == 0, job.stderr[-3000:]
  assert f"resumed from step {runs.killed_after}" in job.stdout
  with open(os.path.join(restarts.stopped_dir, "config.json")) as f:
    assert json.load(f)["train"]["keep_checkpoints"] == 99


# ---------------------------------------------------------------------------------------------
# Export.


def test_export_from_a_chosen_checkpoint(background_jobs, monkeypatch):
  job, workdir = background_jobs["export"]
  job.wait()
  assert job.returncode == 0, job.stderr[-3000:]
  assert not job.stderr, job.stderr[-3000:]  # no library warnings or logs
  assert f"at step {EXPORT_STEP}:" in job.stdout
  assert "(chosen from 8 renders, silhouette IoU" in job.stdout, job.stdout  # threshold 0
  # The defaults: a textured GLB, the vertex-coloured PLY and an MP4 turntable.
  assert sorted(n for n in os.listdir(workdir) if n.startswith(("mesh", "turntable"))) == [
      "mesh.glb", "mesh.ply", "turntable.mp4"]
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  import trimesh  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")  # see video._write_ffmpeg
  frames = np.stack(imageio.mimread(os.path.join(workdir, "turntable.mp4")))
  assert frames.shape[:3] == (2, 8, 3 * 8)  # video_frames, colour | normals | textureless
  glb = trimesh.load(os.path.join(workdir, "mesh.glb"), force="mesh", process=False)
  assert glb.visual.uv.shape == (len(glb.vertices), 2)
  assert glb.visual.material.baseColorTexture.size == (512, 512)  # export.texture_size
  ply = trimesh.load(os.path.join(workdir, "mesh.ply"), process=False)
  assert ply.visual.vertex_colors.shape == (len(ply.vertices), 4)


def test_export_textured_formats_and_gif(background_jobs):
  job, workdir = background_jobs["export_textured"]
  job.wait()
  assert job.returncode == 0, job.stderr[-3000:]
  assert not job.stderr, job.stderr[-3000:]
  assert sorted(n for n in os.listdir(workdir) if n.startswith(("mesh", "turntable"))) == [
      "mesh.glb", "mesh.mtl", "mesh.obj", "mesh_albedo.png", "turntable.gif"]
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  import trimesh  # pylint: disable=g-import-not-at-top
  assert iio.imread(os.path.join(workdir, "turntable.gif"), index=None).shape[:3] == (2, 8, 24)
  for name in ("mesh.obj", "mesh.glb"):
    loaded = trimesh.load(os.path.join(workdir, name), force="mesh", process=False)
    material = loaded.visual.material
    image = material.image if name.endswith(".obj") else material.baseColorTexture
    assert image.size == (64, 64) and 0 < len(loaded.faces) <= 100, name
    assert loaded.visual.uv.shape == (len(loaded.vertices), 2), name


def test_export_errors_are_one_line(background_jobs):
  assert_one_line_error(background_jobs["export_missing_workdir"][0], "no_such_run",
                        "config.json not found")
  steps = ", ".join(str(s) for s in range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY))
  assert_one_line_error(background_jobs["export_unknown_step"][0], "step 5", steps)
  assert_one_line_error(background_jobs["export_bad_format"][0], "--format", "'stl'",
                        "ply, obj, glb")
  assert_one_line_error(background_jobs["export_bad_texture_size"][0], "--texture_size",
                        "[16, 8192]", "got 8")
