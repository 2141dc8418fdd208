"""The Python API (dfjax.api): configs by name, path and override, a tiny run, resume, export.

The run is configs/bank.py made tiny (the command-line tests' random 8×8 bank, a 1×16 field,
8 samples per ray), trained in-process for a few steps on the test session's four CPU
devices; the resumed call and the export work on the same workdir, in that order.
"""
import json
import os

import pytest

from dfjax import api
from dfjax.errors import UserError
from test_cli import PROMPT, REPO_ROOT, write_tiny_bank

STEPS = 4


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
  message = str(error.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, f"{fragment!r} not in {message!r}"


def test_config_by_name_with_overrides_is_locked():
  config = api.config("toy", prompt="a house with a red door", train__steps=400,
                      camera__elevation_range=(0.0, 60.0))
  assert config.prompt == "a house with a red door"
  assert config.train.steps == 400 and config.camera.elevation_range == (0.0, 60.0)
  assert config.prior.kind == "toy" and config.field.hidden_units == 32  # the rest is toy.py's
  with pytest.raises(AttributeError):
    config.train.stepz = 3  # locked, as the command line's config


def test_config_argument_after_the_colon_goes_to_get_config():
  config = api.config("ablations:no_lighting,front_biased")
  assert config.shading.shaded_prob == 0.0 and config.toy.front_biased
  assert api.config("ablations:full").shading.shaded_prob == api.config("toy").shading.shaded_prob


def test_config_by_path(tmp_path):
  bank = str(tmp_path / "bank.npz")
  config = api.config(os.path.join(REPO_ROOT, "configs", "bank.py"), prior__bank=bank)
  assert config.prior.kind == "bank" and config.prior.bank == bank
  variant = tmp_path / "my_variant.py"
  variant.write_text("from configs import toy\n\ndef get_config(arg=None):\n"
                     "  config = toy.get_config()\n  config.seed = int(arg or 7)\n"
                     "  return config\n")
  assert api.config(str(variant)).seed == 7
  assert api.config(f"{variant}:3").seed == 3


@pytest.mark.parametrize("name, overrides, fragments", [
    ("toy", {"train__stepz": 3},
     ("train__stepz: the config has no field 'stepz'", "did you mean 'steps'?")),
    ("toy", {"trian__steps": 3}, ("trian__steps", "no field 'trian'", "'train'")),
    ("toy", {"train": 3}, ("train: config.train is a section", "train__FIELD=VALUE", "steps")),
    ("toy", {"prompt__text": "x"}, ("config.prompt is a value, not a section",)),
    ("toy", {"train__steps": "many"}, ("train__steps='many'", "holds a int (800)")),
    ("toy", {"train__steps": -3}, ("config.train.steps must be positive, got -3",)),
    ("toy", {"camera__elevation_range": (-100.0, 90.0)},
     ("config.camera.elevation_range", "[-90.0, 90.0]")),
    ("toyy", {}, ("config 'toyy': no such config (did you mean 'toy'?)", "bank, dreamfusion")),
    ("configs/nowhere.py", {}, ("no such config file", "toy")),
    ("ablations:no_such_arm", {}, ("cannot load config 'ablations:no_such_arm'",
                                   "unknown ablation arm 'no_such_arm'")),
])
def test_config_mistakes_are_one_line_user_errors(name, overrides, fragments):
  with pytest.raises(UserError) as error:
    api.config(name, **overrides)
  assert_one_line(error, *fragments)


def tiny_config(bank: str, **overrides):
  """configs/bank.py made tiny, through the API's overrides."""
  settings = dict(prior__bank=bank, prompt=PROMPT, field__num_blocks=1, field__hidden_units=16,
                  field__max_deg=4, render__num_samples=8, train__steps=STEPS,
                  train__checkpoint_every=2, train__log_every=1, train__image_every=STEPS,
                  export__resolution=16, export__threshold=5.0, export__video_frames=2,
                  export__video_resolution=8, export__texture_size=16, export__faces=100)
  settings.update(overrides)
  return api.config("bank", **settings)


def metrics_lines(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("api") / "bank.npz")
  write_tiny_bank(path)
  return path


@pytest.fixture(scope="module")
def first_run(bank, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("api_run") / "run")
  return api.train(tiny_config(bank), workdir, progress=False)


def test_train_returns_the_step_the_files_and_the_last_metrics(first_run):
  result = first_run
  assert result.finished and result.step == STEPS
  assert [os.path.basename(p) for p in result.meshes] == ["mesh.ply", "mesh.glb"]
  assert os.path.basename(result.video) == "turntable.mp4"
  assert all(os.path.getsize(p) > 0 for p in (*result.meshes, result.video))
  assert dict(result.metrics) == metrics_lines(result.workdir)[-1]
  assert result.metrics["step"] == STEPS and "loss_sds" in result.metrics
  # The preview grid of the last step (train.image_every): colour and textureless per view.
  events = b"".join(open(os.path.join(root, name), "rb").read() for root, _, names in
                    os.walk(os.path.join(result.workdir, "tensorboard")) for name in names)
  for name in ("albedo/front", "albedo/overhead", "textureless/back", "textureless/side"):
    assert name.encode() in events, name


def test_a_second_call_with_more_steps_resumes(first_run, bank, capsys):
  capsys.readouterr()
  result = api.train(tiny_config(bank, train__steps=STEPS + 2), first_run.workdir)
  captured = capsys.readouterr()
  assert f"resumed from step {STEPS} in {first_run.workdir}" in captured.out
  assert f"step {STEPS + 1}/{STEPS + 2} " in captured.err  # progress lines, from the resume
  assert f"step {STEPS}/" not in captured.err
  assert result.finished and result.step == STEPS + 2
  assert [line["step"] for line in metrics_lines(first_run.workdir)] == list(
      range(1, STEPS + 3))
  assert result.metrics == metrics_lines(first_run.workdir)[-1]


def test_train_refuses_another_run_and_a_changed_config_in_one_line(first_run, bank):
  with pytest.raises(UserError) as error:
    api.train(tiny_config(bank, seed=5), first_run.workdir)
  assert_one_line(error, "different config", "seed: 0 -> 5", "allow_config_change")
  config = tiny_config(bank)
  config.prior.bank = bank + ".missing"  # a config changed after `config`: checked again
  with pytest.raises(UserError) as error:
    api.train(config, first_run.workdir)
  assert_one_line(error, "config.prior.bank=", "no such file")


def test_export_returns_the_paths_it_wrote(first_run):
  written = api.export(first_run.workdir, step=2, formats="obj,ply", texture_size=16,
                       video=False)
  names = [os.path.basename(p) for p in written]
  assert names[0] == "mesh.ply"  # the vertex-coloured PLY first
  assert sorted(names) == ["mesh.mtl", "mesh.obj", "mesh.ply", "mesh_albedo.png"]
  assert all(os.path.isfile(p) for p in written)
  with pytest.raises(UserError) as error:
    api.export(first_run.workdir, formats="glb,stl")
  assert_one_line(error, "formats='glb,stl'", "'stl'", "ply, obj, glb")
  with pytest.raises(UserError) as error:
    api.export(first_run.workdir, step=3)
  assert_one_line(error, "no checkpoint at step 3")
  with pytest.raises(UserError) as error:
    api.export(first_run.workdir, threshold=-1.0)
  assert_one_line(error, "threshold must be a density level > 0, or 0 to choose it", "-1.0")
