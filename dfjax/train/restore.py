"""A run read back from its workdir: its config and a checkpoint's parameters.

For everything that works on a finished (or interrupted) run without training it: the export
CLI, the R-Precision evaluation and the ablation study's rescoring.

Data flow: train.model, train.step and train.checkpoint -> here -> export, eval, the CLIs.
"""
from __future__ import annotations

import json

import jax
import ml_collections

from configs import dreamfusion
from dfjax.errors import UserError
from dfjax.train import checkpoint as checkpoint_lib
from dfjax.train import model as model_lib
from dfjax.train import step as step_lib


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in WORKDIR/config.json.

  Export, render, prior and loss fields added to dfjax after the run was made (the textured
  formats, the video format, the sampler, the U-Net's attention, the orientation loss's
  views) are filled in, so older runs
  still export and evaluate: with the value that reproduces what the run did where
  `checkpoint.ADDED_FIELDS` pins one (the sampler), else with the default of
  configs/dreamfusion.py.
  """
  path = checkpoint_lib.as_path(workdir) / checkpoint_lib.CONFIG_FILENAME
  if not path.is_file():
    raise UserError(f"{path} not found: --workdir must be a dfjax run directory")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  for section, defaults in (("export", dreamfusion.export_config()),
                            ("render", dreamfusion.render_config()),
                            ("prior", dreamfusion.prior_config()),
                            ("loss", dreamfusion.loss_config())):
    if section not in config:
      continue
    for key, value in defaults.items():
      if key not in config[section]:
        pinned = checkpoint_lib.ADDED_FIELDS.get(f"{section}.{key}")
        config[section][key] = value if pinned is None else pinned
  return config


def restore_params(config, workdir: str, *, step: int | None):
  """The scene and parameters of a run's checkpoint (the latest when `step` is None)."""
  scene = model_lib.create_scene(config, prior=None, camera_kwargs={})
  optimizer = step_lib.create_optimizer(config)
  abstract = step_lib.abstract_train_state(
      scene, optimizer, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=1, keep=10**6, async_save=False)
  steps = checkpointer.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {workdir}/checkpoints: train first")
  if step is not None and step not in steps:
    raise UserError(f"no checkpoint at step {step} in {workdir}; available: {steps}")
  step = steps[-1] if step is None else step
  state = checkpointer.restore(abstract, step=step)
  checkpointer.close()
  return scene, state.params, step
