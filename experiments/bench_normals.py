"""What the field's normals cost inside a training gradient, by three ways of computing them.

  python experiments/bench_normals.py                     # configs/bank.py's field at 32x32
  python experiments/bench_normals.py --blocks=5 --hidden=128 --resolution=64 --samples=64

n = -∇τ/‖∇τ‖ (DreamFusion §3.1) enters the loss through shading and the orientation loss, so
the step differentiates through it. Compared, each as `jax.grad` w.r.t. the field's parameters
of a loss on density, albedo and normals of R x R x S points:
  autodiff             reverse mode for ∇τ, so reverse over reverse in the step (dfjax's
                       default, `field.density_normals(method="autodiff")`);
  forward              three forward-mode tangents (one per axis, vmapped, sharing the
                       primal), so reverse over forward; tried here, not a library option;
  finite_difference    central differences, six more field evaluations (the library's
                       `method="finite_difference"`, as stable-dreamfusion does).
Prints XLA's FLOPs and bytes, the median time and the largest normal difference from
autodiff, and appends the table to experiments/results/bench.md.
"""
import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import append_table, time_call  # pylint: disable=g-import-not-at-top

from dfjax.scene import field as field_lib  # pylint: disable=g-import-not-at-top


def forward_mode_normals(field_fn, means, cov_diag):
  """Density, albedo and normals with ∇τ from three forward-mode tangents (one per axis)."""
  density, albedo = field_fn(means, cov_diag)
  tangents = jnp.broadcast_to(jnp.eye(3)[:, None, None, :], (3,) + means.shape)
  density_of = lambda points: field_fn(points, cov_diag)[0]
  gradient = jax.vmap(lambda t: jax.jvp(density_of, (means,), (t,))[1])(tangents)
  gradient = jnp.moveaxis(gradient, 0, -1)
  # The same 1e-20 as field.density_normals: a zero gradient gives a zero normal, not NaN.
  return density, albedo, -gradient / jnp.sqrt(jnp.sum(gradient**2, -1, keepdims=True) + 1e-20)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--blocks", type=int, default=3)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--samples", type=int, default=48)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  model = field_lib.NeRFField(num_blocks=args.blocks, hidden_units=args.hidden)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.ones((1, 3)))
  means = jax.random.uniform(jax.random.PRNGKey(1), (args.resolution**2, args.samples, 3),
                             minval=-0.5, maxval=0.5)
  cov_diag = jnp.full_like(means, 2e-3)
  methods = {
      "autodiff": functools.partial(field_lib.density_normals, method="autodiff"),
      "forward": forward_mode_normals,
      "finite_difference": functools.partial(field_lib.density_normals,
                                             method="finite_difference"),
  }
  reference = methods["autodiff"](functools.partial(model.apply, params), means, cov_diag)[2]
  rows = []
  for name, normals_fn in methods.items():
    def loss(p, normals_fn=normals_fn):
      density, albedo, normals = normals_fn(functools.partial(model.apply, p), means, cov_diag)
      return 1e-3 * jnp.sum(density) + jnp.sum(albedo) + jnp.sum(normals * jnp.array([3, 2, 1]))
    grad = jax.jit(jax.grad(loss))
    analysis = grad.lower(params).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    _, seconds = time_call(grad, params, repeats=args.repeats)
    normals = normals_fn(functools.partial(model.apply, params), means, cov_diag)[2]
    rows.append([name, f"{analysis['flops'] / 1e9:.2f}", f"{analysis['bytes accessed'] / 1e9:.2f}",
                 f"{seconds * 1e3:.0f}", f"{float(jnp.max(jnp.abs(normals - reference))):.1e}"])
  append_table(f"Normals inside the gradient ({args.resolution}x{args.resolution} rays, "
               f"{args.samples} samples, {args.blocks}x{args.hidden} field)",
               ["normals", "GFLOP", "GB accessed", "ms (median)", "max |n - n_autodiff|"], rows,
               command="python experiments/bench_normals.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  main()
