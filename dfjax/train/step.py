"""The data-parallel SDS step: one TrainState, one optax update, averaged over devices.

Each device draws its own camera, light, shading mode, timestep and noise from a key derived
from (seed, step, device index) alone, renders one view, and computes the SDS surrogate
(DreamFusion §3, Eq. 3) plus the orientation and opacity regularisers (App. A.2). Gradients
are averaged across devices (`jax.lax.pmean` under `jax.shard_map`) and one optax update is
applied to the replicated state. Frozen prior weights travel as a separate, non-donated
argument; the state is donated.

Data flow: train.model, priors.sds and scene.losses -> here -> train.loop.
"""
from __future__ import annotations

import functools
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dfjax.priors import sds as sds_lib
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import losses
from dfjax.scene import shading as shading_lib
from dfjax.train import model as model_lib


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
    occupancy: [G, G, G] the occupancy grid of `render.sampler = "occupancy"`
      (dfjax.scene.occupancy), else None (so uniform-sampler checkpoints keep their layout).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  nonfinite_steps: jax.Array
  consecutive_nonfinite: jax.Array
  occupancy: Any = None


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


def create_train_state(scene: model_lib.Scene, optimizer, key: jax.Array) -> TrainState:
  """Step 0: fresh parameters (`model.init_params`) and the optimizer's initial state."""
  params = model_lib.init_params(scene, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    nonfinite_steps=jnp.zeros((), jnp.int32),
                    consecutive_nonfinite=jnp.zeros((), jnp.int32),
                    occupancy=model_lib.initial_occupancy(scene, params))


