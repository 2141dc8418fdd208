"""Tiny, randomly initialised Stable Diffusion pipelines in diffusers' directory format.

`make_tiny_pipeline` writes the same five folders a real checkpoint has (unet/, vae/,
text_encoder/, tokenizer/, scheduler/ and model_index.json), with models small enough for a
CPU test. The weights are written either as Flax msgpack files or as PyTorch safetensors files,
so both loading routes of `dfjax.priors.stable_diffusion` can be exercised. The safetensors
route builds the PyTorch classes, which needs torch (installed for the tests only).

No installed package ships a CLIP BPE vocabulary, so the tokenizer is built here from the 256
byte-level symbols, their end-of-word forms and the two special tokens, with no merges: every
word is tokenised character by character, which is a valid (if long-winded) CLIP tokenisation.
"""
import json
import os
import tempfile

import jax
import numpy as np

# The smallest configurations that still contain every kind of block Stable Diffusion uses:
# a cross-attention down/up block, a plain ResNet block, the cross-attention middle block.
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    layers_per_block=1,
    latent_channels=4,
    sample_size=16,
    scaling_factor=0.18215,
)
TINY_TEXT_ENCODER = dict(
    vocab_size=514,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    # Ids of <|startoftext|> and <|endoftext|> in the byte-level vocabulary below.
    bos_token_id=512,
    eos_token_id=513,
    pad_token_id=513,
)
# Stable Diffusion 1.x/2.x training schedule.
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)


def make_tiny_pipeline(path, *, format="msgpack", seed=0, unet=None, vae=None,
                       text_encoder=None, scheduler=None):
  """Writes a tiny random diffusers-format Stable Diffusion directory and returns its path.

  Args:
    path: directory to create (parents are created; existing files are overwritten).
    format: "msgpack" (Flax classes, `*flax_model.msgpack`) or "safetensors" (PyTorch
      classes, `*.safetensors`; needs torch).
    seed: seed of the random weights.
    unet, vae, text_encoder, scheduler: optional dicts of config overrides, merged into the
      tiny defaults above (e.g. more blocks, another latent channel count).

  Returns:
    `path` as a string.
  """
  if format not in ("msgpack", "safetensors"):
    raise ValueError(f"format must be 'msgpack' or 'safetensors', got {format!r}")
  path = str(path)
  unet_config = {**TINY_UNET, **(unet or {})}
  vae_config = {**TINY_VAE, **(vae or {})}
  text_config = {**TINY_TEXT_ENCODER, **(text_encoder or {})}
  scheduler_config = {**SCHEDULER, **(scheduler or {})}
  for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
    os.makedirs(os.path.join(path, name), exist_ok=True)
  if format == "msgpack":
    _write_flax_models(path, unet_config, vae_config, text_config, seed)
  else:
    _write_torch_models(path, unet_config, vae_config, text_config, seed)
  _write_tokenizer(os.path.join(path, "tokenizer"), text_config["max_position_embeddings"])
  _write_scheduler(os.path.join(path, "scheduler"), scheduler_config)
  _write_model_index(path, format)
  return path


def _write_flax_models(path, unet_config, vae_config, text_config, seed):
  """Random Flax U-Net, VAE and CLIP text encoder saved with `save_pretrained` (msgpack)."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(0)
  unet = FlaxUNet2DConditionModel.from_config(unet_config)
  unet.save_pretrained(os.path.join(path, "unet"),
                       params=_random_params(jax.eval_shape(unet.init_weights, key), rng))
  vae = FlaxAutoencoderKL.from_config(vae_config)
  vae.save_pretrained(os.path.join(path, "vae"),
                      params=_random_params(jax.eval_shape(vae.init_weights, key), rng))
  text_encoder = FlaxCLIPTextModel(CLIPTextConfig(**text_config), _do_init=False)
  abstract = jax.eval_shape(lambda k: text_encoder.init_weights(k, (1, 1)), key)
  text_encoder.save_pretrained(os.path.join(path, "text_encoder"),
                               params=_random_params(abstract, rng))


def _random_params(abstract, rng):
  """Random weights for a Flax parameter tree, scaled like a fan-in initialisation.

  Running the models' own initialisers on CPU compiles the whole model (minutes); filling the
  shapes from `jax.eval_shape` is instant. Kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 1),
  norm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2): nothing is zero or one exactly, so a
  wrong name or layout in a conversion cannot go unnoticed.
  """
  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == "embedding":
      scale = 1.0
    else:
      scale = 0.1
    values = rng.normal(size=leaf.shape) * scale + (1.0 if name == "scale" else 0.0)
    return values.astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, abstract)


def _write_torch_models(path, unet_config, vae_config, text_config, seed):
  """Random PyTorch U-Net, VAE and CLIP text encoder saved as safetensors."""
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel
  torch.manual_seed(seed)
  UNet2DConditionModel(**unet_config).save_pretrained(
      os.path.join(path, "unet"), safe_serialization=True)
  AutoencoderKL(**vae_config).save_pretrained(
      os.path.join(path, "vae"), safe_serialization=True)
  CLIPTextModel(CLIPTextConfig(**text_config)).save_pretrained(
      os.path.join(path, "text_encoder"), safe_serialization=True)


def _write_tokenizer(directory, model_max_length):
  """A byte-level CLIP tokenizer with no BPE merges (vocabulary of 2 * 256 + 2 tokens)."""
  from transformers import CLIPTokenizer
  from transformers.models.clip.tokenization_clip import bytes_to_unicode
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  with tempfile.TemporaryDirectory() as scratch:
    vocab_file = os.path.join(scratch, "vocab.json")
    merges_file = os.path.join(scratch, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
      json.dump({token: i for i, token in enumerate(tokens)}, f)
    with open(merges_file, "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)
    tokenizer.save_pretrained(directory)


def _write_scheduler(directory, config):
  """scheduler_config.json as diffusers' DDPM scheduler writes it."""
  with open(os.path.join(directory, "scheduler_config.json"), "w") as f:
    json.dump({"_class_name": "DDPMScheduler", **config}, f, indent=2)


def _write_model_index(path, format):
  """model_index.json naming the pipeline's components."""
  flax = "Flax" if format == "msgpack" else ""
  index = {
      "_class_name": f"{flax}StableDiffusionPipeline",
      "unet": ["diffusers", f"{flax}UNet2DConditionModel"],
      "vae": ["diffusers", f"{flax}AutoencoderKL"],
      "text_encoder": ["transformers", f"{flax}CLIPTextModel"],
      "tokenizer": ["transformers", "CLIPTokenizer"],
      "scheduler": ["diffusers", f"{flax}DDPMScheduler"],
  }
  with open(os.path.join(path, "model_index.json"), "w") as f:
    json.dump(index, f, indent=2)
