"""Tests of the toy world: SDFs against closed forms and brute force, banks, ground truth."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import spatial

from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib
from dfjax.scene import cameras
from dfjax.toy import banks as toy_banks
from dfjax.toy import objects as toy_objects
from dfjax.toy import sdf as toy_sdf
from dfjax.toy import truth as toy_truth

# A dense grid over the cube [-0.6, 0.6]^3 around the objects, spacing 1/60 world units.
_GRID = np.stack(np.meshgrid(*[np.linspace(-0.6, 0.6, 73)] * 3,
                             indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
_GRID_SPACING = 1.2 / 72


def _random_points(seed, num, scale=0.6):
  return np.random.default_rng(seed).uniform(-scale, scale, (num, 3)).astype(np.float32)


def _evaluate(primitive, points, **shape):
  """A primitive's SDF at points [N, 3] (numpy), jitted: one compile instead of many ops."""
  function = jax.jit(lambda p: primitive(toy_sdf.coordinates(p), **shape))
  return np.asarray(function(jnp.asarray(points, jnp.float32)))


# ---------------------------------------------------------------------------------------------
# Primitives against closed forms and brute-force distances.


def _brute_force_sdf(points, surface, inside):
  """Distance to a dense sample of a shape's surface, negative where `inside` holds."""
  distance, _ = spatial.cKDTree(surface).query(points)
  return np.where(inside, -distance, distance)


def test_sphere_and_box_match_closed_forms():
  points = _random_points(0, 5000, scale=1.0)
  center, radius = np.array([0.1, -0.2, 0.05]), 0.3
  np.testing.assert_allclose(_evaluate(toy_sdf.sphere, points, center=center, radius=radius),
                             np.linalg.norm(points - center, axis=-1) - radius, atol=1e-6)
  # Box: outside, the distance to the nearest point of the box (clamping); inside, the
  # negated distance to the nearest face.
  low, high = np.array([-0.3, -0.1, 0.0]), np.array([0.1, 0.3, 0.2])
  center, half = (low + high) / 2, (high - low) / 2
  outside = np.linalg.norm(points - np.clip(points, low, high), axis=-1)
  inside = np.minimum(points - low, high - points).min(axis=-1)
  expected = np.where(outside > 0, outside, -inside)
  np.testing.assert_allclose(_evaluate(toy_sdf.box, points, center=center, half_size=half),
                             expected, atol=1e-6)


def test_capsule_and_torus_match_closed_forms():
  points = _random_points(1, 5000, scale=0.8)
  start, end, radius = np.array([-0.2, 0.1, 0.0]), np.array([0.3, -0.1, 0.25]), 0.07
  segment = start + np.linspace(0, 1, 20001)[:, None] * (end - start)
  expected = spatial.cKDTree(segment).query(points)[0] - radius
  np.testing.assert_allclose(_evaluate(toy_sdf.capsule, points, start=start, end=end,
                                       radius=radius), expected, atol=2e-5)
  # A torus around a tilted axis equals the textbook z-axis torus in rotated coordinates.
  axis = np.array([1.0, 2.0, 2.0]) / 3.0
  basis_u = np.cross(axis, [1.0, 0.0, 0.0])
  basis_u /= np.linalg.norm(basis_u)
  basis_v = np.cross(axis, basis_u)
  center = np.array([0.05, 0.0, -0.1])
  local = (points - center) @ np.stack([basis_u, basis_v, axis], -1)
  expected = np.hypot(np.hypot(local[:, 0], local[:, 1]) - 0.3, local[:, 2]) - 0.08
  np.testing.assert_allclose(
      _evaluate(toy_sdf.torus, points, center=center, axis=axis * 3.0, major_radius=0.3,
                minor_radius=0.08), expected, atol=1e-5)


