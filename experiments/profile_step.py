"""The train step, part by part: XLA's FLOPs and bytes, and times, of each part on its own.

  python experiments/profile_step.py                       # toy, bank and paper setups
  python experiments/profile_step.py --setups=toy --repeats=3
  python experiments/profile_step.py --setups=sd15 --repeats=2   # ~8 min on 2 CPU cores
  python experiments/profile_step.py --setups=bank --ops=20       # the step's costliest ops

Setups: toy (configs/toy.py), bank (configs/bank.py's field and samples on the toy bank),
paper (the paper's field at 64x64 with the closed-form prior) and sd15 (the work of
stable-dreamfusion's CPU step: SD 1.5's U-Net and VAE with random weights in float32, 64x64
renders encoded at 512 with the encoder's gradient, guidance 100, a 3x64 field, 96 samples;
the step is timed at step 0, an albedo-only view of the warm-up, with its orientation loss and
so its normals, as the paper), and sd15_albedo (the same, albedo-only views without the
orientation loss and so without normals, as stable-dreamfusion's albedo-only step).

Each part is jitted on its own with the shapes one device's view has in the setup (one
render of R x R rays and S samples per ray), forward and backward as the step runs it:

  ipe              integrated positional encoding of every sample (Mip-NeRF), fwd+bwd
  mlp              the residual MLP and output layer on those features, fwd+bwd
  field            both, plus the density blob and activations (one field evaluation)
  field+normals    the field with normals by the configured method (the step's field work)
  compositing      weights (NeRF Eq. 3), Lambertian shading, compositing, fwd+bwd
  orientation      the orientation and opacity regularisers, fwd+bwd
  render           the whole view: rays, samples, field+normals, compositing, regularisers
  sds              the prior's SDS surrogate of the rendered image, fwd+bwd (for sd15: the VAE
                   encode, the guided U-Net and the encoder's gradient; bench_prior.py times
                   the U-Net and the VAE apart)
  update           Adam on the gradients, with the non-finite guard
  step             the whole jitted train step (`train.step.make_train_step`, one device)

FLOPs and bytes come from XLA's cost analysis of each compiled part (machine-independent
given the XLA version); times are medians after compilation and depend on the machine's load.
The floor of a part is max(FLOPs / peak FLOP/s, bytes / bandwidth) for the --gflops and
--gbytes given. Parts overlap (field+normals contains field, render contains all the scene
parts), so they do not add up to the step. Prints a table and appends it to
experiments/results/bench.md.

--ops=N instead traces a few whole steps with jax.profiler and prints the N XLA operations
that took the most time per step, each with its output shape and the JAX operation it came
from (nothing is appended). That is how fusions that recompute their inputs show up: a
fusion whose time is far above what its output's size explains.
"""
import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import append_table, time_call  # pylint: disable=g-import-not-at-top

from configs import bank as bank_config  # pylint: disable=g-import-not-at-top
from configs import dreamfusion  # pylint: disable=g-import-not-at-top
from configs import toy as toy_config  # pylint: disable=g-import-not-at-top
from dfjax import cli  # pylint: disable=g-import-not-at-top
from dfjax.priors import sds  # pylint: disable=g-import-not-at-top
from dfjax.scene import field as field_lib  # pylint: disable=g-import-not-at-top
from dfjax.scene import losses  # pylint: disable=g-import-not-at-top
from dfjax.scene import mip  # pylint: disable=g-import-not-at-top
from dfjax.scene import render as render_lib  # pylint: disable=g-import-not-at-top
from dfjax.scene import shading as shading_lib  # pylint: disable=g-import-not-at-top
from dfjax.train import model as model_lib  # pylint: disable=g-import-not-at-top
from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
from dfjax.train import step as step_lib  # pylint: disable=g-import-not-at-top


def setup_config(name: str):
  """The config of a setup: the toy quick start, a user's 32x32 bank, the paper's field."""
  if name == "toy":
    return toy_config.get_config()
  if name == "bank":  # configs/bank.py's field and samples, on the toy bank as a plain bank
    config = bank_config.get_config()
    config.prior.kind, config.prompt = "toy", "a yellow duck"
    config.toy = toy_config.get_config().toy
    return config
  if name == "paper":  # the paper's field at 64x64, with the closed-form prior (no SD here)
    config = dreamfusion.get_config()
    config.prior.kind, config.prompt = "toy", "a yellow duck"
    config.toy = toy_config.get_config().toy
    config.toy.resolution = 64
    return config
  if name == "sd15":  # stable-dreamfusion's CPU work: SD 1.5 (random weights, float32), 3x64
    config = dreamfusion.get_config()  # field, 64 + 32 samples per ray as 96 uniform
    config.prior.dtype = "float32"
    config.field.num_blocks, config.field.hidden_units = 3, 64
    config.render.num_samples = 96
    return config
  if name == "sd15_albedo":  # the same with albedo-only views, as the first comparison;
    config = setup_config("sd15")  # no orientation loss in them, as stable-dreamfusion (a
    config.shading.shaded_prob = 0.0  # dfjax that predates the option keeps both)
    if "orientation_in_albedo_views" in config.loss:
      config.loss.orientation_in_albedo_views = False
    return config
  raise SystemExit(f"error: unknown setup {name!r}; use toy, bank, paper, sd15 or sd15_albedo")


