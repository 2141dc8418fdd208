"""The ablation study of the paper (arXiv:2209.14988 §4, Fig. 6), reproduced on the toy world.

Every arm of configs/ablations.py is trained with the closed-form prior on toy objects with a
distinct front, over several seeds, and scored against the object's known shape and colours
(`dfjax.eval.ablation_metrics`, `dfjax.eval.metrics`). This module holds the study's logic:
the studies and their arms (`STUDIES`), one run's training and scoring (`train_and_score`,
cached in the run's workdir so a study can be resumed), the verdicts (does each arm differ
from the full method the way the paper expects, across seeds?), and the table and figures.
`experiments/run_ablations.py` is its command line.

Data flow: the top of the library beside dfjax.run: configs/ablations.py, dfjax.run (training),
train.model and train.restore, the toy world (truth), eval.metrics and eval.ablation_metrics
-> here -> experiments/run_ablations.py.
"""
import dataclasses
import functools
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import ablations as ablation_configs
from dfjax import run as run_lib
from dfjax.errors import UserError
from dfjax.eval import ablation_metrics
from dfjax.eval import metrics
from dfjax.export import mesh as mesh_lib
from dfjax.export import outputs as export_outputs
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import render as render_lib
from dfjax.scene import shading as shading_lib
from dfjax.toy import banks as toy_banks
from dfjax.toy import objects as toy_objects
from dfjax.toy import truth as toy_truth
from dfjax.train import model as model_lib
from dfjax.train import restore


# Evaluation cameras: inside the banks' camera ranges (dfjax.toy), at 12 azimuths.
EVAL_AZIMUTHS = (0, 20, 45, 90, 135, 160, 180, 200, 225, 270, 315, 340)


EVAL_ELEVATION, EVAL_DISTANCE, EVAL_FOV, EVAL_RESOLUTION = 15.0, 1.45, 52.0, 64


# Back views and the true front views they mirror (azimuth a <-> 180 - a).
BACK_AZIMUTHS, FRONT_AZIMUTHS = (160, 180, 200), (20, 0, 340)


# Side views, whose outlines are compared with the true front's (azimuth 0) and side's.
SIDE_AZIMUTHS = (90, 270)


FIGURE_AZIMUTHS = (0, 90, 180, 270)


GRID_RESOLUTION, GRID_BOUND = 48, 0.6  # occupancy grid; toy objects lie inside radius 0.52


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str
  label: str
  truth: str  # the known answer (the true object's value)


METRICS = {m.key: m for m in (
    Metric("iou", "mesh IoU vs true shape", "1"),
    Metric("janus_shape", "side outline: IoU with true front − with true side", "(true "
           "object's)"),
    Metric("janus", "front feature colour seen from behind (relative)", "0"),
    Metric("front_feature", "front feature seen from the front (vs true)", "1"),
    Metric("normal_error", "normal error (deg)", "0"),
    Metric("baked_shading", "shading baked into albedo (corr.)", "0"),
    Metric("albedo_ratio", "albedo brightness vs true", "1"),
    Metric("floaters", "floater fraction", "0"),
    Metric("empty_density", "mean density in empty space", "0"),
    Metric("psnr", "albedo PSNR at held-out views (dB)", "inf"),
    Metric("mask_iou", "silhouette IoU at held-out views", "1"),
    Metric("saturation", "colour saturation", "(true object's)"),
)}


@dataclasses.dataclass(frozen=True)
class Study:
  name: str
  bank: str
  arms: tuple  # the first is the reference
  metrics: tuple
  expectation: dict  # arm -> the paper's qualitative expectation
  expected: dict  # (arm, metric) -> "higher"/"lower" than the reference arm
  reference: str = "full"
  objects: tuple = ("yellow_duck",)  # toy objects it runs on (--objects overrides)
  toy_world: str = ""  # what the closed-form prior implies for this study


