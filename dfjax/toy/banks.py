"""Image banks of the toy world: every object rendered from many cameras, and their cache.

A bank (the format `dfjax.priors.bank` reads) is the data of the closed-form prior: captioned
images of the toy objects (`dfjax.toy.objects`) rendered with dfjax's own volume renderer from
cameras spread over the view sphere, in albedo or Lambertian shading. Banks are generated on
first use and cached under the user's cache directory (`cache_dir`).

Data flow: scene (cameras, render, shading), toy.objects, toy.truth and priors.bank (the file
format) -> here -> train.prior_setup (the `toy` prior) and eval.
"""
import functools
import os
import pathlib
import time

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from dfjax.errors import UserError
from dfjax.priors import bank as bank_lib
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import render as render_lib
from dfjax.scene import shading as shading_lib
from dfjax.toy.objects import OBJECTS, field_fn_for
from dfjax.toy.truth import WHITE_BACKGROUND


# Default camera ranges of a bank. A camera at the nearest distance with the narrowest field
# of view still sees a sphere of radius 1.3 * sin(24 deg) = 0.53 > OBJECT_RADIUS, so objects
# are never cut off, and the image corners (32 deg off-axis) always show the background. The
# elevation range reaches past 60 degrees so that the bank holds overhead views (§3.2).
ELEVATION_RANGE_DEG = (-10.0, 70.0)


DISTANCE_RANGE = (1.3, 1.6)


FOV_RANGE_DEG = (48.0, 56.0)


# A front-biased bank, like a photo collection, has this fraction of its views with the
# azimuth (wrapped to [-180, 180)) in the front quadrant [-45, 45).
FRONT_BIASED_FRACTION = 0.6


# Lambertian banks are lit as the trainer lights its shaded views (App. A.2): a point light
# near the camera (`shading.sample_light_position`), ambient 0.1, diffuse 0.9.
LAMBERTIAN_AMBIENT = 0.1


LAMBERTIAN_DIFFUSE = 0.9


# The renderer samples rays inside this sphere; the objects lie inside OBJECT_RADIUS, so a
# tight bound spends the samples where the surfaces are.
BANK_BOUND_RADIUS = 0.6


# "lambertian_textureless": every other view of each object is lit with its albedo replaced by
# white (the trainer's textureless views, §3.1), so that such renders have neighbours in the
# bank, as untextured renders have in a large photo prior's training data.
SHADINGS = ("albedo", "lambertian", "lambertian_textureless")


# Views per object of the default bank: 672 images of 64 x 64 in all, rendered in well under a
# minute of two CPU cores' time after a compile of about 15 s.
DEFAULT_VIEWS_PER_OBJECT = 96


@struct.dataclass
class BankCameras:
  """The nominal cameras of one object's views, each field [num_views] float32 (degrees)."""
  azimuth_deg: np.ndarray
  elevation_deg: np.ndarray
  distance: np.ndarray
  fov_deg: np.ndarray


def bank_cameras(rng, *, num_views, elevation_range_deg=ELEVATION_RANGE_DEG,
                 distance_range=DISTANCE_RANGE, fov_range_deg=FOV_RANGE_DEG,
                 front_biased=False):
  """Cameras that cover the viewing sphere evenly, or with the front over-represented.

  Azimuths lie on a uniform grid with a random offset (wrapped to [-180, 180)); with
  `front_biased`, round(FRONT_BIASED_FRACTION * num_views) of them on a grid over the front
  quadrant [-45, 45) and the rest on a grid over the other 270 degrees. Elevations are
  stratified over their range (one per equal slice, randomly permuted across the azimuths);
  distances and fields of view are uniform in their ranges.

  Args:
    rng: a numpy Generator.
    num_views: number of cameras.

  Returns:
    BankCameras with fields [num_views].
  """
  if front_biased:
    num_front = int(round(FRONT_BIASED_FRACTION * num_views))
    azimuth = np.concatenate([
        _grid_with_offset(rng, num_front, start=-45.0, width=90.0),
        _grid_with_offset(rng, num_views - num_front, start=45.0, width=270.0)])
  else:
    azimuth = _grid_with_offset(rng, num_views, start=0.0, width=360.0)
  azimuth = np.mod(azimuth + 180.0, 360.0) - 180.0
  low, high = elevation_range_deg
  strata = (rng.permutation(num_views) + rng.uniform(size=num_views)) / num_views
  elevation = low + (high - low) * strata
  as_float32 = lambda x: np.asarray(x, np.float32)
  return BankCameras(azimuth_deg=as_float32(azimuth), elevation_deg=as_float32(elevation),
                     distance=as_float32(rng.uniform(*distance_range, size=num_views)),
                     fov_deg=as_float32(rng.uniform(*fov_range_deg, size=num_views)))


