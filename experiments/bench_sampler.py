"""The paper's uniform sampler against empty-space skipping (render.sampler = "occupancy").

  python experiments/bench_sampler.py                       # step times, toy and bank setups
  python experiments/bench_sampler.py --objects=yellow_duck,blue_chair --seeds=0,1
                                                            # and runs scored on toy objects

Part 1 times one device's jitted train step (XLA's FLOPs and bytes too) for each sampler
variant of each setup (profile_step.py's toy and bank setups), round after round in one
process, so a drifting machine load favours no variant. The occupancy variants' grids are
taken from a field trained for 200 steps, so the step skips what a run's step skips, not the
fresh field's everywhere-occupied grid.
Part 2 trains configs/toy.py with each variant on the given objects and seeds (the README's
command, timed, export off) and scores each run against the true object (mesh IoU, held-out
silhouette IoU and PSNR, as experiments/run_ablations.py does). Runs already finished in
--runs_dir keep their recorded times and are only scored again (with --export_threshold=0,
at the surface level chosen from the renders, for runs made before that was the default).
Both tables are printed and appended to experiments/results/bench.md.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top
from common import append_table  # pylint: disable=g-import-not-at-top
import profile_step  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Samples per ray of each setup with the paper's uniform sampler (configs/toy.py's own
# before it skipped empty space by default).
UNIFORM_SAMPLES = {"toy": 32, "bank": 48, "paper": 64}
# key -> (name in the tables, sampler, samples per ray as a fraction of UNIFORM_SAMPLES,
# loss.orientation_in_albedo_views: False computes no normals in the albedo-only views that
# the toy and bank configs train with).
VARIANTS = {
    "uniform": ("uniform", "uniform", 1.0, True),
    "occupancy": ("occupancy, same samples", "occupancy", 1.0, True),
    "occupancy_half": ("occupancy, half the samples", "occupancy", 0.5, True),
    "occupancy_half_unoriented": ("occupancy, half the samples, no orientation loss in albedo "
                                  "views", "occupancy", 0.5, False),
}


def overrides(setup: str, key: str) -> dict:
  """The config fields of a variant on a setup."""
  _, sampler, fraction, albedo_orientation = VARIANTS[key]
  return {"render.sampler": sampler,
          "render.num_samples": int(UNIFORM_SAMPLES[setup] * fraction),
          "loss.orientation_in_albedo_views": albedo_orientation}


def apply(config, fields: dict):
  for name, value in fields.items():
    section, key = name.split(".")
    config[section][key] = value
  return config


def build(setup: str, fields: dict, *, warm_steps: int):
  """profile_step.build with the fields; the state after `warm_steps` training steps."""
  from dfjax.train import model as model_lib  # pylint: disable=g-import-not-at-top
  from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
  from dfjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  config = apply(profile_step.setup_config(setup), fields)
  prior, camera_kwargs = prior_setup.build_prior(config)
  scene = model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)
  optimizer = step_lib.create_optimizer(config)
  state = step_lib.create_train_state(scene, optimizer, jax.random.PRNGKey(0))
  mesh = step_lib.make_mesh(jax.devices()[:1])
  train_step = step_lib.make_train_step(scene, optimizer, mesh)
  prior_params = step_lib.replicate(prior.params, mesh)
  state = step_lib.replicate(state, mesh)
  for _ in range(warm_steps):
    state, _ = train_step(state, prior_params)
  flops, gigabytes = profile_step.cost(train_step, state, prior_params)
  timed = lambda: jax.block_until_ready(train_step(jax.tree.map(jnp.copy, state),
                                                   prior_params))
  return timed, flops, gigabytes


def step_times(setups, variants, *, rounds: int, repeats: int, warm_steps: int):
  rows = []
  for setup in setups:
    built = {key: build(setup, overrides(setup, key), warm_steps=warm_steps) for key in variants}
    times = {key: [] for key in variants}
    for _ in range(rounds):
      for name, (timed, _, _) in built.items():
        timed()
        for _ in range(repeats):
          start = time.perf_counter()
          timed()
          times[name].append(time.perf_counter() - start)
    base = statistics.median(times[variants[0]])
    for key, (_, flops, gigabytes) in built.items():
      median = statistics.median(times[key])
      rows.append([setup, VARIANTS[key][0], f"{flops:.2f}", f"{gigabytes:.2f}",
                   f"{median * 1e3:.0f}", f"{base / median:.2f}"])
      print(rows[-1], flush=True)
  return rows


def distil(object_name: str, seed: int, key: str, runs_dir: str, export_threshold=None):
  """configs/toy.py on one object with a variant's overrides, timed (export off), scored."""
  flags = ["--config.export.at_end=False"] + [
      f"--config.{k}={v}" for k, v in overrides("toy", key).items()]
  workdir = run_dir(runs_dir, object_name, seed, key)
  seconds, scores, _ = common.distil("configs/toy.py", object_name, seed, workdir, flags,
                                     quiet=True, export_threshold=export_threshold)
  return seconds, scores


