"""The R-Precision CLI (dfjax.evaluate) end to end: a tiny random CLIP and a tiny trained run.

The reference for the score is dfjax.eval.clip_eval itself, fed the same renders: the CLI must
print the fraction of its renders whose top caption is the prompt, and the paper's Table 1
numbers for the CLIP's architecture (here a tiny one, so "not reported").
"""
import re

from absl import flags
import numpy as np
import pytest

import clip_fixtures
from dfjax import api
from dfjax import evaluate
from dfjax.eval import clip_eval
from dfjax.priors import bank as bank_lib
from dfjax.scene import cameras
from dfjax.train import restore

RESOLUTION = 8
PROMPT = "a thing"
CAPTIONS = [PROMPT, "another thing", "a red apple", "a small boat"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  """A tiny random CLIP in Flax format with a byte-level tokenizer (no downloads)."""
  directory = tmp_path_factory.mktemp("tiny_clip")
  clip_fixtures.write_tiny_clip(
      directory, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
      num_attention_heads=2, max_position_embeddings=16, image_size=16, patch_size=8,
      projection_dim=8)
  return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run of configs/bank.py trained for 2 steps on a tiny random bank (through dfjax.api,
  as `python -m dfjax.main` trains)."""
  directory = tmp_path_factory.mktemp("eval_run")
  rng = np.random.default_rng(0)
  azimuth, elevation = rng.uniform(0, 360, 16), rng.uniform(-10, 70, 16)
  c2w = np.stack([np.asarray(cameras.camera_from_angles(
      azimuth_deg=a, elevation_deg=e, distance=1.4, fov_deg=50.0, width=RESOLUTION,
      height=RESOLUTION).c2w) for a, e in zip(azimuth, elevation)]).astype(np.float32)
  bank_lib.save_bank(directory / "bank.npz",
                     images=rng.integers(0, 256, (16, RESOLUTION, RESOLUTION, 3), np.uint8),
                     prompts=np.array([PROMPT] * 8 + ["another thing"] * 8), c2w=c2w,
                     fov_deg=np.full(16, 50.0, np.float32))
  config = api.config("bank", prompt=PROMPT, prior__bank=str(directory / "bank.npz"),
                      field__num_blocks=1, field__hidden_units=8, field__max_deg=2,
                      render__num_samples=8, train__steps=2, train__checkpoint_every=2,
                      train__image_every=0, export__at_end=False)
  result = api.train(config, str(directory / "run"), progress=False)
  assert result.finished and result.step == 2 and not result.meshes and result.video is None
  (directory / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
  return directory


def run_cli(argv, capsys):
  flag_values = flags.FlagValues()
  evaluate.define_flags(flag_values)
  flag_values(["evaluate"] + argv)
  evaluate.main(["evaluate"], flag_values=flag_values)
  return capsys.readouterr()


def test_cli_prints_r_precision_and_the_papers_numbers(run_dir, clip_dir, capsys):
  out = run_cli([f"--workdir={run_dir / 'run'}", f"--clip={clip_dir}",
                 f"--captions={run_dir / 'captions.txt'}", "--num_azimuths=3"], capsys).out
  lines = out.strip().splitlines()
  assert "3 renders at 30 deg" in lines[0] and "4 captions" in lines[0], out
  scores = [float(re.match(r"\s+(colour|geometry)\s+([0-9.]+)", line).group(2))
            for line in lines[1:]]
  assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
  # With 3 renders the fraction is a multiple of 1/3.
  assert all(abs(3 * s - round(3 * s)) < 2e-3 for s in scores), scores
  assert all("not reported for this CLIP architecture" in line for line in lines[1:])

  # The same renders scored by clip_eval directly give the same numbers.
  config = restore.load_run_config(str(run_dir / "run"))
  scene, params, step = restore.restore_params(config, str(run_dir / "run"), step=None)
  renders = evaluate.render_modes(scene, params, step, evaluate.evaluation_cameras(
      config, num_azimuths=3, resolution=RESOLUTION))
  model = clip_eval.load_clip(str(clip_dir))
  text = clip_eval.embed_texts(model, CAPTIONS)
  expected = [clip_eval.r_precision(clip_eval.embed_images(model, renders[c]), text,
                                    np.zeros(3, int)) for c in ("color", "geometry")]
  np.testing.assert_allclose(scores, expected, atol=2e-3)


def test_report_quotes_table_1_for_known_architectures():
  report = evaluate.format_report(evaluate.Evaluation(
      prompt=PROMPT, step=5, num_renders=4, num_captions=153, architecture="B/32",
      r_precision={"color": 0.5, "geometry": 0.25}))
  assert re.search(r"colour\s+0\.500\s+paper \(Table 1, DreamFusion, CLIP B/32\): 0\.751", report)
  assert re.search(r"geometry\s+0\.250\s+paper .*: 0\.425", report)


@pytest.mark.parametrize("argv, message", [
    (["--num_azimuths=0"], "--num_azimuths must be at least 1"),
    (["--captions=/nonexistent/captions.txt"], "cannot read the caption file"),
    (["--workdir=/nonexistent"], "config.json not found"),
])
def test_bad_input_is_one_line(run_dir, clip_dir, capsys, argv, message):
  base = {"--workdir": str(run_dir / "run"), "--clip": str(clip_dir),
          "--captions": str(run_dir / "captions.txt")}
  for arg in argv:
    name, value = arg.split("=", 1)
    base[name] = value
  with pytest.raises(SystemExit) as exit_info:
    run_cli([f"{k}={v}" for k, v in base.items()], capsys)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err, err
