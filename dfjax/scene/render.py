"""Volume rendering of a field inside the scene's bounding sphere.

Rays are sampled between their entry into and exit from the bounding sphere (DreamFusion
App. A.2: radius 1.4), optionally resampled hierarchically (NeRF, Mildenhall et al. 2020,
§5.2) or only where an occupancy grid says the field is not empty (`occupied_intervals`), and
alpha-composited (NeRF Eq. 3):
  α_i = 1 − exp(−τ_i δ_i),  T_i = Π_{j<i} (1 − α_j),  w_i = T_i α_i,
  C = Σ_i w_i c_i + (1 − Σ_i w_i) c_bg.
Each sample is a Gaussian: DreamFusion's isotropic λ_Σ·I when `cov_scale` is given, else the
Mip-NeRF conical frustum (Barron et al. 2021, Eqs. 7-8).

Data flow: scene.cameras, mip, field, occupancy, shading and background -> here -> train.model, toy.
"""
from __future__ import annotations

import functools
from flax import struct
import jax
import jax.numpy as jnp

from dfjax.scene import cameras as cameras_lib
from dfjax.scene import field as field_lib
from dfjax.scene import mip
from dfjax.scene import shading as shading_lib
from dfjax.scene.background import BackgroundFn
from dfjax.scene.shading import Shading

FieldFn = field_lib.FieldFn
__all__ = ["FieldFn", "BackgroundFn", "Shading", "RenderOutput", "render_rays", "render_image"]


@struct.dataclass
class RenderOutput:
  """What a render returns, leading shape `[...]` of the rays.

  Attributes:
    rgb: [..., 3] colour composited over the background.
    albedo: [..., 3] Σ_i w_i a_i + (1 − Σ_i w_i) background: the albedo composited over the
      background, i.e. what albedo-only shading renders, whatever the shading of `rgb`.
    accumulated_alpha: [...] Σ_i w_i, the opacity of the ray inside the bounding sphere.
    depth: [...] expected termination distance along the unit ray, Σ w_i t_i / Σ w_i
      (0 where the ray is empty).
    normals: [..., 3] Σ_i w_i n_i (not renormalised).
    weights: [..., num_samples] compositing weights w_i.
    sample_normals: [..., num_samples, 3] normals n_i of the samples.
    directions: [..., 3] unit ray directions.
  """
  rgb: jax.Array
  albedo: jax.Array
  accumulated_alpha: jax.Array
  depth: jax.Array
  normals: jax.Array
  weights: jax.Array
  sample_normals: jax.Array
  directions: jax.Array


def intersect_sphere(origins: jax.Array, directions: jax.Array, radius: float):
  """Where rays enter and leave a sphere at the origin.

  Args:
    origins, directions: [..., 3], unit directions.
    radius: sphere radius.

  Returns:
    near, far: [...] distances (near ≥ 0; near == far for rays that miss).
  """
  b = jnp.sum(origins * directions, axis=-1)
  c = jnp.sum(origins**2, axis=-1) - radius**2
  half_chord = jnp.sqrt(jnp.maximum(b * b - c, 0.0))
  near = jnp.maximum(-b - half_chord, 0.0)
  far = jnp.maximum(-b + half_chord, near)
  return near, far


def stratified_intervals(key: jax.Array, near: jax.Array, far: jax.Array, num_samples: int,
                         *, randomized: bool) -> jax.Array:
  """Interval edges evenly spaced in [near, far], jittered within each bin when randomized.

  Args:
    near, far: [...].

  Returns:
    [..., num_samples + 1] sorted edges from near to far.
  """
  u = jnp.linspace(0.0, 1.0, num_samples + 1)
  if randomized:
    mids = 0.5 * (u[1:] + u[:-1])
    upper = jnp.concatenate([mids, u[-1:]])
    lower = jnp.concatenate([u[:1], mids])
    u = lower + (upper - lower) * jax.random.uniform(key, near.shape + (num_samples + 1,))
  return near[..., None] + (far - near)[..., None] * u


def compositing_weights(density: jax.Array, t_edges: jax.Array) -> jax.Array:
  """w_i = T_i (1 − exp(−τ_i δ_i)) (NeRF Eq. 3) of contiguous intervals.

  Args:
    density: [..., num_samples] τ_i.
    t_edges: [..., num_samples + 1] interval edges along unit rays.

  Returns:
    [..., num_samples] weights.
  """
  return interval_weights(density, t_edges[..., 1:] - t_edges[..., :-1])


