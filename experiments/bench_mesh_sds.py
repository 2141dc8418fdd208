"""Mesh refinement with SDS (`python -m dfjax.mesh_sds`) under each prior, timed and scored.

  python experiments/bench_mesh_sds.py --mesh=runs/toy/mesh.ply [--object=yellow_duck]
      [--configs=configs/mesh_sds.py,configs/mesh_sds_toy_sd.py] [--steps=N]

Runs the README's refinement command on one mesh once per config (the closed-form prior's
and the toy Stable Diffusion's), each timed as a user would see it (load, compile, steps,
write), and scores the input and every output against the true toy object with
`dfjax.eval.ablations.score_mesh` (held-out silhouette IoU and PSNR of the vertex-coloured
mesh at the evaluation cameras). The prompt is the object's caption. Prints a table and
appends it to experiments/results/bench.md; the refined meshes stay in --out_dir.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, append_table  # pylint: disable=g-import-not-at-top


def refine(config: str, mesh: str, out: str, caption: str, extra) -> float:
  command = [sys.executable, "-m", "dfjax.mesh_sds", f"--config={config}", f"--mesh={mesh}",
             f"--out={out}", f"--config.prompt={caption}", *extra]
  start = time.time()
  subprocess.run(command, cwd=REPO, check=True)
  return time.time() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mesh", required=True, help="the mesh to refine (.ply, .glb, .obj)")
  parser.add_argument("--object", default="yellow_duck", help="the toy object it shows")
  parser.add_argument("--configs", default="configs/mesh_sds.py,configs/mesh_sds_toy_sd.py")
  parser.add_argument("--steps", type=int, default=0, help="refinement steps (0: config's)")
  parser.add_argument("--out_dir", default="runs/mesh_sds_bench")
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from dfjax.eval import ablations  # pylint: disable=g-import-not-at-top
  from dfjax.export import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  if args.object not in ablations.OBJECT_BY_NAME:
    parser.error(f"unknown --object {args.object!r}; toy objects: "
                 f"{', '.join(ablations.OBJECT_BY_NAME)}")
  source = mesh_lib.load_mesh(os.path.abspath(args.mesh))
  before = ablations.score_mesh(source, args.object)
  rows = [["(input)", f"{len(source.faces)}", "", "", f"{before['mask_iou']:.3f}",
           f"{before['psnr']:.1f}"]]
  print(rows[-1], flush=True)
  caption = ablations.OBJECT_BY_NAME[args.object]().caption
  extra = [f"--config.mesh_sds.steps={args.steps}"] if args.steps else []
  os.makedirs(args.out_dir, exist_ok=True)
  for config in args.configs.split(","):
    name = os.path.splitext(os.path.basename(config))[0]
    out = os.path.abspath(os.path.join(args.out_dir, f"refined_{name}.ply"))
    seconds = refine(config, os.path.abspath(args.mesh), out, caption, extra)
    after = ablations.score_mesh(mesh_lib.load_mesh(out), args.object)
    steps = args.steps or _config_steps(config)
    rows.append([config, f"{len(source.faces)}", f"{steps}", f"{seconds:.0f}",
                 f"{after['mask_iou']:.3f}", f"{after['psnr']:.1f}"])
    print(rows[-1], flush=True)
  append_table(f"Mesh refinement with SDS on {args.object}: each prior",
               ["config", "faces", "steps", "seconds (command)", "held-out silhouette IoU",
                "held-out PSNR"], rows,
               command="python experiments/bench_mesh_sds.py " + " ".join(sys.argv[1:]))


def _config_steps(path: str) -> int:
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().mesh_sds.steps


if __name__ == "__main__":
  main()
