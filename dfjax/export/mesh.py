"""Mesh export: marching cubes on the learned density field.

DreamFusion (arXiv:2209.14988) exports its optimised NeRFs as meshes with marching cubes
(Lorensen & Cline 1987) on the volume density tau, for use in ordinary 3D renderers.
This module samples tau on a regular grid, extracts the iso-surface
{x : tau(x) = threshold} with PyMCubes, colours every vertex with the field's albedo there, and
writes PLY / GLB / OBJ files with vertex colours through trimesh.

Grid convention (used by `density_grid`, `grid_coordinates` and `metrics.occupancy_grid`):
the cube [-bound, bound]^3 is divided into resolution^3 voxels of side h = 2 * bound / resolution
and tau is sampled at the voxel CENTRES, so grid[i, j, k] is tau at
(x_i, x_j, x_k) with x_n = -bound + (n + 0.5) * h, i.e. axis 0 is world x, axis 1 is y, axis 2
is z.

Data flow: point functions of a field (`point_fns_from_field`) -> here -> export.outputs;
`load_mesh` reads the files back for mesh_sds, and eval.metrics shares the grid convention.
"""
import dataclasses
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import mcubes
import numpy as np
import trimesh

from dfjax.errors import UserError, one_line
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import render as render_lib

# Points [N, 3] -> density tau [N] (world units^-1), or -> albedo [N, 3] in [0, 1].
PointFn = Callable[[jax.Array], jax.Array]

# Default iso-level of `extract_mesh` on the volume density tau (world units^-1); a run's
# export chooses its level from the renders unless export.threshold sets one
# (`silhouette_threshold`, export.outputs.surface_threshold). A slab of density tau and
# thickness d has opacity 1 - exp(-tau * d) (the volume rendering quadrature, NeRF Eq. 3). At
# tau = 25 a slab 0.04 world units thick (2.5 voxels of a 128^3 grid over [-1, 1]^3) has optical
# depth 1, i.e. opacity 0.63: a point where tau crosses 25 is where the rendered object turns
# opaque within a few voxels, which is where the rendered silhouette lies. Lower values (around
# 5-10) keep thin or faint parts and also pick up semi-transparent "smoke"; higher ones erode.
# The paper's density init (tau = exp(5) ~ 148 at the centre of the blob) is well above it.
DEFAULT_THRESHOLD = 25.0

MESH_FORMATS = (".ply", ".glb", ".obj")

# Vertex colour of a mesh file without colours: mid-grey (uint8).
DEFAULT_GREY = 128


@dataclasses.dataclass(frozen=True)
class Mesh:
  """A triangle mesh with per-vertex colours, in world units.

  Attributes:
    vertices: [num_vertices, 3] float32 world coordinates.
    faces: [num_faces, 3] int32 vertex indices, counter-clockwise seen from outside (normals by
      the right-hand rule point out of the object, so the signed volume is positive).
    vertex_colors: [num_vertices, 3] uint8 RGB, the field's albedo at each vertex.
  """
  vertices: np.ndarray
  faces: np.ndarray
  vertex_colors: np.ndarray


def grid_coordinates(*, resolution: int, bound: float) -> np.ndarray:
  """Voxel-centre coordinates along one axis of the export grid.

  Args:
    resolution: number of voxels per axis.
    bound: the grid spans [-bound, bound] (world units).

  Returns:
    [resolution] float32, x_n = -bound + (n + 0.5) * (2 * bound / resolution).
  """
  voxel_size = 2.0 * bound / resolution
  return (-bound + (np.arange(resolution) + 0.5) * voxel_size).astype(np.float32)


