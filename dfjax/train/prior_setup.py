"""The prior a config names, and the camera ranges to train with.

`config.prior.kind` picks one of three priors: a Stable Diffusion pipeline
(`dfjax.priors.stable_diffusion`), the closed-form prior of an image bank file, or of the toy
world's bank (`dfjax.priors.bank`, `dfjax.toy.banks`). A bank also fixes the cameras: its
resolution, distances, fields of view and elevations (`bank_camera_kwargs`).

Data flow: priors and toy.banks -> here -> train.loop, mesh_sds (its CLI), the benchmarks.
"""
import math

from dfjax.errors import UserError


def build_prior(config):
  """The prior named by `config.prior.kind`, and the camera ranges to train with.

  Returns:
    (prior, camera_kwargs for `cameras.sample_camera`).

  Raises:
    UserError: a missing model or bank, or a prompt the bank does not know.
  """
  from dfjax.priors import bank as bank_lib  # pylint: disable=g-import-not-at-top
  camera_kwargs = camera_kwargs_from_config(config)
  kind = config.prior.kind
  if kind == "stable_diffusion":
    from dfjax.priors import stable_diffusion  # pylint: disable=g-import-not-at-top
    if not config.prior.model:
      raise UserError("config.prior.model is empty: pass --config.prior.model=DIR_OR_HUB_ID "
                      "(a diffusers-format Stable Diffusion directory or hub id)")
    prior = stable_diffusion.load_stable_diffusion(
        config.prior.model, revision=config.prior.revision or None, dtype=config.prior.dtype,
        prompt=config.prompt, view_dependent=config.prior.view_dependent,
        use_vae=config.prior.use_vae, render_size=config.camera.resolution,
        attention=config.prior.attention)
    return prior, camera_kwargs
  if kind == "toy":
    from dfjax.toy import banks as toy_banks  # pylint: disable=g-import-not-at-top
    bank = bank_lib.load_bank(toy_banks.get_toy_bank(**config.toy))
  elif kind == "bank":
    if not config.prior.bank:
      raise UserError("config.prior.bank is empty: pass --config.prior.bank=PATH.npz")
    bank = bank_lib.load_bank(config.prior.bank)
  else:
    raise UserError(f"config.prior.kind must be 'stable_diffusion', 'bank' or 'toy', got {kind!r}")
  prior = bank_lib.ClosedFormPrior.from_bank(bank, prompt=config.prompt,
                                             view_dependent=config.prior.view_dependent)
  return prior, bank_camera_kwargs(config, bank_lib.bank_camera_ranges(bank),
                                   image_size=prior.image_size)


def camera_kwargs_from_config(config) -> dict:
  """`cameras.sample_camera`'s keyword arguments from config.camera (App. A.2 defaults)."""
  c = config.camera
  return dict(
      width=c.resolution, height=c.resolution, elevation_range_deg=tuple(c.elevation_range),
      azimuth_range_deg=tuple(c.azimuth_range), distance_range=tuple(c.distance_range),
      focal_multiplier_range=tuple(c.focal_range), angle_uniform_prob=c.angle_uniform_prob,
      position_jitter=c.position_jitter, look_at_std=c.look_at_std, up_std=c.up_std)


def bank_camera_kwargs(config, ranges, *, image_size: int) -> dict:
  """Camera sampling for a bank: its resolution, distances, fields of view and elevations.

  Azimuth stays uniform and the jitter comes from the config.
  """
  # focal = 0.5·width / tan(fov/2): the widest field of view gives the shortest focal length.
  multiplier = lambda fov: 0.5 / math.tan(math.radians(fov) / 2)
  return dict(camera_kwargs_from_config(config), width=image_size, height=image_size,
              elevation_range_deg=ranges.elevation_deg, distance_range=ranges.distance,
              focal_multiplier_range=(multiplier(ranges.fov_deg[1]),
                                      multiplier(ranges.fov_deg[0])))
