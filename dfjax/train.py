"""The trainer: one data-parallel SDS step and the loop that runs it.

Each device draws its own camera, light, shading mode, timestep and noise from a key derived
from (seed, step, device index) alone, renders one view, and computes the SDS surrogate
(DreamFusion §3, Eq. 3) plus the orientation and opacity regularisers (App. A.2). Gradients
are averaged across devices (`jax.lax.pmean` under `jax.shard_map`) and one optax update is
applied to the replicated state. Frozen prior weights travel as a separate, non-donated
argument; the state is donated.
"""
from __future__ import annotations

import dataclasses
import math
import time
import functools
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dfjax import background as background_lib
from dfjax import cameras as cameras_lib
from dfjax import field as field_lib
from dfjax import losses
from dfjax import render as render_lib
from dfjax import sds as sds_lib
from dfjax import shading as shading_lib
from dfjax.errors import UserError

DATA_AXIS = "data"


@struct.dataclass
class TrainState:
  """Everything that changes during training (checkpointed as one pytree).

  Attributes:
    step: [] int32 number of updates applied (skipped ones included).
    params: {"field": ..., "background": ...} parameters.
    opt_state: optax state.
    nonfinite_steps: [] int32 updates skipped because a gradient was not finite.
    consecutive_nonfinite: [] int32 of those, in a row up to now.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_steps: jax.Array
  consecutive_nonfinite: jax.Array


@dataclasses.dataclass(frozen=True)
class Scene:
  """The static parts of a step: models, prior and the config-derived hyperparameters."""
  field: field_lib.NeRFField
  background: background_lib.EnvironmentMap | None
  background_color: tuple
  prior: Any
  camera_kwargs: dict
  config: ml_collections.ConfigDict  # read-only view of the run's config

  def background_fn(self, params):
    if self.background is None:
      return background_lib.fixed_background(self.background_color)
    return functools.partial(self.background.apply, params["background"])


def linear_anneal(step, *, start: float, end: float, steps: int):
  """start + (end − start)·min(step/steps, 1): DreamFusion's λ_Σ and orientation schedules."""
  fraction = jnp.clip(step / max(steps, 1), 0.0, 1.0)
  return start + (end - start) * fraction


def cov_scale_at(step, config):
  """λ_Σ, the isotropic IPE variance, annealed 5e-2 → 2e-3 over 5k steps (App. A.2)."""
  return linear_anneal(step, start=config.field.cov_scale_start, end=config.field.cov_scale_end,
                       steps=config.field.cov_anneal_steps)


def orientation_weight_at(step, config):
  """Orientation-loss weight, annealed up from 1e-4 to its final value (App. A.2)."""
  return linear_anneal(step, start=config.loss.orientation_weight_start,
                       end=config.loss.orientation_weight,
                       steps=config.loss.orientation_anneal_steps)


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warm-up 1e-9 → peak over 3000 steps, then cosine decay to 1e-6 (App. A.2)."""
  opt = config.optimizer
  return optax.warmup_cosine_decay_schedule(
      init_value=opt.initial_learning_rate, peak_value=opt.peak_learning_rate,
      warmup_steps=min(opt.warmup_steps, max(config.train.steps - 1, 1)),
      decay_steps=max(config.train.steps, opt.warmup_steps + 1),
      end_value=opt.final_learning_rate)


def create_optimizer(config) -> optax.GradientTransformation:
  """Global-norm clipping, then Adam on the warm-up + cosine schedule."""
  opt = config.optimizer
  adam = optax.adam(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return optax.chain(optax.clip_by_global_norm(opt.grad_clip), adam) if opt.grad_clip else adam


def create_scene(config, prior, *, camera_kwargs: dict) -> Scene:
  """Models from the config; `camera_kwargs` are `cameras.sample_camera`'s ranges."""
  f = config.field
  field = field_lib.NeRFField(num_blocks=f.num_blocks, hidden_units=f.hidden_units,
                              max_deg=f.max_deg, blob_density=f.blob_density,
                              blob_radius=f.blob_radius, density_bias=f.density_bias)
  b = config.background
  background = (background_lib.EnvironmentMap(hidden_units=b.hidden_units, max_deg=b.max_deg)
                if b.kind == "mlp" else None)
  return Scene(field=field, background=background, background_color=tuple(b.color),
               prior=prior, camera_kwargs=camera_kwargs, config=config)


def init_params(scene: Scene, key: jax.Array):
  k_field, k_background = jax.random.split(key)
  params = {"field": scene.field.init(k_field, jnp.zeros((1, 3)), jnp.ones((1, 3)))}
  if scene.background is not None:
    params["background"] = scene.background.init(k_background, jnp.ones((1, 3)))
  return params


