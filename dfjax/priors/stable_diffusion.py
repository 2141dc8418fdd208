"""Stable Diffusion as the frozen prior of score distillation (DreamFusion §3, §4).

DreamFusion (Poole et al. 2022, arXiv:2209.14988) distils Imagen's 64x64 base model, which is
not public. Stable Diffusion (latent diffusion, Rombach et al. 2022) is the open substitute:
its U-Net denoises 4-channel latents of a VAE, so score distillation happens in latent space.
A render is upsampled to the VAE's input size, encoded (the gradient flows back through the
encoder, never through the U-Net), noised, and the U-Net predicts the noise with the
view-dependent prompt of §3.2 and with the empty prompt, for classifier-free guidance.

`load_stable_diffusion` reads a diffusers-format pipeline directory (or a hub id through the
local Hugging Face cache) with Flax weights (`*.msgpack`) or PyTorch safetensors, converted
here without torch. Every size comes from the checkpoint's configs. The prompt embeddings of
the four view buckets and of the empty prompt are computed once at load time, after which
the text encoder is dropped.
"""
import dataclasses
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax import traverse_util

from dfjax import diffusion
from dfjax.errors import UserError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEFAULT_VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")
# Prediction targets of the U-Net that can be turned into the noise SDS needs.
PREDICTION_TYPES = ("epsilon", "v_prediction")
FLAX_WEIGHT_FILES = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
TORCH_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
# Buffers PyTorch checkpoints store that are not weights (CLIP's position ids).
_TORCH_BUFFERS = ("position_ids",)
# diffusers' PyTorch attention layers name their projections to_q/to_k/to_v/to_out.0; the Flax
# VAE names them query/key/value/proj_attn.
_ATTENTION_RENAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}
# The pipeline's subfolders the prior reads (the VAE last: use_vae=False skips it).
_COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class _DropFlaxDeprecation(logging.Filter):
  """Drops the "Flax classes are deprecated" warnings of diffusers 0.39 and transformers 4.57.

  diffusers repeats it on every Flax module setup; dfjax pins those versions on purpose, so for
  a user the warning is only noise.
  """

  def filter(self, record):
    return "classes are deprecated and will be removed" not in record.getMessage()


def _silence_flax_deprecation():
  """Adds the filter to the handlers of diffusers' and transformers' library loggers."""
  import diffusers
  import transformers
  for library in ("diffusers", "transformers"):
    for handler in logging.getLogger(library).handlers:
      if not any(isinstance(f, _DropFlaxDeprecation) for f in handler.filters):
        handler.addFilter(_DropFlaxDeprecation())


def flax_model_classes():
  """(FlaxUNet2DConditionModel, FlaxAutoencoderKL), with their deprecation warnings silenced."""
  _silence_flax_deprecation()
  import diffusers
  return diffusers.FlaxUNet2DConditionModel, diffusers.FlaxAutoencoderKL


@struct.dataclass
class StableDiffusionParams:
  """The frozen weights of the prior, passed as the `params` argument of its methods.

  Attributes:
    unet: the U-Net's parameter tree.
    vae_encoder: {"encoder": ..., "quant_conv": ...} of the VAE (the decoder is not needed),
      or None when the prior was loaded with use_vae=False.
    text_embeddings: [4, L, D] CLIP hidden states of "{prompt}, {suffix}" for view buckets
      0 front, 1 side, 2 back, 3 overhead (DreamFusion §3.2).
    uncond_embedding: [1, L, D] hidden states of the empty prompt (classifier-free guidance).
  """
  unet: dict
  vae_encoder: dict | None
  text_embeddings: jax.Array
  uncond_embedding: jax.Array


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """Static description of the space the U-Net denoises.

  Attributes:
    vae_sample_size: side of the VAE's input images, pixels (512 for SD 1.x and 2.x-base);
      0 without a VAE.
    latent_size: side of the latents, the U-Net's training resolution (64 for SD 1.x and
      2.x-base); see `latent_space_of`.
    latent_channels: channels of the latents (4 for SD 1.x/2.x).
    scaling_factor: latents are multiplied by it so they have about unit variance
      (Rombach et al. 2022, §4.3.2; 0.18215 for SD 1.x/2.x).
  """
  vae_sample_size: int
  latent_size: int
  latent_channels: int
  scaling_factor: float


