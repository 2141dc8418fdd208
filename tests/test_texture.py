"""Tests for dfjax.export.texture: UV atlas, albedo baking, seam dilation, simplification, files.

The reference scene is a unit icosphere coloured by a smooth analytic albedo
  rho(p) = 0.5 + 0.5 * (sin 3x, sin(3y + 1), cos 3z),
whose every channel has a gradient of norm at most 1.5 (Lipschitz constant L = 1.5).
"""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import trimesh

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib
from dfjax.export import texture
from dfjax.train import config_checks

LIPSCHITZ = 1.5  # max |grad| of every channel of `albedo`
QUANTISATION = 0.5 / 255  # rounding to 8 bits


def albedo_np(points):
  x, y, z = np.asarray(points, np.float64).T
  return 0.5 + 0.5 * np.stack([np.sin(3 * x), np.sin(3 * y + 1), np.cos(3 * z)], axis=-1)


def albedo_jnp(points):
  x, y, z = points[:, 0], points[:, 1], points[:, 2]
  return 0.5 + 0.5 * jnp.stack([jnp.sin(3 * x), jnp.sin(3 * y + 1), jnp.cos(3 * z)], axis=-1)


def sphere(subdivisions):
  s = trimesh.creation.icosphere(subdivisions=subdivisions)
  return s.vertices.astype(np.float32), s.faces.astype(np.int32)


def pixels(uv, size):
  """uv [..., 2] -> pixel coordinates [..., 2] as OpenGL and glTF viewers read a texture
  (after trimesh's flip of glTF's v): v = 0 is the bottom row, texel centres at (i + 0.5) / S.
  Written out here rather than taken from dfjax.export.texture, so a flipped convention fails."""
  return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)


def bilinear(image, uv):
  """Bilinear lookup clamped at the border: image [S, S, C] uint8, uv [N, 2] -> [N, C] float
  in [0, 1]."""
  size = image.shape[0]
  x, y = np.moveaxis(pixels(np.asarray(uv, np.float64), size) - 0.5, -1, 0)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  at = lambda r, c: image[np.clip(r, 0, size - 1), np.clip(c, 0, size - 1)] / 255.0
  top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
  bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  return top * (1 - fy) + bottom * fy


def texel_length(vertices, faces, uv, *, texture_size):
  """World length of one texel on each face [F]: the largest singular value of the map from
  pixel coordinates to the surface (the UV-to-3D stretch)."""
  corners = vertices[faces].astype(np.float64)
  corner_pixels = pixels(uv[faces].astype(np.float64), texture_size)
  world_edges = np.stack([corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]], -1)
  pixel_edges = np.stack([corner_pixels[:, 1] - corner_pixels[:, 0],
                          corner_pixels[:, 2] - corner_pixels[:, 0]], -1)
  jacobian = world_edges @ np.linalg.inv(pixel_edges)  # [F, 3, 2]
  return np.linalg.svd(jacobian, compute_uv=False)[:, 0]


def bilinear_bound(texel):
  # A bilinear sample mixes texels within sqrt(2) texels of it; a texel filled by the first
  # dilation ring averages covered texels within sqrt(2) more: 2 sqrt(2) texels in all, each
  # texel worth `texel` world units, times L; plus the 8-bit rounding.
  return LIPSCHITZ * 2 * np.sqrt(2) * texel + QUANTISATION + 1e-6


@pytest.fixture(scope="module")
def baked_256():
  vertices, faces = sphere(3)
  vertex_index, atlas_faces, uv = texture.uv_unwrap(vertices, faces, texture_size=256)
  atlas_vertices = vertices[vertex_index]
  image, covered = texture.bake_albedo(atlas_vertices, atlas_faces, uv, albedo_jnp,
                                       texture_size=256)
  return atlas_vertices, atlas_faces, uv, image, covered


def test_unwrap_keeps_the_faces_and_splits_seam_vertices(baked_256):
  vertices, faces = sphere(3)
  atlas_vertices, atlas_faces, uv, _, _ = baked_256
  assert atlas_faces.shape == faces.shape and uv.shape == (len(atlas_vertices), 2)
  assert len(atlas_vertices) > len(vertices)
  assert uv.min() >= 0 and uv.max() <= 1
  # Same triangles in the same order, through the vertex copies.
  np.testing.assert_array_equal(atlas_vertices[atlas_faces], vertices[faces])
  # Charts do not overlap: the UV triangles' areas add up to at most the unit square.
  a, b, c = np.moveaxis(uv[atlas_faces].astype(np.float64), 1, 0)
  areas = 0.5 * np.abs((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0])
  assert 0.4 < areas.sum() <= 1.0


