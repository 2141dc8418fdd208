"""Writing a trained toy pipeline in diffusers' directory format, all or nothing.

The directory is what `FlaxStableDiffusionPipeline.save_pretrained` writes (model_index.json,
unet/, vae/, text_encoder/, tokenizer/, scheduler/), so dfjax's loader and diffusers' own
`FlaxStableDiffusionPipeline.from_pretrained` both read it. It is written into a staging folder
beside the destination and moved into place only when complete: an interrupted or failed write
never leaves a half-written pipeline, and an older pipeline stays until the new one is whole.

Data flow: train_prior.models -> here -> train_prior.loop.
"""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dfjax.priors import sd_checkpoint

# Stable Diffusion 1.x/2.x's training schedule (the "scaled_linear" betas of its
# scheduler_config.json), with the DDIM sampler diffusers' pipeline steps with.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", prediction_type="epsilon")


def _cast(tree, dtype):
  """Floating leaves of `tree` as numpy arrays of `dtype`."""
  return jax.tree.map(lambda leaf: np.asarray(jax.device_get(leaf)).astype(dtype), tree)


def save_pipeline(directory, *, vae, unet, text_encoder, tokenizer, params, weight_dtype):
  """Writes the pipeline to `directory`, replacing an older one only once the new one is
  complete.

  Args:
    directory: the pipeline folder to create (its parent must exist).
    vae, unet, text_encoder: the Flax modules (the VAE's config carries its scaling_factor).
    tokenizer: the CLIPTokenizer.
    params: {"vae": ..., "unet": ..., "text_encoder": ...} weights.
    weight_dtype: "float32" or "float16", the dtype the weight files store.
  """
  sd_checkpoint.silence_flax_deprecation()
  from diffusers import FlaxDDIMScheduler, FlaxStableDiffusionPipeline  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(os.fspath(directory))
  staging = f"{directory}.partial-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  scheduler = FlaxDDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1)
  pipeline = FlaxStableDiffusionPipeline(
      vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
      safety_checker=None, feature_extractor=None, dtype=jnp.float32)
  try:
    pipeline.save_pretrained(staging, params={k: _cast(v, np.dtype(weight_dtype))
                                              for k, v in params.items()})
    previous = f"{directory}.previous-{os.getpid()}"
    if os.path.exists(directory):
      os.replace(directory, previous)
    os.replace(staging, directory)
    shutil.rmtree(previous, ignore_errors=True)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