STUDIES = (
    Study("Janus (view-dependent prompts, §3.2)", "front_biased",
          ("full", "no_view_dependence"), ("janus_shape", "iou", "psnr", "janus",
                                           "front_feature"),
          {"no_view_dependence": "several faces: the front seen from other sides too"},
          {("no_view_dependence", "janus_shape"): "higher", ("no_view_dependence", "iou"): "lower",
           ("no_view_dependence", "psnr"): "lower", ("no_view_dependence", "janus"): "higher"},
          toy_world="Without the view in the prompt, every render is compared with the bank's "
          "photos of the object from all sides, most of them from the front, so the object takes "
          "the front's outline from the side too. The duck's beak covers about two pixels of a "
          "32-pixel render; whether a run learns it decides if the colour score can speak."),
    *(Study(f"Lighting and textureless shading{title} (§3.1)", bank,
            ("full", "no_lighting", "no_textureless"),
            ("iou", "normal_error", "baked_shading", "albedo_ratio"),
            {"no_lighting": "flat geometry, shading painted into the colour",
             "no_textureless": "worse geometry (colour explains the image instead of shape)"},
            {**{(arm, "iou"): "lower" for arm in ("no_lighting", "no_textureless")},
             **{(arm, "normal_error"): "higher" for arm in ("no_lighting", "no_textureless")},
             **{(arm, "baked_shading"): "higher" for arm in ("no_lighting", "no_textureless")},
             ("no_lighting", "albedo_ratio"): "lower"},
            toy_world="The exact prior's photos show the object from every side, so outlines "
            "alone already rule out the flat shape with painted shading that lighting prevents "
            "under a photo prior; lit and textureless renders add random lights that the field "
            "must also match. Every arm renders some views with the albedo only (the warm-up, "
            "then a quarter of the views), and those match the shaded photos only with shading "
            "painted into the albedo.")
      for title, bank in (("", "lambertian"),
                          (", untextured photos in the bank", "lambertian_textureless"))),
    Study("Regularisers (App. A.2)", "uniform", ("full", "no_regularisers"),
          ("floaters", "empty_density", "normal_error", "iou"),
          {"no_regularisers": "floaters and density in empty space; normals facing away"},
          {("no_regularisers", "floaters"): "higher",
           ("no_regularisers", "empty_density"): "higher",
           ("no_regularisers", "normal_error"): "higher", ("no_regularisers", "iou"): "lower"}),
    Study("Guidance scale (§3, Fig. 6 setup uses s = 100)", "uniform",
          ("guidance_100", "guidance_1", "guidance_7.5", "guidance_30"),
          ("psnr", "mask_iou", "saturation"),
          {a: "low guidance: blurry, mode-averaged, washed-out objects; saturation rises "
              "with s" for a in ("guidance_30", "guidance_7.5", "guidance_1")},
          {**{(a, m): "lower" for a in ("guidance_30", "guidance_7.5", "guidance_1")
              for m in ("psnr", "mask_iou", "saturation")}},
          reference="guidance_100",
          toy_world="The exact prior's conditional images already show the prompted object, "
          "so guidance only sharpens towards them: there is no weak text conditioning for high "
          "guidance to overcome."),
)


# Toy objects by name; the Janus score needs one with a front feature (house's door,
# yellow_duck's beak, snowman's nose).
OBJECT_BY_NAME = {make.__name__: make for make in toy_objects.OBJECTS}


def eval_camera(azimuth, *, resolution=EVAL_RESOLUTION):
  return cameras_lib.camera_from_angles(azimuth_deg=float(azimuth), elevation_deg=EVAL_ELEVATION,
                                        distance=EVAL_DISTANCE, fov_deg=EVAL_FOV,
                                        width=resolution, height=resolution)


def render_learned(field, params, camera, cov_scale, *, render_settings):
  """Albedo-only render of a learned field, deterministic (as model_lib.render_preview's)."""
  num_samples, num_importance, bound_radius, normals, chunk = render_settings
  return render_lib.render_image(
      camera, key=jax.random.PRNGKey(0), chunk=chunk,
      field_fn=functools.partial(field.apply, params["field"]),
      background_fn=toy_truth.WHITE_BACKGROUND, shading=shading_lib.Shading.albedo_only(),
      num_samples=num_samples, num_importance=num_importance, bound_radius=bound_radius,
      cov_scale=cov_scale, randomized=False, normals=normals)


def render_settings_of(config) -> tuple:
  """`evaluators`' render settings for a run's config: uniform samples at the run's finest
  spacing (`model_lib.grid_free_samples`), so the scores do not depend on an occupancy grid."""
  r = config.render
  return (model_lib.grid_free_samples(config), r.num_importance, r.bound_radius, r.normals,
          r.chunk)


@functools.lru_cache(maxsize=None)
def evaluators(field, render_settings):
  """Jitted renderer and density of a field architecture, shared by all runs that use it.

  Args:
    field: the scene's field module (hashable; equal for equal architectures).
    render_settings: (num_samples, num_importance, bound_radius, normals, chunk).

  Returns:
    (render(params, camera, cov_scale) -> RenderOutput, density(params, points, cov_scale)).
  """
  render = jax.jit(functools.partial(render_learned, field, render_settings=render_settings))

  @jax.jit
  def density(params, points, cov_scale):
    return field.apply(params["field"], points, jnp.full_like(points, cov_scale))[0]

  return render, density


