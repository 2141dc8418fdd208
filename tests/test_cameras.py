"""Cameras: the paper's sampling distributions, the world convention, rays and view buckets."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dfjax.scene import cameras

# Kolmogorov-Smirnov tests use a fixed seed and reject at p < 1e-3: a correct sampler fails
# with probability 1e-3 per seed, a wrong one (a different range or mixture) fails surely at
# this sample size.
NUM = 20_000
P_MIN = 1e-3


@pytest.fixture(scope="module")
def samples():
  keys = jax.random.split(jax.random.PRNGKey(1234), NUM)
  draw = jax.jit(jax.vmap(lambda k: cameras.sample_camera(k, width=64, height=64)))
  return jax.tree.map(np.asarray, draw(keys))


def _elevation_cdf(e, lo=-10.0, hi=90.0):
  """The paper's mixture: half uniform in angle, half uniform in area over [0, 90]."""
  in_angle = np.clip((e - lo) / (hi - lo), 0, 1)
  in_area = np.clip(np.sin(np.radians(np.clip(e, 0, hi))) / math.sin(math.radians(hi)), 0, 1)
  return 0.5 * in_angle + 0.5 * in_area


def test_elevation_follows_the_paper_mixture(samples):
  assert stats.kstest(samples.elevation_deg, _elevation_cdf).pvalue > P_MIN
  # The mixture is not the uniform-in-angle distribution alone: the test has power.
  assert stats.kstest(samples.elevation_deg, stats.uniform(-10, 100).cdf).pvalue < P_MIN


def test_azimuth_distance_focal_are_uniform(samples):
  assert stats.kstest(samples.azimuth_deg, stats.uniform(0, 360).cdf).pvalue > P_MIN
  assert stats.kstest(samples.distance, stats.uniform(1.0, 0.5).cdf).pvalue > P_MIN
  focal_multiplier = samples.camera.focal / 64
  assert stats.kstest(focal_multiplier, stats.uniform(0.7, 0.65).cdf).pvalue > P_MIN


def test_position_jitter_is_uniform_in_a_cube(samples):
  nominal = np.asarray(cameras.spherical_to_position(
      samples.azimuth_deg, samples.elevation_deg, samples.distance))
  jitter = samples.camera.c2w[:, :3, 3] - nominal
  for axis in range(3):
    assert stats.kstest(jitter[:, axis], stats.uniform(-0.1, 0.2).cdf).pvalue > P_MIN


def test_look_at_and_up_noise(samples):
  """The optical axis passes through a N(0, 0.2²I) look-at point; up gets N(0, 0.02²I)."""
  c2w = samples.camera.c2w
  position, backward, right = c2w[:, :3, 3], c2w[:, :3, 2], c2w[:, :3, 0]
  # Distance from the origin to the optical axis is |p × f|: the length of the look-at
  # point's component perpendicular to the axis, which is Rayleigh(0.2) distributed.
  perpendicular = np.linalg.norm(np.cross(position, backward), axis=-1)
  assert stats.kstest(perpendicular / 0.2, stats.rayleigh.cdf).pvalue > P_MIN
  assert stats.kstest(perpendicular / 0.25, stats.rayleigh.cdf).pvalue < P_MIN
  # Roll: right ∝ f × (z + n), so to first order right_z = (f_x n_y − f_y n_x)/|f × z|,
  # which is N(0, 0.02²) for n ~ N(0, 0.02²I). Away from the pole the linearisation holds.
  low = samples.elevation_deg < 45
  roll = right[low, 2]
  assert abs(np.mean(roll)) < 4 * 0.02 / np.sqrt(low.sum())
  assert 0.018 < np.std(roll) < 0.022


