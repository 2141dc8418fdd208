"""Tests for dfjax.export.mesh: marching cubes on analytic density fields with known surfaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib

RED = np.array([255, 0, 0], np.uint8)
BLUE = np.array([0, 0, 255], np.uint8)


def ellipsoid_density(center, radii, *, peak=200.0, width=0.02):
  """Smooth indicator of an ellipsoid: tau = peak * sigmoid((1 - q) / width), q its norm.

  tau = peak / 2 exactly on the surface q = 1, so threshold = peak / 2 recovers it.
  """
  center, radii = jnp.asarray(center), jnp.asarray(radii)

  def density_fn(points):
    q = jnp.linalg.norm((points - center) / radii, axis=-1)
    return peak * jax.nn.sigmoid((1.0 - q) / width)

  return density_fn


def red_blue_albedo(points):
  """Red where x > 0, blue where x <= 0: [N, 3] -> [N, 3]."""
  return jnp.where(points[:, :1] > 0, jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 0.0, 1.0]))


def as_trimesh(mesh):
  return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)


@pytest.fixture(scope="module")
def sphere_mesh():
  """Sphere of radius 0.5 at the origin, resolution 96 over [-1, 1]^3 (voxel h = 1/48)."""
  return mesh_lib.extract_mesh(
      ellipsoid_density((0.0, 0.0, 0.0), (0.5, 0.5, 0.5)), red_blue_albedo, resolution=96,
      bound=1.0, threshold=100.0)


def test_grid_coordinates_are_voxel_centres():
  np.testing.assert_allclose(
      mesh_lib.grid_coordinates(resolution=4, bound=1.0), [-0.75, -0.25, 0.25, 0.75])


def test_density_grid_axis_order_and_chunking():
  # density = x + 10 y + 100 z identifies every axis; chunk 1000 does not divide 12^3.
  resolution = 12
  grid = mesh_lib.density_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2],
                               resolution=resolution, bound=0.6, chunk=1000)
  x = mesh_lib.grid_coordinates(resolution=resolution, bound=0.6)
  expected = x[:, None, None] + 10 * x[None, :, None] + 100 * x[None, None, :]
  assert grid.shape == (resolution,) * 3
  np.testing.assert_allclose(grid, expected, atol=1e-4)


def test_sphere_is_closed_outward_and_on_the_surface(sphere_mesh):
  voxel = 2.0 / 96
  mesh = as_trimesh(sphere_mesh)
  assert sphere_mesh.vertices.dtype == np.float32 and sphere_mesh.faces.dtype == np.int32
  assert mesh.is_watertight and mesh.is_winding_consistent
  # Outward: every face normal points away from the centre, and the signed volume is positive.
  outward = np.einsum("fi,fi->f", mesh.face_normals, mesh.triangles_center)
  assert np.all(outward > 0)
  # The sigmoid is linear to second order at its centre, so interpolated vertices sit far
  # closer than the half voxel a step function would allow; 0.1 voxel is still loose.
  radii = np.linalg.norm(sphere_mesh.vertices, axis=1)
  np.testing.assert_allclose(radii, 0.5, atol=0.1 * voxel)
  # Chords of length <= sqrt(2) h sag by <= 2 h^2 / (8 r) inside the sphere, a relative volume
  # deficit <= 3 h^2 / (4 r^2) = 0.13 %; 0.5 % allows for the vertex error above.
  np.testing.assert_allclose(mesh.volume, 4.0 / 3.0 * np.pi * 0.5**3, rtol=5e-3)


def test_step_density_vertices_within_half_a_voxel():
  # A step density puts each vertex half way between the voxel centres that straddle the
  # surface, so it is within half a voxel of the true sphere.
  step = lambda p: jnp.where(jnp.linalg.norm(p, axis=-1) < 0.5, 100.0, 0.0)
  mesh = mesh_lib.extract_mesh(step, red_blue_albedo, resolution=40, bound=1.0, threshold=50.0)
  np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 0.5, atol=0.5 * 2.0 / 40)
  assert as_trimesh(mesh).is_watertight


def test_vertex_colors_follow_albedo(sphere_mesh):
  x = sphere_mesh.vertices[:, 0]
  assert sphere_mesh.vertex_colors.dtype == np.uint8
  np.testing.assert_array_equal(sphere_mesh.vertex_colors[x > 0.01], np.broadcast_to(
      RED, (np.sum(x > 0.01), 3)))
  np.testing.assert_array_equal(sphere_mesh.vertex_colors[x < -0.01], np.broadcast_to(
      BLUE, (np.sum(x < -0.01), 3)))


def test_off_centre_ellipsoid_keeps_axis_order():
  center, radii = np.array([0.2, -0.1, 0.05]), np.array([0.6, 0.35, 0.2])
  mesh = mesh_lib.extract_mesh(ellipsoid_density(center, radii, width=0.04), red_blue_albedo,
                               resolution=64, bound=1.0, threshold=100.0)
  voxel = 2.0 / 64
  # The extreme vertices lie near the ellipsoid's extreme points center +- radii (measured
  # within 0.08 voxel; a swapped axis or a half-voxel offset breaks the 0.25 voxel bound).
  np.testing.assert_allclose(mesh.vertices.min(axis=0), center - radii, atol=0.25 * voxel)
  np.testing.assert_allclose(mesh.vertices.max(axis=0), center + radii, atol=0.25 * voxel)
  # Measured deficit 0.6 % (the 0.2 radius is only 6.4 voxels).
  np.testing.assert_allclose(as_trimesh(mesh).volume, 4.0 / 3.0 * np.pi * np.prod(radii),
                             rtol=0.01)


def test_object_cut_by_the_bound_is_still_watertight():
  # A sphere poking out of the +x face of the grid is closed by the zero-density border.
  mesh = mesh_lib.extract_mesh(ellipsoid_density((0.8, 0.0, 0.0), (0.5, 0.5, 0.5)),
                               red_blue_albedo, resolution=32, bound=1.0, threshold=100.0)
  surface = as_trimesh(mesh)
  assert surface.is_watertight and surface.volume > 0
  assert mesh.vertices[:, 0].max() <= 1.0 + 2.0 / 32


def test_empty_and_full_grids_give_user_errors():
  empty = lambda p: jnp.full(p.shape[:-1], 3.0)
  with pytest.raises(UserError, match=r"no voxel .* 3 to 3.*lower threshold"):
    mesh_lib.extract_mesh(empty, red_blue_albedo, resolution=8, threshold=25.0)
  with pytest.raises(UserError, match="every voxel.*higher threshold"):
    mesh_lib.extract_mesh(empty, red_blue_albedo, resolution=8, threshold=1.0)
  with pytest.raises(UserError, match="must be > 0"):
    mesh_lib.extract_mesh(empty, red_blue_albedo, resolution=8, threshold=0.0)
  nan = lambda p: jnp.full(p.shape[:-1], jnp.nan)
  with pytest.raises(UserError, match="NaN"):
    mesh_lib.extract_mesh(nan, red_blue_albedo, resolution=8)


@pytest.mark.parametrize("extension", [".ply", ".glb", ".obj"])
def test_mesh_files_round_trip(sphere_mesh, tmp_path, extension):
  path = str(tmp_path / "sub" / f"sphere{extension}")
  mesh_lib.write_mesh(sphere_mesh, path)
  loaded = trimesh.load(path, force="mesh", process=False)
  assert len(loaded.vertices) == len(sphere_mesh.vertices)
  np.testing.assert_array_equal(loaded.faces, sphere_mesh.faces)
  np.testing.assert_allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-6)
  np.testing.assert_array_equal(loaded.visual.vertex_colors[:, :3], sphere_mesh.vertex_colors)


def test_unknown_mesh_format_is_a_user_error(sphere_mesh, tmp_path):
  with pytest.raises(UserError, match="unknown mesh format '.stl'"):
    mesh_lib.write_mesh(sphere_mesh, str(tmp_path / "sphere.stl"))


def test_point_fns_from_field_pass_the_export_variance():
  def field_fn(means, cov_diag):
    return jnp.sum(means, axis=-1) + cov_diag[..., 0], means * 0.5

  density_fn, albedo_fn = mesh_lib.point_fns_from_field(field_fn, sample_variance=2e-3)
  points = jnp.array([[0.1, 0.2, 0.3]])
  np.testing.assert_allclose(density_fn(points), [0.602], rtol=1e-6)
  np.testing.assert_allclose(albedo_fn(points), [[0.05, 0.1, 0.15]], rtol=1e-6)


# A Gaussian blob τ(x) = τ0 exp(−|x|²/σ²): along a ray passing the centre at distance b the
# largest density is τ0 exp(−b²/σ²) and the optical depth τ0 σ √π exp(−b²/σ²), so the rendered
# silhouette (opacity > 1/2, optical depth > ln 2) is the level set's silhouette exactly when
# the level is ln 2 / (σ √π), whatever τ0.
BLOB_PEAK, BLOB_SIGMA = 6.0, 0.3


def blob_density(points):
  return BLOB_PEAK * jnp.exp(-jnp.sum(points**2, axis=-1) / BLOB_SIGMA**2)


def test_ray_profiles_of_a_gaussian_blob_match_the_closed_form():
  from dfjax.scene import cameras  # pylint: disable=g-import-not-at-top
  from dfjax.scene import render as render_lib  # pylint: disable=g-import-not-at-top
  camera = cameras.camera_from_angles(azimuth_deg=30.0, elevation_deg=20.0, distance=2.0,
                                      fov_deg=40.0, width=24, height=24)
  max_density, alpha = mesh_lib.ray_profiles(blob_density, camera, num_samples=512,
                                             bound_radius=1.4)
  rays = cameras.generate_rays(camera)
  b2 = np.sum(np.cross(np.asarray(rays.origins), np.asarray(rays.directions))**2, axis=-1)
  peak = BLOB_PEAK * np.exp(-b2 / BLOB_SIGMA**2)
  np.testing.assert_allclose(max_density, peak, rtol=1e-3, atol=1e-6)
  depth = peak * BLOB_SIGMA * np.sqrt(np.pi)
  np.testing.assert_allclose(alpha, 1.0 - np.exp(-depth), atol=1e-3)
  assert alpha.max() > 0.9 and alpha.min() < 0.01  # the silhouette's edge is in the image
  # Rays that miss the bounding sphere see nothing, however dense the field at the camera.
  small = mesh_lib.ray_profiles(lambda p: jnp.full(p.shape[:-1], 7.0), camera, num_samples=8,
                                bound_radius=0.3)
  near, far = render_lib.intersect_sphere(rays.origins, rays.directions, 0.3)
  missed = np.asarray(far == near)
  assert missed.any() and not missed.all()
  assert np.all(small[0][missed] == 0) and np.all(small[1][missed] == 0)
  np.testing.assert_allclose(small[0][~missed], 7.0)


def test_silhouette_threshold_of_a_gaussian_blob_is_ln2_over_sigma_root_pi():
  b = np.linspace(0.0, 1.0, 20001)  # impact parameters of many rays
  for peak in (3.0, 30.0, 300.0):
    max_density = peak * np.exp(-b**2 / BLOB_SIGMA**2)
    alpha = 1.0 - np.exp(-max_density * BLOB_SIGMA * np.sqrt(np.pi))
    threshold, iou = mesh_lib.silhouette_threshold(max_density, alpha)
    expected = np.log(2.0) / (BLOB_SIGMA * np.sqrt(np.pi))
    spacing = (max_density[alpha > 0.5].max() / max_density[alpha > 0.5].min())**(1 / 95)
    assert abs(np.log(threshold / expected)) <= np.log(spacing), (peak, threshold, expected)
    assert iou > 0.99
  with pytest.raises(UserError, match="no pixel with opacity above 1/2"):
    mesh_lib.silhouette_threshold(np.ones(10), np.full(10, 0.4))
