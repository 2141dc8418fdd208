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
sphere (radius 1.4), and contains the origin, so that it fits the bank's cameras (distance
1.3-1.6, vertical field of view 48-56 degrees, looking at the origin) with a margin and always
covers the image centre.

SDF primitives follow the standard closed forms (e.g. I. Quilez, "distance functions"); each
is exact (a true Euclidean distance, |grad| = 1). Unions (`min`), intersections and
subtractions (`max`) and the polynomial smooth union keep the functions 1-Lipschitz, so they
never over-estimate the distance to the surface, which is what sphere tracing
(`render_ground_truth`) relies on.
"""
import dataclasses
import functools
import os
import pathlib
import time
from typing import Callable

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from dfjax import background as background_lib
from dfjax import cameras as cameras_lib
from dfjax import render as render_lib
from dfjax import shading as shading_lib
from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib

# Every toy object lies inside this radius around the origin (checked by the tests), and
# contains the origin, so that the central pixel of a camera looking at the origin sees it.
OBJECT_RADIUS = 0.52

# Part colours (rgb in [0, 1]) that recur across objects.
_BLACK = (0.05, 0.05, 0.05)
_ORANGE = (1.0, 0.5, 0.05)


# ---------------------------------------------------------------------------------------------
# Signed distance primitives. Every function maps points, given as a tuple `xyz` of their three
# coordinate arrays (x [...], y [...], z [...]), to distances [...], negative inside; shape
# parameters are keyword-only tuples of floats in world units. Working per coordinate with the
# constant parameters folded in Python is what makes the SDFs cheap on a CPU: slicing and
# reducing a trailing axis of size 3 made their gradients (the renderer's normals) about ten
# times slower.


def _length(*components):
  """Euclidean norm of vectors given by their components, each [...]; returns [...].

  Clamped below at 1e-10 (a distance error far below any feature size) so that the gradient
  stays finite at the zero vector, e.g. for points exactly on an axis or at a centre.
  """
  return jnp.sqrt(jnp.maximum(sum(c * c for c in components), 1e-20))


def safe_norm(vectors):
  """Euclidean norm over the last axis with a finite gradient at 0: [..., d] -> [...]."""
  return _length(*jnp.moveaxis(vectors, -1, 0))


def coordinates(points):
  """Points [..., 3] as the tuple (x, y, z) of [...] arrays that the primitives take."""
  return tuple(jnp.unstack(points, axis=-1))


def _offsets(xyz, origin):
  """Points (x, y, z) minus a constant point (3,) -> three [...] components."""
  return tuple(c - float(o) for c, o in zip(xyz, origin))


def _along_and_across(offsets, axis):
  """Split offsets (three [...] arrays) along a constant unit axis (3,).

  Returns:
    height: [...] the component along the axis; distance_from_axis: [...] the norm of the rest.
  """
  height = _dot(axis, offsets)
  across = [o - float(a) * height for a, o in zip(axis, offsets)]
  return height, _length(*across)


def _dot(vector, components):
  """Dot product of a constant vector (3,) with three [...] arrays; zero terms are skipped."""
  return sum(float(v) * c for v, c in zip(vector, components) if v != 0.0)


def _unit(vector):
  """A constant vector and its length, as a numpy unit vector (3,) and a float."""
  vector = np.asarray(vector, np.float64)
  length = float(np.linalg.norm(vector))
  return vector / length, length


def _box_distance(*excess):
  """Exact SDF of a box from the per-axis excess |x_i| - half_size_i, each [...].

  Outside it is the length of the positive excess, inside the largest (negative) excess.
  """
  largest = excess[0]
  for e in excess[1:]:
    largest = jnp.maximum(largest, e)
  outside = _length(*[jnp.maximum(e, 0.0) for e in excess])
  # _length's 1e-10 floor would shift the surface of points inside; use it outside only.
  return jnp.where(largest > 0.0, outside, largest)


def _segment_distance_squared(qx, qy, start, end):
  """Squared 2D distance from points (qx, qy [...]) to a constant segment start-end (2,)."""
  ex, ey = end[0] - start[0], end[1] - start[1]
  wx, wy = qx - start[0], qy - start[1]
  edge_squared = ex * ex + ey * ey
  along = jnp.clip((wx * ex + wy * ey) / edge_squared, 0.0, 1.0) if edge_squared > 0 else 0.0
  dx, dy = wx - along * ex, wy - along * ey
  return dx * dx + dy * dy


def sphere(xyz, *, center, radius):
  """Exact SDF of a ball. xyz: three [...] coordinate arrays; returns [...]."""
  return _length(*_offsets(xyz, center)) - radius


def box(xyz, *, center, half_size):
  """Exact SDF of an axis-aligned box with half extents `half_size` (3,). Returns [...]."""
  return _box_distance(*[jnp.abs(o) - h for o, h in zip(_offsets(xyz, center), half_size)])


def capsule(xyz, *, start, end, radius):
  """Exact SDF of the set of points within `radius` of the segment start-end. Returns [...]."""
  axis, length = _unit(np.subtract(end, start))
  offsets = _offsets(xyz, start)
  along = jnp.clip(_dot(axis, offsets), 0.0, length)
  return _length(*[o - float(a) * along for a, o in zip(axis, offsets)]) - radius


def convex_polygon_2d(qx, qy, *, vertices):
  """Exact SDF of a convex polygon in the plane.

  Args:
    qx, qy: [...] coordinates of the query points.
    vertices: (V, 2) constant counter-clockwise corners.

  Returns:
    [...]: distance to the nearest edge, negative inside (inside = left of every edge).
  """
  vertices = [tuple(map(float, v)) for v in vertices]
  squared, inside = None, None
  for start, end in zip(vertices, vertices[1:] + vertices[:1]):
    edge_squared = _segment_distance_squared(qx, qy, start, end)
    left = (end[0] - start[0]) * (qy - start[1]) - (end[1] - start[1]) * (qx - start[0]) >= 0.0
    squared = edge_squared if squared is None else jnp.minimum(squared, edge_squared)
    inside = left if inside is None else inside & left
  distance = jnp.sqrt(jnp.maximum(squared, 1e-20))  # floor: finite gradient on an edge
  return jnp.where(inside, -distance, distance)


def capped_cone(xyz, *, start, end, start_radius, end_radius):
  """Exact SDF of a truncated cone (a cylinder when the radii are equal). Returns [...].

  A solid of revolution: the nearest surface point lies in the meridian half-plane through
  the query point, so the 3D distance is the 2D distance, in (height along the axis h,
  distance from the axis r) coordinates, to the boundary of the cross-section: the two caps
  (h = 0, r <= start_radius and h = length, r <= end_radius) and the slanted side.
  """
  axis, length = _unit(np.subtract(end, start))
  h, r = _along_and_across(_offsets(xyz, start), axis)
  start_cap = h * h + jnp.maximum(r - start_radius, 0.0)**2
  end_cap = (h - length)**2 + jnp.maximum(r - end_radius, 0.0)**2
  side = _segment_distance_squared(h, r, (0.0, start_radius), (length, end_radius))
  distance = jnp.sqrt(jnp.maximum(jnp.minimum(jnp.minimum(start_cap, end_cap), side), 1e-20))
  radius_at_h = start_radius + (end_radius - start_radius) * h / length
  inside = (h >= 0.0) & (h <= length) & (r <= radius_at_h)
  return jnp.where(inside, -distance, distance)


def cylinder(xyz, *, start, end, radius):
  """Exact SDF of a solid cylinder between the centres of its two caps. Returns [...]."""
  return capped_cone(xyz, start=start, end=end, start_radius=radius, end_radius=radius)


def torus(xyz, *, center, axis, major_radius, minor_radius):
  """Exact SDF of a torus around the constant direction `axis` through `center`. [...]."""
  height, distance_from_axis = _along_and_across(_offsets(xyz, center), _unit(axis)[0])
  return _length(distance_from_axis - major_radius, height) - minor_radius


def spherical_cap(xyz, *, center, radius, base_height):
  """Exact SDF of the part of a ball above the plane z = base_height. Returns [...].

  The plane must cut the ball: |base_height - center[2]| < radius.

  In (distance from the vertical axis r, height above the centre h) coordinates, with the
  cut at c = base_height - center_z and the rim at (w, c), w = sqrt(radius^2 - c^2): inside,
  the distance to the nearer of the sphere and the base plane; outside, the base plane for
  points under the base disc (r <= w, h < c), the rim for points beyond it and below the line
  from the centre through the rim (h w < c r), and the sphere otherwise.
  """
  x, y, z = _offsets(xyz, center)
  r, h = _length(x, y), z
  cut = base_height - float(center[2])
  rim = float(np.sqrt(radius**2 - cut**2))
  to_sphere = _length(r, h) - radius
  to_plane = cut - h
  to_rim = _length(r - rim, h - cut)
  outside = jnp.where((r <= rim) & (h < cut), to_plane,
                      jnp.where(h * rim < cut * r, to_rim, to_sphere))
  inside = jnp.maximum(to_sphere, to_plane)
  return jnp.where(inside < 0.0, inside, outside)


def extrusion(distance_2d, height, *, half_length):
  """Exact SDF of a 2D shape extruded along a third axis.

  Args:
    distance_2d: [...], the 2D SDF of the cross-section at the query point.
    height: [...], the query point's coordinate along the extrusion axis.
    half_length: the extrusion covers |height| <= half_length.

  Returns:
    [...].
  """
  return _box_distance(distance_2d, jnp.abs(height) - half_length)


def smooth_union(distance_a, distance_b, *, blend):
  """Polynomial smooth minimum: a union whose seam is rounded over a width `blend`.

  min(a, b) - h^2 blend / 4 with h = max(blend - |a - b|, 0) / blend. Its gradient is a convex
  combination of the two gradients, so the result stays 1-Lipschitz. a, b: [...]; returns [...].
  """
  h = jnp.maximum(blend - jnp.abs(distance_a - distance_b), 0.0) / blend
  return jnp.minimum(distance_a, distance_b) - h * h * blend / 4.0


def union(*distances):
  """Points inside any of the shapes: the minimum of their SDFs, each [...] -> [...]."""
  return functools.reduce(jnp.minimum, distances)


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
  where the back should be, e.g. an orange nose on the back of the snowman's head. No other
  part of the object has this colour (checked by the tests), so the fraction of the object's
  pixels with it in a back view (azimuth 180) measures the problem; the true object has none.

  Attributes:
    points: (K, 3) points on the feature's surface; the first is its centre or tip.
    color: (3,) the feature's albedo, rgb in [0, 1].
  """
  points: tuple[tuple[float, float, float], ...]
  color: tuple[float, float, float]


