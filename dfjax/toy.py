"""The toy world: procedural, captioned, coloured 3D objects with known geometry.

DreamFusion (arXiv:2209.14988) distils a text-to-image diffusion model into a 3D scene. To run
the whole text-to-3D pipeline on a CPU and know the right answer, dfjax replaces the pretrained
model with a closed-form prior built from a bank of rendered images (`dfjax.priors.bank`). This
module makes that bank: a handful of objects described by signed distance functions (SDFs),
each with a caption ("a snowman with a carrot nose") and a colour for each of its parts,
rendered from many cameras with dfjax's own volume renderer. The same objects are the ground
truth that reconstructions and the ablations (Fig. 6 of the paper) are measured against.

Conventions are dfjax's: +z up, an object's FRONT faces +x (azimuth 0). Every object lies
inside a sphere of radius `OBJECT_RADIUS` around the origin, well inside the renderer's bound
sphere (radius 1.4), so that it fits the bank's cameras (distance 1.3-1.6, field of view
45-55 degrees) with a margin.

SDF primitives follow the standard closed forms (e.g. I. Quilez, "distance functions"); each
is exact (a true Euclidean distance, |grad| = 1). Unions (`min`), intersections and
subtractions (`max`) and the polynomial smooth union keep the functions 1-Lipschitz, so they
never over-estimate the distance to the surface, which is what sphere tracing
(`render_ground_truth`) relies on.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Every toy object lies inside this radius around the origin (checked by the tests).
OBJECT_RADIUS = 0.55

# Part colours (rgb in [0, 1]) that recur across objects.
_BLACK = (0.05, 0.05, 0.05)
_ORANGE = (1.0, 0.5, 0.05)


# ---------------------------------------------------------------------------------------------
# Signed distance primitives. Every function maps points [..., 3] to distances [...], negative
# inside; hyperparameters are keyword-only tuples of floats in world units.


def safe_norm(vectors, *, axis=-1):
  """Euclidean norm whose gradient is finite at the zero vector.

  Args:
    vectors: [..., d].
    axis: the axis to reduce.

  Returns:
    [...]: the norm, clamped below at 1e-10 (a distance error far below any feature size);
      the clamp keeps the gradient finite for points exactly on an axis or at a centre.
  """
  return jnp.sqrt(jnp.maximum(jnp.sum(vectors**2, axis=axis), 1e-20))


def sphere(points, *, center, radius):
  """Exact SDF of a ball. points: [..., 3]; returns [...]."""
  return safe_norm(points - jnp.asarray(center)) - radius


def box(points, *, center, half_size):
  """Exact SDF of an axis-aligned box with half extents `half_size` (3,). Returns [...]."""
  q = jnp.abs(points - jnp.asarray(center)) - jnp.asarray(half_size)
  outside = safe_norm(jnp.maximum(q, 0.0))
  inside = jnp.minimum(jnp.max(q, axis=-1), 0.0)
  # safe_norm's 1e-10 floor would shift the surface for points inside; remove it there.
  return jnp.where(jnp.max(q, axis=-1) > 0.0, outside, inside)


def capsule(points, *, start, end, radius):
  """Exact SDF of the set of points within `radius` of the segment start-end. Returns [...]."""
  start, end = jnp.asarray(start), jnp.asarray(end)
  axis = end - start
  fraction = jnp.clip(jnp.sum((points - start) * axis, -1) / jnp.sum(axis * axis), 0.0, 1.0)
  return safe_norm(points - start - fraction[..., None] * axis) - radius


def convex_polygon_2d(points_2d, *, vertices):
  """Exact SDF of a convex polygon in the plane.

  Args:
    points_2d: [..., 2].
    vertices: (V, 2) counter-clockwise corners; repeated corners are allowed.

  Returns:
    [...]: distance to the nearest edge, negative inside (inside = left of every edge).
  """
  vertices = jnp.asarray(vertices, jnp.float32)
  edges = jnp.roll(vertices, -1, axis=0) - vertices  # [V, 2]
  offsets = points_2d[..., None, :] - vertices  # [..., V, 2]
  # Zero-length edges (repeated corners) have no direction: clamp the division.
  along = jnp.clip(jnp.sum(offsets * edges, -1) / jnp.maximum(jnp.sum(edges**2, -1), 1e-12),
                   0.0, 1.0)
  edge_distance = safe_norm(offsets - along[..., None] * edges)  # [..., V]
  cross = edges[:, 0] * offsets[..., 1] - edges[:, 1] * offsets[..., 0]
  inside = jnp.all(cross >= 0.0, axis=-1)
  distance = jnp.min(edge_distance, axis=-1)
  return jnp.where(inside, -distance, distance)


def capped_cone(points, *, start, end, start_radius, end_radius):
  """Exact SDF of a truncated cone (a cylinder when the radii are equal). Returns [...].

  A solid of revolution: the nearest surface point lies in the meridian half-plane through
  the query point, so the 3D distance is the 2D distance to the cross-section, a trapezoid in
  (height along the axis, distance from the axis) coordinates.
  """
  start, end = jnp.asarray(start), jnp.asarray(end)
  length = float(np.linalg.norm(np.asarray(end) - np.asarray(start)))
  axis = (end - start) / length
  offsets = points - start
  height = jnp.sum(offsets * axis, -1)
  distance_from_axis = safe_norm(offsets - height[..., None] * axis)
  trapezoid = ((0.0, -start_radius), (length, -end_radius), (length, end_radius),
               (0.0, start_radius))
  return convex_polygon_2d(jnp.stack([height, distance_from_axis], -1), vertices=trapezoid)


def cylinder(points, *, start, end, radius):
  """Exact SDF of a solid cylinder between the centres of its two caps. Returns [...]."""
  return capped_cone(points, start=start, end=end, start_radius=radius, end_radius=radius)


def torus(points, *, center, axis, major_radius, minor_radius):
  """Exact SDF of a torus around the unit vector `axis` through `center`. Returns [...]."""
  offsets = points - jnp.asarray(center)
  axis = jnp.asarray(axis) / np.linalg.norm(axis)
  height = jnp.sum(offsets * axis, -1)
  distance_from_axis = safe_norm(offsets - height[..., None] * axis)
  return safe_norm(jnp.stack([distance_from_axis - major_radius, height], -1)) - minor_radius


def extrusion(distance_2d, height, *, half_length):
  """Exact SDF of a 2D shape extruded along a third axis.

  Args:
    distance_2d: [...], the 2D SDF of the cross-section at the query point.
    height: [...], the query point's coordinate along the extrusion axis.
    half_length: the extrusion covers |height| <= half_length.

  Returns:
    [...].
  """
  q = jnp.stack([distance_2d, jnp.abs(height) - half_length], -1)
  outside = safe_norm(jnp.maximum(q, 0.0))
  inside = jnp.minimum(jnp.max(q, axis=-1), 0.0)
  return jnp.where(jnp.max(q, axis=-1) > 0.0, outside, inside)


def smooth_union(distance_a, distance_b, *, blend):
  """Polynomial smooth minimum: a union whose seam is rounded over a width `blend`.

  min(a, b) - h^2 blend / 4 with h = max(blend - |a - b|, 0) / blend. Its gradient is a convex
  combination of the two gradients, so the result stays 1-Lipschitz. a, b: [...]; returns [...].
  """
  h = jnp.maximum(blend - jnp.abs(distance_a - distance_b), 0.0) / blend
  return jnp.minimum(distance_a, distance_b) - h * h * blend / 4.0


def intersection(distance_a, distance_b):
  """Points inside both shapes. [...], [...] -> [...] (a lower bound of the distance)."""
  return jnp.maximum(distance_a, distance_b)


def subtraction(distance_a, distance_b):
  """Points inside a but not inside b. [...], [...] -> [...] (a lower bound of the distance)."""
  return jnp.maximum(distance_a, -distance_b)


def on_sphere(center, radius, *, azimuth_deg, elevation_deg):
  """The point at the given angles (dfjax's world convention) on a sphere. Returns (3,)."""
  azimuth, elevation = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  direction = np.array([np.cos(elevation) * np.cos(azimuth),
                        np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
  return tuple(np.asarray(center) + radius * direction)


# ---------------------------------------------------------------------------------------------
# Objects.


@dataclasses.dataclass(frozen=True)
class FrontFeature:
  """A coloured feature on an object's front (+x) side, for measuring the Janus problem.

  A reconstruction with several faces ("Janus", paper §4) shows the front feature's colour
  where the back should be, e.g. an orange nose on the back of the snowman's head. The colour
  appears nowhere else on the object (checked by the tests).

  Attributes:
    points: (K, 3) points on the feature's surface; the first is its centre or tip.
    color: (3,) the feature's albedo, rgb in [0, 1].
  """
  points: tuple[tuple[float, float, float], ...]
  color: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ToyObject:
  """A captioned object made of coloured parts.

  Attributes:
    caption: a lowercase sentence naming the object, the prompt that selects it.
    part_distances: points [..., 3] -> [..., num_parts] signed distances, one per part (each
      may itself be a composition of primitives).
    part_colors: num_parts rgb albedos in [0, 1].
    front_feature: the object's front feature, or None when it has none.
  """
  caption: str
  part_distances: Callable[[jax.Array], jax.Array]
  part_colors: tuple[tuple[float, float, float], ...]
  front_feature: FrontFeature | None = None

  def sdf(self, points):
    """Signed distance of the union of the parts: points [..., 3] -> [...], negative inside."""
    return jnp.min(self.part_distances(points), axis=-1)

  def albedo(self, points):
    """Colour of the nearest part: points [..., 3] -> [..., 3] in [0, 1]."""
    nearest = jnp.argmin(self.part_distances(points), axis=-1)
    return jnp.asarray(self.part_colors, jnp.float32)[nearest]


def occupancy(obj, points):
  """Whether points lie inside the object: points [..., 3] -> bool [...] (sdf < 0)."""
  return obj.sdf(points) < 0.0


def snowman():
  """Three stacked snowballs; a carrot nose, black eyes and buttons on the +x side."""
  head_center, head_radius = (0.0, 0.0, 0.29), 0.13

  def part_distances(p):
    snow = smooth_union(sphere(p, center=(0.0, 0.0, -0.28), radius=0.24),
                        sphere(p, center=(0.0, 0.0, 0.04), radius=0.18), blend=0.04)
    snow = smooth_union(snow, sphere(p, center=head_center, radius=head_radius), blend=0.03)
    nose = capped_cone(p, start=(0.1, 0.0, 0.29), end=(0.3, 0.0, 0.29), start_radius=0.035,
                       end_radius=0.004)
    eyes = jnp.minimum(*[
        sphere(p, center=on_sphere(head_center, 0.12, azimuth_deg=az, elevation_deg=22.0),
               radius=0.022) for az in (-28.0, 28.0)])
    buttons = jnp.minimum(*[
        sphere(p, center=on_sphere((0.0, 0.0, 0.04), 0.175, azimuth_deg=0.0, elevation_deg=el),
               radius=0.022) for el in (0.0, -30.0)])
    arms = jnp.minimum(*[
        capsule(p, start=(0.0, side * 0.14, 0.08), end=(0.0, side * 0.36, 0.2), radius=0.02)
        for side in (-1.0, 1.0)])
    return jnp.stack([snow, nose, eyes, buttons, arms], -1)

  return ToyObject(
      caption="a snowman with a carrot nose",
      part_distances=part_distances,
      # Snow is pale blue rather than white so that it stands out on the white background.
      part_colors=((0.82, 0.86, 0.94), _ORANGE, _BLACK, _BLACK, (0.4, 0.25, 0.1)),
      front_feature=FrontFeature(
          # The tip, then the middle of the nose (radius 0.0195) on top and on both sides.
          points=((0.3, 0.0, 0.29), (0.2, 0.0, 0.3095), (0.2, 0.0195, 0.29),
                  (0.2, -0.0195, 0.29)),
          color=_ORANGE))


def red_mug():
  """A red mug of coffee; the handle is on its left side (+y) seen from the front."""

  def part_distances(p):
    cavity = cylinder(p, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.4), radius=0.215)
    body = cylinder(p, start=(0.0, 0.0, -0.25), end=(0.0, 0.0, 0.25), radius=0.25)
    handle = torus(p, center=(0.0, 0.27, 0.0), axis=(1.0, 0.0, 0.0), major_radius=0.12,
                   minor_radius=0.03)
    mug = subtraction(jnp.minimum(body, handle), cavity)
    coffee = cylinder(p, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.17), radius=0.216)
    return jnp.stack([mug, coffee], -1)

  return ToyObject(caption="a red mug with a handle", part_distances=part_distances,
                   part_colors=((0.8, 0.08, 0.08), (0.3, 0.17, 0.08)))


def yellow_duck():
  """A rubber duck with an orange beak pointing +x and black eyes."""
  head_center = (0.14, 0.0, 0.17)

  def part_distances(p):
    body = smooth_union(sphere(p, center=(-0.05, 0.0, -0.15), radius=0.25),
                        sphere(p, center=(-0.26, 0.0, -0.04), radius=0.1), blend=0.08)
    body = smooth_union(body, sphere(p, center=head_center, radius=0.14), blend=0.06)
    beak = capped_cone(p, start=(0.22, 0.0, 0.15), end=(0.36, 0.0, 0.14), start_radius=0.055,
                       end_radius=0.02)
    eyes = jnp.minimum(*[
        sphere(p, center=on_sphere(head_center, 0.13, azimuth_deg=az, elevation_deg=20.0),
               radius=0.02) for az in (-38.0, 38.0)])
    return jnp.stack([body, beak, eyes], -1)

  beak_axis = np.array([0.14, 0.0, -0.01]) / np.hypot(0.14, 0.01)
  return ToyObject(
      caption="a yellow duck",
      part_distances=part_distances,
      part_colors=((0.98, 0.85, 0.15), _ORANGE, _BLACK),
      front_feature=FrontFeature(
          # The centre of the beak's tip cap, then a point on the tip's rim.
          points=((0.36, 0.0, 0.14),
                  (0.36 - 0.02 * beak_axis[2], 0.0, 0.14 + 0.02 * beak_axis[0])),
          color=_ORANGE))


def house():
  """A cream house with a slate roof, a red door on its front (+x) and blue side windows."""
  door_center, door_half_size = (0.265, 0.0, -0.22), (0.012, 0.065, 0.12)

  def part_distances(p):
    walls = box(p, center=(0.0, 0.0, -0.15), half_size=(0.26, 0.26, 0.19))
    gable = convex_polygon_2d(p[..., (0, 2)], vertices=((0.32, 0.02), (0.0, 0.33), (-0.32, 0.02)))
    roof = extrusion(gable, p[..., 1], half_length=0.32)
    door = box(p, center=door_center, half_size=door_half_size)
    windows = jnp.minimum(*[
        box(p, center=(0.0, side * 0.265, -0.1), half_size=(0.08, 0.01, 0.06))
        for side in (-1.0, 1.0)])
    return jnp.stack([walls, roof, door, windows], -1)

  door_front = door_center[0] + door_half_size[0]
  return ToyObject(
      caption="a house with a red door",
      part_distances=part_distances,
      part_colors=((0.93, 0.87, 0.72), (0.35, 0.38, 0.45), (0.85, 0.1, 0.1), (0.55, 0.75, 0.95)),
      front_feature=FrontFeature(
          points=((door_front, 0.0, -0.22), (door_front, 0.04, -0.15), (door_front, -0.04, -0.15),
                  (door_front, 0.04, -0.29), (door_front, -0.04, -0.29)),
          color=(0.85, 0.1, 0.1)))


def blue_chair():
  """A blue chair: seat, four legs and a backrest at its back (-x); it faces +x."""

  def part_distances(p):
    seat = box(p, center=(0.0, 0.0, -0.05), half_size=(0.2, 0.2, 0.03))
    backrest = box(p, center=(-0.18, 0.0, 0.19), half_size=(0.02, 0.2, 0.21))
    legs = jnp.min(jnp.stack([
        box(p, center=(x, y, -0.27), half_size=(0.025, 0.025, 0.19))
        for x in (-0.17, 0.17) for y in (-0.17, 0.17)], -1), axis=-1)
    return jnp.stack([seat, backrest, legs], -1)

  return ToyObject(caption="a blue chair", part_distances=part_distances,
                   part_colors=((0.15, 0.3, 0.85), (0.15, 0.3, 0.85), (0.08, 0.16, 0.5)))


def green_tree():
  """A fir tree: two stacked green cones on a brown trunk (rotationally symmetric)."""

  def part_distances(p):
    trunk = cylinder(p, start=(0.0, 0.0, -0.45), end=(0.0, 0.0, -0.15), radius=0.06)
    foliage = smooth_union(
        capped_cone(p, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.2), start_radius=0.3,
                    end_radius=0.05),
        capped_cone(p, start=(0.0, 0.0, 0.05), end=(0.0, 0.0, 0.45), start_radius=0.22,
                    end_radius=0.0), blend=0.02)
    return jnp.stack([trunk, foliage], -1)

  return ToyObject(caption="a green tree", part_distances=part_distances,
                   part_colors=((0.45, 0.28, 0.12), (0.15, 0.6, 0.2)))


