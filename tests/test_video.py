"""Tests for dfjax.export.video: turntable cameras, frame layout and GIF / ffmpeg writing."""
import numpy as np
import pytest
from PIL import Image

from dfjax.errors import UserError
from dfjax.export import video
from dfjax.scene import cameras


def test_turntable_cameras_circle_at_fixed_elevation():
  turntable = video.turntable_cameras(num_frames=8, elevation_deg=30.0, distance=1.3,
                                      fov_deg=40.0, resolution=16)
  assert len(turntable) == 8
  c2w = np.stack([np.asarray(camera.c2w) for camera in turntable])
  azimuth, elevation, distance = (np.asarray(a) for a in cameras.camera_angles(c2w))
  expected_azimuth = np.array([0, 45, 90, 135, 180, -135, -90, -45])
  np.testing.assert_allclose(np.abs(np.mod(azimuth - expected_azimuth + 180, 360) - 180), 0,
                             atol=1e-3)
  np.testing.assert_allclose(elevation, 30.0, atol=1e-3)
  np.testing.assert_allclose(distance, 1.3, rtol=1e-5)
  # The first frame shows the front: camera on +x, looking along -x (OpenGL camera looks -z).
  np.testing.assert_allclose(c2w[0, :3, 2], [np.cos(np.pi / 6), 0, np.sin(np.pi / 6)],
                             atol=1e-5)
  assert turntable[0].width == turntable[0].height == 16


def test_side_by_side_concatenates_width():
  a = np.zeros((3, 4, 5, 3), np.float32)
  b = np.ones((3, 4, 2, 3), np.uint8) * 7
  both = video.side_by_side([a, b])
  assert both.shape == (3, 4, 7, 3) and both.dtype == np.uint8
  np.testing.assert_array_equal(both[:, :, 5:], 7)
  np.testing.assert_array_equal(both[:, :, :5], 0)
  with pytest.raises(UserError, match="same frames and height"):
    video.side_by_side([a, np.zeros((3, 5, 2, 3))])


def test_gif_round_trip(tmp_path):
  # Each frame has few colours, so the 256-colour palette is exact; frames are all distinct.
  rng = np.random.default_rng(0)
  palette = rng.integers(0, 256, (6, 3), dtype=np.uint8)
  frames = palette[rng.integers(0, 6, (5, 12, 10))]
  path = str(tmp_path / "out" / "turntable.gif")
  video.write_video(frames.astype(np.float32) / 255.0, path, fps=25)
  with Image.open(path) as gif:
    assert gif.n_frames == 5 and gif.size == (10, 12)
    read = []
    for index in range(gif.n_frames):
      gif.seek(index)
      read.append(np.asarray(gif.convert("RGB")))
      assert gif.info["duration"] == 40
  np.testing.assert_array_equal(np.stack(read), frames)


def test_bad_video_requests_are_user_errors(tmp_path, monkeypatch):
  frames = np.zeros((2, 4, 4, 3), np.float32)
  with pytest.raises(UserError, match="unknown video format '.avi'"):
    video.write_video(frames, str(tmp_path / "x.avi"), fps=10)
  with pytest.raises(UserError, match=r"shape \[frames, height, width, 3\]"):
    video.write_video(frames[..., :2], str(tmp_path / "x.gif"), fps=10)
  with pytest.raises(UserError, match="float in"):
    video.write_video(frames.astype(np.int32), str(tmp_path / "x.gif"), fps=10)
  monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
  with pytest.raises(UserError, match="needs the imageio-ffmpeg package"):
    video.write_video(frames, str(tmp_path / "x.mp4"), fps=10)


def test_mp4_round_trip(tmp_path, monkeypatch):
  """imageio-ffmpeg is a dependency, so MP4 is always written; read back, the file has every
  frame at the padded size, and H.264 keeps a smooth gradient close (measured 3/255)."""
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  assert video.ffmpeg_available()
  frames = np.linspace(0.0, 1.0, 4 * 17 * 15 * 3).reshape(4, 17, 15, 3)
  path = str(tmp_path / "turntable.mp4")
  video.write_video(frames, path, fps=10)
  # Reading starts ffmpeg as writing does (see video._write_ffmpeg for why this setting).
  monkeypatch.setenv("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
  read = np.stack(imageio.mimread(path))
  assert read.shape == (4, 18, 16, 3)  # 4 frames, padded to even sizes
  error = np.abs(read[:, :17, :15].astype(float) - video.to_uint8(frames))
  print(f"mean error {error.mean():.2f}/255, max {error.max():.0f}/255")
  assert error.mean() < 8
