"""Mip-NeRF encodings: conical frustums as Gaussians and integrated positional encoding.

Barron et al., "Mip-NeRF: A Multiscale Representation for Anti-Aliasing Neural Radiance
Fields", ICCV 2021 (arXiv:2103.13415), §3.1. DreamFusion (arXiv:2209.14988, App. A.2) keeps
the integrated encoding but replaces the frustum covariance by an isotropic one, λ_Σ·I, whose
scale is annealed from coarse to fine; both are here.

Data flow: the bottom of the scene -> scene.field, scene.background, scene.render.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def conical_frustum_moments(t0: jax.Array, t1: jax.Array, base_radius: jax.Array):
  """Mean and variances of a conical frustum along and across its axis (Mip-NeRF Eq. 7).

  Uses the numerically stable parametrisation by the interval's midpoint t_μ and half-width
  t_δ (Mip-NeRF, supplement Eq. 7 rewritten in t_μ, t_δ).

  Args:
    t0, t1: [..., num_samples] interval ends along a unit-length axis.
    base_radius: [..., 1] cone radius per unit distance.

  Returns:
    t_mean: [..., num_samples] mean distance along the axis.
    t_var: [..., num_samples] variance along the axis.
    r_var: [..., num_samples] variance along each of the two perpendicular directions.
  """
  mu = 0.5 * (t0 + t1)
  hw = 0.5 * (t1 - t0)
  mu2, hw2 = mu**2, hw**2
  denom = 3.0 * mu2 + hw2
  # denom = 0 only for the empty interval t0 = t1 = 0 (a ray that misses the bounding sphere
  # from outside gets near = far = 0), where every numerator below is 0 too: its moments are
  # 0, not 0/0. Replacing the denominator (not the result) keeps the gradient finite as well.
  denom = jnp.where(denom > 0, denom, 1.0)
  t_mean = mu + 2.0 * mu * hw2 / denom
  t_var = hw2 / 3.0 - (4.0 / 15.0) * hw2**2 * (12.0 * mu2 - hw2) / denom**2
  r_var = base_radius**2 * (mu2 / 4.0 + (5.0 / 12.0) * hw2 - (4.0 / 15.0) * hw2**2 / denom)
  return t_mean, t_var, r_var


def lift_gaussian(directions: jax.Array, t_mean: jax.Array, t_var: jax.Array,
                  r_var: jax.Array):
  """Lift 1-D frustum moments to a 3-D Gaussian around the ray (Mip-NeRF Eq. 8).

  Σ = σ_t² d dᵀ + σ_r² (I − d dᵀ / ‖d‖²).

  Args:
    directions: [..., 3] ray directions.
    t_mean, t_var, r_var: [..., num_samples].

  Returns:
    means: [..., num_samples, 3] offsets from the ray origin.
    covs: [..., num_samples, 3, 3] full covariances.
  """
  d = directions[..., None, :]
  means = d * t_mean[..., None]
  outer = d[..., :, None] * d[..., None, :]
  eye = jnp.eye(3)
  d_norm2 = jnp.sum(directions**2, axis=-1)[..., None, None, None]
  covs = (t_var[..., None, None] * outer
          + r_var[..., None, None] * (eye - outer / d_norm2))
  return means, covs


def conical_frustum_to_gaussian(directions: jax.Array, t0: jax.Array, t1: jax.Array,
                                base_radius: jax.Array):
  """Gaussian approximation of the conical frustums along rays (Mip-NeRF Eqs. 7-8).

  Args:
    directions: [..., 3] ray directions (the frustum's axis; t measured in its units).
    t0, t1: [..., num_samples] interval ends.
    base_radius: [..., 1] cone radius at t = 1.

  Returns:
    means: [..., num_samples, 3] relative to the ray origin; covs: [..., num_samples, 3, 3].
  """
  return lift_gaussian(directions, *conical_frustum_moments(t0, t1, base_radius))


def positional_encoding(x: jax.Array, *, min_deg: int, max_deg: int,
                        append_identity: bool = True) -> jax.Array:
  """NeRF positional encoding γ(x) = [sin(2^l x), cos(2^l x)], l in [min_deg, max_deg).

  Args:
    x: [..., D] inputs.

  Returns:
    [..., D·(append_identity + 2·(max_deg − min_deg))] features.
  """
  scales = 2.0 ** jnp.arange(min_deg, max_deg)
  scaled = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
  features = jnp.sin(jnp.concatenate([scaled, scaled + 0.5 * jnp.pi], axis=-1))
  return jnp.concatenate([x, features], axis=-1) if append_identity else features


def integrated_pos_enc(means: jax.Array, cov_diag: jax.Array, *, min_deg: int,
                       max_deg: int) -> jax.Array:
  """Integrated positional encoding E[γ(x)], x ~ N(μ, diag(σ²)) (Mip-NeRF Eq. 14).

  E[sin(ω x)] = sin(ω μ) exp(−ω² σ² / 2), and likewise for cos.

  Args:
    means: [..., 3] Gaussian means.
    cov_diag: [..., 3] diagonal of the covariance (variances).

  Returns:
    [..., 2·3·(max_deg − min_deg)] features: all sines, then all cosines.

  ω μ and ω² σ² are products with a [3, 3·L] basis of powers of two (the transposed matrix P
  with which Mip-NeRF writes the encoding's mean, μ_γ = P μ), exact in float32 at full
  matmul precision. As matmuls they are computed once per sample: written as broadcast
  products, XLA fused them, and everything that computes μ (the ray samples, their random
  offsets), into the sine, cosine and concatenation of every feature, recomputing each
  sample's position 6·L times (about a third of the toy train step in a profile;
  experiments/results/bench.md).
  """
  scales = 2.0 ** jnp.arange(min_deg, max_deg)
  # basis[c, 3 l + c] = 2^l: feature 3 l + c is coordinate c at frequency 2^l.
  basis = jnp.kron(scales[None, :], jnp.eye(3, dtype=scales.dtype)).astype(means.dtype)
  scaled_mean = jnp.matmul(means, basis, precision=jax.lax.Precision.HIGHEST)
  scaled_var = jnp.matmul(cov_diag, basis * basis, precision=jax.lax.Precision.HIGHEST)
  attenuation = jnp.exp(-0.5 * scaled_var)
  return jnp.concatenate([jnp.sin(scaled_mean) * attenuation,
                          jnp.cos(scaled_mean) * attenuation], axis=-1)
