"""Cameras: the paper's view sampling, pinhole rays and view buckets.

World convention (README, "World and camera convention"): right-handed, +z up. A camera at
azimuth a, elevation e and distance r sits at r·(cos e cos a, cos e sin a, sin e) and looks at
the origin; azimuth 0 (camera on +x) sees the front of an object. Camera-to-world matrices use
OpenGL camera axes: the camera looks along -z, +y is image up, +x is image right. Image row 0
is the top, pixel centres sit at +0.5 and the pinhole has a vertical field of view.

Sampling follows DreamFusion (Poole et al., arXiv:2209.14988), App. A.2 "Camera and light
augmentations"; view buckets follow §3.2 "view-dependent prompts".

Data flow: the first step of every view: here -> scene.render (rays), train.model (sampled
cameras), priors (view buckets for the prompts).
"""
from __future__ import annotations

import math

from flax import struct
import jax
import jax.numpy as jnp

# View buckets, in the order of the view-dependent prompt suffixes (§3.2).
FRONT, SIDE, BACK, OVERHEAD = 0, 1, 2, 3
VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")
# Elevation above which a view is "overhead" (§3.2), in degrees.
OVERHEAD_ELEVATION_DEG = 60.0


@struct.dataclass
class Camera:
  """A pinhole camera.

  Attributes:
    c2w: [4, 4] camera-to-world matrix with OpenGL camera axes.
    focal: [] focal length in pixels (the same for both image axes).
    width, height: image size in pixels (static).
  """
  c2w: jax.Array
  focal: jax.Array
  width: int = struct.field(pytree_node=False)
  height: int = struct.field(pytree_node=False)

  @property
  def position(self) -> jax.Array:
    """[3] camera centre in world coordinates."""
    return self.c2w[:3, 3]


@struct.dataclass
class CameraSample:
  """A camera drawn by `sample_camera`, with the nominal angles it was drawn at.

  Attributes:
    camera: the jittered camera.
    azimuth_deg, elevation_deg, distance: [] nominal spherical position before jitter; the
      view-dependent prompt is chosen from these, as in the paper.
  """
  camera: Camera
  azimuth_deg: jax.Array
  elevation_deg: jax.Array
  distance: jax.Array


@struct.dataclass
class Rays:
  """Camera rays, any leading shape `[...]`.

  Attributes:
    origins: [..., 3] ray origins (the camera centre).
    directions: [..., 3] unit ray directions.
    radii: [..., 1] Mip-NeRF cone radius per unit distance along the ray (Barron et al. 2021,
      §3: the pixel footprint scaled by 2/sqrt(12) so that the cone's variance matches the
      pixel's).
  """
  origins: jax.Array
  directions: jax.Array
  radii: jax.Array


def _normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  # eps keeps the zero vector finite (it never occurs for valid cameras).
  return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps))


def spherical_to_position(azimuth_deg, elevation_deg, distance) -> jax.Array:
  """Position r·(cos e cos a, cos e sin a, sin e) of the world convention.

  Args:
    azimuth_deg, elevation_deg, distance: [...] arrays (broadcast together).

  Returns:
    [..., 3] positions.
  """
  a = jnp.deg2rad(azimuth_deg)
  e = jnp.deg2rad(elevation_deg)
  return jnp.stack(
      [jnp.cos(e) * jnp.cos(a), jnp.cos(e) * jnp.sin(a), jnp.sin(e)], axis=-1
  ) * jnp.asarray(distance)[..., None]


def look_at(position: jax.Array, target: jax.Array, up: jax.Array) -> jax.Array:
  """Camera-to-world matrix of a camera at `position` looking at `target`.

  When `up` is parallel to the viewing direction (a camera straight overhead), image up falls
  back to -x, the limit of a camera approaching the pole from azimuth 0.

  Args:
    position, target, up: [3] world vectors.

  Returns:
    [4, 4] camera-to-world matrix (OpenGL axes: columns right, up, backward, position).
  """
  position, target, up = (jnp.asarray(v, jnp.float32) for v in (position, target, up))
  forward = _normalize(target - position)
  right = jnp.cross(forward, up)
  fallback = jnp.cross(forward, jnp.array([-1.0, 0.0, 0.0]))
  degenerate = jnp.sum(right * right) < 1e-12
  right = _normalize(jnp.where(degenerate, fallback, right))
  camera_up = jnp.cross(right, forward)
  rotation = jnp.stack([right, camera_up, -forward], axis=-1)
  top = jnp.concatenate([rotation, position[:, None]], axis=-1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 0.0, 1.0]])], axis=0)


