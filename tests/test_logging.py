"""Tests of dfjax.train.logs: metrics.jsonl, TensorBoard event files read back record by
record (CRC-checked), resume truncation, and the progress display."""
import io
import json
import math
import os
import re
import struct
import sys
import types

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from dfjax.train import checkpoint
from dfjax.train import logs as logging_utils


def read_events(path):
  """Parses a TFRecord file of Event protos, checking both CRCs of every record."""
  events = []
  with open(path, "rb") as file:
    data = file.read()
  offset = 0
  while offset < len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    assert header_crc == masked_crc32c(header)
    payload = data[offset + 12:offset + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
    assert payload_crc == masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    offset += 16 + length
  return events


def event_files(workdir):
  directory = os.path.join(workdir, "tensorboard")
  return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                if ".tfevents." in name)


def summaries(events):
  """(tag, step, value) of every summary value in the events, in order."""
  return [(value.tag, event.step, value) for event in events for value in event.summary.value]


def strict_json(line):
  """json.loads that rejects NaN and Infinity, which are not JSON."""
  def reject(constant):
    raise ValueError(f"non-JSON constant {constant}")
  return json.loads(line, parse_constant=reject)


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
  writer = logging_utils.MetricsWriter(str(tmp_path))
  writer.write_scalars(1, {"loss": jnp.float32(0.25), "num_nonfinite": jnp.int32(3)})
  writer.write_scalars(2, {"loss": np.float64(0.125), "grad_norm": float("nan"),
                           "lr": jnp.array([1e-3])})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  records = [strict_json(line) for line in lines]
  assert [record["step"] for record in records] == [1, 2]
  assert records[0]["loss"] == 0.25 and records[0]["num_nonfinite"] == 3
  assert isinstance(records[0]["num_nonfinite"], int)
  assert records[1]["grad_norm"] is None
  assert records[1]["lr"] == pytest.approx(1e-3, rel=1e-6)       # float32 -> float
  assert all(isinstance(record["time"], float) for record in records)

  [path] = event_files(tmp_path)
  scalars = {(tag, step): value.simple_value
             for tag, step, value in summaries(read_events(path))}
  assert scalars[("loss", 1)] == 0.25 and scalars[("loss", 2)] == 0.125
  assert scalars[("num_nonfinite", 1)] == 3.0
  assert math.isnan(scalars[("grad_norm", 2)])


def test_images_round_trip_through_png(tmp_path):
  rows, cols = np.meshgrid(np.linspace(0, 1, 6), np.linspace(0, 1, 8), indexing="ij")
  image = np.stack([rows, cols, 0.5 * np.ones_like(rows)], axis=-1).astype(np.float32)
  out_of_range = image.copy()
  out_of_range[0, 0] = [2.0, -1.0, np.nan]
  writer = logging_utils.MetricsWriter(str(tmp_path))
  writer.write_images(7, {"render/rgb": jnp.asarray(image), "render/clipped": out_of_range})
  with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
    writer.write_images(7, {"bad": np.zeros((3, 8, 6))})
  writer.close()
  [path] = event_files(tmp_path)
  images = {tag: (step, value.image) for tag, step, value in summaries(read_events(path))}
  step, encoded = images["render/rgb"]
  assert step == 7 and (encoded.height, encoded.width, encoded.colorspace) == (6, 8, 3)
  decoded = np.asarray(PIL.Image.open(io.BytesIO(encoded.encoded_image_string)))
  # tensorboardX quantises to uint8 by scaling with 255 (and truncating or rounding).
  np.testing.assert_allclose(decoded / 255.0, image, atol=1.0 / 255.0 + 1e-6)
  clipped = np.asarray(PIL.Image.open(io.BytesIO(images["render/clipped"][1]
                                                 .encoded_image_string)))
  np.testing.assert_array_equal(clipped[0, 0], [255, 0, 0])


def test_resume_drops_metrics_after_restored_step(tmp_path):
  writer = logging_utils.MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    writer.write_scalars(step, {"loss": step / 10})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as file:
    file.write('{"step": 6, "lo')                        # a line cut short by a crash
  resumed = logging_utils.MetricsWriter(str(tmp_path), resume_step=3)
  resumed.write_scalars(4, {"loss": 0.0})
  resumed.close()
  records = [strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(record["step"], record["loss"]) for record in records] == [
      (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.0)]
  # The new event file, named after the old one, starts by telling TensorBoard to hide the
  # old events from step 4 on.
  first, second = event_files(tmp_path)
  assert ("loss", 5) in {(tag, step) for tag, step, _ in summaries(read_events(first))}
  assert not any(event.HasField("session_log") for event in read_events(first))
  restart = [event for event in read_events(second) if event.HasField("session_log")]
  assert [(event.step, event.session_log.status) for event in restart] == [
      (4, event_pb2.SessionLog.START)]


def test_a_bucket_workdir_gets_whole_metrics_files_and_resumes(tmp_path, monkeypatch):
  # An object store cannot append: the writer rewrites the whole file at every logged step.
  # A local folder stands in for the bucket (none is reachable from the tests).
  monkeypatch.setattr(checkpoint, "is_local", lambda path: False)
  writer = logging_utils.MetricsWriter(str(tmp_path))
  for step in range(1, 4):
    writer.write_scalars(step, {"loss": step / 10})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line)["step"] for line in lines] == list(range(1, step + 1))
  writer.close()
  resumed = logging_utils.MetricsWriter(str(tmp_path), resume_step=2)
  resumed.write_scalars(3, {"loss": 0.0})
  resumed.close()
  records = [strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(record["step"], record["loss"]) for record in records] == [(1, 0.1), (2, 0.2),
                                                                       (3, 0.0)]