def interval_weights(density: jax.Array, deltas: jax.Array) -> jax.Array:
  """w_i = T_i (1 − exp(−τ_i δ_i)), T_i = exp(−Σ_{j<i} τ_j δ_j) (NeRF Eq. 3).

  The intervals need not touch: space between them is taken to be empty, as the occupancy
  sampler's skipped cells are.

  Args:
    density: [..., num_samples] τ_i.
    deltas: [..., num_samples] interval lengths δ_i along unit rays.

  Returns:
    [..., num_samples] weights.
  """
  optical_depth = density * deltas
  alpha = 1.0 - jnp.exp(-optical_depth)
  accumulated = jnp.cumsum(optical_depth, axis=-1)
  transmittance = jnp.exp(-jnp.concatenate(
      [jnp.zeros_like(accumulated[..., :1]), accumulated[..., :-1]], axis=-1))
  return transmittance * alpha


def occupied_intervals(key: jax.Array, origins: jax.Array, directions: jax.Array,
                       near: jax.Array, far: jax.Array, occupied_fn, num_samples: int,
                       num_candidates: int, *, randomized: bool):
  """Stratified samples over only the occupied part of each ray (empty-space skipping).

  [near, far] is cut into `num_candidates` equal bins; a bin is kept when its midpoint lies in
  an occupied cell (`occupied_fn`). The kept bins, laid end to end, form a ray of length
  S = Σ kept lengths, and `num_samples` stratified intervals are drawn along that compressed
  ray exactly as `stratified_intervals` draws them along [near, far]; each is mapped back to
  world depth through the piecewise-linear map s -> t. An interval that spans a skipped gap
  keeps its compressed length δ (the gap holds no density), so the quadrature of NeRF Eq. 3
  is unchanged: with every bin kept this is the uniform sampler, and with none every δ is 0
  and the ray is empty.

  Args:
    origins, directions: [..., 3].
    near, far: [...] the ray's span inside the bounding sphere.
    occupied_fn: points [..., 3] -> [...] bool.
    num_samples: intervals per ray; num_candidates: bins tested per ray.

  Returns:
    (t_mid [..., num_samples] depths of the interval centres, deltas [..., num_samples]).
  """
  u = jnp.linspace(0.0, 1.0, num_candidates + 1)
  t_edges = near[..., None] + (far - near)[..., None] * u
  t_bin = 0.5 * (t_edges[..., 1:] + t_edges[..., :-1])
  occupied = occupied_fn(origins[..., None, :] + directions[..., None, :] * t_bin[..., None])
  lengths = jnp.where(occupied, t_edges[..., 1:] - t_edges[..., :-1], 0.0)
  s_edges = jnp.concatenate([jnp.zeros_like(lengths[..., :1]), jnp.cumsum(lengths, -1)], -1)
  zero = jnp.zeros_like(near)
  samples = stratified_intervals(key, zero, s_edges[..., -1], num_samples,
                                 randomized=randomized)
  s_mid = 0.5 * (samples[..., 1:] + samples[..., :-1])
  interp = jnp.interp
  for _ in range(near.ndim):
    interp = jax.vmap(interp)
  t_mid = interp(s_mid, s_edges, t_edges)
  deltas = samples[..., 1:] - samples[..., :-1]
  return jax.lax.stop_gradient(t_mid), jax.lax.stop_gradient(deltas)


