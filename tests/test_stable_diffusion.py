"""Tests of the Stable Diffusion prior on tiny random pipelines.

References: diffusers' and transformers' PyTorch models (the torch-free safetensors conversion
must reproduce their outputs), the closed form of the v-parametrisation, and the structure of
the SDS gradient (it must reach the renders through the VAE but never build a U-Net backward
pass).
"""
import itertools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.errors import UserError
from dfjax.priors import sds
from dfjax.priors import stable_diffusion
import sd_fixtures

PROMPT = "a hamburger"
# Second architecture: three blocks, wider text, 8 latent channels, linear attention
# projections, VAE downsampling by 4, shorter token sequences.
OTHER_UNET = dict(
    sample_size=8, in_channels=8, out_channels=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64), attention_head_dim=(2, 4, 4), cross_attention_dim=48,
    use_linear_projection=True)
OTHER_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 64),
                 latent_channels=8, sample_size=32, scaling_factor=0.13025)
OTHER_TEXT = dict(hidden_size=48, intermediate_size=96, num_attention_heads=4,
                  max_position_embeddings=16)


# XLA's default optimisation makes compiling the tiny models about 4x slower (the SDS step: 27 s
# against 6 s on 2 cores) and buys nothing at these sizes; results agree to float32 round-off.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(function):
  return jax.jit(function, compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def msgpack_dir(tmp_path_factory):
  return sd_fixtures.make_tiny_pipeline(tmp_path_factory.mktemp("sd_msgpack"), format="msgpack")


@pytest.fixture(scope="module")
def safetensors_dir(tmp_path_factory):
  return sd_fixtures.make_tiny_pipeline(tmp_path_factory.mktemp("sd_safetensors"),
                                        format="safetensors", seed=1)


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
  return sd_fixtures.make_tiny_pipeline(
      tmp_path_factory.mktemp("sd_other"), format="safetensors", seed=2, unet=OTHER_UNET,
      vae=OTHER_VAE, text_encoder=OTHER_TEXT)


@pytest.fixture(scope="module")
def safetensors_prior(safetensors_dir):
  return stable_diffusion.load_stable_diffusion(safetensors_dir, prompt=PROMPT, render_size=16)


@pytest.fixture(scope="module")
def predict_fp32(safetensors_prior):
  """The float32 prior's jitted predict_noise, compiled once for the module."""
  return _jit(safetensors_prior.predict_noise)


def _images(seed, batch, size):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(batch, size, size, 3)),
                     jnp.float32)


def _latents(seed, batch, size, channels):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, channels)),
                     jnp.float32)