@functools.lru_cache(maxsize=None)
def ground_truth(object_name):
  """True renders at the eval azimuths, and the true occupancy grid, of a toy object (cached:
  every run and mesh of the object is scored against the same; do not modify them)."""
  obj = OBJECT_BY_NAME[object_name]()
  views = [toy_truth.render_ground_truth(obj, eval_camera(a)) for a in EVAL_AZIMUTHS]
  stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *views)
  occupancy = ablation_metrics.ground_truth_occupancy(obj, resolution=GRID_RESOLUTION,
                                                      bound=GRID_BOUND)
  return obj, stacked, occupancy


@functools.lru_cache(maxsize=None)
def photo_shading(object_name, num_lights=1024):
  """The shading of a Lambertian toy bank's photos averaged over their lights, at the true
  surface point of each eval pixel ([len(EVAL_AZIMUTHS), H, W]; 0 off the object): what an
  albedo with the photos' shading painted in would follow (`baked_shading_correlation`)."""
  _, truth, _ = ground_truth(object_name)
  rays = [cameras_lib.generate_rays(eval_camera(a)) for a in EVAL_AZIMUTHS]
  points = np.stack([np.asarray(r.origins + d[..., None] * r.directions)
                     for r, d in zip(rays, truth.depth)])
  return truth.alpha * ablation_metrics.mean_diffuse_cosine(
      points, truth.normals, toy_banks.sample_bank_lights(num_lights))


def score_run(scene, params, step, object_name):
  """Every metric of a finished run against the true object (a dict of floats).

  The mesh metrics (iou, floaters, empty_density's occupancy) take the run's surface as its
  export does: the level `export.threshold`, or the one chosen from the renders when that is
  0 (`export.outputs.surface_threshold`).
  """
  obj, truth, true_occupancy = ground_truth(object_name)
  render, density_fn = evaluators(scene.field, render_settings_of(scene.config))
  cov_scale = jnp.float32(model_lib.cov_scale_at(step, scene.config))
  outs = [jax.device_get(render(params, eval_camera(a), cov_scale)) for a in EVAL_AZIMUTHS]
  rgb = np.stack([np.clip(o.rgb, 0, 1) for o in outs])
  alpha = np.stack([o.accumulated_alpha for o in outs])
  normals = np.stack([o.normals for o in outs])
  density = mesh_lib.density_grid(lambda points: density_fn(params, points, cov_scale),
                                  resolution=GRID_RESOLUTION, bound=GRID_BOUND)
  threshold, _ = export_outputs.surface_threshold(scene, params, step=step)
  occupancy = density > threshold
  both = (alpha > 0.5) & (truth.alpha > 0.5)
  scores = dict(
      iou=metrics.iou(occupancy, true_occupancy),
      normal_error=metrics.normal_error_deg(normals, truth.normals, both),
      baked_shading=ablation_metrics.baked_shading_correlation(
          rgb, truth.rgb, photo_shading(object_name), both),
      albedo_ratio=ablation_metrics.albedo_brightness_ratio(rgb, truth.rgb, both),
      floaters=metrics.floater_fraction(occupancy, true_occupancy),
      empty_density=metrics.empty_space_density(density, true_occupancy),
      psnr=metrics.psnr(rgb, truth.rgb), mask_iou=metrics.mask_iou(alpha, truth.alpha),
      saturation=ablation_metrics.object_saturation(rgb, alpha),
      janus_shape=janus_shape_score(alpha, truth))
  if obj.front_feature is not None:
    scores.update(front_feature_scores(obj, rgb, alpha, truth))
  figure = {a: rgb[EVAL_AZIMUTHS.index(a)] for a in FIGURE_AZIMUTHS}
  return {k: float(v) for k, v in scores.items()}, figure


@functools.lru_cache(maxsize=None)
def _sharp_mesh_renderer():
  """`rasterize.render_mesh` with σ = 0.01 px², jitted once: the mesh is an argument, not a
  constant, so meshes of the same size share one compile."""
  from dfjax.mesh_sds import rasterize  # pylint: disable=g-import-not-at-top
  return jax.jit(functools.partial(rasterize.render_mesh, sigma=0.01))


