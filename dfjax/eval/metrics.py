"""Shape and image metrics for the ablation study (arXiv:2209.14988 §4, Fig. 6).

The ablations compare runs that add view augmentation, view-dependent prompts, lighting and
textureless shading one at a time. Besides CLIP R-Precision (dfjax.eval.clip_eval) they are judged
here by geometry (occupancy IoU against a reference shape, silhouette IoU, normal error),
"floaters" (density far from the object) and colour saturation (high guidance over-saturates).
All functions are plain numpy on host arrays and return Python floats.

Occupancy grids follow the export grid convention of dfjax.export.mesh: entry [i, j, k] is the voxel
centred at (x_i, x_j, x_k), x_n = -bound + (n + 0.5) * 2 * bound / resolution.

Data flow: export.mesh (its grid convention) -> here -> eval.ablation_metrics, eval.ablations.
"""
import numpy as np

from dfjax.export import mesh as mesh_lib


def iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two boolean sets, |a & b| / |a | b|.

  Args:
    a: boolean array of any shape, e.g. an occupancy grid [R, R, R] or masks [B, H, W].
    b: boolean array of the same shape.

  Returns:
    IoU in [0, 1]; 1.0 when both sets are empty (they are identical).
  """
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f"iou needs equal shapes, got {a.shape} and {b.shape}")
  union = np.count_nonzero(a | b)
  return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def occupancy_grid(density_fn, *, resolution: int, bound: float, threshold: float,
                   chunk: int = 65536) -> np.ndarray:
  """Voxels whose centre has density above threshold.

  Args:
    density_fn: jnp function, points [N, 3] -> density [N].
    resolution: voxels per axis, R.
    bound: the grid spans [-bound, bound]^3.
    threshold: density level (world units^-1), e.g. dfjax.export.mesh.DEFAULT_THRESHOLD.
    chunk: points per density_fn call.

  Returns:
    [R, R, R] bool.
  """
  grid = mesh_lib.density_grid(density_fn, resolution=resolution, bound=bound, chunk=chunk)
  return grid > threshold


def mask_iou(alpha_a: np.ndarray, alpha_b: np.ndarray, *, threshold: float = 0.5) -> float:
  """Silhouette IoU of two renders' accumulated alpha, pooled over all pixels.

  Args:
    alpha_a: accumulated alpha [..., H, W] in [0, 1] (e.g. a batch of views [B, H, W]).
    alpha_b: the same shape.
    threshold: a pixel belongs to the silhouette where alpha > threshold.

  Returns:
    IoU in [0, 1] of the two silhouettes over all pixels of all views together.
  """
  return iou(np.asarray(alpha_a) > threshold, np.asarray(alpha_b) > threshold)


def psnr(a: np.ndarray, b: np.ndarray, *, max_value: float = 1.0) -> float:
  """Peak signal-to-noise ratio, 10 log10(max_value^2 / MSE), in dB.

  Args:
    a: images [..., H, W, C] (e.g. [B, H, W, 3] in [0, 1]).
    b: the same shape.
    max_value: the largest possible pixel value (1 for float images, 255 for uint8).

  Returns:
    PSNR in dB over all elements; +inf for identical images.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
  mse = np.mean((a - b)**2)
  return float("inf") if mse == 0 else float(10.0 * np.log10(max_value**2 / mse))


def normal_error_deg(normals_a: np.ndarray, normals_b: np.ndarray, mask: np.ndarray) -> float:
  """Mean angle between two normal maps over a mask, in degrees.

  Args:
    normals_a: [..., 3] normals (any length; normalised here), e.g. rendered normals [B, H, W, 3].
    normals_b: [..., 3] the same shape.
    mask: [...] bool, where both normals are defined (e.g. both silhouettes).

  Returns:
    mean over masked entries of arccos(n_a . n_b) in [0, 180]; NaN if the mask is empty.
    Zero-length normals count as 90 degrees from everything.
  """
  a, b = np.asarray(normals_a, np.float64), np.asarray(normals_b, np.float64)
  mask = np.asarray(mask, bool)
  if a.shape != b.shape or a.shape[:-1] != mask.shape or a.shape[-1] != 3:
    raise ValueError(f"normal_error_deg needs normals [..., 3] and mask [...], got {a.shape}, "
                     f"{b.shape} and {mask.shape}")
  if not mask.any():
    return float("nan")
  a, b = a[mask], b[mask]
  # max(norm, tiny) keeps a zero normal at a cosine of 0 instead of dividing by zero.
  cosine = np.sum(a * b, axis=-1) / np.maximum(
      np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-300)
  return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).mean())


def dilate(occupancy: np.ndarray, *, voxels: int) -> np.ndarray:
  """Binary dilation by a cube of half-width `voxels` (the L-infinity ball), separably.

  Args:
    occupancy: [R0, R1, R2] bool.
    voxels: dilation radius in voxels, >= 0.

  Returns:
    [R0, R1, R2] bool, True within `voxels` voxels (per axis) of an occupied voxel.
  """
  dilated = np.asarray(occupancy, bool)
  for axis in range(dilated.ndim):
    padding = [(0, 0)] * dilated.ndim
    padding[axis] = (voxels, voxels)
    padded = np.pad(dilated, padding)
    size = dilated.shape[axis]
    shifted = [np.take(padded, np.arange(s, s + size), axis=axis) for s in range(2 * voxels + 1)]
    dilated = np.logical_or.reduce(shifted)
  return dilated


def floater_fraction(predicted: np.ndarray, reference: np.ndarray, *,
                     dilation_voxels: int = 2) -> float:
  """Fraction of predicted-occupied voxels away from the reference shape ("floaters").

  Args:
    predicted: [R, R, R] bool occupancy of the learned field.
    reference: [R, R, R] bool occupancy of the reference shape.
    dilation_voxels: the reference is dilated by this many voxels first, so a surface that is
      merely a little too thick does not count.

  Returns:
    |predicted & ~dilate(reference)| / |predicted| in [0, 1]; 0.0 if nothing is predicted.
  """
  predicted = np.asarray(predicted, bool)
  outside = predicted & ~dilate(reference, voxels=dilation_voxels)
  total = np.count_nonzero(predicted)
  return 0.0 if total == 0 else np.count_nonzero(outside) / total


def empty_space_density(density: np.ndarray, reference: np.ndarray, *,
                        dilation_voxels: int = 2) -> float:
  """Mean density in the empty space around the reference shape.

  Args:
    density: [R, R, R] density grid of the learned field (dfjax.export.mesh.density_grid).
    reference: [R, R, R] bool occupancy of the reference shape.
    dilation_voxels: the reference is dilated by this many voxels before taking its complement.

  Returns:
    mean density over voxels outside the dilated reference (world units^-1); NaN if none.
  """
  empty = ~dilate(reference, voxels=dilation_voxels)
  return float(np.asarray(density)[empty].mean()) if empty.any() else float("nan")


def saturation(images: np.ndarray) -> float:
  """Mean HSV saturation, (max - min) / max over RGB (0 for black pixels).

  Args:
    images: [..., 3] RGB in [0, 1] (e.g. [B, H, W, 3]).

  Returns:
    the mean saturation in [0, 1] over all pixels.
  """
  images = np.asarray(images, np.float64)
  high, low = images.max(axis=-1), images.min(axis=-1)
  chroma = high - low
  return float(np.where(high > 0, chroma / np.where(high > 0, high, 1.0), 0.0).mean())
