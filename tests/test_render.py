"""The renderer on analytic scenes, its normals and shading, and its gradient in float64."""
import functools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from dfjax.scene import background
from dfjax.scene import cameras
from dfjax.scene import field
from dfjax.scene import losses
from dfjax.scene import render
from dfjax.scene import shading

BOUND = 1.4
WHITE = background.fixed_background([1.0, 1.0, 1.0])


def _camera(width=9, distance=2.5, azimuth=20.0, elevation=15.0, fov=30.0):
  return cameras.camera_from_angles(azimuth_deg=azimuth, elevation_deg=elevation,
                                    distance=distance, fov_deg=fov, width=width, height=width)


def _constant_field(tau, color=(0.2, 0.5, 0.9)):
  def field_fn(means, cov_diag):
    del cov_diag
    return (jnp.full(means.shape[:-1], tau),
            jnp.broadcast_to(jnp.asarray(color, jnp.float32), means.shape))
  return field_fn


def _sphere_field(radius, *, tau=1e4, softness=None, color=(0.8, 0.3, 0.1)):
  """A hard sphere (or a smooth-edged one with sigmoid profile of width `softness`)."""
  def field_fn(means, cov_diag):
    del cov_diag
    r = jnp.linalg.norm(means, axis=-1)
    inside = (r < radius).astype(jnp.float32) if softness is None else jax.nn.sigmoid(
        (radius - r) / softness)
    return tau * inside, jnp.broadcast_to(jnp.asarray(color, jnp.float32), means.shape)
  return field_fn


def _render(field_fn, rays, **kwargs):
  kwargs = dict(dict(background_fn=WHITE, shading=shading.Shading.albedo_only(),
                     key=jax.random.PRNGKey(0), randomized=False, bound_radius=BOUND), **kwargs)
  key = kwargs.pop("key")
  return jax.jit(lambda r, k: render.render_rays(r, field_fn=field_fn, key=k, **kwargs))(
      rays, key)


def _chord(rays):
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  b = np.sum(o * d, -1)
  disc = b * b - (np.sum(o * o, -1) - BOUND**2)
  hit = disc > 0
  half = np.sqrt(np.maximum(disc, 0))
  near, far = np.maximum(-b - half, 0), np.maximum(-b + half, 0)
  return near, np.where(hit, far - near, 0.0)


def test_constant_medium_transmittance_alpha_depth_colour():
  """τ = c inside the bounding sphere: alpha = 1 − exp(−c L), depth and colour in closed form."""
  tau, color = 0.8, np.array([0.2, 0.5, 0.9])
  rays = cameras.generate_rays(_camera(width=16, distance=2.0, fov=80.0))
  out = _render(_constant_field(tau, color), rays, num_samples=256)
  near, length = _chord(rays)
  alpha = 1.0 - np.exp(-tau * length)
  assert length.min() == 0.0 and length.max() > 2.5  # some rays miss, some cross the middle
  # Exact in exact arithmetic; float32 sums of 256 optical depths carry ~1e-6 error.
  np.testing.assert_allclose(out.accumulated_alpha, alpha, atol=1e-5)
  # E[t | absorbed within the chord] for an exponential stopping time truncated at L.
  hit = length > 0.05
  length = np.where(hit, length, 1.0)  # keeps the closed form below finite on missed rays
  expected_depth = near + 1 / tau - length * np.exp(-tau * length) / (1 - np.exp(-tau * length))
  np.testing.assert_allclose(np.asarray(out.depth)[hit], expected_depth[hit], atol=1e-4)
  expected_rgb = alpha[..., None] * color + (1 - alpha[..., None])
  np.testing.assert_allclose(out.rgb, expected_rgb, atol=1e-5)