def cost(fn, *args):
  """(GFLOPs, GB accessed) of a jitted function from XLA's cost analysis."""
  analysis = fn.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return analysis.get("flops", 0.0) / 1e9, analysis.get("bytes accessed", 0.0) / 1e9


def vjp_of(fn):
  """A jitted fwd+bwd of `fn` (arguments -> pytree of arrays) with ones as the cotangent."""
  def forward_backward(*args):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(jax.tree.map(jnp.ones_like, out))
  return jax.jit(forward_backward)


def scene_parts(config, scene, params):
  """{part: (jitted fn, args)} of the scene's parts on one view's samples."""
  f = config.field
  resolution = scene.camera_kwargs["width"]
  rays, samples = resolution * resolution, config.render.num_samples
  key = jax.random.PRNGKey(0)
  means = jax.random.uniform(key, (rays, samples, 3), minval=-0.5, maxval=0.5)
  cov = jnp.full_like(means, f.cov_scale_end)
  field_fn = lambda p, m: scene.field.apply(p, m, cov)
  features = mip.integrated_pos_enc(means, cov, min_deg=0, max_deg=f.max_deg)
  mlp = field_lib.ResidualMLP(f.num_blocks, f.hidden_units)
  mlp_params = mlp.init(key, features[:1, :1])
  normals = lambda p, m: field_lib.density_normals(functools.partial(scene.field.apply, p), m,
                                                   cov, method=config.render.normals)
  t_edges = jnp.broadcast_to(jnp.linspace(0.2, 1.6, samples + 1), (rays, samples + 1))
  density, albedo = field_fn(params["field"], means)
  lit = shading_lib.Shading(light_position=jnp.ones(3), ambient=jnp.array(0.1),
                            diffuse=jnp.array(0.9), textureless=jnp.array(0.0))
  unit = means / jnp.linalg.norm(means, axis=-1, keepdims=True)

  def compositing(density, albedo):
    weights = render_lib.compositing_weights(density, t_edges)
    return render_lib.composite(weights, shading_lib.shade(albedo, unit, means, lit))

  def regularisers(density):
    weights = render_lib.compositing_weights(density, t_edges)
    return (losses.orientation_loss(weights, unit, unit[:, 0])
            + losses.opacity_loss(jnp.sum(weights, axis=-1)))

  def render(p):
    out, _ = model_lib.render_view(scene, p, key, jnp.int32(config.shading.albedo_warmup_steps))
    return (out.rgb, losses.orientation_loss(out.weights, out.sample_normals, out.directions))

  return {
      "ipe": (vjp_of(lambda m, v: mip.integrated_pos_enc(m, v, min_deg=0, max_deg=f.max_deg)),
              (means, cov)),
      "mlp": (vjp_of(mlp.apply), (mlp_params, features)),
      "field": (vjp_of(field_fn), (params["field"], means)),
      "field+normals": (vjp_of(normals), (params["field"], means)),
      "compositing": (vjp_of(compositing), (density, albedo)),
      "orientation": (vjp_of(regularisers), (density,)),
      "render": (vjp_of(render), (params,)),
  }


def step_parts(config, scene, state, prior_params):
  """{part: (jitted fn, args)} of the prior's SDS, the update and the whole step."""
  optimizer = step_lib.create_optimizer(config)
  resolution = scene.camera_kwargs["width"]
  image = jnp.full((1, resolution, resolution, 3), 0.5)
  bucket = jnp.zeros((1,), jnp.int32)
  # The prior's parameters are an argument, not constants of the program (SD's are 4 GB).
  surrogate = lambda image, prior_params: sds.score_distillation(
      scene.prior, prior_params, image, bucket, jax.random.PRNGKey(1),
      guidance_scale=config.prior.guidance_scale, t_range=tuple(config.prior.t_range),
      weighting=config.prior.weighting).loss
  grads = jax.tree.map(jnp.ones_like, state.params)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  train_step = step_lib.make_train_step(scene, optimizer, mesh)
  replicated = step_lib.replicate(state, mesh)
  prior_replicated = step_lib.replicate(prior_params, mesh)
  return {
      "sds": (jax.jit(jax.value_and_grad(surrogate)), (image, prior_params)),
      "update": (jax.jit(functools.partial(step_lib.apply_gradients, optimizer=optimizer)),
                 (state, grads)),
      "step": (train_step, (replicated, prior_replicated)),
  }