def score_mesh(mesh: mesh_lib.Mesh, object_name: str) -> dict:
  """`score_run`'s held-out silhouette IoU and PSNR for a triangle mesh (a refined one, say).

  The mesh is rasterised with its vertex colours at the eval cameras by the soft rasteriser
  with a sharp edge (σ = 0.01 px², `mesh_sds.rasterize.render_mesh`), on white, and compared
  with the true renders.

  Returns:
    {"mask_iou": ..., "psnr": ...}.
  """
  _, truth, _ = ground_truth(object_name)
  render = _sharp_mesh_renderer()
  vertices, faces = jnp.asarray(mesh.vertices, jnp.float32), jnp.asarray(mesh.faces)
  colors = jnp.asarray(mesh.vertex_colors, jnp.float32) / 255.0
  outs = [jax.device_get(render(vertices, faces, colors, eval_camera(a)))
          for a in EVAL_AZIMUTHS]
  rgb = np.stack([np.clip(o.rgb, 0, 1) for o in outs])
  alpha = np.stack([o.alpha for o in outs])
  return {"mask_iou": metrics.mask_iou(alpha, truth.alpha), "psnr": metrics.psnr(rgb, truth.rgb)}


def truth_scores(object_name):
  """The metrics of the true object itself (the known answers, e.g. its saturation)."""
  obj, truth, _ = ground_truth(object_name)
  scores = dict(saturation=ablation_metrics.object_saturation(truth.rgb, truth.alpha),
                janus_shape=janus_shape_score(truth.alpha, truth))
  if obj.front_feature is not None:
    scores.update(front_feature_scores(obj, truth.rgb, truth.alpha, truth))
  return scores


def janus_shape_score(alpha, truth):
  """`ablation_metrics.janus_silhouette_score` of the side views in `alpha`
  ([len(EVAL_AZIMUTHS), H, W]) against the true front (azimuth 0) and true sides."""
  side = [EVAL_AZIMUTHS.index(a) for a in SIDE_AZIMUTHS]
  front = [EVAL_AZIMUTHS.index(0)] * len(side)
  return ablation_metrics.janus_silhouette_score(alpha[side], truth.alpha[front],
                                                 truth.alpha[side])


def front_feature_scores(obj, rgb, alpha, truth):
  """The front feature seen from behind (Janus score) and from the front, both relative to
  the true object's front views (1: as much as the true front shows).

  Args:
    obj: the toy object (it has a front feature).
    rgb, alpha: [len(EVAL_AZIMUTHS), H, W, 3] and [..., H, W] albedo renders to score.
    truth: the true object's renders at the same azimuths.
  """
  back = [EVAL_AZIMUTHS.index(a) for a in BACK_AZIMUTHS]
  front = [EVAL_AZIMUTHS.index(a) for a in FRONT_AZIMUTHS]
  kwargs = dict(palette=obj.part_colors,
                feature_index=obj.part_colors.index(obj.front_feature.color))
  reference = (truth.rgb[front], truth.alpha[front])
  return dict(janus=ablation_metrics.janus_score(rgb[back], alpha[back], *reference, **kwargs),
              front_feature=ablation_metrics.relative_feature_fraction(
                  rgb[front], alpha[front], *reference, **kwargs))


@dataclasses.dataclass(frozen=True)
class Run:
  arm: str
  bank: str
  object_name: str
  seed: int

  @property
  def name(self):
    return f"{self.object_name}/{self.bank}/{self.arm}/seed{self.seed}"


class StudyInterrupted(Exception):
  """A signal stopped a run of the study; its checkpoint is saved and the study resumes."""


def run_config(run: Run, *, steps: int | None):
  config = ablation_configs.get_config(f"{run.arm},{run.bank}")
  config.prompt = OBJECT_BY_NAME[run.object_name]().caption
  config.seed = run.seed
  config.export.at_end = False
  config.train.image_every = 0
  if steps:
    config.train.steps = steps
    config.train.checkpoint_every = min(config.train.checkpoint_every, steps)
  return config


