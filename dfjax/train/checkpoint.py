"""Checkpoints, preemption handling and the run-directory guard of the trainer.

DreamFusion optimises one scene for 15,000 steps (arXiv:2209.14988, §3 and Appendix A.2: about
1.5 hours on 4 TPUv4 chips), long enough that a run must survive preemption and be extended
later. This module keeps everything that makes a run resumable and is independent of the model:

* `prepare_workdir` refuses to continue a run directory with a different configuration.
* `Checkpointer` saves the train state (any pytree: step, params, optax state) with orbax,
  asynchronously, every `save_every` steps, keeping the last `keep` saves. Each save is written
  to `<step>.orbax-checkpoint-tmp` and renamed when complete, so a save killed half way is
  never mistaken for a checkpoint; such leftovers are deleted when the next run starts.
* `install_sigterm_handler` turns SIGTERM (and Ctrl-C) into a flag the train loop polls.
* `Checkpointer.restore_latest` skips a latest checkpoint that does not read back (files cut
  short or corrupted), with a warning, and restores the one before it.
* A save that cannot be written (a full disk, an unwritable directory) stops with a one-line
  `UserError`; the earlier checkpoints are left as they were.

Every file goes through `etils.epath`, so the workdir may be a bucket (`gs://...`) as well as a
local or mounted path.

How the train loop uses them::

  prepare_workdir(workdir, config.to_json(), allow_config_change=flag)
  checkpointer = Checkpointer(workdir, save_every=..., keep=...)
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(abstract_like(state))  # keeps shardings, optax types
  stop = install_sigterm_handler()
  for step in range(int(state.step), num_steps):
    state, metrics = train_step(state, ...)
    checkpointer.save(step + 1, state)  # a no-op unless (step + 1) % save_every == 0
    if stop.requested or checkpointer.reached_preemption(step + 1):
      checkpointer.save(step + 1, state, force=True)
      break
  checkpointer.close()                # waits for the last asynchronous save

Multi-host (several processes after `jax.distributed.initialize`): every process must save at
the same step, but SIGTERM reaches the hosts at different times, so a local flag cannot decide.
There `install_sigterm_handler` installs nothing (JAX's preemption service owns SIGTERM) and
`Checkpointer.reached_preemption(step)` returns True on every host at one agreed step. On a
single process it is always False and the signal flag does the work. `prepare_workdir` must
then be called with `primary=(jax.process_index() == 0)`; the workdir must be storage every
process sees (NFS, a bucket).

Data flow: orbax, train.distributed, independent of the model -> here -> train.loop,
train.restore, dfjax.main.
"""
import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import uuid
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from dfjax.errors import UserError, one_line
from dfjax.train import distributed

CONFIG_FILENAME = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
# Dotted config paths that may differ between a run and its continuation (a path ending in "."
# covers every field under it). A larger `train.steps` extends a finished run, and the export
# fields only change the files written at the end (a run saved before a new export field
# existed resumes too); everything else changes what is being optimised.
RESUMABLE_KEYS = ("train.steps", "export.")
# Fields added to dfjax after runs were made, with the value that reproduces what such a run
# did (None: any value, since the field is read only when another one is set). A run saved
# without the field resumes when the current config has that value.
ADDED_FIELDS = {"render.sampler": "uniform", "render.num_candidates": None,
                "render.grid_resolution": None, "render.grid_every": None,
                "render.grid_decay": None, "render.grid_threshold": None,
                "prior.attention": None, "loss.orientation_in_albedo_views": True}
# config.json is written as a temporary file of this prefix, then renamed.
_TMP_PREFIX = ".tmp-"
# How many differing fields the error message names before "and N more".
_MAX_LISTED_DIFFERENCES = 4


# ---------------------------------------------------------------------------------------------
# Run-directory guard.


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """Flattens nested JSON dicts to {"a.b.c": leaf}; lists and scalars are leaves."""
  if isinstance(tree, dict) and tree:
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: tree}


