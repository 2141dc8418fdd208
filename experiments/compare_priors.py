"""Each toy object distilled with the toy SD and with the closed-form prior at equal steps.

  python experiments/compare_priors.py --objects=all --seeds=0,1 --runs_dir=runs/compare_priors

For every object and seed, two README commands, each timed (compile, training and export)
and scored against the true object (`dfjax.eval.ablations.score_run`: mesh IoU at the surface
level the export chose, held-out silhouette IoU and PSNR over 12 azimuths):
  toy SD:       python -m dfjax.main --config=configs/toy_sd.py
  closed form:  python -m dfjax.main --config=configs/toy.py --config.train.steps=N
with N the toy SD config's steps, so both priors get the same number of updates. --guidance
and --steps override the toy SD's guidance scale and both runs' steps: the table of 2026-12
was made when configs/toy_sd.py guided at 100 for 1500 steps, and
  python experiments/compare_priors.py --guidance=100 --steps=1500
repeats its settings (the default now distils at the config's 10 for 3000 steps). Runs
already finished in --runs_dir (RUNS/toy_sd/OBJECT_seedS and RUNS/closed_form/OBJECT_seedS)
are scored again, not retrained, so a study resumes where it stopped; --finished_only trains
nothing and tables the pairs of runs finished so far. The side-by-side table
is appended to experiments/results/toy_sd.md, with a bar chart of each object's mesh IoU
(the mean over seeds) under each prior and a figure of each object's turntable frames at 0,
90 and 180 degrees under each prior (its first seed scored).
"""
import argparse
import datetime
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from configs import toy_sd  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(common.REPO, "experiments", "results", "toy_sd.md")
FIGURE = os.path.join("experiments", "results", "toy_sd", "compare_priors.png")
RENDERS = os.path.join("experiments", "results", "toy_sd", "compare_priors_renders.png")
PRIORS = ("toy SD", "closed form")
FOLDERS = {"toy SD": "toy_sd", "closed form": "closed_form"}  # each prior's runs subfolder


def runs(steps: int, guidance: float):
  """{prior: (config file, extra flags)}."""
  return {"toy SD": ("configs/toy_sd.py", [f"--config.train.steps={steps}",
                                           f"--config.prior.guidance_scale={guidance}"]),
          "closed form": ("configs/toy.py", [f"--config.train.steps={steps}"])}


def study(objects, seeds, runs_dir: str, *, steps: int, guidance: float,
          finished_only: bool = False):
  """{(object, seed, prior): (minutes, mesh IoU, silhouette IoU, PSNR)}, runs alternating.

  With `finished_only`, nothing is trained: only the pairs whose two runs have finished
  are scored.
  """
  prior_runs = runs(steps, guidance)
  scores = {}
  for object_name in objects:
    for seed in seeds:
      workdirs = {prior: os.path.join(runs_dir, FOLDERS[prior], f"{object_name}_seed{seed}")
                  for prior in prior_runs}
      if finished_only and not all(os.path.isfile(os.path.join(w, common.SECONDS_FILE))
                                   for w in workdirs.values()):
        continue
      for prior, (config, flags) in prior_runs.items():
        seconds, s, _ = common.distil(config, object_name, seed, workdirs[prior], flags,
                                      quiet=True)
        scores[object_name, seed, prior] = (seconds / 60, s["iou"], s["mask_iou"], s["psnr"])
        print(object_name, seed, prior, scores[object_name, seed, prior], flush=True)
  return scores


def table(scores, objects, seeds) -> list[str]:
  """Markdown rows: per object and seed, then the means, both priors side by side."""
  lines = ["| object | seed | " + " | ".join(
      f"{p}: {m}" for p in PRIORS for m in ("mesh IoU", "silhouette IoU", "PSNR", "minutes"))
      + " |", "|---|---|" + "---|" * 8]
  def cells(values):
    minutes, iou, mask_iou, psnr = values
    return [f"{iou:.3f}", f"{mask_iou:.3f}", f"{psnr:.1f}", f"{minutes:.1f}"]
  pairs = [(o, s) for o in objects for s in seeds if (o, s, PRIORS[0]) in scores]
  for object_name, seed in pairs:
    lines.append(f"| {object_name} | {seed} | " + " | ".join(
        c for p in PRIORS for c in cells(scores[object_name, seed, p])) + " |")
  means = {p: [statistics.fmean(column) for column in zip(
      *[v for k, v in scores.items() if k[2] == p])] for p in PRIORS}
  lines.append(f"| **mean of {len(pairs)}** | | " + " | ".join(
      c for p in PRIORS for c in cells(means[p])) + " |")
  return lines


