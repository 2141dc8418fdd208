"""SDS on mesh vertices: the soft rasteriser, the regularisers, refinement and its CLI.

References: exact point-in-triangle tests and camera rays (`cameras.generate_rays`) for the
rasteriser, central finite differences for its gradient, closed forms for the regularisers,
and the true toy object (its SDF's mesh and sphere-traced silhouettes) for refinement.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from configs import mesh_sds as mesh_sds_config
from dfjax.eval import metrics
from dfjax.export import mesh as mesh_lib
from dfjax.mesh_sds import rasterize
from dfjax.mesh_sds import refine
from dfjax.mesh_sds import regularizers
from dfjax.scene import cameras
from dfjax.toy import objects as toy_objects
from dfjax.toy import truth as toy_truth
from dfjax.train import prior_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
CAMERA = cameras.camera_from_angles(azimuth_deg=20.0, elevation_deg=10.0, distance=2.0,
                                    fov_deg=50.0, width=SIZE, height=SIZE)


def unproject(camera, pixels, depth):
  """World points that project to continuous pixels (column, row) [N, 2] at a depth [N]."""
  pixels, depth = np.asarray(pixels, np.float64), np.asarray(depth, np.float64)
  focal = float(camera.focal)
  local = np.stack([(pixels[:, 0] - camera.width / 2) * depth / focal,
                    -(pixels[:, 1] - camera.height / 2) * depth / focal, -depth], -1)
  c2w = np.asarray(camera.c2w, np.float64)
  return (local @ c2w[:3, :3].T + c2w[:3, 3]).astype(np.float32)


def point_in_triangle(points, corners):
  """Exact inside test of points [N, 2] against a triangle [3, 2] (numpy, float64)."""
  a, b, c = np.asarray(corners, np.float64)
  cross = lambda u, v: u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
  signs = np.stack([cross(b - a, points - a), cross(c - b, points - b), cross(a - c, points - c)])
  return np.all(signs >= 0, 0) | np.all(signs <= 0, 0)


def boundary_distance(points, corners):
  """Distance of points [N, 2] to the edges of a triangle [3, 2] (numpy, float64)."""
  distances = []
  for start, end in ((0, 1), (1, 2), (2, 0)):
    a, edge = corners[start], corners[end] - corners[start]
    along = np.clip((points - a) @ edge / (edge @ edge), 0.0, 1.0)
    distances.append(np.linalg.norm(points - a - along[:, None] * edge, axis=-1))
  return np.min(distances, axis=0)


@pytest.fixture(scope="module")
def render_triangles():
  """Jitted render of a few triangles through CAMERA; sigma is an argument."""
  @jax.jit
  def render(vertices, colors, sigma):
    faces = jnp.arange(vertices.shape[0]).reshape(-1, 3)
    return rasterize.render_mesh(vertices, faces, colors, CAMERA, sigma=sigma,
                                 background=(1.0, 1.0, 1.0))
  return render


TRIANGLE_PIXELS = np.array([[2.3, 3.1], [13.6, 5.2], [6.1, 14.4]])


def test_soft_coverage_converges_to_the_hard_triangle(render_triangles):
  vertices = unproject(CAMERA, TRIANGLE_PIXELS, np.full(3, 1.8))
  colors = np.zeros((3, 3), np.float32)
  centres = np.stack(np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5, indexing="xy"),
                     -1).reshape(-1, 2)
  inside = point_in_triangle(centres, TRIANGLE_PIXELS).reshape(SIZE, SIZE)
  sharp = render_triangles(vertices, colors, 1e-4)
  # sigma = 1e-4 px^2: a pixel centre 0.05 px from an edge has D = sigmoid(+-25), 1e-11 from
  # the hard value; the few nearer centres are legitimately in between.
  clear = boundary_distance(centres, TRIANGLE_PIXELS).reshape(SIZE, SIZE) > 0.05
  assert clear.sum() >= SIZE * SIZE - 8
  np.testing.assert_allclose(np.asarray(sharp.alpha)[clear], inside[clear], atol=1e-3)
  np.testing.assert_allclose(np.asarray(sharp.rgb)[clear],
                             np.repeat(np.where(inside, 0.0, 1.0)[clear][:, None], 3, 1), atol=1e-3)
  # The covered area tends to the triangle's analytic area as sigma -> 0 (pixel sampling
  # error of the perimeter's order, ~half a pixel per unit of edge length at most).
  area = 0.5 * abs(np.cross(TRIANGLE_PIXELS[1] - TRIANGLE_PIXELS[0],
                            TRIANGLE_PIXELS[2] - TRIANGLE_PIXELS[0]))
  errors = [abs(float(jnp.sum(render_triangles(vertices, colors, s).alpha)) - area)
            for s in (3.0, 0.3, 1e-4)]
  assert errors[0] > errors[1] > errors[2] - 1e-6 and errors[2] < 0.1 * area


def test_vertices_project_onto_the_pixels_of_their_rays():
  sample = cameras.sample_camera(jax.random.PRNGKey(3), width=12, height=10,
                                 position_jitter=0.1, look_at_std=0.2, up_std=0.02)
  rays = cameras.generate_rays(sample.camera)
  rows, columns = np.array([0, 4, 9]), np.array([0, 7, 11])
  points = rays.origins[rows, columns] + 1.7 * rays.directions[rows, columns]
  pixels, depth = rasterize.project_vertices(points, sample.camera, near=0.1)
  np.testing.assert_allclose(np.asarray(pixels), np.stack([columns + 0.5, rows + 0.5], -1),
                             atol=1e-4)
  assert np.all(np.asarray(depth) > 0)


def test_a_nearer_face_occludes_a_farther_one(render_triangles):
  red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
  near = unproject(CAMERA, TRIANGLE_PIXELS, np.full(3, 1.7))
  far = unproject(CAMERA, TRIANGLE_PIXELS[::-1] + 0.5, np.full(3, 2.1))
  for vertices, colors in (
      (np.concatenate([near, far]), np.stack([red] * 3 + [blue] * 3)),
      (np.concatenate([far, near]), np.stack([blue] * 3 + [red] * 3))):
    rgb = np.asarray(render_triangles(vertices, colors.astype(np.float32), 0.01).rgb)
    np.testing.assert_allclose(rgb[8, 7], red, atol=1e-4)


def test_pixel_gradient_matches_finite_differences(render_triangles):
  vertices = unproject(CAMERA, TRIANGLE_PIXELS, np.array([1.7, 1.9, 2.0]))
  colors = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], np.float32)
  weights = np.random.default_rng(0).uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
  loss = lambda v: jnp.sum(weights * render_triangles(v, colors, 2.0).rgb)
  gradient = np.asarray(jax.grad(loss)(jnp.asarray(vertices)))
  step = 2e-3
  numeric = np.zeros_like(gradient)
  for index in np.ndindex(vertices.shape):
    plus, minus = vertices.copy(), vertices.copy()
    plus[index] += step
    minus[index] -= step
    numeric[index] = (float(loss(plus)) - float(loss(minus))) / (2 * step)
  # float32 renders: the difference quotient carries ~1e-2 absolute rounding noise.
  np.testing.assert_allclose(gradient, numeric, rtol=0.03, atol=0.05)
  assert np.abs(gradient).max() > 1.0


def grid_mesh(size=5):
  """A flat regular grid of size x size vertices in the z = 0 plane, two triangles a cell."""
  xs, ys = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  vertices = np.stack([xs, ys, np.zeros_like(xs)], -1).reshape(-1, 3).astype(np.float32) * 0.1
  index = lambda i, j: i * size + j
  faces = [f for i in range(size - 1) for j in range(size - 1)
           for f in ((index(i, j), index(i + 1, j), index(i + 1, j + 1)),
                     (index(i, j), index(i + 1, j + 1), index(i, j + 1)))]
  return vertices, np.array(faces, np.int32)


def test_laplacian_is_zero_inside_a_flat_grid_and_positive_when_lifted():
  vertices, faces = grid_mesh()
  edges = jnp.asarray(regularizers.mesh_edges(faces))
  assert len(edges) == 5 * 4 * 2 + 16  # horizontal and vertical edges plus one diagonal a cell
  delta = np.asarray(regularizers.uniform_laplacian(jnp.asarray(vertices), edges)).reshape(5, 5, 3)
  np.testing.assert_allclose(delta[1:-1, 1:-1], 0.0, atol=1e-7)
  assert np.abs(delta[0, 0]).max() > 0.01  # a corner is off its neighbours' centroid
  lifted = vertices.copy()
  lifted[12, 2] = 0.05  # the centre vertex
  delta = np.asarray(regularizers.uniform_laplacian(jnp.asarray(lifted), edges))
  np.testing.assert_allclose(delta[12], [0.0, 0.0, 0.05], atol=1e-7)
  # The lift raises the mean squared Laplacian above the flat grid's (its boundary terms).
  assert float(regularizers.laplacian_loss(jnp.asarray(lifted), edges)) > float(
      regularizers.laplacian_loss(jnp.asarray(vertices), edges))


def test_edge_term_is_zero_at_rest_and_closed_form_under_scaling():
  vertices, faces = grid_mesh()
  edges = jnp.asarray(regularizers.mesh_edges(faces))
  rest = regularizers.edge_lengths(jnp.asarray(vertices), edges)
  assert float(regularizers.edge_length_loss(jnp.asarray(vertices), edges, rest)) == 0.0
  for scale in (0.5, 1.3):
    value = float(regularizers.edge_length_loss(jnp.asarray(vertices * scale), edges, rest))
    np.testing.assert_allclose(value, (scale - 1.0)**2, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# End to end with the toy prior.

HELD_OUT = ((30.0, 20.0), (100.0, 5.0), (215.0, 35.0), (300.0, 10.0))
E2E_STEPS = 40


@jax.jit
def _sharp_silhouette(vertices, faces, camera):
  colors = jnp.zeros_like(vertices)
  return rasterize.render_mesh(vertices, faces, colors, camera, sigma=0.01).alpha


def _silhouette_iou(mesh, obj, truth_cache):
  ious = []
  for azimuth, elevation in HELD_OUT:
    camera = cameras.camera_from_angles(azimuth_deg=azimuth, elevation_deg=elevation,
                                        distance=1.45, fov_deg=50.0, width=32, height=32)
    if (azimuth, elevation) not in truth_cache:
      truth_cache[azimuth, elevation] = np.asarray(toy_truth.render_ground_truth(obj, camera).alpha)
    alpha = _sharp_silhouette(mesh.vertices, mesh.faces, camera)
    ious.append(metrics.mask_iou(np.asarray(alpha), truth_cache[azimuth, elevation]))
  return float(np.mean(ious))


def _chamfer(a, b):
  """Symmetric mean nearest-vertex distance between two vertex sets [N, 3], [M, 3]."""
  return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def _edge_spread(mesh):
  lengths = np.linalg.norm(mesh.vertices[mesh.faces] - mesh.vertices[np.roll(mesh.faces, 1, 1)],
                           axis=-1)
  return float(lengths.std() / lengths.mean())


def test_refinement_with_the_toy_prior_undoes_a_distortion():
  obj = toy_objects.yellow_duck()
  truth = mesh_lib.extract_mesh(lambda p: 1.0 - obj.sdf(p), obj.albedo, resolution=16,
                                bound=0.6, threshold=1.0)  # the level set sdf = 0
  distorted = mesh_lib.Mesh(vertices=truth.vertices * np.float32([1.3, 0.8, 0.8]),
                            faces=truth.faces, vertex_colors=truth.vertex_colors)
  config = mesh_sds_config.get_config()
  config.prompt = obj.caption
  prior, camera_kwargs = prior_setup.build_prior(config)
  settings = refine.settings_from_config(config)
  refined = refine.refine(distorted, prior=prior, camera_kwargs=camera_kwargs,
                          settings=settings, steps=E2E_STEPS, learning_rate=1e-2)
  cache = {}
  iou_before, iou_after = (_silhouette_iou(m, obj, cache) for m in (distorted, refined))
  chamfer_before, chamfer_after = (_chamfer(m.vertices, truth.vertices)
                                   for m in (distorted, refined))
  print(f"silhouette IoU {iou_before:.3f} -> {iou_after:.3f}, chamfer {chamfer_before:.4f} -> "
        f"{chamfer_after:.4f}, edge spread {_edge_spread(distorted):.3f} -> "
        f"{_edge_spread(refined):.3f}")
  # Measured (jax 0.10, CPU): IoU 0.755 -> 0.825, chamfer 0.0963 -> 0.0920, edge spread
  # (std / mean of edge lengths) 0.42 -> 0.45.
  assert iou_after > iou_before + 0.04
  assert chamfer_after < chamfer_before
  assert _edge_spread(refined) < 1.25 * _edge_spread(distorted)
  np.testing.assert_array_equal(refined.faces, distorted.faces)


def test_the_toy_sd_refinement_config_is_toy_sd_with_the_mesh_section():
  from configs import mesh_sds_toy_sd  # pylint: disable=g-import-not-at-top
  from configs import toy_sd  # pylint: disable=g-import-not-at-top
  config, base = mesh_sds_toy_sd.get_config(), toy_sd.get_config()
  assert {k: v for k, v in config.to_dict().items() if k != "mesh_sds"} == base.to_dict()
  section = mesh_sds_config.mesh_sds_config().to_dict()
  assert config.mesh_sds.to_dict() == dict(section, shaded_prob=base.shading.shaded_prob)
  settings = refine.settings_from_config(config)
  assert settings.shaded_prob == 0.75 and settings.guidance_scale == base.prior.guidance_scale


# ---------------------------------------------------------------------------------------------
# The command line.


def _run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = ""  # one device is all the CLI uses
  return subprocess.run([sys.executable, "-m", "dfjax.mesh_sds",
                         "--config=configs/mesh_sds.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_refines_a_mesh_file(tmp_path):
  import trimesh  # pylint: disable=g-import-not-at-top
  sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
  source = tmp_path / "sphere.ply"
  sphere.export(source)  # no vertex colours: refined as mid-grey
  before = source.read_bytes()
  out = tmp_path / "refined.glb"
  result = _run_cli(f"--mesh={source}", f"--out={out}", "--config.mesh_sds.steps=3",
                    "--config.mesh_sds.log_every=1", "--config.prompt=a yellow duck")
  assert result.returncode == 0, result.stderr
  assert "step 3/3" in result.stdout
  refined = trimesh.load(out, force="mesh", process=False)
  assert refined.faces.shape == sphere.faces.shape
  assert np.all(refined.visual.vertex_colors[:, :3] == mesh_lib.DEFAULT_GREY)
  moved = np.abs(refined.vertices - sphere.vertices).max()
  assert 0 < moved < 0.1
  assert source.read_bytes() == before


def test_cli_bad_input_is_one_line_and_leaves_the_input_alone(tmp_path):
  source = tmp_path / "broken.ply"
  source.write_bytes(b"ply\nthis is not a mesh\n")
  result = _run_cli(f"--mesh={source}", f"--out={tmp_path / 'out.ply'}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.ply" in lines[0]
  assert source.read_bytes() == b"ply\nthis is not a mesh\n"
  assert not (tmp_path / "out.ply").exists()
