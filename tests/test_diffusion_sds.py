"""Tests of the noise schedule (dfjax.priors.diffusion) and the SDS loss (dfjax.priors.sds).

References: diffusers' FlaxDDPMScheduler for the schedule and the forward process; for SDS,
the gradient DreamFusion Eq. 3 prescribes, recomputed outside the loss from the same key.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.errors import UserError
from dfjax.priors import diffusion
from dfjax.priors import sds

BATCH, SIZE = 3, 4
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@pytest.fixture(scope="module")
def diffusers_scheduler_cls():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import FlaxDDPMScheduler  # pylint: disable=g-import-not-at-top
  return FlaxDDPMScheduler


@pytest.mark.parametrize("beta_schedule", SCHEDULES)
def test_alphas_cumprod_matches_diffusers(diffusers_scheduler_cls, beta_schedule):
  scheduler = diffusers_scheduler_cls(num_train_timesteps=1000, beta_start=0.00085,
                                      beta_end=0.012, beta_schedule=beta_schedule)
  expected = np.asarray(scheduler.create_state().common.alphas_cumprod)
  actual = diffusion.alphas_cumprod_from_config(beta_schedule=beta_schedule)
  assert actual.dtype == np.float32 and actual.shape == (1000,)
  # diffusers accumulates the product in float32, we in float64: they differ by ~5e-7.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6)


def test_add_noise_matches_diffusers(diffusers_scheduler_cls):
  scheduler = diffusers_scheduler_cls(num_train_timesteps=1000, beta_start=0.00085,
                                      beta_end=0.012, beta_schedule="scaled_linear")
  state = scheduler.create_state()
  rng = np.random.default_rng(0)
  timesteps = np.array([0, 1, 20, 500, 979, 999], np.int32)
  x0 = rng.uniform(-1, 1, (6, 5, 5, 4)).astype(np.float32)
  noise = rng.standard_normal((6, 5, 5, 4)).astype(np.float32)
  expected = scheduler.add_noise(state, jnp.asarray(x0), jnp.asarray(noise),
                                 jnp.asarray(timesteps))
  actual = diffusion.add_noise(diffusion.alphas_cumprod_from_config(), x0, noise, timesteps)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=5e-6)


def test_bad_schedule_and_weighting_are_user_errors():
  with pytest.raises(UserError, match="beta_schedule"):
    diffusion.alphas_cumprod_from_config(beta_schedule="cosine")
  with pytest.raises(UserError, match="weighting"):
    diffusion.sds_weight(jnp.ones(2), weighting="snr")
  with pytest.raises(UserError, match="t_range"):
    diffusion.sample_timesteps(jax.random.key(0), 2, num_train_timesteps=1000,
                               t_range=(0.5, 0.2))


def test_sample_timesteps_is_uniform_over_documented_indices():
  timesteps = np.asarray(diffusion.sample_timesteps(
      jax.random.key(0), 200_000, num_train_timesteps=1000, t_range=(0.02, 0.98)))
  assert timesteps.dtype == np.int32
  assert timesteps.min() == 20 and timesteps.max() == 979
  counts = np.bincount(timesteps, minlength=1000)[20:980]
  # Uniform over 960 indices: each count is Binomial(2e5, 1/960), mean 208, sd 14.4;
  # 6 sd either side bounds all 960 counts with overwhelming probability.
  assert np.all(np.abs(counts - 200_000 / 960) < 6 * 14.5)


def test_sds_weights():
  alpha_bar = jnp.array([0.9, 0.5, 0.01])
  np.testing.assert_allclose(diffusion.sds_weight(alpha_bar, weighting="sds"), 1 - alpha_bar)
  np.testing.assert_allclose(diffusion.sds_weight(alpha_bar, weighting="uniform"), 1.0)
  np.testing.assert_allclose(diffusion.sds_weight(alpha_bar, weighting="sqrt_alpha_one_minus"),
                             np.sqrt(alpha_bar) * (1 - alpha_bar), rtol=1e-6)


def test_guidance_scale_zero_is_unconditional_and_one_is_conditional():
  eps_cond, eps_uncond = jnp.full((2, 3), 2.0), jnp.full((2, 3), -1.0)
  np.testing.assert_array_equal(
      sds.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale=0.0), eps_uncond)
  np.testing.assert_array_equal(
      sds.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale=1.0), eps_cond)
  np.testing.assert_allclose(
      sds.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale=100.0), 299.0)


class ToyPrior:
  """A prior with a known, nonlinear noise prediction and an optional linear encoder.

  encode: x0 = (2 images - 1) @ params["encoder"]  ([3, channels]).
  predict_noise: eps_cond = tanh(x_t * params["scale"]) + view_bucket, eps_uncond = 0.5 x_t,
  then params["poison"] (0 or NaN/inf per element) is added to eps_cond; output in `dtype`.
  """

  def __init__(self, *, channels, dtype=jnp.float32, poison=None):
    self.image_size = SIZE
    self.alphas_cumprod = diffusion.alphas_cumprod_from_config()
    rng = np.random.default_rng(1)
    encoder = (np.eye(3, channels) if channels == 3
               else rng.standard_normal((3, channels)))
    shape = (BATCH, SIZE, SIZE, channels)
    self.params = {"encoder": jnp.asarray(encoder, jnp.float32),
                   "scale": jnp.asarray(rng.uniform(0.5, 2.0, shape[1:]), jnp.float32),
                   "poison": jnp.zeros(shape) if poison is None else jnp.asarray(poison)}
    self.dtype = dtype

  def encode(self, params, images):
    return (2.0 * images - 1.0) @ params["encoder"]

  def eps(self, params, x_t, view_bucket):
    eps_cond = jnp.tanh(x_t * params["scale"]) + view_bucket[:, None, None, None]
    eps_cond = eps_cond + params["poison"]
    return eps_cond.astype(self.dtype), (0.5 * x_t).astype(self.dtype)

  def predict_noise(self, params, x_t, timesteps, view_bucket):
    del timesteps
    return self.eps(params, x_t, view_bucket)


def expected_x0_gradient(prior, images, view_bucket, key, *, guidance_scale, weighting):
  """d loss / d x0 = w(t) (eps_hat - eps) / B (DreamFusion Eq. 3), recomputed from the key."""
  key_t, key_noise = jax.random.split(key)
  x0 = prior.encode(prior.params, images)
  timesteps = diffusion.sample_timesteps(key_t, BATCH, num_train_timesteps=1000)
  noise = jax.random.normal(key_noise, x0.shape)
  x_t = diffusion.add_noise(prior.alphas_cumprod, x0, noise, timesteps)
  eps_cond, eps_uncond = prior.eps(prior.params, x_t, view_bucket)
  eps_hat = (eps_uncond.astype(jnp.float32)
             + guidance_scale * (eps_cond.astype(jnp.float32) - eps_uncond.astype(jnp.float32)))
  alpha_bar = jnp.asarray(prior.alphas_cumprod)[timesteps]
  weight = {"sds": 1 - alpha_bar, "uniform": jnp.ones_like(alpha_bar)}[weighting]
  return weight[:, None, None, None] * (eps_hat - noise) / BATCH, timesteps


def run_sds(prior, images, view_bucket, key, *, guidance_scale, weighting):
  """One compiled program: jax.grad of the SDS surrogate and the Eq. 3 reference.

  Returns:
    ((d loss / d images, d loss / d prior params), SDSOutput, (reference dL/dx0, timesteps)).
  """
  def loss(images, params):
    out = sds.score_distillation(prior, params, images, view_bucket, key,
                                 guidance_scale=guidance_scale, weighting=weighting)
    return out.loss, out

  def both(images, params):
    grads, out = jax.grad(loss, argnums=(0, 1), has_aux=True)(images, params)
    return grads, out, expected_x0_gradient(prior, images, view_bucket, key,
                                            guidance_scale=guidance_scale, weighting=weighting)
  return jax.jit(both)(images, prior.params)


@pytest.fixture(scope="module")
def inputs():
  images = np.random.default_rng(2).uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
  return images, np.array([0, 2, 3], np.int32), jax.random.key(3)


@pytest.mark.parametrize("channels,guidance_scale,weighting",
                         [(3, 7.5, "sds"), (4, 100.0, "uniform")])
def test_sds_gradient_matches_eq3(inputs, channels, guidance_scale, weighting):
  images, view_bucket, key = inputs
  prior = ToyPrior(channels=channels)
  (grad_images, grad_params), out, (grad_x0, timesteps) = run_sds(
      prior, images, view_bucket, key, guidance_scale=guidance_scale, weighting=weighting)
  np.testing.assert_array_equal(out.timesteps, timesteps)
  # Chain rule through x0 = (2 images - 1) @ encoder: d/d images = 2 (dL/dx0) @ encoder^T.
  expected = 2.0 * grad_x0 @ prior.params["encoder"].T
  np.testing.assert_allclose(grad_images, expected, rtol=1e-5, atol=1e-6 * guidance_scale)
  np.testing.assert_allclose(out.grad_norm, BATCH * np.linalg.norm(grad_x0), rtol=1e-5)
  assert int(out.num_nonfinite) == 0
  # The frozen prior gets no gradient, although encode and predict_noise depend on it.
  for leaf in jax.tree.leaves(grad_params):
    np.testing.assert_array_equal(leaf, 0.0)


def test_sds_gradient_is_float32_for_bf16_prior(inputs):
  images, view_bucket, key = inputs
  prior = ToyPrior(channels=3, dtype=jnp.bfloat16)
  (grad_images, _), out, (grad_x0, _) = run_sds(prior, images, view_bucket, key,
                                                 guidance_scale=100.0, weighting="sds")
  assert grad_images.dtype == jnp.float32 and out.loss.dtype == jnp.float32
  # Guidance amplifies eps_cond - eps_uncond 100x; computed in bf16 it would be off by
  # ~100 * 2^-8 relative. In float32 from the same bf16 inputs it matches to float32 rounding.
  np.testing.assert_allclose(grad_images, 2.0 * grad_x0, rtol=1e-5, atol=1e-4)


def test_nonfinite_gradient_entries_are_zeroed_and_counted(inputs):
  images, view_bucket, key = inputs
  poison = np.zeros((BATCH, SIZE, SIZE, 3), np.float32)
  poison[0, 1, 2, 0] = np.nan
  poison[2, 3, 3, 1] = np.inf
  poison[2, 0, 0, 2] = np.nan
  prior = ToyPrior(channels=3, poison=poison)
  (grad_images, _), out, (grad_x0, _) = run_sds(prior, images, view_bucket, key,
                                                 guidance_scale=100.0, weighting="sds")
  assert int(out.num_nonfinite) == 3
  assert np.isfinite(float(out.loss)) and np.isfinite(float(out.grad_norm))
  bad = ~np.isfinite(poison)
  np.testing.assert_array_equal(np.asarray(grad_images)[bad], 0.0)
  np.testing.assert_allclose(np.asarray(grad_images)[~bad], 2.0 * np.asarray(grad_x0)[~bad],
                             rtol=1e-5, atol=1e-4)
