"""Tests of the image bank format and the closed-form (ideal denoiser) prior.

References: a float64 numpy brute force of the ideal denoiser (an explicit loop over images
and an explicit softmax), banks whose answer is known by construction, and the bank format's
stated rules.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib
from dfjax.priors import diffusion
from dfjax.priors import sds

SIZE = 4
# (azimuth, elevation) of a camera well inside each view bucket: front, side, back, overhead.
BUCKET_ANGLES = ((10.0, 15.0), (-100.0, 5.0), (170.0, 30.0), (40.0, 75.0))


def c2w_at(azimuth_deg, elevation_deg, distance):
  """[4, 4] camera-to-world matrix with the camera centre at the given spherical position."""
  a, e = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  c2w = np.eye(4, dtype=np.float32)
  c2w[:3, 3] = distance * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
  return c2w


def make_bank(images, prompts, buckets, *, distances=None, fovs=None):
  """A Bank with one camera per image in the given view bucket."""
  n = len(images)
  distances = np.full(n, 1.5) if distances is None else np.asarray(distances)
  fovs = np.full(n, 50.0) if fovs is None else np.asarray(fovs)
  c2w = np.stack([c2w_at(*BUCKET_ANGLES[b], d) for b, d in zip(buckets, distances)])
  return bank_lib.Bank(images=np.asarray(images, np.uint8), prompts=np.array(prompts),
                       c2w=c2w, fov_deg=fovs.astype(np.float32))


@pytest.fixture(scope="module")
def random_bank():
  """Ten random 4x4 images, two captions, cameras in all buckets but caption 'b' overhead."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, SIZE, SIZE, 3))
  prompts = ["a"] * 6 + ["b"] * 4
  buckets = [0, 0, 1, 2, 3, 3, 0, 1, 1, 2]
  return make_bank(images, prompts, buckets, distances=rng.uniform(1.2, 1.8, 10),
                   fovs=rng.uniform(40, 60, 10))


def brute_force_eps(x_t, alpha_bar, images, selected):
  """eps_hat of the ideal denoiser in float64, one image at a time (EDM App. B.3).

  Args:
    x_t: [D]; alpha_bar: scalar; images: [N, D] in [-1, 1]; selected: indices to average over.

  Returns:
    ([D] eps_hat, [len(selected)] posterior weights).
  """
  exponents = np.array([-np.sum((x_t - np.sqrt(alpha_bar) * images[i])**2)
                        / (2 * (1 - alpha_bar)) for i in selected])
  weights = np.exp(exponents - exponents.max())
  weights /= weights.sum()
  x0_mean = sum(w * images[i] for w, i in zip(weights, selected))
  return (x_t - np.sqrt(alpha_bar) * x0_mean) / np.sqrt(1 - alpha_bar), weights


@pytest.fixture(scope="module")
def predict_noise_jit():
  return jax.jit(lambda prior, *args: prior.predict_noise(*args), static_argnums=0)


def test_closed_form_matches_float64_brute_force(random_bank, predict_noise_jit):
  prior = bank_lib.ClosedFormPrior.from_bank(random_bank, prompt="a")
  images = random_bank.images.reshape(10, -1).astype(np.float64) / 127.5 - 1
  rng = np.random.default_rng(1)
  # Near t_min, mid and near t_max; x_t noised from bank images and from a random x_0.
  timesteps = np.array([20, 21, 60, 300, 500, 900, 979, 999, 20, 500], np.int32)
  view_bucket = np.array([0, 1, 2, 3, 0, 1, 2, 3, 3, 2], np.int32)
  x0 = np.concatenate([images[[0, 2, 3, 4, 6, 7, 9, 5]], rng.uniform(-1, 1, (2, 48))])
  alpha_bar = prior.alphas_cumprod[timesteps].astype(np.float64)
  x_t = (np.sqrt(alpha_bar)[:, None] * x0
         + np.sqrt(1 - alpha_bar)[:, None] * rng.standard_normal(x0.shape))
  eps_cond, eps_uncond = predict_noise_jit(
      prior, prior.params, jnp.asarray(x_t.reshape(10, SIZE, SIZE, 3), jnp.float32),
      timesteps, view_bucket)
  # Caption 'a' in bucket b: images of 'a' whose camera is in bucket b (none is empty here).
  caption_a_buckets = {0: [0, 1], 1: [2], 2: [3], 3: [4, 5]}
  for row in range(10):
    expected_cond, _ = brute_force_eps(x_t[row], alpha_bar[row], images,
                                       caption_a_buckets[view_bucket[row]])
    expected_uncond, _ = brute_force_eps(x_t[row], alpha_bar[row], images, range(10))
    # eps is O(1); float32 x_t and log-weights give ~1e-6 here (measured 2e-6 max).
    np.testing.assert_allclose(np.asarray(eps_cond[row]).ravel(), expected_cond, atol=5e-5,
                               err_msg=f"cond row {row} t={timesteps[row]}")
    np.testing.assert_allclose(np.asarray(eps_uncond[row]).ravel(), expected_uncond,
                               atol=5e-5, err_msg=f"uncond row {row} t={timesteps[row]}")


