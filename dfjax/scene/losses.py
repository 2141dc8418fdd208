"""Regularisers on the rendered weights (DreamFusion §3.1 and App. A.2).

The SDS loss itself lives in `dfjax.priors.sds`.

Data flow: scene.render's weights and normals -> here -> train.step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def orientation_loss(weights: jax.Array, sample_normals: jax.Array,
                     directions: jax.Array) -> jax.Array:
  """Ref-NeRF's orientation loss, as DreamFusion uses it (Verbin et al. 2022, Eq. 8).

  R_o = Σ_i stopgrad(w_i) · max(0, n_i · d)², which penalises normals that face away from
  the camera (d is the ray direction, pointing away from the camera). Averaged over rays.

  Args:
    weights: [..., num_samples]; sample_normals: [..., num_samples, 3];
    directions: [..., 3] unit ray directions.

  Returns:
    [] loss.
  """
  facing_away = jnp.maximum(jnp.sum(sample_normals * directions[..., None, :], axis=-1), 0.0)
  return jnp.mean(jnp.sum(jax.lax.stop_gradient(weights) * facing_away**2, axis=-1))


def opacity_loss(accumulated_alpha: jax.Array) -> jax.Array:
  """DreamFusion's opacity regulariser sqrt((Σ_i w_i)² + 0.01), averaged over rays (App. A.2).

  Args:
    accumulated_alpha: [...] Σ_i w_i per ray.

  Returns:
    [] loss.
  """
  return jnp.mean(jnp.sqrt(accumulated_alpha**2 + 0.01))
