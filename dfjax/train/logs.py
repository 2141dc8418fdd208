"""Metrics files, TensorBoard summaries and the progress display of the trainer.

Everything here runs outside the jitted train step, on values the step returned: jax arrays
are turned into Python numbers here, once per logged step, so the step itself never syncs.

* `MetricsWriter` appends one JSON object per call to WORKDIR/metrics.jsonl (easy to read back
  with `json.loads` per line or `pandas.read_json(lines=True)`) and mirrors scalars and images
  to TensorBoard event files in WORKDIR/tensorboard (via tensorboardX, no TensorFlow needed).
  On resume both are cut back to the restored step, so steps replayed after a preemption
  appear once.
* `last_metrics` reads the last line of metrics.jsonl back (what `dfjax.api.train` returns).
* `Progress` shows a tqdm bar with rate and ETA in a notebook (a widget) or on a terminal, and
  plain periodic lines (`step 500/2000 (25%) 3.1 steps/s eta 8m04s loss 0.123`) when output
  goes to a log file.

Data flow: host side, after the jitted step -> here -> train.loop.
"""
import json
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

from etils import epath
import numpy as np
import tensorboardX

from dfjax.train import checkpoint as checkpoint_lib

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"


def to_python_scalar(value: Any) -> float | int:
  """Converts a scalar (Python, numpy or a one-element jax array) to a Python int or float.

  Integer and boolean arrays give ints, everything else floats. Calling this on a jax array
  waits for the device computation that produces it.

  Raises:
    TypeError: value has more than one element.
  """
  array = np.asarray(value)
  if array.size != 1:
    raise TypeError(f"expected a scalar metric, got an array of shape {array.shape}")
  item = array.reshape(()).item()
  if isinstance(item, (bool, np.bool_)):
    return int(item)
  return item if isinstance(item, int) else float(item)


