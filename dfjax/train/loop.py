"""The run loop: train from scratch or resume, log, checkpoint, and stop cleanly.

`train` prepares the workdir (refusing one that holds another run, before anything slow),
loads the prior, builds or restores the state, and runs the jitted step of `train.step` until
`train.steps`, writing metrics and preview images (`train.logs`), saving checkpoints and
stopping on SIGTERM or preemption with a checkpoint (`train.checkpoint`), or with one line
when the updates keep failing. Everything here runs on the host, outside the jitted step.

Data flow: train.prior_setup, train.model, train.step, train.checkpoint, train.logs -> here ->
dfjax.run (which adds the end-of-run export).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax

from dfjax.errors import UserError
from dfjax.train import checkpoint as checkpoint_lib
from dfjax.train import compile_cache
from dfjax.train import distributed
from dfjax.train import logs
from dfjax.train import model as model_lib
from dfjax.train import prior_setup
from dfjax.train import step as step_lib


def _log_images(writer, scene: model_lib.Scene, state, step: int, preview):
  """Colour and textureless previews from the front, side, back and above, to TensorBoard
  (rendered as the step renders: over the run's occupancy grid for that sampler)."""
  images = {}
  cameras = model_lib.preview_cameras(scene.config, resolution=scene.config.camera.resolution)
  for name, camera in zip(("front", "side", "back", "overhead"), cameras):
    rendered = jax.device_get(preview(state.params, camera, step, state.occupancy))
    for mode in ("albedo", "textureless"):
      images[f"{mode}/{name}"] = rendered[mode]
  writer.write_images(step, images)


class StepClock:
  """Wall-clock seconds per step between two logged steps (host side)."""

  def __init__(self, step: int):
    self.time, self.step = time.perf_counter(), step

  def seconds_per_step(self, step: int) -> float:
    now = time.perf_counter()
    seconds = (now - self.time) / max(step - self.step, 1)
    self.time, self.step = now, step
    return seconds


def _log_metrics(writer, progress, state: step_lib.TrainState, metrics, *, step: int,
                 clock: StepClock, max_nonfinite_steps: int):
  """Fetches a logged step's metrics to the host, writes them, and stops a diverged run.

  Raises:
    UserError: `max_nonfinite_steps` steps in a row had non-finite gradients.
  """
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
  metrics.update(seconds_per_step=clock.seconds_per_step(step), devices=jax.device_count())
  writer.write_scalars(step, metrics)
  progress.update(step, {k: metrics[k] for k in ("loss", "loss_sds", "t")})
  if metrics["nonfinite_steps"] and int(state.consecutive_nonfinite) >= max_nonfinite_steps:
    raise UserError(
        f"{int(state.consecutive_nonfinite)} steps in a row had non-finite gradients (up to "
        f"step {step}); the last good checkpoint is kept. Lower "
        "--config.optimizer.peak_learning_rate or --config.prior.guidance_scale")


@dataclasses.dataclass(frozen=True)
class Trained:
  """What `train` returns.

  Attributes:
    scene: the run's Scene (models, prior, config).
    state: the final TrainState, replicated over the devices.
    step: the last step trained.
    finished: True when `train.steps` was reached; False when a signal or a preemption
      stopped the run (its checkpoint is saved and the same command resumes it).
  """
  scene: model_lib.Scene
  state: step_lib.TrainState
  step: int
  finished: bool


def prepare_run(config, workdir: str, *, allow_config_change: bool,
                primary: bool) -> model_lib.Scene:
  """Refuses a workdir of another run, loads the prior, then records the config.

  Order matters for the user: the workdir check runs before anything slow, and nothing in an
  existing workdir changes until the prior (model or bank) has loaded without error.
  """
  config_json = config.to_json(sort_keys=True)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 primary=False)
  prior, camera_kwargs = prior_setup.build_prior(config)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 primary=primary)
  return model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)


def initial_state(scene: model_lib.Scene, optimizer, mesh, checkpointer, workdir: str):
  """A fresh replicated TrainState, or the latest checkpoint's. Returns (state, its step)."""
  target = step_lib.abstract_train_state(scene, optimizer, step_lib.replicated_sharding(mesh))
  state, start_step = checkpointer.restore_latest(target)
  if start_step is None:
    key = jax.random.PRNGKey(scene.config.seed)
    return step_lib.replicate(step_lib.create_train_state(scene, optimizer, key), mesh), 0
  print(f"resumed from step {start_step} in {workdir}", flush=True)
  return state, start_step


def train(config, workdir: str, *, allow_config_change: bool = False,
          progress: bool = True) -> Trained:
  """Train from scratch or resume the run in `workdir` until `config.train.steps`.

  `progress=False` hides the progress display (metrics.jsonl and TensorBoard are written as
  ever).
  """
  compile_cache.enable_compilation_cache()
  primary = distributed.is_primary()
  scene = prepare_run(config, workdir, allow_config_change=allow_config_change,
                      primary=primary)
  optimizer = step_lib.create_optimizer(config)
  mesh = step_lib.make_mesh()
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=config.train.checkpoint_every,
                                             keep=config.train.keep_checkpoints)
  state, start_step = initial_state(scene, optimizer, mesh, checkpointer, workdir)
  prior_params = step_lib.replicate(scene.prior.params, mesh)
  writer = logs.MetricsWriter(workdir, resume_step=start_step, enabled=primary)
  display = logs.Progress(config.train.steps, start_step=start_step,
                          every=config.train.log_every, enabled=progress)
  stop = checkpoint_lib.install_sigterm_handler()
  # Compiled before the first step, then every process waits for the others: the step's
  # first collective opens a gloo context on CPU devices, which waits for the other processes
  # 30 s at most (`distributed.barrier`).
  train_step = step_lib.make_train_step(scene, optimizer, mesh).lower(state,
                                                                    prior_params).compile()
  distributed.barrier("the compiled train step")
  preview = jax.jit(functools.partial(model_lib.render_preview, scene))

  step, clock = start_step, StepClock(start_step)
  try:
    with distributed.peer_loss_as_one_line():
      while step < config.train.steps:
        state, metrics = train_step(state, prior_params)
        step += 1
        if step % config.train.log_every == 0 or step == config.train.steps:
          _log_metrics(writer, display, state, metrics, step=step, clock=clock,
                       max_nonfinite_steps=config.optimizer.max_nonfinite_steps)
        if config.train.image_every and step % config.train.image_every == 0:
          _log_images(writer, scene, state, step, preview)
        if stop.requested or checkpointer.reached_preemption(step):
          checkpointer.save(step, state, force=True)
          print(f"stopped by {stop.signal_name or 'preemption'} at step {step}; checkpoint "
                "saved, run the same command to resume", flush=True)
          return Trained(scene=scene, state=state, step=step, finished=False)
        checkpointer.save(step, state, force=step == config.train.steps)
  finally:
    display.close()
    checkpointer.wait()
    writer.close()
    stop.uninstall()
  checkpointer.close()
  return Trained(scene=scene, state=state, step=step, finished=True)
