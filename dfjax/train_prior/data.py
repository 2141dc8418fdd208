"""The training data of a toy Stable Diffusion: bank images with view-dependent prompts.

A pipeline is trained on one or more image banks (`dfjax.priors.bank`'s file format). Each
image's prompt is "{caption}, {suffix}", the suffix naming the view bucket of the image's
camera (front, side, back, overhead; DreamFusion §3.2), the template the prior is asked with
at distillation time. The empty prompt, last in the prompt table, stands for the unconditional
model of classifier-free guidance (Ho & Salimans 2022).

Without a bank of the user's, the data is the toy world: every object rendered by
`dfjax.toy.banks` in each shading (albedo, Lambertian, Lambertian with textureless views), so
the prior knows lit and untextured looks as Stable Diffusion knows photos and renders.

Data flow: priors.bank (file format, view buckets) and toy.banks (the toy world's banks) ->
here -> train_prior.loop.
"""
import dataclasses

import numpy as np

from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib


@dataclasses.dataclass(frozen=True)
class PriorData:
  """Images and prompts to train on.

  Attributes:
    images: [N, S, S, 3] float32 in [-1, 1] (the VAE's input range).
    prompt_index: [N] int32, each image's row in `prompts`.
    prompts: P + 1 strings: the P view-dependent prompts, then "" (the unconditional prompt).
    captions: the banks' distinct captions, in order of first appearance.
    view_bucket: [N] int32 view bucket of each image (0 front, 1 side, 2 back, 3 overhead).
    caption_index: [N] int32, each image's row in `captions`.
  """
  images: np.ndarray
  prompt_index: np.ndarray
  prompts: tuple
  captions: tuple
  view_bucket: np.ndarray
  caption_index: np.ndarray


def toy_world_banks(*, resolution, views_per_object, shadings, seed):
  """Paths of the toy world's banks, one per shading, rendered and cached on first use."""
  from dfjax.toy import banks as toy_banks  # pylint: disable=g-import-not-at-top
  for shading in shadings:
    if shading not in toy_banks.SHADINGS:
      raise UserError(f"toy shading {shading!r} is not one of {toy_banks.SHADINGS}")
  return [toy_banks.get_toy_bank(resolution=resolution, views_per_object=views_per_object,
                                 shading=shading, seed=seed) for shading in shadings]


def load_prior_data(bank_paths, *, view_suffixes, downsampling):
  """Reads the banks and pairs each image with its view-dependent prompt.

  Args:
    bank_paths: .npz bank files, all of one image size S.
    view_suffixes: four strings for view buckets 0 front, 1 side, 2 back, 3 overhead.
    downsampling: the factor the VAE and U-Net together divide S by; S must be a multiple.

  Returns:
    PriorData.

  Raises:
    UserError: a bank is missing or invalid, the banks' sizes differ, or S is not a multiple of
      `downsampling`.
  """
  banks = [bank_lib.load_bank(path) for path in bank_paths]
  sizes = sorted({bank.images.shape[1] for bank in banks})
  if len(sizes) > 1:
    raise UserError(f"the banks hold images of different sizes {sizes}; train on one size")
  size = sizes[0]
  if size % downsampling:
    raise UserError(f"bank images are {size}x{size} pixels, which the VAE and U-Net cannot "
                    f"take: the size must be a multiple of {downsampling} (resample the bank, "
                    "or change vae.block_out_channels / unet.block_out_channels)")
  captions = tuple(dict.fromkeys(str(p) for bank in banks for p in bank.prompts))
  caption_index = np.concatenate(
      [[captions.index(str(p)) for p in bank.prompts] for bank in banks]).astype(np.int32)
  view_bucket = np.concatenate([bank_lib.bank_view_buckets(bank) for bank in banks])
  prompts = tuple(f"{caption}, {suffix}" for caption in captions for suffix in view_suffixes)
  images = np.concatenate([bank.images for bank in banks]).astype(np.float32) / 127.5 - 1.0
  return PriorData(images=images,
                   prompt_index=(caption_index * len(view_suffixes) + view_bucket).astype(
                       np.int32),
                   prompts=prompts + ("",), captions=captions,
                   view_bucket=view_bucket.astype(np.int32), caption_index=caption_index)
