"""The README's quick start, end to end from an empty cache: timed whole and scored.

  python experiments/bench_quickstart.py                       # the duck, seed 0
  python experiments/bench_quickstart.py --objects=yellow_duck,house --seeds=0,1

Each run is the README's command, `python -m dfjax.main --config=configs/toy.py` (with the
object's caption as the prompt; the README's is the duck's), with DFJAX_CACHE_DIR pointed at
a new empty folder, so the toy bank is rendered and the step compiled as on a first run. It
is timed whole (bank, compilation, training, mesh and turntable export) and scored against
the true object (`dfjax.eval.ablations.score_run`: mesh IoU at the surface level the export
chose, held-out silhouette IoU and PSNR). Finished runs found in --runs_dir are scored again,
not retrained. The table is printed and appended to experiments/results/bench.md.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--objects", default="yellow_duck", help="toy objects (comma-separated)")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--runs_dir", default="", help="run folders (default: a temporary one)")
  args = parser.parse_args()
  rows, values = [], []
  with tempfile.TemporaryDirectory() as scratch:
    runs_dir = args.runs_dir or scratch
    for object_name in args.objects.split(","):
      for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as cache:
          os.environ["DFJAX_CACHE_DIR"] = cache  # read by the command started below
          seconds, s, step = common.distil(
              "configs/toy.py", object_name, seed,
              os.path.join(runs_dir, f"{object_name}_seed{seed}"), quiet=True)
        values.append([seconds, s["iou"], s["mask_iou"], s["psnr"]])
        rows.append([object_name, seed, step, f"{seconds:.0f}", f"{s['iou']:.3f}",
                     f"{s['mask_iou']:.3f}", f"{s['psnr']:.1f}"])
        print(rows[-1], flush=True)
  if len(values) > 1:
    mean = [statistics.fmean(column) for column in zip(*values)]
    rows.append([f"**mean of {len(values)}**", "", "", f"{mean[0]:.0f}", f"{mean[1]:.3f}",
                 f"{mean[2]:.3f}", f"{mean[3]:.1f}"])
  common.append_table(
      "The README's quick start, end to end from an empty cache",
      ["object", "seed", "steps", "seconds (bank, compile, train, export)", "mesh IoU",
       "held-out silhouette IoU", "held-out PSNR"], rows,
      command="python experiments/bench_quickstart.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