def _count_convolutions(jaxpr):
  """Number of conv_general_dilated equations in a (closed) jaxpr, sub-jaxprs included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "conv_general_dilated"
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
          count += _count_convolutions(sub)
  return count


def test_sds_step_reaches_images_and_never_differentiates_the_unet(msgpack_dir):
  prior = stable_diffusion.load_stable_diffusion(msgpack_dir, prompt=PROMPT, render_size=16)
  images, buckets, key = _images(0, 2, 16), jnp.array([0, 2]), jax.random.PRNGKey(3)

  def sds_loss(images, params):
    return sds.score_distillation(prior, params, images, buckets, key).loss

  step = _jit(jax.value_and_grad(sds_loss, argnums=(0, 1))).trace(images, prior.params)
  loss, (image_grad, param_grad) = step.lower().compile()(images, prior.params)
  assert np.isfinite(loss)
  assert np.all(np.isfinite(image_grad)) and np.any(image_grad != 0)
  assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(param_grad))

  # Structure: the gradient program holds the forward convolutions of the VAE encoder and
  # U-Net plus ONE transposed convolution per encoder convolution, and none for the U-Net.
  x_t = _latents(1, 2, 8, 4)
  encoder = _count_convolutions(jax.make_jaxpr(prior.encode)(prior.params, images))
  unet = _count_convolutions(jax.make_jaxpr(prior.predict_noise)(
      prior.params, x_t, jnp.array([10, 900]), buckets))
  assert encoder > 0 and unet > encoder
  assert _count_convolutions(step.jaxpr) == 2 * encoder + unet

  # Control: differentiating the U-Net doubles its count, so the check above would catch a
  # U-Net backward pass.
  def unet_loss(x_t):
    return jnp.sum(prior.predict_noise(prior.params, x_t, jnp.array([10, 900]), buckets)[0])

  assert _count_convolutions(jax.make_jaxpr(jax.grad(unet_loss))(x_t)) == 2 * unet


def test_safetensors_conversion_matches_pytorch(safetensors_dir, safetensors_prior,
                                                predict_fp32):
  torch = pytest.importorskip("torch")
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextModel, CLIPTokenizer
  prior = safetensors_prior
  text_encoder = CLIPTextModel.from_pretrained(os.path.join(safetensors_dir, "text_encoder"))
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(safetensors_dir, "tokenizer"))
  token_ids = tokenizer(list(prior.prompts), padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
  with torch.no_grad():
    hidden = text_encoder(token_ids).last_hidden_state.numpy()
  np.testing.assert_allclose(prior.params.text_embeddings, hidden[:4], atol=1e-5)
  np.testing.assert_allclose(prior.params.uncond_embedding, hidden[4:], atol=1e-5)

  x_t, timesteps, buckets = _latents(1, 2, 8, 4), jnp.array([30, 700]), jnp.array([1, 3])
  eps_cond, eps_uncond = predict_fp32(prior.params, x_t, timesteps, buckets)
  unet = UNet2DConditionModel.from_pretrained(os.path.join(safetensors_dir, "unet"))
  sample = torch.from_numpy(np.array(x_t).transpose(0, 3, 1, 2))
  context = torch.from_numpy(hidden)
  with torch.no_grad():
    expected_cond = unet(sample, torch.tensor([30, 700]), context[np.array([1, 3])]).sample
    expected_uncond = unet(sample, torch.tensor([30, 700]), context[[4, 4]]).sample
  np.testing.assert_allclose(eps_cond, expected_cond.numpy().transpose(0, 2, 3, 1), atol=1e-4)
  np.testing.assert_allclose(eps_uncond, expected_uncond.numpy().transpose(0, 2, 3, 1),
                             atol=1e-4)

  images = _images(2, 2, 16)  # At the VAE's own sample size, so the resize is the identity.
  vae = AutoencoderKL.from_pretrained(os.path.join(safetensors_dir, "vae"))
  with torch.no_grad():
    pixels = torch.from_numpy(2.0 * np.asarray(images).transpose(0, 3, 1, 2) - 1.0)
    expected = vae.encode(pixels).latent_dist.mean.numpy().transpose(0, 2, 3, 1) * 0.18215
  np.testing.assert_allclose(_jit(prior.encode)(prior.params, images), expected, atol=1e-4)


def test_view_dependence_off_conditions_every_bucket_on_the_bare_prompt(safetensors_dir,
                                                                        safetensors_prior):
  """config.prior.view_dependent reaches the Stable Diffusion prior (the §3.2 ablation):
  the four buckets' embeddings are then the bare prompt's, not "{prompt}, {view} view"."""
  from configs import dreamfusion  # pylint: disable=g-import-not-at-top
  from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
  config = dreamfusion.get_config()
  config.prompt, config.prior.model, config.camera.resolution = PROMPT, safetensors_dir, 16
  config.prior.view_dependent, config.prior.dtype = False, "float32"
  plain, _ = prior_setup.build_prior(config)
  assert list(plain.prompts) == [PROMPT] * 4 + [""]
  embeddings = np.asarray(plain.params.text_embeddings)
  np.testing.assert_array_equal(embeddings, np.broadcast_to(embeddings[:1], embeddings.shape))
  view_dependent = np.asarray(safetensors_prior.params.text_embeddings)
  assert safetensors_prior.prompts[0] == f"{PROMPT}, front view"
  assert np.abs(view_dependent - embeddings).max() > 1e-3  # the suffixes change them
  np.testing.assert_array_equal(plain.params.uncond_embedding,
                                safetensors_prior.params.uncond_embedding)


@pytest.mark.parametrize("attention", ["dense", "split_heads", "chunked"])
def test_every_attention_predicts_the_same_noise(safetensors_dir, safetensors_prior,
                                                 predict_fp32, attention):
  """config.prior.attention reaches the U-Net and changes only float rounding: the same eps
  as the default (deferred_softmax) from the same weights, for every view bucket. "dense" is
  diffusers' own attention, so this checks the default against the library's code."""
  from configs import dreamfusion  # pylint: disable=g-import-not-at-top
  from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
  config = dreamfusion.get_config()
  config.prompt, config.prior.model, config.camera.resolution = PROMPT, safetensors_dir, 16
  config.prior.dtype, config.prior.attention = "float32", attention
  prior, _ = prior_setup.build_prior(config)
  fields = stable_diffusion.ATTENTION[attention]
  assert (prior.attention, safetensors_prior.attention) == (attention, "deferred_softmax")
  assert (prior.unet.split_head_dim, prior.unet.use_memory_efficient_attention) == (
      fields.get("split_head_dim", False), fields.get("use_memory_efficient_attention", False))
  assert not (safetensors_prior.unet.split_head_dim  # the default: diffusers' fields
              or safetensors_prior.unet.use_memory_efficient_attention)
  space = prior.latent_space
  x_t = _latents(5, 4, space.latent_size, space.latent_channels)
  args = (x_t, jnp.array([20, 300, 600, 950]), jnp.arange(4))
  expected = jnp.stack(predict_fp32(safetensors_prior.params, *args))  # cond, uncond
  got = jnp.stack(_jit(prior.predict_noise)(prior.params, *args))
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
  assert float(jnp.abs(expected).mean()) > 0.1  # a real prediction, not zeros


def test_the_default_attention_runs_through_deferred_softmax(safetensors_prior, monkeypatch):
  """The interceptor is in effect: every FlaxAttention of the U-Net (a self- and a
  cross-attention per transformer block) calls deferred_softmax_attention."""
  calls = []
  original = stable_diffusion.deferred_softmax_attention

  def counting(query, key, value, scale):
    calls.append((query.shape[1], key.shape[1]))
    return original(query, key, value, scale)

  monkeypatch.setattr(stable_diffusion, "deferred_softmax_attention", counting)
  space = safetensors_prior.latent_space
  x_t = _latents(6, 2, space.latent_size, space.latent_channels)
  # A new function, so no trace of predict_noise cached by another test is reused.
  jax.eval_shape(lambda *args: safetensors_prior.predict_noise(*args), safetensors_prior.params,
                 x_t, jnp.array([10, 500]), jnp.array([0, 2]))
  tokens = safetensors_prior.params.text_embeddings.shape[1]
  assert calls and len(calls) % 2 == 0
  assert {keys for _, keys in calls[1::2]} == {tokens}       # cross-attention: the prompt
  assert all(queries == keys for queries, keys in calls[0::2])  # self-attention


@pytest.mark.parametrize("dtype, spread, tolerance",
                         [(jnp.float32, 6.0, 1e-4), (jnp.bfloat16, 1.0, 2e-2)])
def test_deferred_softmax_attention_is_jax_attention(dtype, spread, tolerance):
  """Self- and cross-attention shapes (keys unlike queries; in float32, scores past 88, where
  exp overflows without the max subtracted) against jax.nn.dot_product_attention in float32;
  all queries at once, in blocks of 8 (three), and with a block that does not divide them."""
  rng = np.random.default_rng(0)
  for (queries, keys), block in itertools.product(((24, 24), (24, 7)), (None, 8, 5)):
    q, k, v = (jnp.asarray(rng.normal(scale=spread, size=(2, n, 4, 8)), jnp.float32)
               for n in (queries, keys, keys))
    expected = jax.nn.dot_product_attention(q, k, v, scale=8 ** -0.5)
    got = stable_diffusion.deferred_softmax_attention(
        q.astype(dtype), k.astype(dtype), v.astype(dtype), 8 ** -0.5, query_block=block)
    assert got.shape == expected.shape and got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), expected,
                               atol=tolerance * 4, rtol=tolerance)


def test_loader_takes_every_size_from_the_configs(other_dir):
  torch = pytest.importorskip("torch")
  from diffusers import AutoencoderKL, UNet2DConditionModel
  prior = stable_diffusion.load_stable_diffusion(other_dir, prompt=PROMPT, render_size=12)
  assert prior.image_size == 12
  assert prior.params.text_embeddings.shape == (4, 16, 48)
  assert prior.params.uncond_embedding.shape == (1, 16, 48)

  @_jit
  def encode_and_predict(params, images, timesteps, buckets):
    x0 = prior.encode(params, images)
    return x0, prior.predict_noise(params, x0, timesteps, buckets)

  timesteps, buckets = jnp.array([5, 999]), jnp.array([2, 0])
  x0, (eps_cond, eps_uncond) = encode_and_predict(prior.params, _images(3, 2, 12), timesteps,
                                                  buckets)
  assert x0.shape == eps_cond.shape == eps_uncond.shape == (2, 8, 8, 8)
  unet = UNet2DConditionModel.from_pretrained(os.path.join(other_dir, "unet"))
  vae = AutoencoderKL.from_pretrained(os.path.join(other_dir, "vae"))
  with torch.no_grad():
    pixels = jax.image.resize(_images(3, 2, 12), (2, 32, 32, 3), "bilinear", antialias=False)
    pixels = torch.from_numpy(2.0 * np.array(pixels).transpose(0, 3, 1, 2) - 1.0)
    expected_x0 = vae.encode(pixels).latent_dist.mean.numpy().transpose(0, 2, 3, 1) * 0.13025
    expected = unet(torch.from_numpy(np.array(x0).transpose(0, 3, 1, 2)),
                    torch.tensor([5, 999]),
                    torch.from_numpy(np.asarray(prior.params.text_embeddings)[[2, 0]])).sample
  # float32 round-off through three blocks reaches ~2e-4 here (a wrong name or layout in the
  # conversion gives errors of order 0.1).
  np.testing.assert_allclose(x0, expected_x0, atol=5e-4)
  np.testing.assert_allclose(eps_cond, expected.numpy().transpose(0, 2, 3, 1), atol=5e-4)

  no_vae = stable_diffusion.load_stable_diffusion(other_dir, prompt=PROMPT, render_size=12,
                                                  use_vae=False)
  x0 = no_vae.encode(no_vae.params, _images(3, 2, 12))
  assert x0.shape == (2, 8, 8, 8) and no_vae.params.vae_encoder is None
  # The documented map: channels 0..2 = 2 * rgb - 1 at the latent size, the others 0.
  rgb = jax.image.resize(_images(3, 2, 12), (2, 8, 8, 3), "bilinear", antialias=False)
  np.testing.assert_allclose(x0[..., :3], 2.0 * rgb - 1.0, atol=1e-6)
  assert np.all(x0[..., 3:] == 0)


def _fake_hub_cache(cache, repo_id, revision, pipeline_dir):
  """Lays `pipeline_dir` out as huggingface_hub's cache holds a downloaded snapshot."""
  storage = cache / ("models--" + repo_id.replace("/", "--"))
  commit = "0123456789abcdef0123456789abcdef01234567"
  (storage / "refs").mkdir(parents=True)
  (storage / "refs" / revision).write_text(commit)
  shutil.copytree(pipeline_dir, storage / "snapshots" / commit)