def resample_intervals(key: jax.Array, t_edges: jax.Array, weights: jax.Array,
                       num_samples: int, *, randomized: bool,
                       padding: float = 0.01) -> jax.Array:
  """Inverse-transform sampling of new edges from a piecewise-constant pdf (NeRF §5.2).

  Args:
    t_edges: [..., n + 1] current edges; weights: [..., n] their weights.
    num_samples: number of new intervals.
    padding: added to every weight so empty rays still spread their samples (and so the
      pdf has no zero-width steps).

  Returns:
    [..., num_samples + 1] sorted edges spanning [t_edges[0], t_edges[-1]].
  """
  # Max over each pair of neighbouring bins, then average (Mip-NeRF §3.2, "blurpool"): the
  # midpoint rule credits an opaque surface to the bin after the one it lies in, and this
  # spreads weight to the neighbours so the surface's own bin is sampled too.
  weights = jax.lax.stop_gradient(weights)
  padded = jnp.concatenate([weights[..., :1], weights, weights[..., -1:]], axis=-1)
  pair_max = jnp.maximum(padded[..., :-1], padded[..., 1:])
  weights = 0.5 * (pair_max[..., :-1] + pair_max[..., 1:]) + padding
  pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
  cdf = jnp.concatenate([jnp.zeros_like(pdf[..., :1]),
                         jnp.minimum(1.0, jnp.cumsum(pdf[..., :-1], axis=-1)),
                         jnp.ones_like(pdf[..., :1])], axis=-1)
  if randomized:
    u = jnp.sort(jax.random.uniform(key, t_edges.shape[:-1] + (num_samples + 1,)), axis=-1)
    u = u.at[..., 0].set(0.0).at[..., -1].set(1.0)
  else:
    u = jnp.broadcast_to(jnp.linspace(0.0, 1.0, num_samples + 1),
                         t_edges.shape[:-1] + (num_samples + 1,))
  interp = lambda uu, cc, tt: jnp.interp(uu, cc, tt)
  for _ in range(t_edges.ndim - 1):
    interp = jax.vmap(interp)
  return jax.lax.stop_gradient(interp(u, cdf, t_edges))


def sample_gaussians(rays: cameras_lib.Rays, t_edges: jax.Array, *, cov_scale):
  """Gaussians of contiguous intervals along each ray (`interval_gaussians` of the edges).

  Args:
    rays: leading shape [...].
    t_edges: [..., num_samples + 1].

  Returns:
    means: [..., num_samples, 3] world positions; cov_diag: [..., num_samples, 3].
  """
  return interval_gaussians(rays, t_edges[..., :-1], t_edges[..., 1:], cov_scale=cov_scale)


def interval_gaussians(rays: cameras_lib.Rays, t0: jax.Array, t1: jax.Array, *, cov_scale):
  """Gaussians of the intervals [t0, t1] along each ray.

  Args:
    rays: leading shape [...].
    t0, t1: [..., num_samples] interval starts and ends.
    cov_scale: DreamFusion's isotropic variance λ_Σ (App. A.2), or None for Mip-NeRF's
      conical frustums (diagonal of their covariance).

  Returns:
    means: [..., num_samples, 3] world positions; cov_diag: [..., num_samples, 3].
  """
  if cov_scale is None:
    means, covs = mip.conical_frustum_to_gaussian(rays.directions, t0, t1, rays.radii)
    cov_diag = jnp.diagonal(covs, axis1=-2, axis2=-1)
  else:
    means = rays.directions[..., None, :] * (0.5 * (t0 + t1))[..., None]
    cov_diag = jnp.broadcast_to(jnp.asarray(cov_scale, means.dtype), means.shape)
  return rays.origins[..., None, :] + means, cov_diag


def composite(weights: jax.Array, values: jax.Array) -> jax.Array:
  """Σ_i w_i v_i. weights: [..., n]; values: [..., n, C] -> [..., C]."""
  return jnp.sum(weights[..., None] * values, axis=-2)