def train_and_score(run: Run, runs_dir: str, *, steps: int | None, rescore: bool = False) -> dict:
  """Train one run (or reuse/resume it) and score it; the scores are cached in its workdir.

  With `rescore`, a finished run is scored again from its last checkpoint (after a change
  to the metrics) without training.

  Raises:
    UserError: the run's workdir holds a run of another config, or a longer one.
    StudyInterrupted: a signal stopped the training (its checkpoint is saved).
  """
  workdir = os.path.join(runs_dir, run.name)
  config = run_config(run, steps=steps)
  cached = cached_scores(run, runs_dir)
  if cached and (study_fields(cached.get("config"))
                 != study_fields(json.loads(config.to_json(sort_keys=True)))):
    raise UserError(f"{workdir} was made with a different config (configs/toy.py changed?); "
                    "pass a new --runs_dir to run the study with the current one")
  if cached and cached["steps"] > config.train.steps:
    raise UserError(f"{workdir} has trained for {cached['steps']} steps, more than "
                    f"{config.train.steps}; pass a new --runs_dir for a shorter study")
  if cached and cached["steps"] == config.train.steps:
    if not rescore:
      return cached
    scene, params, _ = restore.restore_params(config, workdir, step=config.train.steps)
    return score_and_save(run, config, workdir, scene, params,
                          train_seconds=cached["train_seconds"])
  start = time.time()
  state = run_lib.train_and_evaluate(config, workdir).trained.state
  seconds = time.time() - start
  if int(jax.device_get(state.step)) < config.train.steps:
    # Stopped early (SIGTERM): the checkpoint is saved; leave the study, resumable.
    raise StudyInterrupted(f"stopped during {run.name}; run the same command to resume")
  params = jax.device_get(jax.tree.map(lambda x: x, state.params))
  scene = model_lib.create_scene(config, prior=None, camera_kwargs={})
  return score_and_save(run, config, workdir, scene, params, train_seconds=seconds)


def study_fields(config: dict | None) -> dict | None:
  """A run's config without its length (train.steps, train.checkpoint_every): a finished run
  of another length is extended (or scored again) rather than refused."""
  if config is None:
    return None
  config = json.loads(json.dumps(config))  # a deep copy with JSON's types (tuples -> lists)
  for key in ("steps", "checkpoint_every"):
    config["train"].pop(key, None)
  return config