def test_capped_cone_matches_brute_force():
  """A tilted truncated cone against the distance to a dense sample of its surface."""
  start, end, start_radius, end_radius = np.array([-0.2, 0.1, -0.1]), np.array(
      [0.25, -0.05, 0.2]), 0.15, 0.04
  length = np.linalg.norm(end - start)
  axis = (end - start) / length
  basis_u = np.cross(axis, [0.0, 0.0, 1.0])
  basis_u /= np.linalg.norm(basis_u)
  basis_v = np.cross(axis, basis_u)
  angle = np.linspace(0, 2 * np.pi, 300, endpoint=False)
  ring = np.cos(angle)[:, None] * basis_u + np.sin(angle)[:, None] * basis_v  # [300, 3]
  h = np.linspace(0, 1, 200)[:, None, None]
  side = start + h * (end - start) + (start_radius + h * (end_radius - start_radius)) * ring
  caps = [c + np.linspace(0, r, 50)[:, None, None] * ring for c, r in
          ((start, start_radius), (end, end_radius))]
  surface = np.concatenate([side.reshape(-1, 3)] + [c.reshape(-1, 3) for c in caps])
  points = (start + end) / 2 + _random_points(2, 4000, scale=0.3)
  height = (points - start) @ axis
  radial = np.linalg.norm(points - start - height[:, None] * axis, axis=-1)
  inside = (height >= 0) & (height <= length) & (
      radial <= start_radius + (end_radius - start_radius) * height / length)
  expected = _brute_force_sdf(points, surface, inside)
  # The surface sample's spacing (0.15 * 2 pi / 300 = 0.0031 around, 0.0027 along) bounds
  # the brute-force distance's error.
  np.testing.assert_allclose(
      _evaluate(toy_sdf.capped_cone, points, start=start, end=end, start_radius=start_radius,
                end_radius=end_radius), expected, atol=3e-3)
  assert 0.05 < inside.mean() < 0.5  # Both signs are exercised.


def test_spherical_cap_matches_brute_force():
  center, radius, base = np.array([0.05, -0.05, -0.05]), 0.36, 0.05
  cut = base - center[2]
  rim = np.sqrt(radius**2 - cut**2)
  around = np.linspace(0, 2 * np.pi, 400, endpoint=False)
  polar = np.linspace(0, np.arccos(cut / radius), 300)[:, None]
  sphere_part = np.stack([radius * np.sin(polar) * np.cos(around),
                          radius * np.sin(polar) * np.sin(around),
                          radius * np.cos(polar) * np.ones_like(around)], -1)
  disc_radius = np.linspace(0, rim, 150)[:, None]
  disc = np.stack([disc_radius * np.cos(around), disc_radius * np.sin(around),
                   cut * np.ones((150, 400))], -1)
  surface = center + np.concatenate([sphere_part.reshape(-1, 3), disc.reshape(-1, 3)])
  points = center + _random_points(7, 4000, scale=0.5) + [0.0, 0.0, 0.1]
  inside = (np.linalg.norm(points - center, axis=-1) < radius) & (points[:, 2] > base)
  expected = _brute_force_sdf(points, surface, inside)
  # The sample spacing (0.36 * 2 pi / 400 = 0.0057 around the rim) bounds the reference's error.
  np.testing.assert_allclose(
      _evaluate(toy_sdf.spherical_cap, points, center=center, radius=radius, base_height=base),
      expected, atol=3e-3)
  assert 0.05 < inside.mean() < 0.5


def test_convex_polygon_matches_brute_force():
  vertices = np.array([(0.32, 0.02), (0.0, 0.33), (-0.32, 0.02)])
  t = np.linspace(0, 1, 5000)[:, None]
  boundary = np.concatenate([a + t * (b - a) for a, b in zip(vertices, np.roll(vertices, -1, 0))])
  points = np.random.default_rng(3).uniform(-0.5, 0.5, (3000, 2)).astype(np.float32)
  edges = np.roll(vertices, -1, 0) - vertices
  cross = edges[:, 0] * (points[:, None, 1] - vertices[:, 1]) - edges[:, 1] * (
      points[:, None, 0] - vertices[:, 0])
  expected = _brute_force_sdf(points, boundary, np.all(cross >= 0, axis=-1))
  polygon = jax.jit(lambda q: toy_sdf.convex_polygon_2d(q[:, 0], q[:, 1], vertices=vertices))
  np.testing.assert_allclose(polygon(jnp.asarray(points)), expected, atol=2e-4)


