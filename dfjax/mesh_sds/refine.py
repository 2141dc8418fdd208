"""SDS on the vertices of an existing mesh (DreamFusion, arXiv:2209.14988, "after optimisation").

The paper notes a second use of the SDS gradient: optimise the vertex positions of an existing
mesh directly, with Laplacian smoothness and edge-length regularisers so that the noisy signal
does not tear the surface. Each step samples cameras, lights and shading like the trainer,
renders the displaced mesh with the soft rasteriser (`mesh_sds.rasterize.render_mesh`), and
takes one jitted Adam step of the vertex offsets (`make_refine_step`) whose only image signal
is `sds.score_distillation`, plus the regularisers of `mesh_sds.regularizers`; `refine` runs
it and returns a new `export.mesh.Mesh`. Faces and vertex colours never change.

Data flow: scene (cameras, shading), priors.sds, export.mesh, mesh_sds.rasterize and
mesh_sds.regularizers -> here -> the CLI (`python -m dfjax.mesh_sds`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib
from dfjax.mesh_sds import rasterize
from dfjax.mesh_sds import regularizers
from dfjax.priors import sds as sds_lib
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import shading as shading_lib


@struct.dataclass
class MeshTensors:
  """The fixed parts of the mesh being refined (a pytree argument of the step, not donated).

  Attributes:
    rest_vertices: [V, 3] initial vertex positions, world units.
    faces: [F, 3] int32.
    vertex_colors: [V, 3] albedo in [0, 1].
    edges: [E, 2] int32 (`mesh_edges`), for the Laplacian.
    length_edges: [E', 2] int32, the edges of non-zero initial length, for the edge term.
    rest_lengths: [E'] their initial lengths (the edge term's targets).
  """
  rest_vertices: jax.Array
  faces: jax.Array
  vertex_colors: jax.Array
  edges: jax.Array
  length_edges: jax.Array
  rest_lengths: jax.Array

  @classmethod
  def from_mesh(cls, mesh: mesh_lib.Mesh) -> "MeshTensors":
    edges = regularizers.mesh_edges(mesh.faces)
    vertices = np.asarray(mesh.vertices, np.float32)
    lengths = np.linalg.norm(vertices[edges[:, 1]] - vertices[edges[:, 0]], axis=-1)
    # A zero-length edge (coincident vertices, which marching cubes can make) has no scale to
    # keep, and dividing by it would blow up its gradient: it is left out of the edge term.
    kept = lengths > 1e-7
    return cls(rest_vertices=jnp.asarray(vertices), faces=jnp.asarray(mesh.faces, jnp.int32),
               vertex_colors=jnp.asarray(mesh.vertex_colors, jnp.float32) / 255.0,
               edges=jnp.asarray(edges), length_edges=jnp.asarray(edges[kept]),
               rest_lengths=jnp.asarray(lengths[kept], jnp.float32))


@struct.dataclass
class RefineState:
  """Everything the refinement changes.

  Attributes:
    step: [] int32 updates applied.
    offsets: [V, 3] vertex displacements from the rest positions (the parameters).
    opt_state: optax state of the offsets.
  """
  step: jax.Array
  offsets: jax.Array
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class RefineSettings:
  """Hyperparameters of the refinement (static; built from the config by the entry point).

  Attributes:
    seed: every view's randomness derives from (seed, step, view).
    views_per_step: cameras rendered per step (their SDS gradients are averaged).
    sigma, gamma, epsilon, min_coverage, near, far, pixel_chunk: `render_mesh`.
    background: [3] background colour.
    laplacian_weight: weight of `laplacian_loss` (per world unit^2).
    edge_weight: weight of `edge_length_loss`.
    shaded_prob, textureless_prob, ambient, diffuse, light_distance_range: the shading mode
      of each view (`shading.sample_shading`, `shading.sample_light_position`).
    guidance_scale, t_range, weighting: `sds.score_distillation`.
  """
  seed: int = 0
  views_per_step: int = 1
  sigma: float = 1.0
  gamma: float = 1e-4
  epsilon: float = 1e-3
  min_coverage: float = 1e-4
  near: float = 0.1
  far: float = 5.0
  pixel_chunk: int = 1024
  background: tuple = (1.0, 1.0, 1.0)
  laplacian_weight: float = 0.0
  edge_weight: float = 0.0
  shaded_prob: float = 0.0
  textureless_prob: float = 0.5
  ambient: float = 0.1
  diffuse: float = 0.9
  light_distance_range: tuple = (0.8, 1.5)
  guidance_scale: float = 7.5
  t_range: tuple = (0.02, 0.98)
  weighting: str = "sds"


def render_sampled_view(vertices, mesh: MeshTensors, key, *, camera_kwargs: dict,
                        settings: RefineSettings):
  """Sample a camera, light and shading mode (App. A.2) and soft-rasterise the mesh.

  Returns:
    (MeshRender, view bucket [] int32).
  """
  k_camera, k_light, k_shading = jax.random.split(key, 3)
  sample = cameras_lib.sample_camera(k_camera, **camera_kwargs)
  light = shading_lib.sample_light_position(k_light, sample.camera.position,
                                            distance_range=settings.light_distance_range)
  shading = None  # albedo only: no normals or lighting to compute.
  if settings.shaded_prob > 0:
    shading = shading_lib.sample_shading(
        k_shading, light, albedo_only=jnp.array(False), shaded_prob=settings.shaded_prob,
        textureless_prob=settings.textureless_prob, ambient=settings.ambient,
        diffuse=settings.diffuse)
  out = rasterize.render_mesh(vertices, mesh.faces, mesh.vertex_colors, sample.camera,
                              shading=shading, background=settings.background, sigma=settings.sigma,
                              gamma=settings.gamma, epsilon=settings.epsilon,
                              min_coverage=settings.min_coverage, near=settings.near,
                              far=settings.far, pixel_chunk=settings.pixel_chunk)
  return out, cameras_lib.view_bucket(sample.azimuth_deg, sample.elevation_deg)


def refine_loss(offsets, mesh: MeshTensors, prior_params, step, *, prior, camera_kwargs: dict,
                settings: RefineSettings):
  """SDS of `views_per_step` sampled views plus the mesh regularisers.

  Returns:
    (loss, metrics dict of scalars).
  """
  vertices = mesh.rest_vertices + offsets
  # The step's key is a function of (seed, step) alone, as in train.step.view_key.
  k_views, k_sds = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(settings.seed), step))
  render_keys = jax.random.split(k_views, settings.views_per_step)
  render = functools.partial(render_sampled_view, vertices, mesh, camera_kwargs=camera_kwargs,
                             settings=settings)
  out, buckets = jax.lax.map(render, render_keys)
  # One SDS call for the whole batch; its loss averages over views (sds.score_distillation).
  sds = sds_lib.score_distillation(
      prior, prior_params, out.rgb, buckets, k_sds, guidance_scale=settings.guidance_scale,
      t_range=settings.t_range, weighting=settings.weighting)
  laplacian = regularizers.laplacian_loss(vertices, mesh.edges)
  edge = regularizers.edge_length_loss(vertices, mesh.length_edges, mesh.rest_lengths)
  loss = sds.loss + settings.laplacian_weight * laplacian + settings.edge_weight * edge
  return loss, {"loss": loss, "loss_sds": sds.loss, "laplacian": laplacian, "edge": edge,
                "sds_grad_norm": sds.grad_norm, "alpha": jnp.mean(out.alpha),
                "sds_nonfinite": sds.num_nonfinite.astype(jnp.float32)}


def create_refine_state(mesh: MeshTensors, optimizer) -> RefineState:
  """Zero offsets, fresh optimiser state, step 0."""
  offsets = jnp.zeros_like(mesh.rest_vertices)
  return RefineState(step=jnp.zeros((), jnp.int32), offsets=offsets,
                     opt_state=optimizer.init(offsets))


def make_refine_step(prior, *, camera_kwargs: dict, settings: RefineSettings, optimizer):
  """The jitted step (state, mesh, prior_params) -> (state, metrics); the state is donated.

  An update whose gradient is not finite is skipped (offsets and optimiser state kept).
  """
  grad_fn = jax.grad(functools.partial(refine_loss, prior=prior, camera_kwargs=camera_kwargs,
                                       settings=settings), has_aux=True)

  def step(state: RefineState, mesh: MeshTensors, prior_params):
    grads, metrics = grad_fn(state.offsets, mesh, prior_params, state.step)
    finite = jnp.all(jnp.isfinite(grads))
    grads = jnp.where(finite, grads, 0.0)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.offsets)
    offsets = optax.apply_updates(state.offsets, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = RefineState(step=state.step + 1, offsets=keep(offsets, state.offsets),
                            opt_state=keep(opt_state, state.opt_state))
    return new_state, dict(metrics, skipped=(~finite).astype(jnp.float32))

  return jax.jit(step, donate_argnums=0)


def refine(mesh: mesh_lib.Mesh, *, prior, camera_kwargs: dict, settings: RefineSettings,
           steps: int, learning_rate: float, log_every: int = 0, log=print) -> mesh_lib.Mesh:
  """Optimise the vertex positions of `mesh` with SDS for `steps` Adam steps.

  Args:
    mesh: the mesh to refine (its faces and colours are kept).
    prior: an object with the prior protocol; `prior.params` are its frozen weights.
    camera_kwargs: `cameras.sample_camera`'s keyword arguments (`train.prior_setup.build_prior`).
    settings: RefineSettings.
    steps: number of updates.
    learning_rate: Adam step size, world units per step.
    log_every: print a progress line every this many steps (0: never).
    log: the function that prints a line.

  Returns:
    A new Mesh with moved vertices.
  """
  optimizer = optax.adam(learning_rate)
  tensors = MeshTensors.from_mesh(mesh)
  state = create_refine_state(tensors, optimizer)
  step_fn = make_refine_step(prior, camera_kwargs=camera_kwargs, settings=settings,
                             optimizer=optimizer)
  start = time.perf_counter()
  for step in range(1, steps + 1):
    state, metrics = step_fn(state, tensors, prior.params)
    if log_every and (step % log_every == 0 or step == steps):
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = time.perf_counter() - start
      log(f"step {step}/{steps}: sds {m['loss_sds']:.4g}, laplacian {m['laplacian']:.3g}, "
          f"edge {m['edge']:.3g}, alpha {m['alpha']:.3f}, skipped {int(m['skipped'])}, "
          f"{elapsed:.1f} s")
  vertices = np.asarray(tensors.rest_vertices + state.offsets, np.float32)
  return mesh_lib.Mesh(vertices=vertices, faces=np.asarray(mesh.faces, np.int32),
                       vertex_colors=np.asarray(mesh.vertex_colors, np.uint8))


def check_settings(config) -> None:
  """Raise UserError naming the first `config.mesh_sds` field with a value that cannot work."""
  section = config.mesh_sds
  for name in ("steps", "learning_rate", "views_per_step", "sigma", "gamma", "log_every"):
    if not section[name] > 0:
      raise UserError(f"config.mesh_sds.{name} must be positive, got {section[name]}")
  for name in ("laplacian_weight", "edge_weight", "epsilon"):
    if not section[name] >= 0:
      raise UserError(f"config.mesh_sds.{name} must be non-negative, got {section[name]}")
  if not 0.0 <= section.shaded_prob <= 1.0:
    raise UserError(f"config.mesh_sds.shaded_prob must be a probability in [0, 1], got "
                    f"{section.shaded_prob}")
  if not 0.0 < section.min_coverage < 1.0:
    raise UserError(f"config.mesh_sds.min_coverage must lie in (0, 1), got "
                    f"{section.min_coverage}")
  near, far = section.near, section.far
  if not 0 < near < far:
    raise UserError(f"config.mesh_sds.near and far must satisfy 0 < near < far, got {near}, "
                    f"{far}")


def settings_from_config(config) -> RefineSettings:
  """RefineSettings from config.mesh_sds (geometry, loss) and config.prior/shading/background."""
  m, s = config.mesh_sds, config.shading
  return RefineSettings(
      seed=config.seed, views_per_step=m.views_per_step, sigma=m.sigma, gamma=m.gamma,
      epsilon=m.epsilon, min_coverage=m.min_coverage, near=m.near, far=m.far,
      pixel_chunk=m.pixel_chunk, background=tuple(config.background.color),
      laplacian_weight=m.laplacian_weight, edge_weight=m.edge_weight,
      shaded_prob=m.shaded_prob, textureless_prob=s.textureless_prob, ambient=s.ambient,
      diffuse=s.diffuse, light_distance_range=tuple(s.light_distance_range),
      guidance_scale=config.prior.guidance_scale, t_range=tuple(config.prior.t_range),
      weighting=config.prior.weighting)
