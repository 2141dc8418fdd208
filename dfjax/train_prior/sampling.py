"""Images from a (toy) Stable Diffusion pipeline: guided DDIM sampling, then the VAE decoder.

Used to look at a prior as a generator (TensorBoard grids while it trains, the model card's
sample grid, and the object and view accuracy of `dfjax.eval.prior_quality`). Sampling is DDIM
(Song et al. 2021, Eq. 12, deterministic) with classifier-free guidance (Ho & Salimans 2022)
over evenly spaced timesteps of the training schedule.

Data flow: priors.diffusion, priors.sds (guidance), priors.sd_checkpoint and
priors.stable_diffusion (reading a pipeline), train_prior.steps (the decoder) -> here ->
train_prior.loop and eval.prior_quality.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dfjax.priors import diffusion
from dfjax.priors import sd_checkpoint
from dfjax.priors import sds
from dfjax.priors import stable_diffusion
from dfjax.train_prior import steps as steps_lib


def ddim_timesteps(num_train_timesteps, num_steps):
  """[num_steps] int32 timesteps from T - 1 down to 0, evenly spaced."""
  return np.round(np.linspace(num_train_timesteps - 1, 0, num_steps)).astype(np.int32)


# Jitted closures over a module, by the module's identity (modules read from config files hold
# lists, which jax.jit cannot hash as static arguments); the module is kept alive beside them.
_COMPILED = {}


def _jit_with(function, module, **static):
  """jax.jit of `function` with `module` (and `static`) bound, compiled once per module."""
  key = (function, id(module), tuple(sorted(static.items())))
  if key not in _COMPILED:
    _COMPILED[key] = (module, jax.jit(functools.partial(function, module=module, **static)))
  return _COMPILED[key][1]


def sample_latents(unet_params, cond, uncond, alphas_cumprod, noise, *, unet, num_steps,
                   guidance_scale):
  """Scaled latents by guided DDIM from pure noise (jitted once per U-Net and step count).

  Args:
    unet_params: the U-Net's parameters.
    cond: [B, L, D] text hidden states of each sample's prompt.
    uncond: [1, L, D] hidden states of the empty prompt.
    alphas_cumprod: [T] the training schedule.
    noise: [B, h, w, c] x_T.
    unet: FlaxUNet2DConditionModel (static).
    num_steps: DDIM steps (static).
    guidance_scale: s of classifier-free guidance.

  Returns:
    [B, h, w, c] scaled latents x_0.
  """
  return _jit_with(_sample_latents, unet, num_steps=num_steps)(
      unet_params, cond, uncond, alphas_cumprod, noise, guidance_scale)


def _sample_latents(unet_params, cond, uncond, alphas_cumprod, noise, guidance_scale, *,
                    module, num_steps):
  unet = module
  batch = noise.shape[0]
  timesteps = jnp.asarray(ddim_timesteps(alphas_cumprod.shape[0], num_steps))
  previous = jnp.concatenate([timesteps[1:], jnp.array([-1], jnp.int32)])
  context = jnp.concatenate([cond, jnp.broadcast_to(uncond, cond.shape)])

  def step(x_t, t_pair):
    t, t_prev = t_pair
    sample = jnp.transpose(jnp.concatenate([x_t, x_t]), (0, 3, 1, 2))
    output = unet.apply({"params": unet_params}, sample, jnp.full((2 * batch,), t),
                        context).sample
    output = jnp.transpose(output, (0, 2, 3, 1))
    eps = sds.classifier_free_guidance(output[:batch], output[batch:],
                                       guidance_scale=guidance_scale)
    alpha_prev = jnp.where(t_prev >= 0, alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    return diffusion.ddim_step(x_t, eps, alphas_cumprod[t], alpha_prev), None

  latents, _ = jax.lax.scan(step, noise, (timesteps, previous))
  return latents


def decode_to_images(vae_params, latents, scaling_factor, *, vae):
  """Scaled latents [B, h, w, c] to images [B, H, W, 3] in [0, 1]."""
  return _jit_with(_decode_to_images, vae)(vae_params, latents, scaling_factor)


def _decode_to_images(vae_params, latents, scaling_factor, *, module):
  images = steps_lib.decode_latents(module, vae_params, latents / scaling_factor)
  return jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class PipelineSampler:
  """A pipeline directory's U-Net, whole VAE and schedule, for drawing images."""
  root: str
  unet: Any
  unet_params: Any
  vae: Any
  vae_params: Any
  alphas_cumprod: np.ndarray
  scaling_factor: float

  @classmethod
  def load(cls, model):
    """Reads a diffusers-format pipeline directory (or a cached hub id) in float32."""
    root = sd_checkpoint.resolve_model_dir(model, None, use_vae=True)
    unet_class, vae_class = sd_checkpoint.flax_model_classes()
    unet, unet_params, _ = sd_checkpoint.load_component(
        root, "unet", unet_class, sd_checkpoint.UNET_FLAX_SUPPORTS, jnp.float32)
    vae, vae_params, _ = sd_checkpoint.load_component(
        root, "vae", vae_class, sd_checkpoint.VAE_FLAX_SUPPORTS, jnp.float32)
    alphas_cumprod, _ = sd_checkpoint.load_schedule(root)
    return cls(root=str(root), unet=unet, unet_params=unet_params, vae=vae,
               vae_params=vae_params, alphas_cumprod=np.asarray(alphas_cumprod, np.float32),
               scaling_factor=float(vae.scaling_factor))

  def sample(self, prompts, key, *, num_steps=25, guidance_scale=7.5):
    """Images [len(prompts), H, W, 3] in [0, 1], one per prompt, by guided DDIM."""
    embeddings = stable_diffusion.prompt_embeddings(self.root, list(prompts) + [""])
    size, channels = int(self.unet.sample_size), int(self.unet.in_channels)
    noise = jax.random.normal(key, (len(prompts), size, size, channels))
    latents = sample_latents(self.unet_params, jnp.asarray(embeddings[:-1]),
                             jnp.asarray(embeddings[-1:]), jnp.asarray(self.alphas_cumprod),
                             noise, unet=self.unet, num_steps=num_steps,
                             guidance_scale=guidance_scale)
    return np.asarray(decode_to_images(self.vae_params, latents, self.scaling_factor,
                                       vae=self.vae))


def image_grid(images, *, columns):
  """[N, H, W, 3] images tiled row by row into one [rows * H, columns * W, 3] image (missing
  tiles white)."""
  images = np.asarray(images)
  count, height, width, _ = images.shape
  rows = -(-count // columns)
  grid = np.ones((rows * height, columns * width, 3), images.dtype)
  for index, image in enumerate(images):
    row, column = divmod(index, columns)
    grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
  return grid
