"""Light sampling and shading (DreamFusion §3.1 "Shading", App. A.2).

Colour c = ρ ∘ (ℓ_a + ℓ_p · max(0, n · (ℓ − x)/‖ℓ − x‖)): albedo ρ lit by an ambient term ℓ_a
and a point light at ℓ of intensity ℓ_p. Three modes are sampled per step: albedo only
(ℓ_a = 1, ℓ_p = 0), Lambertian, and textureless (Lambertian with ρ := 1).

Data flow: lights and normals -> here -> scene.render, toy.truth, mesh_sds.rasterize.
"""
from __future__ import annotations

from flax import struct
import jax
import jax.numpy as jnp


@struct.dataclass
class Shading:
  """How one view is shaded.

  Attributes:
    light_position: [3] point light position in world coordinates.
    ambient: [] ambient intensity ℓ_a.
    diffuse: [] point light intensity ℓ_p.
    textureless: [] 1.0 to replace the albedo by white, 0.0 to keep it.
  """
  light_position: jax.Array
  ambient: jax.Array
  diffuse: jax.Array
  textureless: jax.Array

  @classmethod
  def albedo_only(cls) -> "Shading":
    return cls(light_position=jnp.zeros(3), ambient=jnp.ones(()), diffuse=jnp.zeros(()),
               textureless=jnp.zeros(()))


def sample_light_position(key: jax.Array, camera_position: jax.Array, *,
                          distance_range=(0.8, 1.5)) -> jax.Array:
  """Point light near the camera (App. A.2).

  The direction is drawn from N(camera position, I) and normalised; the distance from the
  origin is uniform in `distance_range`.

  Returns:
    [3] light position.
  """
  k_dir, k_dist = jax.random.split(key)
  direction = camera_position + jax.random.normal(k_dir, (3,))
  direction = direction / jnp.maximum(jnp.linalg.norm(direction), 1e-6)
  return direction * jax.random.uniform(k_dist, (), minval=distance_range[0],
                                        maxval=distance_range[1])


def sample_shading(key: jax.Array, light_position: jax.Array, *, albedo_only: jax.Array,
                   shaded_prob: float = 0.75, textureless_prob: float = 0.5,
                   ambient: float = 0.1, diffuse: float = 0.9) -> Shading:
  """Pick the shading mode of one view (App. A.2).

  With probability `shaded_prob` the view is lit (ambient 0.1, diffuse 0.9) and then
  textureless with probability `textureless_prob`; otherwise it shows the albedo only.
  `albedo_only` (a traced bool, true during the warm-up steps) forces albedo only.

  Returns:
    A Shading.
  """
  k_shaded, k_textureless = jax.random.split(key)
  shaded = (jax.random.uniform(k_shaded) < shaded_prob) & ~albedo_only
  textureless = shaded & (jax.random.uniform(k_textureless) < textureless_prob)
  return Shading(light_position=light_position,
                 ambient=jnp.where(shaded, ambient, 1.0),
                 diffuse=jnp.where(shaded, diffuse, 0.0),
                 textureless=textureless.astype(jnp.float32))


def reads_normals(shading: Shading) -> jax.Array:
  """[] bool: whether `shade` reads the normals under this shading (lit and textureless
  views; an albedo-only view has ℓ_p = 0, and its colour does not depend on them)."""
  return shading.diffuse != 0


def lambertian(albedo: jax.Array, normals: jax.Array, points: jax.Array, *,
               light_position: jax.Array, ambient, diffuse) -> jax.Array:
  """c = ρ ∘ (ℓ_a + ℓ_p · max(0, n · l̂)) (DreamFusion §3.1).

  Args:
    albedo: [..., 3]; normals: [..., 3] unit; points: [..., 3] world positions.
    light_position: [3]; ambient, diffuse: scalars.

  Returns:
    [..., 3] shaded colour.
  """
  to_light = light_position - points
  to_light = to_light / jnp.maximum(jnp.linalg.norm(to_light, axis=-1, keepdims=True), 1e-6)
  cosine = jnp.maximum(jnp.sum(normals * to_light, axis=-1, keepdims=True), 0.0)
  return albedo * (ambient + diffuse * cosine)


def shade(albedo: jax.Array, normals: jax.Array, points: jax.Array,
          shading: Shading) -> jax.Array:
  """Colour of points under a Shading (albedo only, Lambertian or textureless).

  Args:
    albedo, normals, points: [..., 3].

  Returns:
    [..., 3] colour.
  """
  base = albedo + shading.textureless * (1.0 - albedo)
  return lambertian(base, normals, points, light_position=shading.light_position,
                    ambient=shading.ambient, diffuse=shading.diffuse)
