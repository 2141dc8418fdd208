"""A differentiable soft rasteriser of triangle meshes (SoftRas, Liu et al. 2019).

Rendering for SDS on an existing mesh's vertices (`dfjax.mesh_sds.refine`) needs pixels that
are differentiable with respect to vertex positions, including at silhouettes, where a hard
rasteriser's gradient is zero almost everywhere. This module implements the soft rasteriser of
SoftRas ("Soft Rasterizer: A Differentiable Renderer for Image-based 3D Reasoning", §3): every
face covers every pixel with a probability that decays with the pixel's squared distance to
the projected triangle, and the colours of overlapping faces are blended by a softmax over
their depths.

Data flow: `project_vertices` -> `soft_coverage_logits` (SoftRas Eq. 1) -> face colours
(barycentric albedo, `shading.shade`) -> `aggregate_colors` (SoftRas Eq. 2-3) and `silhouette`
(Eq. 4), in `render_mesh`. It sits on the scene layer (cameras, shading) and is used by
`mesh_sds.refine` only.

Pixel convention is dfjax's (`dfjax.scene.cameras`): OpenGL camera axes, pixel centres at +0.5,
row 0 at the top, so pixel (column x, row y) is the ray of `cameras.generate_rays`[y, x].
"""
from __future__ import annotations

import functools
import math

from flax import struct
import jax
import jax.numpy as jnp

from dfjax.scene import cameras as cameras_lib
from dfjax.scene import shading as shading_lib


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
