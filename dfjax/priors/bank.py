"""The image bank and its closed-form diffusion prior.

DreamFusion (Poole et al. 2022, arXiv:2209.14988 §3) distils a pretrained text-to-image
diffusion model into a 3D scene. dfjax can instead distil the *exact* denoiser of a small,
known image distribution: the empirical distribution of a bank of captioned, posed images
(rendered from the toy world, `dfjax.toy`). Its minimum-mean-square-error denoiser has a closed
form (the "ideal denoiser" of Karras et al. 2022, EDM, App. B.3), so the prior needs no
training and no weights, and the 3D answer SDS should find is known.

The bank is a public file format, an .npz archive holding
  images   uint8 [N, S, S, 3]   square RGB images,
  prompts  str   [N]            the caption of each image,
  c2w      float [N, 4, 4]      camera-to-world matrices (OpenGL axes, last row 0 0 0 1),
  fov_deg  float [N]            vertical field of view of each image, in (0, 180) degrees.

Data flow: scene.cameras (view buckets) and priors.diffusion -> here -> priors.sds (through
the prior interface: `encode`, `predict_noise`), train.prior_setup, and toy.banks (which
writes the file format read here).
"""
import dataclasses
import os
import zipfile
from typing import NamedTuple

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from dfjax.errors import UserError
from dfjax.priors import diffusion
from dfjax.scene import cameras

BANK_KEYS = ("images", "prompts", "c2w", "fov_deg")
BANK_FORMAT = ("a bank is an .npz holding images uint8 [N,S,S,3], prompts str [N], "
               "c2w float [N,4,4] (camera-to-world, last row 0 0 0 1) and "
               "fov_deg float [N] in (0, 180)")
NUM_VIEW_BUCKETS = 4


class Bank(NamedTuple):
  """A bank of captioned, posed images (numpy arrays, N images).

  Attributes:
    images: [N, S, S, 3] uint8.
    prompts: [N] str, the caption of each image.
    c2w: [N, 4, 4] float32 camera-to-world matrices.
    fov_deg: [N] float32 vertical fields of view in degrees.
  """
  images: np.ndarray
  prompts: np.ndarray
  c2w: np.ndarray
  fov_deg: np.ndarray


def _check_dtypes(arrays):
  """Returns what is wrong with the dtypes and ranks of `arrays` (dict), or None."""
  images, prompts, c2w, fov_deg = (arrays[k] for k in BANK_KEYS)
  if images.dtype != np.uint8:
    return f"images has dtype {images.dtype}, expected uint8"
  if prompts.dtype.kind not in "US":
    return f"prompts has dtype {prompts.dtype}, expected a string array"
  for name, array in (("c2w", c2w), ("fov_deg", fov_deg)):
    if array.dtype.kind != "f":
      return f"{name} has dtype {array.dtype}, expected floating point"
  if images.ndim != 4 or images.shape[-1] != 3:
    return f"images has shape {images.shape}, expected [N,S,S,3]"
  if images.shape[1] != images.shape[2]:
    return f"images are {images.shape[1]}x{images.shape[2]}, expected square images"
  if prompts.ndim != 1 or fov_deg.ndim != 1:
    return f"prompts {prompts.shape} and fov_deg {fov_deg.shape} must both be [N]"
  if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
    return f"c2w has shape {c2w.shape}, expected [N,4,4]"
  return None


def _check_values(images, prompts, c2w, fov_deg):
  """Returns what is wrong with the sizes and values of a bank's arrays, or None."""
  sizes = {"images": len(images), "prompts": len(prompts), "c2w": len(c2w),
           "fov_deg": len(fov_deg)}
  if len(set(sizes.values())) != 1:
    return f"the arrays hold different numbers of images {sizes}"
  if not sizes["images"]:
    return "the bank holds no images"
  if not np.all(np.isfinite(c2w)):
    return "c2w holds non-finite values"
  if not np.allclose(c2w[:, 3, :], [0.0, 0.0, 0.0, 1.0], rtol=0, atol=1e-6):
    return "some c2w matrix has a last row other than [0, 0, 0, 1]"
  if np.any(np.linalg.norm(c2w[:, :3, 3], axis=-1) < 1e-6):
    return "some camera sits at the origin (c2w translation 0)"
  if not np.all(np.isfinite(fov_deg) & (fov_deg > 0.0) & (fov_deg < 180.0)):
    return "fov_deg holds values outside (0, 180) degrees"
  return None


