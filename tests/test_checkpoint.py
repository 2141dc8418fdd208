"""Tests of dfjax.train.checkpoint: orbax round trips, retention, interrupted saves, SIGTERM, and
the run-directory guard."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from dfjax.errors import UserError
from dfjax.train import checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))


def make_state(mesh, seed):
  """A TrainState after two real Adam updates, arrays placed as the trainer places them:
  replicated over the mesh, plus one array split along the mesh axis."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {"weights": jax.random.normal(keys[0], (8, 6)),
            "bias": jax.random.normal(keys[1], (6,)),
            "scale": jnp.array(1.5, jnp.bfloat16)}
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)
  for key in keys[2:]:
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape, p.dtype), params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  state = TrainState(step=jnp.array(seed, jnp.int32), params=params, opt_state=opt_state)
  replicated = NamedSharding(mesh, PartitionSpec())
  state = jax.device_put(state, replicated)
  split = NamedSharding(mesh, PartitionSpec("data"))
  return state.replace(params={**state.params,
                               "weights": jax.device_put(state.params["weights"], split)})


def assert_bitwise_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype and a.shape == e.shape
    assert np.asarray(a).tobytes() == np.asarray(e).tobytes()


def test_round_trip_keeps_values_types_and_shardings(tmp_path, mesh):
  state = make_state(mesh, seed=10)
  expected = jax.tree.map(np.asarray, state)        # host copy taken before the save
  target = checkpoint.abstract_like(make_state(mesh, seed=0))
  with checkpoint.Checkpointer(str(tmp_path), save_every=10, keep=2) as checkpointer:
    assert checkpointer.latest_step() is None
    assert checkpointer.save(10, state, metadata={"prompt": "a corgi"})
    # The trainer donates the state to the next step while the save is still being written.
    donate = jax.jit(lambda s: jax.tree.map(lambda x: x * 0, s), donate_argnums=0)
    jax.block_until_ready(donate(state))
    checkpointer.wait()
    restored = checkpointer.restore(target)
    assert checkpointer.restore_metadata() == {"step": 10, "prompt": "a corgi"}
  assert isinstance(restored, TrainState)
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  assert isinstance(restored.opt_state[1], optax.EmptyState)
  assert_bitwise_equal(restored, expected)
  for leaf, abstract in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding == abstract.sharding
  assert restored.params["weights"].sharding.spec == PartitionSpec("data")
  assert os.listdir(tmp_path / "checkpoints") == ["10"]


@struct.dataclass
class GrownState:
  """TrainState with a field added later, None unless a feature uses it (the occupancy grid)."""
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  grid: jax.Array = None


def test_a_field_added_with_a_none_default_keeps_old_checkpoints_readable(tmp_path, mesh):
  old = make_state(mesh, seed=3)
  with checkpoint.Checkpointer(str(tmp_path / "old"), save_every=1, keep=1,
                               async_save=False) as checkpointer:
    checkpointer.save(1, old)
    target = GrownState(step=old.step, params=old.params, opt_state=old.opt_state)
    restored = checkpointer.restore(checkpoint.abstract_like(target))
  assert isinstance(restored, GrownState) and restored.grid is None
  assert_bitwise_equal(restored, target)
  grown = GrownState(step=old.step, params=old.params, opt_state=old.opt_state,
                     grid=jnp.arange(8.0).reshape(2, 2, 2))
  with checkpoint.Checkpointer(str(tmp_path / "new"), save_every=1, keep=1,
                               async_save=False) as checkpointer:
    checkpointer.save(1, grown)
    restored = checkpointer.restore(checkpoint.abstract_like(grown))
    assert_bitwise_equal(restored, grown)
    with pytest.raises(UserError, match="does not fit the current model"):
      checkpointer.restore(checkpoint.abstract_like(target))  # the grid has nowhere to go


def test_save_schedule_and_keep_last(tmp_path, mesh):
  state = make_state(mesh, seed=1)
  with checkpoint.Checkpointer(str(tmp_path), save_every=2, keep=2) as checkpointer:
    started = [step for step in range(1, 8) if checkpointer.save(step, state)]
    assert started == [2, 4, 6]
    assert checkpointer.save(7, state, force=True)
    assert not checkpointer.save(7, state, force=True)   # already saved: no error, no-op
    checkpointer.wait()
    assert checkpointer.all_steps() == [6, 7]
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["6", "7"]