def test_bfloat16_prior_from_the_offline_hub_cache(safetensors_dir, safetensors_prior,
                                                    predict_fp32, tmp_path, monkeypatch):
  from huggingface_hub import constants
  _fake_hub_cache(tmp_path, "dfjax-tests/tiny-sd", "bf16", safetensors_dir)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  prior = stable_diffusion.load_stable_diffusion("dfjax-tests/tiny-sd", revision="bf16",
                                                 prompt=PROMPT, render_size=16,
                                                 dtype="bfloat16")
  leaves = jax.tree.leaves(prior.params)
  assert leaves and all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
  x_t, timesteps, buckets = _latents(4, 2, 8, 4), jnp.array([100, 600]), jnp.array([0, 1])
  predicted = _jit(prior.predict_noise)(prior.params, x_t, timesteps, buckets)
  reference = predict_fp32(safetensors_prior.params, x_t, timesteps, buckets)
  for eps, eps_ref in zip(predicted, reference):
    assert eps.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (unit round-off 2^-8 = 0.4% per operation); through
    # the tiny U-Net's layers the relative error measured 1.9%; a wrongly cast input or
    # embedding would show O(1).
    relative = np.linalg.norm(eps - eps_ref) / np.linalg.norm(eps_ref)
    assert relative < 0.05, relative