def test_smooth_union_is_a_lower_bound_and_exact_away_from_the_seam():
  points = _random_points(4, 4000)
  a = _evaluate(toy_sdf.sphere, points, center=(-0.1, 0.0, 0.0), radius=0.2)
  b = _evaluate(toy_sdf.sphere, points, center=(0.2, 0.0, 0.0), radius=0.15)
  blended = np.asarray(jax.jit(lambda a, b: toy_sdf.smooth_union(a, b, blend=0.05))(a, b))
  hard = np.minimum(a, b)
  assert np.all(blended <= hard + 1e-7)
  far_from_seam = np.abs(a - b) >= 0.05
  np.testing.assert_allclose(blended[far_from_seam], hard[far_from_seam], atol=1e-7)
  assert np.max(hard - blended) == pytest.approx(0.05 / 4, rel=0.05)  # h = 1 on the seam.


# ---------------------------------------------------------------------------------------------
# The objects.


_FD_STEP = 1e-3


@pytest.fixture(scope="module", params=range(len(toy_objects.OBJECTS)),
                ids=[c.__name__ for c in toy_objects.OBJECTS])
def evaluated_object(request):
  """An object, its SDF and albedo on the grid, and its SDF around random points.

  One jitted evaluation per object keeps the compile time down. Around each random point the
  SDF is also taken at +-_FD_STEP along each axis, for central-difference gradients.
  """
  obj = toy_objects.OBJECTS[request.param]()
  points = _random_points(5, 5000)
  offsets = np.concatenate([[np.zeros(3)], _FD_STEP * np.eye(3), -_FD_STEP * np.eye(3)])
  around = (points[None] + offsets[:, None]).astype(np.float32)  # [7, P, 3]
  features = np.asarray(obj.front_feature.points if obj.front_feature else np.zeros((1, 3)),
                        np.float32)
  # One call of each function on all the points it needs.
  sdf_points = np.concatenate([_GRID, around.reshape(-1, 3), features])
  albedo_points = np.concatenate([_GRID, points, features])

  @jax.jit
  def evaluate(sdf_points, albedo_points, points):
    parts = jnp.stack(obj.part_distances(toy_sdf.coordinates(points)), -1)
    return (obj.sdf(sdf_points), toy_objects.occupancy(obj, sdf_points), obj.albedo(albedo_points),
            parts)

  sdf, occupancy, albedo, parts = (np.asarray(v) for v in evaluate(sdf_points, albedo_points,
                                                                   points))
  grid, num_around = len(_GRID), around.shape[0] * around.shape[1]
  values = dict(grid_sdf=sdf[:grid], occupancy=occupancy[:grid],
                around=sdf[grid:grid + num_around].reshape(7, -1), around_points=around,
                feature_sdf=sdf[grid + num_around:], grid_albedo=albedo[:grid],
                albedo=albedo[grid:grid + len(points)], feature_albedo=albedo[grid + len(points):],
                parts=parts)
  return obj, points, values


def test_objects_are_captioned_nonempty_and_inside_the_radius(evaluated_object):
  obj, _, values = evaluated_object
  sdf = values["grid_sdf"]
  assert obj.caption == obj.caption.lower() and obj.caption.startswith("a ")
  inside = _GRID[sdf < 0]
  assert len(inside) > 1000  # At least 0.0046 cubic world units.
  assert np.linalg.norm(inside, axis=-1).max() < toy_objects.OBJECT_RADIUS
  # Every point of the cube within half a grid diagonal of a grid point g lies outside when
  # sdf(g) exceeds that (the SDF is 1-Lipschitz): nothing hides between the grid points.
  half_diagonal = np.sqrt(3) / 2 * _GRID_SPACING
  outer = np.linalg.norm(_GRID, axis=-1) > toy_objects.OBJECT_RADIUS + half_diagonal
  assert np.all(sdf[outer] > half_diagonal)
  origin = len(_GRID) // 2
  assert not np.any(_GRID[origin]) and sdf[origin] < 0  # The origin is inside.
  np.testing.assert_array_equal(values["occupancy"], sdf < 0)