def check_bank_arrays(arrays, *, source):
  """Validates the arrays of a bank and returns them as a `Bank`.

  Args:
    arrays: a mapping with the keys BANK_KEYS (numpy arrays or array-likes).
    source: what the arrays came from, for the error message (e.g. the file name).

  Returns:
    Bank with images uint8, prompts str, c2w and fov_deg float32.

  Raises:
    UserError: one line saying what is wrong and what a valid bank holds.
  """
  missing = [k for k in BANK_KEYS if k not in arrays]
  if missing:
    raise UserError(f"invalid image bank {source}: missing key(s) {missing}; {BANK_FORMAT}")
  arrays = {k: np.asarray(arrays[k]) for k in BANK_KEYS}
  problem = _check_dtypes(arrays) or _check_values(*(arrays[k] for k in BANK_KEYS))
  if problem:
    raise UserError(f"invalid image bank {source}: {problem}; {BANK_FORMAT}")
  return Bank(images=arrays["images"], prompts=arrays["prompts"].astype(str),
              c2w=arrays["c2w"].astype(np.float32),
              fov_deg=arrays["fov_deg"].astype(np.float32))


def _first_line(error):
  """The first line of an exception's message, or its type name if it has none."""
  return str(error).splitlines()[0] if str(error).strip() else type(error).__name__


