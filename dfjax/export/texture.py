"""Textured mesh export: a UV atlas, the albedo baked into a texture image, OBJ and GLB files.

The marching-cubes mesh of dfjax.export.mesh carries its colour on the vertices, so the colour
is only as fine as the mesh. Here the surface is instead cut into charts and laid flat in the
unit square (a UV atlas, by xatlas), and every texel of a texture image takes the field's albedo at
the surface point that maps to it ("texture baking"). The colour is then as fine as the
texture, whatever the face count, so the mesh can first be simplified to a face budget by
quadric edge collapse (Garland & Heckbert 1997, via fast-simplification).

Texture convention (OpenGL / trimesh; glTF's flipped v is handled by trimesh on export):
an image of S x S texels, row 0 at the top; uv = (u, v) in [0, 1]^2 with v = 0 at the bottom.
Texel (row, col) covers u in [col, col + 1] / S and v in [S - row - 1, S - row] / S; its centre
is at pixel coordinates (x, y) = (u S, (1 - v) S) = (col + 0.5, row + 0.5).

Data flow: export.mesh (the marching-cubes mesh and an albedo point function) -> here ->
export.outputs.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
import trimesh

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib

TEXTURED_FORMATS = (".obj", ".glb")

# Texels of empty space left around every chart by the atlas packer, on top of the room
# bilinear filtering needs; dilation fills them from the chart (`dilate`).
ATLAS_PADDING = 2

# xatlas runs in a child process: it is known to crash (segmentation fault) on some meshes, and
# a crash must not take the training run that exports at its end with it.
_UNWRAP_SCRIPT = """
import sys
import numpy as np
import xatlas
data = np.load(sys.argv[1])
atlas = xatlas.Atlas()
atlas.add_mesh(data["vertices"], data["faces"])
pack = xatlas.PackOptions()
pack.resolution = int(data["texture_size"])  # texels per unit estimated to fill this size
pack.padding = int(data["padding"])
pack.bilinear = True
atlas.generate(pack_options=pack)
if atlas.atlas_count != 1:
  sys.exit(f"xatlas made {atlas.atlas_count} atlases instead of one")