def test_nontrivial_posterior_matches_brute_force(predict_noise_jit):
  """x_t halfway between two close images: the posterior weights are far from one-hot."""
  base = np.full((SIZE, SIZE, 3), 120, np.uint8)
  images = np.stack([base, base + 4, base + 8])
  bank = make_bank(images, ["c"] * 3, [0, 0, 0])
  prior = bank_lib.ClosedFormPrior.from_bank(bank, prompt="c")
  flat = images.reshape(3, -1).astype(np.float64) / 127.5 - 1
  timesteps = np.array([20, 100, 400], np.int32)
  alpha_bar = prior.alphas_cumprod[timesteps].astype(np.float64)
  rng = np.random.default_rng(2)
  x_t = (np.sqrt(alpha_bar)[:, None] * 0.5 * (flat[0] + flat[1])
         + np.sqrt(1 - alpha_bar)[:, None] * 0.3 * rng.standard_normal((3, 48)))
  eps_cond, _ = predict_noise_jit(prior, prior.params,
                                  jnp.asarray(x_t.reshape(3, SIZE, SIZE, 3), jnp.float32),
                                  timesteps, np.zeros(3, np.int32))
  for row in range(3):
    expected, weights = brute_force_eps(x_t[row], alpha_bar[row], flat, range(3))
    assert weights.max() < 0.9, weights  # the softmax really mixes images
    # Measured error ~1e-6 (the log-weights differ by O(1) here, so float32 suffices).
    np.testing.assert_allclose(np.asarray(eps_cond[row]).ravel(), expected, atol=2e-5,
                               err_msg=f"t={timesteps[row]}")


@pytest.fixture(scope="module")
def constant_bank():
  """Caption 'a' has one constant image per view bucket, caption 'b' one front image."""
  values = [10, 80, 150, 220, 250]
  images = np.stack([np.full((SIZE, SIZE, 3), v, np.uint8) for v in values])
  return make_bank(images, ["a"] * 4 + ["b"], [0, 1, 2, 3, 0])


def test_conditioning_selects_caption_and_view_bucket(constant_bank, predict_noise_jit):
  prior = bank_lib.ClosedFormPrior.from_bank(constant_bank, prompt="a")
  images = constant_bank.images.astype(np.float64) / 127.5 - 1
  # x_t from the image of caption 'b' at a small t, rendered from each of the four buckets.
  timesteps = np.full(4, 20, np.int32)
  alpha_bar = float(prior.alphas_cumprod[20])
  noise = np.random.default_rng(3).standard_normal((4, SIZE, SIZE, 3))
  x_t = np.sqrt(alpha_bar) * images[4] + np.sqrt(1 - alpha_bar) * noise
  eps_cond, eps_uncond = predict_noise_jit(prior, prior.params, jnp.asarray(x_t, jnp.float32),
                                           timesteps, np.arange(4, dtype=np.int32))
  def x0_hat(eps):
    return (x_t - np.sqrt(1 - alpha_bar) * np.asarray(eps, np.float64)) / np.sqrt(alpha_bar)
  # The conditional posterior mean is caption 'a''s image of the camera's bucket ...
  np.testing.assert_allclose(x0_hat(eps_cond), images[:4], atol=1e-4)
  # ... while the unconditional one uses every image, so it finds caption 'b''s.
  np.testing.assert_allclose(x0_hat(eps_uncond), np.broadcast_to(images[4], x_t.shape),
                             atol=1e-4)
  assert prior.fallback == (False,) * 4