def sample_bank_lights(num_lights, *, seed=0, elevation_range_deg=ELEVATION_RANGE_DEG,
                       distance_range=DISTANCE_RANGE):
  """Point lights as a Lambertian bank draws them: each near a camera of the bank's camera
  distribution (`bank_cameras`, all around), by `shading.sample_light_position` (App. A.2).

  A Monte Carlo sample of the lights the bank's photos were lit by, e.g. for the shading
  averaged over those photos (`ablation_metrics.mean_diffuse_cosine`).

  Args:
    num_lights: how many lights (one per sampled camera).
    seed: seeds the cameras and the lights.
    elevation_range_deg, distance_range: the bank's camera ranges (make_bank's defaults).

  Returns:
    [num_lights, 3] float32 light positions.
  """
  views = bank_cameras(np.random.default_rng(seed), num_views=num_lights,
                       elevation_range_deg=elevation_range_deg, distance_range=distance_range)
  positions = cameras_lib.spherical_to_position(views.azimuth_deg, views.elevation_deg,
                                                views.distance)
  keys = jax.random.split(jax.random.PRNGKey(seed), num_lights)
  return np.asarray(jax.vmap(shading_lib.sample_light_position)(keys, positions))


def _grid_with_offset(rng, num, *, start, width):
  """num angles spaced width/num apart in [start, start + width), randomly offset. [num]."""
  return start + (np.arange(num) + rng.uniform()) * (width / max(num, 1))


@functools.lru_cache(maxsize=4)
def _bank_renderer(objects, *, resolution, num_samples, num_importance):
  """One jitted renderer of bank views for all the objects (a tuple), cached.

  The object is chosen inside the field with `lax.switch` and the shading is an argument, so
  the renderer compiles once per set of objects and resolution. Normals are central
  differences of the density: reverse-mode gradients of some composed SDFs compile to slow CPU
  code, and the difference step (1e-3) is below the surface's sigmoid width
  (SURFACE_SOFTNESS), so the normals are as good.

  Returns:
    render_view(object_index, azimuth_deg, elevation_deg, distance, fov_deg, light_key, lit,
                textureless) -> (rgb [resolution, resolution, 3] in [0, 1], c2w [4, 4]);
      `lit` (bool) selects Lambertian shading (see make_bank) over the albedo, `textureless`
      (bool) replaces the albedo by white.
  """
  fields = [field_fn_for(obj) for obj in objects]

  @jax.jit
  def render_view(object_index, azimuth_deg, elevation_deg, distance, fov_deg, light_key, lit,
                  textureless):
    camera = cameras_lib.camera_from_angles(
        azimuth_deg=azimuth_deg, elevation_deg=elevation_deg, distance=distance,
        fov_deg=fov_deg, width=resolution, height=resolution)
    field_fn = lambda means, cov_diag: jax.lax.switch(object_index, fields, means, cov_diag)
    shading = shading_lib.Shading(
        light_position=shading_lib.sample_light_position(light_key, camera.position),
        ambient=jnp.where(lit, LAMBERTIAN_AMBIENT, 1.0),
        diffuse=jnp.where(lit, LAMBERTIAN_DIFFUSE, 0.0),
        textureless=jnp.asarray(textureless, jnp.float32))
    output = render_lib.render_image(
        camera, key=jax.random.PRNGKey(0), field_fn=field_fn, background_fn=WHITE_BACKGROUND,
        shading=shading, num_samples=num_samples, num_importance=num_importance,
        bound_radius=BANK_BOUND_RADIUS, randomized=False, normals="finite_difference")
    return output.rgb, camera.c2w

  return render_view


def _check_bank_arguments(objects, *, resolution, num_views, shading):
  """Raise a UserError naming the first bad bank-generation argument."""
  if not objects:
    raise UserError("make_bank needs at least one object, e.g. [c() for c in objects.OBJECTS].")
  if not isinstance(resolution, int) or resolution < 8:
    raise UserError(f"bank resolution must be an integer >= 8 pixels, got {resolution!r}.")
  if not isinstance(num_views, int) or num_views < 1:
    raise UserError(f"views per object must be a positive integer, got {num_views!r}.")
  if shading not in SHADINGS:
    raise UserError(f"bank shading must be one of {SHADINGS}, got {shading!r}.")