def build(name: str):
  """(config, scene, a fresh TrainState, prior parameters) of a setup."""
  config = setup_config(name)
  if name.startswith("sd15"):
    import bench_prior  # pylint: disable=g-import-not-at-top
    prior = bench_prior.build_prior(bench_prior.SD15_UNET, dtype=config.prior.dtype,
                                    attention=config.prior.get("attention", "dense"))
    camera_kwargs = prior_setup.camera_kwargs_from_config(config)
  else:
    prior, camera_kwargs = prior_setup.build_prior(config)
  scene = model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)
  state = step_lib.create_train_state(scene, step_lib.create_optimizer(config),
                                      jax.random.PRNGKey(0))
  return config, scene, state, prior.params


def measure(part: str, fn, args, *, repeats: int):
  """(GFLOP, GB accessed, median seconds) of one part."""
  flops, bytes_ = cost(fn, *args)
  timed = fn
  if part == "step":  # the step donates its state: give every call a fresh copy
    timed = lambda s, p: fn(jax.tree.map(jnp.copy, s), p)
  _, seconds = time_call(timed, *args, repeats=repeats)
  return flops, bytes_, seconds


def train_step_cost(name: str, *, repeats: int):
  """(GFLOP, GB accessed, median seconds) of one device's jitted train step in a setup."""
  config, scene, state, prior_params = build(name)
  fn, args = step_parts(config, scene, state, prior_params)["step"]
  return measure("step", fn, args, repeats=repeats)


def profile(name: str, *, repeats: int, gflops: float, gbytes: float):
  config, scene, state, prior_params = build(name)
  parts = dict(scene_parts(config, scene, state.params),
               **step_parts(config, scene, state, prior_params))
  resolution, f = scene.camera_kwargs["width"], config.field
  label = (f"{name} ({resolution}x{resolution}, {config.render.num_samples} samples, "
           f"{f.num_blocks}x{f.hidden_units} field, normals {config.render.normals})")
  rows = []
  for part, (fn, args) in parts.items():
    flops, bytes_, seconds = measure(part, fn, args, repeats=repeats)
    floor = max(flops / gflops, bytes_ / gbytes)
    rows.append([label, part, f"{flops:.2f}", f"{bytes_:.2f}", f"{seconds * 1e3:.0f}",
                 f"{floor * 1e3:.0f}", f"{seconds / floor:.1f}" if floor else "-"])
    label = ""
    print(f"{name} {part}: {flops:.2f} GFLOP, {bytes_:.2f} GB, {seconds * 1e3:.0f} ms",
          flush=True)
  return rows


def top_ops(name: str, *, count: int, steps: int = 3) -> list[str]:
  """Lines "ms per step, op, output shape, JAX op" of a setup's costliest XLA operations.

  Traces `steps` train steps with jax.profiler and sums each XLA operation's time from the
  trace's events; the shape and origin come from the compiled step's HLO text.
  """
  config, scene, state, prior_params = build(name)
  fn, (state, *rest) = step_parts(config, scene, state, prior_params)["step"]
  compiled = fn.lower(state, *rest).compile()
  fresh = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, state))  # the step donates
  jax.block_until_ready(compiled(fresh(), *rest))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        jax.block_until_ready(compiled(fresh(), *rest))
    trace_file = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]
  hlo = {}
  for line in compiled.as_text().splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (\S+)", line)
    if match:
      origin = re.search(r'op_name="([^"]*)"', line)
      hlo[match.group(1)] = (match.group(2), origin.group(1) if origin else "")
  seconds = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in hlo:
      seconds[event["name"]] += event["dur"] / 1e6 / steps
  return [f"{t * 1e3:8.2f} ms  {op:32s} {hlo[op][0][:28]:28s} {hlo[op][1][-80:]}"
          for op, t in seconds.most_common(count)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default="toy,bank,paper")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--gflops", type=float, default=70.0, help="peak GFLOP/s of the machine")
  parser.add_argument("--gbytes", type=float, default=20.0, help="memory bandwidth, GB/s")
  parser.add_argument("--ops", type=int, default=0,
                      help="print the step's N costliest XLA operations instead")
  args = parser.parse_args()
  if args.ops:
    for name in args.setups.split(","):
      print(f"{name}: the step's costliest XLA operations (time per step, output, origin)")
      print("\n".join(top_ops(name, count=args.ops)))
    return
  rows = []
  for name in args.setups.split(","):
    rows += profile(name, repeats=args.repeats, gflops=args.gflops, gbytes=args.gbytes)
  append_table(
      "The step, part by part (XLA cost analysis; one device's view)",
      ["setup", "part", "GFLOP", "GB accessed", "ms (median)",
       f"floor ms ({args.gflops:g} GFLOP/s, {args.gbytes:g} GB/s)", "x floor"], rows,
      command="python experiments/profile_step.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
