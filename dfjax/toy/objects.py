"""The toy world's objects: procedural, captioned, coloured 3D shapes with known geometry.

DreamFusion (arXiv:2209.14988) distils a text-to-image diffusion model into a 3D scene. To run
the whole text-to-3D pipeline on a CPU and know the right answer, dfjax replaces the pretrained
model with a closed-form prior built from a bank of rendered images (`dfjax.priors.bank`,
made by `dfjax.toy.banks`). The objects here are that bank's content: each is a union of
signed distance functions (`dfjax.toy.sdf`) with a caption ("a snowman with a carrot nose")
and a colour for each of its parts. The same objects are the ground truth that reconstructions
and the ablations (Fig. 6 of the paper) are measured against.

Conventions are dfjax's: +z up, an object's FRONT faces +x (azimuth 0). Every object lies
inside a sphere of radius `OBJECT_RADIUS` around the origin, well inside the renderer's bound
sphere (radius 1.4), and contains the origin, so that it fits the bank's cameras (distance
1.3-1.6, vertical field of view 48-56 degrees, looking at the origin) with a margin and always
covers the image centre.

Data flow: toy.sdf -> here -> toy.truth (exact renders) and toy.banks (image banks).
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dfjax.toy.sdf import (box, capped_cone, capsule, convex_polygon_2d, coordinates, cylinder,
                           extrusion, intersection, on_sphere, smooth_union, sphere,
                           spherical_cap, subtraction, torus, union,
                           unit_and_length)


# Every toy object lies inside this radius around the origin (checked by the tests), and
# contains the origin, so that the central pixel of a camera looking at the origin sees it.
OBJECT_RADIUS = 0.52


# Part colours (rgb in [0, 1]) that recur across objects.
_BLACK = (0.05, 0.05, 0.05)


_ORANGE = (1.0, 0.5, 0.05)


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

  beak_axis, _ = unit_and_length(np.subtract(beak_end, beak_start))
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
