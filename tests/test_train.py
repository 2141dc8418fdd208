"""The trainer: the sharded step, skipping non-finite updates, and the step's parts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bank as bank_config
from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib
from dfjax.scene import cameras
from dfjax.scene import shading as shading_lib
from dfjax.train import loop as train_loop
from dfjax.train import model as model_lib
from dfjax.train import step as step_lib

RESOLUTION = 8


def tiny_config():
  config = bank_config.get_config()
  config.prompt = "a thing"
  config.field.num_blocks = 1
  config.field.hidden_units = 16
  config.field.max_deg = 4
  config.render.num_samples = 8
  # Empty-space skipping, so the sharded step is also checked with the grid in its state
  # (the uniform sampler is every other test's); refreshed after every step.
  config.render.sampler = "occupancy"
  config.render.num_candidates, config.render.grid_resolution = 16, 6
  config.render.grid_every, config.render.grid_decay = 1, 0.5
  config.shading.albedo_warmup_steps = 0  # exercise lit and textureless views from step 0
  config.train.steps = 10
  return config


def tiny_bank(num=24, seed=0):
  rng = np.random.default_rng(seed)
  azimuth = rng.uniform(0, 360, num)
  elevation = rng.uniform(-10, 70, num)
  c2w = np.stack([np.asarray(cameras.camera_from_angles(
      azimuth_deg=a, elevation_deg=e, distance=1.4, fov_deg=50.0, width=RESOLUTION,
      height=RESOLUTION).c2w) for a, e in zip(azimuth, elevation)])
  return bank_lib.Bank(images=rng.integers(0, 256, (num, RESOLUTION, RESOLUTION, 3), np.uint8),
                       prompts=np.array(["a thing"] * (num // 2) + ["other"] * (num - num // 2)),
                       c2w=c2w.astype(np.float32), fov_deg=np.full(num, 50.0, np.float32))


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  prior = bank_lib.ClosedFormPrior.from_bank(tiny_bank(), prompt=config.prompt)
  camera_kwargs = dict(width=RESOLUTION, height=RESOLUTION, elevation_range_deg=(-10.0, 70.0),
                       distance_range=(1.3, 1.5), focal_multiplier_range=(0.9, 1.1))
  scene = model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)
  optimizer = step_lib.create_optimizer(config)
  state = step_lib.create_train_state(scene, optimizer, jax.random.PRNGKey(0))
  return config, prior, scene, optimizer, state


def _assert_trees_close(a, b, *, rtol, atol=0.0, scaled_atol=0.0):
  """allclose per leaf; `scaled_atol` is relative to the leaf's largest magnitude."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    limit = atol + scaled_atol * (np.max(np.abs(y)) if y.size else 0.0)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=limit)


@pytest.fixture(scope="module")
def gradients(setup):
  """The tiny scene's `device_gradients` (one view per device), compiled once for the tests
  that call it."""
  scene = setup[2]
  return jax.jit(functools.partial(step_lib.device_gradients, scene=scene))


@pytest.fixture(scope="module")
def update(setup):
  """The tiny scene's `apply_update`, compiled once."""
  _, _, scene, optimizer, _ = setup
  return jax.jit(functools.partial(step_lib.apply_update, scene=scene, optimizer=optimizer))


def test_sharded_step_equals_single_device_over_the_same_views(setup, gradients, update):
  """4 devices, one view each, vs one device averaging the same 4 views' gradients.

  Tolerance: the two programs sum the per-view gradients in a different order (pmean vs
  a sum on the host), so parameters agree to float32 rounding after Adam's normalisation,
  ~1e-6.
  """
  _, prior, scene, optimizer, state = setup
  assert jax.device_count() == 4
  mesh = step_lib.make_mesh()
  step = step_lib.make_train_step(scene, optimizer, mesh)
  per_device = [gradients(state, prior.params, index) for index in range(4)]
  mean = jax.tree.map(lambda *xs: sum(xs) / 4, *per_device)
  expected_state, expected_metrics = update(state, *mean)
  # The step donates its state: hand it a copy so the fixture's arrays survive.
  sharded_state, metrics = step(step_lib.replicate(jax.tree.map(jnp.copy, state), mesh),
                                step_lib.replicate(prior.params, mesh))
  _assert_trees_close(sharded_state.params, expected_state.params, rtol=1e-5, atol=1e-6)
  # Adam's moments: small entries are sums with cancellation, so compare against the scale
  # of each leaf.
  _assert_trees_close(sharded_state.opt_state, expected_state.opt_state, rtol=1e-4,
                      scaled_atol=1e-5)
  for name in ("loss", "loss_sds", "grad_norm", "t"):
    np.testing.assert_allclose(metrics[name], expected_metrics[name], rtol=1e-5)
  _assert_occupancy_refreshed(scene, state, sharded_state)
  # The step moved the parameters, and the four devices saw different views.
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)),
                                       sharded_state.params, state.params))
  assert max(float(m) for m in moved) > 0
  assert len({float(metrics["t"]) for _, metrics in per_device}) == 4
  first, second = (jax.tree.leaves(grads) for grads, _ in per_device[:2])
  assert not all(np.allclose(a, b) for a, b in zip(first, second))


