"""Export a run: `python -m dfjax.export --workdir=DIR`.

  python -m dfjax.export --workdir=DIR [--resolution=N] [--threshold=T] [--step=S] [--novideo]
      [--format=glb,obj,ply] [--texture_size=S] [--faces=F] [--video_format=mp4|gif]

re-exports from any checkpoint of a run (default: the latest): the meshes by marching cubes
(mesh.ply with vertex colours, mesh.glb / mesh.obj textured) and the turntable video (see
`dfjax.export.outputs`): `dfjax.api.export` with the flags as its options. Every mistake
in the command line stops with one line on stderr and exit status 2.

Data flow: the top: the entry point over dfjax.api.
"""
from absl import flags

from dfjax import api
from dfjax import cli
from dfjax.errors import UserError


FLAGS = flags.FLAGS
# dfjax.api.export's options, as the command line spells them.
FLAG_NAMES = {"resolution": "--resolution", "threshold": "--threshold", "formats": "--format",
              "texture_size": "--texture_size", "faces": "--faces",
              "video_format": "--video_format"}


def define_flags():
  """The CLI's flags (defined only when this module is the entry point)."""
  flags.DEFINE_string("workdir", None, "Run directory to export from.")
  flags.DEFINE_integer("resolution", None, "Marching-cubes grid size (default: the run's).")
  flags.DEFINE_float("threshold", None, "Density level of the surface; 0 chooses it from the "
                     "renders (default: the run's export.threshold).")
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
    options = dict(resolution=FLAGS.resolution, threshold=FLAGS.threshold,
                   formats=FLAGS.format, texture_size=FLAGS.texture_size, faces=FLAGS.faces,
                   video_format=FLAGS.video_format)
    api.check_export_options(**options, names=FLAG_NAMES)  # the messages name the flags
    api.export(FLAGS.workdir, step=FLAGS.step, video=FLAGS.video, **options)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