def color_fraction(rgb, alpha, color, *, tolerance=0.12):
  """The fraction of an image's object pixels that show a colour.

  The Janus measure: a back view (azimuth 180) of a reconstruction should show none of the
  front feature's colour (`FrontFeature.color`); render it with albedo shading.

  Args:
    rgb: [..., height, width, 3] colours in [0, 1].
    alpha: [..., height, width] opacity; pixels with alpha > 0.5 belong to the object.
    color: (3,) rgb in [0, 1].
    tolerance: largest per-channel difference that still counts as the colour.

  Returns:
    [...] fraction in [0, 1] (0 for an image without object pixels).
  """
  matches = jnp.all(jnp.abs(rgb - jnp.asarray(color, jnp.float32)) <= tolerance, axis=-1)
  on_object = alpha > 0.5
  count = jnp.sum(matches & on_object, axis=(-2, -1))
  return count / jnp.maximum(jnp.sum(on_object, axis=(-2, -1)), 1)


@dataclasses.dataclass(frozen=True)
class ToyObject:
  """A captioned object made of coloured parts.

  Attributes:
    caption: a lowercase sentence naming the object, the prompt that selects it.
    part_distances: xyz (three [...] coordinate arrays) -> a tuple of num_parts signed
      distances [...], one per part (each may be a composition of primitives).
    part_colors: num_parts rgb albedos in [0, 1].
    front_feature: the object's front feature, or None when it has none.
  """
  caption: str
  part_distances: Callable[[tuple[jax.Array, ...]], tuple[jax.Array, ...]]
  part_colors: tuple[tuple[float, float, float], ...]
  front_feature: FrontFeature | None = None

  def sdf(self, points):
    """Signed distance of the union of the parts: points [..., 3] -> [...], negative inside."""
    return union(*self.part_distances(coordinates(points)))

  def albedo(self, points):
    """Colour of the nearest part: points [..., 3] -> [..., 3] in [0, 1]."""
    distances = self.part_distances(coordinates(points))
    nearest, color = distances[0], jnp.asarray(self.part_colors[0], jnp.float32)
    for distance, part_color in zip(distances[1:], self.part_colors[1:]):
      closer = distance < nearest
      color = jnp.where(closer[..., None], jnp.asarray(part_color, jnp.float32), color)
      nearest = jnp.minimum(nearest, distance)
    return jnp.broadcast_to(color, points.shape)