def _assert_occupancy_refreshed(scene, state, stepped):
  """The grid starts as the fresh field's density at one random point per cell, and after a
  step (grid_every = 1) is max(decay g, τ) of the updated field, the same on every device."""
  from dfjax.scene import occupancy  # pylint: disable=g-import-not-at-top
  r = scene.config.render
  def density_at_cells(params, step):
    points = occupancy.cell_points(model_lib._grid_key(scene, step),  # pylint: disable=protected-access
                                   resolution=r.grid_resolution, bound=r.bound_radius)
    return model_lib.field_density(scene, params, points, step)
  initial = density_at_cells(state.params, 0)
  np.testing.assert_allclose(state.occupancy, initial, rtol=1e-6)
  fresh = density_at_cells(jax.device_get(stepped.params), 1)
  assert not np.allclose(fresh, initial)  # the update moved the density
  np.testing.assert_allclose(stepped.occupancy, np.maximum(r.grid_decay * initial, fresh),
                             rtol=1e-5)
  shards = [np.asarray(s.data) for s in stepped.occupancy.addressable_shards]
  assert len(shards) == 4 and all(np.array_equal(x, shards[0]) for x in shards)


def test_views_are_a_function_of_seed_step_and_device(setup):
  config, _, scene, _, state = setup
  render = jax.jit(lambda key, step: model_lib.render_view(scene, state.params, key, step)[1])
  a = render(step_lib.view_key(config.seed, 3, 1, 0), 3)
  b = render(step_lib.view_key(config.seed, 3, 1, 0), 3)
  c = render(step_lib.view_key(config.seed, 3, 2, 0), 3)
  d = render(step_lib.view_key(config.seed, 4, 1, 0), 3)
  np.testing.assert_array_equal(a.camera.c2w, b.camera.c2w)
  assert not np.allclose(a.camera.c2w, c.camera.c2w)
  assert not np.allclose(a.camera.c2w, d.camera.c2w)


def test_nonfinite_gradient_is_skipped_counted_and_training_continues(setup, gradients, update):
  _, prior, _, _, state = setup
  step = lambda state, prior_params: update(state, *gradients(state, prior_params, 0))
  poisoned = prior.params.replace(images=prior.params.images.at[0, 0].set(jnp.nan))
  # The NaN reaches the gradient through the field: a NaN bank pixel makes ε̂ NaN; SDS zeroes
  # non-finite ε̂ entries, so poison the parameters instead, as a diverged field would.
  bad_state = state.replace(params=jax.tree.map(lambda x: x, state.params))
  bad_state.params["field"]["params"]["output"]["bias"] = (
      state.params["field"]["params"]["output"]["bias"].at[1].set(jnp.nan))
  after_bad, metrics = step(bad_state, prior.params)
  assert float(metrics["skipped"]) == 1.0
  assert int(after_bad.nonfinite_steps) == 1 and int(after_bad.consecutive_nonfinite) == 1
  assert int(after_bad.step) == 1
  _assert_trees_close(after_bad.opt_state, bad_state.opt_state, rtol=0, atol=0)
  # A NaN from the prior is zeroed inside SDS and counted there; the update goes ahead.
  after_poisoned_prior, metrics = step(state, poisoned)
  assert float(metrics["skipped"]) == 0.0 and int(after_poisoned_prior.nonfinite_steps) == 0
  # Training continues: the next good step applies and resets the consecutive count.
  good = after_bad.replace(params=state.params)
  after_good, metrics = step(good, prior.params)
  assert float(metrics["skipped"]) == 0.0
  assert int(after_good.nonfinite_steps) == 1 and int(after_good.consecutive_nonfinite) == 0
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after_good.params))


