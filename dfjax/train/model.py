"""The scene being optimised, built from a config: models, schedules and renders of a view.

`Scene` holds the static parts of a step: the Mip-NeRF field, the environment-map background
(or a fixed colour), the prior, the camera ranges and the run's config. From it come the
parameters (`init_params`), the annealed hyperparameters of App. A.2 (λ_Σ, the orientation
weight), one training view with a sampled camera, light and shading (`render_view`), the
occupancy grid of the empty-space-skipping sampler (`initial_occupancy`, `refresh_occupancy`,
`occupied_fn`), and the deterministic previews used by the logs, the export and the
evaluation (`render_preview`).

Data flow: scene (cameras, field, occupancy, background, shading, render) -> here -> train.step,
train.loop, export, eval. Along with train.prior_setup, the only library code that reads the
config.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dfjax.scene import background as background_lib
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import field as field_lib
from dfjax.scene import occupancy as occupancy_lib
from dfjax.scene import render as render_lib
from dfjax.scene import shading as shading_lib


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
  """Fresh parameters: {"field": ..., and "background": ... for an environment-map MLP}."""
  k_field, k_background = jax.random.split(key)
  params = {"field": scene.field.init(k_field, jnp.zeros((1, 3)), jnp.ones((1, 3)))}
  if scene.background is not None:
    params["background"] = scene.background.init(k_background, jnp.ones((1, 3)))
  return params


def field_density(scene: Scene, params, points: jax.Array, step) -> jax.Array:
  """τ at points [..., 3] (as the renderer sees them at `step`, with λ_Σ's isotropic IPE)."""
  cov = jnp.broadcast_to(cov_scale_at(step, scene.config), points.shape)
  return scene.field.apply(params["field"], points, cov)[0]


def _grid_key(scene: Scene, step):
  # The same on every device and a function of (seed, step) only, so resumes are bitwise.
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(scene.config.seed),
                                               0x6f636375), step)


def initial_occupancy(scene: Scene, params):
  """The occupancy grid of fresh parameters ([G, G, G]), or None for the uniform sampler."""
  r = scene.config.render
  if r.sampler != "occupancy":
    return None
  grid = jnp.zeros((r.grid_resolution,) * 3, jnp.float32)
  return occupancy_lib.refresh_grid(
      grid, lambda x: field_density(scene, params, x, 0), _grid_key(scene, 0),
      bound=r.bound_radius, decay=0.0)


def refresh_occupancy(scene: Scene, params, grid, step):
  """The grid refreshed from `params` when step is a multiple of `render.grid_every`."""
  if grid is None:
    return None
  r = scene.config.render
  refresh = lambda: occupancy_lib.refresh_grid(
      grid, lambda x: field_density(scene, params, x, step), _grid_key(scene, step),
      bound=r.bound_radius, decay=r.grid_decay)
  return jax.lax.cond(step % r.grid_every == 0, refresh, lambda: grid)


def occupied_fn(scene: Scene, grid):
  """points [..., 3] -> [...] bool for the renderer, or None (uniform sampler).

  The threshold is `render.grid_threshold`, capped by the grid's mean so a field that is
  faint everywhere is not skipped entirely (as stable-dreamfusion caps its density threshold).
  """
  if grid is None:
    return None
  r = scene.config.render
  mask = occupancy_lib.occupied_cells(grid,
                                      threshold=jnp.minimum(r.grid_threshold, jnp.mean(grid)))
  return lambda points: occupancy_lib.is_occupied(mask, points, bound=r.bound_radius)


def sample_view(scene: Scene, key: jax.Array, step):
  """Sample a camera, a light and a shading mode (App. A.2): (CameraSample, Shading,
  the render's key). A function of the key and step alone, so the step can read a view's
  shading before rendering it."""
  config = scene.config
  k_camera, k_light, k_shading, k_render = jax.random.split(key, 4)
  sample = cameras_lib.sample_camera(k_camera, **scene.camera_kwargs)
  light = shading_lib.sample_light_position(
      k_light, sample.camera.position, distance_range=config.shading.light_distance_range)
  shading = shading_lib.sample_shading(
      k_shading, light, albedo_only=step < config.shading.albedo_warmup_steps,
      shaded_prob=config.shading.shaded_prob, textureless_prob=config.shading.textureless_prob,
      ambient=config.shading.ambient, diffuse=config.shading.diffuse)
  return sample, shading, k_render


def render_sampled(scene: Scene, params, sample, shading, key: jax.Array, step, occupancy=None,
                   *, normals=True):
  """Render a view drawn by `sample_view` (its CameraSample, Shading and render key).

  Args:
    occupancy: [G, G, G] grid for `render.sampler = "occupancy"`, else None.
    normals: True renders with normals by `render.normals`; False without (zero normals,
      one field evaluation per sample: right only for views that do not read them); a traced
      bool chooses between the two at run time (`lax.cond`: a real branch unless the
      predicate is batched by a vmap).

  Returns:
    RenderOutput [H, W, ...].
  """
  config = scene.config
  render = lambda method: render_lib.render_image(
      sample.camera, key=key, chunk=config.render.chunk,
      field_fn=functools.partial(scene.field.apply, params["field"]),
      background_fn=scene.background_fn(params), shading=shading,
      num_samples=config.render.num_samples, num_importance=config.render.num_importance,
      bound_radius=config.render.bound_radius, cov_scale=cov_scale_at(step, config),
      randomized=True, normals=method, occupied_fn=occupied_fn(scene, occupancy),
      num_candidates=config.render.num_candidates)
  if isinstance(normals, bool):
    return render(config.render.normals if normals else "none")
  return jax.lax.cond(normals, lambda: render(config.render.normals), lambda: render("none"))