def score_and_save(run: Run, config, workdir: str, scene, params, *, train_seconds: float):
  """Scores a finished run and writes scores.json and figure.npz into its workdir."""
  start = time.time()
  scores, figure = score_run(scene, params, config.train.steps, run.object_name)
  np.savez(os.path.join(workdir, "figure.npz"), **{str(a): v for a, v in figure.items()})
  result = dict(scores=scores, steps=config.train.steps, train_seconds=train_seconds,
                config=json.loads(config.to_json(sort_keys=True)),
                eval_seconds=time.time() - start)
  with open(os.path.join(workdir, "scores.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"{run.name}: {config.train.steps} steps in {train_seconds:.0f} s; "
        + ", ".join(f"{k} {v:.3g}" for k, v in scores.items()), flush=True)
  return result


@functools.lru_cache(maxsize=None)
def same_as(arm: str, bank: str) -> str:
  """The first arm of configs/ablations.py with the same config as `arm` on `bank`.

  Arms with equal configs share their runs: e.g. guidance_7.5 is the full method itself when
  configs/toy.py already guides at 7.5.
  """
  config = ablation_configs.get_config(f"{arm},{bank}").to_dict()
  return next(other for other in ablation_configs.ARMS
              if ablation_configs.get_config(f"{other},{bank}").to_dict() == config)


def make_run(arm, bank, object_name, seed) -> Run:
  return Run(same_as(arm, bank), bank, object_name, seed)


def arm_label(arm, bank):
  return arm if same_as(arm, bank) == arm else f"{arm} (= {same_as(arm, bank)})"


def plan(studies, seeds):
  """Every distinct run of the studies (a study's "full" on its bank is shared), study by
  study, so that an interrupted study has whole studies (all seeds) done first."""
  runs = []
  for study in studies:
    for arm in study.arms:
      for object_name in study.objects:
        for seed in seeds:
          run = make_run(arm, study.bank, object_name, seed)
          if run not in runs:
            runs.append(run)
  return runs


def cached_scores(run: Run, runs_dir: str):
  path = os.path.join(runs_dir, run.name, "scores.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def format_value(mean, spread, count):
  if count == 0:
    return "n/a"
  return f"{mean:.3g} ± {spread:.2g}" if count > 1 else f"{mean:.3g}"


def verdict(differences, expected):
  """Whether the paired differences (arm - full) go the way the paper expects."""
  differences = [d for d in differences if np.isfinite(d)]
  if not differences:
    return "n/a (no finite values)"
  sign = 1.0 if expected == "higher" else -1.0
  agree = sum(sign * d > 0 for d in differences)
  if agree == len(differences):
    return f"yes ({agree}/{len(differences)} pairs)"
  if sign * np.mean(differences) > 0:
    return f"weakly ({agree}/{len(differences)} pairs, within the seed spread)"
  if not any(differences):
    return f"**no** (equal on all {len(differences)} pairs)"
  return f"**no** ({agree}/{len(differences)} pairs)"


def score_of(results, run, key):
  """A run's score, NaN when the run has not finished (or the object lacks that metric)."""
  return results[run]["scores"].get(key, float("nan")) if run in results else float("nan")


def paired_scores(study, results, seeds, arm, key):
  """{(object, seed): score} of an arm and of the study's reference arm."""
  pairs = [(o, s) for o in study.objects for s in seeds]
  return ({p: score_of(results, make_run(arm, study.bank, *p), key) for p in pairs},
          {p: score_of(results, make_run(study.reference, study.bank, *p), key) for p in pairs})


def arm_verdict(study, results, seeds, arm, key):
  """Whether the arm's paired differences from the reference go the paper's way (`verdict`);
  None for the reference itself and for metrics without an expectation."""
  expected = study.expected.get((arm, key))
  if arm == study.reference or expected is None:
    return None
  if key == "janus" and not front_feature_learned(study, results, seeds):
    return f"n/a ({study.reference} never shows the front feature)"
  values, reference = paired_scores(study, results, seeds, arm, key)
  return verdict([values[p] - reference[p] for p in values], expected)


def study_rows(study, results, seeds, truths):
  """The study's table rows: per arm and metric, mean ± spread over its objects and seeds."""
  rows = []
  for arm in study.arms:
    for key in study.metrics:
      metric = METRICS[key]
      truth = metric.truth
      if all(key in truths[o] for o in study.objects):  # computed from the true object
        truth = format_value(*ablation_metrics.mean_and_spread(
            [truths[o][key] for o in study.objects]))
      expected = study.expected.get((arm, key))
      expectation = ("(reference)" if arm == study.reference else
                     "(diagnostic)" if expected is None else
                     f"{expected} than {study.reference}")
      values, _ = paired_scores(study, results, seeds, arm, key)
      rows.append(f"| {arm_label(arm, study.bank)} | {metric.label} | "
                  f"{format_value(*ablation_metrics.mean_and_spread(values.values()))} | "
                  f"{truth} | {expectation} | "
                  f"{arm_verdict(study, results, seeds, arm, key) or ''} |")
  return rows


def study_summary(study, results, seeds):
  """Plain lines: which of the paper's expectations the toy world reproduces."""
  groups = {"yes": [], "weakly": [], "**no**": [], "n/a": []}
  for arm in study.arms:
    for key in study.metrics:
      found = arm_verdict(study, results, seeds, arm, key)
      if found is not None:
        groups[found.split(" ")[0]].append(f"{arm} {METRICS[key].label}")
  total = sum(len(g) for g in groups.values())
  words = {"yes": "reproduced on every object and seed",
           "weakly": "reproduced on average only, not on every seed",
           "**no**": "**not reproduced**",
           "n/a": "not measurable"}
  return ([f"Of the paper's {total} expectations here:", ""]
          + [f"- {words[name]}: {len(items)} ({'; '.join(items)})"
             for name, items in groups.items() if items] + [""])


# Below this silhouette IoU (against the true object, at the held-out views) the full method
# has not formed the object yet, and differences between arms say nothing about the paper.
FORMED_MASK_IOU = 0.6


# Below this (the front feature seen from the front, relative to the true object) the full
# method has not learned the front feature, and the Janus score cannot show a second one.
LEARNED_FRONT_FEATURE = 0.3


def reference_mean(study, results, seeds, key):
  """Mean of a score of the study's reference arm over its objects and seeds, and the count."""
  mean, _, count = ablation_metrics.mean_and_spread(
      [score_of(results, make_run(study.reference, study.bank, o, s), key)
       for o in study.objects for s in seeds])
  return mean, count


def front_feature_learned(study, results, seeds) -> bool:
  """Whether the reference arm shows the front feature from the front (so that the colour
  Janus score can show a second one); True when not measured."""
  front, count = reference_mean(study, results, seeds, "front_feature")
  return not count or front >= LEARNED_FRONT_FEATURE


def formation_note(study, results, seeds):
  """A plain warning when the study's full method has not run or not formed the object."""
  mean, count = reference_mean(study, results, seeds, "mask_iou")
  if count == 0:
    return [f"**Not run** in this study (no finished run of {study.reference}).", ""]
  if mean < FORMED_MASK_IOU:
    return [f"**The toy world does not reproduce this ablation at this training length**: the "
            f"full method itself has not formed the object (silhouette IoU {mean:.2f} against "
            f"the true object, below {FORMED_MASK_IOU}), so the arms' differences are noise "
            "around an unformed blob, not evidence for or against the paper.", ""]
  return []


def front_feature_note(study, results, seeds):
  """A plain warning when the colour Janus score cannot measure anything."""
  if "janus" in study.metrics and not front_feature_learned(study, results, seeds):
    front, _ = reference_mean(study, results, seeds, "front_feature")
    return [f"**The colour Janus score measures nothing here**: the full method shows "
            f"{front:.2f} of the true front feature from the front (below "
            f"{LEARNED_FRONT_FEATURE}), so no arm can show it twice. The other rows do not "
            "depend on it.", ""]
  return []


def write_table(path, results, *, studies, seeds, steps, command, timings, extra=()):
  """The study's markdown: per study its rows, notes and summary; `extra` lines (e.g.
  `comparison_section`) go after the studies, before the figures' caption."""
  objects = sorted({o for study in studies for o in study.objects})
  truths = {o: truth_scores(o) for o in objects}
  if all(study.bank in ablation_configs.LEARNED_PRIOR_BANKS for study in studies):
    title, method = " with the toy Stable Diffusion", (
        "configs/toy_sd.py at the paper's guidance 100) with one group of fields changed "
        "(configs/ablations.py), trained with the shipped toy Stable Diffusion as the prior "
        "(lit and textureless views after the warm-up, as the paper)")
  else:
    title, method = "", ("configs/toy.py) with one group of fields changed "
                         "(configs/ablations.py), trained with the closed-form prior of a toy "
                         "bank")
  lines = [
      f"# Ablations on the toy world{title} (arXiv:2209.14988 §4, Fig. 6)", "",
      f"Each arm is the full method ({method} and scored "
      "against the true object (dfjax.eval.ablation_metrics, dfjax.eval.metrics). Values are "
      "mean ± "
      f"sample standard deviation over each study's objects × {len(seeds)} seed(s) ({seeds}); "
      "\"reproduced\" compares each arm with the full method on the same object and seed.", "",
      f"Made by: `{command}`", "",
      f"Training steps per run: {steps}. {timings}", ""]
  for study in studies:
    lines += [f"## {study.name}", "", f"Object(s): {', '.join(study.objects)}. "
              f"Bank: `{study.bank}`. Command of an arm: "
              f"`python -m dfjax.main --config=configs/ablations.py:ARM,{study.bank} "
              "--workdir=DIR`.", "",
              *[f"- `{arm}`: {text}." for arm, text in study.expectation.items()
                if arm in study.arms], "",
              "| arm | metric | value | known answer | paper expects | toy world reproduces? |",
              "|---|---|---|---|---|---|"]
    lines += study_rows(study, results, seeds, truths) + [""]
    lines += formation_note(study, results, seeds) or (
        front_feature_note(study, results, seeds) + study_summary(study, results, seeds))
    if study.toy_world:
      lines += [f"In the toy world, {study.toy_world[0].lower()}{study.toy_world[1:]}", ""]
  lines += list(extra)
  figures = os.path.splitext(os.path.basename(path))[0]
  lines += [f"Figures: {figures}/*.png beside this file (seed {seeds[0]}; rows: the true "
            "object, then each arm; columns: azimuth " + ", ".join(map(str, FIGURE_AZIMUTHS))
            + f" at {EVAL_ELEVATION:g}° elevation, albedo).", ""]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines))


