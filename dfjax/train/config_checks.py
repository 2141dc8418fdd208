"""Checks of config values, so a bad value stops with one line naming its field.

Both checks are cheap (no JAX, no file reads beyond `os.path`), so the entry point runs them
before loading anything slow.

Data flow: a config only -> here -> dfjax.main and the mesh_sds command line, before
anything slow is loaded.
"""
from __future__ import annotations

import numbers
import os

from dfjax.errors import UserError
from dfjax.priors import stable_diffusion


def _range(config, name: str, *, lo=None, hi=None, strictly_increasing=True):
  section, key = name.split(".")
  value = tuple(config[section][key])
  if len(value) != 2:
    raise UserError(f"config.{name} must be a (min, max) pair, got {value}")
  if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
    raise UserError(f"config.{name} must be two numbers (min, max), got {value}")
  a, b = value
  if strictly_increasing and not a < b:
    raise UserError(f"config.{name} = {value} is an empty range: its min must be below its max")
  if (lo is not None and a < lo) or (hi is not None and b > hi):
    raise UserError(f"config.{name} = {value} must lie within [{lo}, {hi}]")


def _positive(config, name: str, *, allow_zero=False):
  section, key = name.split(".")
  value = config[section][key]
  if value < 0 or (value == 0 and not allow_zero):
    bound = "non-negative" if allow_zero else "positive"
    raise UserError(f"config.{name} must be {bound}, got {value}")


def _probability(config, name: str):
  section, key = name.split(".")
  value = config[section][key]
  if not 0.0 <= value <= 1.0:
    raise UserError(f"config.{name} must be a probability in [0, 1], got {value}")


def _choice(config, name: str, choices):
  section, key = name.split(".")
  value = config[section][key]
  if value not in choices:
    raise UserError(f"config.{name} must be one of {', '.join(map(repr, choices))}; "
                    f"got {value!r}")


EXPORT_FORMATS = ("ply", "obj", "glb")  # ply: vertex colours; obj, glb: UV texture
VIDEO_FORMATS = ("mp4", "gif")
TEXTURE_SIZES = (16, 8192)  # texels per side, inclusive


def export_formats(value, *, name: str) -> tuple[str, ...]:
  """A comma-separated list of mesh formats, e.g. "glb,ply" -> ("glb", "ply").

  `name` is the config field or flag the value came from, for the error message.
  """
  formats = tuple(f.strip().lower() for f in str(value).split(",") if f.strip())
  if not formats:
    raise UserError(f"{name} is empty: list mesh formats, e.g. glb,ply (from "
                    f"{', '.join(EXPORT_FORMATS)})")
  unknown = [f for f in formats if f not in EXPORT_FORMATS]
  if unknown:
    raise UserError(f"{name}={value!r}: unknown mesh format {unknown[0]!r}; use a "
                    f"comma-separated list of {', '.join(EXPORT_FORMATS)}")
  if len(set(formats)) < len(formats):
    raise UserError(f"{name}={value!r} names a format twice")
  return formats


def check_texture_size(value, *, name: str) -> None:
  low, high = TEXTURE_SIZES
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
      low <= value <= high):
    raise UserError(f"{name} must be an integer in [{low}, {high}] (texels per side), got "
                    f"{value!r}")