def focal_from_fov(fov_deg, height) -> jax.Array:
  """Focal length in pixels of a vertical field of view: 0.5·height / tan(fov/2)."""
  return 0.5 * height / jnp.tan(0.5 * jnp.deg2rad(fov_deg))


def fov_from_focal(focal, height) -> jax.Array:
  """Vertical field of view in degrees of a focal length in pixels."""
  return jnp.rad2deg(2.0 * jnp.arctan(0.5 * height / focal))


def camera_from_angles(*, azimuth_deg, elevation_deg, distance, fov_deg, width: int,
                       height: int, target=(0.0, 0.0, 0.0)) -> Camera:
  """A camera on the viewing sphere looking at `target`, world up +z."""
  position = spherical_to_position(azimuth_deg, elevation_deg, distance)
  c2w = look_at(position + jnp.asarray(target, jnp.float32), target, jnp.array([0.0, 0, 1]))
  return Camera(c2w=c2w, focal=jnp.asarray(focal_from_fov(fov_deg, height), jnp.float32),
                width=width, height=height)


def camera_angles(c2w: jax.Array):
  """Spherical coordinates of a camera's position (world convention).

  Args:
    c2w: [..., 4, 4] camera-to-world matrices.

  Returns:
    (azimuth_deg in (-180, 180], elevation_deg in [-90, 90], distance), each [...].
  """
  p = c2w[..., :3, 3]
  distance = jnp.linalg.norm(p, axis=-1)
  azimuth = jnp.rad2deg(jnp.arctan2(p[..., 1], p[..., 0]))
  elevation = jnp.rad2deg(jnp.arcsin(jnp.clip(p[..., 2] / jnp.maximum(distance, 1e-12), -1, 1)))
  return azimuth, elevation, distance


def view_bucket(azimuth_deg, elevation_deg) -> jax.Array:
  """The view-dependent prompt of a camera (DreamFusion §3.2).

  Elevation > 60° is "overhead"; otherwise the azimuth, wrapped to [-180, 180), picks "front"
  for [-45, 45), "back" for [135, 225) and "side" for the rest. Intervals are closed on the
  left, so each boundary angle belongs to exactly one bucket.

  Args:
    azimuth_deg, elevation_deg: [...] angles in degrees.

  Returns:
    [...] int32 bucket: FRONT=0, SIDE=1, BACK=2, OVERHEAD=3.
  """
  quadrant = jnp.floor(jnp.mod(jnp.asarray(azimuth_deg) + 45.0, 360.0) / 90.0).astype(jnp.int32)
  # quadrant 0: front, 1: side (left), 2: back, 3: side (right).
  by_azimuth = jnp.array([FRONT, SIDE, BACK, SIDE], jnp.int32)[jnp.clip(quadrant, 0, 3)]
  return jnp.where(jnp.asarray(elevation_deg) > OVERHEAD_ELEVATION_DEG, OVERHEAD, by_azimuth)


def sample_elevation(key: jax.Array, *, elevation_range_deg, angle_uniform_prob: float = 0.5):
  """Elevation from the paper's mixture (App. A.2).

  With probability `angle_uniform_prob` uniform in angle over the range (which oversamples
  the pole); otherwise uniform in area on the sphere over the part of the range in the upper
  hemisphere, i.e. sin(e) uniform on [sin max(e_min, 0), sin e_max] (the whole range when it
  lies below the horizon).

  Returns:
    [] elevation in degrees.
  """
  lo, hi = elevation_range_deg
  k_choice, k_angle, k_area = jax.random.split(key, 3)
  in_angle = jax.random.uniform(k_angle, (), minval=lo, maxval=hi)
  area_lo = max(lo, 0.0) if hi > 0 else lo
  s = jax.random.uniform(k_area, (), minval=math.sin(math.radians(area_lo)),
                         maxval=math.sin(math.radians(hi)))
  in_area = jnp.rad2deg(jnp.arcsin(s))
  return jnp.where(jax.random.uniform(k_choice) < angle_uniform_prob, in_angle, in_area)