def test_every_covered_texel_holds_the_albedo_of_its_surface_point():
  """Each covered texel's surface point is found again by brute force (the barycentric
  coordinates of its centre in every UV triangle, by solving a 3x3 system), so the check
  shares no code with the rasteriser; the texel must equal the albedo there up to 8-bit
  rounding."""
  size = 64
  vertices, faces = sphere(2)
  vertex_index, atlas_faces, uv = texture.uv_unwrap(vertices, faces, texture_size=size)
  image, covered = texture.bake_albedo(vertices[vertex_index], atlas_faces, uv, albedo_jnp,
                                       texture_size=size)
  rows, cols = np.nonzero(np.ones((size, size), bool))
  centres = np.stack([(cols + 0.5) / size, 1 - (rows + 0.5) / size, np.ones(len(rows))], -1)
  corner_uv = uv[atlas_faces].astype(np.float64)  # [F, 3, 2]
  systems = np.concatenate([np.moveaxis(corner_uv, 1, 2), np.ones((len(faces), 1, 3))], 1)
  weights = np.einsum("fij,nj->nfi", np.linalg.inv(systems), centres)  # [N, F, 3]
  best = np.argmax(weights.min(axis=2), axis=1)
  best_weights = weights[np.arange(len(rows)), best]
  inside = best_weights.min(axis=1) >= -1e-6
  strictly_inside = best_weights.min(axis=1) > 1e-6
  covered_flat = covered[rows, cols]
  assert np.all(covered_flat[strictly_inside]) and np.all(inside[covered_flat])
  points = np.einsum("nk,nkd->nd", best_weights, vertices[vertex_index][atlas_faces[best]])
  expected = albedo_np(points[covered_flat])
  error = np.abs(image[rows, cols][covered_flat] / 255.0 - expected)
  assert error.max() <= QUANTISATION + 1e-5, error.max()
  assert covered_flat.sum() > 0.3 * size**2  # measured 40 % (padding costs much at 64)


def test_bilinear_samples_at_random_surface_points_match_the_albedo(baked_256):
  """Random points of random faces, looked up bilinearly as a renderer would: the error is
  bounded by L x (the world length of the texels the lookup mixes, on the sample's face) +
  8-bit rounding."""
  atlas_vertices, atlas_faces, uv, image, _ = baked_256
  rng = np.random.default_rng(0)
  face = rng.integers(0, len(atlas_faces), 4000)
  weights = rng.dirichlet(np.ones(3), 4000)
  points = np.einsum("nk,nkd->nd", weights, atlas_vertices[atlas_faces[face]])
  sample_uv = np.einsum("nk,nkd->nd", weights, uv[atlas_faces[face]])
  error = np.abs(bilinear(image, sample_uv) - albedo_np(points))
  texel = texel_length(atlas_vertices, atlas_faces, uv, texture_size=256)[face]
  assert texel.max() < 0.03  # the 256 texture resolves the sphere (circumference 6.3) finely
  bound = bilinear_bound(texel)[:, None]
  print(f"max error {error.max():.4f}, max error / bound {(error / bound).max():.2f}")
  assert np.all(error <= bound), (error / bound).max()