def test_schedules_follow_the_paper():
  from configs import dreamfusion
  config = dreamfusion.get_config()
  np.testing.assert_allclose(model_lib.cov_scale_at(0, config), 5e-2)
  np.testing.assert_allclose(model_lib.cov_scale_at(2500, config), 0.5 * (5e-2 + 2e-3), rtol=1e-6)
  np.testing.assert_allclose(model_lib.cov_scale_at(15000, config), 2e-3, rtol=1e-6)
  np.testing.assert_allclose(model_lib.orientation_weight_at(0, config), 1e-4)
  np.testing.assert_allclose(model_lib.orientation_weight_at(5000, config), 1e-2)
  schedule = step_lib.learning_rate_schedule(config)
  np.testing.assert_allclose(schedule(0), 1e-9, atol=1e-10)  # float32 rounding of the ramp
  np.testing.assert_allclose(schedule(3000), config.optimizer.peak_learning_rate, rtol=1e-6)
  np.testing.assert_allclose(schedule(15000), 1e-6, rtol=1e-3)


class _Recorder:
  """Stands in for the metrics writer and the progress bar: keeps what they were given."""

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, metrics):
    self.calls.append((step, dict(metrics)))

  def update(self, step, metrics):
    self.calls.append((step, dict(metrics)))


@pytest.mark.parametrize("consecutive, total, stops", [(2, 2, False), (3, 3, True),
                                                       (0, 5, False)])
def test_a_run_stops_after_max_nonfinite_steps_in_a_row(setup, consecutive, total, stops):
  state = setup[-1].replace(consecutive_nonfinite=jnp.int32(consecutive))
  metrics = {"loss": jnp.float32(1.0), "loss_sds": jnp.float32(1.0), "t": jnp.float32(0.5),
             "nonfinite_steps": jnp.float32(total)}
  writer, progress = _Recorder(), _Recorder()
  log = functools.partial(train_loop._log_metrics, writer, progress, state, metrics, step=40,
                          clock=train_loop.StepClock(20), max_nonfinite_steps=3)
  if stops:
    with pytest.raises(UserError, match="3 steps in a row had non-finite gradients "
                       r"\(up to step 40\)") as error:
      log()
    assert "\n" not in str(error.value)
  else:
    log()
  # The metrics are written before the check, so the log shows the diverging step.
  (step, written), = writer.calls
  assert step == 40 and written["nonfinite_steps"] == total and written["devices"] == 4
  assert 0 < written["seconds_per_step"] < 60


def test_several_views_per_device_average_the_single_view_gradients(setup, gradients):
  # One view per device takes the path without a batch axis; more take the vmapped one. Both
  # must give the mean over views of `view_loss`'s gradient at the views' own keys.
  config, prior, scene, _, state = setup
  config = config.copy_and_resolve_references()
  config.train.views_per_device = 2
  two_views = model_lib.create_scene(config, prior, camera_kwargs=scene.camera_kwargs)
  grads, metrics = jax.jit(functools.partial(step_lib.device_gradients, scene=two_views))(
      state, prior.params, 1)
  grad_fn = jax.jit(jax.grad(functools.partial(step_lib.view_loss, scene=scene), has_aux=True))
  per_view = [grad_fn(state.params, prior.params, step_lib.view_key(config.seed, 0, 1, v),
                      state.step) for v in range(2)]
  mean = jax.tree.map(lambda a, b: 0.5 * (a + b), *per_view)
  _assert_trees_close(grads, mean[0], rtol=1e-4, scaled_atol=1e-5)
  np.testing.assert_allclose(metrics["loss"], mean[1]["loss"], rtol=1e-5)
  single, _ = gradients(state, prior.params, 1)
  _assert_trees_close(single, per_view[0][0], rtol=1e-4, scaled_atol=1e-5)



