"""Train a small Stable Diffusion pipeline:
`python -m dfjax.train_prior --config=configs/train_prior.py --workdir=DIR`.

Overrides as for the 3D trainer (`--config.bank=PATH.npz --config.steps=N`); running the same
command again resumes from the latest checkpoint in DIR. The pipeline is written to
DIR/pipeline. Every mistake (a flag, a config value, a missing bank, an image size the models
cannot take, a workdir of another run) is one line on stderr and exit status 2, and nothing in
DIR/pipeline is half-written.

Data flow: the top: the entry point over train_prior.loop.
"""
from absl import flags
from ml_collections import config_flags

from dfjax import cli

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/train_prior.py.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs and pipeline/.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Continue a run in --workdir with a config that differs from the saved one.")


def main(argv):
  with cli.user_errors():
    cli.check_command_line(argv, usage="--config=... --workdir=...",
                           config_example="configs/train_prior.py",
                           workdir_example="runs/toy_sd")
    from dfjax.train_prior import loop  # pylint: disable=g-import-not-at-top
    result = loop.train_prior(FLAGS.config, FLAGS.workdir,
                              allow_config_change=FLAGS.allow_config_change)
    if result.finished:
      print(f"pipeline written to {result.pipeline}; use it with "
            f"--config.prior.model={result.pipeline}", flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
