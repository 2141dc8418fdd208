"""Time to a run's first steps with a cold and a warm persistent compilation cache.

  python experiments/bench_compile_cache.py [--config=configs/toy.py] [--steps=2] [--repeats=2]

Each repeat runs the CLI three times in fresh workdirs, alternating: with the cache turned off
(DFJAX_COMPILATION_CACHE=off), with an empty cache folder (cold), and again with that folder
(warm). Export is off; the toy bank is rendered once before timing. The warm run's saving is
the compilation the cache replaces (dfjax.train.compile_cache). Prints a table and appends it
to experiments/results/bench.md.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import append_table  # pylint: disable=g-import-not-at-top


def run_cli(config: str, steps: int, workdir: str, cache: str) -> float:
  """Wall seconds of one `python -m dfjax.main` run of `steps` steps without export."""
  env = dict(os.environ, DFJAX_COMPILATION_CACHE=cache)
  command = [sys.executable, "-m", "dfjax.main", f"--config={config}", f"--workdir={workdir}",
             f"--config.train.steps={steps}", "--config.export.at_end=False",
             "--config.train.image_every=0"]
  start = time.perf_counter()
  subprocess.run(command, env=env, check=True, capture_output=True)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/toy.py")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  times = {"off": [], "cold": [], "warm": []}
  with tempfile.TemporaryDirectory() as scratch:
    run_cli(args.config, 1, os.path.join(scratch, "bank_warmup"), "off")  # renders the bank
    for repeat in range(args.repeats):
      cache = os.path.join(scratch, f"cache{repeat}")
      for kind, folder in (("off", "off"), ("cold", cache), ("warm", cache)):
        workdir = os.path.join(scratch, f"{kind}{repeat}")
        times[kind].append(run_cli(args.config, args.steps, workdir, folder))
  rows = [[kind, f"{statistics.median(values):.1f}", ", ".join(f"{v:.1f}" for v in values)]
          for kind, values in times.items()]
  append_table("Persistent compilation cache: time to the first steps",
               ["cache", f"median s ({args.steps} steps, no export)", "each run, s"], rows,
               command="python experiments/bench_compile_cache.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