def occupancy(obj, points):
  """Whether points lie inside the object: points [..., 3] -> bool [...] (sdf < 0)."""
  return obj.sdf(points) < 0.0


def snowman():
  """Three stacked snowballs; a carrot nose, black eyes and buttons on the +x side."""
  head_center, head_radius = (0.0, 0.0, 0.29), 0.13

  def part_distances(xyz):
    snow = smooth_union(sphere(xyz, center=(0.0, 0.0, -0.28), radius=0.24),
                        sphere(xyz, center=(0.0, 0.0, 0.04), radius=0.18), blend=0.04)
    snow = smooth_union(snow, sphere(xyz, center=head_center, radius=head_radius), blend=0.03)
    nose = capped_cone(xyz, start=(0.1, 0.0, 0.29), end=(0.3, 0.0, 0.29), start_radius=0.035,
                       end_radius=0.004)
    eyes = union(*[
        sphere(xyz, center=on_sphere(head_center, 0.12, azimuth_deg=az, elevation_deg=22.0),
               radius=0.022) for az in (-28.0, 28.0)])
    buttons = union(*[
        sphere(xyz, center=on_sphere((0.0, 0.0, 0.04), 0.175, azimuth_deg=0.0,
                                     elevation_deg=el), radius=0.022) for el in (0.0, -30.0)])
    arms = union(*[
        capsule(xyz, start=(0.0, side * 0.14, 0.08), end=(0.0, side * 0.36, 0.2), radius=0.02)
        for side in (-1.0, 1.0)])
    return snow, nose, eyes, buttons, arms

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
  """A red mug of coffee; its handle is at +y, on the image's right seen from the front."""

  def part_distances(xyz):
    cavity = cylinder(xyz, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.4), radius=0.215)
    body = cylinder(xyz, start=(0.0, 0.0, -0.25), end=(0.0, 0.0, 0.25), radius=0.25)
    handle = torus(xyz, center=(0.0, 0.27, 0.0), axis=(1.0, 0.0, 0.0), major_radius=0.12,
                   minor_radius=0.03)
    mug = subtraction(jnp.minimum(body, handle), cavity)
    coffee = cylinder(xyz, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.17), radius=0.216)
    return mug, coffee

  return ToyObject(caption="a red mug with a handle", part_distances=part_distances,
                   part_colors=((0.8, 0.08, 0.08), (0.3, 0.17, 0.08)))


