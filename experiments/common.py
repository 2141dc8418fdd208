"""Shared helpers of the benchmark scripts: timing and the results file."""
import datetime
import os
import platform
import time

import jax

RESULTS = os.path.join(os.path.dirname(__file__), "results", "bench.md")


def machine() -> str:
  device = jax.devices()[0]
  return (f"{platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__}, {jax.device_count()}x {device.device_kind} ({device.platform})")


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


def append_table(title: str, header, rows, *, command: str) -> str:
  """Format a markdown table, print it, and append it to experiments/results/bench.md."""
  lines = [f"## {title}", "",
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}",
           f"`{command}`", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  text = "\n".join(lines) + "\n\n"
  print(text)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "a") as f:
    f.write(text)
  return text