def config_differences(old: dict, new: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
  """Lists the fields in which two parsed JSON configs differ, as "path: old -> new".

  Args:
    old: the config a run directory was created with (nested dicts).
    new: the config of the current invocation.
    ignore: dotted paths whose differences do not count; one ending in "." covers the
      fields under it (see `RESUMABLE_KEYS`).

  Returns:
    One string per differing leaf, sorted by path; a field present on one side only is shown
    as `<absent>` on the other, except a field of `ADDED_FIELDS` that the old config predates
    and the new one sets to the old behaviour.
  """
  flat_old, flat_new = _flatten(old), _flatten(new)
  differences = []
  for path in sorted(set(flat_old) | set(flat_new)):
    if any(path == key or (key.endswith(".") and path.startswith(key)) for key in ignore):
      continue
    before, after = flat_old.get(path, "<absent>"), flat_new.get(path, "<absent>")
    if before == "<absent>" and path in ADDED_FIELDS and ADDED_FIELDS[path] in (None, after):
      continue
    if before != after:
      differences.append(f"{path}: {_short_repr(before)} -> {_short_repr(after)}")
  return differences


def _short_repr(value: Any, limit: int = 40) -> str:
  text = json.dumps(value) if value != "<absent>" else value
  return text if len(text) <= limit else text[:limit - 3] + "..."


def is_local(path: str | os.PathLike) -> bool:
  """Whether `path` is on the local filesystem (not a URL such as gs://bucket/run)."""
  return "://" not in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """An epath.Path: a local path made absolute, or a URL such as gs://bucket/run."""
  text = os.fspath(path)
  return epath.Path(os.path.abspath(text) if is_local(text) else text)


def _write_atomically(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename, so readers never see
  half a file (a rename is atomic within one POSIX filesystem; an object store writes whole
  objects anyway)."""
  tmp_path = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}.json"
  try:
    tmp_path.write_text(text)
    tmp_path.replace(path)
  except BaseException:
    if tmp_path.exists():
      tmp_path.unlink()
    raise


def _read_existing_config(config_path: epath.Path) -> dict | None:
  """The parsed config.json of an existing run, or None when it is not valid JSON."""
  try:
    return json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None


def prepare_workdir(workdir: str, config_json: str, *, allow_config_change: bool,
                    resumable_keys: tuple[str, ...] = RESUMABLE_KEYS,
                    primary: bool = True) -> None:
  """Creates a run directory, or checks that an existing one belongs to this config.

  A new (or empty) directory gets `config.json`. An existing run must have been started with
  the same config, except for `resumable_keys`; otherwise nothing in it is touched and a
  `UserError` names the differing fields. With `allow_config_change` the new config replaces
  the old one. `config.json` is rewritten only when its parsed content changes.

  Args:
    workdir: the run directory (created with its parents if missing).
    config_json: the run's config serialised as a JSON object (`ConfigDict.to_json()`).
    allow_config_change: continue a run even though its config differs.
    resumable_keys: dotted config paths allowed to change without `allow_config_change`.
    primary: whether this process writes; in a multi-host run only process 0 should.

  Raises:
    UserError: workdir is a file, is a non-empty directory without config.json, or holds a
      run with a different config and `allow_config_change` is False.
  """
  new_config = json.loads(config_json)
  if not isinstance(new_config, dict):
    raise ValueError(f"config_json must encode a JSON object, got {type(new_config).__name__}")
  workdir_path = as_path(workdir)
  if workdir_path.exists() and not workdir_path.is_dir():
    raise UserError(f"--workdir {workdir} is an existing file, not a directory; "
                    "choose a directory path")
  config_path = workdir_path / CONFIG_FILENAME
  if config_path.is_file():
    old_config = _read_existing_config(config_path)
    if old_config == new_config:
      return
    if old_config is None and not allow_config_change:
      raise UserError(f"{config_path} is not valid JSON; pass --allow_config_change to "
                      "overwrite it with the current config, or use a new --workdir")
    differences = config_differences(old_config or {}, new_config, ignore=resumable_keys)
    if differences and not allow_config_change:
      listed = ", ".join(differences[:_MAX_LISTED_DIFFERENCES])
      if len(differences) > _MAX_LISTED_DIFFERENCES:
        listed += f" and {len(differences) - _MAX_LISTED_DIFFERENCES} more"
      raise UserError(f"--workdir {workdir} holds a run with a different config ({listed}); "
                      "pass --allow_config_change to continue it with the new config, "
                      "or use a new --workdir")
  elif workdir_path.is_dir() and any(not child.name.startswith(_TMP_PREFIX)
                                     for child in workdir_path.iterdir()):
    # (Process 0 of a multi-process run may be writing config.json at this moment.)
    raise UserError(f"--workdir {workdir} is a non-empty directory without {CONFIG_FILENAME}, "
                    "so it is not a dfjax run; use a new or empty --workdir")
  if primary:
    workdir_path.mkdir(parents=True, exist_ok=True)
    _write_atomically(config_path, json.dumps(new_config, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Preemption.


@dataclasses.dataclass
class StopRequest:
  """Set by a signal handler; the train loop polls `requested` once per step.

  Attributes:
    requested: True once SIGTERM (or SIGINT) arrived.
    signal_name: the name of the first signal received ("SIGTERM"), or None.
  """
  requested: bool = False
  signal_name: str | None = None
  _previous_handlers: dict = dataclasses.field(default_factory=dict, repr=False)

  def uninstall(self) -> None:
    """Restores the handlers that were in place before `install_sigterm_handler`."""
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers.clear()


def install_sigterm_handler(*, include_sigint: bool = True) -> StopRequest:
  """Makes SIGTERM (and optionally SIGINT) request a clean stop instead of killing the run.

  The first signal sets `requested` and restores the previous handler for that signal, so a
  second one acts as usual (a second Ctrl-C raises KeyboardInterrupt at once). The train loop
  then saves a checkpoint at the current step, waits for it and exits with status 0.

  Installs nothing when JAX runs on several processes (JAX's preemption service handles
  SIGTERM there; see `Checkpointer.reached_preemption`) or when called off the main thread
  (Python only delivers signals to the main thread); the returned flag then stays False.

  Args:
    include_sigint: also catch SIGINT (Ctrl-C).

  Returns:
    The StopRequest the handlers set.
  """
  stop = StopRequest()
  if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
    return stop
  signals = (signal.SIGTERM, signal.SIGINT) if include_sigint else (signal.SIGTERM,)

  def handle(signum, frame):
    del frame
    if not stop.requested:
      stop.requested = True
      stop.signal_name = signal.Signals(signum).name
    signal.signal(signum, stop._previous_handlers.pop(signum, signal.SIG_DFL))

  for signum in signals:
    stop._previous_handlers[signum] = signal.signal(signum, handle)
  return stop


# ---------------------------------------------------------------------------------------------
# Checkpoints.


def abstract_like(tree: Any) -> Any:
  """The restore target for a pytree: each array becomes a jax.ShapeDtypeStruct with the same
  shape, dtype and sharding; other leaves are kept. Works on concrete arrays and on the output
  of `jax.eval_shape` alike."""
  def to_abstract(leaf):
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))
    return leaf
  return jax.tree.map(to_abstract, tree)


def _leaf_name(path: tuple) -> str:
  """A pytree path as orbax names saved leaves: keys, attribute names and indices joined by
  dots ("opt_state.0.mu.weights")."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(getattr(key, "key", key)))
  return ".".join(parts)


def _as_saved(tree: Any) -> Any:
  """What is written for a state: a dataclass becomes the dict of its fields, less those that
  are None (orbax stores a dataclass as that dict anyway), so a field added with a None
  default (TrainState.occupancy) leaves older checkpoints readable."""
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)
            if getattr(tree, f.name) is not None}
  return tree