class StableDiffusionPrior:
  """A frozen Stable Diffusion model with the prior protocol of `dfjax.sds`.

  Attributes:
    image_size: render resolution the trainer should use (H == W).
    alphas_cumprod: [T] float32 abar_t of the checkpoint's training schedule.
    params: the frozen `StableDiffusionParams` to pass to `encode` and `predict_noise`.
    prompts: the five prompts embedded at load time (four views, then the empty prompt).
    use_vae: False if `encode` skips the VAE (cost studies only, see `encode`).
    latent_space: `LatentSpace`.
    prediction_type: "epsilon" or "v_prediction", what the U-Net outputs.
    compute_dtype: the dtype the U-Net and VAE compute in.
  """

  def __init__(self, *, unet, vae, params, alphas_cumprod, image_size, latent_space,
               prediction_type, compute_dtype, prompts):
    self.unet = unet
    self.vae = vae
    self.params = params
    self.alphas_cumprod = np.asarray(alphas_cumprod, np.float32)
    self.image_size = int(image_size)
    self.latent_space = latent_space
    self.prediction_type = prediction_type
    self.compute_dtype = compute_dtype
    self.prompts = tuple(prompts)
    self.use_vae = vae is not None

  def encode(self, params, images):
    """Renders to scaled latents x0 (latent diffusion, Rombach et al. 2022, §3).

    The images are resized (bilinear; an upsampling, so no antialiasing is needed) to the VAE's
    input size `latent_space.vae_sample_size`, mapped to [-1, 1], encoded, and
    the MEAN of the encoder's Gaussian posterior is taken (deterministic: sampling it would
    add noise the SDS gradient does not need), times the latent scaling factor. The gradient
    flows through the encoder.

    With use_vae=False (cost studies only: the U-Net then sees inputs unlike its training
    data) the images are resized straight to the latent size and mapped by a fixed linear map:
    latent channels 0..2 = 2 * rgb - 1, the remaining channels 0.

    Args:
      params: StableDiffusionParams.
      images: [batch, H, W, 3] in [0, 1].

    Returns:
      x0: [batch, latent_size, latent_size, latent_channels] float32.
    """
    space = self.latent_space
    batch = images.shape[0]
    images = images.astype(jnp.float32)
    if not self.use_vae:
      size = space.latent_size
      pixels = jax.image.resize(images, (batch, size, size, 3), "bilinear", antialias=False)
      latents = (2.0 * pixels - 1.0)[..., :space.latent_channels]
      pad = space.latent_channels - latents.shape[-1]
      return jnp.pad(latents, ((0, 0), (0, 0), (0, 0), (0, pad)))
    size = space.vae_sample_size
    pixels = jax.image.resize(images, (batch, size, size, 3), "bilinear", antialias=False)
    pixels = jnp.transpose(2.0 * pixels - 1.0, (0, 3, 1, 2)).astype(self.compute_dtype)
    posterior = self.vae.apply({"params": params.vae_encoder}, pixels, method="encode")
    return posterior.latent_dist.mean.astype(jnp.float32) * space.scaling_factor

  def predict_noise(self, params, x_t, timesteps, view_bucket):
    """The U-Net's noise prediction with and without the view-dependent prompt.

    Both predictions come from ONE U-Net call on a batch of 2 * batch: [x_t; x_t] with
    [prompt embedding of each view bucket; empty-prompt embedding]. A v-prediction U-Net's
    output v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, §4) is converted to
    eps = sqrt(abar) v + sqrt(1 - abar) x_t.

    Args:
      params: StableDiffusionParams.
      x_t: [batch, h, w, c] noisy latents.
      timesteps: [batch] int32.
      view_bucket: [batch] int32 in 0..3 (0 front, 1 side, 2 back, 3 overhead).

    Returns:
      (eps_cond, eps_uncond), each [batch, h, w, c] float32.
    """
    batch = x_t.shape[0]
    cond = params.text_embeddings[view_bucket]
    uncond = jnp.broadcast_to(params.uncond_embedding, (batch,) + cond.shape[1:])
    embeddings = jnp.concatenate([cond, uncond]).astype(self.compute_dtype)
    sample = jnp.transpose(jnp.concatenate([x_t, x_t]), (0, 3, 1, 2))
    both_timesteps = jnp.concatenate([timesteps, timesteps]).astype(jnp.int32)
    output = self.unet.apply({"params": params.unet}, sample.astype(self.compute_dtype),
                             both_timesteps, embeddings).sample
    output = jnp.transpose(output, (0, 2, 3, 1)).astype(jnp.float32)
    if self.prediction_type == "v_prediction":
      output = eps_from_v_prediction(
          output, jnp.concatenate([x_t, x_t]).astype(jnp.float32),
          jnp.asarray(self.alphas_cumprod)[both_timesteps])
    return output[:batch], output[batch:]