def view_key(seed: int, step, device_index, view_index):
  """The key of one view: a function of (seed, step, device, view) only (bitwise resume)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
  return jax.random.fold_in(jax.random.fold_in(key, device_index), view_index)


def split_view_key(key: jax.Array):
  """A view's key -> (the render's camera, light, shading and samples; the SDS noise)."""
  return jax.random.split(key)


def view_loss(params, prior_params, key: jax.Array, step, occupancy=None, normals=None, *,
              scene: model_lib.Scene):
  """SDS + regularisers of one sampled view. Returns (loss, metrics dict of scalars).

  With `loss.orientation_in_albedo_views` False, an albedo-only view has no orientation term
  and, when `normals` is None, renders without normals; `normals` (a traced bool) overrides
  whether they are computed, for views batched together (`device_gradients`).
  """
  config = scene.config
  k_view, k_sds = split_view_key(key)
  sample, shading, k_render = model_lib.sample_view(scene, k_view, step)
  every_view = config.loss.orientation_in_albedo_views
  if every_view:
    normals = True
  elif normals is None:
    normals = shading_lib.reads_normals(shading)
  out = model_lib.render_sampled(scene, params, sample, shading, k_render, step, occupancy,
                                 normals=normals)
  bucket = cameras_lib.view_bucket(sample.azimuth_deg, sample.elevation_deg)
  sds = sds_lib.score_distillation(
      scene.prior, prior_params, out.rgb[None], bucket[None], k_sds,
      guidance_scale=config.prior.guidance_scale, t_range=tuple(config.prior.t_range),
      weighting=config.prior.weighting)
  orientation = losses.orientation_loss(out.weights, out.sample_normals, out.directions)
  if not every_view:
    orientation = jnp.where(shading_lib.reads_normals(shading), orientation, 0.0)
  opacity = losses.opacity_loss(out.accumulated_alpha)
  loss = (sds.loss + model_lib.orientation_weight_at(step, config) * orientation
          + config.loss.opacity_weight * opacity)
  num_timesteps = len(scene.prior.alphas_cumprod)
  metrics = {"loss": loss, "loss_sds": sds.loss, "loss_orientation": orientation,
             "loss_opacity": opacity, "t": sds.timesteps[0] / num_timesteps,
             "sds_nonfinite": sds.num_nonfinite.astype(jnp.float32),
             "sds_grad_norm": sds.grad_norm,
             "accumulated_alpha": jnp.mean(out.accumulated_alpha)}
  return loss, metrics


def device_gradients(state: TrainState, prior_params, device_index, *, scene: model_lib.Scene):
  """Mean gradient and metrics of this device's views (`train.views_per_device`).

  Without the orientation loss in albedo-only views, the device renders its views without
  normals when none of them is lit or textureless (one branch for all: a predicate per view
  would be batched by the vmap, and both renders would run).
  """
  config = scene.config
  views = config.train.views_per_device
  grad_fn = jax.grad(functools.partial(view_loss, scene=scene), has_aux=True)
  if views == 1:
    # The paper's one view per chip, and every shipped config: no batch axis. Under a vmap of
    # size 1 XLA:CPU ran the same FLOPs and bytes 1.2-1.4x slower (experiments/compare_step.py).
    key = view_key(config.seed, state.step, device_index, 0)
    return grad_fn(state.params, prior_params, key, state.step, state.occupancy)
  keys = jax.vmap(lambda v: view_key(config.seed, state.step, device_index, v))(
      jnp.arange(views))
  normals = None
  if not config.loss.orientation_in_albedo_views:
    shading = jax.vmap(lambda k: model_lib.sample_view(
        scene, split_view_key(k)[0], state.step)[1])(keys)
    normals = jnp.any(shading_lib.reads_normals(shading))
  grads, metrics = jax.vmap(grad_fn, in_axes=(None, None, 0, None, None, None))(
      state.params, prior_params, keys, state.step, state.occupancy, normals)
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
      consecutive_nonfinite=(state.consecutive_nonfinite + 1) * skipped,
      occupancy=state.occupancy)
  grad_norm = optax.global_norm(safe_grads)
  return new_state, {"grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32),
                     "nonfinite_steps": new_state.nonfinite_steps.astype(jnp.float32)}


def apply_update(state, grads, metrics, *, scene, optimizer):
  """Apply the device-averaged gradients and refresh the occupancy grid (every
  `render.grid_every` steps, from the new parameters); metrics gain the update's and the
  learning rate."""
  state, update_metrics = apply_gradients(state, grads, optimizer)
  state = state.replace(occupancy=model_lib.refresh_occupancy(scene, state.params,
                                                              state.occupancy, state.step))
  learning_rate = learning_rate_schedule(scene.config)(state.step - 1)
  return state, dict(metrics, **update_metrics, learning_rate=learning_rate)


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over every device (every host's, on pods)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def make_train_step(scene: model_lib.Scene, optimizer, mesh: jax.sharding.Mesh):
  """The jitted, data-parallel step: (state, prior_params) -> (state, metrics).

  Under `jax.shard_map` every device runs `device_gradients` with its own index; `pmean`
  averages gradients and metrics, so every device applies the same update to its replica.
  """
  def per_device(state, prior_params):
    grads, metrics = device_gradients(state, prior_params, jax.lax.axis_index(DATA_AXIS),
                                      scene=scene)
    grads, metrics = jax.lax.pmean((grads, metrics), DATA_AXIS)
    return apply_update(state, grads, metrics, scene=scene, optimizer=optimizer)

  # check_vma=False: with varying-axis typing on, the gradient w.r.t. a replicated input is
  # already summed over devices by the transpose of the implicit broadcast, and the pmean
  # below would then average a sum. Off, each device's gradient is its own (pmap semantics)
  # and the pmean is the one reduction (tests/test_train.py checks it against the mean of
  # `device_gradients` over device indices).
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


def abstract_train_state(scene: model_lib.Scene, optimizer, sharding) -> TrainState:
  """The TrainState's shapes and dtypes, every leaf placed with `sharding`: a restore target
  that fits a checkpoint written on any number of processes and devices (nothing computed)."""
  state = jax.eval_shape(lambda: create_train_state(scene, optimizer, jax.random.PRNGKey(0)))
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                        sharding=sharding), state)


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A whole copy on every device of the mesh (every process's, on several processes)."""
  return NamedSharding(mesh, P())


def replicate(tree, mesh: jax.sharding.Mesh):
  """Place every leaf, replicated, on every device of the mesh.

  On several processes each one passes its own copy of `tree` (the same values on all: they
  come from the seed or the prior's files) and places it on its own devices; `device_put`
  to a sharding that spans processes assembles the global array from those local copies.
  """
  return jax.device_put(tree, replicated_sharding(mesh))