def test_sds_with_closed_form_prior_pulls_renders_to_the_bucket_image(constant_bank):
  """Each bucket of caption 'a' holds one image x_b, so E[x_0 | x_t] = x_b exactly and
  eps_hat - eps = sqrt(abar / (1 - abar)) (x_render - x_b) for every t: with guidance 1 and
  w = 1 - abar, d loss / d render = (2 / B) sqrt(abar (1 - abar)) (x_render - x_b)."""
  prior = bank_lib.ClosedFormPrior.from_bank(constant_bank, prompt="a")
  renders = np.random.default_rng(4).uniform(size=(4, SIZE, SIZE, 3)).astype(np.float32)
  view_bucket = np.array([2, 0, 3, 1], np.int32)

  def loss(images):
    out = sds.score_distillation(prior, prior.params, images, view_bucket, jax.random.key(5),
                                 guidance_scale=1.0)
    return out.loss, out
  grad, out = jax.jit(jax.grad(loss, has_aux=True))(renders)
  alpha_bar = prior.alphas_cumprod[np.asarray(out.timesteps)].astype(np.float64)
  targets = constant_bank.images[view_bucket].astype(np.float64) / 127.5 - 1
  expected = (2 / 4 * np.sqrt(alpha_bar * (1 - alpha_bar))[:, None, None, None]
              * (2 * renders - 1 - targets))
  # float32 noise is added and removed again inside: ~1e-6 absolute.
  np.testing.assert_allclose(grad, expected, atol=2e-5)
  assert int(out.num_nonfinite) == 0


def test_view_independent_and_fallback_masks(constant_bank, random_bank):
  masks, fallback = bank_lib.condition_masks(constant_bank, prompt="a", view_dependent=False)
  np.testing.assert_array_equal(masks, np.tile([True] * 4 + [False], (4, 1)))
  assert fallback == (False,) * 4
  # Caption 'b' of the random bank has no overhead image: bucket 3 falls back to all of 'b'.
  masks, fallback = bank_lib.condition_masks(random_bank, prompt="b")
  caption_b = np.array([False] * 6 + [True] * 4)
  np.testing.assert_array_equal(masks[0], caption_b & (np.arange(10) == 6))
  np.testing.assert_array_equal(masks[1], caption_b & np.isin(np.arange(10), [7, 8]))
  np.testing.assert_array_equal(masks[3], caption_b)
  assert fallback == (False, False, False, True)


def test_unknown_caption_lists_the_captions(random_bank):
  with pytest.raises(UserError) as error:
    bank_lib.ClosedFormPrior.from_bank(random_bank, prompt="a snowman")
  message = str(error.value)
  assert "'a snowman'" in message and "'a'" in message and "'b'" in message
  assert "\n" not in message


def test_encode_is_pixel_space_and_checks_size(constant_bank):
  prior = bank_lib.ClosedFormPrior.from_bank(constant_bank, prompt="a")
  assert prior.image_size == SIZE
  np.testing.assert_allclose(prior.encode(prior.params, np.full((1, SIZE, SIZE, 3), 0.25)),
                             -0.5)
  with pytest.raises(UserError, match="render at the bank's resolution 4"):
    prior.encode(prior.params, np.zeros((1, 8, 8, 3), np.float32))
  np.testing.assert_array_equal(prior.alphas_cumprod, diffusion.alphas_cumprod_from_config())


def test_bank_camera_ranges(random_bank):
  ranges = bank_lib.bank_camera_ranges(random_bank)
  distances = np.linalg.norm(random_bank.c2w[:, :3, 3], axis=-1)
  np.testing.assert_allclose(ranges.distance, (distances.min(), distances.max()), rtol=1e-6)
  np.testing.assert_allclose(ranges.fov_deg,
                             (random_bank.fov_deg.min(), random_bank.fov_deg.max()))
  np.testing.assert_allclose(ranges.elevation_deg, (5.0, 75.0), atol=1e-4)
  np.testing.assert_array_equal(bank_lib.bank_view_buckets(random_bank),
                                [0, 0, 1, 2, 3, 3, 0, 1, 1, 2])