def eps_from_v_prediction(v, x_t, alpha_bar):
  """Noise from a v-prediction (Salimans & Ho 2022, "Progressive distillation", §4).

  With x_t = a x0 + s eps, a = sqrt(abar), s = sqrt(1 - abar) and v = a eps - s x0:
  s x_t + a v = (s^2 + a^2) eps = eps.

  Args:
    v: [batch, h, w, c] predicted velocity.
    x_t: [batch, h, w, c] noisy latents.
    alpha_bar: [batch] abar_t.

  Returns:
    eps: [batch, h, w, c].
  """
  alpha_bar = alpha_bar.reshape((-1,) + (1,) * (v.ndim - 1))
  return jnp.sqrt(alpha_bar) * v + jnp.sqrt(1.0 - alpha_bar) * x_t


# Config values the Flax U-Net and VAE of diffusers 0.39 implement; a checkpoint asking for
# anything else would be built silently wrong, so it is refused.
_UNET_FLAX_SUPPORTS = {
    "act_fn": "silu", "addition_embed_type": None, "attention_type": "default",
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_norm": None,
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "norm_eps": 1e-5, "norm_num_groups": 32, "num_attention_heads": None,
    "num_class_embeds": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "reverse_transformer_layers_per_block": None,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None,
}
_VAE_FLAX_SUPPORTS = {
    "act_fn": "silu", "mid_block_add_attention": True, "shift_factor": None,
    "use_quant_conv": True, "use_post_quant_conv": True,
}