vertex_index, faces, uv = atlas[0]
np.savez(sys.argv[2], vertex_index=vertex_index, faces=faces, uv=uv)
"""


@dataclasses.dataclass(frozen=True)
class TexturedMesh:
  """A triangle mesh with a UV atlas and an albedo texture, in world units.

  Attributes:
    vertices: [V, 3] float32 world coordinates (vertices on chart seams appear once per chart).
    faces: [F, 3] int32 vertex indices, counter-clockwise seen from outside.
    uv: [V, 2] float32 texture coordinates in [0, 1] (module docstring convention).
    texture: [S, S, 3] uint8 RGB albedo, row 0 at the top.
  """
  vertices: np.ndarray
  faces: np.ndarray
  uv: np.ndarray
  texture: np.ndarray


def simplify(vertices: np.ndarray, faces: np.ndarray, *, max_faces: int):
  """Quadric edge-collapse simplification (Garland & Heckbert 1997) to at most max_faces.

  Args:
    vertices: [V, 3] positions.
    faces: [F, 3] vertex indices.
    max_faces: face budget, >= 4; a mesh already within it is returned unchanged.

  Returns:
    vertices [V', 3] float32, faces [F', 3] int32 with F' <= max_faces.
  """
  import fast_simplification  # pylint: disable=g-import-not-at-top
  if max_faces < 4:
    raise UserError(f"a face budget must be at least 4 (a tetrahedron), got {max_faces}")
  vertices, faces = np.asarray(vertices, np.float32), np.asarray(faces, np.int32)
  target = max_faces
  while len(faces) > max_faces:
    before = len(faces)
    vertices, faces = fast_simplification.simplify(vertices, faces,
                                                   target_reduction=1.0 - target / len(faces))
    vertices, faces = np.asarray(vertices, np.float32), np.asarray(faces, np.int32)
    if len(faces) >= before:
      raise UserError(f"simplification stopped at {len(faces)} faces, above the budget of "
                      f"{max_faces}; pass a larger face budget (export.faces, --faces)")
    target = max(4, int(0.95 * target))  # collapses stop short of the target on some meshes
  return vertices, faces


def uv_unwrap(vertices: np.ndarray, faces: np.ndarray, *, texture_size: int,
              padding: int = ATLAS_PADDING):
  """UV atlas of a mesh by xatlas (charts by face clustering, flattened by LSCM, packed).

  Args:
    vertices: [V, 3] positions.
    faces: [F, 3] vertex indices.
    texture_size: S, the atlas is packed for an S x S texture.
    padding: empty texels between charts, besides the room bilinear filtering needs.

  Returns:
    vertex_index [V'] int64 (the input vertex each atlas vertex copies; seam vertices are
    split, so V' >= V), faces [F, 3] int32 into the atlas vertices (the input faces, in order),
    uv [V', 2] float32 in [0, 1].
  """
  with tempfile.TemporaryDirectory() as directory:
    inputs, outputs = os.path.join(directory, "in.npz"), os.path.join(directory, "out.npz")
    np.savez(inputs, vertices=np.asarray(vertices, np.float32),
             faces=np.asarray(faces, np.uint32), texture_size=texture_size, padding=padding)
    result = subprocess.run([sys.executable, "-c", _UNWRAP_SCRIPT, inputs, outputs],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
      why = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
      raise UserError(f"UV unwrapping (xatlas) of a mesh with {len(faces)} faces failed ({why}); "
                      "a smaller face budget (export.faces, --faces) often avoids this")
    with np.load(outputs) as atlas:
      return (atlas["vertex_index"].astype(np.int64), atlas["faces"].astype(np.int32),
              np.clip(atlas["uv"].astype(np.float32), 0.0, 1.0))


def uv_to_pixel(uv: np.ndarray, *, texture_size: int) -> np.ndarray:
  """Texture coordinates [..., 2] -> pixel coordinates (x, y) [..., 2], y down from the top."""
  uv = np.asarray(uv, np.float64)
  return np.stack([uv[..., 0] * texture_size, (1.0 - uv[..., 1]) * texture_size], axis=-1)


def _texel_candidates(corners: np.ndarray, *, texture_size: int):
  """Texel centres inside each triangle's bounding box, as flat ragged arrays.

  Args:
    corners: [F, 3, 2] triangle corners in pixel coordinates.

  Returns:
    face [N], row [N], col [N] int64: one entry per (triangle, texel in its bounding box).
  """
  low = np.clip(np.ceil(corners.min(axis=1) - 0.5), 0, texture_size).astype(np.int64)
  high = np.clip(np.floor(corners.max(axis=1) - 0.5), -1, texture_size - 1).astype(np.int64)
  width, height = np.maximum(high - low + 1, 0).T
  counts = width * height
  face = np.repeat(np.arange(len(corners)), counts)
  offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  return face, low[face, 1] + offset // width[face], low[face, 0] + offset % width[face]


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, *, texture_size: int,
                 max_candidates: int = 1 << 21):
  """Which triangle covers each texel centre in UV space, and where (barycentric coordinates).

  A texel is covered when its centre lies inside (or within 1e-7 of the edges of) a triangle;
  texels cut by a chart's border but with their centre outside are left to `dilate`.

  Args:
    uv: [V, 2] texture coordinates in [0, 1].
    faces: [F, 3] vertex indices.
    texture_size: S.
    max_candidates: (triangle, texel) pairs tested at once, bounding the memory.

  Returns:
    face_index [S, S] int32 (-1: no triangle), barycentric [S, S, 3] float32 (weights of the
    face's three corners; zero where face_index is -1).
  """
  corners = uv_to_pixel(np.asarray(uv)[np.asarray(faces)], texture_size=texture_size)
  face_index = np.full((texture_size, texture_size), -1, np.int32)
  barycentric = np.zeros((texture_size, texture_size, 3), np.float32)
  # Faces in chunks of about max_candidates bounding-box texels (a chunk ends where the
  # running total passes a multiple of max_candidates).
  box_sizes = np.prod(np.ptp(corners, axis=1) + 1.0, axis=1)  # >= the texels in each box
  chunk_id = ((np.cumsum(box_sizes) - box_sizes) // max_candidates).astype(np.int64)
  bounds = [0, *(np.flatnonzero(np.diff(chunk_id)) + 1), len(faces)]
  for start, end in zip(bounds[:-1], bounds[1:]):
    face, row, col = _texel_candidates(corners[start:end], texture_size=texture_size)
    weights = _barycentric(corners[start:end][face], col + 0.5, row + 0.5)
    inside = np.all(weights >= -1e-7, axis=1)
    face_index[row[inside], col[inside]] = face[inside] + start
    barycentric[row[inside], col[inside]] = weights[inside]
  return face_index, barycentric


def _barycentric(triangles: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Barycentric coordinates [N, 3] of points (x, y) [N] in 2D triangles [N, 3, 2].

  Degenerate (zero-area) triangles give -1 weights, so they cover nothing.
  """
  (x0, y0), (x1, y1), (x2, y2) = np.moveaxis(triangles, 1, 0).transpose(0, 2, 1)
  area = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)  # twice the signed area
  safe = np.where(np.abs(area) > 1e-12, area, 1.0)
  w0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / safe
  w1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / safe
  weights = np.stack([w0, w1, 1.0 - w0 - w1], axis=1)
  return np.where((np.abs(area) > 1e-12)[:, None], weights, -1.0)


def dilate(texture: np.ndarray, covered: np.ndarray, *, iterations: int):
  """Grows the covered texels outward: each pass fills every empty texel that has a covered
  one among its 8 neighbours with their mean (the usual seam fix of texture baking).

  Bilinear filtering and mip-mapping read texels next to a chart's border; without this those
  are background and show as dark seams.

  Args:
    texture: [S, S, C] float.
    covered: [S, S] bool, texels that hold a value.
    iterations: number of one-texel rings to fill.

  Returns:
    texture [S, S, C] float32, covered [S, S] bool, both new arrays; covered texels unchanged.
  """
  texture = np.asarray(texture, np.float32).copy()
  covered = np.asarray(covered, bool).copy()
  for _ in range(iterations):
    values = np.pad(texture * covered[..., None], ((1, 1), (1, 1), (0, 0)))
    counts = np.pad(covered.astype(np.float32), 1)
    size_y, size_x = covered.shape
    shifts = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    total = sum(values[dy:dy + size_y, dx:dx + size_x] for dy, dx in shifts)
    count = sum(counts[dy:dy + size_y, dx:dx + size_x] for dy, dx in shifts)
    grow = ~covered & (count > 0)
    texture[grow] = total[grow] / count[grow][:, None]
    covered = covered | grow
  return texture, covered


def bake_albedo(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                albedo_fn: mesh_lib.PointFn, *, texture_size: int, dilation: int = 4,
                chunk: int = 65536):
  """Bakes an albedo field into a texture: each covered texel takes the albedo at its surface
  point, the barycentric interpolation of its triangle's corners.

  Args:
    vertices: [V, 3] world positions; faces [F, 3]; uv [V, 2] in [0, 1].
    albedo_fn: jnp function, points [N, 3] -> albedo [N, 3] in [0, 1].
    texture_size: S.
    dilation: seam rings filled by `dilate`; texels still empty after it take the mean colour.
    chunk: points per albedo_fn call.

  Returns:
    texture [S, S, 3] uint8, covered [S, S] bool (texels whose centre lies on the surface).
  """
  faces = np.asarray(faces)
  face_index, barycentric = rasterize_uv(uv, faces, texture_size=texture_size)
  covered = face_index >= 0
  if not covered.any():
    raise UserError("the UV atlas covers no texel centre; use a larger texture_size")
  corners = np.asarray(vertices, np.float32)[faces[face_index[covered]]]  # [N, 3, 3]
  points = np.einsum("nk,nkd->nd", barycentric[covered], corners)
  albedo = mesh_lib.evaluate_points(albedo_fn, points, chunk=min(chunk, len(points)))
  texture = np.zeros((texture_size, texture_size, 3), np.float32)
  texture[covered] = albedo
  texture, filled = dilate(texture, covered, iterations=dilation)
  texture[~filled] = texture[covered].mean(axis=0)
  return mesh_lib.albedo_to_vertex_colors(texture), covered


def textured_mesh(mesh: mesh_lib.Mesh, albedo_fn: mesh_lib.PointFn, *, texture_size: int,
                  max_faces: int = 0, chunk: int = 65536) -> TexturedMesh:
  """Simplifies (optionally), UV-unwraps and bakes the albedo of a mesh.

  Args:
    mesh: the marching-cubes mesh (its vertex colours are not used).
    albedo_fn: jnp function, points [N, 3] -> albedo [N, 3] in [0, 1].
    texture_size: S, texels per side of the texture.
    max_faces: face budget for `simplify` (0: keep every face).
    chunk: points per albedo_fn call.
  """
  vertices, faces = mesh.vertices, mesh.faces
  if max_faces:
    vertices, faces = simplify(vertices, faces, max_faces=max_faces)
  vertex_index, atlas_faces, uv = uv_unwrap(vertices, faces, texture_size=texture_size)
  atlas_vertices = np.asarray(vertices, np.float32)[vertex_index]
  texture, _ = bake_albedo(atlas_vertices, atlas_faces, uv, albedo_fn,
                           texture_size=texture_size, chunk=chunk)
  return TexturedMesh(vertices=atlas_vertices, faces=atlas_faces, uv=uv, texture=texture)


def write_textured_mesh(mesh: TexturedMesh, path: str) -> list[str]:
  """Writes a textured mesh as .glb (texture embedded) or .obj (+ .mtl and a .png beside it).

  The material is the albedo alone: in the GLB a PBR material with metallic 0 and roughness 1
  (a diffuse surface, like DreamFusion's Lambertian shading), in the MTL a white Kd times the
  texture (map_Kd).

  Returns:
    The paths written: [path], or [path, .mtl, .png] for OBJ.
  """
  extension = mesh_lib.prepare_output(path, TEXTURED_FORMATS, kind="textured mesh")
  directory = os.path.dirname(os.path.abspath(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  image = Image.fromarray(mesh.texture)
  if extension == ".glb":
    material = trimesh.visual.material.PBRMaterial(
        name=f"{stem}_albedo", baseColorTexture=image, metallicFactor=0.0, roughnessFactor=1.0)
  else:
    material = trimesh.visual.material.SimpleMaterial(
        name=f"{stem}_albedo", image=image, diffuse=(255, 255, 255, 255),
        ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255))
  surface = trimesh.Trimesh(
      vertices=mesh.vertices, faces=mesh.faces, process=False,
      visual=trimesh.visual.TextureVisuals(uv=mesh.uv, material=material))
  if extension == ".glb":
    surface.export(path)
    return [path]
  text, files = trimesh.exchange.obj.export_obj(surface, return_texture=True,
                                                mtl_name=f"{stem}.mtl", include_normals=False)
  with open(path, "w") as f:
    f.write(text)
  written = [path]
  for name, data in files.items():
    written.append(os.path.join(directory, name))
    with open(written[-1], "wb") as f:
      f.write(data)
  return written
