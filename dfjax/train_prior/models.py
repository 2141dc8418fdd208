"""The modules of a small Stable Diffusion: diffusers' and transformers' own Flax classes.

A toy pipeline is the architecture family of Stable Diffusion (Rombach et al. 2022), only
smaller: a KL-regularised `FlaxAutoencoderKL` (§3, App. G), a `FlaxUNet2DConditionModel` with
cross-attention to the last hidden states of a `FlaxCLIPTextModel` (§3.3), so the files it
writes are read by exactly the code that reads Stable Diffusion. Sizes come from the config;
the constructors below take them as keywords.

Data flow: the library classes -> here -> train_prior.steps, train_prior.pipeline and
train_prior.loop.
"""
import jax

from dfjax.priors import sd_checkpoint


def vae_downsampling(block_out_channels):
  """The VAE's spatial downsampling factor: one halving between consecutive blocks."""
  return 2 ** (len(block_out_channels) - 1)


def make_vae(*, block_out_channels, layers_per_block, latent_channels, sample_size,
             scaling_factor=1.0):
  """A `FlaxAutoencoderKL` with one encoder/decoder block per entry of block_out_channels."""
  _, vae_class = sd_checkpoint.flax_model_classes()
  blocks = len(block_out_channels)
  return vae_class.from_config(dict(
      in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
      up_block_types=("UpDecoderBlock2D",) * blocks,
      block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
      latent_channels=latent_channels, sample_size=sample_size,
      norm_num_groups=min(32, min(block_out_channels)), scaling_factor=float(scaling_factor)))


def make_unet(*, block_out_channels, layers_per_block, attention_head_dim,
              cross_attention_dim, latent_channels, sample_size):
  """A `FlaxUNet2DConditionModel` with cross-attention at every resolution."""
  unet_class, _ = sd_checkpoint.flax_model_classes()
  blocks = len(block_out_channels)
  return unet_class.from_config(dict(
      sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
      down_block_types=("CrossAttnDownBlock2D",) * blocks,
      up_block_types=("CrossAttnUpBlock2D",) * blocks,
      block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
      attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim))


def make_text_encoder(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                      max_length, bos_token_id, eos_token_id):
  """A `FlaxCLIPTextModel` (causal transformer, quick-GELU like CLIP ViT-L/14's)."""
  sd_checkpoint.silence_flax_deprecation()
  from transformers import CLIPTextConfig, FlaxCLIPTextModel  # pylint: disable=g-import-not-at-top
  config = CLIPTextConfig(
      vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_hidden_layers=num_layers, num_attention_heads=num_heads,
      max_position_embeddings=max_length, hidden_act="quick_gelu",
      bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
  return FlaxCLIPTextModel(config, _do_init=False)


def init_params(key, *, vae, unet, text_encoder, max_length):
  """Fresh weights from each module's own initialiser: {"vae", "unet", "text_encoder"}."""
  k_vae, k_unet, k_text = jax.random.split(key, 3)
  return {
      "vae": jax.jit(vae.init_weights)(k_vae),
      "unet": jax.jit(unet.init_weights)(k_unet),
      "text_encoder": jax.jit(lambda k: text_encoder.init_weights(k, (1, max_length)))(k_text),
  }


def text_hidden_states(text_encoder, params, token_ids):
  """[P, L, D] last hidden states of the prompts' token ids [P, L] (SD's text condition)."""
  return text_encoder(token_ids, params=params).last_hidden_state