def mushroom():
  """A toadstool: a cream stem under a red cap with white spots."""
  cap_center, cap_radius = (0.0, 0.0, -0.05), 0.36
  spot_angles = ((0.0, 75.0),) + tuple((az, 45.0) for az in (30.0, 120.0, 210.0, 300.0)) + tuple(
      (az, 22.0) for az in (75.0, 165.0, 255.0, 345.0))

  def part_distances(p):
    stem = capped_cone(p, start=(0.0, 0.0, -0.42), end=(0.0, 0.0, 0.05), start_radius=0.11,
                       end_radius=0.08)
    cap = intersection(sphere(p, center=cap_center, radius=cap_radius), 0.05 - p[..., 2])
    # Each spot is a thin lens (0.005 thick) on the cap: a ball cut by a slightly larger cap.
    spots = jnp.min(jnp.stack([
        sphere(p, center=on_sphere(cap_center, cap_radius, azimuth_deg=az, elevation_deg=el),
               radius=0.06) for az, el in spot_angles], -1), axis=-1)
    spots = intersection(intersection(spots, sphere(p, center=cap_center, radius=cap_radius
                                                    + 0.005)), 0.05 - p[..., 2])
    return jnp.stack([stem, cap, spots], -1)

  return ToyObject(caption="a red mushroom with white spots", part_distances=part_distances,
                   part_colors=((0.95, 0.92, 0.82), (0.85, 0.12, 0.1), (0.97, 0.97, 0.97)))


# The toy world, in a fixed order (an object's index is its position here).
OBJECTS = (snowman, red_mug, yellow_duck, house, blue_chair, green_tree, mushroom)