def renders_figure(path: str, objects, seed: dict, runs_dir: str, *, frames=(0, 9, 18)):
  """One row per object: the colour panel of turntable frames under each prior, side by side.

  `seed` maps each object to the seed whose runs are shown.

  The frames are those of each run's own turntable.mp4 (36 frames, 10 degrees apart; each
  frame holds colour, normals and textureless panels side by side, the colour one first).
  """
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rows = []
  for object_name in objects:
    row = []
    for prior in PRIORS:
      workdir = os.path.join(runs_dir, FOLDERS[prior], f"{object_name}_seed{seed[object_name]}")
      video = iio.imread(os.path.join(workdir, "turntable.mp4"))
      size = video.shape[1]
      row += [video[f, :, :size] for f in frames] + [np.full((size, 4, 3), 255, np.uint8)]
    rows.append(np.concatenate(row, axis=1))
  label_height = 14
  image = Image.new("RGB", (rows[0].shape[1], label_height + sum(r.shape[0] for r in rows)),
                    (255, 255, 255))
  draw = ImageDraw.Draw(image)
  half = rows[0].shape[1] // 2
  draw.text((4, 1), "toy SD", fill=(0, 0, 0))
  draw.text((half + 4, 1), "closed form", fill=(0, 0, 0))
  y = label_height
  for object_name, row in zip(objects, rows):
    image.paste(Image.fromarray(row), (0, y))
    draw.text((2, y + 2), f"{object_name}, seed {seed[object_name]}", fill=(0, 0, 0))
    y += row.shape[0]
  image.save(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--objects", default="all", help="toy objects, comma-separated, or all")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--runs_dir", default=os.path.join("runs", "compare_priors"))
  defaults = toy_sd.get_config()
  parser.add_argument("--guidance", type=float, default=defaults.prior.guidance_scale,
                      help="the toy SD's guidance scale (default: configs/toy_sd.py's)")
  parser.add_argument("--steps", type=int, default=defaults.train.steps,
                      help="both priors' training steps (default: configs/toy_sd.py's)")
  parser.add_argument("--finished_only", action="store_true",
                      help="train nothing: score the pairs of runs that have finished")
  args = parser.parse_args()
  from dfjax.eval import ablations  # pylint: disable=g-import-not-at-top
  objects = (list(ablations.OBJECT_BY_NAME) if args.objects == "all"
             else args.objects.split(","))
  seeds = [int(s) for s in args.seeds.split(",")]
  scores = study(objects, seeds, args.runs_dir, steps=args.steps, guidance=args.guidance,
                 finished_only=args.finished_only)
  if not scores:
    sys.exit(f"error: no finished pair of runs in {args.runs_dir}; run without --finished_only")
  objects = [o for o in objects if any(k[0] == o for k in scores)]
  os.makedirs(os.path.join(common.REPO, os.path.dirname(FIGURE)), exist_ok=True)
  common.bar_plot(os.path.join(common.REPO, FIGURE), objects, {
      prior: [statistics.fmean(v[1] for k, v in scores.items() if k[0] == o and k[2] == prior)
              for o in objects] for prior in PRIORS},
      y_label=f"mesh IoU (mean over the seeds scored, of {args.seeds})")
  first_seed = {o: min(k[1] for k in scores if k[0] == o) for o in objects}
  renders_figure(os.path.join(common.REPO, RENDERS), objects, first_seed, args.runs_dir)
  figure = os.path.relpath(FIGURE, os.path.join("experiments", "results"))
  renders = os.path.relpath(RENDERS, os.path.join("experiments", "results"))
  lines = [f"## Toy SD (guidance {args.guidance:g}) against the closed-form prior at "
           f"{args.steps} steps", "",
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
           f"{common.machine()}",
           f"`python experiments/compare_priors.py {' '.join(sys.argv[1:])}`", "",
           *table(scores, objects, seeds), "",
           f"![mesh IoU per object under each prior]({figure})", "",
           f"![each object's turntable at 0, 90 and 180 degrees under each prior]({renders})",
           ""]
  text = "\n".join(lines) + "\n"
  print(text)
  with open(RESULTS, "a", encoding="utf-8") as f:
    f.write(text)


if __name__ == "__main__":
  main()