def test_object_sdfs_are_lipschitz_and_distances_outside(evaluated_object):
  """|f(p) - f(q)| <= |p - q|, |grad f| = 1 mostly, and outside f is the distance to the solid.

  D, the distance to the nearest grid point inside the object, over-estimates the true
  distance by at most a grid diagonal where the solid near its nearest point holds a grid
  point (not at thin features or sharp tips). Any 1-Lipschitz function negative inside
  satisfies f <= D; an exact SDF also satisfies f >= D - a diagonal there. Smooth unions
  and subtractions only under-estimate, near their seams, so the second bound is asked of 95%
  of the points.
  """
  _, points, values = evaluated_object
  around = values["around"].astype(np.float64)
  around_points = values["around_points"].astype(np.float64)
  steps = np.linalg.norm(around_points[1:] - around_points[:1], axis=-1)
  # float32 rounding of values up to 1 is 6e-8, i.e. 6e-5 of a difference quotient.
  quotients = np.abs(around[1:] - around[:1]) / steps
  assert quotients.max() < 1.0 + 1e-4
  gradient_norm = np.linalg.norm((around[1:4] - around[4:7]) / (2 * _FD_STEP), axis=0)
  # Exact (|grad| = 1) except in the smooth unions' seams, which are wide for the duck (blend
  # 0.08 between body, tail and head: a third of the cube around it), and near creases.
  assert np.mean(np.abs(gradient_norm - 1.0) < 1e-3) > 0.6
  outside = around[0] > 0.02
  nearest_inside, _ = spatial.cKDTree(_GRID[values["grid_sdf"] < 0]).query(points[outside])
  assert np.all(around[0][outside] <= nearest_inside + 1e-5)
  diagonal = np.sqrt(3) * _GRID_SPACING
  assert np.mean(around[0][outside] >= nearest_inside - diagonal) > 0.95


def test_albedo_is_the_nearest_parts_color(evaluated_object):
  obj, _, values = evaluated_object
  expected = np.asarray(obj.part_colors, np.float32)[np.argmin(values["parts"], axis=-1)]
  np.testing.assert_array_equal(values["albedo"], expected)
  assert values["albedo"].min() >= 0 and values["albedo"].max() <= 1


def test_front_feature_sits_on_the_front_and_nowhere_else(evaluated_object):
  obj, _, values = evaluated_object
  feature = obj.front_feature
  if feature is None:
    assert obj.caption in ("a red mug with a handle", "a blue chair", "a green tree",
                           "a red mushroom with white spots")
    return
  points = np.asarray(feature.points, np.float32)
  assert np.all(np.abs(values["feature_sdf"]) < 1e-4)  # On the surface.
  assert np.all(points[:, 0] > 0.15) and np.all(np.abs(points[:, 1]) < 0.1)
  np.testing.assert_allclose(values["feature_albedo"],
                             np.broadcast_to(feature.color, points.shape))
  # The feature's colour covers none of the surface behind the plane x = 0.
  back = (np.abs(values["grid_sdf"]) < _GRID_SPACING) & (_GRID[:, 0] < 0.0)
  assert back.sum() > 500
  assert not np.any(np.all(np.isclose(values["grid_albedo"][back], feature.color), axis=-1))


def test_three_objects_have_a_front_feature():
  assert sum(c().front_feature is not None for c in toy_objects.OBJECTS) == 3


# ---------------------------------------------------------------------------------------------
# Rendering: the density field and the sphere-traced ground truth.


# Shared instances: render_ground_truth and make_bank reuse their compiled functions for the
# same ToyObject instances.
_BALL = toy_objects.ToyObject(
    caption="a ball",
    part_distances=lambda xyz: (toy_sdf.sphere(xyz, center=(0, 0, 0), radius=0.4),),
    part_colors=((1.0, 0.0, 0.0),))
