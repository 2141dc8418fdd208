"""Does `dfjax.train_prior` work on a bank that is not the toy world? A check of generality.

  python experiments/generality.py bank --out=/tmp/gen/bank.npz
  python -m dfjax.train_prior --config=configs/train_prior.py --workdir=/tmp/gen/sd \
      --config.bank=/tmp/gen/bank.npz
  python experiments/generality.py distil --pipeline=/tmp/gen/sd/pipeline --runs_dir=/tmp/gen

The bank holds three objects the toy world does not have (a purple table, an orange rocket, a
teal lamp), built here from the same SDF primitives, seen from other cameras than the toy
banks' (elevation 0-50 degrees, distance 1.7-2.0, field of view 40-48 degrees), 32x32, in
the three shadings the toy world's prior is trained on (albedo, Lambertian, textureless; one
bank file, the same captions), unless --shadings says otherwise. A pipeline is trained on it
with the default config, then each object is distilled with configs/toy_sd.py pointed at that
pipeline and at the bank's cameras, and scored against its true shape: mesh IoU, held-out
silhouette IoU and PSNR over 12 azimuths at 25 degrees elevation. Results are appended to
experiments/results/toy_sd.md.
"""
import datetime
import math
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

flags.DEFINE_string("out", "", "bank: where to write the bank (.npz).")
flags.DEFINE_list("shadings", ["albedo", "lambertian", "lambertian_textureless"],
                  "bank: the shadings rendered, all in one bank with the same captions (as the "
                  "toy world's three banks).")
flags.DEFINE_string("pipeline", "", "distil: the pipeline trained on the bank.")
flags.DEFINE_string("runs_dir", "runs/generality", "distil: run folders.")
flags.DEFINE_list("seeds", ["0"], "distil: seeds.")
flags.DEFINE_list("objects", [], "distil: captions to distil (default: all three).")
flags.DEFINE_list("extra", [], "distil: extra --config.X=Y overrides.")
FLAGS = flags.FLAGS

ELEVATION_RANGE = (0.0, 50.0)
DISTANCE_RANGE = (1.7, 2.0)
FOV_RANGE = (40.0, 48.0)


def objects():
  """Three objects outside the toy world, each within 0.5 of the origin."""
  from dfjax.toy import objects as toy_objects  # pylint: disable=g-import-not-at-top
  from dfjax.toy import sdf  # pylint: disable=g-import-not-at-top

  def table(xyz):
    top = sdf.box(xyz, center=(0.0, 0.0, 0.1), half_size=(0.34, 0.24, 0.04))
    legs = sdf.union(*[sdf.cylinder(xyz, start=(x, y, -0.35), end=(x, y, 0.1), radius=0.04)
                       for x in (-0.28, 0.28) for y in (-0.18, 0.18)])
    return top, legs

  def rocket(xyz):
    body = sdf.cylinder(xyz, start=(0.0, 0.0, -0.3), end=(0.0, 0.0, 0.15), radius=0.11)
    nose = sdf.capped_cone(xyz, start=(0.0, 0.0, 0.15), end=(0.0, 0.0, 0.42),
                           start_radius=0.11, end_radius=0.01)
    fins = sdf.union(*[sdf.box(xyz, center=(0.16 * math.cos(a), 0.16 * math.sin(a), -0.26),
                               half_size=(0.09 * abs(math.cos(a)) + 0.015,
                                          0.09 * abs(math.sin(a)) + 0.015, 0.07))
                       for a in (0.0, 2.094, 4.189)])
    return body, nose, fins

  def lamp(xyz):
    shade = sdf.capped_cone(xyz, start=(0.0, 0.0, 0.05), end=(0.0, 0.0, 0.3),
                            start_radius=0.26, end_radius=0.12)
    pole = sdf.cylinder(xyz, start=(0.0, 0.0, -0.38), end=(0.0, 0.0, 0.05), radius=0.03)
    base = sdf.cylinder(xyz, start=(0.0, 0.0, -0.42), end=(0.0, 0.0, -0.36), radius=0.18)
    return shade, pole, base

  make = toy_objects.ToyObject
  return [
      make(caption="a purple table", part_distances=table,
           part_colors=((0.55, 0.2, 0.75), (0.35, 0.12, 0.5))),
      make(caption="an orange rocket", part_distances=rocket,
           part_colors=((0.95, 0.5, 0.1), (0.9, 0.9, 0.9), (0.2, 0.2, 0.7))),
      make(caption="a teal lamp", part_distances=lamp,
           part_colors=((0.1, 0.65, 0.6), (0.2, 0.2, 0.2), (0.2, 0.2, 0.2))),
  ]