@pytest.mark.parametrize("num_importance", [0, 64])
def test_hard_sphere_alpha_and_depth(num_importance):
  """An opaque sphere of radius 0.5: alpha is its silhouette, depth the ray-sphere distance."""
  radius = 0.5
  camera = _camera(width=24, distance=2.0, fov=40.0)
  rays = cameras.generate_rays(camera)
  out = _render(_sphere_field(radius), rays, num_samples=128, num_importance=num_importance)
  o, d = np.asarray(rays.origins, np.float64), np.asarray(rays.directions, np.float64)
  b = np.sum(o * d, -1)
  disc = b * b - (np.sum(o * o, -1) - radius**2)
  hits = disc > 0
  margin = np.abs(np.sqrt(np.maximum(np.sum(o * o, -1) - b * b, 0)) - radius) > 0.02
  assert hits.sum() > 50 and (~hits).sum() > 50
  alpha = np.asarray(out.accumulated_alpha)
  np.testing.assert_allclose(alpha[hits & margin], 1.0, atol=1e-5)
  np.testing.assert_allclose(alpha[~hits & margin], 0.0, atol=1e-6)
  surface = -b - np.sqrt(np.maximum(disc, 0))
  # A stratified sample lands within one bin (2.8/128 ≈ 0.022) past the surface, midpoint
  # rule: half a bin on average; hierarchical samples concentrate near the surface.
  bin_width = 2 * BOUND / 128 if num_importance == 0 else 2 * BOUND / 128 / 4
  error = np.abs(np.asarray(out.depth) - surface)[hits & margin]
  assert error.max() < bin_width


def test_normals_of_a_spherical_density_point_outward():
  """For τ(x) = f(‖x‖) decreasing, n = −∇τ/‖∇τ‖ = x/‖x‖, by autodiff and finite differences."""
  def field_fn(means, cov_diag):
    r2 = jnp.sum(means**2, axis=-1)
    return 50.0 * jnp.exp(-r2 / 0.3), jnp.zeros_like(means)

  points = jax.random.normal(jax.random.PRNGKey(3), (200, 3)) * 0.5
  cov = jnp.full_like(points, 1e-3)
  radial = points / jnp.linalg.norm(points, axis=-1, keepdims=True)
  for method in ("autodiff", "finite_difference"):
    _, _, normals = field.density_normals(field_fn, points, cov, method=method)
    np.testing.assert_allclose(normals, radial, atol=1e-3)


def test_rendered_normals_face_the_camera_on_a_sphere():
  radius = 0.6
  camera = _camera(width=15, distance=2.0, fov=40.0)
  out = _render(_sphere_field(radius, tau=200.0, softness=0.02), cameras.generate_rays(camera),
                num_samples=128, num_importance=64)
  surface_points = np.asarray(camera.position) + np.asarray(out.depth)[..., None] * np.asarray(
      out.directions)
  expected = surface_points / np.linalg.norm(surface_points, axis=-1, keepdims=True)
  centre = np.asarray(out.accumulated_alpha) > 0.999
  normals = np.asarray(out.normals)[centre]
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  assert centre.sum() > 50
  assert np.min(np.sum(normals * expected[centre], -1)) > 0.99


def test_lambertian_shading_of_a_sphere():
  """Textureless sphere lit by a point light: colour = ambient + diffuse·max(0, n·l)."""
  radius = 0.6
  camera = _camera(width=15, distance=2.0, fov=40.0)
  light = jnp.array([1.0, 1.5, 1.2])
  lit = shading.Shading(light_position=light, ambient=jnp.array(0.1), diffuse=jnp.array(0.9),
                        textureless=jnp.array(1.0))
  out = _render(_sphere_field(radius, tau=2000.0, softness=0.003), cameras.generate_rays(camera),
                shading=lit, num_samples=128, num_importance=128)
  points = np.asarray(camera.position) + np.asarray(out.depth)[..., None] * np.asarray(
      out.directions)
  normal = points / np.linalg.norm(points, axis=-1, keepdims=True)
  to_light = np.asarray(light) - points
  to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
  expected = 0.1 + 0.9 * np.maximum(np.sum(normal * to_light, -1), 0)
  solid = np.asarray(out.accumulated_alpha) > 0.9999
  assert solid.sum() > 50 and np.ptp(expected[solid]) > 0.5
  for channel in range(3):
    np.testing.assert_allclose(np.asarray(out.rgb)[..., channel][solid], expected[solid],
                               atol=0.03)


