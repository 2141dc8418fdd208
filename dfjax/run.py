"""A DreamFusion run as one function: train (or resume), then export the mesh and video.

`train_and_evaluate` is the one training path: `dfjax.api.train` (hence `python -m
dfjax.main` and notebooks) and the ablation study call it. It runs `train.loop.train` until
`config.train.steps`, then, on the first process and when `config.export.at_end` is set,
`export.outputs.export_run` of the final parameters. A run stopped early (SIGTERM,
preemption) is not exported; the same call resumes it.

Data flow: the top of the library: train.loop and export.outputs -> here -> dfjax.api, the
ablation study (eval.ablations).
"""
import dataclasses

import jax

from dfjax.export import outputs
from dfjax.train import loop


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What `train_and_evaluate` returns.

  Attributes:
    trained: the trainer's result (scene, final state, step, whether it finished).
    exported: the paths the end-of-run export wrote, meshes first, the video last; empty when
      nothing was exported.
  """
  trained: loop.Trained
  exported: tuple[str, ...]


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False,
                       progress: bool = True) -> Outcome:
  """Train from scratch or resume the run in `workdir`, then export mesh and video.

  Args:
    config: a locked or unlocked ConfigDict, as `configs/*.py` make them.
    workdir: the run directory (created if missing; refused if it holds another run unless
      `allow_config_change`).
    allow_config_change: continue a run whose saved config differs.
    progress: show the trainer's progress (`train.logs.Progress`).

  Returns:
    The Outcome: the trainer's result and the files exported.

  Raises:
    UserError: a mistake the user can fix (see `dfjax.cli`).
  """
  trained = loop.train(config, workdir, allow_config_change=allow_config_change,
                       progress=progress)
  exported = ()
  if trained.finished and config.export.at_end and jax.process_index() == 0:
    exported = tuple(outputs.export_run(trained.scene, jax.device_get(trained.state.params),
                                        workdir, step=trained.step, strict=False))
  return Outcome(trained=trained, exported=exported)
