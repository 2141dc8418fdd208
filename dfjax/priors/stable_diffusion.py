"""Stable Diffusion as the frozen prior of score distillation (DreamFusion §3, §4).

DreamFusion (Poole et al. 2022, arXiv:2209.14988) distils Imagen's 64x64 base model, which is
not public. Stable Diffusion (latent diffusion, Rombach et al. 2022) is the open substitute:
its U-Net denoises 4-channel latents of a VAE, so score distillation happens in latent space.
A render is upsampled to the VAE's input size, encoded (the gradient flows back through the
encoder, never through the U-Net), noised, and the U-Net predicts the noise with the
view-dependent prompt of §3.2 and with the empty prompt, for classifier-free guidance.

`load_stable_diffusion` reads a diffusers-format pipeline directory (or a hub id through the
local Hugging Face cache) with Flax weights (`*.msgpack`) or PyTorch safetensors, through
`dfjax.priors.sd_checkpoint`. Every size comes from the checkpoint's configs. The prompt
embeddings of the four view buckets and of the empty prompt are computed once at load time,
after which the text encoder is dropped.

Data flow: priors.diffusion and priors.sd_checkpoint -> here -> priors.sds (through the prior
interface: `encode`, `predict_noise`) and train.prior_setup.
"""
import contextlib
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dfjax.errors import UserError
from dfjax.priors import sd_checkpoint


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The U-Net's attention (diffusers' FlaxAttention fields; the weights are the same for all):
#   deferred_softmax: diffusers' attention with the softmax's division moved after the product
#                with the values (`deferred_softmax_attention`), heads kept as their own axis;
#   dense:       diffusers' own: heads folded into the batch axis, one [tokens, tokens]
#                probability matrix per head;
#   split_heads: the same matrices with heads kept as their own axis (no reshape copies);
#   chunked:     queries in chunks of 1/64 of the tokens (64 of a 64x64 latent's 4096), keys
#                in chunks of up to 16384, with a running softmax (Rabe & Staats 2021,
#                arXiv:2112.05682): never the whole matrix.
# Measured with SD 1.5's U-Net (experiments/results/bench.md, "Stable Diffusion prior cost").
ATTENTION = {"deferred_softmax": {}, "dense": {}, "split_heads": {"split_head_dim": True},
             "chunked": {"use_memory_efficient_attention": True}}


# Queries per block of `deferred_softmax_attention` on a CPU: a 64x64 latent's 4096 tokens in
# 8 blocks. The SD 1.5-size train step ran 29.9 -> 25.3 s so, alternating (bench.md).
CPU_QUERY_BLOCK = 512