def test_dilation_fills_rings_around_charts_and_keeps_covered_texels():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(12, 12, 3)).astype(np.float32)
  covered = np.zeros((12, 12), bool)
  covered[4:7, 3:6] = True  # a 3 x 3 chart
  filled, grown = texture.dilate(image, covered, iterations=2)
  np.testing.assert_array_equal(filled[covered], image[covered])
  rows, cols = np.indices(covered.shape)
  ring = np.maximum(np.maximum(4 - rows, rows - 6), np.maximum(3 - cols, cols - 5))
  np.testing.assert_array_equal(grown, ring <= 2)  # Chebyshev distance to the chart
  # A first-ring texel is the mean of its covered neighbours: (3, 2) touches (4, 3) only.
  np.testing.assert_allclose(filled[3, 2], image[4, 3])
  # (3, 4) touches (4, 3), (4, 4), (4, 5).
  np.testing.assert_allclose(filled[3, 4], image[4, 3:6].mean(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(filled[~grown], image[~grown])  # the rest untouched
  np.testing.assert_array_equal(covered[4:7, 3:6], True)  # inputs not modified
  assert covered.sum() == 9


def test_bake_fills_the_seam_ring_from_its_chart(baked_256):
  """Each texel of the first ring around the covered ones (what bilinear filtering reads at a
  chart's border) holds a mean of its covered neighbours, not the background fill."""
  _, _, _, image, covered = baked_256
  _, near = texture.dilate(np.zeros(image.shape, np.float32), covered, iterations=1)
  image = image.astype(int)
  for row, col in zip(*np.nonzero(near & ~covered)):
    rows, cols = slice(max(row - 1, 0), row + 2), slice(max(col - 1, 0), col + 2)
    neighbours = image[rows, cols][covered[rows, cols]]
    assert np.all(image[row, col] >= neighbours.min(axis=0) - 1)
    assert np.all(image[row, col] <= neighbours.max(axis=0) + 1)


@pytest.mark.parametrize("extension", [".obj", ".glb"])
def test_textured_files_load_back_with_uvs_and_texture(tmp_path, extension):
  size = 256
  vertices, faces = sphere(2)
  mesh = mesh_lib.Mesh(vertices=vertices, faces=faces,
                       vertex_colors=np.zeros(vertices.shape, np.uint8))
  textured = texture.textured_mesh(mesh, albedo_jnp, texture_size=size)
  path = str(tmp_path / "out" / f"mesh{extension}")
  written = texture.write_textured_mesh(textured, path)
  names = sorted(p.rsplit("/", 1)[-1] for p in written)
  assert names == (["mesh.mtl", "mesh.obj", "mesh_albedo.png"] if extension == ".obj"
                   else ["mesh.glb"])
  loaded = trimesh.load(path, force="mesh", process=False)
  uv = np.asarray(loaded.visual.uv)
  assert uv.shape == (len(loaded.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
  assert len(loaded.faces) == len(faces)
  material = loaded.visual.material
  image = material.baseColorTexture if extension == ".glb" else material.image
  assert image.size == (size, size)
  image = np.asarray(image.convert("RGB"))
  np.testing.assert_array_equal(image, textured.texture)
  error = np.abs(bilinear(image, uv) - albedo_np(loaded.vertices))
  # A vertex's lookup mixes texels of the faces around it: the largest texel bounds them all.
  texel = texel_length(textured.vertices, textured.faces, textured.uv, texture_size=size).max()
  print(f"max error {error.max():.4f}, bound {bilinear_bound(texel):.4f}")
  assert error.max() <= bilinear_bound(texel), (error.max(), bilinear_bound(texel))


def test_simplification_meets_the_budget_and_stays_on_the_surface():
  vertices, faces = sphere(4)  # 5120 faces
  simple_vertices, simple_faces = texture.simplify(vertices, faces, max_faces=1000)
  assert 900 <= len(simple_faces) <= 1000
  surface = trimesh.Trimesh(simple_vertices, simple_faces, process=False)
  assert surface.is_watertight
  # Vertices stay on the unit sphere (measured within 0.004); the original mesh itself lies
  # within 0.0008 inside it (the sag of its 0.077-long edges).
  np.testing.assert_allclose(np.linalg.norm(simple_vertices, axis=1), 1.0, atol=0.01)
  original = trimesh.Trimesh(vertices, faces, process=False)
  np.testing.assert_allclose(surface.volume, original.volume, rtol=0.02)
  # Within the budget already: unchanged.
  same_vertices, same_faces = texture.simplify(vertices, faces, max_faces=6000)
  np.testing.assert_array_equal(same_faces, faces)
  np.testing.assert_array_equal(same_vertices, vertices)


def test_unwrap_crash_is_a_user_error(monkeypatch):
  # xatlas runs in a child process, so even a crash there comes back as one line.
  monkeypatch.setattr(texture, "_UNWRAP_SCRIPT", "import os; os.abort()")
  vertices, faces = sphere(1)
  with pytest.raises(UserError, match=r"UV unwrapping \(xatlas\) .* 80 faces failed.*--faces"):
    texture.uv_unwrap(vertices, faces, texture_size=64)


def test_bad_textured_requests_are_user_errors(tmp_path):
  vertices, faces = sphere(1)
  with pytest.raises(UserError, match="at least 4"):
    texture.simplify(vertices, faces, max_faces=3)
  textured = texture.TexturedMesh(vertices=vertices, faces=faces,
                                  uv=np.zeros((len(vertices), 2), np.float32),
                                  texture=np.zeros((16, 16, 3), np.uint8))
  with pytest.raises(UserError, match="unknown textured mesh format '.ply'"):
    texture.write_textured_mesh(textured, str(tmp_path / "mesh.ply"))


def export_config(**fields):
  defaults = dict(formats="glb,ply", texture_size=512, faces=20000, video_format="mp4")
  return ml_collections.ConfigDict({**defaults, **fields})


@pytest.mark.parametrize("field, value, message", [
    ("formats", "glb,stl", "config.export.formats.*'stl'.*ply, obj, glb"),
    ("formats", "", "config.export.formats.*empty"),
    ("formats", "glb,glb", "config.export.formats.*twice"),
    ("texture_size", 8, "config.export.texture_size must be an integer in .16, 8192.*8"),
    ("texture_size", 256.0, "config.export.texture_size must be an integer"),
    ("faces", -1, "config.export.faces must be 0 .no simplification. or at least 4.*-1"),
    ("video_format", "avi", "config.export.video_format must be one of 'mp4', 'gif'"),
])
def test_bad_export_options_are_one_line_user_errors(field, value, message):
  export = export_config(**{field: value})
  with pytest.raises(UserError, match=message) as error:
    config_checks.check_export(export, prefix="config.export.")
  assert "\n" not in str(error.value)


def test_export_formats_parse():
  assert config_checks.export_formats(" GLB, obj ", name="--format") == ("glb", "obj")
  with pytest.raises(UserError, match="--format"):
    config_checks.export_formats("fbx", name="--format")
