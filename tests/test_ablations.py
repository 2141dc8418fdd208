"""The ablation arms (configs/ablations.py) and the study's bookkeeping (run_ablations.py).

Each arm must be the full method with one group of fields changed; arms with equal configs
must share runs; the table's verdicts must follow the paired differences.
"""
import dataclasses
import functools
import importlib.util
import json
import os

import ml_collections
import pytest

from configs import ablations
from configs import ablations_sd
from configs import dreamfusion
from configs import toy as toy_config
from dfjax.eval import ablations as study_lib
from dfjax.train import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def script():
  """experiments/run_ablations.py, the study's command line."""
  spec = importlib.util.spec_from_file_location(
      "run_ablations", os.path.join(ROOT, "experiments", "run_ablations.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def study():
  """dfjax.eval.ablations, the study's logic."""
  return study_lib


def flatten(config: ml_collections.ConfigDict) -> dict:
  return {f"{section}.{key}": value for section, fields in config.to_dict().items()
          if isinstance(fields, dict) for key, value in fields.items()}


@pytest.mark.parametrize("arm", list(ablations.ARMS))
@pytest.mark.parametrize("bank", list(ablations.BANKS))
def test_each_arm_differs_from_the_full_method_only_in_its_own_fields(arm, bank):
  base = flatten(ablations.get_config(f"full,{bank}"))
  config = flatten(ablations.get_config(f"{arm},{bank}"))
  changed = {name for name in base if base[name] != config[name]}
  assert changed <= set(ablations.ARMS[arm])
  for name, value in ablations.ARMS[arm].items():
    assert config[name] == value
  # And the full method on a bank differs from configs/toy.py (configs/toy_sd.py for the
  # learned prior) only in the bank's fields and the paper's where toy.py departs from it.
  from configs import toy_sd  # pylint: disable=g-import-not-at-top
  toy = flatten((toy_sd if bank in ablations.LEARNED_PRIOR_BANKS else toy_config).get_config())
  assert {name for name in toy if toy[name] != base[name]} <= (
      set(ablations.BANKS[bank]) | set(ablations.PAPER_FIELDS))
  for name, value in ablations.PAPER_FIELDS.items():
    assert base[name] == value
  config_checks.check_config(ablations.get_config(f"{arm},{bank}"))


@pytest.mark.parametrize("arm", list(ablations.ARMS))
def test_each_stable_diffusion_arm_is_the_papers_method_with_its_own_fields_changed(arm):
  base = flatten(dreamfusion.get_config())
  config = ablations_sd.get_config(arm)
  config_checks.check_config(config)
  config = flatten(config)
  assert {name for name in base if base[name] != config[name]} <= set(ablations.ARMS[arm])
  for name, value in ablations.ARMS[arm].items():
    assert config[name] == value
  assert config["prior.kind"] == "stable_diffusion"


def test_stable_diffusion_arms_refuse_a_toy_bank_and_unknown_arms_in_one_line():
  for arg, message in (("full,uniform", "takes an arm only"), ("nope", "unknown ablation arm")):
    with pytest.raises(ValueError, match=message) as error:
      ablations_sd.get_config(arg)
    assert "\n" not in str(error.value)


def test_an_arm_without_a_bank_uses_its_studys_bank():
  assert ablations.parse_arm("no_view_dependence") == ("no_view_dependence", "front_biased")
  assert ablations.parse_arm("no_lighting") == ("no_lighting", "lambertian")
  assert ablations.parse_arm("guidance_30,lambertian") == ("guidance_30", "lambertian")
  assert ablations.parse_arm(None) == ("full", "uniform")


@pytest.mark.parametrize("arg, message", [("no_such_arm", "unknown ablation arm"),
                                          ("full,no_such_bank", "unknown toy bank")])
def test_unknown_arm_or_bank_is_a_one_line_error(arg, message):
  with pytest.raises(ValueError, match=message) as error:
    ablations.get_config(arg)
  assert "\n" not in str(error.value)


def test_arms_with_equal_configs_share_one_run(study):
  guidance = toy_config.get_config().prior.guidance_scale
  twin = f"guidance_{guidance:g}"
  assert twin in ablations.ARMS  # configs/toy.py guides at one of the sweep's scales
  assert study.same_as(twin, "uniform") == "full"
  assert study.same_as("guidance_100", "uniform") == "guidance_100"
  assert study.arm_label(twin, "uniform") == f"{twin} (= full)"
  guidance_study = next(s for s in study.STUDIES if s.reference == "guidance_100")
  regulariser_study = next(s for s in study.STUDIES if "no_regularisers" in s.arms)
  runs = study.plan([regulariser_study, guidance_study], [0, 1])
  assert len(runs) == len(set(runs))
  assert sorted({run.arm for run in runs}) == sorted(
      {"full", "no_regularisers", "guidance_100", "guidance_1", "guidance_30"})
  assert len(runs) == 5 * 2


@pytest.mark.parametrize("differences, expected, verdict", [
    ([0.2, 0.1, 0.3], "higher", "yes (3/3 pairs)"),
    ([0.2, -0.1, 0.3], "higher", "weakly (2/3 pairs, within the seed spread)"),
    ([0.2, -0.1, 0.3], "lower", "**no** (1/3 pairs)"),
    ([-1.0, float("nan")], "lower", "yes (1/1 pairs)"),
    ([float("nan")], "lower", "n/a (no finite values)"),
    ([0.0, 0.0], "higher", "**no** (equal on all 2 pairs)"),
])
def test_verdict_follows_the_paired_differences(study, differences, expected, verdict):
  assert study.verdict(differences, expected) == verdict


def test_table_rows_pair_each_arm_with_the_reference_on_the_same_object_and_seed(study):
  janus = next(s for s in study.STUDIES if "no_view_dependence" in s.arms)
  obj = janus.objects[0]
  results = {}
  for seed, (full, ablated) in enumerate(((0.0, 0.5), (0.1, 0.3))):
    results[study.make_run("full", janus.bank, obj, seed)] = {
        "scores": {"janus": full, "front_feature": 0.9, "iou": 0.8, "mask_iou": 0.9}}
    results[study.make_run("no_view_dependence", janus.bank, obj, seed)] = {
        "scores": {"janus": ablated, "front_feature": 0.7, "iou": 0.8 - ablated,
                   "mask_iou": 0.9}}
  truths = {obj: {"saturation": 0.5, "janus": 0.0, "front_feature": 1.0}}
  rows = study.study_rows(janus, results, [0, 1], truths)
  by_cell = {tuple(c.strip() for c in row.strip("|").split("|")[:2]): row for row in rows}
  label = {key: study.METRICS[key].label for key in ("janus", "iou", "front_feature")}
  assert "0.05 ± 0.071" in by_cell[("full", label["janus"])]
  assert "0.4 ± 0.14" in by_cell[("no_view_dependence", label["janus"])]
  assert "yes (2/2 pairs)" in by_cell[("no_view_dependence", label["janus"])]
  assert "yes (2/2 pairs)" in by_cell[("no_view_dependence", label["iou"])]
  assert "(diagnostic)" in by_cell[("no_view_dependence", label["front_feature"])]
  # The full method formed the object and its front feature: no warning, and a summary.
  assert study.formation_note(janus, results, [0, 1]) == []
  assert study.front_feature_note(janus, results, [0, 1]) == []
  summary = study.study_summary(janus, results, [0, 1])
  assert summary[0] == "Of the paper's 4 expectations here:"
  assert any(line.startswith("- reproduced on every object and seed: 2") for line in summary)
  # janus_shape and psnr have no scores here.
  assert any(line.startswith("- not measurable: 2") for line in summary)
  for run in results:
    results[run]["scores"]["front_feature"] = 0.1
  assert study.formation_note(janus, results, [0, 1]) == []
  assert "measures nothing" in study.front_feature_note(janus, results, [0, 1])[0]
  rows = study.study_rows(janus, results, [0, 1], truths)
  janus_row = next(row for row in rows if row.startswith("| no_view_dependence | "
                                                          + label["janus"]))
  assert "n/a (full never shows the front feature)" in janus_row
  for run in results:
    results[run]["scores"]["mask_iou"] = 0.3
  assert "does not reproduce" in study.formation_note(janus, results, [0, 1])[0]
  assert "Not run" in study.formation_note(janus, {}, [0, 1])[0]


def test_comparison_sets_each_verdict_beside_the_other_priors_table(study):
  lighting = [s for s in study.STUDIES if s.bank in ("lambertian", "lambertian_textureless")]
  obj, seeds = lighting[0].objects[0], [0, 1]

  def results_for(bank, iou):  # {arm: mesh IoU on both seeds}
    return {study.make_run(arm, bank, obj, seed): {"scores": {"iou": value + 0.01 * seed}}
            for arm, value in iou.items() for seed in seeds}

  # The other prior's table, as write_table writes it: no_lighting lowers mesh IoU on one
  # bank and raises it on the other.
  text = []
  for bank_study, iou in zip(lighting, ({"full": 0.5, "no_lighting": 0.3, "no_textureless": 0.6},
                                        {"full": 0.5, "no_lighting": 0.7, "no_textureless": 0.4})):
    text += [f"Bank: `{bank_study.bank}`.", "| arm | metric | value | known answer | "
             "paper expects | toy world reproduces? |", "|---|---|---|---|---|---|",
             *study.study_rows(bank_study, results_for(bank_study.bank, iou), seeds, {obj: {}})]
  verdicts = study.table_verdicts("\n".join(text))
  iou_label = study.METRICS["iou"].label
  assert verdicts[("no_lighting", iou_label)] == [("lambertian", "yes (2/2 pairs)"),
                                                  ("lambertian_textureless", "**no** (0/2 pairs)")]
  assert ("full", iou_label) not in verdicts  # the reference has no verdict

  learned = dataclasses.replace(lighting[0], bank="toy_sd", toy_world="")
  section = study.comparison_section(
      [learned], results_for("toy_sd", {"full": 0.5, "no_lighting": 0.2, "no_textureless": 0.3}),
      seeds, other_text="\n".join(text), other_name="exact", this_name="learned")
  row = next(line for line in section if line.startswith(f"| no_lighting | {iou_label} |"))
  assert row.endswith("| lower than full | yes (2/2 pairs) (`lambertian`); **no** (0/2 pairs) "
                      "(`lambertian_textureless`) | yes (2/2 pairs) |")
  # Only mesh IoU was scored (the other metrics' verdicts are n/a and not counted): learned
  # reproduces both of its verdicts, exact one per bank.
  assert section[2].endswith("learned: 2 of 2, exact: 2 of 4.")


def test_command_line_narrows_the_studies_and_refuses_unknown_names(script):
  args = script.parse_args(["--arms=no_lighting", "--banks=lambertian", "--objects=house"])
  (chosen,) = script.select_studies(args)
  assert (chosen.bank, chosen.arms, chosen.objects) == ("lambertian", ("full", "no_lighting"),
                                                         ("house",))
  quick = script.select_studies(script.parse_args(["--quick"]))
  assert all(len(s.arms) == 2 and s.arms[0] == s.reference for s in quick)
  for flag, what in (("--arms=no_such_arm", "arm"), ("--banks=no_such_bank", "bank"),
                     ("--objects=no_such_object", "object")):
    with pytest.raises(SystemExit, match=f"error: unknown {what} 'no_such_"):
      script.select_studies(script.parse_args([flag]))


def test_with_the_toy_sd_every_study_runs_on_it_and_the_lighting_studies_are_one(script):
  studies = script.select_studies(script.parse_args(["--prior=toy_sd"]))
  assert all(s.bank == "toy_sd" and not s.toy_world for s in studies)
  assert [s.arms for s in studies] == list(dict.fromkeys(s.arms for s in study_lib.STUDIES))
  assert len(studies) == len(study_lib.STUDIES) - 1  # the two lighting studies are one
  with pytest.raises(SystemExit, match="--banks chooses closed-form banks"):
    script.select_studies(script.parse_args(["--prior=toy_sd", "--banks=uniform"]))


@pytest.mark.parametrize("flag", ["--seeds=0", "--steps=-5"])
def test_a_count_below_one_is_a_one_line_error(script, flag, tmp_path):
  with pytest.raises(SystemExit, match=f"error: {flag.split('=')[0]} must be at least 1"):
    script.main([flag, f"--runs_dir={tmp_path}", f"--results_dir={tmp_path}"])
  assert not os.listdir(tmp_path)


def test_a_run_of_another_length_is_the_same_study_run_and_a_changed_field_is_not(study):
  run = study.make_run("full", "uniform", "yellow_duck", 0)
  short, long = (study.run_config(run, steps=n).to_dict() for n in (400, 800))
  cached = json.loads(study.run_config(run, steps=400).to_json(sort_keys=True))
  assert study.study_fields(cached) == study.study_fields(long)
  assert study.study_fields(short) == study.study_fields(long)
  changed = study.run_config(run, steps=400)
  changed.prior.guidance_scale = 30.0
  assert study.study_fields(cached) != study.study_fields(changed.to_dict())
  assert study.study_fields(None) is None


def tiny_run_config(original):
  """The study's run config, shrunk to seconds: a 16-pixel bank of 8 views, a tiny field."""

  def run_config(run, *, steps):
    config = original(run, steps=steps)
    config.toy.resolution, config.toy.views_per_object = 16, 8
    config.field.num_blocks, config.field.hidden_units = 1, 16
    # 8 samples per ray, and 16 candidate bins: the scores render at that finest spacing.
    config.render.num_samples, config.render.num_candidates = 8, 16
    return config

  return run_config


def test_the_study_script_trains_scores_and_writes_its_table_and_figures(script, study, tmp_path,
                                                                        monkeypatch):
  monkeypatch.setenv("DFJAX_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(study, "run_config", tiny_run_config(study.run_config))
  # The photos' shading averaged over 16 lights instead of 1024 (seconds, not a score).
  few_lights = functools.lru_cache(maxsize=None)(
      functools.partial(study.photo_shading.__wrapped__, num_lights=16))
  monkeypatch.setattr(study, "photo_shading", few_lights)
  runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
  argv = ["--arms=no_regularisers", "--banks=uniform", "--seeds=1", "--steps=3",
          f"--runs_dir={runs_dir}", f"--results_dir={results_dir}"]
  script.main(argv)

  # Two runs (the regularisers study's full method and its arm), each trained and scored.
  for arm in ("full", "no_regularisers"):
    with open(runs_dir / "yellow_duck" / "uniform" / arm / "seed0" / "scores.json") as f:
      result = json.load(f)
    assert result["steps"] == 3
    assert set(result["scores"]) >= {"iou", "normal_error", "floaters", "empty_density",
                                     "psnr", "mask_iou", "saturation", "janus_shape", "janus"}
    assert 0.0 <= result["scores"]["iou"] <= 1.0 and 0.0 <= result["scores"]["mask_iou"] <= 1.0
  table = (results_dir / "ablations.md").read_text()
  assert f"Made by: `python experiments/run_ablations.py {' '.join(argv)}`" in table
  assert "## Regularisers" in table and "## Guidance" not in table
  assert "albedo_warmup_steps" not in table  # no run of this study lights any view
  rows = [line for line in table.splitlines() if line.startswith("| no_regularisers |")]
  assert len(rows) == len(next(s for s in study.STUDIES if s.bank == "uniform").metrics)
  assert not any("n/a" in row.split("|")[3] for row in rows)  # every value was measured
  from PIL import Image  # pylint: disable=g-import-not-at-top
  figure = Image.open(results_dir / "ablations" / "regularisers_uniform_yellow_duck.png")
  assert figure.size[1] == 3 * 2 * study.EVAL_RESOLUTION  # the true object, then both arms

  # Run again: finished runs are reused, not trained again.
  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(study.run_lib, "train_and_evaluate", no_training)
  os.remove(results_dir / "ablations.md")
  script.main(argv)
  assert (results_dir / "ablations.md").exists()


def test_timing_note_warns_only_of_lit_runs_that_stopped_within_their_warm_up(study):
  def result(steps, shaded_prob):
    return {"train_seconds": 60.0, "steps": steps,
            "config": {"shading": {"shaded_prob": shaded_prob, "albedo_warmup_steps": 100}}}

  runs = [study.Run("full", bank, "yellow_duck", 0) for bank in ("uniform", "lambertian")]
  note = study.timing_note({runs[0]: result(30, 0.0), runs[1]: result(30, 0.75)}, runs)
  assert note.startswith("2 of 2 planned runs finished; training took 60 s per run")
  assert "albedo only for the first 100 steps" in note
  for lit_steps, shaded_prob in ((400, 0.75), (30, 0.0)):
    note = study.timing_note({runs[1]: result(lit_steps, shaded_prob)}, runs)
    assert "albedo only" not in note and "(missing ones count as n/a)" in note