def _from_saved(restored: Any, target: Any) -> Any:
  """Inverse of `_as_saved`: the target's own type, rebuilt from the restored fields."""
  if dataclasses.is_dataclass(target) and not isinstance(target, type):
    return dataclasses.replace(target, **restored)
  return restored


def _shape_mismatches(saved_tree: Any, target: Any) -> list[str]:
  """Leaves whose shapes differ between a checkpoint's metadata tree and a restore target, or
  that exist in one only, as "name: saved (6,), model (7,)"."""
  def shapes(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_leaf_name(path): tuple(leaf.shape) for path, leaf in leaves
            if hasattr(leaf, "shape")}
  saved, wanted = shapes(saved_tree), shapes(target)
  # Shallow names first: "params.bias" says more than "opt_state.0.mu.bias".
  names = sorted(set(saved) | set(wanted), key=lambda name: (name.count("."), name))
  return [f"{name}: saved {saved.get(name, 'absent')}, model {wanted.get(name, 'absent')}"
          for name in names if saved.get(name) != wanted.get(name)]


class CheckpointMismatch(UserError):
  """A checkpoint that reads back but does not fit the current model (the config changed)."""


def _os_error_in(error: BaseException) -> OSError | None:
  """The OSError that caused `error` (itself, a cause or context, or one in a group)."""
  seen = set()
  pending = [error]
  while pending:
    current = pending.pop()
    if current is None or id(current) in seen:
      continue
    seen.add(id(current))
    if isinstance(current, OSError):
      return current
    pending.extend([current.__cause__, current.__context__,
                    *getattr(current, "exceptions", ())])
  return None


