"""Score Distillation Sampling (DreamFusion, Poole et al. 2022, arXiv:2209.14988 §3.1).

The loss that turns a frozen text-conditioned denoiser into a gradient for a 3D scene: noise
the render, ask the prior which noise it sees, and push the render along the difference between
the prior's answer and the noise actually added.

Data flow: priors.diffusion and a prior (bank, stable_diffusion) -> here -> train.step,
mesh_sds.refine.
"""
import jax
import jax.numpy as jnp
from flax import struct

from dfjax.priors import diffusion


def classifier_free_guidance(eps_cond, eps_uncond, *, guidance_scale):
  """Classifier-free guidance (Ho & Salimans 2022; DreamFusion §2).

  eps_hat = eps_uncond + s (eps_cond - eps_uncond). DreamFusion writes it as
  (1 + omega) eps_cond - omega eps_uncond, which is this with s = 1 + omega; s = 0 gives the
  unconditional prediction and s = 1 the conditional one.

  Args:
    eps_cond: [batch, h, w, c] noise predicted with the text condition.
    eps_uncond: [batch, h, w, c] noise predicted with the empty condition.
    guidance_scale: s.

  Returns:
    eps_hat: [batch, h, w, c].
  """
  return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


@struct.dataclass
class SDSOutput:
  """What one SDS evaluation returns.

  Attributes:
    loss: scalar surrogate; only its gradient means anything (see `score_distillation`).
    timesteps: [batch] int32, the sampled diffusion timesteps.
    num_nonfinite: int32 scalar, entries of the SDS gradient that were NaN/inf and set to 0.
    grad_norm: scalar, the L2 norm over all elements of the per-element SDS gradient
      g = w(t) (eps_hat - eps) (after zeroing non-finite entries, before the 1/batch factor).
  """
  loss: jax.Array
  timesteps: jax.Array
  num_nonfinite: jax.Array
  grad_norm: jax.Array


def _zero_nonfinite(values):
  """Replaces NaN/inf entries by 0.

  Args:
    values: [...] float array.

  Returns:
    (cleaned [...], count int32 scalar of replaced entries).
  """
  finite = jnp.isfinite(values)
  return jnp.where(finite, values, 0.0), jnp.sum(~finite).astype(jnp.int32)


def score_distillation(prior, prior_params, images, view_bucket, key, *, guidance_scale=100.0,
                       t_range=(0.02, 0.98), weighting="sds"):
  """The SDS loss of a batch of renders (DreamFusion §3.1, Eq. 3).

  Eq. 3 is a gradient, not a loss:
      grad_theta L_SDS = E_{t, eps}[ w(t) (eps_hat(x_t; y, t) - eps) dx/dtheta ],
  the gradient of the denoiser's training loss with the denoiser's Jacobian
  d eps_hat / d x_t dropped. It is realised by the surrogate of the paper's pseudocode,
  grad(w * dot(stopgrad(eps_hat - eps), x)):
      L(theta) = (1/B) sum_b sum_elements stopgrad(g_b) * x0_b(theta),
      g_b = w(t_b) (eps_hat_b - eps_b).
  Because g_b is a constant to autodiff, dL/dx0_b = g_b / B exactly, and the chain rule
  through x0 = encode(render(theta)) gives Eq. 3 averaged over the batch. The prior's weights
  and x_t are stop-gradient'ed, so the U-Net is never differentiated. The loss value itself is
  not a divergence and is only useful for debugging; monitor `grad_norm` instead.

  Args:
    prior: an object with the prior protocol (image_size, alphas_cumprod, encode,
      predict_noise).
    prior_params: the prior's frozen pytree; enters under stop_gradient.
    images: [batch, H, W, 3] renders in [0, 1], H == W == prior.image_size.
    view_bucket: [batch] int32 view bucket of each render's camera (0 front, 1 side, 2 back,
      3 overhead), for view-dependent conditioning.
    key: PRNG key; split into (timestep key, noise key) in that order.
    guidance_scale: s of `classifier_free_guidance` (the paper's omega = 100).
    t_range: (t_min, t_max) fractions of the training timesteps.
    weighting: w(t), see `diffusion.sds_weight`.

  Returns:
    SDSOutput.
  """
  key_t, key_noise = jax.random.split(key)
  frozen_params = jax.lax.stop_gradient(prior_params)
  alphas_cumprod = jnp.asarray(prior.alphas_cumprod, jnp.float32)
  x0 = prior.encode(frozen_params, images).astype(jnp.float32)
  batch = x0.shape[0]
  timesteps = diffusion.sample_timesteps(
      key_t, batch, num_train_timesteps=alphas_cumprod.shape[0], t_range=t_range)
  noise = jax.random.normal(key_noise, x0.shape, jnp.float32)
  x_t = jax.lax.stop_gradient(diffusion.add_noise(alphas_cumprod, x0, noise, timesteps))
  eps_cond, eps_uncond = prior.predict_noise(frozen_params, x_t, timesteps, view_bucket)
  eps_hat = classifier_free_guidance(eps_cond.astype(jnp.float32),
                                     eps_uncond.astype(jnp.float32),
                                     guidance_scale=guidance_scale)
  weight = diffusion.sds_weight(alphas_cumprod[timesteps], weighting=weighting)
  weight = weight.reshape((batch,) + (1,) * (x0.ndim - 1))
  grad, num_nonfinite = _zero_nonfinite(weight * (eps_hat - noise))
  grad = jax.lax.stop_gradient(grad)
  loss = jnp.sum(grad * x0) / batch
  return SDSOutput(loss=loss, timesteps=timesteps, num_nonfinite=num_nonfinite,
                   grad_norm=jnp.sqrt(jnp.sum(jnp.square(grad))))
