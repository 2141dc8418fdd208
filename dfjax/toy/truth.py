"""Exact renders of the toy objects by sphere tracing: the ground truth of every score.

Reconstructions and the ablations are measured against these images (silhouette, colour,
depth and normals through any camera), computed from the objects' SDFs without the volume
renderer's sampling.

Data flow: scene (cameras, shading, background) and toy.objects -> here -> toy.banks, eval.
"""
import functools

from flax import struct
import jax
import jax.numpy as jnp

from dfjax.scene import background as background_lib
from dfjax.scene import cameras as cameras_lib
from dfjax.scene import render as render_lib
from dfjax.scene import shading as shading_lib
from dfjax.toy.sdf import safe_norm


# Image banks and ground truth are rendered on a plain white background: a BackgroundFn that
# returns ones, like a product photo.
WHITE_BACKGROUND = background_lib.fixed_background((1.0, 1.0, 1.0))


@struct.dataclass
class GroundTruth:
  """The exact appearance of a toy object through one camera (pixel-centre rays).

  Attributes:
    rgb: [height, width, 3] shaded colour over the white background.
    alpha: [height, width] 1.0 where the pixel's ray hits the object, else 0.0.
    depth: [height, width] distance to the surface along the unit ray (0 where it misses,
      as in `render.RenderOutput`).
    normals: [height, width, 3] unit outward surface normals (0 where it misses).
  """
  rgb: jax.Array
  alpha: jax.Array
  depth: jax.Array
  normals: jax.Array


def sphere_trace(sdf, origins, directions, *, near, far, num_steps, tolerance):
  """First intersection of rays with the zero set of a 1-Lipschitz SDF (sphere tracing).

  Hart, "Sphere tracing", The Visual Computer 1996: stepping by the SDF value never crosses
  the surface because no surface point is closer than that value.

  Args:
    sdf: points [..., 3] -> [...].
    origins, directions: [..., 3], unit directions.
    near, far: [...] search interval along each ray.
    num_steps: number of steps (a fixed loop).
    tolerance: a ray has hit once the SDF value falls below this, world units.

  Returns:
    distance: [...] along each ray; hit: bool [...].
  """

  def step(_, distance):
    value = sdf(origins + distance[..., None] * directions)
    return jnp.where(value > tolerance, jnp.minimum(distance + value, far), distance)

  distance = jax.lax.fori_loop(0, num_steps, step, near)
  hit = sdf(origins + distance[..., None] * directions) <= tolerance
  return distance, hit & (distance < far)


@functools.partial(jax.jit, static_argnames=("obj", "num_steps", "tolerance", "bound_radius"))
def render_ground_truth(obj, camera, *, shading=None, num_steps=200, tolerance=1e-4,
                        bound_radius=1.4):
  """Render a toy object exactly, by sphere tracing its SDF, for evaluation.

  Jitted with `obj` static (hashed by its functions' identity): render the same ToyObject
  instance again to reuse the compiled function.

  Args:
    obj: a ToyObject.
    camera: a `cameras.Camera`.
    shading: a `shading.Shading`; None for albedo only.
    num_steps, tolerance: sphere tracing (see `sphere_trace`).
    bound_radius: rays are traced inside this sphere (the renderer's bound).

  Returns:
    GroundTruth with leading shape [height, width].
  """
  shading = shading_lib.Shading.albedo_only() if shading is None else shading
  rays = cameras_lib.generate_rays(camera)
  near, far = render_lib.intersect_sphere(rays.origins, rays.directions, bound_radius)
  distance, hit = sphere_trace(obj.sdf, rays.origins, rays.directions, near=near, far=far,
                               num_steps=num_steps, tolerance=tolerance)
  points = rays.origins + distance[..., None] * rays.directions
  gradient = jax.grad(lambda p: jnp.sum(obj.sdf(p)))(points)
  normals = gradient / safe_norm(gradient)[..., None]
  color = shading_lib.shade(obj.albedo(points), normals, points, shading)
  alpha = hit.astype(jnp.float32)
  rgb = alpha[..., None] * color + (1.0 - alpha[..., None]) * WHITE_BACKGROUND(rays.directions)
  return GroundTruth(rgb=rgb, alpha=alpha, depth=alpha * distance,
                     normals=alpha[..., None] * normals)
