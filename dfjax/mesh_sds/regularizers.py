"""Mesh regularisers for SDS on vertices: Laplacian smoothness and edge-length preservation.

DreamFusion (arXiv:2209.14988, "after optimisation") pairs SDS on an existing mesh's vertex
positions with regularisers that keep the noisy gradient from tearing the surface. Both act on
the unique undirected edges of the face list (`mesh_edges`).

Data flow: pure functions of vertices [V, 3] and edges [E, 2]; used by `mesh_sds.refine`.
"""
import jax
import jax.numpy as jnp
import numpy as np


def mesh_edges(faces) -> np.ndarray:
  """The undirected edges of a triangle mesh, each once.

  Args:
    faces: [F, 3] int (numpy).

  Returns:
    [E, 2] int32, sorted pairs (i < j), in lexicographic order.
  """
  faces = np.asarray(faces, np.int64)
  pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  return np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int32)


def edge_lengths(vertices, edges) -> jax.Array:
  """Lengths of edges: vertices [V, 3], edges [E, 2] -> [E] (world units)."""
  vectors = vertices[edges[:, 1]] - vertices[edges[:, 0]]
  # The floor keeps the gradient finite for a collapsed edge (length 1e-10, far below any).
  return jnp.sqrt(jnp.maximum(jnp.sum(vectors * vectors, -1), 1e-20))


def uniform_laplacian(vertices, edges) -> jax.Array:
  """Uniform-weight Laplacian coordinates delta_i = v_i - (1/|N(i)|) sum_{j in N(i)} v_j.

  The "umbrella" operator of Laplacian mesh processing (Sorkine 2006, "Differential
  Representations for Mesh Processing", Eq. 1; Nealen et al. 2006, "Laplacian Mesh
  Optimization"): the offset of a vertex from the centroid of its one-ring. It is zero for
  every interior vertex of a flat regular grid and, on a smooth surface, approximates the
  mean-curvature normal times the squared edge length.

  Args:
    vertices: [V, 3]; edges: [E, 2] int, each undirected edge once (`mesh_edges`).

  Returns:
    [V, 3]; zero for a vertex without neighbours.
  """
  num_vertices = vertices.shape[0]
  senders = jnp.concatenate([edges[:, 0], edges[:, 1]])
  receivers = jnp.concatenate([edges[:, 1], edges[:, 0]])
  neighbour_sum = jax.ops.segment_sum(vertices[senders], receivers, num_vertices)
  degree = jax.ops.segment_sum(jnp.ones_like(receivers, jnp.float32), receivers, num_vertices)
  centroid = neighbour_sum / jnp.maximum(degree, 1.0)[:, None]
  return jnp.where((degree > 0)[:, None], vertices - centroid, 0.0)


def laplacian_loss(vertices, edges) -> jax.Array:
  """Laplacian smoothness: mean_i |delta_i|^2 of `uniform_laplacian` (world units^2).

  Args:
    vertices: [V, 3]; edges: [E, 2].

  Returns:
    [] scalar >= 0.
  """
  return jnp.mean(jnp.sum(jnp.square(uniform_laplacian(vertices, edges)), -1))


def edge_length_loss(vertices, edges, rest_lengths) -> jax.Array:
  """Edge-length regulariser: mean_e ((|e| - l_e) / l_e)^2 against rest lengths l_e.

  Relative, so it is dimensionless and equals (s - 1)^2 for a uniform scaling by s.

  Args:
    vertices: [V, 3]; edges: [E, 2]; rest_lengths: [E] > 0, the initial mesh's edge lengths.

  Returns:
    [] scalar >= 0.
  """
  return jnp.mean(jnp.square(edge_lengths(vertices, edges) / rest_lengths - 1.0))