def table_verdicts(text: str) -> dict:
  """The verdicts of a table that `write_table` wrote.

  Returns:
    {(arm, metric label): [(bank, verdict), ...]}, one entry per study in which the arm and
    metric have a verdict (the closed-form table has two lighting studies, one per bank).
  """
  found, bank = {}, None
  for line in text.splitlines():
    match = re.search(r"Bank: `([^`]+)`", line)
    if match:
      bank = match.group(1)
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 6 and line.startswith("| ") and cells[5] and cells[0] != "arm":
      arm = cells[0].split(" (= ")[0]  # arm_label's "guidance_7.5 (= full)"
      found.setdefault((arm, cells[1]), []).append((bank, cells[5]))
  return found


def comparison_section(studies, results, seeds, *, other_text: str, other_name: str,
                       this_name: str) -> list[str]:
  """Markdown lines: for every arm and metric with a paper expectation, this study's verdict
  (`arm_verdict` on `results`) beside the verdict the other prior's table (`other_text`, as
  `write_table` wrote it) gave the same arm and metric, and how many of the measurable ones
  (not "n/a") each reproduced on every object and seed."""
  other = table_verdicts(other_text)
  rows, verdicts = [], {this_name: [], other_name: []}
  for study in studies:
    for arm in study.arms:
      for key in study.metrics:
        mine = arm_verdict(study, results, seeds, arm, key)
        if mine is None:
          continue
        theirs = other.get((arm, METRICS[key].label), [])
        verdicts[this_name].append(mine)
        verdicts[other_name] += [v for _, v in theirs]
        theirs_text = "; ".join(f"{v} (`{b}`)" if len(theirs) > 1 else v for b, v in theirs)
        rows.append(f"| {arm} | {METRICS[key].label} | {study.expected[arm, key]} than "
                    f"{study.reference} | {theirs_text or 'not in that table'} | {mine} |")
  summary = [f"{name}: {sum(v.startswith('yes') for v in found)} of "
             f"{sum(not v.startswith('n/a') for v in found)}"
             for name, found in verdicts.items()]
  return ["## The paper's expectations under both priors, arm by arm", "",
          f"Each arm's verdict here ({this_name}) beside the verdict of the same arm and metric "
          f"in the {other_name} study (its committed table; where it ran a study on two banks, "
          "both are given). Reproduced on every object and seed, of the verdicts that could be "
          "measured: " + ", ".join(summary) + ".",
          "", f"| arm | metric | paper expects | {other_name} | {this_name} |",
          "|---|---|---|---|---|", *rows, ""]


