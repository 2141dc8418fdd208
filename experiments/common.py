"""Shared helpers of the benchmark scripts: timing and the results file."""
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(os.path.dirname(__file__), "results", "bench.md")


def machine() -> str:
  device = jax.devices()[0]
  notes = ", malloc huge pages" if "hugetlb=1" in os.environ.get("GLIBC_TUNABLES", "") else ""
  if os.environ.get("XLA_FLAGS"):
    notes += f", XLA_FLAGS={os.environ['XLA_FLAGS']}"
  return (f"{platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}, {jax.device_count()}x {device.device_kind} ({device.platform})"
          + notes)


def time_call(fn, *args, repeats: int = 5):
  """(compile seconds, median seconds per call) of a jitted function."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return compile_seconds, sorted(times)[len(times) // 2]


def time_alternately(calls: dict, *, rounds: int, progress: bool = False) -> dict:
  """{name: median seconds}: every call once a round, round after round, after one untimed
  warm-up round, so a drifting machine load favours none. Each call takes no arguments and
  returns once its work is done (block on jax results inside it)."""
  times = {name: [] for name in calls}
  for round_index in range(rounds + 1):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      seconds = time.perf_counter() - start
      if round_index:
        times[name].append(seconds)
      if progress:
        print(f"round {round_index} {name}: {seconds:.1f} s", flush=True)
  return {name: statistics.median(t) for name, t in times.items()}


def append_table(title: str, header, rows, *, command: str, results: str = RESULTS) -> str:
  """Format a markdown table, print it, and append it to `results` (default
  experiments/results/bench.md)."""
  lines = [f"## {title}", "",
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}",
           f"`{command}`", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  text = "\n".join(lines) + "\n\n"
  print(text)
  os.makedirs(os.path.dirname(results), exist_ok=True)
  with open(results, "a") as f:
    f.write(text)
  return text


SECONDS_FILE = "command_seconds.txt"  # in a run folder: the timed command's seconds


def distil(config: str, object_name: str, seed: int, workdir: str, flags=(), *,
           quiet: bool = False, export_threshold: float | None = None):
  """The README's command on one toy object (`python -m dfjax.main --config=CONFIG` with the
  object's caption as the prompt), timed, then scored against the true object.

  A run folder that holds SECONDS_FILE has finished before: it is scored again with this
  checkout's metrics and keeps its recorded time, so a study can be rescored or resumed.
  `export_threshold` replaces the run's own surface level in the scores (0: chosen from the
  renders, today's default, for runs made before it).

  Returns:
    (seconds of the command, dfjax.eval.ablations.score_run's scores, the step scored).
  """
  from dfjax.eval import ablations  # pylint: disable=g-import-not-at-top
  from dfjax.train import restore  # pylint: disable=g-import-not-at-top
  caption = ablations.OBJECT_BY_NAME[object_name]().caption
  command = [sys.executable, "-m", "dfjax.main", f"--config={config}", f"--workdir={workdir}",
             f"--config.prompt={caption}", f"--config.seed={seed}", *flags]
  record = os.path.join(workdir, SECONDS_FILE)
  if os.path.isfile(record):
    with open(record) as f:
      seconds = float(f.read())
  else:
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True, capture_output=quiet)
    seconds = time.time() - start
    with open(record, "w") as f:
      f.write(f"{seconds:.1f}\n")
  run_config = restore.load_run_config(workdir)
  if export_threshold is not None:
    run_config.export.threshold = export_threshold
  scene, params, step = restore.restore_params(run_config, workdir, step=None)
  scores, _ = ablations.score_run(scene, jax.device_get(params), step, object_name)
  return seconds, scores, step


def line_plot(path: str, xs, series: dict, *, x_label: str, y_label: str,
              size=(560, 360)) -> None:
  """A small line chart as PNG, drawn with PIL (no plotting library is a dependency).

  Args:
    xs: [N] x values (linear axis).
    series: name -> [N] y values, one line each (y axis from 0 to the largest value).
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  colors = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
  width, height = size
  left, right, top, bottom = 60, 20, 20, 50
  image = Image.new("RGB", size, (255, 255, 255))
  draw = ImageDraw.Draw(image)
  x_max = max(xs)
  y_max = max(max(ys) for ys in series.values()) * 1.1
  to_px = lambda x, y: (left + (width - left - right) * x / x_max,
                        height - bottom - (height - top - bottom) * y / y_max)
  draw.line([to_px(0, 0), to_px(x_max, 0)], fill=(0, 0, 0))
  draw.line([to_px(0, 0), to_px(0, y_max)], fill=(0, 0, 0))
  for k in range(5):  # ticks and labels
    x, y = x_max * k / 4, y_max * k / 4
    draw.text((to_px(x, 0)[0] - 10, height - bottom + 5), f"{x:g}", fill=(0, 0, 0))
    draw.text((5, to_px(0, y)[1] - 6), f"{y:.2f}", fill=(0, 0, 0))
    draw.line([to_px(0, y), to_px(x_max, y)], fill=(225, 225, 225))
  draw.text((width // 2 - 40, height - 20), x_label, fill=(0, 0, 0))
  draw.text((left + 5, 2), y_label, fill=(0, 0, 0))
  for i, (name, ys) in enumerate(series.items()):
    color = colors[i % len(colors)]
    points = [to_px(x, y) for x, y in zip(xs, ys)]
    draw.line(points, fill=color, width=2)
    for px, py in points:
      draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    draw.text((width - right - 200, top + 14 * i), name, fill=color)
  image.save(path)


def bar_plot(path: str, labels, series: dict, *, y_label: str, size=(640, 360)) -> None:
  """Grouped bars as PNG, drawn with PIL: one group per label, one bar per series.

  Args:
    labels: [N] group names (x axis).
    series: name -> [N] values >= 0 (y axis from 0 to the largest value, at least 1).
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  colors = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))
  width, height = size
  left, right, top, bottom = 50, 20, 30, 60
  image = Image.new("RGB", size, (255, 255, 255))
  draw = ImageDraw.Draw(image)
  y_max = max(1.0, max(max(values) for values in series.values()))
  to_y = lambda y: height - bottom - (height - top - bottom) * y / y_max
  for k in range(5):
    y = y_max * k / 4
    draw.line([(left, to_y(y)), (width - right, to_y(y))], fill=(225, 225, 225))
    draw.text((5, to_y(y) - 6), f"{y:.2f}", fill=(0, 0, 0))
  group = (width - left - right) / len(labels)
  bar = group * 0.8 / len(series)
  for g, label in enumerate(labels):
    x0 = left + g * group + group * 0.1
    for i, values in enumerate(series.values()):
      draw.rectangle([x0 + i * bar, to_y(values[g]), x0 + (i + 1) * bar - 2, to_y(0)],
                     fill=colors[i % len(colors)])
    draw.text((x0, height - bottom + 5), label[:12], fill=(0, 0, 0))
  for i, name in enumerate(series):
    draw.text((left + 5 + 160 * i, 8), name, fill=colors[i % len(colors)])
  draw.text((width // 2 - 40, height - 20), y_label, fill=(0, 0, 0))
  image.save(path)
