"""Export a run: `python -m dfjax.export --workdir=DIR`.

  python -m dfjax.export --workdir=DIR [--resolution=N] [--threshold=T] [--step=S] [--novideo]
      [--format=glb,obj,ply] [--texture_size=S] [--faces=F] [--video_format=mp4|gif]

re-exports from any checkpoint of a run (default: the latest): the meshes by marching cubes
(mesh.ply with vertex colours, mesh.glb / mesh.obj textured) and the turntable video (see
`dfjax.export.outputs`). Every mistake in the command line stops with
one line on stderr and exit status 2.

Data flow: the top: the entry point over train.restore and export.outputs.
"""
from absl import flags

from dfjax import cli
from dfjax.errors import UserError
from dfjax.export import outputs
from dfjax.train import config_checks
from dfjax.train import restore


FLAGS = flags.FLAGS


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  flags.DEFINE_string("workdir", None, "Run directory to export from.")
  flags.DEFINE_integer("resolution", None, "Marching-cubes grid size (default: the run's).")
  flags.DEFINE_float("threshold", None, "Density level of the surface (default: the run's).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("video", True, "Also write the turntable video.")
  flags.DEFINE_string("format", None, "Mesh formats, comma-separated, from ply (vertex "
                      "colours), obj and glb (textured) (default: the run's export.formats).")
  flags.DEFINE_integer("texture_size", None, "Texels per side of the baked texture (default: "
                       "the run's).")
  flags.DEFINE_integer("faces", None, "Face budget of the textured meshes, 0 for no "
                       "simplification (default: the run's).")
  flags.DEFINE_string("video_format", None, "Turntable video format, mp4 or gif (default: "
                      "the run's).")


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
    check_export_flags()
    config = restore.load_run_config(FLAGS.workdir)
    scene, params, step = restore.restore_params(config, FLAGS.workdir, step=FLAGS.step)
    outputs.export_run(scene, params, FLAGS.workdir, step=step, resolution=FLAGS.resolution,
                       threshold=FLAGS.threshold, formats=FLAGS.format,
                       texture_size=FLAGS.texture_size, faces=FLAGS.faces, video=FLAGS.video,
                       video_format=FLAGS.video_format)


def check_export_flags():
  """One-line errors for the mesh and video flags, before anything slow is loaded."""
  if FLAGS.format is not None:
    config_checks.export_formats(FLAGS.format, name="--format")
  if FLAGS.texture_size is not None:
    config_checks.check_texture_size(FLAGS.texture_size, name="--texture_size")
  if FLAGS.faces is not None:
    config_checks.check_face_budget(FLAGS.faces, name="--faces")
  if FLAGS.video_format is not None and FLAGS.video_format not in config_checks.VIDEO_FORMATS:
    raise UserError(f"--video_format must be one of {', '.join(config_checks.VIDEO_FORMATS)}, "
                    f"got {FLAGS.video_format!r}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
