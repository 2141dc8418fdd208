"""The end-of-run export (mesh and turntable) of another revision against this checkout's.

  python experiments/bench_export.py --rev=HEAD~1 [--setups=toy,dreamfusion] [--rounds=1]
      [--frames=toy:36,dreamfusion:3]

Checks REV out into a temporary git worktree and, round after round, times the export of
each setup's config in the old tree and then in this one, each in a fresh process with the
persistent compilation cache off, so a drifting machine load favours neither side. The field
is the config's freshly initialised one (its density "blob" gives a closed surface), so the
times are the export's own work: the marching-cubes grid, the textured mesh (simplified,
unwrapped, baked) and the turntable's renders; the step is the config's last, as at the end
of a run. `--frames` sets the turntable's frames per setup (default: the config's); with fewer
frames than the config's the table also gives the video's time per frame and the config's
whole video projected from it, marked as such. Prints a table and appends it to
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run inside a tree: prints "mesh_seconds video_seconds frames config_frames" for the config
# named in argv[1] with `argv[2]` turntable frames (0: the config's), using the tree's code.
TIMER = """
import importlib, os, sys, tempfile, time
sys.path.insert(0, os.getcwd())
import jax
from dfjax.export import outputs, video
from dfjax.train import model
config = importlib.import_module("configs." + sys.argv[1]).get_config()
config_frames = config.export.video_frames
config.export.video_frames = int(sys.argv[2]) or config_frames
scene = model.create_scene(config, None, camera_kwargs={})
params = model.init_params(scene, jax.random.PRNGKey(0))
step = config.train.steps
with tempfile.TemporaryDirectory() as folder:
  start = time.perf_counter()
  outputs.export_run(scene, params, folder, step=step, video=False)
  mesh = time.perf_counter() - start
  start = time.perf_counter()
  video.write_video(outputs.turntable_frames(scene, params, step=step),
                    os.path.join(folder, "turntable." + config.export.video_format), fps=20)
  print(mesh, time.perf_counter() - start, config.export.video_frames, config_frames)
"""


def time_export(tree: str, setup: str, frames: int) -> list[float]:
  """[mesh s, video s, frames, the config's frames] of `setup` with the code of `tree`."""
  env = dict(os.environ, PYTHONPATH=tree, DFJAX_COMPILATION_CACHE="off")
  out = subprocess.run([sys.executable, "-c", TIMER, setup, str(frames)], cwd=tree, env=env,
                       check=True, capture_output=True, text=True).stdout
  return [float(value) for value in out.split()[-4:]]


def row(setup: str, tree: str, runs: list[list[float]]) -> list[str]:
  mesh, video = (statistics.median(r[i] for r in runs) for i in (0, 1))
  frames, config_frames = int(runs[0][2]), int(runs[0][3])
  whole = f"{mesh + video:.0f}"
  if frames != config_frames:
    whole = f"{mesh + video / frames * config_frames:.0f} (projected)"
  return [setup, tree, f"{mesh:.1f}", f"{video:.1f} ({frames} frames)",
          f"{video / frames:.2f}", whole]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rev", required=True, help="the revision to compare against")
  parser.add_argument("--setups", default="toy,dreamfusion")
  parser.add_argument("--rounds", type=int, default=1)
  parser.add_argument("--frames", default="",
                      help="turntable frames per setup, e.g. dreamfusion:3 (default: config's)")
  args = parser.parse_args()
  setups = args.setups.split(",")
  frames = {name: int(value) for name, value in
            (item.split(":") for item in args.frames.split(",") if item)}
  revision = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
  results = {(tree, setup): [] for tree in ("old", "new") for setup in setups}
  with tempfile.TemporaryDirectory() as scratch:
    old_tree = os.path.join(scratch, "old")
    subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.rev], cwd=ROOT,
                   check=True, capture_output=True)
    try:
      for _ in range(args.rounds):
        for setup in setups:
          for tree, path in (("old", old_tree), ("new", ROOT)):
            results[tree, setup].append(time_export(path, setup, frames.get(setup, 0)))
            print(tree, setup, results[tree, setup][-1], flush=True)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, check=False)
  rows = [row(setup, f"{tree} ({revision})" if tree == "old" else tree, results[tree, setup])
          for setup in setups for tree in ("old", "new")]
  append_table(f"End-of-run export: {revision} (old) against this checkout (new), alternating",
               ["config", "code", "mesh s (grid, textured GLB, PLY)", "turntable s",
                "s per frame", "export s, the config's whole turntable"], rows,
               command="python experiments/bench_export.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