def render_view(scene: Scene, params, key: jax.Array, step, occupancy=None, *, normals=True):
  """Sample a camera, a light and a shading mode, and render them (App. A.2): `sample_view`
  then `render_sampled` (see its arguments).

  Returns:
    (RenderOutput [H, W, ...], CameraSample).
  """
  sample, shading, k_render = sample_view(scene, key, step)
  return render_sampled(scene, params, sample, shading, k_render, step, occupancy,
                        normals=normals), sample


def grid_free_samples(config) -> int:
  """Samples per ray of the uniform renders that measure a run without its occupancy grid
  (the scores, the export's surface level): `num_samples`, or for the occupancy sampler
  `num_candidates`, its finest spacing."""
  r = config.render
  return r.num_candidates if r.sampler == "occupancy" else r.num_samples


PREVIEW_GRID_POINTS = 4  # random points per cell of a preview's occupancy grid


def preview_grid(scene: Scene, params, step):
  """The grid the previews of an occupancy-sampler run skip empty space by, from `params`
  alone (export and evaluation have no TrainState): per cell, the largest density at
  PREVIEW_GRID_POINTS random points (fixed keys, so previews are deterministic). None for the
  uniform sampler.

  Returns:
    [G, G, G] or None.
  """
  r = scene.config.render
  if r.sampler != "occupancy":
    return None
  grid = jnp.zeros((r.grid_resolution,) * 3, jnp.float32)
  for k in range(PREVIEW_GRID_POINTS):
    grid = occupancy_lib.refresh_grid(
        grid, lambda x: field_density(scene, params, x, step),
        jax.random.fold_in(jax.random.PRNGKey(0), k), bound=r.bound_radius, decay=1.0)
  return grid


def preview_cameras(config, *, resolution: int):
  """Front, side, back and overhead cameras for render grids and the turntable."""
  e = config.export
  views = ((0.0, 15.0), (90.0, 15.0), (180.0, 15.0), (0.0, 75.0))
  return [cameras_lib.camera_from_angles(azimuth_deg=a, elevation_deg=el,
                                         distance=e.video_distance, fov_deg=e.video_fov,
                                         width=resolution, height=resolution)
          for a, el in views]


PREVIEW_MODES = ("albedo", "normals", "textureless")


def render_preview(scene: Scene, params, camera: cameras_lib.Camera, step,
                   grid=None) -> dict:
  """Deterministic render of `params` from `camera` for logs, export and evaluation.

  One pass gives all three images: the samples are lit from the camera with textureless
  shading (normals computed), and the albedo is composited alongside (`RenderOutput.albedo`,
  equal to an albedo-only render), so no image costs a render of its own. The samples are
  placed as in training: `num_samples` per ray by the run's sampler, over the occupied part
  of `grid` (the run's occupancy grid, or `preview_grid` when None) for the occupancy
  sampler.

  Returns:
    {"albedo": colour, "normals": normals mapped to [0, 1] over white, "textureless": white
    lit from the camera}, each [H, W, 3] in [0, 1].
  """
  config, r = scene.config, scene.config.render
  shading = shading_lib.Shading(light_position=camera.position, ambient=jnp.array(0.2),
                                diffuse=jnp.array(0.8), textureless=jnp.array(1.0))
  if r.sampler == "occupancy" and grid is None:
    grid = preview_grid(scene, params, step)
  out = render_lib.render_image(
      camera, key=jax.random.PRNGKey(0), chunk=r.chunk,
      field_fn=functools.partial(scene.field.apply, params["field"]),
      background_fn=scene.background_fn(params), shading=shading,
      num_samples=r.num_samples, num_importance=r.num_importance,
      bound_radius=r.bound_radius, cov_scale=cov_scale_at(step, config),
      randomized=False, normals=r.normals, occupied_fn=occupied_fn(scene, grid),
      num_candidates=r.num_candidates)
  alpha = out.accumulated_alpha[..., None]
  normals = 0.5 * out.normals + 0.5 * alpha + (1.0 - alpha)
  return {name: jnp.clip(image, 0.0, 1.0)
          for name, image in zip(PREVIEW_MODES, (out.albedo, normals, out.rgb))}


def render_previews(scene: Scene, params, cameras, step) -> dict:
  """`render_preview` of each camera (one compilation; the preview grid computed once).

  Returns:
    {mode: [N, H, W, 3] numpy} for each of PREVIEW_MODES.
  """
  preview = jax.jit(functools.partial(render_preview, scene))
  grid = jax.jit(functools.partial(preview_grid, scene))(params, step)
  frames = [jax.device_get(preview(params, camera, step, grid)) for camera in cameras]
  return {mode: np.stack([frame[mode] for frame in frames]) for mode in PREVIEW_MODES}