def test_half_written_save_is_ignored_and_removed(tmp_path, mesh):
  states = {step: make_state(mesh, seed=step) for step in (10, 20)}
  with checkpoint.Checkpointer(str(tmp_path), save_every=10, keep=3) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state)
  # orbax 0.12 writes a save to "<step>.orbax-checkpoint-tmp" (items inside named
  # "<item>.orbax-checkpoint-tmp") and renames it when complete. Fake a save of step 30 that
  # died half way: a copy of step 20 under the temporary names, with its data cut short.
  checkpoints_dir = tmp_path / "checkpoints"
  partial = checkpoints_dir / "30.orbax-checkpoint-tmp"
  shutil.copytree(checkpoints_dir / "20", partial)
  (partial / "state").rename(partial / "state.orbax-checkpoint-tmp")
  for root, _, files in os.walk(partial):
    for name in files:
      path = os.path.join(root, name)
      os.truncate(path, os.path.getsize(path) // 2)
  with checkpoint.Checkpointer(str(tmp_path), save_every=10, keep=3) as checkpointer:
    assert not partial.exists()                  # removed before the constructor returns
    assert checkpointer.latest_step() == 20
    assert checkpointer.all_steps() == [10, 20]
    restored = checkpointer.restore(checkpoint.abstract_like(states[20]))
    assert_bitwise_equal(restored, states[20])
    checkpointer.save(40, states[20])
  assert sorted(os.listdir(checkpoints_dir), key=int) == ["10", "20", "40"]


def test_a_leftover_that_cannot_be_removed_fails_the_first_save_not_the_open(
    tmp_path, mesh, monkeypatch):
  """Opening still works (leftovers are never read); the first save reports the error in one
  line."""
  import errno  # pylint: disable=g-import-not-at-top
  (tmp_path / "checkpoints" / "30.orbax-checkpoint-tmp" / "state").mkdir(parents=True)

  def not_empty(path, *args, **kwargs):
    raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(path))

  monkeypatch.setattr(shutil, "rmtree", not_empty)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=2) as checkpointer:
    assert checkpointer.all_steps() == [] and checkpointer.latest_step() is None
    with pytest.raises(UserError) as error:
      checkpointer.save(1, make_state(mesh, seed=1))
      checkpointer.wait()
  assert "\n" not in str(error.value)
  assert str(error.value).startswith(f"cannot write checkpoint 1 in {tmp_path}/checkpoints: ")


def test_restore_into_a_different_model_is_a_user_error(tmp_path, mesh):
  state = make_state(mesh, seed=3)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=1) as checkpointer:
    with pytest.raises(UserError, match="no checkpoint"):
      checkpointer.restore(state)
    checkpointer.save(3, state)
    checkpointer.wait()
    wider = {**state.params, "bias": jnp.zeros((7,)), "extra": jnp.zeros(2)}
    target = checkpoint.abstract_like(
        TrainState(step=state.step, params=wider, opt_state=optax.adam(1e-2).init(wider)))
    with pytest.raises(UserError, match="does not fit the current model") as error:
      checkpointer.restore(target)
  message = str(error.value)
  assert "\n" not in message
  assert "params.bias: saved (6,), model (7,)" in message
  assert "params.extra: saved absent, model (2,)" in message
  # Shallow names come first; the four listed are followed by a count of the rest (nu).
  assert message.index("params.extra") < message.index("opt_state.0.mu.bias")
  assert "and 2 more" in message


_SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from dfjax.train import checkpoint

    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    state = jax.device_put({"step": jnp.array(0, jnp.int32), "params": jnp.zeros((4, 3))},
                           NamedSharding(mesh, PartitionSpec()))
    train_step = jax.jit(lambda s: {"step": s["step"] + 1, "params": s["params"] + 1.0},
                         donate_argnums=0)
    checkpointer = checkpoint.Checkpointer(sys.argv[1], save_every=1000, keep=2)
    stop = checkpoint.install_sigterm_handler()
    print("ready", flush=True)
    for step in range(1, 100000):
      state = train_step(state)
      checkpointer.save(step, state)
      time.sleep(0.005)
      if stop.requested:
        checkpointer.save(step, state, force=True)
        checkpointer.close()
        print("saved", step, stop.signal_name, flush=True)
        sys.exit(0)
    sys.exit(3)