_SNOWMAN, _CHAIR = toy_objects.snowman(), toy_objects.blue_chair()
_BANK_RESOLUTION = 24


def test_field_is_opaque_within_a_hundredth_of_the_surface():
  """Optical depth along a ray entering a ball head-on vs the closed form in the comment."""
  field_fn = toy_objects.field_fn_for(_BALL)
  t = np.linspace(0.0, 0.65, 65001)  # From x = 1 inwards; the surface is at t = 0.6.
  points = np.stack([1.0 - t, 0 * t, 0 * t], -1)
  density, albedo = (np.asarray(v, np.float64) for v in jax.jit(field_fn)(
      jnp.asarray(points, jnp.float32), None))
  optical_depth = np.concatenate([[0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(t))])
  for depth_inside, expected_transmittance in ((0.0, 0.5), (0.005, 0.076), (0.01, 0.0067)):
    transmittance = np.exp(-np.interp(0.6 + depth_inside, t, optical_depth))
    assert transmittance == pytest.approx(expected_transmittance, rel=0.03)
  assert float(density[-1]) == pytest.approx(toy_objects.DENSITY_SCALE)
  np.testing.assert_array_equal(albedo[-1], [1.0, 0.0, 0.0])


_camera_from_angles = jax.jit(cameras.camera_from_angles, static_argnames=("width", "height"))


def _camera(azimuth_deg, elevation_deg):
  """A camera at distance 1.4 with a 50 degree field of view, _BANK_RESOLUTION pixels."""
  return _camera_from_angles(azimuth_deg=azimuth_deg, elevation_deg=elevation_deg,
                             distance=1.4, fov_deg=50.0, width=_BANK_RESOLUTION,
                             height=_BANK_RESOLUTION)


def test_ground_truth_of_a_ball_matches_ray_sphere_intersection():
  camera = _camera(30.0, 20.0)
  truth = jax.tree.map(np.asarray, toy_truth.render_ground_truth(_BALL, camera))
  rays = jax.tree.map(np.asarray, jax.jit(cameras.generate_rays)(camera))
  # Ray-sphere intersection in float64: |o + t d| = 0.4.
  b = np.sum(rays.origins * rays.directions, -1, dtype=np.float64)
  discriminant = b**2 - (np.sum(rays.origins.astype(np.float64)**2, -1) - 0.4**2)
  hit = discriminant > 0
  near = -b - np.sqrt(np.maximum(discriminant, 0))
  np.testing.assert_array_equal(truth.alpha, hit.astype(np.float32))
  # Tracing stops within `tolerance` (1e-4) of the surface, which is 1e-4 / cos(incidence)
  # along a ray meeting it at an angle.
  normals = (rays.origins + near[..., None] * rays.directions)[hit] / 0.4
  cosine = np.abs(np.sum(normals * rays.directions[hit], axis=-1))
  assert np.all(np.abs(truth.depth[hit] - near[hit]) <= 1e-4 / cosine + 2e-5)
  assert np.all(np.linalg.norm(truth.normals[hit] - normals, axis=-1) <= 1e-3 / cosine)
  np.testing.assert_allclose(truth.rgb[hit], np.broadcast_to([1, 0, 0], (hit.sum(), 3)))
  np.testing.assert_array_equal(truth.rgb[~hit], 1.0)
  assert 50 < hit.sum() < _BANK_RESOLUTION**2 - 50


def _orange_pixels(rgb):
  """Pixels within 0.12 of the nose's and beak's orange, in every channel. [H, W, 3] -> int."""
  orange = np.asarray(toy_objects._ORANGE)
  return int(np.sum(np.all(np.abs(np.asarray(rgb) - orange) < 0.12, axis=-1)))


