"""Forward+backward throughput of the field and renderer (rays × samples per second).

  python experiments/bench_render.py                 # the paper's field at 64×64
  python experiments/bench_render.py --resolution=32 --samples=48 --blocks=3 --hidden=64

Times one jitted gradient of a loss on a rendered view (normals by autodiff, Lambertian
shading, orientation and opacity regularisers: what a training step differentiates, minus the
prior) and prints a table that is appended to experiments/results/bench.md.
"""
import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_table, time_call  # pylint: disable=g-import-not-at-top

from dfjax import cli  # pylint: disable=g-import-not-at-top
from dfjax.scene import background
from dfjax.scene import cameras
from dfjax.scene import field
from dfjax.scene import losses
from dfjax.scene import render
from dfjax.scene import shading


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--samples", type=int, nargs="+", default=[64])
  parser.add_argument("--blocks", type=int, default=5)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--normals", default="autodiff")
  args = parser.parse_args()

  model = field.NeRFField(num_blocks=args.blocks, hidden_units=args.hidden)
  env = background.EnvironmentMap()
  params = {"field": model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.ones((1, 3))),
            "background": env.init(jax.random.PRNGKey(1), jnp.ones((1, 3)))}
  camera = cameras.camera_from_angles(azimuth_deg=30.0, elevation_deg=20.0, distance=1.3,
                                      fov_deg=45.0, width=args.resolution,
                                      height=args.resolution)
  lit = shading.Shading(light_position=jnp.array([1.0, 1.0, 1.0]), ambient=jnp.array(0.1),
                        diffuse=jnp.array(0.9), textureless=jnp.array(0.0))
  rows = []
  for num_samples in args.samples:
    def loss(p, key, num_samples=num_samples):
      out = render.render_image(camera, key=key,
                                field_fn=functools.partial(model.apply, p["field"]),
                                background_fn=functools.partial(env.apply, p["background"]),
                                shading=lit, num_samples=num_samples, cov_scale=2e-3,
                                normals=args.normals)
      return (jnp.mean(out.rgb) + losses.orientation_loss(out.weights, out.sample_normals,
                                                          out.directions)
              + losses.opacity_loss(out.accumulated_alpha))
    forward = jax.jit(loss)
    backward = jax.jit(jax.grad(loss))
    key = jax.random.PRNGKey(2)
    compile_f, seconds_f = time_call(forward, params, key)
    compile_b, seconds_b = time_call(backward, params, key)
    points = args.resolution**2 * num_samples
    rows.append([f"{args.resolution}x{args.resolution}", num_samples,
                 f"{args.blocks}x{args.hidden}", args.normals, f"{seconds_f * 1e3:.0f}",
                 f"{seconds_b * 1e3:.0f}", f"{points / seconds_b / 1e6:.2f}",
                 f"{compile_f + compile_b:.1f}"])
  append_table("Field + renderer, forward and forward+backward", [
      "image", "samples/ray", "MLP", "normals", "forward ms", "fwd+bwd ms",
      "M ray-samples/s (fwd+bwd)", "compile s"], rows,
      command="python experiments/bench_render.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
