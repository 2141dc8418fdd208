"""An occupancy grid of the field's density, for empty-space skipping.

Fast NeRF renderers (Instant-NGP, Müller et al. 2022 §4; its use in text-to-3D by
stable-dreamfusion and threestudio) keep a coarse grid of where the density is non-negligible
and spend their samples only there. dfjax keeps, per cell of a G³ grid over [−bound, bound]³,
a decayed running maximum of the density seen at random points of the cell:
  g ← max(decay · g, τ(x)),  x ~ U(cell),
refreshed every few steps inside the jitted step (`refresh_grid`), and a cell is occupied when
it or a neighbour has g > threshold (`occupied_cells`). Static shapes throughout, so the
sampler (render.occupied_intervals) stays one jitted program on every device.

Data flow: a density function -> here -> render (the sampler's occupied_fn), train.model
(the grid of the TrainState, refreshed in train.step).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

DensityFn = Callable[[jax.Array], jax.Array]  # points [..., 3] -> density [...]


def cell_index(points: jax.Array, *, resolution: int, bound: float):
  """The grid cell of each point, and whether the point lies inside the grid at all.

  Args:
    points: [..., 3] world positions.
    resolution: G, cells per axis.
    bound: the grid spans [−bound, bound]³.

  Returns:
    (index [..., 3] int32 in [0, G), inside [...] bool).
  """
  unit = (points + bound) / (2.0 * bound)  # [0, 1) inside the grid
  inside = jnp.all((unit >= 0.0) & (unit < 1.0), axis=-1)
  index = jnp.clip(jnp.floor(unit * resolution).astype(jnp.int32), 0, resolution - 1)
  return index, inside


def occupied_cells(grid: jax.Array, *, threshold: float) -> jax.Array:
  """Cells whose value, or a neighbour's (26-neighbourhood), exceeds `threshold`.

  The dilation by one cell makes the mask conservative: a refresh sees one random point per
  cell, and a surface that crosses a cell's corner may be missed there but not in every
  neighbour of that cell.

  Args:
    grid: [G, G, G] decayed maximum density per cell.

  Returns:
    [G, G, G] bool.
  """
  pooled = jax.lax.reduce_window(grid, -jnp.inf, jax.lax.max, (3, 3, 3), (1, 1, 1), "SAME")
  return pooled > threshold


def is_occupied(mask: jax.Array, points: jax.Array, *, bound: float) -> jax.Array:
  """Whether each point lies in an occupied cell (points outside the grid are empty).

  Args:
    mask: [G, G, G] bool, from `occupied_cells`.
    points: [..., 3].

  Returns:
    [...] bool.
  """
  index, inside = cell_index(points, resolution=mask.shape[0], bound=bound)
  return inside & mask[index[..., 0], index[..., 1], index[..., 2]]


def cell_points(key: jax.Array, *, resolution: int, bound: float) -> jax.Array:
  """One uniformly random point in every cell (cell centres when key is None).

  Returns:
    [G, G, G, 3] world positions.
  """
  axis = jnp.arange(resolution, dtype=jnp.float32)
  corner = jnp.stack(jnp.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
  offset = (jnp.full(corner.shape, 0.5) if key is None
            else jax.random.uniform(key, corner.shape))
  return (corner + offset) * (2.0 * bound / resolution) - bound


def refresh_grid(grid: jax.Array, density_fn: DensityFn, key: jax.Array, *, bound: float,
                 decay: float) -> jax.Array:
  """g ← max(decay · g, τ(x)) with x one random point per cell (Instant-NGP §4).

  Args:
    grid: [G, G, G] current values (zeros and decay 0 for a fresh grid).
    density_fn: points [..., 3] -> density [...], evaluated without gradient.

  Returns:
    [G, G, G] refreshed grid.
  """
  points = cell_points(key, resolution=grid.shape[0], bound=bound)
  density = jax.lax.stop_gradient(density_fn(points.reshape(-1, 3))).reshape(grid.shape)
  return jnp.maximum(decay * grid, density.astype(grid.dtype))