def load_bank(path):
  """Reads and validates an image bank (.npz, see the module docstring).

  Args:
    path: the .npz file.

  Returns:
    Bank.

  Raises:
    UserError: the file is missing, unreadable or not a valid bank (one line).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"image bank {path} does not exist; {BANK_FORMAT}")
  with open(path, "rb") as f:
    magic = f.read(6)
  if magic.startswith(b"\x93NUMPY"):
    raise UserError(f"image bank {path} holds a single array, not an .npz archive; "
                    f"{BANK_FORMAT}")
  if not magic.startswith(b"PK"):
    raise UserError(f"image bank {path} is not a readable .npz archive (no zip header); "
                    f"{BANK_FORMAT}")
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
    raise UserError(f"image bank {path} is not a readable .npz archive ({_first_line(error)}); "
                    f"{BANK_FORMAT}") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise UserError(f"image bank {path} holds a single array, not an .npz archive; "
                    f"{BANK_FORMAT}")
  arrays = {}
  with archive:
    for key in BANK_KEYS:
      if key not in archive.files:
        continue
      try:
        arrays[key] = archive[key]
      except ValueError as error:
        if "allow_pickle" not in str(error):
          raise UserError(f"cannot read key {key!r} of image bank {path} "
                          f"({_first_line(error)}); {BANK_FORMAT}") from None
        raise UserError(f"cannot read key {key!r} of image bank {path}: it holds Python "
                        "objects, which are not loaded; save it as a plain array (e.g. "
                        f"np.array(prompts, dtype=str)); {BANK_FORMAT}") from None
      except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"cannot read key {key!r} of image bank {path} ({_first_line(error)});"
                        f" {BANK_FORMAT}") from None
  return check_bank_arrays(arrays, source=path)


def save_bank(path, *, images, prompts, c2w, fov_deg):
  """Writes an image bank (.npz, see the module docstring) after validating it.

  Args:
    path: the file to write (written as given, no extension added).
    images: [N, S, S, 3] uint8.
    prompts: [N] str captions.
    c2w: [N, 4, 4] camera-to-world matrices.
    fov_deg: [N] vertical fields of view in degrees.
  """
  bank = check_bank_arrays(
      dict(images=images, prompts=prompts, c2w=c2w, fov_deg=fov_deg), source="to save")
  with open(path, "wb") as f:
    np.savez_compressed(f, **bank._asdict())


@dataclasses.dataclass(frozen=True)
class BankCameraRanges:
  """The range of the bank's own cameras, for sampling training cameras like them.

  Attributes:
    distance: (min, max) distance of the camera centres from the origin, world units.
    fov_deg: (min, max) vertical field of view, degrees.
    elevation_deg: (min, max) elevation of the camera centres, degrees.
  """
  distance: tuple[float, float]
  fov_deg: tuple[float, float]
  elevation_deg: tuple[float, float]


def bank_camera_ranges(bank):
  """The bank's camera distribution (azimuth is taken as uniform by the trainer).

  Args:
    bank: Bank.

  Returns:
    BankCameraRanges.
  """
  _, elevation, distance = (np.asarray(a) for a in cameras.camera_angles(jnp.asarray(bank.c2w)))

  def span(values):
    return (float(np.min(values)), float(np.max(values)))
  return BankCameraRanges(distance=span(distance), fov_deg=span(bank.fov_deg),
                          elevation_deg=span(elevation))


def bank_view_buckets(bank):
  """The view bucket (0 front, 1 side, 2 back, 3 overhead) of each bank image's camera.

  Args:
    bank: Bank.

  Returns:
    [N] int32, by `cameras.view_bucket` of the camera position's angles.
  """
  azimuth, elevation, _ = cameras.camera_angles(jnp.asarray(bank.c2w))
  return np.asarray(cameras.view_bucket(azimuth, elevation), np.int32)


def ideal_denoiser_log_weights(x_t, images, squared_norms, alpha_bar):
  """Log posterior weights of the bank images given x_t, up to a per-row constant.

  For x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps with x_0 drawn uniformly from the images x_i,
  p(x_0 = x_i | x_t) = softmax_i(-||x_t - sqrt(abar) x_i||^2 / (2 (1 - abar))) (Karras et al.
  2022, EDM, App. B.3, "ideal denoiser"). Expanding the distance as
  ||x_t||^2 - 2 sqrt(abar) <x_t, x_i> + abar ||x_i||^2, the first term is the same for every i
  and cancels in the softmax; it is left out because in float32 it would only add rounding
  error of the order of ||x_t||^2 * 1e-7. The inner products are one matmul (never a
  [B, N, D] difference), at full float32 precision (no TF32/bf16 passes on accelerators).

  Args:
    x_t: [B, D] noisy samples, float32.
    images: [N, D] bank images in [-1, 1].
    squared_norms: [N] ||x_i||^2.
    alpha_bar: [B] abar_t.

  Returns:
    [B, N] float32 log-weights (unnormalised).
  """
  # Written with the bank on the left: as x_t @ images.T, XLA:CPU turned the single-row
  # product into a loop that recomputed x_t (the noise's random bits included) for every bank
  # image, 5x slower in a micro-benchmark.
  inner = jnp.einsum("nd,bd->bn", images, x_t, precision=jax.lax.Precision.HIGHEST)
  alpha_bar = alpha_bar[:, None]
  return ((jnp.sqrt(alpha_bar) * inner - 0.5 * alpha_bar * squared_norms[None, :])
          / (1.0 - alpha_bar))


def masked_posterior_mean(log_weights, mask, images):
  """E[x_0 | x_t] over the images selected by `mask` (a masked softmax, log-sum-exp stable).

  Args:
    log_weights: [B, N] from `ideal_denoiser_log_weights`.
    mask: [B, N] bool, the images each row may choose from (at least one per row).
    images: [N, D].

  Returns:
    [B, D] posterior means.
  """
  log_weights = jnp.where(mask, log_weights, -jnp.inf)
  log_weights = log_weights - jnp.max(log_weights, axis=-1, keepdims=True)
  weights = jnp.where(mask, jnp.exp(log_weights), 0.0)
  weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.matmul(weights, images, precision=jax.lax.Precision.HIGHEST)


def eps_from_x0(x_t, x0, alpha_bar):
  """The noise implied by a clean-sample estimate: (x_t - sqrt(abar) x0) / sqrt(1 - abar).

  Inverts the forward process (Ho et al. 2020, Eq. 4) for eps.

  Args:
    x_t: [B, D]; x0: [B, D]; alpha_bar: [B].

  Returns:
    [B, D] eps_hat.
  """
  alpha_bar = alpha_bar[:, None]
  return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)


@struct.dataclass
class ClosedFormParams:
  """The frozen pytree of the closed-form prior.

  Attributes:
    images: [N, S*S*3] float32 bank images in [-1, 1].
    squared_norms: [N] float32 ||x_i||^2.
    cond_masks: [4, N] bool, the images the conditional branch uses for each view bucket.
    uncond_mask: [N] bool, the images of the unconditional branch (all of them).
  """
  images: jax.Array
  squared_norms: jax.Array
  cond_masks: jax.Array
  uncond_mask: jax.Array


def condition_masks(bank, *, prompt, view_dependent=True):
  """Which bank images the conditional branch uses, per view bucket.

  The caption selects its images. With `view_dependent`, the images are further restricted to
  those whose camera lies in the rendered camera's view bucket: the closed-form counterpart of
  DreamFusion's view-dependent prompts (§3.2). If a bucket holds none of the caption's images,
  that bucket falls back to all of the caption's images (a prompt without a view suffix).

  Args:
    bank: Bank.
    prompt: a caption of the bank.
    view_dependent: restrict to the view bucket.

  Returns:
    (cond_masks [4, N] bool, fallback: tuple of 4 bools, True where a bucket fell back).

  Raises:
    UserError: the prompt is not one of the bank's captions (the message lists them).
  """
  caption_mask = bank.prompts == prompt
  if not caption_mask.any():
    captions = ", ".join(repr(c) for c in dict.fromkeys(bank.prompts.tolist()))
    raise UserError(f"prompt {prompt!r} is not a caption of the image bank; use one of: "
                    f"{captions}")
  if not view_dependent:
    return np.tile(caption_mask, (NUM_VIEW_BUCKETS, 1)), (False,) * NUM_VIEW_BUCKETS
  buckets = bank_view_buckets(bank)
  masks, fallback = [], []
  for bucket in range(NUM_VIEW_BUCKETS):
    mask = caption_mask & (buckets == bucket)
    fallback.append(not mask.any())
    masks.append(caption_mask if fallback[-1] else mask)
  return np.stack(masks), tuple(fallback)


class ClosedFormPrior:
  """The exact MMSE denoiser of the bank's empirical distribution, as an SDS prior.

  Pixel space: x_0 = 2 image - 1 in [-1, 1] at the bank's resolution. For
  x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps,
      E[x_0 | x_t] = sum_i softmax_i(-||x_t - sqrt(abar) x_i||^2 / (2 (1 - abar))) x_i
  (the ideal denoiser, Karras et al. 2022, EDM, App. B.3) and
      eps_hat = (x_t - sqrt(abar) E[x_0 | x_t]) / sqrt(1 - abar).
  The conditional branch averages over the prompt's images (in the camera's view bucket, see
  `condition_masks`), the unconditional branch over every image of the bank. The schedule is
  Stable Diffusion's (scaled_linear, betas 0.00085..0.012, T = 1000), so SDS behaves with the
  same t_range and w(t) as with the pretrained prior.

  Attributes:
    image_size: S, the render resolution the trainer must use.
    alphas_cumprod: [1000] float32.
    params: ClosedFormParams.
    prompt: the caption the prior is conditioned on.
    fallback: 4 bools, True where a view bucket held none of the caption's images.
  """

  def __init__(self, *, params, image_size, prompt, fallback=(False,) * NUM_VIEW_BUCKETS):
    self.params = params
    self.image_size = int(image_size)
    self.prompt = prompt
    self.fallback = tuple(fallback)
    self.alphas_cumprod = diffusion.alphas_cumprod_from_config()

  @classmethod
  def from_bank(cls, bank, *, prompt, view_dependent=True):
    """Builds the prior of `bank` conditioned on the caption `prompt`."""
    cond_masks, fallback = condition_masks(bank, prompt=prompt, view_dependent=view_dependent)
    images = bank.images.reshape(len(bank.images), -1).astype(np.float64) / 127.5 - 1.0
    params = ClosedFormParams(
        images=jnp.asarray(images, jnp.float32),
        squared_norms=jnp.asarray(np.sum(images**2, axis=-1), jnp.float32),
        cond_masks=jnp.asarray(cond_masks),
        uncond_mask=jnp.ones(len(images), bool))
    return cls(params=params, image_size=bank.images.shape[1], prompt=prompt,
               fallback=fallback)

  def encode(self, params, images):
    """x_0 = 2 images - 1 (pixel space). images: [B, S, S, 3] in [0, 1] -> [B, S, S, 3]."""
    del params
    size = self.image_size
    if tuple(images.shape[1:]) != (size, size, 3):
      raise UserError(f"the image-bank prior needs renders of shape [B,{size},{size},3], got "
                      f"{list(images.shape)}; render at the bank's resolution {size}")
    return 2.0 * images.astype(jnp.float32) - 1.0

  def predict_noise(self, params, x_t, timesteps, view_bucket):
    """Conditional and unconditional eps_hat in one batched evaluation.

    Args:
      params: ClosedFormParams.
      x_t: [B, S, S, 3] noisy samples.
      timesteps: [B] int32.
      view_bucket: [B] int32 bucket of each rendered camera.

    Returns:
      (eps_cond, eps_uncond), each [B, S, S, 3] float32.
    """
    batch = x_t.shape[0]
    x_t_flat = x_t.reshape(batch, -1).astype(jnp.float32)
    alpha_bar = jnp.asarray(self.alphas_cumprod)[timesteps]
    log_weights = ideal_denoiser_log_weights(x_t_flat, params.images, params.squared_norms,
                                             alpha_bar)
    cond_mask = params.cond_masks[jnp.clip(view_bucket, 0, NUM_VIEW_BUCKETS - 1)]
    uncond_mask = jnp.broadcast_to(params.uncond_mask, cond_mask.shape)
    # Both branches share the distances; rows [0, B) are conditional, [B, 2B) unconditional.
    x0_hat = masked_posterior_mean(jnp.concatenate([log_weights, log_weights]),
                                   jnp.concatenate([cond_mask, uncond_mask]), params.images)
    eps = eps_from_x0(jnp.concatenate([x_t_flat, x_t_flat]), x0_hat,
                      jnp.concatenate([alpha_bar, alpha_bar]))
    return eps[:batch].reshape(x_t.shape), eps[batch:].reshape(x_t.shape)