def test_eps_from_v_prediction_inverts_the_v_parametrisation():
  rng = np.random.default_rng(5)
  x0, eps = rng.normal(size=(2, 3, 3, 4)), rng.normal(size=(2, 3, 3, 4))
  alpha_bar = np.array([0.9, 0.05])
  a, s = np.sqrt(alpha_bar)[:, None, None, None], np.sqrt(1 - alpha_bar)[:, None, None, None]
  x_t, v = a * x0 + s * eps, a * eps - s * x0
  recovered = stable_diffusion.eps_from_v_prediction(jnp.asarray(v), jnp.asarray(x_t),
                                                     jnp.asarray(alpha_bar))
  np.testing.assert_allclose(recovered, eps, atol=1e-5)


def _assert_one_line_error(call, *fragments):
  with pytest.raises(UserError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_user_errors_are_one_line(tmp_path, safetensors_dir, monkeypatch):
  load = stable_diffusion.load_stable_diffusion
  _assert_one_line_error(lambda: load(str(tmp_path / "nowhere"), prompt=PROMPT),
                         "does not exist")
  incomplete = tmp_path / "incomplete"
  shutil.copytree(safetensors_dir, incomplete)
  shutil.rmtree(incomplete / "vae")
  _assert_one_line_error(lambda: load(str(incomplete), prompt=PROMPT), "vae/", "missing")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  _assert_one_line_error(lambda: load("dfjax-tests/not-a-cached-model", revision="bf16",
                                      prompt=PROMPT),
                         "dfjax-tests/not-a-cached-model@bf16", "cache")
  _assert_one_line_error(lambda: load(safetensors_dir, prompt=PROMPT, dtype="float16"),
                         "dtype")
  mismatched = tmp_path / "mismatched"
  shutil.copytree(safetensors_dir, mismatched)
  config = (mismatched / "unet" / "config.json").read_text()
  (mismatched / "unet" / "config.json").write_text(
      config.replace('"cross_attention_dim": 32', '"cross_attention_dim": 64'))
  _assert_one_line_error(lambda: load(str(mismatched), prompt=PROMPT), "wrong shape",
                         "same checkpoint")
  unreadable = tmp_path / "unreadable"
  shutil.copytree(safetensors_dir, unreadable)
  (unreadable / "scheduler" / "scheduler_config.json").write_text("{not json")
  _assert_one_line_error(lambda: load(str(unreadable), prompt=PROMPT), "cannot read",
                         "scheduler_config.json")