def yellow_duck():
  """A rubber duck with an orange beak pointing +x and black eyes."""
  head_center = (0.14, 0.0, 0.17)
  beak_start, beak_end, beak_tip_radius = (0.22, 0.0, 0.15), (0.36, 0.0, 0.14), 0.02

  def part_distances(xyz):
    body = smooth_union(sphere(xyz, center=(-0.05, 0.0, -0.15), radius=0.25),
                        sphere(xyz, center=(-0.26, 0.0, -0.04), radius=0.1), blend=0.08)
    body = smooth_union(body, sphere(xyz, center=head_center, radius=0.14), blend=0.06)
    beak = capped_cone(xyz, start=beak_start, end=beak_end, start_radius=0.055,
                       end_radius=beak_tip_radius)
    eyes = union(*[
        sphere(xyz, center=on_sphere(head_center, 0.13, azimuth_deg=az, elevation_deg=20.0),
               radius=0.02) for az in (-38.0, 38.0)])
    return body, beak, eyes

  beak_axis, _ = _unit(np.subtract(beak_end, beak_start))
  # Perpendicular to the beak's axis, in the xz plane, pointing up.
  beak_up = np.array([-beak_axis[2], 0.0, beak_axis[0]])
  return ToyObject(
      caption="a yellow duck",
      part_distances=part_distances,
      part_colors=((0.98, 0.85, 0.15), _ORANGE, _BLACK),
      front_feature=FrontFeature(
          # The centre of the beak's tip cap, then the top of the tip's rim.
          points=(beak_end, tuple(np.add(beak_end, beak_tip_radius * beak_up))),
          color=_ORANGE))


def house():
  """A cream house with a slate roof, a red door on its front (+x) and blue side windows."""
  door_center, door_half_size = (0.265, 0.0, -0.22), (0.012, 0.065, 0.12)
  door_color = (0.85, 0.1, 0.1)

  def part_distances(xyz):
    walls = box(xyz, center=(0.0, 0.0, -0.15), half_size=(0.26, 0.26, 0.19))
    gable = convex_polygon_2d(xyz[0], xyz[2],
                              vertices=((0.32, 0.02), (0.0, 0.33), (-0.32, 0.02)))
    roof = extrusion(gable, xyz[1], half_length=0.32)
    door = box(xyz, center=door_center, half_size=door_half_size)
    windows = union(*[
        box(xyz, center=(0.0, side * 0.265, -0.1), half_size=(0.08, 0.01, 0.06))
        for side in (-1.0, 1.0)])
    return walls, roof, door, windows

  door_front = door_center[0] + door_half_size[0]
  return ToyObject(
      caption="a house with a red door",
      part_distances=part_distances,
      part_colors=((0.93, 0.87, 0.72), (0.35, 0.38, 0.45), door_color, (0.55, 0.75, 0.95)),
      front_feature=FrontFeature(
          # The door's centre, then points near its four corners.
          points=((door_front, 0.0, -0.22),) + tuple(
              (door_front, y, z) for y in (-0.04, 0.04) for z in (-0.29, -0.15)),
          color=door_color))


def blue_chair():
  """A blue chair: seat, four legs and a backrest at its back (-x); it faces +x."""

  def part_distances(xyz):
    # The seat contains the origin, so a camera's central ray always hits the chair.
    seat = box(xyz, center=(0.0, 0.0, 0.0), half_size=(0.2, 0.2, 0.03))
    backrest = box(xyz, center=(-0.18, 0.0, 0.215), half_size=(0.02, 0.2, 0.185))
    legs = union(*[box(xyz, center=(x, y, -0.225), half_size=(0.025, 0.025, 0.195))
                   for x in (-0.17, 0.17) for y in (-0.17, 0.17)])
    return seat, backrest, legs

  return ToyObject(caption="a blue chair", part_distances=part_distances,
                   part_colors=((0.15, 0.3, 0.85), (0.15, 0.3, 0.85), (0.08, 0.16, 0.5)))


def green_tree():
  """A fir tree: two stacked green cones on a brown trunk (rotationally symmetric)."""

  def part_distances(xyz):
    trunk = cylinder(xyz, start=(0.0, 0.0, -0.45), end=(0.0, 0.0, -0.15), radius=0.06)
    foliage = smooth_union(
        capped_cone(xyz, start=(0.0, 0.0, -0.2), end=(0.0, 0.0, 0.2), start_radius=0.3,
                    end_radius=0.05),
        capped_cone(xyz, start=(0.0, 0.0, 0.05), end=(0.0, 0.0, 0.45), start_radius=0.22,
                    end_radius=0.0), blend=0.02)
    return trunk, foliage

  return ToyObject(caption="a green tree", part_distances=part_distances,
                   part_colors=((0.45, 0.28, 0.12), (0.15, 0.6, 0.2)))