def load_stable_diffusion(model, *, revision=None, dtype="float32", prompt,
                          view_suffixes=DEFAULT_VIEW_SUFFIXES, use_vae=True, render_size=64):
  """Loads a Stable Diffusion pipeline as a frozen SDS prior.

  Args:
    model: a diffusers-format directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/),
      or a Hugging Face hub id ("owner/name") found in, or downloaded to, the local cache.
      With HF_HUB_OFFLINE=1 only the cache is used.
    revision: hub branch, tag or commit (hub ids only).
    dtype: "float32" or "bfloat16": the dtype of the U-Net and VAE weights and computation.
      The predicted noise and the SDS gradient stay float32.
    prompt: the text prompt.
    view_suffixes: four suffixes appended as "{prompt}, {suffix}" for view buckets 0 front,
      1 side, 2 back, 3 overhead (DreamFusion §3.2).
    use_vae: False skips the VAE in `encode` (for cost studies only).
    render_size: the render resolution the trainer should use (DreamFusion renders 64x64);
      renders are upsampled to the VAE's input size inside `encode`.

  Returns:
    StableDiffusionPrior.

  Raises:
    UserError: the model cannot be found or read, or an argument is invalid.
  """
  compute_dtype = _check_arguments(dtype, prompt, view_suffixes, render_size)
  root = _resolve_model_dir(model, revision, use_vae=use_vae)
  for name in _COMPONENTS if use_vae else _COMPONENTS[:-1]:
    _component_dir(root, name)  # Fails fast, naming a missing subfolder.
  alphas_cumprod, prediction_type = _load_schedule(root)
  unet, unet_params = _load_unet(root, compute_dtype)
  if use_vae:
    vae, vae_encoder, latent_space = _load_vae(root, compute_dtype, unet=unet)
  else:
    vae, vae_encoder, latent_space = None, None, latent_space_of(unet)
  prompts = [f"{prompt}, {suffix}" for suffix in view_suffixes] + [""]
  embeddings = prompt_embeddings(root, prompts)
  if embeddings.shape[-1] != unet.cross_attention_dim:
    raise UserError(f"{root}: the text encoder's width {embeddings.shape[-1]} differs from the "
                    f"U-Net's cross_attention_dim {unet.cross_attention_dim}; the components "
                    "must come from the same pipeline")
  params = StableDiffusionParams(
      unet=unet_params, vae_encoder=vae_encoder,
      text_embeddings=jnp.asarray(embeddings[:4]), uncond_embedding=jnp.asarray(embeddings[4:]))
  params = cast_floating(params, compute_dtype)
  return StableDiffusionPrior(
      unet=unet, vae=vae, params=params, alphas_cumprod=alphas_cumprod,
      image_size=render_size, latent_space=latent_space, prediction_type=prediction_type,
      compute_dtype=compute_dtype, prompts=prompts)


def _check_arguments(dtype, prompt, view_suffixes, render_size):
  """Validates the user-facing arguments; returns the compute dtype."""
  if dtype not in DTYPES:
    raise UserError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
  if not isinstance(prompt, str):
    raise UserError(f"prompt must be a string, got {type(prompt).__name__}")
  if (isinstance(view_suffixes, str) or len(view_suffixes) != 4
      or not all(isinstance(s, str) for s in view_suffixes)):
    raise UserError("view_suffixes must be four strings (front, side, back, overhead), "
                    f"got {view_suffixes!r}")
  if not isinstance(render_size, (int, np.integer)) or render_size < 1:
    raise UserError(f"render_size must be a positive integer, got {render_size!r}")
  return DTYPES[dtype]


def cast_floating(tree, dtype):
  """Casts the floating-point leaves of a pytree to `dtype` (integer leaves are kept)."""
  def cast(leaf):
    leaf = jnp.asarray(leaf)
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
  return jax.tree.map(cast, tree)


def _load_component(root, name, module_class, supports, compute_dtype):
  """A Flax module built from `root/name/config.json` and its float32 weights."""
  folder = _component_dir(root, name)
  config_path = os.path.join(folder, "config.json")
  config = _read_json(config_path)
  _check_supported(config, supports, config_path)
  module = _module_from_config(module_class, config, folder, compute_dtype)
  abstract = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  return module, load_weights(folder, abstract, join_indices=True), folder


def _load_unet(root, compute_dtype):
  """The Flax U-Net module and its float32 weights from `root/unet`."""
  unet, weights, _ = _load_component(root, "unet", flax_model_classes()[0],
                                     _UNET_FLAX_SUPPORTS, compute_dtype)
  return unet, weights


def _load_vae(root, compute_dtype, *, unet):
  """The Flax VAE module, its encoder's float32 weights and the `LatentSpace`."""
  vae, weights, folder = _load_component(root, "vae", flax_model_classes()[1],
                                         _VAE_FLAX_SUPPORTS, compute_dtype)
  if vae.latent_channels != unet.in_channels:
    raise UserError(f"{folder}: latent_channels {vae.latent_channels} differs from the U-Net's "
                    f"in_channels {unet.in_channels}; the components must come from the same "
                    "pipeline")
  latent_space = latent_space_of(unet, vae)
  return vae, {"encoder": weights["encoder"], "quant_conv": weights["quant_conv"]}, latent_space