""")


def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
  script = tmp_path / "train.py"
  script.write_text(_SIGTERM_SCRIPT)
  env = dict(os.environ, PYTHONPATH=REPO_ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  workdir = tmp_path / "run"
  process = subprocess.Popen([sys.executable, str(script), str(workdir)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline().strip() == "ready"
    time.sleep(1.0)                              # let the loop take some steps
    os.kill(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, stderr[-2000:]
  word, step, signal_name = stdout.split()
  step = int(step)
  assert (word, signal_name) == ("saved", "SIGTERM") and step > 0
  with checkpoint.Checkpointer(str(workdir), save_every=1000, keep=2) as checkpointer:
    assert checkpointer.all_steps() == [step]
    restored = checkpointer.restore({"step": jnp.array(0, jnp.int32),
                                     "params": jnp.zeros((4, 3))})
  assert int(restored["step"]) == step
  np.testing.assert_array_equal(restored["params"], np.full((4, 3), float(step)))


def test_signal_handler_sets_flag_once_then_restores_previous_handler():
  previous = signal.getsignal(signal.SIGTERM)
  sigint_handler = signal.getsignal(signal.SIGINT)
  stop = checkpoint.install_sigterm_handler(include_sigint=False)
  try:
    assert not stop.requested
    assert signal.getsignal(signal.SIGTERM) is not previous
    assert signal.getsignal(signal.SIGINT) is sigint_handler
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    stop.uninstall()
    signal.signal(signal.SIGTERM, previous)


# --- prepare_workdir -------------------------------------------------------------------------

BASE_CONFIG = {"seed": 0,
               "train": {"steps": 15000, "learning_rate": 1e-3, "batch_size": 1},
               "model": {"width": 128, "num_blocks": 5},
               "prompt": "a DSLR photo of a corgi"}


def config_json(**overrides):
  config = json.loads(json.dumps(BASE_CONFIG))
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split("__")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return json.dumps(config)


def snapshot(directory):
  """Every file and directory under `directory`, with file bytes and modification times."""
  listing = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      listing[os.path.relpath(os.path.join(root, name), directory)] = "dir"
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as file:
        listing[os.path.relpath(path, directory)] = (file.read(), os.stat(path).st_mtime_ns)
  return listing


def test_prepare_workdir_creates_then_accepts_same_config(tmp_path):
  workdir = tmp_path / "a" / "run"
  checkpoint.prepare_workdir(str(workdir), config_json(), allow_config_change=False)
  assert json.loads((workdir / "config.json").read_text()) == BASE_CONFIG
  before = snapshot(workdir)
  reordered = json.dumps(dict(reversed(list(BASE_CONFIG.items()))), indent=4)
  checkpoint.prepare_workdir(str(workdir), reordered, allow_config_change=False)
  assert snapshot(workdir) == before


def test_prepare_workdir_rejects_changed_config_without_touching_files(tmp_path):
  workdir = tmp_path / "run"
  checkpoint.prepare_workdir(str(workdir), config_json(), allow_config_change=False)
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  (workdir / "checkpoints" / "100" / "data").write_bytes(b"\x00\x01")
  (workdir / "metrics.jsonl").write_text('{"step": 1}\n')
  before = snapshot(workdir)
  changed = config_json(model__width=64, prompt="a frog")
  with pytest.raises(UserError) as error:
    checkpoint.prepare_workdir(str(workdir), changed, allow_config_change=False)
  message = str(error.value)
  assert "\n" not in message
  assert "model.width: 128 -> 64" in message and 'prompt: "a DSLR' in message
  assert "--allow_config_change" in message and "--workdir" in message
  assert snapshot(workdir) == before
  checkpoint.prepare_workdir(str(workdir), changed, allow_config_change=True)
  assert json.loads((workdir / "config.json").read_text())["model"]["width"] == 64
  assert {path for path in snapshot(workdir)} == set(before)


def test_prepare_workdir_lists_first_differences_then_counts(tmp_path):
  checkpoint.prepare_workdir(str(tmp_path), config_json(), allow_config_change=False)
  changed = config_json(seed=1, model__width=1, model__num_blocks=1, prompt="x",
                        train__learning_rate=1.0, train__batch_size=4, train__new_field=2)
  with pytest.raises(UserError, match=r"and 3 more\)") as error:
    checkpoint.prepare_workdir(str(tmp_path), changed, allow_config_change=False)
  assert "train.new_field" not in str(error.value)   # sorted paths: listed ones come first
  assert "model.num_blocks: 5 -> 1" in str(error.value)


def test_prepare_workdir_allows_more_steps(tmp_path):
  checkpoint.prepare_workdir(str(tmp_path), config_json(), allow_config_change=False)
  checkpoint.prepare_workdir(str(tmp_path), config_json(train__steps=30000),
                             allow_config_change=False)
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 30000


def test_prepare_workdir_allows_export_changes_and_new_export_fields(tmp_path):
  # A run saved before an export field existed, resumed with a config that has it and asks
  # for a smaller mesh: export fields do not change what is optimised.
  saved = dict(BASE_CONFIG, export={"resolution": 128})
  checkpoint.prepare_workdir(str(tmp_path), json.dumps(saved), allow_config_change=False)
  resumed = dict(BASE_CONFIG, export={"resolution": 64, "formats": "glb,ply"})
  checkpoint.prepare_workdir(str(tmp_path), json.dumps(resumed), allow_config_change=False)
  assert json.loads((tmp_path / "config.json").read_text())["export"] == resumed["export"]
  assert checkpoint.config_differences(saved, dict(resumed, seed=3),
                                       ignore=checkpoint.RESUMABLE_KEYS) == ["seed: 0 -> 3"]
  # A key without the trailing "." is one field, not a prefix.
  assert checkpoint.config_differences({"exports": 1}, {"exports": 2},
                                       ignore=("export",)) == ["exports: 1 -> 2"]


def test_a_run_older_than_the_sampler_fields_resumes_with_the_uniform_sampler():
  saved = dict(BASE_CONFIG, render={"num_samples": 32})
  grid = {"num_candidates": 128, "grid_resolution": 32, "grid_every": 16, "grid_decay": 0.95,
          "grid_threshold": 0.2}
  uniform = dict(BASE_CONFIG, render={"num_samples": 32, "sampler": "uniform", **grid})
  assert checkpoint.config_differences(saved, uniform) == []
  skipping = dict(BASE_CONFIG, render={"num_samples": 32, "sampler": "occupancy", **grid})
  assert checkpoint.config_differences(saved, skipping) == [
      'render.sampler: <absent> -> "occupancy"']


def test_a_run_older_than_the_sampler_fields_loads_with_the_uniform_sampler(tmp_path,
                                                                           monkeypatch):
  """restore.load_run_config fills the sampler a run predates with the one it used, whatever
  the current default, and the fields read only by the other sampler with the defaults."""
  from configs import dreamfusion  # pylint: disable=g-import-not-at-top
  from dfjax.train import restore  # pylint: disable=g-import-not-at-top
  (tmp_path / "config.json").write_text(json.dumps(
      dict(BASE_CONFIG, render={"num_samples": 32}, export={"resolution": 64})))
  defaults = dreamfusion.render_config()
  defaults.sampler = "occupancy"  # were the default to change, old runs stay uniform
  monkeypatch.setattr(dreamfusion, "render_config", lambda: defaults)
  config = restore.load_run_config(str(tmp_path))
  assert config.render.sampler == "uniform" and config.render.num_samples == 32
  assert config.render.num_candidates == defaults.num_candidates
  assert config.export.resolution == 64
  assert config.export.video_format == dreamfusion.export_config().video_format


def test_prepare_workdir_rejects_files_and_foreign_directories(tmp_path):
  a_file = tmp_path / "not_a_dir"
  a_file.write_text("x")
  with pytest.raises(UserError, match="is an existing file"):
    checkpoint.prepare_workdir(str(a_file), config_json(), allow_config_change=True)
  foreign = tmp_path / "home"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  with pytest.raises(UserError, match="without config.json"):
    checkpoint.prepare_workdir(str(foreign), config_json(), allow_config_change=True)
  assert os.listdir(foreign) == ["notes.txt"]
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "config.json").write_text('{"seed": ')
  with pytest.raises(UserError, match="not valid JSON"):
    checkpoint.prepare_workdir(str(corrupt), config_json(), allow_config_change=False)
  checkpoint.prepare_workdir(str(corrupt), config_json(), allow_config_change=True)
  assert json.loads((corrupt / "config.json").read_text()) == BASE_CONFIG


# --- damaged checkpoints and storage that fails --------------------------------------------


def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_restored(
    tmp_path, mesh, capsys):
  states = {step: make_state(mesh, seed=step) for step in (10, 20)}
  with checkpoint.Checkpointer(str(tmp_path), save_every=10, keep=3) as checkpointer:
    for step, state in states.items():
      checkpointer.save(step, state)
  # Every file of the latest checkpoint overwritten with zeros (as a disk that filled, or a
  # copy cut short, may leave it): the directory is complete, the contents are not.
  for root, _, files in os.walk(tmp_path / "checkpoints" / "20"):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "wb") as f:
        f.write(b"\0" * max(os.path.getsize(path), 1))
  target = checkpoint.abstract_like(make_state(mesh, seed=0))
  with checkpoint.Checkpointer(str(tmp_path), save_every=10, keep=3) as checkpointer:
    restored, step = checkpointer.restore_latest(target)
    assert step == 10 and checkpointer.all_steps() == [10]
    assert_bitwise_equal(restored, states[10])
    checkpointer.save(20, states[20])         # the step can be saved again
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert len(warnings) == 1 and warnings[0].startswith("warning: checkpoint 20 in "), warnings
  assert "corrupt.20" in warnings[0]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20", "corrupt.20"]
  # No checkpoint that reads: the target comes back with no step.
  with checkpoint.Checkpointer(str(tmp_path / "fresh"), save_every=10, keep=3) as checkpointer:
    assert checkpointer.restore_latest(target) == (target, None)


def test_a_checkpoint_of_another_model_is_not_skipped(tmp_path, mesh):
  state = make_state(mesh, seed=3)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=2) as checkpointer:
    checkpointer.save(3, state)
  wider = {**state.params, "bias": jnp.zeros((7,))}
  target = checkpoint.abstract_like(
      TrainState(step=state.step, params=wider, opt_state=optax.adam(1e-2).init(wider)))
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=2) as checkpointer:
    with pytest.raises(UserError, match="does not fit the current model"):
      checkpointer.restore_latest(target)
    assert checkpointer.all_steps() == [3]


# orbax's background writer, stopped by the error, leaves a coroutine that warns at exit.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_full_disk_during_a_save_is_one_line_and_keeps_earlier_checkpoints(
    tmp_path, mesh, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  states = {step: make_state(mesh, seed=step) for step in (1, 2, 3)}
  checkpointer = checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=2)
  for step in (1, 2):
    checkpointer.save(step, states[step])
  checkpointer.wait()
  # Only the earlier steps' folders are compared: the failed save's temporary folder may still
  # be changing (tensorstore removes its lock files in the background).
  kept = ("1", "2")
  before = {step: snapshot(tmp_path / "checkpoints" / step) for step in kept}

  def no_space(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

  # Every file orbax writes through epath (the JSON item, the metadata) now fails.
  monkeypatch.setattr(type(epath.Path(str(tmp_path))), "write_text", no_space)
  monkeypatch.setattr(type(epath.Path(str(tmp_path))), "write_bytes", no_space)
  with pytest.raises(UserError) as error:
    checkpointer.save(3, states[3])
    checkpointer.wait()
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"cannot write checkpoint 3 in {tmp_path}/checkpoints: "
                            "No space left on device")
  assert "earlier checkpoints are kept (1, 2)" in message
  monkeypatch.undo()
  checkpointer.wait()                        # the error is reported once
  after = {step: snapshot(tmp_path / "checkpoints" / step) for step in kept}
  assert after == before and all(before.values())
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=2) as reopened:
    assert reopened.all_steps() == [1, 2]
    assert_bitwise_equal(reopened.restore(checkpoint.abstract_like(states[2])), states[2])


def test_an_unwritable_workdir_is_one_line(tmp_path, mesh):
  blocked = tmp_path / "blocked"
  blocked.write_text("a file where the run directory should be")
  with pytest.raises(UserError, match="is an existing file"):
    checkpoint.prepare_workdir(str(blocked), config_json(), allow_config_change=False)
  # A checkpoint directory that cannot be created (its parent is a file): one line too.
  with pytest.raises(UserError) as error:
    with checkpoint.Checkpointer(str(blocked / "run"), save_every=1, keep=1) as checkpointer:
      checkpointer.save(1, make_state(mesh, seed=1))
  assert "\n" not in str(error.value) and "Not a directory" in str(error.value)