def test_ground_truth_follows_the_world_convention():
  """Azimuth 0 sees the snowman's nose, azimuth 180 does not."""
  front = toy_truth.render_ground_truth(_SNOWMAN, _camera(0.0, 10.0))
  back = toy_truth.render_ground_truth(_SNOWMAN, _camera(180.0, 10.0))
  assert _orange_pixels(front.rgb) >= 2 and _orange_pixels(back.rgb) == 0
  nose = _SNOWMAN.front_feature.color
  assert float(toy_objects.color_fraction(front.rgb, front.alpha, nose)) > 0.005
  assert float(toy_objects.color_fraction(back.rgb, back.alpha, nose)) == 0.0
  # The nose points at the camera, so it is seen in the central columns.
  orange = np.all(np.abs(np.asarray(front.rgb) - np.asarray(toy_objects._ORANGE)) < 0.12, axis=-1)
  assert np.abs(np.nonzero(orange)[1].mean() - (_BANK_RESOLUTION - 1) / 2) < 1
  # The mug's handle (+y) is on the right of the image from the front (image right = +y).


# ---------------------------------------------------------------------------------------------
# Banks.

_BANK_OBJECTS = (_SNOWMAN, _CHAIR)
_BANK_VIEWS = 12


@pytest.fixture(scope="module")
def small_bank():
  return toy_banks.make_bank(_BANK_OBJECTS, resolution=_BANK_RESOLUTION, num_views=_BANK_VIEWS,
                             seed=3)


def test_bank_has_the_documented_format(small_bank, tmp_path):
  n, s = len(_BANK_OBJECTS) * _BANK_VIEWS, _BANK_RESOLUTION
  assert small_bank["images"].dtype == np.uint8 and small_bank["images"].shape == (n, s, s, 3)
  assert small_bank["c2w"].dtype == np.float32 and small_bank["c2w"].shape == (n, 4, 4)
  assert small_bank["fov_deg"].dtype == np.float32 and small_bank["fov_deg"].shape == (n,)
  assert list(small_bank["prompts"]) == [o.caption for o in _BANK_OBJECTS for _ in
                                         range(_BANK_VIEWS)]
  bank_lib.save_bank(tmp_path / "bank.npz", **small_bank)
  loaded = bank_lib.load_bank(tmp_path / "bank.npz")
  np.testing.assert_array_equal(loaded.images, small_bank["images"])
  ranges = bank_lib.bank_camera_ranges(loaded)
  distance_lo, distance_hi = toy_banks.DISTANCE_RANGE
  fov_lo, fov_hi = toy_banks.FOV_RANGE_DEG
  assert distance_lo <= ranges.distance[0] < ranges.distance[1] <= distance_hi
  assert fov_lo <= ranges.fov_deg[0] < ranges.fov_deg[1] <= fov_hi
  low, high = toy_banks.ELEVATION_RANGE_DEG
  assert low - 1e-3 <= ranges.elevation_deg[0] < ranges.elevation_deg[1] <= high + 1e-3


