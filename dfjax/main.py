"""Train DreamFusion: `python -m dfjax.main --config=configs/NAME.py --workdir=DIR`.

Config overrides: `--config.prompt="..." --config.train.steps=2000` (the config is locked,
so a misspelt field is refused). Running the same command again resumes from the latest
checkpoint in DIR; a different config in the same DIR is refused unless
`--allow_config_change` is given.
"""
from __future__ import annotations

import contextlib
import os
import sys

# Quiet the libraries' import-time chatter (TensorFlow-style C++ logs, Flax deprecations).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from dfjax.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, mesh and video.")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a run in --workdir with a config that differs from the saved one.")


@contextlib.contextmanager
def user_errors():
  """Turn a UserError into one line on stderr and exit status 2 (no traceback)."""
  try:
    yield
  except UserError as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)


def quiet_libraries():
  """Library INFO logs (orbax's per-save lines) would drown the progress lines."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  import warnings  # pylint: disable=g-import-not-at-top
  warnings.filterwarnings("ignore", category=FutureWarning)
  warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv):
  quiet_libraries()
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; flags look like --config=... --workdir=...",
          file=sys.stderr)
    sys.exit(2)
  with user_errors():
    if FLAGS.config is None:
      raise UserError("--config is required, e.g. --config=configs/toy.py")
    if not FLAGS.workdir:
      raise UserError("--workdir is required, e.g. --workdir=runs/toy")
    config = FLAGS.config
    from dfjax import config_checks  # pylint: disable=g-import-not-at-top
    config_checks.check_config(config)
    import jax  # pylint: disable=g-import-not-at-top
    if config.multihost or os.environ.get("DFJAX_MULTIHOST") == "1":
      jax.distributed.initialize()
    from dfjax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)


def run():
  """Entry point that also turns flag-parsing and config-file errors into one line."""
  try:
    app.run(main)
  except (flags.Error, config_flags.UnlockedConfigError if hasattr(
      config_flags, "UnlockedConfigError") else flags.Error) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