def density_grid(density_fn: PointFn, *, resolution: int, bound: float,
                 chunk: int = 65536) -> np.ndarray:
  """Samples a density function at the voxel centres of a regular grid.

  The grid points are generated inside one jitted function of the chunk's first flat index,
  so the function is compiled once whatever the resolution; the last chunk is computed at the
  full chunk size (its surplus points repeat the last grid point) and trimmed.

  Args:
    density_fn: jnp function, points [N, 3] -> density [N] (N = chunk).
    resolution: voxels per axis, R.
    bound: the grid spans [-bound, bound]^3.
    chunk: points per call of density_fn.

  Returns:
    [R, R, R] float32; entry [i, j, k] is the density at (x_i, x_j, x_k), see the module
    docstring for x_n.
  """
  if resolution < 2 or bound <= 0 or chunk < 1:
    raise UserError(f"density grid needs resolution >= 2, bound > 0 and chunk >= 1; got "
                    f"resolution={resolution}, bound={bound}, chunk={chunk}")
  coordinates = jnp.asarray(grid_coordinates(resolution=resolution, bound=bound))
  num_points = resolution**3

  @jax.jit
  def chunk_density(start):
    flat_index = jnp.minimum(start + jnp.arange(chunk), num_points - 1)
    i = flat_index // resolution**2
    j = (flat_index // resolution) % resolution
    k = flat_index % resolution
    points = jnp.stack([coordinates[i], coordinates[j], coordinates[k]], axis=-1)
    return jnp.reshape(density_fn(points), (chunk,)).astype(jnp.float32)

  starts = range(0, num_points, chunk)
  values = np.concatenate([np.asarray(chunk_density(np.int32(s))) for s in starts])
  return values[:num_points].reshape(resolution, resolution, resolution)


def evaluate_points(point_fn: PointFn, points: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
  """Evaluates a jnp function on many points in fixed-size chunks (one compilation).

  Args:
    point_fn: jnp function, points [chunk, 3] -> values [chunk, ...].
    points: [N, 3] points.
    chunk: points per call; the last chunk is zero-padded to this size.

  Returns:
    [N, ...] numpy array of point_fn's values.
  """
  points = np.asarray(points, np.float32)
  num_points = points.shape[0]
  num_chunks = max(1, math.ceil(num_points / chunk))
  padded = np.zeros((num_chunks * chunk, 3), np.float32)
  padded[:num_points] = points
  jitted = jax.jit(point_fn)
  values = [np.asarray(jitted(padded[c * chunk:(c + 1) * chunk])) for c in range(num_chunks)]
  return np.concatenate(values)[:num_points]


def isosurface(grid: np.ndarray, *, threshold: float, bound: float):
  """Marching cubes on a density grid; the surface is closed at the grid's border.

  The grid is padded with one voxel of zero density on every side, so an object that touches
  (or is cut by) the bound still gives a closed, watertight surface.

  Args:
    grid: [R, R, R] density at voxel centres (module docstring convention).
    threshold: iso-level on the density, > 0.
    bound: the grid spans [-bound, bound]^3.

  Returns:
    vertices [V, 3] float32 in world units, faces [F, 3] int32 oriented outward (towards lower
    density).

  Raises:
    UserError: threshold not positive, non-finite densities, or no surface at this threshold.
  """
  if not threshold > 0:
    raise UserError(f"mesh threshold must be > 0 (density is >= 0), got {threshold}")
  num_nan = int(np.isnan(grid).sum())
  if num_nan:
    raise UserError(f"{num_nan} of {grid.size} grid densities are NaN: the field (checkpoint) "
                    "is broken, so no mesh can be extracted")
  lowest, highest = float(grid.min()), float(grid.max())
  if not highest > threshold:
    raise UserError(
        f"no voxel has density above the mesh threshold {threshold:g} (densities seen in "
        f"[-{bound:g}, {bound:g}]^3 range from {lowest:.3g} to {highest:.3g}); pass a lower "
        "threshold, below the maximum density")
  if lowest > threshold:
    raise UserError(
        f"every voxel has density above the mesh threshold {threshold:g} (densities range from "
        f"{lowest:.3g} to {highest:.3g}), so the surface would be the bounding box; pass a "
        "higher threshold or a larger bound")
  # +inf (an overflowed exp) is inside; clamp it so interpolation stays finite.
  padded = np.pad(np.minimum(grid, 1e30).astype(np.float64), 1, constant_values=0.0)
  vertices, faces = mcubes.marching_cubes(padded, float(threshold))
  # mcubes gives positions in padded-index units along (axis 0, 1, 2) = (x, y, z); padded index
  # p is voxel p - 1, whose centre is at -bound + (p - 1 + 0.5) * h.
  voxel_size = 2.0 * bound / grid.shape[0]
  vertices = (-bound + (vertices - 0.5) * voxel_size).astype(np.float32)
  return vertices, faces.astype(np.int32)


def albedo_to_vertex_colors(albedo: np.ndarray) -> np.ndarray:
  """Albedo [V, 3] in [0, 1] -> uint8 colours [V, 3] (rounded, clipped; NaN -> 0)."""
  albedo = np.nan_to_num(np.asarray(albedo, np.float32), nan=0.0)
  return np.round(np.clip(albedo, 0.0, 1.0) * 255.0).astype(np.uint8)


def extract_mesh(density_fn: PointFn, albedo_fn: PointFn, *, resolution: int = 128,
                 bound: float = 1.0, threshold: float = DEFAULT_THRESHOLD,
                 chunk: int = 65536) -> Mesh:
  """Extracts a coloured, watertight mesh from a density and albedo field.

  Args:
    density_fn: jnp function, points [N, 3] -> density tau [N] (world units^-1).
    albedo_fn: jnp function, points [N, 3] -> albedo [N, 3] in [0, 1].
    resolution: grid voxels per axis (the mesh resolves features down to 2 * bound / resolution).
    bound: the grid spans [-bound, bound]^3; anything outside is cut off (and the cut closed).
    threshold: iso-level on tau, see DEFAULT_THRESHOLD for the choice.
    chunk: points per field evaluation.

  Returns:
    Mesh with vertices in world units and per-vertex albedo colours.
  """
  grid = density_grid(density_fn, resolution=resolution, bound=bound, chunk=chunk)
  vertices, faces = isosurface(grid, threshold=threshold, bound=bound)
  albedo = evaluate_points(albedo_fn, vertices, chunk=min(chunk, max(len(vertices), 1)))
  return Mesh(vertices=vertices, faces=faces, vertex_colors=albedo_to_vertex_colors(albedo))


def ray_profiles(density_fn: PointFn, camera, *, num_samples: int, bound_radius: float,
                 chunk: int = 65536):
  """The maximum density along each pixel's ray, and the ray's opacity, of a point density.

  The samples are the deterministic renders' (render.stratified_intervals unjittered: the
  midpoints of `num_samples` equal intervals of the ray's chord through the bounding sphere),
  and the opacity is 1 − exp(−Σ_i τ_i δ_i), the volume rendering quadrature's (NeRF Eq. 3).

  Args:
    density_fn: jnp function, points [N, 3] -> density tau [N].
    camera: dfjax.scene.cameras.Camera, H x W pixels.

  Returns:
    (max_density [H, W], alpha [H, W]) numpy float32; both 0 on rays that miss the sphere.
  """
  rays = cameras_lib.generate_rays(camera)
  near, far = render_lib.intersect_sphere(rays.origins, rays.directions, bound_radius)
  edges = render_lib.stratified_intervals(None, near, far, num_samples, randomized=False)
  t_mid, deltas = 0.5 * (edges[..., 1:] + edges[..., :-1]), edges[..., 1:] - edges[..., :-1]
  points = rays.origins[..., None, :] + t_mid[..., None] * rays.directions[..., None, :]
  density = evaluate_points(density_fn, np.asarray(points).reshape(-1, 3), chunk=chunk)
  density = np.nan_to_num(density.reshape(t_mid.shape), nan=0.0)
  alpha = 1.0 - np.exp(-np.sum(density * np.asarray(deltas), axis=-1))
  # A ray that misses the sphere has near = far: its "samples" all sit at one point outside.
  max_density = np.where(np.asarray(far > near), density.max(axis=-1), 0.0)
  return max_density.astype(np.float32), alpha.astype(np.float32)


def silhouette_threshold(max_density: np.ndarray, alpha: np.ndarray, *,
                         num_candidates: int = 96) -> tuple[float, float]:
  """The iso-level whose level set has the silhouettes the volume renders show.

  A pixel lies inside the silhouette of the level set {x : τ(x) > τ*} when the maximum
  density along its ray exceeds τ*, and inside the rendered silhouette when its opacity
  exceeds 1/2. τ* is the candidate that maximises the IoU of those two masks over all the
  views; candidates are log-spaced over the ray maxima of the rendered silhouette's pixels.
  So the mesh shows what the renders show, whatever density scale the field learned (a
  small, soft field's opaque object may never reach a fixed level such as 25).

  Args:
    max_density, alpha: [...] per pixel, e.g. `ray_profiles` of several views stacked.

  Returns:
    (τ*, the IoU of the masks at τ*).

  Raises:
    UserError: no pixel is opaque (> 1/2), so the renders show no object to match.
  """
  max_density, rendered = np.asarray(max_density), np.asarray(alpha) > 0.5
  if not rendered.any():
    raise UserError("the renders show no object (no pixel with opacity above 1/2), so no "
                    "surface threshold can be chosen from them; pass a threshold")
  inside = max_density[rendered]
  low, high = max(float(inside.min()), 1e-3), max(float(inside.max()), 2e-3)
  candidates = np.geomspace(low, high, num_candidates)
  ious = [np.sum(rendered & (max_density > c)) / np.sum(rendered | (max_density > c))
          for c in candidates]
  best = int(np.argmax(ious))
  return float(candidates[best]), float(ious[best])


def point_fns_from_field(field_fn, *, sample_variance: float):
  """Splits a renderer FieldFn into the point functions `extract_mesh` takes.

  The Mip-NeRF field is queried with Gaussians (mean, diagonal covariance); for export the
  covariance is the isotropic lambda_Sigma * I the field was trained with at the end
  (arXiv:2209.14988 §A.2: lambda_Sigma annealed to 2e-3).

  Args:
    field_fn: (means [..., 3], cov_diag [..., 3]) -> (density [...], albedo [..., 3]).
    sample_variance: lambda_Sigma, the per-axis variance of every query.

  Returns:
    (density_fn, albedo_fn), each taking points [N, 3].
  """
  def query(points):
    return field_fn(points, jnp.full_like(points, sample_variance))

  return (lambda points: query(points)[0]), (lambda points: query(points)[1])


def prepare_output(path: str, formats, *, kind: str) -> str:
  """The lowercase extension of `path`, one of `formats` (else a UserError naming `kind`);
  the file's folder is created."""
  extension = os.path.splitext(path)[1].lower()
  if extension not in formats:
    raise UserError(f"unknown {kind} format {extension or '(none)'!r} for {path!r}; use one of "
                    f"{', '.join(formats)}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return extension


def write_mesh(mesh: Mesh, path: str) -> None:
  """Writes a mesh with vertex colours to .ply, .glb or .obj (by the path's extension).

  GLB (binary glTF) is the format every viewer opens; PLY keeps exact float32 vertices; OBJ
  stores colours as the non-standard "v x y z r g b" extension.
  """
  prepare_output(path, MESH_FORMATS, kind="mesh")
  alpha = np.full((len(mesh.vertices), 1), 255, np.uint8)
  trimesh.Trimesh(
      vertices=mesh.vertices, faces=mesh.faces,
      vertex_colors=np.concatenate([mesh.vertex_colors, alpha], axis=1),
      process=False).export(path)


def load_mesh(path: str) -> Mesh:
  """Reads a .ply, .glb or .obj mesh (as `mesh.write_mesh` writes them) with trimesh.

  Vertex colours are kept; a mesh without them is mid-grey. The file is only read.

  Raises:
    UserError: the file is missing, has another extension, cannot be read or has no faces.
  """
  import trimesh  # pylint: disable=g-import-not-at-top
  extension = os.path.splitext(path)[1].lower()
  if extension not in MESH_FORMATS:
    raise UserError(f"--mesh={path}: unknown mesh format {extension or '(none)'!r}; use one of "
                    f"{', '.join(MESH_FORMATS)}")
  if not os.path.isfile(path):
    raise UserError(f"--mesh={path}: no such file")
  try:
    loaded = trimesh.load(path, force="mesh", process=False)
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f"--mesh={path}: cannot read it as a {extension} mesh "
                    f"({type(error).__name__}: {one_line(error)})") from None
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
  return Mesh(vertices=vertices, faces=faces, vertex_colors=colors)