def render_rays(rays: cameras_lib.Rays, *, field_fn: FieldFn, background_fn: BackgroundFn,
                shading: Shading, key: jax.Array, num_samples: int = 64,
                num_importance: int = 0, bound_radius: float = 1.4, cov_scale=None,
                randomized: bool = True, normals: str = "autodiff", occupied_fn=None,
                num_candidates: int = 0) -> RenderOutput:
  """Render rays through a field inside a sphere of radius `bound_radius`.

  Samples are placed by one of three samplers: `num_samples` stratified samples over the whole
  ray (the paper's); with `num_importance > 0`, a first stratified pass (density only, no
  gradient) places `num_importance` samples hierarchically, and only those are shaded and
  returned; with `occupied_fn`, `num_samples` stratified samples over only the occupied part
  of the ray (`occupied_intervals`, empty-space skipping).

  Args:
    rays: leading shape [...].
    field_fn: (means [..., 3], cov_diag [..., 3]) -> (density [...], albedo [..., 3]).
    background_fn: directions [..., 3] -> colours [..., 3].
    shading: how the samples are lit.
    key: PRNG key for the sample positions.
    normals: "autodiff", "finite_difference" or "none" (see field.density_normals); "none"
      is only right for albedo-only shading, which does not read normals.
    occupied_fn: points [..., 3] -> [...] bool, e.g. `occupancy.is_occupied` of a grid.
    num_candidates: bins per ray tested against `occupied_fn`.

  Returns:
    RenderOutput with leading shape [...].
  """
  k_coarse, k_fine = jax.random.split(key)
  near, far = intersect_sphere(rays.origins, rays.directions, bound_radius)
  if occupied_fn is not None:
    if num_importance > 0:
      raise ValueError("the occupancy sampler replaces hierarchical sampling: set "
                       "num_importance to 0")
    t_mid, deltas = occupied_intervals(k_coarse, rays.origins, rays.directions, near, far,
                                       occupied_fn, num_samples, num_candidates,
                                       randomized=randomized)
    t0, t1 = t_mid - 0.5 * deltas, t_mid + 0.5 * deltas
  else:
    t_edges = stratified_intervals(k_coarse, near, far, num_samples, randomized=randomized)
    if num_importance > 0:
      means, cov_diag = sample_gaussians(rays, t_edges, cov_scale=cov_scale)
      coarse_density, _ = field_fn(means, cov_diag)
      t_edges = resample_intervals(k_fine, t_edges,
                                   compositing_weights(coarse_density, t_edges),
                                   num_importance, randomized=randomized)
    t0, t1 = t_edges[..., :-1], t_edges[..., 1:]
  means, cov_diag = interval_gaussians(rays, t0, t1, cov_scale=cov_scale)
  density, albedo, sample_normals = field_lib.density_normals(field_fn, means, cov_diag,
                                                              method=normals)
  weights = interval_weights(density, t1 - t0)
  colors = shading_lib.shade(albedo, sample_normals, means, shading)
  accumulated_alpha = jnp.sum(weights, axis=-1)
  t_mid = 0.5 * (t0 + t1)
  # The 1e-10 keeps empty rays at depth 0 instead of 0/0.
  depth = jnp.sum(weights * t_mid, axis=-1) / jnp.maximum(accumulated_alpha, 1e-10)
  background = (1.0 - accumulated_alpha)[..., None] * background_fn(rays.directions)
  return RenderOutput(rgb=composite(weights, colors) + background,
                      albedo=composite(weights, albedo) + background,
                      accumulated_alpha=accumulated_alpha, depth=depth,
                      normals=composite(weights, sample_normals), weights=weights,
                      sample_normals=sample_normals, directions=rays.directions)


def render_image(camera: cameras_lib.Camera, *, chunk: int = 4096, key: jax.Array,
                 **render_kwargs) -> RenderOutput:
  """Render every pixel of a camera, `chunk` rays at a time (`jax.lax.map` over chunks).

  Works inside and outside `jit` and is differentiable; memory grows with `chunk`, not with
  the image size.

  Args:
    camera: the camera.
    chunk: rays per chunk.
    key: PRNG key (one sub-key per chunk).
    **render_kwargs: keyword arguments of `render_rays`.

  Returns:
    RenderOutput with leading shape [height, width].
  """
  rays = cameras_lib.generate_rays(camera)
  num_rays = camera.height * camera.width
  chunk = min(chunk, num_rays)
  num_chunks = -(-num_rays // chunk)
  pad = num_chunks * chunk - num_rays

  def to_chunks(x):
    x = x.reshape(num_rays, *x.shape[2:])
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
    return x.reshape(num_chunks, chunk, *x.shape[1:])

  chunked = jax.tree.map(to_chunks, rays)
  keys = jax.random.split(key, num_chunks)
  render = functools.partial(render_rays, **render_kwargs)
  out = jax.lax.map(lambda args: render(args[0], key=args[1]), (chunked, keys))
  unchunk = lambda x: x.reshape(num_chunks * chunk, *x.shape[2:])[:num_rays].reshape(
      camera.height, camera.width, *x.shape[2:])
  return jax.tree.map(unchunk, out)

