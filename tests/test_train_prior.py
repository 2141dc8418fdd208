"""Tests of dfjax.train_prior: the tokenizer, the losses, DDIM, and the training command on a
tiny bank (a pipeline that loads in dfjax and in diffusers, bitwise resume, bad input)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib
from dfjax.priors import diffusion
from dfjax.scene import cameras
from dfjax.train_prior import loop
from dfjax.train_prior import objectives
from dfjax.train_prior import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bpe_learns_the_most_frequent_pairs_first():
  # Sennrich et al. 2016's example vocabulary; ties go to the smaller pair.
  merges = tokenizer_lib.learn_merges({"low": 5, "lower": 2, "newest": 6, "widest": 3},
                                      max_merges=4)
  assert merges == [("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w")]


def test_tokenizer_round_trip_and_unknown_words(tmp_path):
  from transformers import CLIPTokenizer
  prompts = ["a yellow duck, front view", "a red mug with a handle, side view", ""]
  tokenizer = tokenizer_lib.build_tokenizer(prompts, max_merges=200, model_max_length=12)
  assert tokenizer.tokenize("a yellow duck, front view") == [
      "a</w>", "yellow</w>", "duck</w>", ",</w>", "front</w>", "view</w>"]
  # A word never seen is spelt in byte-level symbols, so any prompt can be tokenised.
  assert "".join(tokenizer.tokenize("zebra")).replace("</w>", "") == "zebra"
  tokenizer.save_pretrained(tmp_path)
  reloaded = CLIPTokenizer.from_pretrained(tmp_path)
  ids = tokenizer_lib.token_ids(reloaded, prompts + ["a purple zebra"])
  np.testing.assert_array_equal(ids, tokenizer_lib.token_ids(tokenizer, prompts
                                                             + ["a purple zebra"]))
  vocab = reloaded.get_vocab()
  assert ids.shape == (4, 12) and ids[2, 0] == vocab[tokenizer_lib.BOS]
  assert np.all(ids[2, 1:] == vocab[tokenizer_lib.EOS])  # "" is padded with <|endoftext|>
  assert reloaded.decode(ids[0], skip_special_tokens=True).strip() == "a yellow duck , front view"


def test_kl_matches_monte_carlo():
  key = jax.random.PRNGKey(0)
  mean = jnp.array([[[[0.5, -1.0]]]])
  logvar = jnp.array([[[[-0.7, 0.4]]]])
  z = objectives.gaussian_sample(mean, logvar, jax.random.normal(key, (200_000, 1, 1, 2)))
  log_q = -0.5 * (jnp.square(z - mean) / jnp.exp(logvar) + logvar)
  log_p = -0.5 * jnp.square(z)
  monte_carlo = float(jnp.mean(jnp.sum(log_q - log_p, axis=(1, 2, 3))))
  exact = float(objectives.kl_to_standard_normal(mean, logvar)[0])
  assert exact == pytest.approx(monte_carlo, abs=0.01)
  assert float(objectives.kl_to_standard_normal(jnp.zeros((1, 2, 2, 1)),
                                                jnp.zeros((1, 2, 2, 1)))[0]) == 0.0


def test_vae_loss_is_l1_plus_kl_per_pixel_value():
  images = jnp.zeros((2, 4, 4, 3))
  loss, metrics = objectives.vae_loss(images, images + 0.25, jnp.ones((2, 2, 2, 1)),
                                      jnp.zeros((2, 2, 2, 1)), kl_weight=0.48)
  # L1 0.25; KL per image = 4 * 0.5 * 1 = 2, times 0.48 / 48 pixel values.
  assert float(metrics["kl"]) == pytest.approx(2.0)
  assert float(loss) == pytest.approx(0.25 + 0.48 * 2.0 / 48)


def test_ddim_step_with_the_true_noise_lands_on_the_forward_process():
  alphas = diffusion.alphas_cumprod_from_config(beta_schedule="scaled_linear")
  key_x, key_eps = jax.random.split(jax.random.PRNGKey(1))
  x0 = jax.random.normal(key_x, (3, 4, 4, 2))
  eps = jax.random.normal(key_eps, x0.shape)
  t, t_prev = jnp.array([700] * 3), jnp.array([300] * 3)
  x_t = diffusion.add_noise(alphas, x0, eps, t)
  x_prev = diffusion.ddim_step(x_t, eps, alphas[700], alphas[300])
  np.testing.assert_allclose(x_prev, diffusion.add_noise(alphas, x0, eps, t_prev), atol=1e-5)
  np.testing.assert_allclose(diffusion.ddim_step(x_t, eps, alphas[700], 1.0), x0, atol=1e-4)


def test_drop_condition_replaces_only_dropped_prompts():
  out = objectives.drop_condition(jnp.array([0, 1, 2, 3]), jnp.array([True, False, True, False]),
                                  unconditional_index=9)
  np.testing.assert_array_equal(out, [9, 1, 9, 3])


def write_shapes_bank(path, *, size=16, views=8):
  """A small bank that is not the toy world: a red square and a blue disc on white, seen from
  `views` azimuths (the shape slides sideways with the azimuth)."""
  yy, xx = np.mgrid[:size, :size] / size
  images, prompts, c2ws = [], [], []
  for caption, color in (("a red square", (220, 30, 30)), ("a blue disc", (30, 30, 220))):
    for view in range(views):
      azimuth = -180.0 + 360.0 * view / views
      cx = 0.5 + 0.2 * np.sin(np.deg2rad(azimuth))
      if caption.endswith("square"):
        mask = (np.abs(xx - cx) < 0.22) & (np.abs(yy - 0.5) < 0.22)
      else:
        mask = (xx - cx) ** 2 + (yy - 0.5) ** 2 < 0.25 ** 2
      image = np.full((size, size, 3), 255, np.uint8)
      image[mask] = color
      images.append(image)
      prompts.append(caption)
      position = cameras.spherical_to_position(azimuth, 20.0, 1.5)
      c2ws.append(np.asarray(cameras.look_at(position, jnp.zeros(3), jnp.array([0.0, 0, 1]))))
  bank_lib.save_bank(path, images=np.stack(images), prompts=np.array(prompts),
                     c2w=np.stack(c2ws).astype(np.float32),
                     fov_deg=np.full(len(images), 50.0, np.float32))
  return str(path)


def tiny_config(bank_path, **overrides):
  """configs/train_prior.py shrunk to seconds: 16x16 images, 2x VAE, a one-level U-Net."""
  from configs import train_prior
  config = train_prior.get_config()
  config.bank = bank_path
  config.text.hidden_size = 32
  config.text.num_layers = 1
  config.text.intermediate_size = 64
  config.vae.block_out_channels = (8, 16)
  config.vae.steps = 2
  config.vae.batch_size = 4
  config.unet.block_out_channels = (32,)  # one level: the cheapest U-Net to compile
  config.steps = 3
  config.batch_size = 4
  config.weight_dtype = "float32"
  config.train.log_every = 1
  config.train.image_every = 0
  config.train.checkpoint_every = 100
  for name, value in overrides.items():
    section, _, field = name.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


class StopAtStep:
  """A stand-in for the SIGTERM handler that requests a stop on its `at`-th poll (the loop
  polls once per step)."""

  def __init__(self, at):
    self.at, self.polls, self.signal_name = at, 0, "SIGTERM"

  @property
  def requested(self):
    self.polls += 1
    return self.polls >= self.at

  def uninstall(self):
    pass


def pipeline_files(directory):
  """{relative path: bytes} of every file of a pipeline folder."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