def test_bank_cameras_look_at_the_object(small_bank):
  images = small_bank["images"].astype(np.int32)
  centre = images[:, _BANK_RESOLUTION // 2 - 1:_BANK_RESOLUTION // 2 + 1,
                  _BANK_RESOLUTION // 2 - 1:_BANK_RESOLUTION // 2 + 1]
  corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
  assert np.all(corners == 255)  # Background only.
  assert np.all(np.abs(centre - 255).max(axis=(1, 2, 3)) > 10)  # The object covers it.
  # Camera positions follow the world convention: the c2w looks at the origin, up is +z-ish.
  c2w = small_bank["c2w"]
  forward = -c2w[:, :3, 2]
  np.testing.assert_allclose(forward, -c2w[:, :3, 3] / np.linalg.norm(
      c2w[:, :3, 3], axis=-1, keepdims=True), atol=1e-5)
  assert np.all(c2w[:, 2, 1] > 0)  # Image up points upwards in the world.


def test_bank_images_match_the_sphere_traced_ground_truth(small_bank):
  """The snowman's bank images are the snowman seen through their c2w and fov.

  Volume rendering (the bank) against sphere tracing (the ground truth).
  """
  for i in range(0, _BANK_VIEWS, 2):
    camera = cameras.Camera(
        c2w=jnp.asarray(small_bank["c2w"][i]),
        focal=cameras.focal_from_fov(small_bank["fov_deg"][i], _BANK_RESOLUTION),
        width=_BANK_RESOLUTION, height=_BANK_RESOLUTION)
    truth = toy_truth.render_ground_truth(_SNOWMAN, camera)
    difference = np.abs(small_bank["images"][i] / 255.0 - np.asarray(truth.rgb))
    # Silhouette pixels differ (the renderer anti-aliases partially, the truth does not).
    assert difference.mean() < 0.03, i
    assert np.mean(difference.max(axis=-1) > 0.2) < 0.06, i


def test_bank_snowman_shows_its_nose_from_the_front_only(small_bank):
  azimuth, elevation, _ = (np.asarray(a) for a in cameras.camera_angles(small_bank["c2w"]))
  snowman = np.arange(len(azimuth)) < _BANK_VIEWS
  front = snowman & (np.abs(azimuth) < 60)
  # From above the nose pokes out past the head: "back" is low views from behind.
  back = snowman & (np.abs(azimuth) > 150) & (elevation < 15)
  assert front.any() and back.any()
  for i in np.nonzero(front)[0]:
    assert _orange_pixels(small_bank["images"][i] / 255.0) >= 1, i
  for i in np.nonzero(back)[0]:
    assert _orange_pixels(small_bank["images"][i] / 255.0) == 0, i


@pytest.mark.parametrize("front_biased", [False, True])
def test_bank_cameras_cover_the_documented_ranges(front_biased):
  views = toy_banks.bank_cameras(np.random.default_rng(0), num_views=40, front_biased=front_biased)
  bucket = np.asarray(cameras.view_bucket(views.azimuth_deg, np.zeros(40)))
  front_fraction = np.mean(bucket == cameras.FRONT)
  if front_biased:
    assert front_fraction == pytest.approx(toy_banks.FRONT_BIASED_FRACTION)
  else:
    assert front_fraction == pytest.approx(0.25, abs=1 / 40)
  assert np.all((views.azimuth_deg >= -180) & (views.azimuth_deg < 180))
  # Stratified elevations: exactly one in each of 40 equal slices of the range.
  low, high = toy_banks.ELEVATION_RANGE_DEG
  slices = np.floor((views.elevation_deg - low) / (high - low) * 40).astype(int)
  np.testing.assert_array_equal(np.sort(slices), np.arange(40))
  for values, (lo, hi) in ((views.distance, toy_banks.DISTANCE_RANGE),
                           (views.fov_deg, toy_banks.FOV_RANGE_DEG)):
    assert np.all((values >= lo) & (values <= hi))


def test_make_bank_rejects_bad_arguments():
  with pytest.raises(UserError, match="shading"):
    toy_banks.make_bank([toy_objects.snowman()], resolution=16, num_views=2, shading="phong")
  with pytest.raises(UserError, match="resolution"):
    toy_banks.make_bank([toy_objects.snowman()], resolution=4, num_views=2)
  with pytest.raises(UserError, match="views"):
    toy_banks.make_bank([toy_objects.snowman()], resolution=16, num_views=0)
  with pytest.raises(UserError, match="object"):
    toy_banks.make_bank([], resolution=16, num_views=2)


def test_lambertian_bank_is_never_brighter_than_the_albedo(small_bank):
  """ambient + diffuse * cos <= 1, so lighting only darkens; and it does darken.

  The same objects, resolution and seed give the same cameras as `small_bank`.
  """
  lit_bank = toy_banks.make_bank(_BANK_OBJECTS, resolution=_BANK_RESOLUTION,
                                 num_views=_BANK_VIEWS, seed=3, shading="lambertian")
  np.testing.assert_array_equal(lit_bank["c2w"], small_bank["c2w"])
  albedo, lit = small_bank["images"].astype(np.int32), lit_bank["images"].astype(np.int32)
  assert np.all(lit <= albedo + 1)
  object_pixels = np.any(albedo < 250, axis=-1)
  assert np.mean(lit[object_pixels]) < 0.9 * np.mean(albedo[object_pixels])


def test_lambertian_textureless_bank_whitens_every_other_view_only(small_bank):
  """Even views equal the lambertian bank's; odd views are lit white: grey, R = G = B."""
  kwargs = dict(resolution=_BANK_RESOLUTION, num_views=_BANK_VIEWS, seed=3)
  lit = toy_banks.make_bank(_BANK_OBJECTS, shading="lambertian", **kwargs)
  mixed = toy_banks.make_bank(_BANK_OBJECTS, shading="lambertian_textureless", **kwargs)
  np.testing.assert_array_equal(mixed["c2w"], small_bank["c2w"])
  odd = np.arange(len(mixed["images"])) % _BANK_VIEWS % 2 == 1
  np.testing.assert_array_equal(mixed["images"][~odd], lit["images"][~odd])
  textureless = mixed["images"][odd].astype(np.int32)
  assert np.max(np.ptp(textureless, axis=-1)) <= 1  # grey: no colour left
  object_pixels = np.any(small_bank["images"][odd] < 250, axis=-1)
  # Lit white is brighter than lit albedo wherever the albedo is not white.
  assert np.mean(textureless[object_pixels]) > np.mean(lit["images"][odd][object_pixels])


# ---------------------------------------------------------------------------------------------
# The cache.


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv("DFJAX_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert toy_banks.cache_dir() == tmp_path / "xdg" / "dfjax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert toy_banks.cache_dir() == tmp_path / "home" / ".cache" / "dfjax"
  monkeypatch.setenv("DFJAX_CACHE_DIR", str(tmp_path / "mine"))
  assert toy_banks.cache_dir() == tmp_path / "mine"


def test_bank_file_names_encode_every_parameter():
  base = dict(resolution=64, views_per_object=96, front_biased=False, shading="albedo", seed=0)
  changed = [dict(base, resolution=32), dict(base, views_per_object=8),
             dict(base, front_biased=True), dict(base, shading="lambertian"), dict(base, seed=1)]
  names = {toy_banks.toy_bank_path(**kwargs).name for kwargs in [base] + changed}
  assert len(names) == 6
  assert all(toy_banks.TOY_BANK_VERSION in name for name in names)


def test_get_toy_bank_generates_once_then_reuses_the_file(monkeypatch, tmp_path, capsys):
  """Rendering is replaced by a stub that counts its calls (make_bank is tested above)."""
  monkeypatch.setenv("DFJAX_CACHE_DIR", str(tmp_path))
  calls = []

  def fake_make_bank(objects, *, resolution, num_views, **kwargs):
    calls.append(kwargs)
    assert [o.caption for o in objects] == [c().caption for c in toy_objects.OBJECTS]
    n = len(objects) * num_views
    c2w = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    c2w[:, 0, 3] = 1.5
    return dict(images=np.zeros((n, resolution, resolution, 3), np.uint8),
                prompts=np.repeat([o.caption for o in objects], num_views), c2w=c2w,
                fov_deg=np.full(n, 50.0, np.float32))

  monkeypatch.setattr(toy_banks, "make_bank", fake_make_bank)
  kwargs = dict(resolution=8, views_per_object=2, front_biased=True, shading="lambertian",
                seed=5)
  path = toy_banks.get_toy_bank(**kwargs)
  assert path == toy_banks.toy_bank_path(**kwargs) and path.parent.parent == tmp_path
  assert calls == [dict(shading="lambertian", front_biased=True, seed=5)]
  printed = capsys.readouterr().out
  assert printed.startswith("Generating the toy image bank") and printed.count("\n") == 1
  assert len(bank_lib.load_bank(path).images) == 2 * len(toy_objects.OBJECTS)
  modified = os.stat(path).st_mtime_ns
  assert toy_banks.get_toy_bank(**kwargs) == path
  assert len(calls) == 1 and os.stat(path).st_mtime_ns == modified
  assert capsys.readouterr().out == ""
  assert os.listdir(path.parent) == [path.name]  # No temporary file left behind.