def create_train_state(scene: Scene, optimizer, key: jax.Array) -> TrainState:
  params = init_params(scene, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    nonfinite_steps=jnp.zeros((), jnp.int32),
                    consecutive_nonfinite=jnp.zeros((), jnp.int32))


def view_key(seed: int, step, device_index, view_index):
  """The key of one view: a function of (seed, step, device, view) only (bitwise resume)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.fold_in(jax.random.fold_in(key, device_index), view_index)


def render_view(scene: Scene, params, key: jax.Array, step):
  """Sample a camera, a light and a shading mode, and render them (App. A.2).

  Returns:
    (RenderOutput [H, W, ...], CameraSample).
  """
  config = scene.config
  k_camera, k_light, k_shading, k_render = jax.random.split(key, 4)
  sample = cameras_lib.sample_camera(k_camera, **scene.camera_kwargs)
  light = shading_lib.sample_light_position(
      k_light, sample.camera.position, distance_range=config.shading.light_distance_range)
  shading = shading_lib.sample_shading(
      k_shading, light, albedo_only=step < config.shading.albedo_warmup_steps,
      shaded_prob=config.shading.shaded_prob, textureless_prob=config.shading.textureless_prob,
      ambient=config.shading.ambient, diffuse=config.shading.diffuse)
  out = render_lib.render_image(
      sample.camera, key=k_render, chunk=config.render.chunk,
      field_fn=functools.partial(scene.field.apply, params["field"]),
      background_fn=scene.background_fn(params), shading=shading,
      num_samples=config.render.num_samples, num_importance=config.render.num_importance,
      bound_radius=config.render.bound_radius, cov_scale=cov_scale_at(step, config),
      randomized=True, normals=config.render.normals)
  return out, sample


def view_loss(params, prior_params, key: jax.Array, step, *, scene: Scene):
  """SDS + regularisers of one sampled view. Returns (loss, metrics dict of scalars)."""
  config = scene.config
  k_view, k_sds = jax.random.split(key)
  out, sample = render_view(scene, params, k_view, step)
  bucket = cameras_lib.view_bucket(sample.azimuth_deg, sample.elevation_deg)
  sds = sds_lib.score_distillation(
      scene.prior, prior_params, out.rgb[None], bucket[None], k_sds,
      guidance_scale=config.prior.guidance_scale, t_range=tuple(config.prior.t_range),
      weighting=config.prior.weighting)
  orientation = losses.orientation_loss(out.weights, out.sample_normals, out.directions)
  opacity = losses.opacity_loss(out.accumulated_alpha)
  loss = (sds.loss + orientation_weight_at(step, config) * orientation
          + config.loss.opacity_weight * opacity)
  num_timesteps = len(scene.prior.alphas_cumprod)
  metrics = {"loss": loss, "loss_sds": sds.loss, "loss_orientation": orientation,
             "loss_opacity": opacity, "t": sds.timesteps[0] / num_timesteps,
             "sds_nonfinite": sds.num_nonfinite.astype(jnp.float32),
             "sds_grad_norm": sds.grad_norm,
             "accumulated_alpha": jnp.mean(out.accumulated_alpha)}
  return loss, metrics


def device_gradients(state: TrainState, prior_params, device_index, *, scene: Scene):
  """Mean gradient and metrics of this device's views (`train.views_per_device`)."""
  views = scene.config.train.views_per_device
  keys = jax.vmap(lambda v: view_key(scene.config.seed, state.step, device_index, v))(
      jnp.arange(views))
  grad_fn = jax.grad(functools.partial(view_loss, scene=scene), has_aux=True)
  grads, metrics = jax.vmap(grad_fn, in_axes=(None, None, 0, None))(
      state.params, prior_params, keys, state.step)
  return jax.tree.map(lambda g: jnp.mean(g, axis=0), (grads, metrics))


