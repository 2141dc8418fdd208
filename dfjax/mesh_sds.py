"""SDS on the vertices of an existing mesh (DreamFusion, arXiv:2209.14988, "after optimisation").

  python -m dfjax.mesh_sds --config=configs/mesh_sds.py --mesh=IN.ply --out=OUT.ply \
      [--config.prompt="a yellow duck"]

The paper notes a second use of the SDS gradient: optimise the vertex positions of an existing
mesh directly, with Laplacian smoothness and edge-length regularisers so that the noisy signal
does not tear the surface. That needs a renderer whose pixels are differentiable with respect
to vertex positions, including at silhouettes, where a hard rasteriser's gradient is zero
almost everywhere. This module uses the soft rasteriser of SoftRas (Liu et al. 2019, "Soft
Rasterizer: A Differentiable Renderer for Image-based 3D Reasoning", §3): every face covers
every pixel with a probability that decays with the pixel's squared distance to the projected
triangle, and the colours of overlapping faces are blended by a softmax over their depths.

Data flow: `project_vertices` -> `soft_coverage` (SoftRas Eq. 1) -> face colours (barycentric
albedo, `shading.shade`) -> `aggregate_colors` (SoftRas Eq. 2-3) and `silhouette` (Eq. 4), in
`render_mesh`; the regularisers `laplacian_loss` and `edge_length_loss`; one jitted Adam step
of the vertex offsets (`make_refine_step`), whose only image signal is
`sds.score_distillation`; `refine` runs it and returns a new `mesh.Mesh`. Faces and vertex
colours never change.

Pixel convention is dfjax's (`cameras`): OpenGL camera axes, pixel centres at +0.5, row 0 at
the top, so pixel (column x, row y) is the ray of `cameras.generate_rays`[y, x].
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

from absl import flags
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfjax import cameras as cameras_lib
from dfjax import main as main_lib
from dfjax import mesh as mesh_lib
from dfjax import sds as sds_lib
from dfjax import shading as shading_lib
from dfjax.errors import UserError

# Vertex colour of a mesh file without colours: mid-grey (uint8).
DEFAULT_GREY = 128


# ---------------------------------------------------------------------------------------------
# The soft rasteriser (SoftRas, Liu et al. 2019).


@struct.dataclass
class MeshRender:
  """A soft-rasterised image.

  Attributes:
    rgb: [height, width, 3] colour over the background.
    alpha: [height, width] soft silhouette 1 - prod_j (1 - D_j) (SoftRas Eq. 4).
  """
  rgb: jax.Array
  alpha: jax.Array


def project_vertices(vertices: jax.Array, camera: cameras_lib.Camera, *, near: float):
  """Pinhole projection of world points to continuous pixel coordinates.

  A point at camera coordinates (x, y, z) (OpenGL axes, the camera looks along -z) at depth
  Z = -z lands at column width/2 + focal x / Z and row height/2 - focal y / Z, the inverse of
  `cameras.generate_rays` (pixel centres at +0.5, row 0 at the top).

  Args:
    vertices: [V, 3] world positions.
    camera: a cameras.Camera.
    near: depths are clamped below at near / 2 before the division, so that points behind the
      camera give finite (if meaningless) pixels; callers drop faces with depth < near.

  Returns:
    (pixels [V, 2] as (column, row), depth [V] along the viewing axis, world units).
  """
  rotation, position = camera.c2w[:3, :3], camera.c2w[:3, 3]
  local = (vertices - position) @ rotation  # R^T (p - c), row-vector form.
  depth = -local[:, 2]
  safe_depth = jnp.maximum(depth, 0.5 * near)
  column = 0.5 * camera.width + camera.focal * local[:, 0] / safe_depth
  row = 0.5 * camera.height - camera.focal * local[:, 1] / safe_depth
  return jnp.stack([column, row], axis=-1), depth


def face_normals(vertices: jax.Array, faces: jax.Array) -> jax.Array:
  """Unit normals by the right-hand rule, (v1 - v0) x (v2 - v0) (outward for CCW faces).

  Args:
    vertices: [V, 3]; faces: [F, 3] int.

  Returns:
    [F, 3]; a degenerate face gets a finite, near-zero normal (the 1e-12 floor).
  """
  corners = vertices[faces]
  normal = jnp.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  return normal / jnp.sqrt(jnp.maximum(jnp.sum(normal * normal, -1, keepdims=True), 1e-12))


def _cross_2d(a, b):
  """z-component of the cross product of 2D vectors a, b [..., 2] -> [...]."""
  return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def barycentric_2d(points: jax.Array, triangles: jax.Array):
  """Screen-space barycentric coordinates of points with respect to triangles.

  lambda_a = area(p, b, c) / area(a, b, c) and cyclically, with signed areas, so that a
  point is inside (or on) a triangle of either orientation iff all three are >= 0.

  Args:
    points: [P, 2]; triangles: [F, 3, 2].

  Returns:
    (barycentric [P, F, 3], valid [F] bool: the triangle's area is not degenerate).
  """
  a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
  area = _cross_2d(b - a, c - a)
  valid = jnp.abs(area) > 1e-8  # in squared pixels: far below any visible triangle.
  safe_area = jnp.where(valid, area, 1.0)
  p = points[:, None, :]
  weights = jnp.stack([_cross_2d(b - p, c - p), _cross_2d(c - p, a - p),
                       _cross_2d(a - p, b - p)], axis=-1)
  # A degenerate triangle gets its centroid's coordinates (finite; callers drop it).
  return jnp.where(valid[None, :, None], weights / safe_area[None, :, None], 1.0 / 3.0), valid


def boundary_distance_squared(points: jax.Array, triangles: jax.Array) -> jax.Array:
  """Squared Euclidean distance from points to the edges of triangles, d^2(i, j) of SoftRas.

  Args:
    points: [P, 2]; triangles: [F, 3, 2].

  Returns:
    [P, F] min over the three edges of the point-to-segment squared distance.
  """
  p = points[:, None, :]
  distances = []
  for start, end in ((0, 1), (1, 2), (2, 0)):
    a, edge = triangles[:, start], triangles[:, end] - triangles[:, start]
    # The floor keeps a collapsed edge finite; its distance is then the distance to `a`.
    along = jnp.sum((p - a) * edge, -1) / jnp.maximum(jnp.sum(edge * edge, -1), 1e-12)
    nearest = a + jnp.clip(along, 0.0, 1.0)[..., None] * edge
    distances.append(jnp.sum(jnp.square(p - nearest), -1))
  return functools.reduce(jnp.minimum, distances)


def soft_coverage_logits(distance_squared, inside, *, sigma):
  """The logit of SoftRas's coverage probability (Liu et al. 2019, Eq. 1).

  D_j^i = sigmoid(delta_j^i d^2(i, j) / sigma), delta = +1 inside the triangle, -1 outside:
  1/2 on an edge, -> 1 inside and -> 0 outside as sigma -> 0 (the hard rasteriser).

  Args:
    distance_squared: [P, F] squared pixel-to-boundary distances, pixels^2.
    inside: [P, F] bool.
    sigma: sharpness, pixels^2 (the coverage falls to 1/(1 + e) at sqrt(sigma) pixels outside).

  Returns:
    [P, F] logits; D = sigmoid(logit), log D = log_sigmoid(logit).
  """
  return jnp.where(inside, 1.0, -1.0) * distance_squared / sigma


def aggregate_colors(coverage_logits, inverse_depth, colors, background, *, gamma, epsilon,
                     min_coverage):
  """SoftRas's depth-softmax colour aggregation (Liu et al. 2019, Eq. 2-3).

  I^i = sum_j w_j C_j + w_b C_b with
  w_j = D_j exp(z_j / gamma) / (sum_k D_k exp(z_k / gamma) + exp(epsilon / gamma)),
  evaluated as a softmax over log D_j + z_j / gamma and the background's epsilon / gamma.
  As in SoftRas's implementation, faces with D_j < min_coverage take no part: otherwise a
  face many pixels away but nearer to the camera (z / gamma of order 1e3 per 0.1 of depth)
  would outweigh the faces that do cover the pixel.

  Args:
    coverage_logits: [P, F] from `soft_coverage_logits` (-inf-like for dropped faces).
    inverse_depth: [P, F] z_j in [0, 1], 1 at the near plane (larger is closer).
    colors: [P, F, 3] colour of face j at pixel i.
    background: [3] background colour C_b.
    gamma: depth sharpness (gamma -> 0 keeps only the nearest covering face).
    epsilon: the background's z, a small positive constant.
    min_coverage: D below which a face is left out of the pixel's colour.

  Returns:
    [P, 3] colours.
  """
  active = coverage_logits > math.log(min_coverage / (1.0 - min_coverage))
  logits = jax.nn.log_sigmoid(coverage_logits) + inverse_depth / gamma
  # -1e9: exp underflows to exactly 0 in the softmax while every value stays finite.
  logits = jnp.where(active, logits, -1e9)
  background_logit = jnp.full(logits.shape[:1] + (1,), epsilon / gamma)
  weights = jax.nn.softmax(jnp.concatenate([logits, background_logit], -1), axis=-1)
  return (jnp.einsum("pf,pfc->pc", weights[:, :-1], colors)
          + weights[:, -1:] * jnp.asarray(background, jnp.float32))


def silhouette(coverage_logits) -> jax.Array:
  """Soft silhouette A = 1 - prod_j (1 - D_j) (Liu et al. 2019, Eq. 4). [P, F] -> [P]."""
  return 1.0 - jnp.exp(jnp.sum(jax.nn.log_sigmoid(-coverage_logits), -1))


@struct.dataclass
class _Faces:
  """Per-face screen and world quantities of one view (leading axis F)."""
  screen: jax.Array  # [F, 3, 2] projected corners, pixels
  depth: jax.Array  # [F, 3] corner depths
  albedo: jax.Array  # [F, 3, 3] corner colours
  world: jax.Array  # [F, 3, 3] corner world positions
  normals: jax.Array  # [F, 3]
  in_front: jax.Array  # [F] bool, all corners beyond the near plane


def _face_colors(faces: _Faces, barycentric, shading, *, near, far):
  """Perspective-correct depth and colour of every face at every pixel.

  Outside a triangle the barycentric coordinates are clipped to [0, 1] and renormalised (the
  colour of the nearest point of the triangle, as in SoftRas §3.2). Attributes are
  interpolated with weights lambda_k / Z_k renormalised (perspective-correct interpolation),
  and the depth is Z = 1 / sum_k (lambda_k / Z_k).

  Returns:
    (inverse_depth [P, F] = (far - Z) / (far - near), colors [P, F, 3]).
  """
  clipped = jnp.clip(barycentric, 0.0, 1.0)
  clipped = clipped / jnp.sum(clipped, -1, keepdims=True)  # >= 1/3: one lambda is >= 1/3.
  over_depth = clipped / jnp.maximum(faces.depth, near)[None]
  depth = 1.0 / jnp.sum(over_depth, -1)
  perspective = over_depth * depth[..., None]
  albedo = jnp.einsum("pfk,fkc->pfc", perspective, faces.albedo)
  if shading is None:
    colors = albedo
  else:
    points = jnp.einsum("pfk,fkc->pfc", perspective, faces.world)
    colors = shading_lib.shade(albedo, faces.normals[None], points, shading)
  return (far - depth) / (far - near), colors


def _render_pixels(pixels, faces: _Faces, shading, background, *, sigma, gamma, epsilon,
                   min_coverage, near, far):
  """Colour and alpha of a chunk of pixels: pixels [P, 2] -> ([P, 3], [P])."""
  barycentric, valid = barycentric_2d(pixels, faces.screen)
  inside = jnp.all(barycentric >= 0.0, axis=-1)
  logits = soft_coverage_logits(boundary_distance_squared(pixels, faces.screen), inside,
                                sigma=sigma)
  # Faces crossing the near plane or degenerate on screen are dropped: a logit of -1e9 has
  # D = 0 exactly in float32 and is finite, so no NaN reaches the gradient.
  logits = jnp.where((valid & faces.in_front)[None], logits, -1e9)
  inverse_depth, colors = _face_colors(faces, barycentric, shading, near=near, far=far)
  foreground = aggregate_colors(logits, inverse_depth, colors, background, gamma=gamma,
                                epsilon=epsilon, min_coverage=min_coverage)
  # Over the background by the soft silhouette: with gamma << 1, Eq. 2's background weight
  # exp(epsilon / gamma) only matters where a face's D is below exp(-z / gamma), so without
  # this the colour's edge would carry no gradient to the vertices.
  alpha = silhouette(logits)
  return (alpha[:, None] * foreground
          + (1.0 - alpha[:, None]) * jnp.asarray(background, jnp.float32)), alpha


def render_mesh(vertices, faces, vertex_colors, camera: cameras_lib.Camera, *, shading=None,
                background=(1.0, 1.0, 1.0), sigma=1.0, gamma=1e-4, epsilon=1e-3,
                min_coverage=1e-4, near=0.1, far=5.0, pixel_chunk=1024) -> MeshRender:
  """Soft rasterisation of a triangle mesh with per-vertex colours (SoftRas, Liu et al. 2019).

  Every pixel sees every face: vectorised over pixels x faces, in chunks of `pixel_chunk`
  pixels under `lax.map`, each chunk rematerialised in the backward pass so that memory is
  O(pixel_chunk x F) (a single chunk is not rematerialised). Both sides of a face are drawn;
  the depth softmax hides back faces.

  Args:
    vertices: [V, 3] world positions.
    faces: [F, 3] int vertex indices (counter-clockwise from outside).
    vertex_colors: [V, 3] albedo in [0, 1].
    camera: cameras.Camera.
    shading: a shading.Shading (Lambertian with face normals via `shading.shade`), or None
      for the albedo.
    background: [3] background colour (white for the toy world).
    sigma: coverage sharpness, pixels^2 (`soft_coverage_logits`).
    gamma: depth sharpness of the aggregation (`aggregate_colors`).
    epsilon: the background's normalised inverse depth.
    min_coverage: faces covering a pixel less than this leave its colour alone.
    near, far: depth range (world units) of the normalised inverse depth; faces with a corner
      nearer than `near` are dropped.
    pixel_chunk: pixels per chunk.

  Returns:
    MeshRender with rgb [H, W, 3] and alpha [H, W].
  """
  faces = jnp.asarray(faces, jnp.int32)
  screen, depth = project_vertices(vertices, camera, near=near)
  per_face = _Faces(screen=screen[faces], depth=depth[faces], albedo=vertex_colors[faces],
                    world=vertices[faces], normals=face_normals(vertices, faces),
                    in_front=jnp.all(depth[faces] > near, axis=-1))
  height, width = camera.height, camera.width
  columns, rows = jnp.meshgrid(jnp.arange(width) + 0.5, jnp.arange(height) + 0.5, indexing="xy")
  pixels = jnp.stack([columns, rows], -1).reshape(-1, 2).astype(jnp.float32)
  num_pixels = height * width
  chunk = min(pixel_chunk, num_pixels)
  num_chunks = math.ceil(num_pixels / chunk)
  pixels = jnp.pad(pixels, ((0, num_chunks * chunk - num_pixels), (0, 0)), mode="edge")
  render_chunk = functools.partial(
      _render_pixels, faces=per_face, shading=shading, background=background, sigma=sigma,
      gamma=gamma, epsilon=epsilon, min_coverage=min_coverage, near=near, far=far)
  if num_chunks > 1:
    render_chunk = jax.checkpoint(render_chunk)
  rgb, alpha = jax.lax.map(render_chunk, pixels.reshape(num_chunks, chunk, 2))
  return MeshRender(rgb=rgb.reshape(-1, 3)[:num_pixels].reshape(height, width, 3),
                    alpha=alpha.reshape(-1)[:num_pixels].reshape(height, width))


# ---------------------------------------------------------------------------------------------
# Mesh regularisers.


def mesh_edges(faces) -> np.ndarray:
  """The undirected edges of a triangle mesh, each once.

  Args:
    faces: [F, 3] int (numpy).

  Returns:
    [E, 2] int32, sorted pairs (i < j), in lexicographic order.
  """
  faces = np.asarray(faces, np.int64)
  pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  return np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int32)


def edge_lengths(vertices, edges) -> jax.Array:
  """Lengths of edges: vertices [V, 3], edges [E, 2] -> [E] (world units)."""
  vectors = vertices[edges[:, 1]] - vertices[edges[:, 0]]
  # The floor keeps the gradient finite for a collapsed edge (length 1e-10, far below any).
  return jnp.sqrt(jnp.maximum(jnp.sum(vectors * vectors, -1), 1e-20))


def uniform_laplacian(vertices, edges) -> jax.Array:
  """Uniform-weight Laplacian coordinates delta_i = v_i - (1/|N(i)|) sum_{j in N(i)} v_j.

  The "umbrella" operator of Laplacian mesh processing (Sorkine 2006, "Differential
  Representations for Mesh Processing", Eq. 1; Nealen et al. 2006, "Laplacian Mesh
  Optimization"): the offset of a vertex from the centroid of its one-ring. It is zero for
  every interior vertex of a flat regular grid and, on a smooth surface, approximates the
  mean-curvature normal times the squared edge length.

  Args:
    vertices: [V, 3]; edges: [E, 2] int, each undirected edge once (`mesh_edges`).

  Returns:
    [V, 3]; zero for a vertex without neighbours.
  """
  num_vertices = vertices.shape[0]
  senders = jnp.concatenate([edges[:, 0], edges[:, 1]])
  receivers = jnp.concatenate([edges[:, 1], edges[:, 0]])
  neighbour_sum = jax.ops.segment_sum(vertices[senders], receivers, num_vertices)
  degree = jax.ops.segment_sum(jnp.ones_like(receivers, jnp.float32), receivers, num_vertices)
  centroid = neighbour_sum / jnp.maximum(degree, 1.0)[:, None]
  return jnp.where((degree > 0)[:, None], vertices - centroid, 0.0)


def laplacian_loss(vertices, edges) -> jax.Array:
  """Laplacian smoothness: mean_i |delta_i|^2 of `uniform_laplacian` (world units^2).

  Args:
    vertices: [V, 3]; edges: [E, 2].

  Returns:
    [] scalar >= 0.
  """
  return jnp.mean(jnp.sum(jnp.square(uniform_laplacian(vertices, edges)), -1))


def edge_length_loss(vertices, edges, rest_lengths) -> jax.Array:
  """Edge-length regulariser: mean_e ((|e| - l_e) / l_e)^2 against rest lengths l_e.

  Relative, so it is dimensionless and equals (s - 1)^2 for a uniform scaling by s.

  Args:
    vertices: [V, 3]; edges: [E, 2]; rest_lengths: [E] > 0, the initial mesh's edge lengths.

  Returns:
    [] scalar >= 0.
  """
  return jnp.mean(jnp.square(edge_lengths(vertices, edges) / rest_lengths - 1.0))


# ---------------------------------------------------------------------------------------------
# The refinement step.


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
    edges = mesh_edges(mesh.faces)
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
  out = render_mesh(vertices, mesh.faces, mesh.vertex_colors, sample.camera, shading=shading,
                    background=settings.background, sigma=settings.sigma, gamma=settings.gamma,
                    epsilon=settings.epsilon, min_coverage=settings.min_coverage,
                    near=settings.near, far=settings.far,
                    pixel_chunk=settings.pixel_chunk)
  return out, cameras_lib.view_bucket(sample.azimuth_deg, sample.elevation_deg)


def refine_loss(offsets, mesh: MeshTensors, prior_params, step, *, prior, camera_kwargs: dict,
                settings: RefineSettings):
  """SDS of `views_per_step` sampled views plus the mesh regularisers.

  Returns:
    (loss, metrics dict of scalars).
  """
  vertices = mesh.rest_vertices + offsets
  # The step's key is a function of (seed, step) alone, as in train.view_key.
  k_views, k_sds = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(settings.seed), step))
  render_keys = jax.random.split(k_views, settings.views_per_step)
  render = functools.partial(render_sampled_view, vertices, mesh, camera_kwargs=camera_kwargs,
                             settings=settings)
  out, buckets = jax.lax.map(render, render_keys)
  # One SDS call for the whole batch; its loss averages over views (sds.score_distillation).
  sds = sds_lib.score_distillation(
      prior, prior_params, out.rgb, buckets, k_sds, guidance_scale=settings.guidance_scale,
      t_range=settings.t_range, weighting=settings.weighting)
  laplacian = laplacian_loss(vertices, mesh.edges)
  edge = edge_length_loss(vertices, mesh.length_edges, mesh.rest_lengths)
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
    camera_kwargs: `cameras.sample_camera`'s keyword arguments (`train.build_prior`).
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


# ---------------------------------------------------------------------------------------------
# The command line.


def load_mesh(path: str) -> mesh_lib.Mesh:
  """Reads a .ply, .glb or .obj mesh (as `mesh.write_mesh` writes them) with trimesh.

  Vertex colours are kept; a mesh without them is mid-grey. The file is only read.

  Raises:
    UserError: the file is missing, has another extension, cannot be read or has no faces.
  """
  import trimesh  # pylint: disable=g-import-not-at-top
  extension = os.path.splitext(path)[1].lower()
  if extension not in mesh_lib.MESH_FORMATS:
    raise UserError(f"--mesh={path}: unknown mesh format {extension or '(none)'!r}; use one of "
                    f"{', '.join(mesh_lib.MESH_FORMATS)}")
  if not os.path.isfile(path):
    raise UserError(f"--mesh={path}: no such file")
  try:
    loaded = trimesh.load(path, force="mesh", process=False)
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f"--mesh={path}: cannot read it as a {extension} mesh "
                    f"({type(error).__name__}: {main_lib.one_line(error)})") from None
  faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), np.int32).reshape(-1, 3)
  vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float32).reshape(-1, 3)
  if not len(faces) or not len(vertices):
    raise UserError(f"--mesh={path}: the mesh has no faces ({len(vertices)} vertices, "
                    f"{len(faces)} faces); pass a triangle mesh")
  if not np.all(np.isfinite(vertices)):
    raise UserError(f"--mesh={path}: some vertex positions are NaN or infinite")
  colors = np.full((len(vertices), 3), DEFAULT_GREY, np.uint8)
  visual = getattr(loaded, "visual", None)
  if visual is not None and visual.kind == "vertex":
    colors = np.asarray(visual.vertex_colors, np.uint8)[:, :3]
  return mesh_lib.Mesh(vertices=vertices, faces=faces, vertex_colors=colors)


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


FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mesh_sds.py.",
                                  lock_config=True)
  flags.DEFINE_string("mesh", None, "Mesh to refine (.ply, .glb or .obj); only read.")
  flags.DEFINE_string("out", None, "Where to write the refined mesh (.ply, .glb or .obj).")


def _check_paths(mesh_path, out_path) -> None:
  if not mesh_path or not out_path:
    raise UserError("--mesh and --out are required, e.g. --mesh=runs/toy/mesh.ply "
                    "--out=runs/toy/refined.ply")
  extension = os.path.splitext(out_path)[1].lower()
  if extension not in mesh_lib.MESH_FORMATS:
    raise UserError(f"--out={out_path}: unknown mesh format {extension or '(none)'!r}; use one "
                    f"of {', '.join(mesh_lib.MESH_FORMATS)}")
  if os.path.abspath(out_path) == os.path.abspath(mesh_path) or (
      os.path.exists(out_path) and os.path.samefile(out_path, mesh_path)):
    raise UserError(f"--out={out_path} is the input mesh; write the refinement elsewhere, the "
                    "input is never overwritten")


def main(argv):
  with main_lib.user_errors():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; flags look like --config=... "
                      "--mesh=IN.ply --out=OUT.ply")
    if FLAGS.config is None:
      raise UserError("--config is required, e.g. --config=configs/mesh_sds.py")
    config = FLAGS.config
    if "mesh_sds" not in config:
      raise UserError("the config has no mesh_sds section; use --config=configs/mesh_sds.py")
    from dfjax import config_checks  # pylint: disable=g-import-not-at-top
    config_checks.check_config(config)
    check_settings(config)
    config_checks.check_paths(config)
    _check_paths(FLAGS.mesh, FLAGS.out)
    mesh = load_mesh(FLAGS.mesh)
    from dfjax import train  # pylint: disable=g-import-not-at-top
    prior, camera_kwargs = train.build_prior(config)
    print(f"refining {FLAGS.mesh} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) "
          f"towards {config.prompt!r} for {config.mesh_sds.steps} steps", flush=True)
    refined = refine(mesh, prior=prior, camera_kwargs=camera_kwargs,
                     settings=settings_from_config(config), steps=config.mesh_sds.steps,
                     learning_rate=config.mesh_sds.learning_rate,
                     log_every=config.mesh_sds.log_every,
                     log=lambda line: print(line, flush=True))
    mesh_lib.write_mesh(refined, FLAGS.out)
    moved = np.linalg.norm(refined.vertices - mesh.vertices, axis=-1)
    print(f"wrote {FLAGS.out}: vertices moved {moved.mean():.4f} on average, "
          f"{moved.max():.4f} at most (world units)", flush=True)


if __name__ == "__main__":
  define_flags()
  main_lib.run(main)