def test_the_albedo_of_a_lit_render_is_the_albedo_only_render():
  """RenderOutput.albedo under textureless light = rgb of an albedo-only render of the same
  rays: one pass gives the previews' colour and shaded images (model.render_preview)."""
  def field_fn(means, cov_diag):  # a soft sphere whose colour varies over space
    density, _ = _sphere_field(0.5, tau=40.0, softness=0.05)(means, cov_diag)
    return density, jax.nn.sigmoid(3.0 * means[..., [2, 0, 1]])
  rays = cameras.generate_rays(_camera(width=12))
  sky = lambda directions: 0.5 + 0.5 * directions  # a background that varies too
  lit = shading.Shading(light_position=jnp.array([1.0, 1.5, 1.2]), ambient=jnp.array(0.2),
                        diffuse=jnp.array(0.8), textureless=jnp.array(1.0))
  shaded = _render(field_fn, rays, shading=lit, background_fn=sky, num_samples=48)
  plain = _render(field_fn, rays, background_fn=sky, num_samples=48, normals="none")
  alpha = np.asarray(plain.accumulated_alpha)
  assert alpha.max() > 0.9 and alpha.min() < 0.1  # opaque, translucent and empty rays
  assert np.abs(np.asarray(shaded.rgb) - np.asarray(shaded.albedo)).max() > 0.2
  np.testing.assert_allclose(shaded.albedo, plain.rgb, atol=1e-6)


def test_chunked_image_equals_one_pass():
  camera = _camera(width=10)
  kwargs = dict(field_fn=_sphere_field(0.5, tau=30.0, softness=0.05), background_fn=WHITE,
                shading=shading.Shading.albedo_only(), num_samples=32, randomized=False)
  render_image = lambda chunk: jax.jit(lambda k: render.render_image(
      camera, chunk=chunk, key=k, **kwargs))(jax.random.PRNGKey(0))
  whole, chunked = render_image(100), render_image(7)
  np.testing.assert_allclose(chunked.rgb, whole.rgb, atol=1e-6)
  np.testing.assert_allclose(chunked.depth, whole.depth, atol=1e-5)
  assert chunked.rgb.shape == (10, 10, 3)


