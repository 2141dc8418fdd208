"""Evaluate a run by CLIP R-Precision, as in DreamFusion's Table 1 (arXiv:2209.14988 §4).

  python -m dfjax.evaluate --workdir=DIR --clip=DIR_OR_HUB_ID --captions=FILE \
      [--num_azimuths=N] [--step=S] [--resolution=R]

Restores the run's checkpoint (default: the latest), renders it at 30 degrees elevation from
N evenly spaced azimuths in colour (albedo) and as textureless shaded geometry, and prints the
fraction of renders for which CLIP (Radford et al. 2021) retrieves the run's prompt among the
captions of FILE (one per line; it must contain the prompt). The paper's Table 1 numbers for
the same CLIP architecture are printed beside them. The paper evaluates 153 prompts over 153
COCO captions; a single run is one scene of that average.

Data flow: the top: the entry point over train.restore, train.model (the renders) and
eval.clip_eval.
"""
from __future__ import annotations

import dataclasses

from absl import flags
import numpy as np

from dfjax import cli
from dfjax.errors import UserError
from dfjax.scene import cameras as cameras_lib

FLAGS = flags.FLAGS
ELEVATION_DEG = 30.0  # Dream Fields / DreamFusion R-Precision renders (§4)
MODES = {"color": "albedo", "geometry": "textureless"}  # Table 1 column -> render mode


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """R-Precision of one run.

  Attributes:
    prompt: the run's prompt.
    step: the evaluated checkpoint.
    num_renders: renders per mode (azimuths).
    num_captions: captions retrieved among.
    architecture: the CLIP's image encoder ("B/32", "B/16", "L/14") or None.
    r_precision: {"color": float, "geometry": float}, each in [0, 1].
  """
  prompt: str
  step: int
  num_renders: int
  num_captions: int
  architecture: str | None
  r_precision: dict


def evaluation_cameras(config, *, num_azimuths: int, resolution: int):
  """Cameras at ELEVATION_DEG, azimuths 0, 360/N, ..., at the run's turntable distance/fov."""
  e = config.export
  return [cameras_lib.camera_from_angles(azimuth_deg=360.0 * i / num_azimuths,
                                         elevation_deg=ELEVATION_DEG, distance=e.video_distance,
                                         fov_deg=e.video_fov, width=resolution,
                                         height=resolution)
          for i in range(num_azimuths)]


def render_modes(scene, params, step: int, cameras) -> dict:
  """{"color": [N, H, W, 3], "geometry": [N, H, W, 3]} renders through model_lib.render_preview."""
  from dfjax.train import model as model_lib  # pylint: disable=g-import-not-at-top
  renders = model_lib.render_previews(scene, params, cameras, step)
  return {column: renders[mode] for column, mode in MODES.items()}


def evaluate_run(workdir: str, *, clip: str, captions: str, num_azimuths: int = 8,
                 step: int | None = None, resolution: int | None = None) -> Evaluation:
  """CLIP R-Precision of a run's renders (see the module docstring).

  Raises:
    UserError: bad arguments, a missing run or checkpoint, captions without the prompt, or a
      CLIP that cannot be loaded.
  """
  from dfjax.eval import clip_eval  # pylint: disable=g-import-not-at-top
  from dfjax.train import restore  # pylint: disable=g-import-not-at-top
  if num_azimuths < 1:
    raise UserError(f"--num_azimuths must be at least 1, got {num_azimuths}")
  if resolution is not None and resolution < 8:
    raise UserError(f"--resolution must be at least 8, got {resolution}")
  config = restore.load_run_config(workdir)
  caption_list = clip_eval.read_captions(captions, required=[config.prompt])
  model = clip_eval.load_clip(clip)
  scene, params, step = restore.restore_params(config, workdir, step=step)
  cameras = evaluation_cameras(config, num_azimuths=num_azimuths,
                               resolution=resolution or config.camera.resolution)
  renders = render_modes(scene, params, step, cameras)
  text_embeds = clip_eval.embed_texts(model, caption_list)
  true_index = np.repeat(clip_eval.caption_indices(caption_list, [config.prompt]), num_azimuths)
  scores = {column: clip_eval.r_precision(clip_eval.embed_images(model, images), text_embeds,
                                          true_index)
            for column, images in renders.items()}
  return Evaluation(prompt=config.prompt, step=step, num_renders=num_azimuths,
                    num_captions=len(caption_list), architecture=model.architecture,
                    r_precision=scores)


def format_report(evaluation: Evaluation) -> str:
  """Lines of the CLI's output: our R-Precision and the paper's (fractions in [0, 1])."""
  from dfjax.eval import clip_eval  # pylint: disable=g-import-not-at-top
  paper = clip_eval.PAPER_R_PRECISION.get(evaluation.architecture)
  name = f"CLIP {evaluation.architecture}" if evaluation.architecture else "this CLIP"
  lines = [f"CLIP R-Precision of {evaluation.prompt!r} at step {evaluation.step}: "
           f"{evaluation.num_renders} renders at {ELEVATION_DEG:g} deg elevation per mode, "
           f"retrieving among {evaluation.num_captions} captions with {name}"]
  for column, label in (("color", "colour"), ("geometry", "geometry")):
    quoted = (f"paper (Table 1, DreamFusion, {name}): {paper[column] / 100:.3f}" if paper
              else "paper: not reported for this CLIP architecture (Table 1 has B/32, B/16, "
              "L/14)")
    lines.append(f"  {label:<9} {evaluation.r_precision[column]:.3f}   {quoted}")
  return "\n".join(lines)


def define_flags(flag_values=FLAGS):
  """The CLI's flags (defined only when this module is the entry point, or by a test)."""
  flags.DEFINE_string("workdir", None, "Run directory to evaluate.", flag_values=flag_values)
  flags.DEFINE_string("clip", None, "CLIP model: a diffusers/transformers directory or a cached "
                      "hub id (e.g. openai/clip-vit-base-patch32).", flag_values=flag_values)
  flags.DEFINE_string("captions", None, "Text file of captions, one per line, including the "
                      "run's prompt.", flag_values=flag_values)
  flags.DEFINE_integer("num_azimuths", 8, "Renders per mode, evenly spaced in azimuth.",
                       flag_values=flag_values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).",
                       flag_values=flag_values)
  flags.DEFINE_integer("resolution", None, "Render size in pixels (default: the run's).",
                       flag_values=flag_values)


def main(argv, flag_values=FLAGS):
  cli.quiet_libraries()
  with cli.user_errors():
    if len(argv) > 1:
      raise UserError(f"unexpected arguments {argv[1:]}; flags look like --workdir=DIR "
                      "--clip=DIR --captions=FILE")
    for name, example in (("workdir", "runs/toy"), ("clip", "openai/clip-vit-base-patch32"),
                          ("captions", "captions.txt")):
      if not flag_values[name].value:
        raise UserError(f"--{name} is required, e.g. --{name}={example}")
    evaluation = evaluate_run(flag_values.workdir, clip=flag_values.clip,
                              captions=flag_values.captions,
                              num_azimuths=flag_values.num_azimuths, step=flag_values.step,
                              resolution=flag_values.resolution)
    print(format_report(evaluation), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