def check_face_budget(value, *, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (0 < value < 4) or (
      value < 0):
    raise UserError(f"{name} must be 0 (no simplification) or at least 4 faces, got {value!r}")


def check_export(export, *, prefix: str = "config.export.") -> None:
  """The textured-export and video fields of an `export` sub-config."""
  export_formats(export.formats, name=f"{prefix}formats")
  check_texture_size(export.texture_size, name=f"{prefix}texture_size")
  check_face_budget(export.faces, name=f"{prefix}faces")
  if export.video_format not in VIDEO_FORMATS:
    raise UserError(f"{prefix}video_format must be one of "
                    f"{', '.join(map(repr, VIDEO_FORMATS))}; got {export.video_format!r}")


def check_config(config) -> None:
  """Raise UserError naming the first field with a value that cannot work."""
  for name in ("camera.resolution", "field.num_blocks", "field.hidden_units", "field.max_deg",
               "field.blob_radius", "render.num_samples", "render.bound_radius", "render.chunk",
               "train.steps", "train.views_per_device", "train.log_every",
               "train.checkpoint_every", "train.keep_checkpoints", "export.resolution",
               "export.bound", "export.video_frames",
               "export.video_resolution", "optimizer.peak_learning_rate",
               "render.num_candidates", "render.grid_resolution", "render.grid_every"):
    _positive(config, name)
  for name in ("render.num_importance", "train.image_every", "field.cov_scale_start",
               "field.cov_scale_end", "prior.guidance_scale", "loss.orientation_weight",
               "loss.opacity_weight", "optimizer.grad_clip", "camera.position_jitter",
               "camera.look_at_std", "camera.up_std", "shading.albedo_warmup_steps",
               "render.grid_threshold", "export.threshold"):
    _positive(config, name, allow_zero=True)
  for name in ("camera.angle_uniform_prob", "shading.shaded_prob", "shading.textureless_prob",
               "render.grid_decay"):
    _probability(config, name)
  _range(config, "camera.elevation_range", lo=-90.0, hi=90.0)
  _range(config, "camera.azimuth_range")
  _range(config, "camera.distance_range", lo=0.0)
  _range(config, "camera.focal_range", lo=0.0)
  _range(config, "shading.light_distance_range", lo=0.0)
  _range(config, "prior.t_range", lo=0.0, hi=1.0)
  _choice(config, "prior.kind", ("stable_diffusion", "bank", "toy"))
  _choice(config, "prior.weighting", ("sds", "uniform", "sqrt_alpha_one_minus"))
  _choice(config, "prior.dtype", ("float32", "bfloat16"))
  _choice(config, "prior.attention", tuple(stable_diffusion.ATTENTION))
  _choice(config, "background.kind", ("mlp", "fixed"))
  _choice(config, "render.normals", ("autodiff", "finite_difference"))
  _choice(config, "render.sampler", ("uniform", "occupancy"))
  if config.render.sampler == "occupancy" and config.render.num_importance > 0:
    raise UserError("config.render.sampler = 'occupancy' replaces hierarchical sampling: set "
                    "config.render.num_importance=0 or config.render.sampler=uniform")
  _choice(config, "optimizer.name", ("adam",))
  check_export(config.export)


def check_paths(config) -> None:
  """Raise UserError when the prior's model directory or bank file plainly does not exist.

  A model name that is not a local path ("owner/name") may be a hub id, left to the loader.
  """
  kind = config.prior.kind
  if kind == "stable_diffusion":
    model = config.prior.model
    if not model:
      raise UserError("config.prior.model is empty: pass --config.prior.model=DIR_OR_HUB_ID "
                      "(a diffusers-format Stable Diffusion directory or hub id)")
    path = os.path.expanduser(model)
    local = model.startswith(("/", "./", "../", "~")) or os.path.exists(path)
    if local and not os.path.isdir(path):
      problem = "is a file" if os.path.exists(path) else "does not exist"
      raise UserError(f"config.prior.model={model!r} {problem}; pass a "
                      "diffusers-format Stable Diffusion directory (unet/, vae/, text_encoder/, "
                      "tokenizer/, scheduler/) or a hub id such as 'owner/name'")
  elif kind == "bank":
    bank = config.prior.bank
    if not bank:
      raise UserError("config.prior.bank is empty: pass --config.prior.bank=PATH.npz")
    if not os.path.isfile(bank):
      raise UserError(f"config.prior.bank={bank!r}: no such file; pass the path of an "
                      "image-bank .npz (dfjax.priors.bank)")