def sample_camera(
    key: jax.Array,
    *,
    width: int,
    height: int,
    elevation_range_deg=(-10.0, 90.0),
    azimuth_range_deg=(0.0, 360.0),
    distance_range=(1.0, 1.5),
    focal_multiplier_range=(0.7, 1.35),
    angle_uniform_prob: float = 0.5,
    position_jitter: float = 0.1,
    look_at_std: float = 0.2,
    up_std: float = 0.02,
) -> CameraSample:
  """Draw a training camera as DreamFusion does (App. A.2).

  Elevation from `sample_elevation`, azimuth uniform, distance uniform, focal length λ·width
  with λ uniform. Then the camera position is jittered by U(-j, j)³, the look-at point is
  drawn from N(0, look_at_std²·I) and the up vector (+z) gets N(0, up_std²·I) noise. The
  paper writes the last two as N(0, 0.2) and N(0, 0.02); we read the numbers as standard
  deviations, as the public reproductions do.

  Returns:
    A CameraSample whose nominal angles are those before jitter.
  """
  k_el, k_az, k_dist, k_focal, k_pos, k_target, k_up = jax.random.split(key, 7)
  elevation = sample_elevation(k_el, elevation_range_deg=elevation_range_deg,
                               angle_uniform_prob=angle_uniform_prob)
  azimuth = jax.random.uniform(k_az, (), minval=azimuth_range_deg[0],
                               maxval=azimuth_range_deg[1])
  distance = jax.random.uniform(k_dist, (), minval=distance_range[0], maxval=distance_range[1])
  focal = width * jax.random.uniform(k_focal, (), minval=focal_multiplier_range[0],
                                     maxval=focal_multiplier_range[1])
  position = spherical_to_position(azimuth, elevation, distance)
  position = position + jax.random.uniform(k_pos, (3,), minval=-position_jitter,
                                           maxval=position_jitter)
  target = look_at_std * jax.random.normal(k_target, (3,))
  up = jnp.array([0.0, 0.0, 1.0]) + up_std * jax.random.normal(k_up, (3,))
  camera = Camera(c2w=look_at(position, target, up), focal=focal, width=width, height=height)
  return CameraSample(camera=camera, azimuth_deg=azimuth, elevation_deg=elevation,
                      distance=distance)


def generate_rays(camera: Camera) -> Rays:
  """Rays through the pixel centres of a pinhole camera (Mip-NeRF, Barron et al. 2021, §3).

  The cone radius of a pixel at unit distance along its unit ray is the pixel's width at unit
  depth (1/focal) divided by the length of the unnormalised direction, times 2/sqrt(12).

  Returns:
    Rays with leading shape [height, width].
  """
  x = jnp.arange(camera.width, dtype=jnp.float32) + 0.5
  y = jnp.arange(camera.height, dtype=jnp.float32) + 0.5
  xx, yy = jnp.meshgrid(x, y, indexing="xy")
  camera_directions = jnp.stack(
      [(xx - 0.5 * camera.width) / camera.focal,
       -(yy - 0.5 * camera.height) / camera.focal,
       -jnp.ones_like(xx)], axis=-1)
  length = jnp.linalg.norm(camera_directions, axis=-1, keepdims=True)
  directions = (camera_directions / length) @ camera.c2w[:3, :3].T
  radii = (1.0 / camera.focal) / length * (2.0 / math.sqrt(12.0))
  origins = jnp.broadcast_to(camera.position, directions.shape)
  return Rays(origins=origins, directions=directions, radii=radii)
