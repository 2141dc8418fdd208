"""The jitted train step of another revision against this checkout's, timed alternately.

  python experiments/compare_step.py --rev=HEAD~1 [--setups=toy,bank] [--rounds=2]
  python experiments/compare_step.py --rev=7a9f348 --setups=sd15 --rounds=1 --repeats=2

Checks REV out into a temporary git worktree and, round after round, times one device's
train step (`train.step.make_train_step`, the state copied before each call since the step
donates it) for each setup in the old tree and then in this one, each in a fresh process
with the persistent compilation cache off. Alternating keeps a drifting machine load from
favouring either side. Setups are profile_step.py's (toy, bank, paper, sd15,
sd15_albedo); REV must have this package layout (dfjax.train.step). This checkout's
processes run with glibc's huge pages, as its commands do (dfjax/cli.py), the old tree's
without them unless --old_huge_pages, so the table is what a user of either command line
gets. Prints a table with
the medians, XLA's FLOPs and bytes of each step, and appends it to
experiments/results/bench.md.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_table  # pylint: disable=g-import-not-at-top

from dfjax import cli  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run inside a tree: prints "milliseconds GFLOP GB" of one step of the setup in argv[1] with
# the tree's dfjax and configs (imported first, so they are the ones used); the setups and the
# timing come from this checkout's profile_step.py, so the old tree needs only the package.
TIMER = """
import os, sys
sys.path.insert(0, os.getcwd())
import configs.bank, configs.dreamfusion, configs.toy, dfjax.train.step
sys.path.append(sys.argv[2])  # after the tree's own packages are imported
import profile_step
flops, gigabytes, seconds = profile_step.train_step_cost(sys.argv[1], repeats=int(sys.argv[3]))
print(seconds * 1e3, flops, gigabytes)
"""


def time_step(tree: str, setup: str, *, repeats: int, huge_pages: bool) -> list[float]:
  """[ms, GFLOP, GB] of one step of `setup` with the code of `tree`, in a process with or
  without glibc's huge pages (which this checkout's commands turn on, dfjax/cli.py)."""
  env = dict(os.environ, PYTHONPATH=tree, DFJAX_COMPILATION_CACHE="off")
  others = ":".join(t for t in env.pop("GLIBC_TUNABLES", "").split(":")
                    if t and not t.startswith("glibc.malloc.hugetlb"))
  if others:
    env["GLIBC_TUNABLES"] = others
  if huge_pages:  # as this checkout's commands set it (and as DFJAX_HUGE_PAGES=0 keeps it off)
    env = cli.huge_pages_environment(env) or env
  out = subprocess.run([sys.executable, "-c", TIMER, setup, os.path.dirname(__file__),
                        str(repeats)],
                       cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
  return [float(value) for value in out.split()[-3:]]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rev", required=True, help="the revision to compare against")
  parser.add_argument("--setups", default="toy,bank")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5, help="timed steps per process")
  parser.add_argument("--old_huge_pages", action="store_true",
                      help="give the old tree's processes huge pages too (default: only this "
                      "checkout's, as only its commands turn them on)")
  args = parser.parse_args()
  setups = args.setups.split(",")
  revision = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
  with tempfile.TemporaryDirectory() as scratch:
    old_tree = os.path.join(scratch, "old")
    subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.rev], cwd=ROOT,
                   check=True, capture_output=True)
    try:
      results = {(tree, setup): [] for tree in ("old", "new") for setup in setups}
      for _ in range(args.rounds):
        for setup in setups:
          for tree, path in (("old", old_tree), ("new", ROOT)):
            results[tree, setup].append(time_step(
                path, setup, repeats=args.repeats,
                huge_pages=tree == "new" or args.old_huge_pages))
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, check=False)
  rows = []
  for setup in setups:
    old, new = (statistics.median(r[0] for r in results[tree, setup]) for tree in ("old", "new"))
    rows.append([setup, f"{old:.0f}", f"{new:.0f}", f"{old / new:.2f}x",
                 " / ".join(f"{results[tree, setup][0][1]:.2f} GFLOP, "
                            f"{results[tree, setup][0][2]:.2f} GB" for tree in ("old", "new")),
                 ", ".join(f"{r[0]:.0f}" for r in results["old", setup]) + "; "
                 + ", ".join(f"{r[0]:.0f}" for r in results["new", setup])])
  pages = "both with huge pages" if args.old_huge_pages else "new with huge pages"
  append_table(f"Train step: {revision} (old) against this checkout (new, {pages}), "
               "alternating",
               ["setup", "old ms", "new ms", "speed-up", "XLA cost old / new",
                "each run, ms (old; new)"], rows,
               command="python experiments/compare_step.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
