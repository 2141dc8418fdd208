"""Time per training step, split into its parts, for the toy and the Stable Diffusion setups.

  python experiments/bench_step.py --setup=toy            # configs/toy.py
  python experiments/bench_step.py --setup=sd15           # dreamfusion.py, SD 1.5 size
  python experiments/bench_step.py --setup=sd15 --steps=3 # fewer timed steps (slow CPUs)

The Stable Diffusion setup builds the true SD 1.5 U-Net and VAE from their configs with
random weights (no download), in bfloat16 as configs/dreamfusion.py does. Parts are timed as
separate jitted functions on one device's work (one view): render forward, render
forward+backward, the prior's SDS call (VAE encode, guided U-Net, and the encoder's
gradient), and the whole step; "update and rest" is the whole step minus the other two.
The table is printed and appended to experiments/results/bench.md.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_table, time_call  # pylint: disable=g-import-not-at-top

from configs import dreamfusion, toy as toy_config
from dfjax import cli  # pylint: disable=g-import-not-at-top
from dfjax.priors import sds
from dfjax.train import model as model_lib
from dfjax.train import prior_setup
from dfjax.train import step as step_lib


def setup(name: str, attention: str | None = None):
  """(config, prior, camera kwargs): configs/toy.py, or configs/dreamfusion.py with a random
  SD 1.5 or SD 2.1-base prior (the U-Net's attention as given, else the config's)."""
  if name == "toy":
    config = toy_config.get_config()
    prior, camera_kwargs = prior_setup.build_prior(config)
    return config, prior, camera_kwargs
  import bench_prior  # pylint: disable=g-import-not-at-top
  config = dreamfusion.get_config()
  config.prior.attention = attention or config.prior.attention
  prior = bench_prior.build_prior(bench_prior.MODELS[name][1], dtype=config.prior.dtype,
                                 attention=config.prior.attention)
  return config, prior, prior_setup.camera_kwargs_from_config(config)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setup", choices=("toy", "sd15", "sd21base"), default="toy")
  parser.add_argument("--steps", type=int, default=5, help="timed repeats of each part")
  args = parser.parse_args()
  config, prior, camera_kwargs = setup(args.setup)
  scene = model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)
  optimizer = step_lib.create_optimizer(config)
  state = step_lib.create_train_state(scene, optimizer, jax.random.PRNGKey(0))
  key, step = jax.random.PRNGKey(1), jnp.asarray(2000)
  render = lambda params: model_lib.render_view(scene, params, key, step)[0].rgb
  render_forward = jax.jit(render)
  render_backward = jax.jit(jax.grad(lambda params: jnp.sum(render(params))))
  image = render_forward(state.params)
  prior_call = jax.jit(jax.grad(lambda im, p: sds.score_distillation(
      prior, p, im[None], jnp.zeros((1,), jnp.int32), key,
      guidance_scale=config.prior.guidance_scale).loss))
  mesh = step_lib.make_mesh(jax.devices()[:1])
  train_step = step_lib.make_train_step(scene, optimizer, mesh)
  replicated = step_lib.replicate(prior.params, mesh)
  step_state = [step_lib.replicate(state, mesh)]

  def whole_step():
    step_state[0], metrics = train_step(step_state[0], replicated)
    return metrics

  timings = {
      "render forward": time_call(render_forward, state.params, repeats=args.steps),
      "render fwd+bwd": time_call(render_backward, state.params, repeats=args.steps),
      "prior (SDS, with encoder grad)": time_call(prior_call, image, prior.params,
                                                  repeats=args.steps),
      "whole step": time_call(whole_step, repeats=args.steps),
  }
  rest = timings["whole step"][1] - timings["render fwd+bwd"][1] - timings[
      "prior (SDS, with encoder grad)"][1]
  rows = [[name, f"{seconds * 1e3:.1f}", f"{compile_seconds:.1f}"]
          for name, (compile_seconds, seconds) in timings.items()]
  # Timed apart, the parts can exceed the whole step: inside one program XLA schedules the
  # render and the prior together. Then the remainder is not measurable this way.
  rows.append(["update and rest (whole − render − prior)",
               f"{rest * 1e3:.1f}" if rest > 0 else "n/a (parts timed apart exceed the step)",
               "–"])
  append_table(f"Training step parts, {args.setup} (one view per device)",
               ["part", "ms per call", "compile s"], rows,
               command="python experiments/bench_step.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
