"""Signed distance primitives of the toy world and their compositions.

The toy world's objects (`dfjax.toy.objects`) are unions of these shapes. Every function maps
points, given as a tuple `xyz` of their three coordinate arrays (x [...], y [...], z [...]), to
distances [...], negative inside; shape parameters are keyword-only tuples of floats in world
units. Working per coordinate with the constant parameters folded in Python is what makes the
SDFs cheap on a CPU: slicing and reducing a trailing axis of size 3 made their gradients (the
renderer's normals) about ten times slower.

The primitives follow the standard closed forms (e.g. I. Quilez, "distance functions"); each
is exact (a true Euclidean distance, |grad| = 1). Unions (`min`), intersections and
subtractions (`max`) and the polynomial smooth union keep the functions 1-Lipschitz, so they
never over-estimate the distance to the surface, which is what sphere tracing
(`dfjax.toy.truth.render_ground_truth`) relies on.

Data flow: the bottom of the toy world; imports nothing of dfjax.
"""
import functools

import jax.numpy as jnp
import numpy as np


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


def unit_and_length(vector):
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
  axis, length = unit_and_length(np.subtract(end, start))
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
  axis, length = unit_and_length(np.subtract(end, start))
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
  height, distance_from_axis = _along_and_across(_offsets(xyz, center), unit_and_length(axis)[0])
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