def apply_gradients(state: TrainState, grads, optimizer) -> tuple[TrainState, dict]:
  """One optax update, skipped (and counted) when any gradient entry is not finite."""
  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
  updates, opt_state = optimizer.update(safe_grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  skipped = (~finite).astype(jnp.int32)
  new_state = TrainState(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_steps=state.nonfinite_steps + skipped,
      consecutive_nonfinite=(state.consecutive_nonfinite + 1) * skipped)
  grad_norm = optax.global_norm(safe_grads)
  return new_state, {"grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32),
                     "nonfinite_steps": new_state.nonfinite_steps.astype(jnp.float32)}


def _update(state, grads, metrics, *, scene, optimizer):
  """Apply the device-averaged gradients; metrics gain the update's and the learning rate."""
  state, update_metrics = apply_gradients(state, grads, optimizer)
  learning_rate = learning_rate_schedule(scene.config)(state.step - 1)
  return state, dict(metrics, **update_metrics, learning_rate=learning_rate)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over every device (every host's, on pods)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def make_train_step(scene: Scene, optimizer, mesh: jax.sharding.Mesh):
  """The jitted, data-parallel step: (state, prior_params) -> (state, metrics).

  Under `jax.shard_map` every device runs `device_gradients` with its own index; `pmean`
  averages gradients and metrics, so every device applies the same update to its replica.
  """
  def per_device(state, prior_params):
    grads, metrics = device_gradients(state, prior_params, jax.lax.axis_index(DATA_AXIS),
                                      scene=scene)
    grads, metrics = jax.lax.pmean((grads, metrics), DATA_AXIS)
    return _update(state, grads, metrics, scene=scene, optimizer=optimizer)

  # check_vma=False: with varying-axis typing on, the gradient w.r.t. a replicated input is
  # already summed over devices by the transpose of the implicit broadcast, and the pmean
  # below would then average a sum. Off, each device's gradient is its own (pmap semantics)
  # and the pmean is the one reduction, as the reference step computes it.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def reference_step(state: TrainState, prior_params, *, scene: Scene, optimizer,
                   num_devices: int):
  """What `make_train_step` computes, on one device: the mean over device indices.

  Used by tests to check the sharded step, and to debug without a mesh.
  """
  per_index = lambda i: device_gradients(state, prior_params, i, scene=scene)
  grads, metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0),
                                jax.vmap(per_index)(jnp.arange(num_devices)))
  return _update(state, grads, metrics, scene=scene, optimizer=optimizer)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Place every leaf, replicated, on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def build_prior(config):
  """The prior named by `config.prior.kind`, and the camera ranges to train with.

  Returns:
    (prior, camera_kwargs for `cameras.sample_camera`).

  Raises:
    UserError: a missing model or bank, or a prompt the bank does not know.
  """
  from dfjax.priors import bank as bank_lib  # pylint: disable=g-import-not-at-top
  camera_kwargs = camera_kwargs_from_config(config)
  kind = config.prior.kind
  if kind == "stable_diffusion":
    from dfjax.priors import stable_diffusion  # pylint: disable=g-import-not-at-top
    if not config.prior.model:
      raise UserError("config.prior.model is empty: pass --config.prior.model=DIR_OR_HUB_ID "
                      "(a diffusers-format Stable Diffusion directory or hub id)")
    prior = stable_diffusion.load_stable_diffusion(
        config.prior.model, revision=config.prior.revision or None, dtype=config.prior.dtype,
        prompt=config.prompt, use_vae=config.prior.use_vae, render_size=config.camera.resolution)
    return prior, camera_kwargs
  if kind == "toy":
    from dfjax import toy  # pylint: disable=g-import-not-at-top
    bank = bank_lib.load_bank(toy.get_toy_bank(**config.toy))
  elif kind == "bank":
    if not config.prior.bank:
      raise UserError("config.prior.bank is empty: pass --config.prior.bank=PATH.npz")
    bank = bank_lib.load_bank(config.prior.bank)
  else:
    raise UserError(f"config.prior.kind must be 'stable_diffusion', 'bank' or 'toy', got {kind!r}")
  prior = bank_lib.ClosedFormPrior.from_bank(bank, prompt=config.prompt,
                                             view_dependent=config.prior.view_dependent)
  return prior, bank_camera_kwargs(config, bank_lib.bank_camera_ranges(bank),
                                   image_size=prior.image_size)


def camera_kwargs_from_config(config) -> dict:
  """`cameras.sample_camera`'s keyword arguments from config.camera (App. A.2 defaults)."""
  c = config.camera
  return dict(
      width=c.resolution, height=c.resolution, elevation_range_deg=tuple(c.elevation_range),
      azimuth_range_deg=tuple(c.azimuth_range), distance_range=tuple(c.distance_range),
      focal_multiplier_range=tuple(c.focal_range), angle_uniform_prob=c.angle_uniform_prob,
      position_jitter=c.position_jitter, look_at_std=c.look_at_std, up_std=c.up_std)


def bank_camera_kwargs(config, ranges, *, image_size: int) -> dict:
  """Camera sampling for a bank: its resolution, distances, fields of view and elevations.

  Azimuth stays uniform and the jitter comes from the config.
  """
  # focal = 0.5·width / tan(fov/2): the widest field of view gives the shortest focal length.
  multiplier = lambda fov: 0.5 / math.tan(math.radians(fov) / 2)
  return dict(camera_kwargs_from_config(config), width=image_size, height=image_size,
              elevation_range_deg=ranges.elevation_deg, distance_range=ranges.distance,
              focal_multiplier_range=(multiplier(ranges.fov_deg[1]),
                                      multiplier(ranges.fov_deg[0])))


