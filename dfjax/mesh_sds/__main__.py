"""Refine an existing mesh with SDS: the command line of `dfjax.mesh_sds`.

  python -m dfjax.mesh_sds --config=configs/mesh_sds.py --mesh=IN.ply --out=OUT.ply \
      [--config.prompt="a yellow duck"]

Reads the mesh (never overwriting it), loads the prior named by the config, runs
`mesh_sds.refine.refine` and writes the refined mesh to --out. Every mistake in the command
line stops with one line on stderr and exit status 2.

Data flow: the top: the entry point over mesh_sds.refine, train.prior_setup and export.mesh.
"""
import os

from absl import flags
import numpy as np

from dfjax import cli
from dfjax.errors import UserError
from dfjax.export import mesh as mesh_lib
from dfjax.mesh_sds import refine as refine_lib


FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mesh_sds.py.",
                                  lock_config=True)
  flags.DEFINE_string("mesh", None, "Mesh to refine (.ply, .glb or .obj); only read.")
  flags.DEFINE_string("out", None, "Where to write the refined mesh (.ply, .glb or .obj).")


def _check_paths(mesh_path, out_path) -> None:
  if not mesh_path or not out_path:
    raise UserError("--mesh and --out are required, e.g. --mesh=runs/toy/mesh.ply "
                    "--out=runs/toy/refined.ply")
  extension = os.path.splitext(out_path)[1].lower()
  if extension not in mesh_lib.MESH_FORMATS:
    raise UserError(f"--out={out_path}: unknown mesh format {extension or '(none)'!r}; use one "
                    f"of {', '.join(mesh_lib.MESH_FORMATS)}")
  if os.path.abspath(out_path) == os.path.abspath(mesh_path) or (
      os.path.exists(out_path) and os.path.samefile(out_path, mesh_path)):
    raise UserError(f"--out={out_path} is the input mesh; write the refinement elsewhere, the "
                    "input is never overwritten")


def main(argv):
  with cli.user_errors():
    cli.check_command_line(argv, usage="--config=... --mesh=IN.ply --out=OUT.ply",
                           config_example="configs/mesh_sds.py")
    config = FLAGS.config
    if "mesh_sds" not in config:
      raise UserError("the config has no mesh_sds section; use --config=configs/mesh_sds.py")
    from dfjax.train import config_checks  # pylint: disable=g-import-not-at-top
    config_checks.check_config(config)
    refine_lib.check_settings(config)
    config_checks.check_paths(config)
    _check_paths(FLAGS.mesh, FLAGS.out)
    mesh = mesh_lib.load_mesh(FLAGS.mesh)
    from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
    prior, camera_kwargs = prior_setup.build_prior(config)
    print(f"refining {FLAGS.mesh} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) "
          f"towards {config.prompt!r} for {config.mesh_sds.steps} steps", flush=True)
    refined = refine_lib.refine(mesh, prior=prior, camera_kwargs=camera_kwargs,
                                settings=refine_lib.settings_from_config(config),
                                steps=config.mesh_sds.steps,
                                learning_rate=config.mesh_sds.learning_rate,
                                log_every=config.mesh_sds.log_every,
                                log=lambda line: print(line, flush=True))
    mesh_lib.write_mesh(refined, FLAGS.out)
    moved = np.linalg.norm(refined.vertices - mesh.vertices, axis=-1)
    print(f"wrote {FLAGS.out}: vertices moved {moved.mean():.4f} on average, "
          f"{moved.max():.4f} at most (world units)", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