def mushroom():
  """A toadstool: a cream stem under a red cap with white spots."""
  cap_center, cap_radius, cap_base = (0.0, 0.0, -0.05), 0.36, 0.05
  spot_angles = (((0.0, 75.0),) + tuple((az, 45.0) for az in (30.0, 120.0, 210.0, 300.0))
                 + tuple((az, 22.0) for az in (75.0, 165.0, 255.0, 345.0)))

  def part_distances(xyz):
    stem = capped_cone(xyz, start=(0.0, 0.0, -0.42), end=(0.0, 0.0, cap_base),
                       start_radius=0.11, end_radius=0.08)
    cap = spherical_cap(xyz, center=cap_center, radius=cap_radius, base_height=cap_base)
    # Each spot is a thin lens (0.005 thick) on the cap: a ball cut by a slightly larger cap.
    spots = union(*[
        sphere(xyz, center=on_sphere(cap_center, cap_radius, azimuth_deg=az, elevation_deg=el),
               radius=0.06) for az, el in spot_angles])
    spots = intersection(spots, spherical_cap(xyz, center=cap_center, radius=cap_radius + 0.005,
                                              base_height=cap_base))
    return stem, cap, spots

  return ToyObject(caption="a red mushroom with white spots", part_distances=part_distances,
                   part_colors=((0.95, 0.92, 0.82), (0.85, 0.12, 0.1), (0.97, 0.97, 0.97)))


# The toy world, in a fixed order (an object's index is its position here).
OBJECTS = (snowman, red_mug, yellow_duck, house, blue_chair, green_tree, mushroom)


# ---------------------------------------------------------------------------------------------
# Rendering the objects.

# Density of a toy object: tau = DENSITY_SCALE * sigmoid(-sdf / SURFACE_SOFTNESS), per world
# unit: 250 on the surface, 500 inside. Along a ray entering the surface head-on the optical
# depth is scale * softness * ln(1 + exp(d / softness)) at depth d past the surface (the
# integral of the sigmoid), so the transmittance is 1/2 on the surface (scale * softness = 1
# puts the half-opacity contour on the zero set), 0.08 at 0.005 inside and 0.007 at 0.01
# inside: opaque within 0.01 world units, half a pixel of a 64 x 64 bank image.
DENSITY_SCALE = 500.0
SURFACE_SOFTNESS = 0.002


def field_fn_for(obj, *, density_scale=DENSITY_SCALE, softness=SURFACE_SOFTNESS):
  """The volume-rendering field of a toy object (a `dfjax.render.FieldFn`).

  Args:
    obj: a ToyObject.
    density_scale: tau deep inside the object, per world unit.
    softness: width of the density's sigmoid transition across the surface, world units.

  Returns:
    field_fn(means [..., 3], cov_diag [..., 3]) -> (density [...], albedo [..., 3]); the
      covariance is ignored (the object has no detail finer than its surface transition).
  """

  def field_fn(means, cov_diag):
    del cov_diag
    density = density_scale * jax.nn.sigmoid(-obj.sdf(means) / softness)
    return density, obj.albedo(means)

  return field_fn


# Image banks and ground truth are rendered on a plain white background: a BackgroundFn that
# returns ones, like a product photo.
WHITE_BACKGROUND = background_lib.fixed_background((1.0, 1.0, 1.0))


@struct.dataclass
class GroundTruth:
  """The exact appearance of a toy object through one camera (pixel-centre rays).

  Attributes:
    rgb: [height, width, 3] shaded colour over the white background.
    alpha: [height, width] 1.0 where the pixel's ray hits the object, else 0.0.
    depth: [height, width] distance to the surface along the unit ray (0 where it misses,
      as in `render.RenderOutput`).
    normals: [height, width, 3] unit outward surface normals (0 where it misses).
  """
  rgb: jax.Array
  alpha: jax.Array
  depth: jax.Array
  normals: jax.Array


def sphere_trace(sdf, origins, directions, *, near, far, num_steps, tolerance):
  """First intersection of rays with the zero set of a 1-Lipschitz SDF (sphere tracing).

  Hart, "Sphere tracing", The Visual Computer 1996: stepping by the SDF value never crosses
  the surface because no surface point is closer than that value.

  Args:
    sdf: points [..., 3] -> [...].
    origins, directions: [..., 3], unit directions.
    near, far: [...] search interval along each ray.
    num_steps: number of steps (a fixed loop).
    tolerance: a ray has hit once the SDF value falls below this, world units.

  Returns:
    distance: [...] along each ray; hit: bool [...].
  """

  def step(_, distance):
    value = sdf(origins + distance[..., None] * directions)
    return jnp.where(value > tolerance, jnp.minimum(distance + value, far), distance)

  distance = jax.lax.fori_loop(0, num_steps, step, near)
  hit = sdf(origins + distance[..., None] * directions) <= tolerance
  return distance, hit & (distance < far)