def preview_cameras(config, *, resolution: int):
  """Front, side, back and overhead cameras for render grids and the turntable."""
  e = config.export
  views = ((0.0, 15.0), (90.0, 15.0), (180.0, 15.0), (0.0, 75.0))
  return [cameras_lib.camera_from_angles(azimuth_deg=a, elevation_deg=el,
                                         distance=e.video_distance, fov_deg=e.video_fov,
                                         width=resolution, height=resolution)
          for a, el in views]


def render_preview(scene: Scene, params, camera: cameras_lib.Camera, step, *, mode: str):
  """Deterministic render of `params` from `camera` for logs and export.

  Args:
    mode: "albedo" (colour), "textureless" (white, lit from the camera) or "normals"
      (normals mapped to [0, 1], on the background).

  Returns:
    [H, W, 3] image in [0, 1].
  """
  config = scene.config
  if mode == "albedo":
    shading = shading_lib.Shading.albedo_only()
  else:
    shading = shading_lib.Shading(light_position=camera.position, ambient=jnp.array(0.2),
                                  diffuse=jnp.array(0.8), textureless=jnp.array(1.0))
  out = render_lib.render_image(
      camera, key=jax.random.PRNGKey(0), chunk=config.render.chunk,
      field_fn=functools.partial(scene.field.apply, params["field"]),
      background_fn=scene.background_fn(params), shading=shading,
      num_samples=config.render.num_samples, num_importance=config.render.num_importance,
      bound_radius=config.render.bound_radius, cov_scale=cov_scale_at(step, config),
      randomized=False, normals="none" if mode == "albedo" else config.render.normals)
  if mode == "normals":
    alpha = out.accumulated_alpha[..., None]
    return jnp.clip(0.5 * out.normals + 0.5 * alpha + (1.0 - alpha), 0.0, 1.0)
  return jnp.clip(out.rgb, 0.0, 1.0)


def _log_images(writer, scene: Scene, params, step: int, preview):
  images = {}
  for name, camera in zip(("front", "side", "back", "overhead"),
                          preview_cameras(scene.config, resolution=scene.config.camera.resolution)):
    for mode in ("albedo", "textureless"):
      images[f"{mode}/{name}"] = jax.device_get(preview(params, camera, step, mode=mode))
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


def _log_metrics(writer, progress, state: TrainState, metrics, *, step: int, clock: StepClock,
                 max_nonfinite_steps: int):
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


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> TrainState:
  """Train from scratch or resume the run in `workdir`, then export mesh and video.

  Order matters for the user: the workdir check runs before anything slow, and nothing in an
  existing workdir changes until the prior (model or bank) has loaded without error.
  """
  from dfjax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from dfjax import export as export_lib  # pylint: disable=g-import-not-at-top
  from dfjax import logging_utils  # pylint: disable=g-import-not-at-top
  primary = jax.process_index() == 0
  config_json = config.to_json(sort_keys=True)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 primary=False)
  prior, camera_kwargs = build_prior(config)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 primary=primary)

  scene = create_scene(config, prior, camera_kwargs=camera_kwargs)
  optimizer = create_optimizer(config)
  mesh = make_mesh()
  state = replicate(create_train_state(scene, optimizer, jax.random.PRNGKey(config.seed)), mesh)
  prior_params = replicate(prior.params, mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=config.train.checkpoint_every,
                                             keep=config.train.keep_checkpoints)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    state = checkpointer.restore(checkpoint_lib.abstract_like(state))
    print(f"resumed from step {start_step} in {workdir}", flush=True)
  writer = logging_utils.MetricsWriter(workdir, resume_step=start_step, enabled=primary)
  progress = logging_utils.Progress(config.train.steps, start_step=start_step,
                                    every=config.train.log_every)
  stop = checkpoint_lib.install_sigterm_handler()
  train_step = make_train_step(scene, optimizer, mesh)
  preview = jax.jit(functools.partial(render_preview, scene), static_argnames="mode")

  step, clock = start_step, StepClock(start_step)
  try:
    while step < config.train.steps:
      state, metrics = train_step(state, prior_params)
      step += 1
      if step % config.train.log_every == 0 or step == config.train.steps:
        _log_metrics(writer, progress, state, metrics, step=step, clock=clock,
                     max_nonfinite_steps=config.optimizer.max_nonfinite_steps)
      if config.train.image_every and step % config.train.image_every == 0:
        _log_images(writer, scene, state.params, step, preview)
      if stop.requested or checkpointer.reached_preemption(step):
        checkpointer.save(step, state, force=True)
        print(f"stopped by {stop.signal_name or 'preemption'} at step {step}; checkpoint "
              "saved, run the same command to resume", flush=True)
        return state
      checkpointer.save(step, state, force=step == config.train.steps)
  finally:
    progress.close()
    checkpointer.wait()
    writer.close()
    stop.uninstall()
  checkpointer.close()
  if config.export.at_end and primary:
    export_lib.export_run(scene, jax.device_get(state.params), workdir, step=step, strict=False)
  return state
