"""The diffusion noise schedule: alphas_cumprod, the forward process, timesteps and w(t).

DreamFusion (Poole et al. 2022, arXiv:2209.14988 §2 and §3.1) scores renders with a frozen
denoiser trained on the DDPM forward process (Ho et al. 2020). This module holds the pieces of
that process the score distillation loss needs:

  * the cumulative products abar_t = prod_{s<=t} (1 - beta_s) of a beta schedule, with the
    same definitions as diffusers' schedulers (so a Stable Diffusion checkpoint's schedule is
    reproduced exactly);
  * the forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4);
  * timesteps t ~ U(t_min, t_max) (DreamFusion §3.1 and App. A.2 use U(0.02, 0.98));
  * the SDS weighting w(t) (DreamFusion §3.1: w(t) = sigma_t^2 = 1 - abar_t).

Data flow: the bottom of the priors -> priors.sds, priors.bank, priors.sd_checkpoint.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from dfjax.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
WEIGHTINGS = ("sds", "uniform", "sqrt_alpha_one_minus")


def _cosine_betas(num_train_timesteps, *, max_beta=0.999):
  """Betas of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17), capped at `max_beta`.

  abar(s) = cos^2(((s + 0.008) / 1.008) * pi / 2) for s in [0, 1]; beta_i is
  1 - abar((i + 1) / T) / abar(i / T), capped because the ratio reaches 0 at s = 1.

  Args:
    num_train_timesteps: T, the number of discrete timesteps.
    max_beta: the cap on each beta (diffusers' "squaredcos_cap_v2" uses 0.999).

  Returns:
    betas: [T] float64.
  """
  def alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

  ratio = np.array([alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps)
                    for i in range(num_train_timesteps)])
  return np.minimum(1.0 - ratio, max_beta)


def alphas_cumprod_from_config(*, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                               beta_schedule="scaled_linear"):
  """The cumulative products abar_t = prod_{s<=t} (1 - beta_s) of a beta schedule.

  The schedules are diffusers' (and the original checkpoints'):
    "linear":            beta_t evenly spaced from beta_start to beta_end (DDPM, Ho et al. 2020).
    "scaled_linear":     sqrt(beta_t) evenly spaced from sqrt(beta_start) to sqrt(beta_end)
                         (latent diffusion / Stable Diffusion; the defaults are SD's values).
    "squaredcos_cap_v2": the cosine schedule of Nichol & Dhariwal 2021; beta_start and
                         beta_end are ignored.
  Computed in float64 and rounded once to float32.

  Args:
    num_train_timesteps: T, the number of timesteps the denoiser was trained with.
    beta_start: beta_0 (linear schedules).
    beta_end: beta_{T-1} (linear schedules).
    beta_schedule: one of BETA_SCHEDULES.

  Returns:
    alphas_cumprod: [T] float32, decreasing from about 1 to about 0.
  """
  if beta_schedule not in BETA_SCHEDULES:
    raise UserError(f"unknown beta_schedule {beta_schedule!r}; use one of {BETA_SCHEDULES}")
  if int(num_train_timesteps) < 2:
    raise UserError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
  if beta_schedule == "linear":
    betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  elif beta_schedule == "scaled_linear":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                        dtype=np.float64) ** 2
  else:
    betas = _cosine_betas(num_train_timesteps)
  return np.cumprod(1.0 - betas).astype(np.float32)


def add_noise(alphas_cumprod, x0, noise, timesteps):
  """The DDPM forward process q(x_t | x_0) (Ho et al. 2020, Eq. 4; DreamFusion §2).

  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

  Args:
    alphas_cumprod: [T] abar of the schedule.
    x0: [batch, ...] clean samples.
    noise: [batch, ...] eps, same shape as x0.
    timesteps: [batch] int32 indices into alphas_cumprod.

  Returns:
    x_t: [batch, ...], dtype of x0 promoted with float32.
  """
  alpha_bar = jnp.asarray(alphas_cumprod, jnp.float32)[timesteps]
  alpha_bar = alpha_bar.reshape(alpha_bar.shape + (1,) * (x0.ndim - 1))
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def sample_timesteps(key, batch, *, num_train_timesteps, t_range=(0.02, 0.98)):
  """Timesteps t ~ U(t_min, t_max) as integer indices (DreamFusion §3.1, App. A.2).

  A continuous fraction u ~ U(t_min, t_max) is drawn and converted to the index
  floor(u * T), clipped to [0, T - 1]. The indices are therefore uniform over
  {floor(t_min T), ..., ceil(t_max T) - 1}; for T = 1000 and (0.02, 0.98) that is 20..979,
  each with probability 1/960.

  Args:
    key: PRNG key.
    batch: the number of timesteps to draw (static).
    num_train_timesteps: T.
    t_range: (t_min, t_max), fractions of T with 0 <= t_min < t_max <= 1.

  Returns:
    timesteps: [batch] int32.
  """
  t_min, t_max = (float(t) for t in t_range)
  if not 0.0 <= t_min < t_max <= 1.0:
    raise UserError(f"t_range must satisfy 0 <= t_min < t_max <= 1, got {tuple(t_range)}")
  fraction = jax.random.uniform(key, (batch,), jnp.float32, minval=t_min, maxval=t_max)
  timesteps = jnp.floor(fraction * num_train_timesteps).astype(jnp.int32)
  return jnp.clip(timesteps, 0, num_train_timesteps - 1)


def sds_weight(alpha_bar, *, weighting):
  """The SDS weighting w(t) (DreamFusion §3.1, Eq. 3).

  "sds": w = 1 - abar_t = sigma_t^2, the paper's choice; "uniform": w = 1 (the paper reports
  similar results); "sqrt_alpha_one_minus": w = sqrt(abar_t) (1 - abar_t), which further
  down-weights the noisiest timesteps.

  Args:
    alpha_bar: [batch] abar_t of the sampled timesteps.
    weighting: one of WEIGHTINGS.

  Returns:
    w: [batch] float32.
  """
  alpha_bar = jnp.asarray(alpha_bar, jnp.float32)
  if weighting == "sds":
    return 1.0 - alpha_bar
  if weighting == "uniform":
    return jnp.ones_like(alpha_bar)
  if weighting == "sqrt_alpha_one_minus":
    return jnp.sqrt(alpha_bar) * (1.0 - alpha_bar)
  raise UserError(f"unknown SDS weighting {weighting!r}; use one of {WEIGHTINGS}")


def ddim_step(x_t, eps, alpha_bar_t, alpha_bar_prev):
  """One deterministic DDIM update (Song et al. 2021, Eq. 12 with sigma_t = 0).

  x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t);
  x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps.

  Args:
    x_t: [batch, ...] samples at timestep t.
    eps: [batch, ...] the (guided) noise prediction at t.
    alpha_bar_t: abar_t (scalar or broadcastable).
    alpha_bar_prev: abar of the next, less noisy timestep (1 for the final step to x_0).

  Returns:
    x_prev: [batch, ...].
  """
  x0 = (x_t - jnp.sqrt(1.0 - alpha_bar_t) * eps) / jnp.sqrt(alpha_bar_t)
  return jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(1.0 - alpha_bar_prev) * eps