def run_dir(runs_dir: str, object_name: str, seed: int, key: str) -> str:
  return os.path.join(runs_dir, f"{object_name}_seed{seed}_{key}")


def quality(objects, seeds, variants, runs_dir: str, export_threshold=None,
            finished_only=False):
  """A row per run, then a mean row per variant when there is more than one run each.

  With `finished_only`, an object and seed is left out unless every variant's run has
  finished in `runs_dir` (nothing is trained).
  """
  rows, means = [], {key: [] for key in variants}
  for object_name in objects:
    for seed in seeds:
      if finished_only and not all(
          os.path.isfile(os.path.join(run_dir(runs_dir, object_name, seed, key),
                                      common.SECONDS_FILE)) for key in variants):
        continue
      for key in variants:  # alternating, as the step times are
        seconds, s = distil(object_name, seed, key, runs_dir, export_threshold)
        means[key].append([seconds, s["iou"], s["mask_iou"], s["psnr"], s["empty_density"]])
        rows.append([object_name, seed, VARIANTS[key][0], f"{seconds:.0f}", f"{s['iou']:.3f}",
                     f"{s['mask_iou']:.3f}", f"{s['psnr']:.1f}", f"{s['empty_density']:.3f}"])
        print(rows[-1], flush=True)
  if len(means[variants[0]]) > 1:
    for key, values in means.items():
      mean = [statistics.fmean(column) for column in zip(*values)]
      rows.append([f"**mean of {len(values)}**", "", VARIANTS[key][0], f"{mean[0]:.0f}",
                   f"{mean[1]:.3f}", f"{mean[2]:.3f}", f"{mean[3]:.1f}", f"{mean[4]:.3f}"])
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default="toy,bank")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--warm_steps", type=int, default=200)
  parser.add_argument("--objects", default="", help="toy objects to distil (comma-separated)")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"samplers to compare, the first the baseline: {', '.join(VARIANTS)}")
  parser.add_argument("--runs_dir", default="", help="run folders (default: a temporary one); "
                      "finished runs found there are scored again, not trained again")
  parser.add_argument("--finished_only", action="store_true",
                      help="score only the objects and seeds whose runs have all finished "
                      "in --runs_dir")
  parser.add_argument("--export_threshold", type=float, default=None,
                      help="score with this surface level instead of each run's own (0: "
                      "chosen from the renders)")
  args = parser.parse_args()
  command = "python experiments/bench_sampler.py " + " ".join(sys.argv[1:])
  variants = args.variants.split(",")
  if unknown := [key for key in variants if key not in VARIANTS]:
    parser.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
  if args.setups:
    rows = step_times(args.setups.split(","), variants, rounds=args.rounds, repeats=args.repeats,
                      warm_steps=args.warm_steps)
    append_table(f"Samplers: the train step after {args.warm_steps} steps (alternating "
                 "rounds, one device)",
                 ["setup", "sampler", "GFLOP", "GB accessed", "ms (median)",
                  f"speed-up vs {VARIANTS[variants[0]][0]}"], rows, command=command)
  if args.objects:
    with tempfile.TemporaryDirectory() as scratch:
      rows = quality(args.objects.split(","), [int(s) for s in args.seeds.split(",")],
                     variants, args.runs_dir or scratch, args.export_threshold,
                     args.finished_only)
    append_table("Samplers: configs/toy.py runs scored against the true objects",
                 ["object", "seed", "sampler", "seconds (command, export off)", "mesh IoU",
                  "held-out silhouette IoU", "held-out PSNR", "empty-space density"], rows,
                 command=command)


if __name__ == "__main__":
  main()