def test_save_load_round_trip(random_bank, tmp_path):
  path = tmp_path / "bank.npz"
  bank_lib.save_bank(path, **random_bank._asdict())
  loaded = bank_lib.load_bank(path)
  for name in bank_lib.BANK_KEYS:
    np.testing.assert_array_equal(getattr(loaded, name), getattr(random_bank, name))
  assert loaded.images.dtype == np.uint8 and loaded.prompts.dtype.kind == "U"
  assert loaded.c2w.dtype == np.float32 and loaded.fov_deg.dtype == np.float32


def _valid_arrays(random_bank):
  return {k: np.array(v) for k, v in random_bank._asdict().items()}


def _corrupt(arrays, case):
  """Applies one corruption to a valid bank's arrays (in place)."""
  if case == "missing_key":
    del arrays["fov_deg"]
  elif case == "images_dtype":
    arrays["images"] = arrays["images"].astype(np.float32) / 255
  elif case == "prompts_dtype":
    arrays["prompts"] = np.arange(10)
  elif case == "non_square":
    arrays["images"] = np.zeros((10, 4, 5, 3), np.uint8)
  elif case == "mismatched_n":
    arrays["c2w"] = arrays["c2w"][:9]
  elif case == "nonfinite_c2w":
    arrays["c2w"][3, 0, 1] = np.nan
  elif case == "last_row":
    arrays["c2w"][2, 3] = [0, 0, 1, 1]
  elif case == "fov_range":
    arrays["fov_deg"][0] = 180.0
  return arrays


@pytest.mark.parametrize("case,fragment", [
    ("missing_key", "missing key(s) ['fov_deg']"),
    ("images_dtype", "images has dtype float32, expected uint8"),
    ("prompts_dtype", "prompts has dtype int64, expected a string array"),
    ("non_square", "images are 4x5, expected square images"),
    ("mismatched_n", "different numbers of images"),
    ("nonfinite_c2w", "c2w holds non-finite values"),
    ("last_row", "last row other than [0, 0, 0, 1]"),
    ("fov_range", "fov_deg holds values outside (0, 180)"),
])
def test_invalid_bank_files_are_one_line_user_errors(random_bank, tmp_path, case, fragment):
  path = tmp_path / f"{case}.npz"
  np.savez(path, **_corrupt(_valid_arrays(random_bank), case))
  with pytest.raises(UserError) as error:
    bank_lib.load_bank(path)
  message = str(error.value)
  assert fragment in message and str(path) in message
  assert "a bank is an .npz holding" in message and "\n" not in message


def test_unreadable_bank_files_are_one_line_user_errors(random_bank, tmp_path):
  text = tmp_path / "notes.npz"
  text.write_text("not an archive\n")
  noise = tmp_path / "noise.npz"
  noise.write_bytes(np.random.default_rng(0).bytes(200))
  truncated = tmp_path / "truncated.npz"
  np.savez(truncated, **_valid_arrays(random_bank))
  truncated.write_bytes(truncated.read_bytes()[:100])
  single = tmp_path / "single.npy"
  np.save(single, random_bank.images)
  pickled = tmp_path / "objects.npz"
  np.savez(pickled, **{**_valid_arrays(random_bank),
                       "prompts": np.array(["a"] * 10, dtype=object)})
  for path, fragment in ((tmp_path / "absent.npz", "does not exist"),
                         (tmp_path, "does not exist"),
                         (text, "is not a readable .npz archive"),
                         (noise, "is not a readable .npz archive (no zip header)"),
                         (truncated, "is not a readable .npz archive"),
                         (single, "holds a single array"),
                         (pickled, "cannot read key 'prompts' of image bank")):
    with pytest.raises(UserError) as error:
      bank_lib.load_bank(path)
    assert fragment in str(error.value) and "\n" not in str(error.value), str(error.value)
    # numpy's advice to load pickles does not apply to a bank.
    assert "allow_pickle" not in str(error.value) and "pickled" not in str(error.value)
