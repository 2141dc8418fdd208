"""Train DreamFusion: `python -m dfjax.main --config=configs/NAME.py --workdir=DIR`.

Config overrides: `--config.prompt="..." --config.train.steps=2000` (the config is locked,
so a misspelt field is refused). Running the same command again resumes from the latest
checkpoint in DIR; a different config in the same DIR is refused unless
`--allow_config_change` is given.

Every mistake in the command line (a flag, a config file, an override, a config value, a
missing bank or model, a workdir that holds another run) stops with one line on stderr,
`error: ...`, and exit status 2, before anything in the workdir changes.

The flags become a config (ml_collections' config flag, the command line's counterpart of
`dfjax.api.config`), and `dfjax.api.train` does the rest: the checks, then training and
export, exactly as a notebook's call does. On several processes the flags (or the
environment) also say how this process joins the run (`dfjax.train.distributed`).

Data flow: the top: the entry point over dfjax.api (checks, train, then export).
"""
from absl import flags
from ml_collections import config_flags

from dfjax import cli
from dfjax.train import distributed

FLAGS = flags.FLAGS


def define_flags():
  """The trainer's flags (defined only when this module is the entry point)."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/toy.py.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, mesh and video.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Continue a run in --workdir with a config that differs from the saved one.")
  # Several processes (see dfjax.train.distributed; TPU pods and SLURM/MPI need none of these).
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", None, "Processes in the run ($DFJAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "This process's index ($DFJAX_PROCESS_ID).")
  flags.DEFINE_integer("heartbeat_timeout", None,
                       "Seconds before a silent process counts as dead and the others stop "
                       f"(default {distributed.DEFAULT_HEARTBEAT_TIMEOUT_SECONDS}; "
                       "$DFJAX_HEARTBEAT_TIMEOUT).")


def main(argv):
  with cli.user_errors():
    cli.check_command_line(argv, usage="--config=... --workdir=...",
                           config_example="configs/toy.py", workdir_example="runs/toy")
    cluster = distributed.cluster_from(
        multihost=FLAGS.config.multihost, coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
    from dfjax import api  # pylint: disable=g-import-not-at-top
    api.train(FLAGS.config, FLAGS.workdir, allow_config_change=FLAGS.allow_config_change,
              cluster=cluster)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