def test_disabled_writer_writes_nothing(tmp_path):
  writer = logging_utils.MetricsWriter(str(tmp_path), enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(1, {"rgb": np.zeros((2, 2, 3))})
  writer.close()
  assert os.listdir(tmp_path) == []


def test_to_python_scalar_rejects_vectors():
  assert logging_utils.to_python_scalar(jnp.bool_(True)) == 1
  with pytest.raises(TypeError, match=r"shape \(2,\)"):
    logging_utils.to_python_scalar(jnp.zeros(2))


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (12, "12s"), (484, "8m04s"),
                                           (3723, "1h02m03s"), (float("nan"), "?")])
def test_format_duration(seconds, text):
  assert logging_utils.format_duration(seconds) == text


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_prints_plain_lines_when_not_a_terminal(capsys, monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(logging_utils.time, "monotonic", clock)
  progress = logging_utils.Progress(2000, start_step=400, every=100)
  for step in range(401, 601):
    clock.now += 0.5 if step <= 500 else 0.25          # 2 steps/s, then 4 steps/s
    progress.update(step, {"loss": jnp.float32(0.123456)} if step % 50 == 0 else None)
  progress.close()
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["step 500/2000 (25%) 2 steps/s eta 12m30s loss 0.1235",
                   "step 600/2000 (30%) 4 steps/s eta 5m50s loss 0.1235"]


def test_progress_prints_last_step_and_no_metrics(capsys):
  progress = logging_utils.Progress(7, every=5)
  for step in range(1, 8):
    progress.update(step)
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 2
  assert re.fullmatch(r"step 5/7 \(71%\) \S+ steps/s eta \S+", lines[0])
  assert lines[1].startswith("step 7/7 (100%) ") and lines[1].endswith(" eta 0s")


class FakeTerminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_uses_a_bar_on_a_terminal():
  terminal = FakeTerminal()
  progress = logging_utils.Progress(10, start_step=2, every=5, stream=terminal)
  for step in range(3, 11):
    progress.update(step, {"loss": 0.5})
  progress.close()
  output = terminal.getvalue()
  assert "10/10" in output and "loss 0.5" in output
  assert "step 5/10" not in output                 # no plain lines on a terminal


class FakeShell:
  def __init__(self, config):
    self.config = config


@pytest.mark.parametrize("shell_config, widgets, expected", [
    ({"IPKernelApp": {}}, True, True),      # Jupyter, Colab: a kernel with ipywidgets
    ({"IPKernelApp": {}}, False, False),    # a kernel without ipywidgets: plain lines
    ({"TerminalInteractiveShell": {}}, True, False),  # IPython in a terminal
    (None, True, False),                    # IPython imported, no shell running
])
def test_in_notebook_means_a_kernel_with_ipywidgets(monkeypatch, shell_config, widgets,
                                                   expected):
  shell = None if shell_config is None else FakeShell(shell_config)
  monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
  monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets") if widgets
                      else None)  # None in sys.modules makes the import fail
  assert logging_utils.in_notebook() is expected


def test_in_notebook_is_false_without_ipython(monkeypatch):
  monkeypatch.delitem(sys.modules, "IPython", raising=False)
  assert not logging_utils.in_notebook()


def test_progress_draws_a_bar_in_a_notebook_and_nothing_when_disabled(monkeypatch, capsys):
  monkeypatch.setattr(logging_utils, "in_notebook", lambda: True)
  progress = logging_utils.Progress(10, every=5)
  assert progress._bar is not None  # tqdm.auto's bar (outside a kernel, its text bar)
  for step in range(1, 11):
    progress.update(step, {"loss": 0.5})
  progress.close()
  assert "step 5/10" not in capsys.readouterr().err
  # Given a stream, a notebook still gets the plain lines (they go where they are sent).
  stream = io.StringIO()
  progress = logging_utils.Progress(10, every=5, stream=stream)
  progress.update(5)
  assert progress._bar is None and stream.getvalue().startswith("step 5/10 ")
  silent = logging_utils.Progress(10, every=5, enabled=False)
  for step in range(1, 11):
    silent.update(step, {"loss": 0.5})
  silent.close()
  assert capsys.readouterr().err == ""


def test_last_metrics_reads_the_last_whole_line(tmp_path):
  assert logging_utils.last_metrics(str(tmp_path)) == {}
  writer = logging_utils.MetricsWriter(str(tmp_path))
  writer.write_scalars(1, {"loss": 0.5})
  writer.write_scalars(2, {"loss": float("nan"), "t": 0.25})
  writer.close()
  with open(tmp_path / logging_utils.METRICS_FILENAME, "a") as f:
    f.write('{"step": 3, "loss"')  # cut short by a crash
  last = logging_utils.last_metrics(str(tmp_path))
  assert last["step"] == 2 and last["loss"] is None and last["t"] == 0.25