def make_bank():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dfjax.priors import bank as bank_lib  # pylint: disable=g-import-not-at-top
  from dfjax.toy import banks  # pylint: disable=g-import-not-at-top
  parts = [banks.make_bank(objects(), resolution=32, num_views=160, shading=shading,
                           elevation_range_deg=ELEVATION_RANGE, distance_range=DISTANCE_RANGE,
                           fov_range_deg=FOV_RANGE, seed=7) for shading in FLAGS.shadings]
  arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  bank_lib.save_bank(FLAGS.out, **arrays)
  print(f"{len(arrays['images'])} images ({', '.join(FLAGS.shadings)}) written to {FLAGS.out}")


def score(obj, workdir):
  """Mesh IoU, held-out silhouette IoU and PSNR of a finished run against `obj`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dfjax.eval import ablation_metrics, ablations, metrics  # pylint: disable=g-import-not-at-top
  from dfjax.export import mesh as mesh_lib, outputs  # pylint: disable=g-import-not-at-top
  from dfjax.scene import cameras  # pylint: disable=g-import-not-at-top
  from dfjax.toy import truth  # pylint: disable=g-import-not-at-top
  from dfjax.train import model as model_lib, restore  # pylint: disable=g-import-not-at-top
  config = restore.load_run_config(workdir)
  scene, params, step = restore.restore_params(config, workdir, step=None)
  params = jax.device_get(params)
  render, density_fn = ablations.evaluators(scene.field, ablations.render_settings_of(config))
  cov_scale = np.float32(model_lib.cov_scale_at(step, config))
  ious, psnrs = [], []
  for azimuth in range(0, 360, 30):
    camera = cameras.camera_from_angles(azimuth_deg=azimuth + 15.0, elevation_deg=25.0,
                                        distance=1.85, fov_deg=44.0, width=32, height=32)
    out = jax.device_get(render(params, camera, cov_scale))
    true = truth.render_ground_truth(obj, camera)
    ious.append(metrics.mask_iou(np.asarray(out.accumulated_alpha), np.asarray(true.alpha)))
    psnrs.append(metrics.psnr(np.clip(out.rgb, 0, 1), np.asarray(true.rgb)))
  density = mesh_lib.density_grid(lambda p: density_fn(params, p, cov_scale),
                                  resolution=ablations.GRID_RESOLUTION, bound=ablations.GRID_BOUND)
  true_occupancy = ablation_metrics.ground_truth_occupancy(
      obj, resolution=ablations.GRID_RESOLUTION, bound=ablations.GRID_BOUND)
  threshold, _ = outputs.surface_threshold(scene, params, step=step)
  iou = metrics.iou(density > threshold, true_occupancy)
  return iou, float(np.mean(ious)), float(np.mean(psnrs))


def distil():
  multiplier = lambda fov: 0.5 / math.tan(math.radians(fov) / 2)
  rows = []
  for obj in objects():
    if FLAGS.objects and obj.caption not in FLAGS.objects:
      continue
    for seed in FLAGS.seeds:
      workdir = os.path.join(FLAGS.runs_dir, obj.caption.replace(" ", "_") + f"_seed{seed}")
      command = [sys.executable, "-m", "dfjax.main", "--config=configs/toy_sd.py",
                 f"--workdir={workdir}", f"--config.prompt={obj.caption}",
                 f"--config.seed={seed}", f"--config.prior.model={FLAGS.pipeline}",
                 f"--config.camera.elevation_range={ELEVATION_RANGE}",
                 f"--config.camera.distance_range={DISTANCE_RANGE}",
                 f"--config.camera.focal_range=({multiplier(FOV_RANGE[1]):.4f}, "
                 f"{multiplier(FOV_RANGE[0]):.4f})", "--config.export.at_end=False"
                 ] + [f"--config.{e}" for e in FLAGS.extra]
      start = time.time()
      subprocess.run(command, cwd=REPO, check=True)
      seconds = time.time() - start
      iou, mask_iou, psnr = score(obj, workdir)
      rows.append(f"| {obj.caption} | {seed} | {seconds:.0f} | {iou:.3f} | {mask_iou:.3f} | "
                  f"{psnr:.1f} |")
      print(rows[-1], flush=True)
  text = "\n".join([
      f"## Generality: a bank outside the toy world "
      f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
      f"`{' '.join(sys.argv)}`", "",
      "| object | seed | seconds | mesh IoU | held-out silhouette IoU | held-out PSNR |",
      "|---|---|---|---|---|---|", *rows]) + "\n\n"
  print(text)
  with open(os.path.join(REPO, "experiments", "results", "toy_sd.md"), "a") as f:
    f.write(text)


def main(argv):
  if argv[1:] == ["bank"]:
    make_bank()
  elif argv[1:] == ["distil"]:
    distil()
  else:
    raise app.UsageError("say `bank` or `distil`")


if __name__ == "__main__":
  app.run(main)