@functools.partial(jax.jit, static_argnames=("obj", "num_steps", "tolerance", "bound_radius"))
def render_ground_truth(obj, camera, *, shading=None, num_steps=200, tolerance=1e-4,
                        bound_radius=1.4):
  """Render a toy object exactly, by sphere tracing its SDF, for evaluation.

  Jitted with `obj` static (hashed by its functions' identity): render the same ToyObject
  instance again to reuse the compiled function.

  Args:
    obj: a ToyObject.
    camera: a `cameras.Camera`.
    shading: a `shading.Shading`; None for albedo only.
    num_steps, tolerance: sphere tracing (see `sphere_trace`).
    bound_radius: rays are traced inside this sphere (the renderer's bound).

  Returns:
    GroundTruth with leading shape [height, width].
  """
  shading = shading_lib.Shading.albedo_only() if shading is None else shading
  rays = cameras_lib.generate_rays(camera)
  near, far = render_lib.intersect_sphere(rays.origins, rays.directions, bound_radius)
  distance, hit = sphere_trace(obj.sdf, rays.origins, rays.directions, near=near, far=far,
                               num_steps=num_steps, tolerance=tolerance)
  points = rays.origins + distance[..., None] * rays.directions
  gradient = jax.grad(lambda p: jnp.sum(obj.sdf(p)))(points)
  normals = gradient / safe_norm(gradient)[..., None]
  color = shading_lib.shade(obj.albedo(points), normals, points, shading)
  alpha = hit.astype(jnp.float32)
  rgb = alpha[..., None] * color + (1.0 - alpha[..., None]) * WHITE_BACKGROUND(rays.directions)
  return GroundTruth(rgb=rgb, alpha=alpha, depth=alpha * distance,
                     normals=alpha[..., None] * normals)


# ---------------------------------------------------------------------------------------------
# Image banks: every object rendered from many cameras, the data of the closed-form prior.

# Default camera ranges of a bank. A camera at the nearest distance with the narrowest field
# of view still sees a sphere of radius 1.3 * sin(24 deg) = 0.53 > OBJECT_RADIUS, so objects
# are never cut off, and the image corners (32 deg off-axis) always show the background. The
# elevation range reaches past 60 degrees so that the bank holds overhead views (§3.2).
ELEVATION_RANGE_DEG = (-10.0, 70.0)
DISTANCE_RANGE = (1.3, 1.6)
FOV_RANGE_DEG = (48.0, 56.0)
# A front-biased bank, like a photo collection, has this fraction of its views with the
# azimuth (wrapped to [-180, 180)) in the front quadrant [-45, 45).
FRONT_BIASED_FRACTION = 0.6
# Lambertian banks are lit as the trainer lights its shaded views (App. A.2): a point light
# near the camera (`shading.sample_light_position`), ambient 0.1, diffuse 0.9.
LAMBERTIAN_AMBIENT = 0.1
LAMBERTIAN_DIFFUSE = 0.9
# The renderer samples rays inside this sphere; the objects lie inside OBJECT_RADIUS, so a
# tight bound spends the samples where the surfaces are.
BANK_BOUND_RADIUS = 0.6
# "lambertian_textureless": every other view of each object is lit with its albedo replaced by
# white (the trainer's textureless views, §3.1), so that such renders have neighbours in the
# bank, as untextured renders have in a large photo prior's training data.
SHADINGS = ("albedo", "lambertian", "lambertian_textureless")
# Views per object of the default bank: 672 images of 64 x 64 in all, rendered in well under a
# minute of two CPU cores' time after a compile of about 15 s.
DEFAULT_VIEWS_PER_OBJECT = 96


@struct.dataclass
class BankCameras:
  """The nominal cameras of one object's views, each field [num_views] float32 (degrees)."""
  azimuth_deg: np.ndarray
  elevation_deg: np.ndarray
  distance: np.ndarray
  fov_deg: np.ndarray


def bank_cameras(rng, *, num_views, elevation_range_deg=ELEVATION_RANGE_DEG,
                 distance_range=DISTANCE_RANGE, fov_range_deg=FOV_RANGE_DEG,
                 front_biased=False):
  """Cameras that cover the viewing sphere evenly, or with the front over-represented.

  Azimuths lie on a uniform grid with a random offset (wrapped to [-180, 180)); with
  `front_biased`, round(FRONT_BIASED_FRACTION * num_views) of them on a grid over the front
  quadrant [-45, 45) and the rest on a grid over the other 270 degrees. Elevations are
  stratified over their range (one per equal slice, randomly permuted across the azimuths);
  distances and fields of view are uniform in their ranges.

  Args:
    rng: a numpy Generator.
    num_views: number of cameras.

  Returns:
    BankCameras with fields [num_views].
  """
  if front_biased:
    num_front = int(round(FRONT_BIASED_FRACTION * num_views))
    azimuth = np.concatenate([
        _grid_with_offset(rng, num_front, start=-45.0, width=90.0),
        _grid_with_offset(rng, num_views - num_front, start=45.0, width=270.0)])
  else:
    azimuth = _grid_with_offset(rng, num_views, start=0.0, width=360.0)
  azimuth = np.mod(azimuth + 180.0, 360.0) - 180.0
  low, high = elevation_range_deg
  strata = (rng.permutation(num_views) + rng.uniform(size=num_views)) / num_views
  elevation = low + (high - low) * strata
  as_float32 = lambda x: np.asarray(x, np.float32)
  return BankCameras(azimuth_deg=as_float32(azimuth), elevation_deg=as_float32(elevation),
                     distance=as_float32(rng.uniform(*distance_range, size=num_views)),
                     fov_deg=as_float32(rng.uniform(*fov_range_deg, size=num_views)))