def latent_space_of(unet, vae=None):
  """The latent space of a U-Net (and VAE), all sizes from their configs.

  The latent size is the U-Net's sample_size, the resolution it was trained at (64 for SD 1.x
  and 2.x-base, 96 for SD 2.x at 768 px); the VAE's input size is that times the VAE's
  downsampling factor 2**(number of VAE blocks - 1). For SD 1.x/2.x this equals the VAE
  config's own sample_size; deriving it from the U-Net keeps the latents at the U-Net's
  training resolution even where a VAE config states another size.

  Args:
    unet: FlaxUNet2DConditionModel.
    vae: FlaxAutoencoderKL, or None for use_vae=False (then vae_sample_size is 0).

  Returns:
    LatentSpace.
  """
  latent_size = int(unet.sample_size)
  if vae is None:
    return LatentSpace(vae_sample_size=0, latent_size=latent_size,
                       latent_channels=int(unet.in_channels), scaling_factor=1.0)
  return LatentSpace(
      vae_sample_size=latent_size * 2 ** (len(vae.block_out_channels) - 1),
      latent_size=latent_size, latent_channels=int(vae.latent_channels),
      scaling_factor=float(vae.scaling_factor))


def _module_from_config(module_class, config, folder, compute_dtype):
  """Builds a diffusers Flax module from a (Flax or PyTorch) config.json dict."""
  try:
    return module_class.from_config(config, dtype=compute_dtype)
  except (TypeError, ValueError, KeyError) as error:
    raise UserError(f"{folder}/config.json does not describe a {module_class.__name__}: "
                    f"{_first_line(error)}") from error


def _check_supported(config, supported, path):
  """Refuses config values the Flax models do not implement."""
  for key, value in supported.items():
    if key in config and config[key] != value:
      raise UserError(f"{path}: {key}={config[key]!r} is not supported by the Flax models "
                      f"(only {value!r}); use a Stable Diffusion 1.x/2.x checkpoint")


def _load_schedule(root):
  """alphas_cumprod [T] and the prediction type from scheduler/scheduler_config.json."""
  path = os.path.join(_component_dir(root, "scheduler"), "scheduler_config.json")
  config = _read_json(path)
  if config.get("trained_betas") is not None:
    raise UserError(f"{path}: trained_betas are not supported; use a named beta_schedule")
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in PREDICTION_TYPES:
    raise UserError(f"{path}: prediction_type {prediction_type!r} is not supported; "
                    f"use one of {PREDICTION_TYPES}")
  names = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
  try:
    alphas_cumprod = diffusion.alphas_cumprod_from_config(
        **{name: config[name] for name in names if name in config})
  except UserError as error:
    raise UserError(f"{path}: {error}") from error
  return alphas_cumprod, prediction_type


def prompt_embeddings(root, prompts):
  """CLIP text-encoder hidden states of `prompts`, float32 [len(prompts), L, D].

  The prompts are padded (or truncated) to the tokenizer's model_max_length L, as Stable
  Diffusion was trained; the last hidden state (after the final layer norm) is the U-Net's
  cross-attention context.

  Args:
    root: pipeline directory with text_encoder/ and tokenizer/.
    prompts: list of strings.

  Returns:
    embeddings: np.ndarray [len(prompts), L, D] float32.
  """
  _silence_flax_deprecation()
  from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel
  folder = _component_dir(root, "text_encoder")
  tokenizer_folder = _component_dir(root, "tokenizer")
  try:
    config = CLIPTextConfig.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
  except (OSError, ValueError, KeyError) as error:
    raise UserError(f"cannot read the text encoder or tokenizer in {root}: "
                    f"{_first_line(error)}") from error
  length = int(tokenizer.model_max_length)
  if length > config.max_position_embeddings:
    raise UserError(f"{tokenizer_folder}: model_max_length {length} exceeds the text encoder's "
                    f"max_position_embeddings {config.max_position_embeddings}")
  text_encoder = FlaxCLIPTextModel(config, _do_init=False)
  abstract = jax.eval_shape(lambda key: text_encoder.init_weights(key, (1, 1)),
                            jax.random.PRNGKey(0))
  weights = load_weights(folder, abstract, join_indices=False)
  token_ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="np").input_ids
  hidden = text_encoder(token_ids, params=weights).last_hidden_state
  return np.asarray(hidden, np.float32)