def test_matrices_are_rotations(samples):
  rotation = samples.camera.c2w[:, :3, :3]
  np.testing.assert_allclose(rotation @ np.transpose(rotation, (0, 2, 1)),
                             np.broadcast_to(np.eye(3), rotation.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-5)
  np.testing.assert_array_equal(samples.camera.c2w[:, 3], np.broadcast_to([0, 0, 0, 1],
                                                                          (NUM, 4)))


@pytest.mark.parametrize("azimuth, elevation, expected", [
    (-45.0, 0.0, cameras.FRONT), (0.0, 0.0, cameras.FRONT), (44.999, 0.0, cameras.FRONT),
    (45.0, 0.0, cameras.SIDE), (134.999, 0.0, cameras.SIDE), (135.0, 0.0, cameras.BACK),
    (180.0, 0.0, cameras.BACK), (-180.0, 0.0, cameras.BACK), (224.999, 0.0, cameras.BACK),
    (225.0, 0.0, cameras.SIDE), (-135.0, 0.0, cameras.SIDE), (314.999, 0.0, cameras.SIDE),
    (315.0, 0.0, cameras.FRONT), (360.0, 0.0, cameras.FRONT), (405.0, 30.0, cameras.SIDE),
    (180.0, 60.0, cameras.BACK), (180.0, 60.001, cameras.OVERHEAD),
    (0.0, 90.0, cameras.OVERHEAD), (0.0, -10.0, cameras.FRONT),
])
def test_view_bucket_boundaries(azimuth, elevation, expected):
  assert int(cameras.view_bucket(azimuth, elevation)) == expected


def test_world_convention_and_pixel_layout():
  """Azimuth 0 looks from +x; image up is +z, image right is +y; row 0 is the top."""
  camera = cameras.camera_from_angles(azimuth_deg=0.0, elevation_deg=0.0, distance=2.0,
                                      fov_deg=60.0, width=33, height=33)
  np.testing.assert_allclose(camera.position, [2.0, 0.0, 0.0], atol=1e-6)
  rays = cameras.generate_rays(camera)
  np.testing.assert_allclose(rays.directions[16, 16], [-1.0, 0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(rays.directions, axis=-1), 1.0, atol=1e-6)

  def pixel_of(point):
    to_point = np.asarray(point) - np.asarray(camera.position)
    cosine = np.asarray(rays.directions) @ (to_point / np.linalg.norm(to_point))
    return np.unravel_index(np.argmax(cosine), cosine.shape)

  row, col = pixel_of([0.0, 0.0, 0.5])
  assert row < 16 and col == 16
  row, col = pixel_of([0.0, 0.5, 0.0])
  assert row == 16 and col > 16
  # Field of view: the top pixel row's centre is half a pixel below the 30° half-angle.
  top = np.asarray(rays.directions[0, 16])
  expected = math.atan(math.tan(math.radians(30.0)) * (16.5 - 0.5) / 16.5)
  assert math.isclose(math.atan2(top[2], -top[0]), expected, rel_tol=1e-5)


def test_camera_angles_invert_the_position():
  azimuth, elevation, distance = 123.0, 37.0, 1.7
  camera = cameras.camera_from_angles(azimuth_deg=azimuth, elevation_deg=elevation,
                                      distance=distance, fov_deg=40.0, width=8, height=8)
  got = cameras.camera_angles(camera.c2w)
  np.testing.assert_allclose([float(g) for g in got], [azimuth, elevation, distance],
                             rtol=1e-5)


def test_overhead_camera_is_well_defined():
  camera = cameras.camera_from_angles(azimuth_deg=0.0, elevation_deg=90.0, distance=1.5,
                                      fov_deg=40.0, width=8, height=8)
  assert np.all(np.isfinite(camera.c2w))
  np.testing.assert_allclose(camera.c2w[:3, 2], [0.0, 0.0, 1.0], atol=1e-6)
  np.testing.assert_allclose(camera.c2w[:3, 1], [-1.0, 0.0, 0.0], atol=1e-6)


def test_pixel_footprint_radius():
  """The cone radius equals the spacing of neighbouring unit rays times 2/sqrt(12)."""
  camera = cameras.camera_from_angles(azimuth_deg=30.0, elevation_deg=20.0, distance=1.2,
                                      fov_deg=50.0, width=64, height=64)
  rays = cameras.generate_rays(camera)
  spacing = jnp.linalg.norm(rays.directions[32, 33] - rays.directions[32, 32])
  np.testing.assert_allclose(rays.radii[32, 32, 0], spacing * 2 / math.sqrt(12), rtol=1e-3)
  np.testing.assert_allclose(rays.radii[32, 32, 0], 2 / math.sqrt(12) / camera.focal,
                             rtol=1e-3)
