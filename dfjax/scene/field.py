"""The scene's neural field: density and albedo of a point (DreamFusion §3.1, App. A.2).

A Mip-NeRF 360-style MLP (Barron et al. 2022): integrated positional encoding of the point
(Mip-NeRF Eq. 14) with DreamFusion's isotropic covariance λ_Σ·I, five residual blocks of 128
units with layer norm and swish, and two heads:
  density τ = exp(raw_τ + blob(x)),  blob(x) = λ_τ·exp(−‖x‖² / (2σ_τ²))   (App. A.2)
  albedo ρ = sigmoid(raw_ρ).
Normals n = −∇τ / ‖∇τ‖ (§3.1) are taken from the density by `density_normals`.

Data flow: scene.mip -> here -> scene.render.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfjax.scene import mip

# exp() of pre-activations above this overflows float32 soon after; 15 gives τ ≈ 3e6 per
# world unit, far denser than any surface needs, so clamping changes no useful gradient.
_MAX_LOG_DENSITY = 15.0


def density_blob(points: jax.Array, *, blob_density: float, blob_radius: float) -> jax.Array:
  """DreamFusion's initial density blob λ_τ·exp(−‖x‖²/(2σ_τ²)) (App. A.2).

  Args:
    points: [..., 3] world positions.

  Returns:
    [...] pre-activation density offset.
  """
  return blob_density * jnp.exp(-jnp.sum(points**2, axis=-1) / (2.0 * blob_radius**2))


class ResidualMLP(nn.Module):
  """Residual MLP: input projection, pre-norm residual blocks (LayerNorm → swish → Dense)."""
  num_blocks: int = 5
  hidden_units: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Dense(self.hidden_units, name="input")(x)
    for i in range(self.num_blocks):
      y = nn.Dense(self.hidden_units, name=f"block_{i}")(nn.swish(nn.LayerNorm()(h)))
      h = h + y
    return nn.swish(nn.LayerNorm()(h))


class NeRFField(nn.Module):
  """Density and albedo of points (DreamFusion App. A.2).

  Attributes:
    num_blocks, hidden_units: residual MLP size (paper: 5 × 128).
    min_deg, max_deg: integrated positional encoding frequencies 2^l, l in [min, max)
      (paper: L = 8).
    blob_density, blob_radius: λ_τ and σ_τ of the density blob (paper: 5 and 0.2).
    density_bias: added to the density pre-activation everywhere (paper: 0).
  """
  num_blocks: int = 5
  hidden_units: int = 128
  min_deg: int = 0
  max_deg: int = 8
  blob_density: float = 5.0
  blob_radius: float = 0.2
  density_bias: float = 0.0

  @nn.compact
  def __call__(self, means: jax.Array, cov_diag: jax.Array):
    """Evaluate the field.

    Args:
      means: [..., 3] world positions (Gaussian means).
      cov_diag: [..., 3] variances of the Gaussian around each position.

    Returns:
      density: [...] volume density τ (per world unit).
      albedo: [..., 3] in (0, 1).
    """
    # The points as one flat batch [N, 3]: with [rays, samples, 3] XLA:CPU ran the MLP's
    # products and their gradients about 3x slower (same FLOPs; bench.md).
    batch_shape = means.shape[:-1]
    means, cov_diag = means.reshape(-1, 3), cov_diag.reshape(-1, 3)
    features = mip.integrated_pos_enc(means, cov_diag, min_deg=self.min_deg,
                                      max_deg=self.max_deg)
    h = ResidualMLP(self.num_blocks, self.hidden_units)(features)
    raw = nn.Dense(4, name="output")(h)
    log_density = raw[:, 0] + self.density_bias + density_blob(
        means, blob_density=self.blob_density, blob_radius=self.blob_radius)
    density = jnp.exp(jnp.minimum(log_density, _MAX_LOG_DENSITY))
    albedo = nn.sigmoid(raw[:, 1:])
    return density.reshape(batch_shape), albedo.reshape(batch_shape + (3,))


FieldFn = Callable[[jax.Array, jax.Array], tuple]


def _safe_normalize(v: jax.Array, eps: float = 1e-20) -> jax.Array:
  # eps: a zero gradient (empty space) gives a zero normal instead of NaN.
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


def density_normals(field_fn: FieldFn, means: jax.Array, cov_diag: jax.Array, *,
                    method: str = "autodiff", fd_step: float = 1e-3):
  """Field values and normals n = −∇τ/‖∇τ‖ (DreamFusion §3.1).

  Args:
    field_fn: (means [..., 3], cov_diag [..., 3]) -> (density [...], albedo [..., 3]); each
      point's output must depend on that point alone.
    means, cov_diag: [..., 3].
    method: "autodiff" (exact gradient), "finite_difference" (central differences of
      step `fd_step` in world units along each axis; six more field evaluations) or "none"
      (zero normals, for albedo-only renders).

  Returns:
    density [...], albedo [..., 3], normals [..., 3] (unit length where ∇τ ≠ 0).
  """
  if method == "autodiff":
    def summed_density(m):
      density, albedo = field_fn(m, cov_diag)
      return jnp.sum(density), (density, albedo)
    gradient, (density, albedo) = jax.grad(summed_density, has_aux=True)(means)
  elif method == "finite_difference":
    density, albedo = field_fn(means, cov_diag)
    offsets = fd_step * jnp.eye(3)
    plus = [field_fn(means + o, cov_diag)[0] for o in offsets]
    minus = [field_fn(means - o, cov_diag)[0] for o in offsets]
    gradient = jnp.stack([(p - m) / (2 * fd_step) for p, m in zip(plus, minus)], axis=-1)
  elif method == "none":  # albedo-only renders that need no normals: one field evaluation
    density, albedo = field_fn(means, cov_diag)
    return density, albedo, jnp.zeros_like(means)
  else:
    raise ValueError(
        f"normals method must be 'autodiff', 'finite_difference' or 'none', got {method!r}")
  return density, albedo, -_safe_normalize(gradient)