def load_weights(folder, abstract, *, join_indices):
  """Float32 weights of one component, from Flax msgpack or PyTorch safetensors files.

  Flax msgpack (`diffusion_flax_model.msgpack`, `flax_model.msgpack`) is preferred when both
  formats are present. Safetensors files (single or sharded with an `.index.json`) are read
  with numpy and converted by `convert_torch_state_dict`; torch is not needed.

  Args:
    folder: the component's directory.
    abstract: the Flax parameter tree of the model built from the folder's config, leaves
      with `.shape` (e.g. from `jax.eval_shape` of its init).
    join_indices: how PyTorch names map to Flax names (see `convert_torch_state_dict`).

  Returns:
    the parameter tree (nested dicts of float32 np.ndarray), checked against `abstract`.
  """
  for name in FLAX_WEIGHT_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return _check_tree(_read_msgpack(path), abstract, path)
  for name in TORCH_WEIGHT_FILES:
    files = _safetensors_files(folder, name)
    if files:
      state = {}
      for path in files:
        state.update(_read_safetensors(path))
      return convert_torch_state_dict(state, abstract, source=files[0],
                                      join_indices=join_indices)
  raise UserError(f"no weights in {folder}: expected one of "
                  f"{', '.join(FLAX_WEIGHT_FILES + TORCH_WEIGHT_FILES)}")


def _safetensors_files(folder, name):
  """The file `name`, or the shards its `.index.json` lists, or [] if neither exists."""
  path = os.path.join(folder, name)
  if os.path.isfile(path):
    return [path]
  index_path = path + ".index.json"
  if not os.path.isfile(index_path):
    return []
  shards = sorted(set(_read_json(index_path).get("weight_map", {}).values()))
  missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
  if missing or not shards:
    raise UserError(f"{index_path} lists shards that are missing: {missing or 'none listed'}")
  return [os.path.join(folder, s) for s in shards]


def _read_msgpack(path):
  """A Flax msgpack parameter file as nested dicts of float32 arrays."""
  from flax import serialization
  try:
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except Exception as error:  # msgpack raises several unrelated types on corrupt files.
    raise UserError(f"cannot read {path}: {_first_line(error)}") from error
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), tree)


