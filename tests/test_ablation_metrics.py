"""The ablation scores on cases whose values are known (dfjax.eval.ablation_metrics)."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.eval import ablation_metrics as am
from dfjax.eval import metrics
from dfjax.scene import cameras
from dfjax.toy import banks as toy_banks
from dfjax.toy import objects as toy_objects
from dfjax.toy import sdf as toy_sdf
from dfjax.toy import truth as toy_truth

RESOLUTION = 40


def mirrored_front(obj):
  """The object with a mirror copy (x -> -x) of every part: a second front at the back."""

  def part_distances(xyz):
    x, y, z = xyz
    return tuple(jnp.minimum(a, b) for a, b in zip(obj.part_distances((x, y, z)),
                                                   obj.part_distances((-x, y, z))))

  return dataclasses.replace(obj, part_distances=part_distances)


def views(obj, azimuths):
  renders = [toy_truth.render_ground_truth(obj, cameras.camera_from_angles(
      azimuth_deg=a, elevation_deg=15.0, distance=1.45, fov_deg=52.0, width=RESOLUTION,
      height=RESOLUTION), num_steps=100) for a in azimuths]
  return (np.stack([np.asarray(r.rgb) for r in renders]),
          np.stack([np.asarray(r.alpha) for r in renders]))


@pytest.fixture(scope="module")
def snowman_views():
  obj = toy_objects.snowman()
  front = views(obj, (20.0, 0.0, 340.0))
  back = views(obj, (160.0, 180.0, 200.0))
  janus_back = views(mirrored_front(obj), (160.0, 180.0, 200.0))
  return obj, front, back, janus_back


def janus(obj, back, front):
  return am.janus_score(*back, *front, palette=obj.part_colors,
                        feature_index=obj.part_colors.index(obj.front_feature.color))


def test_janus_score_is_zero_for_the_true_object_and_about_one_for_a_doubled_front(
    snowman_views):
  obj, front, back, janus_back = snowman_views
  assert am.feature_fraction(*front, palette=obj.part_colors, feature_index=1) > 0.005
  assert janus(obj, back, front) == 0.0
  # The true front against itself: all of the feature is there.
  assert am.relative_feature_fraction(*front, *front, palette=obj.part_colors,
                                      feature_index=1) == pytest.approx(1.0)
  # The mirrored copy's back view is the front view flipped left-right (the azimuths mirror
  # too), so it shows the same nose pixels up to the sphere tracer's edge pixels.
  assert janus(obj, janus_back, front) == pytest.approx(1.0, abs=0.1)


def test_janus_score_of_an_object_without_visible_front_feature_is_nan(snowman_views):
  obj, front, back, _ = snowman_views
  assert np.isnan(janus(obj, back, back))


def test_feature_pixels_take_the_nearest_palette_colour_within_range():
  palette = [(0.98, 0.85, 0.15), (1.0, 0.5, 0.05)]  # duck yellow, beak orange
  rgb = np.array([[(1.0, 0.5, 0.05), (1.0, 0.7, 0.1), (0.98, 0.6, 0.12), (0.0, 0.0, 1.0)]])
  alpha = np.array([[1.0, 1.0, 0.2, 1.0]])
  # Orange: yes. Halfway yellow-orange, but nearer yellow: no. Orange but off the object: no.
  # Blue: nearest orange? No: too far from it.
  np.testing.assert_array_equal(
      am.feature_pixels(rgb, alpha, palette=palette, feature_index=1),
      [[True, False, False, False]])
  assert am.feature_fraction(rgb, alpha, palette=palette, feature_index=1) == pytest.approx(1 / 3)


def test_baked_shading_correlation_is_one_for_baked_shading_and_zero_for_flat_albedo():
  rng = np.random.default_rng(0)
  shading = rng.uniform(0.0, 1.0, size=(2, 16, 16))
  mask = shading > 0.05
  true_albedo = rng.choice([0.2, 0.5, 0.9], size=(2, 16, 16, 1)) * np.ones(3)
  baked = true_albedo * (0.1 + 0.9 * shading)[..., None]
  assert am.baked_shading_correlation(baked, true_albedo, shading,
                                      mask) == pytest.approx(1.0, abs=1e-9)
  assert am.baked_shading_correlation(0.7 * true_albedo, true_albedo, shading, mask) == 0.0
  noisy = true_albedo * rng.uniform(0.5, 1.5, size=(2, 16, 16, 1))
  assert abs(am.baked_shading_correlation(noisy, true_albedo, shading, mask)) < 0.15
  assert np.isnan(am.baked_shading_correlation(baked, true_albedo, shading,
                                               np.zeros_like(mask)))


def test_mean_diffuse_cosine_of_one_light_and_of_lights_from_every_direction():
  rng = np.random.default_rng(0)
  normals = rng.normal(size=(5, 3))
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  points = rng.uniform(-0.3, 0.3, size=(5, 3))
  light = np.array([[0.4, -1.0, 0.8]])
  to_light = (light - points) / np.linalg.norm(light - points, axis=-1, keepdims=True)
  np.testing.assert_allclose(am.mean_diffuse_cosine(points, normals, light),
                             np.clip(np.sum(normals * to_light, axis=-1), 0, None), atol=1e-12)
  # Far lights uniform over the sphere: E[max(0, n . l)] = 1/4 for every normal.
  directions = rng.normal(size=(200000, 3))
  far = 1e6 * directions / np.linalg.norm(directions, axis=-1, keepdims=True)
  np.testing.assert_allclose(am.mean_diffuse_cosine(points, normals, far, lights_per_chunk=4096),
                             0.25, atol=0.005)  # 7 standard errors of the mean (0.32/sqrt(N))


def test_bank_lights_are_near_the_bank_cameras():
  lights = toy_banks.sample_bank_lights(4000, seed=1)
  distance = np.linalg.norm(lights, axis=-1)
  assert lights.shape == (4000, 3) and distance.min() >= 0.8 - 1e-5
  assert distance.max() <= 1.5 + 1e-5
  # Cameras all around at elevations in [-10, 70] degrees: azimuths balance out, and the
  # lights lean upwards like the cameras (N(camera, I) keeps most of their direction).
  assert np.linalg.norm(lights[:, :2].mean(axis=0)) < 0.05
  elevation = np.degrees(np.arcsin(lights[:, 2] / distance))
  assert 10.0 < np.median(elevation) < 40.0
  assert not np.array_equal(lights, toy_banks.sample_bank_lights(4000, seed=2))


def test_ground_truth_occupancy_matches_a_sphere_volume_and_scores_of_identical_shapes():
  obj = toy_objects.ToyObject(
      caption="a ball",
      part_distances=lambda xyz: (toy_sdf.sphere(xyz, center=(0, 0, 0), radius=0.4),),
      part_colors=((0.5, 0.5, 0.5),))
  grid = am.ground_truth_occupancy(obj, resolution=40, bound=0.5)
  voxel_volume = (1.0 / 40)**3
  # Voxel-counting error of a sphere: well under 2 % at 32 voxels per diameter.
  assert grid.sum() * voxel_volume == pytest.approx(4 / 3 * np.pi * 0.4**3, rel=0.02)
  assert metrics.iou(grid, grid) == 1.0
  assert metrics.iou(grid, np.roll(grid, 40 // 2 + 16, axis=0) & ~grid) == 0.0
  assert metrics.floater_fraction(grid, grid) == 0.0


def test_object_saturation_ignores_the_background():
  rgb = np.ones((4, 4, 3))
  rgb[:2] = (1.0, 0.0, 0.0)  # saturation 1 on the object, 0 on the white background
  alpha = np.zeros((4, 4))
  alpha[:2] = 1.0
  assert am.object_saturation(rgb, alpha) == 1.0
  assert metrics.saturation(rgb) == 0.5
  assert np.isnan(am.object_saturation(rgb, np.zeros((4, 4))))


def test_mean_and_spread_over_seeds():
  assert am.mean_and_spread([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(np.sqrt(2)), 2)
  assert am.mean_and_spread([5.0]) == (5.0, 0.0, 1)
  mean, spread, count = am.mean_and_spread([float("nan")])
  assert np.isnan(mean) and np.isnan(spread) and count == 0


def test_janus_silhouette_score_of_the_true_object_and_of_a_front_seen_from_the_side():
  front = np.zeros((2, 20, 20))
  front[:, 4:16, 8:12] = 1.0  # a narrow front outline: 48 pixels per view
  side = np.zeros((2, 20, 20))
  side[:, 4:16, 4:16] = 1.0  # a wide side outline: 144 pixels, containing the front's
  # The true object: its side matches the side (IoU 1) and the front by 48/144.
  assert am.janus_silhouette_score(side, front, side) == pytest.approx(48 / 144 - 1)
  # A Janus object shows the front outline from the side.
  assert am.janus_silhouette_score(front, front, side) == pytest.approx(1 - 48 / 144)
  # Half-way (a 96-pixel outline between the two) lies in between.
  middle = np.zeros((2, 20, 20))
  middle[:, 4:16, 6:14] = 1.0
  assert am.janus_silhouette_score(middle, front, side) == pytest.approx(48 / 96 - 96 / 144)


def test_albedo_brightness_ratio_is_one_for_the_truth_and_the_shading_factor_when_painted():
  rng = np.random.default_rng(0)
  albedo = rng.uniform(0.2, 0.9, (2, 6, 6, 3))
  mask = rng.uniform(size=(2, 6, 6)) > 0.3
  assert am.albedo_brightness_ratio(albedo, albedo, mask) == pytest.approx(1.0)
  # Uniformly darkened by a shading factor of 0.55 (luminance is linear in rgb).
  assert am.albedo_brightness_ratio(0.55 * albedo, albedo, mask) == pytest.approx(0.55)
  assert np.isnan(am.albedo_brightness_ratio(albedo, albedo, np.zeros((2, 6, 6), bool)))


def test_score_mesh_of_the_true_surface_and_of_a_shrunk_copy():
  """ablations.score_mesh: the true object's own surface scores IoU ~1; a copy shrunk about
  the centre lies inside the true silhouettes, so its IoU is its silhouette area over the
  true one."""
  from dfjax.eval import ablations  # pylint: disable=g-import-not-at-top
  from dfjax.export import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  obj = toy_objects.yellow_duck()
  true = mesh_lib.extract_mesh(lambda p: 1.0 - obj.sdf(p), obj.albedo, resolution=24,
                               bound=0.6, threshold=1.0)  # the level set sdf = 0
  scores = ablations.score_mesh(true, "yellow_duck")
  assert scores["mask_iou"] > 0.95 and scores["psnr"] > 20.0, scores
  centre = 0.5 * (true.vertices.min(0) + true.vertices.max(0))
  shrunk = dataclasses.replace(true, vertices=centre + 0.7 * (true.vertices - centre))
  area_ratio = 0.7**2  # orthographic estimate; perspective at 1.45 m moves it little
  iou = ablations.score_mesh(shrunk, "yellow_duck")["mask_iou"]
  assert abs(iou - area_ratio) < 0.08, iou
