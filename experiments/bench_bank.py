"""configs/bank.py on a user's own bank: the toy bank as a plain bank file, timed and scored.

  python experiments/bench_bank.py --objects=yellow_duck,red_mug --seeds=0 --runs_dir=runs/bank
  python experiments/bench_bank.py --objects=yellow_duck -- --config.train.steps=1000

The toy bank that configs/toy.py uses (seven objects, 32x32, 96 views each, albedo) is copied
into a plain .npz with only the public bank keys (README, "Image banks"), so a run sees what a
user's own bank gives it. Each object is the README's bank command,
`python -m dfjax.main --config=configs/bank.py --config.prior.bank=FILE --config.prompt=...`
(plus any flags after `--`), timed whole: loading the bank, compiling, training, and the
mesh and turntable export. The run is then scored against the true object
(`dfjax.eval.ablations.score_run`: mesh IoU at the surface level the export chose, held-out
silhouette IoU and PSNR). Finished runs found in --runs_dir are scored again, not retrained.
The table is printed and appended to experiments/results/bench.md.
"""
import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top

from configs import toy as toy_config  # pylint: disable=g-import-not-at-top
from dfjax.priors import bank as bank_lib  # pylint: disable=g-import-not-at-top
from dfjax.toy import banks  # pylint: disable=g-import-not-at-top

PUBLIC_KEYS = ("images", "prompts", "c2w", "fov_deg")


def plain_toy_bank(path: str) -> str:
  """Writes configs/toy.py's toy bank to `path` with only the public bank keys."""
  toy = toy_config.get_config().toy
  source = banks.get_toy_bank(resolution=toy.resolution, views_per_object=toy.views_per_object,
                              front_biased=toy.front_biased, shading=toy.shading, seed=toy.seed)
  with np.load(source) as data:
    bank_lib.save_bank(path, **{key: data[key] for key in PUBLIC_KEYS})
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--objects", default="yellow_duck", help="toy objects (comma-separated)")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--runs_dir", default="", help="run folders (default: a temporary one)")
  parser.add_argument("flags", nargs="*", help="after --: more flags for the command")
  args = parser.parse_args()
  rows, values = [], []
  with tempfile.TemporaryDirectory() as scratch:
    runs_dir = args.runs_dir or scratch
    os.makedirs(runs_dir, exist_ok=True)
    bank_file = plain_toy_bank(os.path.join(runs_dir, "toy_bank_plain.npz"))
    for object_name in args.objects.split(","):
      for seed in [int(s) for s in args.seeds.split(",")]:
        workdir = os.path.join(runs_dir, f"{object_name}_seed{seed}")
        seconds, s, step = common.distil(
            "configs/bank.py", object_name, seed, workdir,
            [f"--config.prior.bank={bank_file}", *args.flags], quiet=True)
        values.append([seconds / 60, s["iou"], s["mask_iou"], s["psnr"]])
        rows.append([object_name, seed, step, f"{seconds / 60:.1f}", f"{s['iou']:.3f}",
                     f"{s['mask_iou']:.3f}", f"{s['psnr']:.1f}"])
        print(rows[-1], flush=True)
  if len(values) > 1:
    mean = [statistics.fmean(column) for column in zip(*values)]
    rows.append([f"**mean of {len(values)}**", "", "", f"{mean[0]:.1f}", f"{mean[1]:.3f}",
                 f"{mean[2]:.3f}", f"{mean[3]:.1f}"])
  common.append_table(
      "configs/bank.py on the toy bank as a plain bank file (the whole command)",
      ["object", "seed", "steps", "minutes (bank, compile, train, export)", "mesh IoU",
       "held-out silhouette IoU", "held-out PSNR"], rows,
      command="python experiments/bench_bank.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
