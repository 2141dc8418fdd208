"""Turntable videos of a trained scene (the 360-degree renders shown for DreamFusion results).

The cameras circle the object at a fixed elevation and distance (world convention: azimuth 0
is the object's front, +z up; see dfjax.scene.cameras), one frame per equal azimuth step,
starting at the front. Frames are rendered by the caller; this module only places the cameras
and writes the frames:
  * .gif through Pillow, which is always installed;
  * .mp4 / .mov / .mkv (H.264) through imageio's ffmpeg plugin and the `imageio-ffmpeg`
    package (a dependency of dfjax; it bundles an ffmpeg executable, so no system ffmpeg is
    needed).

Data flow: scene.cameras -> here -> export.outputs.
"""
import functools
import importlib.util
import os
from typing import Sequence

import imageio.v2 as imageio
import jax
import numpy as np
from PIL import Image

from dfjax.errors import UserError
from dfjax.scene import cameras as cameras_lib

GIF_FORMATS = (".gif",)
FFMPEG_FORMATS = (".mp4", ".mov", ".mkv")  # H.264 (libx264) in each container


def turntable_azimuths(num_frames: int, *, start_azimuth_deg: float = 0.0) -> np.ndarray:
  """Equally spaced azimuths of a full turn: [num_frames] float32 degrees, the first at start."""
  if num_frames < 1:
    raise UserError(f"a turntable needs at least one frame, got num_frames={num_frames}")
  return (start_azimuth_deg + 360.0 * np.arange(num_frames) / num_frames).astype(np.float32)


def turntable_cameras(*, num_frames: int, elevation_deg: float, distance: float, fov_deg: float,
                      resolution: int, start_azimuth_deg: float = 0.0):
  """Cameras for a turntable video around the origin.

  Args:
    num_frames: T, cameras at azimuth start + 360 k / T degrees, k = 0..T-1.
    elevation_deg: fixed elevation above the xy plane (DreamFusion's Table 1 renders use 30).
    distance: camera distance from the origin, world units.
    fov_deg: vertical field of view.
    resolution: image width = height in pixels.
    start_azimuth_deg: azimuth of the first frame (0 = the object's front).

  Returns:
    list of T dfjax.scene.cameras.Camera, in azimuth order.
  """
  return [
      _turntable_camera(azimuth, elevation_deg, distance, fov_deg, resolution=resolution)
      for azimuth in turntable_azimuths(num_frames, start_azimuth_deg=start_azimuth_deg)
  ]


@functools.partial(jax.jit, static_argnames=("resolution",))
def _turntable_camera(azimuth_deg, elevation_deg, distance, fov_deg, *, resolution: int):
  # One compiled function for all frames (eager camera maths dispatches dozens of small ops).
  return cameras_lib.camera_from_angles(
      azimuth_deg=azimuth_deg, elevation_deg=elevation_deg, distance=distance, fov_deg=fov_deg,
      width=resolution, height=resolution)


def to_uint8(frames) -> np.ndarray:
  """Frames [..., 3] float in [0, 1] (clipped; NaN -> 0) or uint8 -> uint8, same shape."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  if not np.issubdtype(frames.dtype, np.floating):
    raise UserError(f"frames must be float in [0, 1] or uint8, got dtype {frames.dtype}")
  frames = np.nan_to_num(frames.astype(np.float32), nan=0.0)
  return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def side_by_side(videos: Sequence[np.ndarray]) -> np.ndarray:
  """Places videos next to each other: list of [T, H, W_i, 3] -> [T, H, sum W_i, 3].

  All videos must share T and H. Mixed dtypes are all converted to uint8.
  """
  videos = [np.asarray(v) for v in videos]
  if not videos:
    raise UserError("side_by_side needs at least one video")
  shapes = {v.shape[:2] for v in videos}
  if any(v.ndim != 4 or v.shape[-1] != 3 for v in videos) or len(shapes) != 1:
    raise UserError("side_by_side needs videos of shape [frames, height, width, 3] with the "
                    f"same frames and height, got {[v.shape for v in videos]}")
  if len({v.dtype for v in videos}) > 1:
    videos = [to_uint8(v) for v in videos]
  return np.concatenate(videos, axis=2)


def ffmpeg_available() -> bool:
  """Whether imageio can write ffmpeg formats (the imageio-ffmpeg package is installed)."""
  return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_video(frames, path: str, *, fps: float = 20.0) -> None:
  """Writes frames [T, H, W, 3] (float in [0, 1] or uint8) as a .gif or an ffmpeg video.

  GIF stores 256 colours per frame (Pillow's adaptive palette), frame times in 10 ms steps,
  and merges identical consecutive frames into one longer frame. For ffmpeg formats, odd frame
  sizes are padded by repeating the last row / column (H.264 yuv420p needs even sizes).
  """
  frames = to_uint8(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise UserError(f"frames must have shape [frames, height, width, 3], got {frames.shape}")
  if not fps > 0:
    raise UserError(f"fps must be positive, got {fps}")
  extension = os.path.splitext(path)[1].lower()
  if extension not in GIF_FORMATS + FFMPEG_FORMATS:
    raise UserError(f"unknown video format {extension or '(none)'!r} for {path!r}; use one of "
                    f"{', '.join(GIF_FORMATS + FFMPEG_FORMATS)}")
  if extension in FFMPEG_FORMATS and not ffmpeg_available():
    raise UserError(f"writing {extension} needs the imageio-ffmpeg package (pip install "
                    "imageio-ffmpeg); or write a .gif, which needs nothing extra")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if extension in GIF_FORMATS:
    _write_gif(frames, path, fps=fps)
  else:
    _write_ffmpeg(frames, path, fps=fps)


def _write_gif(frames: np.ndarray, path: str, *, fps: float) -> None:
  images = [Image.fromarray(frame) for frame in frames]
  images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                 duration=max(10, int(round(1000.0 / fps))))


def _write_ffmpeg(frames: np.ndarray, path: str, *, fps: float) -> None:
  pad_rows, pad_columns = frames.shape[1] % 2, frames.shape[2] % 2
  frames = np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_columns), (0, 0)), mode="edge")
  # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl-C from it), so Python
  # runs in the forked child, and JAX prints a fork warning whenever its backend is up. Without
  # it the start is a plain fork + exec; ffmpeg then also gets Ctrl-C and stops with us.
  previous = os.environ.get(_NO_PREVENT_SIGINT)
  os.environ[_NO_PREVENT_SIGINT] = "1"
  try:
    imageio.mimwrite(path, list(frames), format="FFMPEG", fps=fps, quality=8,
                     pixelformat="yuv420p", macro_block_size=2)
  finally:
    if previous is None:
      del os.environ[_NO_PREVENT_SIGINT]
    else:
      os.environ[_NO_PREVENT_SIGINT] = previous


_NO_PREVENT_SIGINT = "IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"
