"""A DreamFusion run as one function: train (or resume), then export the mesh and video.

`train_and_evaluate` is what `python -m dfjax.main` runs, and what scripts and tests call to
train in-process: `train.loop.train` until `config.train.steps`, then, on the first process
and when `config.export.at_end` is set, `export.outputs.export_run` of the final parameters.
A run stopped early (SIGTERM, preemption) is not exported; the same call resumes it.

Data flow: the top of the library: train.loop and export.outputs -> here -> dfjax.main, the
ablation study (eval.ablations).
"""
import jax

from dfjax.export import outputs
from dfjax.train import loop
from dfjax.train import step as step_lib


def train_and_evaluate(config, workdir: str, *,
                       allow_config_change: bool = False) -> step_lib.TrainState:
  """Train from scratch or resume the run in `workdir`, then export mesh and video.

  Args:
    config: a locked or unlocked ConfigDict, as `configs/*.py` make them.
    workdir: the run directory (created if missing; refused if it holds another run unless
      `allow_config_change`).
    allow_config_change: continue a run whose saved config differs.

  Returns:
    The final TrainState (replicated over the devices).

  Raises:
    UserError: a mistake the user can fix (see `dfjax.cli`).
  """
  trained = loop.train(config, workdir, allow_config_change=allow_config_change)
  if trained.finished and config.export.at_end and jax.process_index() == 0:
    outputs.export_run(trained.scene, jax.device_get(trained.state.params), workdir,
                       step=trained.step, strict=False)
  return trained.state