def deferred_softmax_attention(query, key, value, scale, *, query_block=None):
  """softmax(q·kᵀ·scale) v (Vaswani et al. 2017, Eq. 1), normalised after the value product.

  e_ij = exp(s_ij − max_j s_ij) with s = scale·q·kᵀ, out_i = (Σ_j e_ij v_j) / Σ_j e_ij: the
  same values as normalising the probabilities first, but the division acts on [tokens, d]
  outputs instead of the [tokens, tokens] matrix (the order memory-efficient attention uses,
  Rabe & Staats 2021, arXiv:2112.05682, §2). The sum of e is taken in float32.

  Each query's output depends on its own row alone, so the queries may be taken in blocks of
  `query_block` (one after the other, `lax.map`) when it divides their number: on a CPU
  (the default there, CPU_QUERY_BLOCK) the [block, keys] scores then stay small; on other
  devices (default None) the whole matrix is one product.

  Args:
    query: [batch, queries, heads, d].
    key, value: [batch, keys, heads, d].
    scale: the factor of the scores (d ** -0.5).
    query_block: queries per block, or None for all at once.

  Returns:
    [batch, queries, heads, d] in the inputs' dtype.
  """
  if query_block is None and jax.default_backend() == "cpu":
    query_block = CPU_QUERY_BLOCK
  batch, queries, heads, d = query.shape
  if query_block is None or queries <= query_block or queries % query_block:
    return _deferred_softmax(query, key, value, scale)
  blocks = query.reshape(batch, queries // query_block, query_block, heads, d)
  out = jax.lax.map(lambda q: _deferred_softmax(q, key, value, scale),
                    jnp.moveaxis(blocks, 1, 0))
  return jnp.moveaxis(out, 0, 1).reshape(batch, queries, heads, d)


def _deferred_softmax(query, key, value, scale):
  """`deferred_softmax_attention` of all queries at once (same arguments and result)."""
  scores = jnp.einsum("biha,bjha->bhij", query * jnp.asarray(scale, query.dtype), key)
  weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  total = jnp.sum(weights, axis=-1, dtype=jnp.float32)               # [b, h, i]
  out = jnp.einsum("bhij,bjha->bhia", weights, value) / total[..., None].astype(value.dtype)
  return jnp.transpose(out, (0, 2, 1, 3))


def _deferred_softmax_interceptor(next_fun, args, kwargs, call):
  """A flax method interceptor running diffusers' FlaxAttention with
  `deferred_softmax_attention` (its own projections, weights and dropout); every other
  method runs unchanged."""
  from diffusers.models.attention_flax import FlaxAttention  # pylint: disable=g-import-not-at-top
  module = call.module
  if not isinstance(module, FlaxAttention) or call.method_name != "__call__":
    return next_fun(*args, **kwargs)

  def attend(hidden_states, context=None, deterministic=True):  # FlaxAttention.__call__'s
    context = hidden_states if context is None else context
    batch = hidden_states.shape[0]
    split = lambda x: x.reshape(batch, -1, module.heads, module.dim_head)
    out = deferred_softmax_attention(split(module.query(hidden_states)),
                                     split(module.key(context)), split(module.value(context)),
                                     module.scale)
    out = module.proj_attn(out.reshape(batch, -1, module.heads * module.dim_head))
    return module.dropout_layer(out, deterministic=deterministic)

  return attend(*args, **kwargs)


def attention_scope(attention: str):
  """The context in which the U-Net must be applied to compute `attention` (a key of
  ATTENTION): a flax interceptor for "deferred_softmax", nothing for the others (their
  module fields choose diffusers' own code)."""
  if attention == "deferred_softmax":
    return nn.intercept_methods(_deferred_softmax_interceptor)
  return contextlib.nullcontext()


DEFAULT_VIEW_SUFFIXES = ("front view", "side view", "back view", "overhead view")


@struct.dataclass
class StableDiffusionParams:
  """The frozen weights of the prior, passed as the `params` argument of its methods.

  Attributes:
    unet: the U-Net's parameter tree.
    vae_encoder: {"encoder": ..., "quant_conv": ...} of the VAE (the decoder is not needed),
      or None when the prior was loaded with use_vae=False.
    text_embeddings: [4, L, D] CLIP hidden states of "{prompt}, {suffix}" for view buckets
      0 front, 1 side, 2 back, 3 overhead (DreamFusion §3.2); of the bare prompt in every
      bucket when the prior is not view-dependent.
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
    attention: how the U-Net computes attention, a key of ATTENTION.
  """

  def __init__(self, *, unet, vae, params, alphas_cumprod, image_size, latent_space,
               prediction_type, compute_dtype, prompts, attention="deferred_softmax"):
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
    self.attention = attention

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
    with attention_scope(self.attention):
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


def load_stable_diffusion(model, *, revision=None, dtype="float32", prompt,
                          view_suffixes=DEFAULT_VIEW_SUFFIXES, view_dependent=True,
                          use_vae=True, render_size=64, attention="deferred_softmax"):
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
    view_dependent: False conditions every view bucket on the bare prompt (the ablation of
      §3.2's view-dependent prompts).
    use_vae: False skips the VAE in `encode` (for cost studies only).
    render_size: the render resolution the trainer should use (DreamFusion renders 64x64);
      renders are upsampled to the VAE's input size inside `encode`.
    attention: how the U-Net computes attention, a key of ATTENTION (same weights and the
      same result up to float rounding).

  Returns:
    StableDiffusionPrior.

  Raises:
    UserError: the model cannot be found or read, or an argument is invalid.
  """
  compute_dtype = _check_arguments(dtype, prompt, view_suffixes, render_size, attention)
  root = sd_checkpoint.resolve_model_dir(model, revision, use_vae=use_vae)
  for name in sd_checkpoint.COMPONENTS if use_vae else sd_checkpoint.COMPONENTS[:-1]:
    sd_checkpoint.component_dir(root, name)  # Fails fast, naming a missing subfolder.
  alphas_cumprod, prediction_type = sd_checkpoint.load_schedule(root)
  unet, unet_params = _load_unet(root, compute_dtype, attention)
  if use_vae:
    vae, vae_encoder, latent_space = _load_vae(root, compute_dtype, unet=unet)
  else:
    vae, vae_encoder, latent_space = None, None, latent_space_of(unet)
  prompts = [f"{prompt}, {suffix}" if view_dependent else prompt
             for suffix in view_suffixes] + [""]
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
      compute_dtype=compute_dtype, prompts=prompts, attention=attention)


def _check_arguments(dtype, prompt, view_suffixes, render_size, attention):
  """Validates the user-facing arguments; returns the compute dtype."""
  if dtype not in DTYPES:
    raise UserError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
  if attention not in ATTENTION:
    raise UserError(f"attention must be one of {tuple(ATTENTION)}, got {attention!r}")
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


def _load_unet(root, compute_dtype, attention):
  """The Flax U-Net module (attention as ATTENTION[attention]) and its float32 weights."""
  unet_class = sd_checkpoint.flax_model_classes()[0]
  unet, weights, _ = sd_checkpoint.load_component(
      root, "unet", unet_class, sd_checkpoint.UNET_FLAX_SUPPORTS, compute_dtype,
      **ATTENTION[attention])
  return unet, weights


def _load_vae(root, compute_dtype, *, unet):
  """The Flax VAE module, its encoder's float32 weights and the `LatentSpace`."""
  vae_class = sd_checkpoint.flax_model_classes()[1]
  vae, weights, folder = sd_checkpoint.load_component(
      root, "vae", vae_class, sd_checkpoint.VAE_FLAX_SUPPORTS, compute_dtype)
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
  sd_checkpoint.silence_flax_deprecation()
  from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel
  folder = sd_checkpoint.component_dir(root, "text_encoder")
  tokenizer_folder = sd_checkpoint.component_dir(root, "tokenizer")
  try:
    config = CLIPTextConfig.from_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
  except (OSError, ValueError, KeyError) as error:
    raise UserError(f"cannot read the text encoder or tokenizer in {root}: "
                    f"{sd_checkpoint.first_line(error)}") from error
  length = int(tokenizer.model_max_length)
  if length > config.max_position_embeddings:
    raise UserError(f"{tokenizer_folder}: model_max_length {length} exceeds the text encoder's "
                    f"max_position_embeddings {config.max_position_embeddings}")
  text_encoder = FlaxCLIPTextModel(config, _do_init=False)
  abstract = jax.eval_shape(lambda key: text_encoder.init_weights(key, (1, 1)),
                            jax.random.PRNGKey(0))
  weights = sd_checkpoint.load_weights(folder, abstract, join_indices=False)
  token_ids = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="np").input_ids
  hidden = text_encoder(token_ids, params=weights).last_hidden_state
  return np.asarray(hidden, np.float32)