def _json_number(value: float | int) -> float | int | None:
  """JSON has no NaN or infinity: those are written as null (strict parsers accept that)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Writes scalars to WORKDIR/metrics.jsonl and TensorBoard, images to TensorBoard.

  Each `write_scalars(step, metrics)` call is one line `{"step": s, "time": t, name: value}`
  (t in Unix seconds; non-finite values as null), flushed at once so a crash loses nothing
  already logged. Call it once per logged step with all of that step's scalars.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None, enabled: bool = True):
    """Opens the metrics file and a TensorBoard writer under `workdir`.

    Args:
      workdir: the run directory (must exist; see checkpoint.prepare_workdir).
      resume_step: the step the run resumes from. Lines logged after it (from the run that
        was interrupted) are dropped from metrics.jsonl, and TensorBoard hides its events
        past it (tensorboardX's `purge_step`). None for a fresh run.
      enabled: False makes every method a no-op (processes other than 0 in a multi-host run).
    """
    self.enabled = enabled
    self.metrics_path = epath.Path(workdir) / METRICS_FILENAME
    if not enabled:
      return
    if resume_step is not None:
      self.truncate_after(resume_step)
    # An object store (gs://) cannot append to a file: there the lines are kept and the whole
    # file is written again at every logged step (a few hundred short lines per run).
    self._metrics_file, self._lines = None, None
    if checkpoint_lib.is_local(workdir):
      self._metrics_file = self.metrics_path.open("a")
    else:
      self._lines = (self.metrics_path.read_text().splitlines(keepends=True)
                     if self.metrics_path.exists() else [])
    purge_step = None if resume_step is None else resume_step + 1
    # tensorboardX names event files by the second they were opened and truncates an existing
    # one, so a restart within the same second would erase the previous file. A nanosecond
    # suffix keeps names unique and in the order TensorBoard must read them (by name).
    self._summary_writer = tensorboardX.SummaryWriter(
        os.path.join(workdir, TENSORBOARD_SUBDIR), purge_step=purge_step, flush_secs=30,
        filename_suffix=f".{time.time_ns()}")

  def truncate_after(self, step: int) -> int:
    """Drops the lines of metrics.jsonl with a step greater than `step`.

    A line cut short by a crash (not valid JSON) is dropped too. The file is replaced
    atomically. Call before logging resumes (the constructor does, given `resume_step`).

    Returns:
      The number of lines dropped.
    """
    if not self.enabled or not self.metrics_path.exists():
      return 0
    kept, dropped = [], 0
    with self.metrics_path.open() as metrics_file:
      for line in metrics_file:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          dropped += 1
          continue
        if record.get("step", -1) > step:
          dropped += 1
        else:
          kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
      tmp_path = self.metrics_path.parent / (METRICS_FILENAME + ".tmp")
      tmp_path.write_text("".join(kept))
      tmp_path.replace(self.metrics_path)
    return dropped

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs scalar metrics of one step (values: Python/numpy numbers or jax scalars)."""
    if not self.enabled:
      return
    step = int(step)
    values = {name: to_python_scalar(value) for name, value in metrics.items()}
    record = {"step": step, "time": round(time.time(), 3)}
    record.update({name: _json_number(value) for name, value in values.items()})
    line = json.dumps(record, allow_nan=False) + "\n"
    if self._metrics_file is not None:
      self._metrics_file.write(line)
      self._metrics_file.flush()
    else:
      self._lines.append(line)
      self.metrics_path.write_text("".join(self._lines))
    for name, value in values.items():
      self._summary_writer.add_scalar(name, value, global_step=step)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Logs images, each [height, width, 3] (or [height, width, 1]) float in [0, 1].

    Values outside [0, 1] are clipped and non-finite ones shown black.
    """
    if not self.enabled:
      return
    for name, image in images.items():
      pixels = np.asarray(image, dtype=np.float32)
      if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"image {name!r} must be [height, width, 3], got {pixels.shape}")
      pixels = np.clip(np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
      self._summary_writer.add_image(name, pixels, global_step=int(step), dataformats="HWC")

  def write_text(self, step: int, name: str, text: str) -> None:
    """Logs a text (e.g. the run's config) to TensorBoard's text tab."""
    if self.enabled:
      self._summary_writer.add_text(name, text, global_step=int(step))

  def flush(self) -> None:
    if self.enabled:
      if self._metrics_file is not None:
        self._metrics_file.flush()
      self._summary_writer.flush()

  def close(self) -> None:
    """Flushes and closes both outputs; later writes raise."""
    if self.enabled:
      if self._metrics_file is not None:
        self._metrics_file.close()
      self._summary_writer.close()


def last_metrics(workdir: str) -> dict[str, Any]:
  """The last whole line of WORKDIR/metrics.jsonl as a dict ({} when there is none).

  Non-finite values were written as null and come back as None.
  """
  path = os.path.join(workdir, METRICS_FILENAME)
  last = {}
  if os.path.exists(path):
    with open(path) as metrics_file:
      for line in metrics_file:
        try:
          last = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a crash
  return last


def format_duration(seconds: float) -> str:
  """Formats a duration as "12s", "8m04s" or "1h02m03s"."""
  if not math.isfinite(seconds):
    return "?"
  total = int(round(max(seconds, 0.0)))
  hours, remainder = divmod(total, 3600)
  minutes, secs = divmod(remainder, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{secs:02d}s"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


def format_metrics(metrics: Mapping[str, Any]) -> str:
  """"loss 0.123 grad_norm 4.5": names and values with 4 significant digits."""
  return " ".join(f"{name} {to_python_scalar(value):.4g}" for name, value in metrics.items())


class Progress:
  """Reports training progress: a tqdm bar in a notebook or on a terminal, plain lines otherwise.

  `update(step, metrics)` is called after each step with the number of steps done. Where a
  bar is drawn it advances every call and shows the latest metrics; otherwise a line
  `step 500/2000 (25%) 3.1 steps/s eta 8m04s loss 0.123` is printed whenever step is a
  multiple of `every` and at the last step. The rate is measured over the steps since the
  previous line (the first interval includes compilation).

  The bar is `tqdm.auto`'s: a widget in a notebook, text on a terminal. A notebook is
  recognised as `in_notebook` says (an IPython kernel with ipywidgets installed), and only
  when no `stream` is given; a terminal is a `stream` whose isatty() is true. A kernel
  without ipywidgets gets the plain lines, which every notebook front end shows.
  """

  def __init__(self, total_steps: int, *, start_step: int = 0, every: int = 100,
               stream: TextIO | None = None, enabled: bool = True):
    """Starts the display.

    Args:
      total_steps: the step the run ends at.
      start_step: the step the run starts (or resumes) from.
      every: steps between plain lines (> 0).
      stream: where to write; default sys.stderr as it is when Progress is created.
      enabled: False shows nothing (every method is a no-op).
    """
    if every <= 0:
      raise ValueError(f"every must be positive, got {every}")
    self.total_steps, self.every = int(total_steps), int(every)
    self.enabled = enabled
    self.stream = sys.stderr if stream is None else stream
    self._last_step, self._last_time = int(start_step), time.monotonic()
    self._metrics: dict[str, float | int] = {}
    self._bar = None
    if enabled and ((stream is None and in_notebook()) or _is_terminal(self.stream)):
      # tqdm.auto picks the notebook widget inside a kernel, the text bar elsewhere; imported
      # here, since in a kernel without ipywidgets the import itself warns.
      from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top
      self._bar = tqdm_auto.tqdm(total=self.total_steps, initial=self._last_step,
                                 file=self.stream, unit="step", dynamic_ncols=True,
                                 smoothing=0.1)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Records that `step` steps are done; `metrics` (scalars) are shown from now on."""
    if not self.enabled:
      return
    step = int(step)
    if metrics:
      self._metrics = {name: to_python_scalar(value) for name, value in metrics.items()}
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if metrics:
        self._bar.set_postfix_str(format_metrics(self._metrics), refresh=False)
      return
    if step % self.every == 0 or step == self.total_steps:
      self._print_line(step)

  def _print_line(self, step: int) -> None:
    now = time.monotonic()
    elapsed, done = now - self._last_time, step - self._last_step
    rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
    eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
    percent = 100.0 * step / self.total_steps if self.total_steps else 100.0
    line = (f"step {step}/{self.total_steps} ({percent:.0f}%) {rate:.3g} steps/s "
            f"eta {format_duration(eta)}")
    if self._metrics:
      line += " " + format_metrics(self._metrics)
    print(line, file=self.stream, flush=True)
    self._last_step, self._last_time = step, now

  def close(self) -> None:
    """Closes the bar (plain mode: nothing to do)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def in_notebook() -> bool:
  """True inside an IPython kernel (Jupyter, JupyterLab, Colab, VS Code) with ipywidgets.

  The test is tqdm.auto's own: the running IPython shell's config has an `IPKernelApp`
  section, which a kernel has and a terminal IPython lacks; and ipywidgets, which tqdm's
  widget needs, imports. IPython is not imported here: a process that never imported it is
  not a kernel.
  """
  ipython = sys.modules.get("IPython")
  shell = ipython.get_ipython() if ipython is not None else None
  if shell is None or "IPKernelApp" not in shell.config:
    return False
  try:
    import ipywidgets  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _is_terminal(stream: TextIO) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False