def make_bank(objects, *, resolution=64, num_views=DEFAULT_VIEWS_PER_OBJECT,
              elevation_range_deg=ELEVATION_RANGE_DEG, distance_range=DISTANCE_RANGE,
              fov_range_deg=FOV_RANGE_DEG, shading="albedo", front_biased=False, seed=0,
              num_samples=48, num_importance=32):
  """Render every object from `num_views` cameras (see `bank_cameras`) on a white background.

  Views are rendered with `render.render_image` (hierarchical sampling, deterministic sample
  positions) inside a sphere of radius BANK_BOUND_RADIUS.

  Args:
    objects: a sequence of ToyObjects.
    resolution: image height and width in pixels.
    num_views: views per object.
    elevation_range_deg, distance_range, fov_range_deg: camera ranges (`bank_cameras`).
    shading: "albedo" (the albedo only), "lambertian" (lit by a point light near each
      camera, LAMBERTIAN_AMBIENT and LAMBERTIAN_DIFFUSE; the light's position is drawn per
      view as in App. A.2, from the seed) or "lambertian_textureless" (as "lambertian", with
      the albedo of every odd-numbered view of each object replaced by white).
    front_biased: over-represent front views (FRONT_BIASED_FRACTION of them).
    seed: seeds the cameras and lights.
    num_samples, num_importance: coarse and hierarchical samples per ray.

  Returns:
    A dict with the keyword arguments of `dfjax.priors.bank.save_bank`, N = len(objects) *
    num_views rows, object by object: images uint8 [N, H, W, 3], prompts str [N] (the
    captions), c2w float32 [N, 4, 4], fov_deg float32 [N].
  """
  _check_bank_arguments(objects, resolution=resolution, num_views=num_views, shading=shading)
  rng = np.random.default_rng(seed)
  light_key = jax.random.PRNGKey(seed)
  render_view = _bank_renderer(tuple(objects), resolution=resolution, num_samples=num_samples,
                               num_importance=num_importance)
  images, c2ws, fovs = [], [], []
  for index in range(len(objects)):
    views = bank_cameras(rng, num_views=num_views, elevation_range_deg=elevation_range_deg,
                         distance_range=distance_range, fov_range_deg=fov_range_deg,
                         front_biased=front_biased)
    for view in range(num_views):
      rgb, c2w = render_view(index, views.azimuth_deg[view], views.elevation_deg[view],
                             views.distance[view], views.fov_deg[view],
                             jax.random.fold_in(light_key, len(images)),
                             shading != "albedo",
                             shading == "lambertian_textureless" and view % 2 == 1)
      images.append(np.round(np.clip(np.asarray(rgb), 0.0, 1.0) * 255.0).astype(np.uint8))
      c2ws.append(np.asarray(c2w, np.float32))
    fovs.append(views.fov_deg)
  return dict(images=np.stack(images), prompts=np.repeat([o.caption for o in objects], num_views),
              c2w=np.stack(c2ws), fov_deg=np.concatenate(fovs).astype(np.float32))


# Part of every cached bank's file name; bump it whenever the objects, the cameras or the
# rendering change, so that stale banks are regenerated instead of reused.
TOY_BANK_VERSION = "toy1"


def cache_dir():
  """dfjax's cache folder: $DFJAX_CACHE_DIR, else $XDG_CACHE_HOME/dfjax, else ~/.cache/dfjax."""
  if os.environ.get("DFJAX_CACHE_DIR"):
    return pathlib.Path(os.environ["DFJAX_CACHE_DIR"]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "dfjax"


def toy_bank_path(*, resolution=64, views_per_object=DEFAULT_VIEWS_PER_OBJECT,
                  front_biased=False, shading="albedo", seed=0):
  """Where the toy bank with these generation parameters is cached (see `get_toy_bank`).

  The file name spells out every parameter and TOY_BANK_VERSION; the camera ranges and the
  renderer settings are make_bank's defaults, covered by the version.
  """
  views = "front" if front_biased else "uniform"
  name = (f"{TOY_BANK_VERSION}_{len(OBJECTS)}objects_{resolution}px_{views_per_object}views_"
          f"{views}_{shading}_seed{seed}.npz")
  return cache_dir() / "toy_banks" / name


def get_toy_bank(*, resolution=64, views_per_object=DEFAULT_VIEWS_PER_OBJECT,
                 front_biased=False, shading="albedo", seed=0):
  """The toy world's image bank file, generated (`make_bank` of all OBJECTS) on first use.

  The bank is written atomically (a temporary file, then `os.replace`), so an interrupted
  generation never leaves a truncated bank behind, and later calls reuse it.

  Returns:
    pathlib.Path of the bank (.npz, read it with `dfjax.priors.bank.load_bank`).
  """
  path = toy_bank_path(resolution=resolution, views_per_object=views_per_object,
                       front_biased=front_biased, shading=shading, seed=seed)
  if path.exists():
    return path
  print(f"Generating the toy image bank {path.name} (first use)...", end=" ", flush=True)
  start = time.time()
  bank = make_bank([constructor() for constructor in OBJECTS], resolution=resolution,
                   num_views=views_per_object, shading=shading, front_biased=front_biased,
                   seed=seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    bank_lib.save_bank(temporary, **bank)
    os.replace(temporary, path)
  finally:
    if temporary.exists():
      temporary.unlink()
  print(f"{len(bank['images'])} images in {time.time() - start:.1f} s, cached in {path.parent}",
        flush=True)
  return path