def test_regularisers():
  directions = jnp.array([[0.0, 0.0, -1.0]])
  weights = jnp.array([[0.25, 0.5]])
  toward_camera = jnp.array([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
  away = jnp.array([[[0.0, 0.0, 1.0], [0.0, 0.6, -0.8]]])
  assert float(losses.orientation_loss(weights, toward_camera, directions)) == 0.0
  np.testing.assert_allclose(losses.orientation_loss(weights, away, directions), 0.5 * 0.64,
                             rtol=1e-6)
  grad = jax.grad(losses.orientation_loss)(weights, away, directions)
  assert float(jnp.abs(grad).sum()) == 0.0  # stopgrad(w): no gradient to the weights
  np.testing.assert_allclose(losses.opacity_loss(jnp.array([0.0, 1.0])),
                             0.5 * (0.1 + math.sqrt(1.01)), rtol=1e-6)


def test_light_and_shading_sampling():
  keys = jax.random.split(jax.random.PRNGKey(5), 20_000)
  camera_position = jnp.array([1.2, 0.0, 0.3])
  lights = jax.vmap(lambda k: shading.sample_light_position(k, camera_position))(keys)
  distance = np.linalg.norm(lights, axis=-1)
  assert distance.min() >= 0.8 and distance.max() <= 1.5
  assert abs(distance.mean() - 1.15) < 0.01
  # The direction is N(camera position, I): its mean leans towards the camera.
  assert np.mean(lights[:, 0]) > 0.3
  sample = jax.vmap(lambda k, warm: shading.sample_shading(k, camera_position,
                                                           albedo_only=warm), (0, None))
  after = sample(keys, jnp.array(False))
  shaded = np.asarray(after.diffuse) > 0
  textureless = np.asarray(after.textureless) > 0
  # Binomial standard errors at n = 20000 are below 0.0035.
  assert abs(shaded.mean() - 0.75) < 0.015
  assert abs(textureless.mean() - 0.375) < 0.015
  assert not np.any(textureless & ~shaded)
  during = sample(keys, jnp.array(True))
  assert np.all(np.asarray(during.ambient) == 1.0) and np.all(np.asarray(during.diffuse) == 0)


def test_render_gradient_matches_finite_differences_in_float64():
  """d(loss)/d(params) of field + renderer + regularisers vs central differences.

  The orientation loss holds its weights under stop_gradient, so its reference derivative
  keeps the weights fixed at the unperturbed parameters.
  """
  with jax.enable_x64(True):
    model = field.NeRFField(num_blocks=1, hidden_units=8, max_deg=3, blob_density=2.0)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.ones((1, 3)))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    rays = jax.tree.map(lambda x: x.reshape(-1, x.shape[-1])[::7].astype(jnp.float64),
                        cameras.generate_rays(_camera(width=8, distance=1.5, fov=50.0)))
    lit = shading.Shading(light_position=jnp.array([1.0, 1.0, 1.0]), ambient=0.1, diffuse=0.9,
                          textureless=0.0)
    target = jax.random.uniform(jax.random.PRNGKey(1), rays.origins.shape, jnp.float64)

    def render_with(p):
      return render.render_rays(rays, field_fn=functools.partial(model.apply, p),
                                background_fn=WHITE, shading=lit, key=jax.random.PRNGKey(2),
                                num_samples=16, cov_scale=0.01, randomized=True)

    def loss(p, orientation_weights=None):
      out = render_with(p)
      weights = out.weights if orientation_weights is None else orientation_weights
      return (jnp.sum((out.rgb - target)**2) + jnp.sum(out.depth) * 0.1
              + losses.orientation_loss(weights, out.sample_normals, out.directions)
              + losses.opacity_loss(out.accumulated_alpha))

    frozen_weights = jax.jit(render_with)(params).weights
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    grad = jax.flatten_util.ravel_pytree(jax.jit(jax.grad(loss))(params))[0]
    loss = jax.jit(loss)
    eps = 1e-6
    for i in range(3):
      direction = jax.random.normal(jax.random.PRNGKey(10 + i), flat.shape, jnp.float64)
      numeric = (loss(unravel(flat + eps * direction), frozen_weights)
                 - loss(unravel(flat - eps * direction), frozen_weights)) / (2 * eps)
      np.testing.assert_allclose(float(grad @ direction), float(numeric), rtol=1e-6)


def test_a_ray_that_misses_the_sphere_from_outside_renders_the_background_without_nan():
  # Origin (0, 0, 2) outside the bound sphere, pointing away: near = far = 0, and Mip-NeRF's
  # frustum moments (cov_scale=None) used to divide 0 by 0.
  rays = cameras.Rays(origins=jnp.array([[0.0, 0.0, 2.0]]),
                      directions=jnp.array([[0.0, 0.0, 1.0]]), radii=jnp.array([[1e-3]]))
  near, far = render.intersect_sphere(rays.origins, rays.directions, BOUND)
  assert float(near[0]) == float(far[0]) == 0.0
  nerf = field.NeRFField(num_blocks=1, hidden_units=8, max_deg=4)
  params = nerf.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.ones((1, 3)))

  def rgb_sum(p):
    out = render.render_rays(rays, field_fn=functools.partial(nerf.apply, p), background_fn=WHITE,
                             shading=shading.Shading.albedo_only(), key=jax.random.PRNGKey(0),
                             num_samples=8, bound_radius=BOUND, cov_scale=None, randomized=False)
    return jnp.sum(out.rgb), out

  (_, out), grads = jax.value_and_grad(rgb_sum, has_aux=True)(params)
  np.testing.assert_array_equal(np.asarray(out.rgb), [[1.0, 1.0, 1.0]])  # the background
  assert float(out.accumulated_alpha[0]) == 0.0 and float(out.depth[0]) == 0.0
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_the_field_evaluates_each_point_alone_whatever_the_batch_shape():
  # The field flattens its points into one batch for speed; each output must still be its own
  # point's, in the input's shape, and so must the normals taken through it.
  nerf = field.NeRFField(num_blocks=2, hidden_units=16, max_deg=4)
  means = jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 3), minval=-0.6, maxval=0.6)
  cov = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 3), minval=1e-4, maxval=1e-2)
  params = nerf.init(jax.random.PRNGKey(2), means[0, :1], cov[0, :1])
  field_fn = functools.partial(nerf.apply, params)
  density, albedo, normals = field.density_normals(field_fn, means, cov)
  assert density.shape == (2, 4) and albedo.shape == normals.shape == (2, 4, 3)
  for i in range(2):
    for j in range(4):
      one = field.density_normals(field_fn, means[i, j], cov[i, j])  # a single point, shape [3]
      assert one[0].shape == () and one[1].shape == one[2].shape == (3,)
      np.testing.assert_allclose(density[i, j], one[0], rtol=1e-5)
      np.testing.assert_allclose(albedo[i, j], one[1], rtol=1e-5)
      np.testing.assert_allclose(normals[i, j], one[2], atol=1e-5)