def sample_bank_lights(num_lights, *, seed=0, elevation_range_deg=ELEVATION_RANGE_DEG,
                       distance_range=DISTANCE_RANGE):
  """Point lights as a Lambertian bank draws them: each near a camera of the bank's camera
  distribution (`bank_cameras`, all around), by `shading.sample_light_position` (App. A.2).

  A Monte Carlo sample of the lights the bank's photos were lit by, e.g. for the shading
  averaged over those photos (`ablation_metrics.mean_diffuse_cosine`).

  Args:
    num_lights: how many lights (one per sampled camera).
    seed: seeds the cameras and the lights.
    elevation_range_deg, distance_range: the bank's camera ranges (make_bank's defaults).

  Returns:
    [num_lights, 3] float32 light positions.
  """
  views = bank_cameras(np.random.default_rng(seed), num_views=num_lights,
                       elevation_range_deg=elevation_range_deg, distance_range=distance_range)
  positions = cameras_lib.spherical_to_position(views.azimuth_deg, views.elevation_deg,
                                                views.distance)
  keys = jax.random.split(jax.random.PRNGKey(seed), num_lights)
  return np.asarray(jax.vmap(shading_lib.sample_light_position)(keys, positions))


def _grid_with_offset(rng, num, *, start, width):
  """num angles spaced width/num apart in [start, start + width), randomly offset. [num]."""
  return start + (np.arange(num) + rng.uniform()) * (width / max(num, 1))


@functools.lru_cache(maxsize=4)
def _bank_renderer(objects, *, resolution, num_samples, num_importance):
  """One jitted renderer of bank views for all the objects (a tuple), cached.

  The object is chosen inside the field with `lax.switch` and the shading is an argument, so
  the renderer compiles once per set of objects and resolution. Normals are central
  differences of the density: reverse-mode gradients of some composed SDFs compile to slow CPU
  code, and the difference step (1e-3) is below the surface's sigmoid width
  (SURFACE_SOFTNESS), so the normals are as good.

  Returns:
    render_view(object_index, azimuth_deg, elevation_deg, distance, fov_deg, light_key, lit,
                textureless) -> (rgb [resolution, resolution, 3] in [0, 1], c2w [4, 4]);
      `lit` (bool) selects Lambertian shading (see make_bank) over the albedo, `textureless`
      (bool) replaces the albedo by white.
  """
  fields = [field_fn_for(obj) for obj in objects]

  @jax.jit
  def render_view(object_index, azimuth_deg, elevation_deg, distance, fov_deg, light_key, lit,
                  textureless):
    camera = cameras_lib.camera_from_angles(
        azimuth_deg=azimuth_deg, elevation_deg=elevation_deg, distance=distance,
        fov_deg=fov_deg, width=resolution, height=resolution)
    field_fn = lambda means, cov_diag: jax.lax.switch(object_index, fields, means, cov_diag)
    shading = shading_lib.Shading(
        light_position=shading_lib.sample_light_position(light_key, camera.position),
        ambient=jnp.where(lit, LAMBERTIAN_AMBIENT, 1.0),
        diffuse=jnp.where(lit, LAMBERTIAN_DIFFUSE, 0.0),
        textureless=jnp.asarray(textureless, jnp.float32))
    output = render_lib.render_image(
        camera, key=jax.random.PRNGKey(0), field_fn=field_fn, background_fn=WHITE_BACKGROUND,
        shading=shading, num_samples=num_samples, num_importance=num_importance,
        bound_radius=BANK_BOUND_RADIUS, randomized=False, normals="finite_difference")
    return output.rgb, camera.c2w

  return render_view


def _check_bank_arguments(objects, *, resolution, num_views, shading):
  """Raise a UserError naming the first bad bank-generation argument."""
  if not objects:
    raise UserError("make_bank needs at least one object, e.g. [c() for c in toy.OBJECTS].")
  if not isinstance(resolution, int) or resolution < 8:
    raise UserError(f"bank resolution must be an integer >= 8 pixels, got {resolution!r}.")
  if not isinstance(num_views, int) or num_views < 1:
    raise UserError(f"views per object must be a positive integer, got {num_views!r}.")
  if shading not in SHADINGS:
    raise UserError(f"bank shading must be one of {SHADINGS}, got {shading!r}.")


