"""Mip-NeRF encodings against Monte Carlo estimates over the frustum and over the Gaussian."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.scene import mip

NUM_MC = 400_000


def _frustum_points(rng, direction, t0, t1, radius, num):
  """Points uniform in volume inside the conical frustum t0 < t < t1, radius r·t (planar caps).

  The cross-section at t has area π r² t², so t has density ∝ t² on [t0, t1].
  """
  t = np.cbrt(t0**3 + rng.uniform(size=num) * (t1**3 - t0**3))
  rho = radius * t * np.sqrt(rng.uniform(size=num))
  phi = rng.uniform(0, 2 * np.pi, size=num)
  d = direction / np.linalg.norm(direction)
  e1 = np.cross(d, [0.0, 0.0, 1.0] if abs(d[2]) < 0.9 else [1.0, 0.0, 0.0])
  e1 /= np.linalg.norm(e1)
  e2 = np.cross(d, e1)
  return (t[:, None] * d + rho[:, None] * (np.cos(phi)[:, None] * e1
                                           + np.sin(phi)[:, None] * e2))


def _moments_of_frustum(direction, t0, t1, radius):
  means, covs = mip.conical_frustum_to_gaussian(
      jnp.asarray(direction, jnp.float32), jnp.array([t0], jnp.float32),
      jnp.array([t1], jnp.float32), jnp.array([radius], jnp.float32))
  return np.asarray(means[0], np.float64), np.asarray(covs[0], np.float64)


@pytest.mark.parametrize("t0, t1, radius", [(1.0, 1.2, 0.05), (0.3, 1.5, 0.2), (2.0, 2.05, 0.01)])
def test_frustum_gaussian_matches_samples(t0, t1, radius):
  """Eqs. 7-8 give the exact mean and covariance of points uniform in the frustum."""
  rng = np.random.default_rng(0)
  direction = np.array([0.3, -0.5, 0.8])
  direction /= np.linalg.norm(direction)
  points = _frustum_points(rng, direction, t0, t1, radius, NUM_MC)
  mean, cov = _moments_of_frustum(direction, t0, t1, radius)
  sample_mean = points.mean(axis=0)
  sample_cov = np.cov(points.T)
  # Five standard errors of the sample mean and of the sample covariance entries.
  mean_se = np.sqrt(np.diag(sample_cov) / NUM_MC)
  np.testing.assert_array_less(np.abs(sample_mean - mean), 5 * mean_se + 1e-6)
  centred = points - sample_mean
  cov_se = np.sqrt(np.var(centred[:, :, None] * centred[:, None, :], axis=0) / NUM_MC)
  np.testing.assert_array_less(np.abs(sample_cov - cov), 5 * cov_se + 1e-6)


def test_ipe_equals_expectation_over_the_frustum():
  """IPE of the frustum's Gaussian equals the mean PE of points inside the frustum.

  The Gaussian matches only the frustum's first two moments, so the two agree while ω·σ is
  small (σ the standard deviation along the axis in question); here to 0.01 wherever
  ω·σ ≤ 0.75, which for a pixel-sized frustum at unit distance covers all but the paper's top
  frequency on the axis most aligned with the ray.
  """
  rng = np.random.default_rng(1)
  direction = np.array([0.6, 0.0, -0.8])
  t0, t1, radius = 1.0, 1.03, 0.009
  points = _frustum_points(rng, direction, t0, t1, radius, NUM_MC)
  origin = np.array([0.1, -0.2, 0.3])
  mean, cov = _moments_of_frustum(direction, t0, t1, radius)
  ipe = mip.integrated_pos_enc(jnp.asarray(origin + mean, jnp.float32),
                               jnp.asarray(np.diag(cov), jnp.float32), min_deg=0, max_deg=8)
  scales = 2.0 ** np.arange(0, 8)
  scaled = ((origin + points)[:, None, :] * scales[:, None]).reshape(NUM_MC, -1)
  monte_carlo = np.concatenate([np.sin(scaled).mean(0), np.cos(scaled).mean(0)])
  omega_sigma = (np.sqrt(np.diag(cov))[None, :] * scales[:, None]).reshape(-1)
  valid = np.tile(omega_sigma <= 0.75, 2)
  assert valid.sum() >= 44  # of 48 features
  # Monte Carlo standard error is at most 1/sqrt(N) = 0.0016.
  np.testing.assert_allclose(np.asarray(ipe)[valid], monte_carlo[valid], atol=0.01)


def test_ipe_equals_expectation_over_the_gaussian():
  """E[sin(ωx)] = sin(ωμ)exp(−ω²σ²/2) for x ~ N(μ, σ²): checked where the attenuation bites."""
  rng = np.random.default_rng(2)
  mu = np.array([0.4, -0.7, 0.2])
  var = np.array([0.05, 0.002, 0.01])
  x = mu + np.sqrt(var) * rng.standard_normal((NUM_MC, 3))
  scales = 2.0 ** np.arange(0, 6)
  scaled = (x[:, None, :] * scales[:, None]).reshape(NUM_MC, -1)
  monte_carlo = np.concatenate([np.sin(scaled).mean(0), np.cos(scaled).mean(0)])
  ipe = mip.integrated_pos_enc(jnp.asarray(mu, jnp.float32), jnp.asarray(var, jnp.float32),
                               min_deg=0, max_deg=6)
  np.testing.assert_allclose(np.asarray(ipe), monte_carlo, atol=5 / math.sqrt(NUM_MC))
  # Without the attenuation the encoding would differ: the check has power.
  plain = mip.positional_encoding(jnp.asarray(mu, jnp.float32), min_deg=0, max_deg=6,
                                  append_identity=False)
  assert np.max(np.abs(np.asarray(plain) - monte_carlo)) > 0.1


def test_positional_encoding_layout():
  x = jnp.array([[0.25, -1.0, 2.0]])
  out = np.asarray(mip.positional_encoding(x, min_deg=0, max_deg=2))
  expected = np.concatenate([
      [0.25, -1.0, 2.0],
      np.sin([0.25, -1.0, 2.0, 0.5, -2.0, 4.0]),
      np.cos([0.25, -1.0, 2.0, 0.5, -2.0, 4.0])])
  np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_the_empty_interval_at_the_origin_has_zero_moments_not_nan():
  t_mean, t_var, r_var = mip.conical_frustum_moments(jnp.zeros(3), jnp.zeros(3),
                                                     jnp.full((1,), 1e-3))
  for moment in (t_mean, t_var, r_var):
    np.testing.assert_array_equal(np.asarray(moment), 0.0)
  grad = jax.grad(lambda t: sum(jnp.sum(m) for m in mip.conical_frustum_moments(
      t, t, jnp.full((1,), 1e-3))))(jnp.zeros(3))
  assert np.all(np.isfinite(np.asarray(grad)))
  # A nonempty interval is unchanged by the guard: the closed form at t = [1, 3], radius 0.1.
  t_mean, t_var, r_var = mip.conical_frustum_moments(jnp.array([1.0]), jnp.array([3.0]),
                                                     jnp.array([0.1]))
  mu, hw = 2.0, 1.0
  np.testing.assert_allclose(float(t_mean[0]), mu + 2 * mu * hw**2 / (3 * mu**2 + hw**2),
                             rtol=1e-6)
