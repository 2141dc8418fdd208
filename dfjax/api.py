"""dfjax from Python (notebooks, scripts): load a config, train a run, export it.

  from dfjax import api
  config = api.config("toy", prompt="a yellow duck", train__steps=400)
  result = api.train(config, "runs/duck")      # resumes when runs/duck holds this run
  result.video, result.meshes, result.metrics  # turntable.mp4, mesh.glb/.ply, last metrics
  api.export("runs/duck", resolution=128)      # again, from the latest checkpoint

These are the functions the command lines run: `python -m dfjax.main` is `config` (through
ml_collections' flags) and `train`; `python -m dfjax.export` is `export`. Every mistake the
user can fix raises `dfjax.errors.UserError` with the one-line message the command lines
print after `error: `, before anything in the workdir changes.

JAX and the rest of the library are imported inside `train` and `export`, after the cheap
checks, so a mistake in a config is reported at once.

Data flow: the top of the library: train.config_checks, train.logs, train.restore,
export.outputs and dfjax.run -> here -> dfjax.main, dfjax.export's CLI, notebooks.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import os
from typing import Any, Mapping

import ml_collections

from dfjax.errors import UserError
from dfjax.train import config_checks
from dfjax.train import distributed

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NESTING = "__"  # config(..., train__steps=400) sets config.train.steps


def config_names() -> list[str]:
  """The configs `config` knows by name: configs/NAME.py."""
  return sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                if name.endswith(".py") and not name.startswith("_"))


def _config_module(name_or_path: str):
  """The module of configs/NAME.py (a name) or of a .py file (a path)."""
  if name_or_path.endswith(".py") or os.sep in name_or_path:
    path = os.path.expanduser(name_or_path)
    if not os.path.isfile(path):
      raise UserError(f"config {name_or_path!r}: no such config file; the configs are "
                      + ", ".join(config_names()))
    module_name = "dfjax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  if name_or_path not in config_names():
    close = difflib.get_close_matches(name_or_path, config_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"config {name_or_path!r}: no such config{hint}; the configs are "
                    + ", ".join(config_names()))
  return importlib.import_module(f"configs.{name_or_path}")


def _set_field(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config.a.b = value for the override `a__b=value`, refusing unknown fields."""
  node, names = config, key.split(NESTING)
  for depth, name in enumerate(names):
    fields = list(node.keys())
    if name not in fields:
      close = difflib.get_close_matches(name, fields, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise UserError(f"{key}: the config has no field {name!r}{hint}")
    if depth < len(names) - 1:
      node = node[name]
      if not isinstance(node, ml_collections.ConfigDict):
        raise UserError(f"{key}: config.{'.'.join(names[:depth + 1])} is a value, not a "
                        "section")
  if isinstance(node[names[-1]], ml_collections.ConfigDict):
    raise UserError(f"{key}: config.{'.'.join(names)} is a section; set its fields with "
                    f"{key}{NESTING}FIELD=VALUE, FIELD one of "
                    + ", ".join(node[names[-1]].keys()))
  try:
    node[names[-1]] = value
  except TypeError:
    old = node[names[-1]]
    raise UserError(f"{key}={value!r}: config.{'.'.join(names)} holds a "
                    f"{type(old).__name__} ({old!r}), not a {type(value).__name__}") from None


def config(name_or_path: str, **overrides) -> ml_collections.ConfigDict:
  """A config by name or path, with overrides, its values checked; locked like the CLI's.

  Args:
    name_or_path: "toy", "dreamfusion", "bank", ... (configs/NAME.py), or the path of a
      config file; ":ARG" passes ARG to its get_config ("ablations:no_lighting,uniform").
    **overrides: field values; `__` separates the levels: `train__steps=400`,
      `prompt="a yellow duck"`, `camera__elevation_range=(0.0, 60.0)`.

  Returns:
    The locked ConfigDict (assigning a misspelt field later raises too).

  Raises:
    UserError: an unknown config or field (with the closest name), a value of the wrong
      type, or a value `train.config_checks.check_config` refuses; one line each.
  """
  name, _, argument = name_or_path.partition(":")
  module = _config_module(name)
  try:
    loaded = module.get_config(argument) if argument else module.get_config()
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f"cannot load config {name_or_path!r}: {type(error).__name__}: "
                    f"{error}") from None
  loaded.lock()
  for key, value in overrides.items():
    _set_field(loaded, key, value)
  config_checks.check_config(loaded)
  return loaded


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What `train` returns.

  Attributes:
    workdir: the run directory.
    step: the last step trained.
    finished: True when `train.steps` was reached; False when SIGTERM or a preemption stopped
      the run (its checkpoint is saved: the same call resumes it).
    meshes: the mesh files the end-of-run export wrote (mesh.glb, mesh.ply, ...); empty when
      nothing was exported (`export.at_end=False`, an unfinished run, no surface found).
    video: the turntable's path, or None when it was not written.
    metrics: the last line of metrics.jsonl (`step`, the losses, `t`, ...); {} when the run
      logged nothing (or on processes other than 0 of a multi-host run).
  """
  workdir: str
  step: int
  finished: bool
  meshes: tuple[str, ...]
  video: str | None
  metrics: Mapping[str, Any]


def check_workdir(workdir: str) -> None:
  """A workdir must be named (a local path, a mounted one, or a gs:// bucket URL)."""
  if not workdir:
    raise UserError("the workdir is empty: name a run directory, e.g. runs/toy")


def train(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
          progress: bool = True, cluster: distributed.Cluster | None = None) -> TrainResult:
  """Train from scratch or resume the run in `workdir`, then export as the CLI does.

  The checks, in the CLI's order: the config's values and paths, then the workdir (a workdir
  holding another run is refused unless `allow_config_change`), all before anything slow.
  Then, on several processes, joining the distributed runtime (`cluster`, or what
  `config.multihost` and the environment describe: `dfjax.train.distributed.cluster_from`),
  and `dfjax.run.train_and_evaluate`: training until `config.train.steps` and, when it finished
  and `config.export.at_end`, the meshes and the turntable.

  Args:
    config: a ConfigDict, as `config` or `configs/*.py` make them.
    workdir: the run directory (created if missing).
    allow_config_change: continue a run whose saved config differs.
    progress: show progress (a widget bar in a notebook, a bar on a terminal, plain lines
      otherwise; see `dfjax.train.logs.Progress`); False shows none.
    cluster: how this process joins a multi-process run (the CLI passes its flags); None:
      from `config.multihost` and the environment, a single process when they say nothing.

  Returns:
    A TrainResult: the step reached, the files written and the last logged metrics.

  Raises:
    UserError: a mistake the user can fix, in one line.
  """
  config_checks.check_config(config)
  config_checks.check_paths(config)
  check_workdir(workdir)
  # pylint: disable=g-import-not-at-top
  from dfjax.train import checkpoint
  checkpoint.prepare_workdir(workdir, config.to_json(sort_keys=True),
                             allow_config_change=allow_config_change, primary=False)
  import jax
  if cluster is None:
    cluster = distributed.cluster_from(multihost=config.multihost)
  # Before the library's modules are imported: some make small arrays at import time, which
  # starts JAX's backend, and the distributed runtime must be joined before that.
  if cluster is not None and not jax.distributed.is_initialized():
    distributed.initialize(cluster)
  from dfjax import run
  from dfjax.export import outputs
  from dfjax.train import logs
  # pylint: enable=g-import-not-at-top
  outcome = run.train_and_evaluate(config, workdir, allow_config_change=allow_config_change,
                                   progress=progress)
  videos = [p for p in outcome.exported
            if os.path.basename(p).startswith(outputs.VIDEO_NAME + ".")]
  return TrainResult(workdir=workdir, step=outcome.trained.step,
                     finished=outcome.trained.finished,
                     meshes=tuple(p for p in outcome.exported if p not in videos),
                     video=videos[0] if videos else None,
                     metrics=logs.last_metrics(workdir))


def check_export_options(*, resolution: int | None = None, threshold: float | None = None,
                         formats: str | None = None, texture_size: int | None = None,
                         faces: int | None = None, video_format: str | None = None,
                         names: Mapping[str, str] | None = None) -> None:
  """One-line errors for `export`'s options (None: the run's own value).

  `names` spells an option as the user wrote it (the CLI passes its flags, e.g.
  {"formats": "--format"}); by default the keyword's name.
  """
  def name(option):
    return (names or {}).get(option, option)

  if resolution is not None and resolution < 8:
    raise UserError(f"{name('resolution')} must be at least 8, got {resolution}")
  if threshold is not None and not threshold >= 0:
    raise UserError(f"{name('threshold')} must be a density level > 0, or 0 to choose it from "
                    f"the renders; got {threshold}")
  if formats is not None:
    config_checks.export_formats(formats, name=name("formats"))
  if texture_size is not None:
    config_checks.check_texture_size(texture_size, name=name("texture_size"))
  if faces is not None:
    config_checks.check_face_budget(faces, name=name("faces"))
  if video_format is not None and video_format not in config_checks.VIDEO_FORMATS:
    raise UserError(f"{name('video_format')} must be one of "
                    f"{', '.join(config_checks.VIDEO_FORMATS)}, got {video_format!r}")


def export(workdir: str, *, step: int | None = None, resolution: int | None = None,
           threshold: float | None = None, formats: str | None = None,
           texture_size: int | None = None, faces: int | None = None, video: bool = True,
           video_format: str | None = None) -> tuple[str, ...]:
  """Export a run's checkpoint (the latest unless `step`): meshes and turntable video.

  Each option left at None takes the run's `export` config value (see the README's
  "Outputs"): `resolution` (marching-cubes grid), `threshold` (density level; 0 chooses it
  from the renders), `formats` ("glb,ply", from ply, obj and glb), `texture_size`, `faces`
  (0: no simplification), `video_format` ("mp4" or "gif"); `video=False` skips the turntable.

  Returns:
    The paths written, meshes first, the video last.

  Raises:
    UserError: a bad option, a directory that is not a run, a step without a checkpoint.
  """
  check_export_options(resolution=resolution, threshold=threshold, formats=formats,
                       texture_size=texture_size, faces=faces, video_format=video_format)
  # pylint: disable=g-import-not-at-top
  from dfjax.export import outputs
  from dfjax.train import restore
  # pylint: enable=g-import-not-at-top
  run_config = restore.load_run_config(workdir)
  scene, params, step = restore.restore_params(run_config, workdir, step=step)
  return tuple(outputs.export_run(scene, params, workdir, step=step, resolution=resolution,
                                  threshold=threshold, formats=formats,
                                  texture_size=texture_size, faces=faces, video=video,
                                  video_format=video_format))