def make_bank(objects, *, resolution=64, num_views=DEFAULT_VIEWS_PER_OBJECT,
              elevation_range_deg=ELEVATION_RANGE_DEG, distance_range=DISTANCE_RANGE,
              fov_range_deg=FOV_RANGE_DEG, shading="albedo", front_biased=False, seed=0,
              num_samples=48, num_importance=32):
  """Render every object from `num_views` cameras (see `bank_cameras`) on a white background.

  Views are rendered with `render.render_image` (hierarchical sampling, deterministic sample
  positions) inside a sphere of radius BANK_BOUND_RADIUS.

  Args:
    objects: a sequence of ToyObjects.
    resolution: image height and width in pixels.
    num_views: views per object.
    elevation_range_deg, distance_range, fov_range_deg: camera ranges (`bank_cameras`).
    shading: "albedo" (the albedo only), "lambertian" (lit by a point light near each
      camera, LAMBERTIAN_AMBIENT and LAMBERTIAN_DIFFUSE; the light's position is drawn per
      view as in App. A.2, from the seed) or "lambertian_textureless" (as "lambertian", with
      the albedo of every odd-numbered view of each object replaced by white).
    front_biased: over-represent front views (FRONT_BIASED_FRACTION of them).
    seed: seeds the cameras and lights.
    num_samples, num_importance: coarse and hierarchical samples per ray.

  Returns:
    A dict with the keyword arguments of `dfjax.priors.bank.save_bank`, N = len(objects) *
    num_views rows, object by object: images uint8 [N, H, W, 3], prompts str [N] (the
    captions), c2w float32 [N, 4, 4], fov_deg float32 [N].
  """
  _check_bank_arguments(objects, resolution=resolution, num_views=num_views, shading=shading)
  rng = np.random.default_rng(seed)
  light_key = jax.random.PRNGKey(seed)
  render_view = _bank_renderer(tuple(objects), resolution=resolution, num_samples=num_samples,
                               num_importance=num_importance)
  images, c2ws, fovs = [], [], []
  for index in range(len(objects)):
    views = bank_cameras(rng, num_views=num_views, elevation_range_deg=elevation_range_deg,
                         distance_range=distance_range, fov_range_deg=fov_range_deg,
                         front_biased=front_biased)
    for view in range(num_views):
      rgb, c2w = render_view(index, views.azimuth_deg[view], views.elevation_deg[view],
                             views.distance[view], views.fov_deg[view],
                             jax.random.fold_in(light_key, len(images)),
                             shading != "albedo",
                             shading == "lambertian_textureless" and view % 2 == 1)
      images.append(np.round(np.clip(np.asarray(rgb), 0.0, 1.0) * 255.0).astype(np.uint8))
      c2ws.append(np.asarray(c2w, np.float32))
    fovs.append(views.fov_deg)
  return dict(images=np.stack(images), prompts=np.repeat([o.caption for o in objects], num_views),
              c2w=np.stack(c2ws), fov_deg=np.concatenate(fovs).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# The cached toy bank.

# Part of every cached bank's file name; bump it whenever the objects, the cameras or the
# rendering change, so that stale banks are regenerated instead of reused.
TOY_BANK_VERSION = "toy1"


def cache_dir():
  """dfjax's cache folder: $DFJAX_CACHE_DIR, else $XDG_CACHE_HOME/dfjax, else ~/.cache/dfjax."""
  if os.environ.get("DFJAX_CACHE_DIR"):
    return pathlib.Path(os.environ["DFJAX_CACHE_DIR"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "dfjax"


def toy_bank_path(*, resolution=64, views_per_object=DEFAULT_VIEWS_PER_OBJECT,
                  front_biased=False, shading="albedo", seed=0):
  """Where the toy bank with these generation parameters is cached (see `get_toy_bank`).

  The file name spells out every parameter and TOY_BANK_VERSION; the camera ranges and the
  renderer settings are make_bank's defaults, covered by the version.
  """
  views = "front" if front_biased else "uniform"
  name = (f"{TOY_BANK_VERSION}_{len(OBJECTS)}objects_{resolution}px_{views_per_object}views_"
          f"{views}_{shading}_seed{seed}.npz")
  return cache_dir() / "toy_banks" / name


def get_toy_bank(*, resolution=64, views_per_object=DEFAULT_VIEWS_PER_OBJECT,
                 front_biased=False, shading="albedo", seed=0):
  """The toy world's image bank file, generated (`make_bank` of all OBJECTS) on first use.

  The bank is written atomically (a temporary file, then `os.replace`), so an interrupted
  generation never leaves a truncated bank behind, and later calls reuse it.

  Returns:
    pathlib.Path of the bank (.npz, read it with `dfjax.priors.bank.load_bank`).
  """
  path = toy_bank_path(resolution=resolution, views_per_object=views_per_object,
                       front_biased=front_biased, shading=shading, seed=seed)
  if path.exists():
    return path
  print(f"Generating the toy image bank {path.name} (first use)...", end=" ", flush=True)
  start = time.time()
  bank = make_bank([constructor() for constructor in OBJECTS], resolution=resolution,
                   num_views=views_per_object, shading=shading, front_biased=front_biased,
                   seed=seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    bank_lib.save_bank(temporary, **bank)
    os.replace(temporary, path)
  finally:
    if temporary.exists():
      temporary.unlink()
  print(f"{len(bank['images'])} images in {time.time() - start:.1f} s, cached in {path.parent}",
        flush=True)
  return path