@pytest.fixture(scope="module")
def shapes_bank(tmp_path_factory):
  return write_shapes_bank(tmp_path_factory.mktemp("bank") / "shapes.npz")


@pytest.fixture(scope="module")
def straight_run(shapes_bank, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  result = loop.train_prior(tiny_config(shapes_bank), str(workdir), progress=False)
  return workdir, result


def test_a_tiny_run_writes_a_pipeline_both_loaders_read(straight_run):
  workdir, result = straight_run
  assert result.finished and result.step == 5
  assert sorted(os.listdir(result.pipeline)) == [
      "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
  from dfjax.priors import stable_diffusion
  prior = stable_diffusion.load_stable_diffusion(result.pipeline, prompt="a blue disc",
                                                 render_size=16)
  assert prior.latent_space.vae_sample_size == 16 and prior.latent_space.latent_size == 8
  scaling = json.loads(open(os.path.join(result.pipeline, "vae", "config.json")).read())
  assert 0 < scaling["scaling_factor"] == prior.latent_space.scaling_factor != 1.0
  latents = prior.encode(prior.params, jnp.ones((1, 16, 16, 3)))
  eps_cond, eps_uncond = prior.predict_noise(prior.params, latents, jnp.array([500]),
                                             jnp.array([0]))
  assert np.all(np.isfinite(eps_cond)) and not np.allclose(eps_cond, eps_uncond)
  from diffusers import FlaxStableDiffusionPipeline
  pipeline, params = FlaxStableDiffusionPipeline.from_pretrained(
      result.pipeline, safety_checker=None, feature_extractor=None)
  assert sorted(params) == ["scheduler", "text_encoder", "unet", "vae"]
  assert pipeline.tokenizer.tokenize("a blue disc, front view")[:3] == [
      "a</w>", "blue</w>", "disc</w>"]
  metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
  assert "loss_vae" in metrics[0] and "loss_unet" in metrics[-1]


def test_interrupted_training_resumes_bitwise(straight_run, shapes_bank, tmp_path,
                                              monkeypatch):
  _, straight = straight_run
  # Stopped in the U-Net phase (step 3 of 5): the resumed run re-encodes the bank.
  monkeypatch.setattr(loop.checkpoint_lib, "install_sigterm_handler", lambda: StopAtStep(3))
  stopped = loop.train_prior(tiny_config(shapes_bank), str(tmp_path), progress=False)
  assert not stopped.finished and stopped.step == 3 and stopped.pipeline is None
  assert not os.path.exists(tmp_path / "pipeline")
  monkeypatch.undo()
  resumed = loop.train_prior(tiny_config(shapes_bank), str(tmp_path), progress=False)
  assert resumed.finished and resumed.step == 5
  assert pipeline_files(resumed.pipeline) == pipeline_files(straight.pipeline)


def test_bad_input_is_one_error_and_leaves_the_pipeline(shapes_bank, tmp_path):
  old = tmp_path / "pipeline"
  old.mkdir()
  (old / "marker").write_text("an earlier pipeline")
  (tmp_path / "config.json").write_text(tiny_config(shapes_bank).to_json(sort_keys=True))
  cases = [
      (tiny_config(str(tmp_path / "missing.npz")), "does not exist"),
      (tiny_config(shapes_bank, **{"vae.block_out_channels": (8, 16, 16, 16, 16, 16)}),
       "must be a multiple of 32"),
      (tiny_config(shapes_bank, uncond_prob=1.5), "uncond_prob must be in [0, 1)"),
      (tiny_config(shapes_bank, batch_size=6), "multiple of the 4 devices"),
      (tiny_config(shapes_bank, **{"unet.block_out_channels": (48,)}), "multiples of 32"),
  ]
  for config, message in cases:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
      loop.train_prior(config, str(tmp_path), allow_config_change=True, progress=False)
  assert sorted(os.listdir(old)) == ["marker"]
  assert not os.path.exists(tmp_path / "checkpoints")


def test_command_line_errors_are_one_line_with_status_2(tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", "dfjax.train_prior", "--config=configs/train_prior.py",
       f"--workdir={tmp_path / 'run'}", f"--config.bank={tmp_path / 'nothing.npz'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert process.returncode == 2
  lines = process.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: image bank")
  assert "does not exist" in lines[0]
  assert not os.path.exists(tmp_path / "run" / "pipeline")


def test_eps_relative_error_is_zero_for_the_exact_prediction_and_one_for_zero():
  from dfjax.eval import prior_quality
  alphas = diffusion.alphas_cumprod_from_config(beta_schedule="scaled_linear")
  latents = jax.random.normal(jax.random.PRNGKey(0), (6, 2, 2, 4))
  buckets = jnp.array([0, 0, 1, 1, 2, 3])

  def exact(x_t, t, bucket):
    return prior_quality.exact_conditional_eps(x_t, alphas[t], bucket, latents=latents,
                                               latent_buckets=buckets)
  kwargs = dict(latents=latents, latent_buckets=buckets, alphas_cumprod=alphas,
                timesteps=(50, 500, 950), batch=8)
  key = jax.random.PRNGKey(1)
  np.testing.assert_allclose(prior_quality.eps_relative_error(exact, key, **kwargs), 0.0,
                             atol=1e-5)
  zero = lambda x_t, t, bucket: jnp.zeros_like(x_t)
  np.testing.assert_allclose(prior_quality.eps_relative_error(zero, key, **kwargs), 1.0,
                             rtol=1e-6)
  # A single latent per bucket: at small t the exact x0 is that latent, so eps is recovered.
  x0 = latents[4:5]
  noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
  x_t = diffusion.add_noise(alphas, x0, noise, jnp.array([30]))
  np.testing.assert_allclose(exact(x_t, jnp.array([30]), jnp.array([2])), noise, atol=1e-3)


def test_nearest_bank_classifier_on_known_images():
  from dfjax.eval import prior_quality
  bank = np.zeros((4, 2, 2, 3), np.uint8)
  bank[1] = 255
  bank[2, :, :, 0] = 255
  bank[3, :, :, 2] = 255
  samples = np.stack([np.full((2, 2, 3), 0.9), np.zeros((2, 2, 3)) + [0.8, 0.1, 0.1]])
  index, distance = prior_quality.nearest_bank_index(samples, bank)
  np.testing.assert_array_equal(index, [1, 2])
  np.testing.assert_allclose(distance, [0.1, np.sqrt((0.04 + 0.01 + 0.01) / 3)], rtol=1e-5)
  scores = prior_quality.score_samples(
      samples, np.array([1, 0]), np.array([0, 1]), bank_images=bank,
      bank_caption_index=np.array([0, 1, 1, 0]), bank_view_bucket=np.array([0, 0, 1, 1]),
      captions=("a", "b"))
  # Sample 0 asked for caption 1, view 0 and got image 1 (caption 1, view 0): both right.
  # Sample 1 asked for caption 0 and got image 2 (caption 1): wrong object.
  assert (scores.object_accuracy, scores.view_accuracy) == (0.5, 0.5)
  assert scores.per_caption == {"a": 0.0, "b": 1.0}