class Checkpointer:
  """Saves and restores the train state under WORKDIR/checkpoints with orbax.

  Each step directory holds two items: `state` (the pytree, orbax's standard format with
  shardings recorded) and `meta` (a small JSON dict: the step plus whatever the caller adds).
  Saves are asynchronous: `save` returns after the arrays are copied off the devices, so the
  caller may donate or overwrite the state immediately; files are written in a background
  thread and the directory renamed from `<step>.orbax-checkpoint-tmp` to `<step>` at the end.
  """

  def __init__(self, workdir: str, *, save_every: int, keep: int = 3,
               async_save: bool = True):
    """Opens (and creates) WORKDIR/checkpoints; deletes leftovers of interrupted saves.

    Args:
      workdir: the run directory (see `prepare_workdir`).
      save_every: `save(step, ...)` writes when step is a multiple of this (> 0).
      keep: the number of most recent checkpoints kept on disk (> 0).
      async_save: write files in a background thread (False: `save` blocks until done).
    """
    if save_every <= 0 or keep <= 0:
      raise UserError(f"save_every ({save_every}) and keep ({keep}) must be positive")
    self.directory = as_path(workdir) / CHECKPOINT_SUBDIR
    self._saving_step = None     # the step of the save in flight, for error messages
    self._save_failed = False
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_every),
            policies.PreemptionCheckpointingPolicy()]),
        preservation_policy=policies.LatestN(keep),
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    with self._storage_errors(None):
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
      self._await_cleanup()

  def _await_cleanup(self) -> None:
    """Waits for orbax's removal of interrupted saves, which it starts in a thread.

    orbax 0.12 awaits that thread only before its first save; a process that only reads (an
    export, a resume check that fails) could exit while it still ran, and the interpreter's
    shutdown then made it print a traceback after the run's own one-line error. The method is
    private to orbax (checked on 0.12.8); should a later orbax rename it, the wait is skipped
    and tests/test_checkpoint.py's check that leftovers are gone once opened fails.

    A leftover that cannot be removed (another writer still in it, no permission) does not
    stop a run from opening its checkpoints: leftovers are never read, and orbax raises the
    same error again, at the first save, which reports it as one line.
    """
    wait = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if wait is None:
      return
    try:
      wait()
    except Exception:  # pylint: disable=broad-except  # raised again by the first save
      pass

  def latest_step(self) -> int | None:
    """The newest checkpoint's step (one this process is still writing included; never an
    interrupted save of an earlier run), or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete (or in-flight) checkpoints, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False,
           metadata: dict | None = None) -> bool:
    """Starts saving `state` as checkpoint `step` if the schedule (or `force`) says so.

    Args:
      step: the number of optimisation steps `state` has taken.
      state: the train state pytree.
      force: save even when step is not a multiple of save_every.
      metadata: extra JSON-serialisable facts stored next to the state.

    Returns:
      Whether a save was started. A step that is already saved is never saved twice (so a
      forced save right after a periodic one at the same step is a no-op).
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False
    meta = {"step": step, **(metadata or {})}
    with self._storage_errors(step):
      started = self._manager.save(
          step, force=force,
          args=ocp.args.Composite(state=ocp.args.StandardSave(_as_saved(state)),
                                  meta=ocp.args.JsonSave(meta)))
    if started:
      self._saving_step = step
    return started

  @contextlib.contextmanager
  def _storage_errors(self, step: int | None):
    """A save that fails on storage (full disk, no permission, read-only) as one UserError.

    Saves are asynchronous, so the error of one save may surface in the next `save` or in
    `wait`; `step` names the save it belongs to. A failed save never replaces or deletes an
    earlier checkpoint (orbax renames a save into place only once it is complete).
    """
    try:
      yield
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      os_error = _os_error_in(error)
      if os_error is None:
        raise
      self._save_failed = True
      reason = os_error.strerror or one_line(os_error)
      # From the directory: orbax's own list already dropped the steps this save would have
      # replaced, but their files are deleted only after a save succeeds.
      kept = sorted(int(p.name) for p in self.directory.iterdir()
                    if p.name.isdigit()) if self.directory.is_dir() else []
      raise UserError(
          f"cannot write {'checkpoints' if step is None else f'checkpoint {step}'} in "
          f"{self.directory}: {reason}; the earlier checkpoints are kept "
          f"({', '.join(map(str, kept)) or 'none'}). Free space or fix the "
          "permissions, then run the same command to resume") from error

  def restore(self, target: Any, *, step: int | None = None) -> Any:
    """Restores a saved state with the structure, dtypes and shardings of `target`.

    Args:
      target: the abstract state (`abstract_like(state)` or jax.eval_shape output with
        shardings); concrete arrays are accepted and converted. Its pytree types (optax
        states, dataclasses) are what the restored state is built from.
      step: which checkpoint; default the latest.

    Returns:
      The restored state, arrays placed with target's shardings.

    Raises:
      UserError: there is no checkpoint, or it does not fit `target` (the model changed).
    """
    step = self.latest_step() if step is None else int(step)
    if step is None or step not in self._manager.all_steps():
      raise UserError(f"no checkpoint {'' if step is None else step} in {self.directory}")
    target = abstract_like(target)
    saved_target = _as_saved(target)
    mismatches = _shape_mismatches(self._manager.item_metadata(step).state.tree, saved_target)
    if mismatches:
      listed = ", ".join(mismatches[:_MAX_LISTED_DIFFERENCES])
      if len(mismatches) > _MAX_LISTED_DIFFERENCES:
        listed += f" and {len(mismatches) - _MAX_LISTED_DIFFERENCES} more"
      raise CheckpointMismatch(f"checkpoint {step} in {self.directory} does not fit the current "
                               f"model ({listed}); use a new --workdir")
    restore_args = ocp.args.Composite(state=ocp.args.StandardRestore(saved_target))
    try:
      return _from_saved(self._manager.restore(step, args=restore_args).state, target)
    except ValueError as error:
      reason = str(error).strip().splitlines()[0][:200]
      raise UserError(f"checkpoint {step} in {self.directory} does not fit the current model "
                      f"({reason}); use a new --workdir") from error

  def restore_latest(self, target: Any) -> tuple[Any, int | None]:
    """Restores the newest checkpoint that reads back: (state, its step), or (target, None)
    when there is none.

    A checkpoint that fails to read (files cut short or corrupted, say by a disk that filled
    during the save) is renamed to `corrupt.<step>` beside the others, with a one-line warning
    on stderr, and the one before it is tried. Every process must call this (on several
    processes the files are shared, so all of them skip the same checkpoints).

    Raises:
      UserError: a checkpoint reads back but does not fit `target` (the model changed).
    """
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(target, step=step)
      except CheckpointMismatch:
        raise
      except Exception as error:  # pylint: disable=broad-except
        print(f"warning: checkpoint {step} in {self.directory} cannot be read "
              f"({type(error).__name__}: {one_line(error)[:200]}); it is kept as "
              f"corrupt.{step} and the previous checkpoint is restored",
              file=sys.stderr, flush=True)
        self._set_aside(step)
        continue
      distributed.assert_same_everywhere(step, "the checkpoint to resume from")
      return state, step
    return target, None

  def _set_aside(self, step: int) -> None:
    """Renames checkpoint `step` to corrupt.<step>, out of orbax's sight (process 0 renames,
    the others wait for it)."""
    if distributed.is_primary():
      destination = self.directory / f"corrupt.{step}"
      if destination.exists():
        destination.rmtree()
      (self.directory / str(step)).rename(destination)
    distributed.barrier(f"checkpoint {step} set aside")
    self._manager.reload()

  def restore_metadata(self, *, step: int | None = None) -> dict:
    """The JSON metadata saved with checkpoint `step` (default the latest)."""
    step = self.latest_step() if step is None else int(step)
    if step is None:
      raise UserError(f"no checkpoint in {self.directory}")
    restore_args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return self._manager.restore(step, args=restore_args).meta

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the same step once a multi-host job got a preemption notice.

    Only meaningful after `jax.distributed.initialize`; a single process returns False (use
    `install_sigterm_handler` there).
    """
    return jax.process_count() > 1 and self._manager.reached_preemption(int(step))

  def wait(self) -> None:
    """Blocks until the in-flight save (if any) is complete on disk.

    Raises:
      UserError: the save could not be written (once; later calls only wait).
    """
    if self._save_failed:
      with contextlib.suppress(Exception):
        self._manager.wait_until_finished()
      return
    with self._storage_errors(self._saving_step):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the in-flight save and releases orbax's threads."""
    self.wait()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
