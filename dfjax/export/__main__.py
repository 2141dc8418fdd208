"""Export a run: `python -m dfjax.export --workdir=DIR`.

  python -m dfjax.export --workdir=DIR [--resolution=N] [--threshold=T] [--step=S] [--novideo]

re-exports from any checkpoint of a run (default: the latest): the mesh by marching cubes and
the turntable video (see `dfjax.export.outputs`). Every mistake in the command line stops with
one line on stderr and exit status 2.

Data flow: the top: the entry point over train.restore and export.outputs.
"""
from absl import flags

from dfjax import cli
from dfjax.errors import UserError
from dfjax.export import outputs
from dfjax.train import restore


FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  flags.DEFINE_string("workdir", None, "Run directory to export from.")
  flags.DEFINE_integer("resolution", None, "Marching-cubes grid size (default: the run's).")
  flags.DEFINE_float("threshold", None, "Density level of the surface (default: the run's).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("video", True, "Also write the turntable video.")


def main(argv):
  with cli.user_errors():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR --step=S")
    if not FLAGS.workdir:
      raise UserError("--workdir is required, e.g. --workdir=runs/toy")
    if FLAGS.resolution is not None and FLAGS.resolution < 8:
      raise UserError(f"--resolution must be at least 8, got {FLAGS.resolution}")
    if FLAGS.threshold is not None and FLAGS.threshold <= 0:
      raise UserError(f"--threshold must be positive, got {FLAGS.threshold}")
    config = restore.load_run_config(FLAGS.workdir)
    scene, params, step = restore.restore_params(config, FLAGS.workdir, step=FLAGS.step)
    outputs.export_run(scene, params, FLAGS.workdir, step=step, resolution=FLAGS.resolution,
                       threshold=FLAGS.threshold, video=FLAGS.video)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
