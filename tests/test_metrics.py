"""Tests for dfjax.eval.metrics against analytic shapes and reference implementations."""
import colorsys

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from dfjax.eval import metrics


def box_density(low, high):
  """tau = 100 inside the axis-aligned box [low, high], 0 outside: points [N, 3] -> [N]."""
  low, high = jnp.asarray(low), jnp.asarray(high)
  return lambda p: jnp.where(jnp.all((p > low) & (p < high), axis=-1), 100.0, 0.0)


def test_iou_of_identical_disjoint_and_empty_sets():
  rng = np.random.default_rng(0)
  shape = rng.random((8, 8, 8)) > 0.5
  assert metrics.iou(shape, shape) == 1.0
  assert metrics.iou(shape, ~shape) == 0.0
  assert metrics.iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
  with pytest.raises(ValueError, match="equal shapes"):
    metrics.iou(shape, shape[0])


def test_half_overlapping_boxes_have_iou_one_third():
  # Unit cubes shifted by half their side: intersection 0.5, union 1.5. Box faces lie on voxel
  # boundaries (voxel side 1/16), so the voxelised value is exact.
  grid = dict(resolution=32, bound=1.0, threshold=50.0)
  a = metrics.occupancy_grid(box_density([-0.5] * 3, [0.5] * 3), **grid)
  b = metrics.occupancy_grid(box_density([0.0, -0.5, -0.5], [1.0, 0.5, 0.5]), **grid)
  assert a.sum() == 16**3
  assert metrics.iou(a, b) == pytest.approx(1.0 / 3.0, abs=1e-12)


def test_mask_iou_of_shifted_squares():
  alpha_a = np.zeros((2, 10, 10))
  alpha_b = np.zeros((2, 10, 10))
  alpha_a[:, 2:6, 2:6] = 0.9  # 2 views x 16 pixels each
  alpha_b[:, 4:8, 2:6] = 0.7  # overlaps rows 4:6 -> 2 views x 8 pixels
  assert metrics.mask_iou(alpha_a, alpha_b) == pytest.approx(16 / 48)
  assert metrics.mask_iou(alpha_a, alpha_b, threshold=0.8) == 0.0


def test_psnr_known_values():
  a = np.zeros((2, 4, 4, 3))
  assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)
  assert metrics.psnr(a, a + 25.5, max_value=255.0) == pytest.approx(20.0)
  assert metrics.psnr(a, a) == float("inf")


def test_normal_error_deg():
  rng = np.random.default_rng(1)
  normals = rng.normal(size=(3, 5, 5, 3))
  mask = rng.random((3, 5, 5)) > 0.3
  garbage = np.where(mask[..., None], normals, rng.normal(size=normals.shape))
  # Identical up to length (and garbage outside the mask): 0; flipped: 180.
  assert metrics.normal_error_deg(normals, 2.5 * garbage, mask) == pytest.approx(0.0, abs=1e-5)
  assert metrics.normal_error_deg(normals, -normals, mask) == pytest.approx(180.0)
  x, y = np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 1.0]])
  assert metrics.normal_error_deg(x, y, np.array([True])) == pytest.approx(90.0)
  assert np.isnan(metrics.normal_error_deg(x, y, np.array([False])))


def test_dilate_matches_scipy_cube_dilation():
  rng = np.random.default_rng(2)
  occupancy = rng.random((9, 10, 11)) > 0.97
  expected = ndimage.binary_dilation(occupancy, structure=np.ones((5, 5, 5), bool))
  np.testing.assert_array_equal(metrics.dilate(occupancy, voxels=2), expected)
  np.testing.assert_array_equal(metrics.dilate(occupancy, voxels=0), occupancy)


def test_floaters_and_empty_space_density():
  reference = np.zeros((20, 20, 20), bool)
  reference[5:10, 5:10, 5:10] = True  # 125 voxels
  predicted = reference.copy()
  predicted[11, 5:10, 5:10] = True  # 25 voxels 1 voxel away: inside the 2-voxel dilation
  predicted[16:18, 16:18, 16:18] = True  # 8 voxels far away: floaters
  assert metrics.floater_fraction(predicted, reference, dilation_voxels=2) == pytest.approx(
      8 / 158)
  assert metrics.floater_fraction(predicted, reference, dilation_voxels=0) == pytest.approx(
      33 / 158)
  assert metrics.floater_fraction(np.zeros_like(reference), reference) == 0.0
  density = np.where(predicted, 100.0, 3.0)
  empty = ~metrics.dilate(reference, voxels=2)
  expected = (3.0 * (empty.sum() - 8) + 100.0 * 8) / empty.sum()
  assert metrics.empty_space_density(density, reference) == pytest.approx(expected)


def test_saturation_matches_colorsys():
  rng = np.random.default_rng(3)
  images = rng.random((2, 4, 5, 3))
  images[0, 0, 0] = 0.0  # black: saturation 0
  expected = np.mean([colorsys.rgb_to_hsv(*pixel)[1] for pixel in images.reshape(-1, 3)])
  assert metrics.saturation(images) == pytest.approx(expected, rel=1e-12)
  assert metrics.saturation(np.array([[1.0, 0.5, 0.5], [0.3, 0.3, 0.3]])) == pytest.approx(0.25)