def _read_safetensors(path):
  """A safetensors file as {name: float32 np.ndarray}.

  numpy cannot hold bfloat16 tensors, so files with any are read through jax, on the CPU so
  that a multi-gigabyte checkpoint does not pass through accelerator memory.
  """
  import safetensors
  try:
    try:
      with safetensors.safe_open(path, framework="numpy") as f:
        return {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
    except TypeError:  # "data type 'bfloat16' not understood"
      with jax.default_device(jax.devices("cpu")[0]):
        with safetensors.safe_open(path, framework="flax") as f:
          return {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
  except Exception as error:  # safetensors raises its own error types on corrupt files.
    raise UserError(f"cannot read {path}: {_first_line(error)}") from error


def convert_torch_state_dict(state, abstract, *, source, join_indices):
  """Maps a PyTorch state dict (numpy arrays) onto a Flax parameter tree, without torch.

  Names: "a.b.weight" becomes ("a", "b", leaf) with leaf the one of kernel / scale /
  embedding the Flax tree has ("gamma"/"beta" of old LayerNorms become scale/bias). diffusers
  writes list indices into the module name ("down_blocks.0" -> "down_blocks_0",
  join_indices=True), transformers keeps them as their own level ("layers", "0"); the VAE's
  attention projections to_q/to_k/to_v/to_out.0 become query/key/value/proj_attn.
  Layouts: convolution kernels OIHW -> HWIO, linear kernels [out, in] -> [in, out] (a 1x1
  convolution stored for a linear layer, as in old VAE checkpoints, is squeezed first).

  Args:
    state: {PyTorch name: np.ndarray}.
    abstract: the Flax parameter tree with the target shapes.
    source: file name for error messages.
    join_indices: True for diffusers models, False for transformers models.

  Returns:
    the Flax parameter tree (nested dicts of float32 np.ndarray).

  Raises:
    UserError: a weight is missing, unexpected or has the wrong shape.
  """
  targets = {key: tuple(leaf.shape) for key, leaf in
             traverse_util.flatten_dict(_as_dict(abstract)).items()}
  flat, unexpected = {}, []
  for name, array in state.items():
    key = _flax_key(name, targets, join_indices=join_indices)
    if key is None:
      if name.split(".")[-1] not in _TORCH_BUFFERS:
        unexpected.append(name)
      continue
    flat[key] = _to_flax_layout(np.asarray(array, np.float32), key[-1], len(targets[key]))
  _raise_on_mismatch(flat, targets, source, unexpected=unexpected)
  return traverse_util.unflatten_dict(flat)


def _flax_key(name, targets, *, join_indices):
  """The Flax key (tuple) of PyTorch parameter `name`, or None if the tree has none."""
  *path, leaf = name.split(".")
  if join_indices:
    joined = []
    for part in path:
      if part.isdigit() and joined:
        joined[-1] = f"{joined[-1]}_{part}"
      else:
        joined.append(part)
    path = joined
  leaves = {"weight": ("kernel", "scale", "embedding"), "gamma": ("scale",),
            "beta": ("bias",)}.get(leaf, (leaf,))
  renamed = path[:-1] + [_ATTENTION_RENAMES.get(path[-1], path[-1])] if path else path
  for candidate_path in (path, renamed):
    for candidate_leaf in leaves:
      key = tuple(candidate_path) + (candidate_leaf,)
      if key in targets:
        return key
  return None


def _to_flax_layout(array, leaf, target_ndim):
  """PyTorch layout -> Flax layout of a weight whose Flax name ends in `leaf`.

  Kernels: convolutions OIHW -> HWIO; linear [out, in] -> [in, out], after squeezing a 1x1
  convolution stored for a linear layer. Biases, norm scales and embedding tables have the
  same layout in both.
  """
  if leaf != "kernel":
    return array
  if array.ndim == 4 and target_ndim == 2 and array.shape[2:] == (1, 1):
    array = array[:, :, 0, 0]
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  return np.ascontiguousarray(array.T)


def _as_dict(tree):
  """A (possibly frozen) parameter tree as plain nested dicts."""
  from flax.core import unfreeze
  return unfreeze(tree)


def _check_tree(tree, abstract, source):
  """Checks a loaded parameter tree against the model's; returns it as nested dicts."""
  flat = traverse_util.flatten_dict(_as_dict(tree))
  targets = {key: tuple(leaf.shape) for key, leaf in
             traverse_util.flatten_dict(_as_dict(abstract)).items()}
  unexpected = ["/".join(key) for key in flat if key not in targets]
  _raise_on_mismatch({k: v for k, v in flat.items() if k in targets}, targets, source,
                     unexpected=unexpected)
  return traverse_util.unflatten_dict(flat)


def _raise_on_mismatch(flat, targets, source, *, unexpected):
  """One-line UserError if weights are missing, unexpected or of the wrong shape."""
  missing = ["/".join(key) for key in targets if key not in flat]
  wrong = [f"{'/'.join(key)} {tuple(value.shape)} (expected {targets[key]})"
           for key, value in flat.items() if tuple(value.shape) != targets[key]]
  problems = [(f"{len(missing)} missing", missing), (f"{len(unexpected)} unexpected", unexpected),
              (f"{len(wrong)} of the wrong shape", wrong)]
  problems = [f"{what} (e.g. {names[0]})" for what, names in problems if names]
  if problems:
    raise UserError(f"{source}: the weights do not fit the model of its config.json: "
                    f"{'; '.join(problems)}; weights and config must come from the same "
                    "checkpoint")


def _component_dir(root, name):
  """root/name, or a UserError naming the missing subfolder."""
  folder = os.path.join(root, name)
  if not os.path.isdir(folder):
    raise UserError(f"{root} is not a complete Stable Diffusion pipeline: subfolder {name}/ is "
                    f"missing (expected {', '.join(c + '/' for c in _COMPONENTS)})")
  return folder


def _read_json(path):
  """A JSON file as a dict, or a one-line UserError."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as error:
    raise UserError(f"cannot read {path}: {_first_line(error)}") from error
  if not isinstance(value, dict):
    raise UserError(f"cannot read {path}: expected a JSON object")
  return value


def _first_line(error):
  """The first non-empty line of an exception's message (for one-line errors)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _resolve_model_dir(model, revision, *, use_vae):
  """The local pipeline directory of `model`: itself, or its snapshot in the hub cache."""
  path = os.path.expanduser(str(model))
  if os.path.isdir(path):
    if revision is not None:
      raise UserError(f"revision={revision!r} applies to hub ids only, but {model!r} is a local "
                      "directory; drop the revision")
    return path
  if os.path.exists(path):
    raise UserError(f"{model!r} is a file; pass a diffusers-format pipeline directory")
  if not _HUB_ID.fullmatch(str(model)):
    raise UserError(f"model directory {model!r} does not exist; pass a diffusers-format "
                    "pipeline directory or a hub id such as 'owner/name'")
  return _hub_snapshot(str(model), revision, use_vae=use_vae)


def _hub_offline():
  """Whether HF_HUB_OFFLINE is set (read now, not only when huggingface_hub was imported)."""
  from huggingface_hub import constants
  flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
  return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def _hub_snapshot(repo_id, revision, *, use_vae):
  """Downloads (or finds in the cache) the files the prior needs; returns the snapshot dir.

  Flax msgpack weights are fetched first; PyTorch safetensors only for components that have
  no msgpack file, so a repository holding both is not downloaded twice.
  """
  components = ["unet", "text_encoder"] + (["vae"] if use_vae else [])
  patterns = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*"]
  patterns += [f"{c}/config.json" for c in components]
  patterns += [f"{c}/{name}" for c in components for name in FLAX_WEIGHT_FILES]
  root = _snapshot_download(repo_id, revision, patterns)
  need_torch = [c for c in components if not any(
      os.path.isfile(os.path.join(root, c, name)) for name in FLAX_WEIGHT_FILES)]
  if need_torch and not _hub_offline():
    stems = [name[:-len(".safetensors")] for name in TORCH_WEIGHT_FILES]
    patterns = [f"{c}/{stem}{suffix}" for c in need_torch for stem in stems
                for suffix in (".safetensors", ".safetensors.index.json", "-*-of-*.safetensors")]
    root = _snapshot_download(repo_id, revision, patterns)
  return root


def _snapshot_download(repo_id, revision, patterns):
  """huggingface_hub.snapshot_download with its errors turned into one-line UserErrors."""
  from huggingface_hub import errors, snapshot_download
  offline = _hub_offline()
  name = repo_id + (f"@{revision}" if revision else "")
  try:
    return snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                             local_files_only=offline)
  except errors.LocalEntryNotFoundError as error:
    if offline:
      raise UserError(f"{name} is not a local directory and is not in the local Hugging Face "
                      "cache (HF_HUB_OFFLINE is set): download it once with network access, "
                      "or pass a local diffusers-format directory") from error
    raise UserError(f"cannot download {name}: {_first_line(error)}; check the network, or "
                    "pass a local diffusers-format directory") from error
  except errors.RevisionNotFoundError as error:
    raise UserError(f"{repo_id} has no revision {revision!r}") from error
  except errors.RepositoryNotFoundError as error:
    raise UserError(f"{repo_id} is not a local directory nor a hub repository you can access "
                    "(check the name, or log in for gated models)") from error
  except (errors.HfHubHTTPError, OSError) as error:
    raise UserError(f"cannot download {name}: {_first_line(error)}") from error