def _variant(setup, **changes):
  """The tiny scene with config fields changed ("section.key": value)."""
  config, prior, scene, _, _ = setup
  config = config.copy_and_resolve_references()
  for name, value in changes.items():
    section, key = name.split(".")
    config[section][key] = value
  return config, model_lib.create_scene(config, prior, camera_kwargs=scene.camera_kwargs)


def test_albedo_views_without_the_orientation_loss_render_without_normals(setup):
  """loss.orientation_in_albedo_views = False: an albedo-only view's gradient is the one of
  the paper's loss with the orientation weight 0 (its normals are not computed); a lit view's
  is the paper's; batched views give the mean of their single-view gradients."""
  _, prior, _, _, state = setup
  # A large orientation weight from step 0, so that its term shows in the gradients.
  mixed = {"shading.shaded_prob": 0.5, "shading.albedo_warmup_steps": 0,
           "loss.orientation_weight": 1.0, "loss.orientation_weight_start": 1.0,
           "loss.orientation_in_albedo_views": True}
  config, skipping = _variant(setup, **dict(mixed, **{"loss.orientation_in_albedo_views": False}))
  _, paper = _variant(setup, **mixed)
  _, unweighted = _variant(setup, **dict(mixed, **{"loss.orientation_weight": 0.0,
                                                   "loss.orientation_weight_start": 0.0}))
  reads = jax.jit(lambda key: shading_lib.reads_normals(model_lib.sample_view(
      skipping, step_lib.split_view_key(key)[0], 0)[1]))
  lit = lambda device, view: bool(reads(step_lib.view_key(config.seed, 0, device, view)))
  # A device whose first view is lit and second is not: the batched case below.
  device = next(d for d in range(32) if lit(d, 0) and not lit(d, 1))
  lit_key, albedo_key = (step_lib.view_key(config.seed, 0, device, v) for v in range(2))
  grad_fns = [jax.jit(jax.grad(functools.partial(step_lib.view_loss, scene=scene),
                               has_aux=True)) for scene in (skipping, paper, unweighted)]
  skipping, paper, unweighted = range(3)
  run = lambda which, key: grad_fns[which](state.params, prior.params, key, state.step)
  albedo, albedo_paper = run(skipping, albedo_key), run(paper, albedo_key)
  assert float(albedo[1]["loss_orientation"]) == 0.0
  assert float(albedo_paper[1]["loss_orientation"]) > 0.0
  _assert_trees_close(albedo[0], run(unweighted, albedo_key)[0], rtol=1e-5, scaled_atol=1e-6)
  lit_grads, lit_paper = run(skipping, lit_key), run(paper, lit_key)
  _assert_trees_close(lit_grads[0], lit_paper[0], rtol=1e-5, scaled_atol=1e-6)
  np.testing.assert_allclose(lit_grads[1]["loss_orientation"],
                             lit_paper[1]["loss_orientation"], rtol=1e-6)
  # Both views on one device: one is lit, so both render with normals, and the albedo view's
  # orientation term is dropped all the same.
  _, batched = _variant(setup, **dict(mixed, **{"loss.orientation_in_albedo_views": False,
                                                "train.views_per_device": 2}))
  mean, _ = jax.jit(functools.partial(step_lib.device_gradients, scene=batched))(
      state, prior.params, device)
  _assert_trees_close(mean, jax.tree.map(lambda a, b: 0.5 * (a + b), lit_grads[0], albedo[0]),
                      rtol=1e-4, scaled_atol=1e-5)


def test_render_view_chooses_normals_at_run_time(setup):
  _, _, scene, _, state = setup
  key = jax.random.PRNGKey(3)
  render = jax.jit(lambda normals: model_lib.render_view(
      scene, state.params, key, 0, normals=normals)[0].sample_normals)
  with_normals, without = render(jnp.bool_(True)), render(jnp.bool_(False))
  np.testing.assert_array_equal(without, 0.0)
  norms = np.linalg.norm(np.asarray(with_normals), axis=-1)
  assert np.mean(np.abs(norms - 1.0) < 1e-4) > 0.9  # unit normals where the density varies
  np.testing.assert_allclose(
      with_normals, model_lib.render_view(scene, state.params, key, 0)[0].sample_normals,
      rtol=1e-5, atol=1e-5)