def to_uint8(image, scale=2):
  image = (np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8)
  return image.repeat(scale, axis=0).repeat(scale, axis=1)


def write_figures(directory, runs_dir, *, studies, seed, results):
  """One PNG per study and object: the true object, then each arm, at FIGURE_AZIMUTHS."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  label_width, size = 150, 2 * EVAL_RESOLUTION
  for study in studies:
    slug = study.name.split()[0].lower()
    for object_name in study.objects:
      _, truth, _ = ground_truth(object_name)
      rows = [("true object", [truth.rgb[EVAL_AZIMUTHS.index(a)] for a in FIGURE_AZIMUTHS])]
      for arm in study.arms:
        run = make_run(arm, study.bank, object_name, seed)
        if run not in results:
          continue
        figure = np.load(os.path.join(runs_dir, run.name, "figure.npz"))
        rows.append((arm_label(arm, study.bank), [figure[str(a)] for a in FIGURE_AZIMUTHS]))
      if len(rows) == 1:
        continue  # no finished run of this study
      canvas = Image.new("RGB", (label_width + size * len(FIGURE_AZIMUTHS), size * len(rows)),
                         "white")
      draw = ImageDraw.Draw(canvas)
      for r, (label, images) in enumerate(rows):
        draw.text((6, r * size + size // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
          canvas.paste(Image.fromarray(to_uint8(image)), (label_width + c * size, r * size))
      canvas.save(os.path.join(directory, f"{slug}_{study.bank}_{object_name}.png"))


def timing_note(results, runs):
  """How many runs finished and how long they took, and a warning about short runs."""
  train_seconds = [r["train_seconds"] for r in results.values()]
  note = (f"{len(results)} of {len(runs)} planned runs finished"
          + ("" if len(results) == len(runs) else " (missing ones count as n/a)")
          + f"; training took {np.mean(train_seconds):.0f} s per run on average "
          f"({jax.devices()[0].platform}, {os.cpu_count()} cores), "
          f"{sum(train_seconds) / 60:.0f} min in all.")
  # Runs that would light some views, but stopped within their albedo-only warm-up.
  unlit = [r["config"]["shading"]["albedo_warmup_steps"] for r in results.values()
           if r["config"]["shading"]["shaded_prob"] > 0
           and r["steps"] <= r["config"]["shading"]["albedo_warmup_steps"]]
  if unlit:
    note += (f" The lighting studies render albedo only for the first {min(unlit)} steps "
             "(shading.albedo_warmup_steps): runs this short never see lighting or "
             "textureless shading, so no_lighting and no_textureless equal the full method.")
  return note


def run_study(runs, runs_dir: str, *, steps: int | None, rescore: bool = False,
              table_only: bool = False, log=print) -> dict:
  """Trains and scores `runs` in order (finished ones are reused), or with `table_only` only
  collects the finished ones. Returns {Run: result dict} of the runs that have scores."""
  start, results = time.time(), {}
  for index, run in enumerate(runs):
    if table_only:
      if cached_scores(run, runs_dir):
        results[run] = cached_scores(run, runs_dir)
      continue
    log(f"[{index + 1}/{len(runs)}] {run.name} ({time.time() - start:.0f} s so far)")
    results[run] = train_and_score(run, runs_dir, steps=steps, rescore=rescore)
  return results
