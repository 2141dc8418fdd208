"""Cost of the Stable Diffusion prior in one SDS step: time per call and XLA FLOPs.

DreamFusion (arXiv:2209.14988, App. A.2) trains 15,000 steps at 64x64 on 4 TPUv4 chips in about
1.5 hours and reports the time splitting about evenly between rendering and the diffusion
U-Net. With Stable Diffusion as the prior a step also runs the VAE encoder at 512x512 and its
backward pass (the SDS gradient flows through the encoder, never through the U-Net). This
script measures those pieces with the real SD 1.5 and SD 2.1-base architectures (configs as
in their `unet/config.json` and `vae/config.json`) and random weights: cost does not depend on
the weights' values, and nothing has to be downloaded.

Measured per step, for `--batch` renders of 64x64:
  unet:      the guided U-Net call of `predict_noise` (cond + uncond in one call, so the U-Net
             batch is 2 * batch; 64x64x4 latents, 77 prompt tokens);
  vae+grad:  `encode` (resize 64 -> 512, VAE encoder) and its gradient w.r.t. the renders;
  sds:       the whole prior side of a step, `jax.grad` of `dfjax.priors.sds.score_distillation`
             w.r.t. the renders.
FLOPs come from XLA's cost analysis of the compiled program (a multiply-add counts 2), time
is the median wall time of `--repeats` rounds after compilation and a warm-up call, every
piece called once a round, so a drifting machine load favours none.

Usage, with dfjax installed (`pip install -e .`). --quick is SD 1.5 only, unet and vae+grad,
one timed call each after a warm-up call (a few minutes on 2 CPU cores):
  python experiments/bench_prior.py --quick
  python experiments/bench_prior.py --pieces unet,vae+grad --repeats 1        # ~7 min on CPU
Everything (both models, three pieces; minutes on a GPU, long on a CPU):
  python experiments/bench_prior.py --dtypes float32,bfloat16 --repeats 5
The U-Net's attention variants and both dtypes, alternating (SD 1.5, about 15 min on 2 cores):
  python experiments/bench_prior.py --models sd15 --pieces unet,vae+grad \
      --dtypes float32,bfloat16 --attention dense,split_heads,chunked --repeats 2
The table is printed and appended to experiments/results/bench.md with the machine and date.
"""
import argparse
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from dfjax import cli
from dfjax.priors import diffusion
from dfjax.priors import sd_checkpoint
from dfjax.priors import sds
from dfjax.priors import stable_diffusion

# runwayml/stable-diffusion-v1-5 unet/config.json (the fields the Flax U-Net reads).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=8, cross_attention_dim=768, use_linear_projection=False)
# stabilityai/stable-diffusion-2-1-base unet/config.json: OpenCLIP-H text width 1024, heads of
# 64 channels, linear projections in the transformer blocks.
SD21BASE_UNET = dict(SD15_UNET, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                     use_linear_projection=True)
# The VAE shared by SD 1.x and 2.x (vae/config.json): 512x512 in, 64x64x4 latents out.
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=512, scaling_factor=0.18215)
MODELS = {"sd15": ("SD 1.5", SD15_UNET), "sd21base": ("SD 2.1-base", SD21BASE_UNET)}
TOKENS = 77  # CLIP's model_max_length for both models.
RENDER_SIZE = 64  # DreamFusion's render resolution.


def random_params(abstract, *, seed):
  """Random float32 weights for a Flax parameter tree (kernels ~ N(0, 1/fan_in)).

  Args:
    abstract: tree of jax.ShapeDtypeStruct (from jax.eval_shape of the model's init).
    seed: numpy seed.

  Returns:
    tree of np.ndarray float32 with the same structure.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    values = rng.standard_normal(leaf.shape, dtype=np.float32)
    if path[-1].key == "kernel":
      values *= 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    return values
  return jax.tree_util.tree_map_with_path(draw, abstract)


def build_prior(unet_config, *, dtype, attention="dense", params=None):
  """A StableDiffusionPrior with the given U-Net architecture and attention (a key of
  stable_diffusion.ATTENTION), SD's VAE, and random weights (or `params`, another such
  prior's: the attention does not change them)."""
  unet_class, vae_class = sd_checkpoint.flax_model_classes()
  compute_dtype = stable_diffusion.DTYPES[dtype]
  # An older dfjax (compare_step.py's old tree) has only diffusers' default attention.
  options = getattr(stable_diffusion, "ATTENTION", {"dense": {}})[attention]
  unet = unet_class.from_config(dict(unet_config, **options), dtype=compute_dtype)
  vae = vae_class.from_config(SD_VAE, dtype=compute_dtype)
  if params is not None:
    return _prior(unet, vae, params, compute_dtype, attention)
  key = jax.random.PRNGKey(0)
  vae_params = random_params(jax.eval_shape(vae.init_weights, key), seed=1)
  width = unet_config["cross_attention_dim"]
  embeddings = np.random.default_rng(2).standard_normal((5, TOKENS, width), dtype=np.float32)
  params = stable_diffusion.StableDiffusionParams(
      unet=random_params(jax.eval_shape(unet.init_weights, key), seed=0),
      vae_encoder={"encoder": vae_params["encoder"], "quant_conv": vae_params["quant_conv"]},
      text_embeddings=embeddings[:4], uncond_embedding=embeddings[4:])
  return _prior(unet, vae, stable_diffusion.cast_floating(params, compute_dtype), compute_dtype,
                attention)


def _prior(unet, vae, params, compute_dtype, attention):
  # An older dfjax's prior has no attention argument (its module fields chose it).
  extra = {"attention": attention} if hasattr(stable_diffusion, "attention_scope") else {}
  return stable_diffusion.StableDiffusionPrior(
      unet=unet, vae=vae, params=params, alphas_cumprod=diffusion.alphas_cumprod_from_config(),
      image_size=RENDER_SIZE, latent_space=stable_diffusion.latent_space_of(unet, vae),
      prediction_type="epsilon",
      compute_dtype=compute_dtype, prompts=["random"] * 5, **extra)


def workloads(prior, *, batch):
  """{name: (function, args)} of the measured pieces of a step, for `batch` renders."""
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(size=(batch, RENDER_SIZE, RENDER_SIZE, 3)), jnp.float32)
  space = prior.latent_space
  latent_shape = (batch, space.latent_size, space.latent_size, space.latent_channels)
  x_t = jnp.asarray(rng.standard_normal(latent_shape), jnp.float32)
  timesteps = jnp.full((batch,), 500, jnp.int32)
  buckets = jnp.zeros((batch,), jnp.int32)
  cotangent = jnp.asarray(rng.standard_normal(latent_shape), jnp.float32)

  def unet_call(params, x_t):
    return prior.predict_noise(params, x_t, timesteps, buckets)

  def vae_and_grad(params, images):
    return jax.value_and_grad(lambda im: jnp.sum(prior.encode(params, im) * cotangent))(images)

  def sds_grad(params, images):
    return jax.grad(lambda im: sds.score_distillation(
        prior, params, im, buckets, jax.random.PRNGKey(0)).loss)(images)

  return {"unet": (unet_call, (prior.params, x_t)),
          "vae+grad": (vae_and_grad, (prior.params, images)),
          "sds": (sds_grad, (prior.params, images))}


def compile_piece(function, args):
  """(compiled function, its args, compile seconds, GFLOPs from XLA's cost analysis)."""
  start = time.perf_counter()
  compiled = jax.jit(function).lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, args, compile_s, float(cost.get("flops", float("nan"))) / 1e9


def time_alternately(jobs, *, repeats):
  """Times every job once per round, round after round, so a drifting load favours none.

  Args:
    jobs: list of (row dict, compiled function, args, compile seconds, GFLOPs).
    repeats: timed rounds, after one untimed warm-up call of each job.

  Returns:
    the row dicts with compile_s, gflops and seconds (median over the rounds) added.
  """
  seconds = common.time_alternately(
      {i: lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
       for i, (_, compiled, args, _, _) in enumerate(jobs)}, rounds=repeats)
  return [dict(row, compile_s=compile_s, gflops=gflops, seconds=seconds[i])
          for i, (row, _, _, compile_s, gflops) in enumerate(jobs)]


def format_table(rows):
  """Markdown table of the measurements."""
  lines = ["| model | dtype | attention | batch | piece | GFLOPs | compile s | s / call | "
           "GFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['model']} | {row['dtype']} | {row['attention']} | {row['batch']} | "
                 f"{row['piece']} | "
                 f"{row['gflops']:.1f} | {row['compile_s']:.1f} | {row['seconds']:.3f} | "
                 f"{row['gflops'] / row['seconds']:.1f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="sd15,sd21base",
                      help=f"comma-separated, from {sorted(MODELS)}")
  parser.add_argument("--dtypes", default="float32",
                      help=f"comma-separated, from {sorted(stable_diffusion.DTYPES)}")
  parser.add_argument("--attention", default="deferred_softmax",
                      help=f"comma-separated, from {list(stable_diffusion.ATTENTION)} (the "
                      "U-Net's; vae+grad is timed once per dtype)")
  parser.add_argument("--batch", type=int, default=1, help="renders per step")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed rounds (every piece once a round, after a warm-up call)")
  parser.add_argument("--pieces", default="unet,vae+grad,sds",
                      help="comma-separated, from unet, vae+grad, sds")
  parser.add_argument("--quick", action="store_true",
                      help="same as --models sd15 --pieces unet,vae+grad --repeats 1")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "bench.md"))
  args = parser.parse_args(argv)
  if args.quick:
    args.models, args.pieces, args.repeats = "sd15", "unet,vae+grad", 1
  names, pieces = args.models.split(","), args.pieces.split(",")
  dtypes, attentions = args.dtypes.split(","), args.attention.split(",")
  unknown = ([n for n in names if n not in MODELS]
             + [p for p in pieces if p not in ("unet", "vae+grad", "sds")]
             + [d for d in dtypes if d not in stable_diffusion.DTYPES]
             + [a for a in attentions if a not in stable_diffusion.ATTENTION])
  if unknown:
    parser.error(f"unknown model(s), piece(s), dtype(s) or attention(s) {unknown}; see --help")
  rows = []
  for name in names:
    label, unet_config = MODELS[name]
    jobs = []
    for dtype in dtypes:
      base = None
      for attention in attentions:
        prior = build_prior(unet_config, dtype=dtype, attention=attention,
                            params=base.params if base else None)
        base = base or prior
        for piece, (function, fn_args) in workloads(prior, batch=args.batch).items():
          if piece not in pieces or (piece == "vae+grad" and attention != attentions[0]):
            continue
          row = dict(model=label, dtype=dtype, batch=args.batch, piece=piece,
                     attention="–" if piece == "vae+grad" else attention)
          jobs.append((row, *compile_piece(function, fn_args)))
          print(f"compiled {row}", flush=True)
    rows += time_alternately(jobs, repeats=args.repeats)
    print(format_table(rows), flush=True)
    del jobs, prior, base
  table = format_table(rows)
  header = (f"\n## Stable Diffusion prior cost ({datetime.date.today().isoformat()})\n\n"
            f"Machine: {common.machine()}. Command: `python experiments/bench_prior.py "
            f"{' '.join(argv if argv is not None else sys.argv[1:])}`. Random weights; "
            f"renders {RENDER_SIZE}x{RENDER_SIZE}, VAE at 512x512, latents 64x64x4; "
            "s / call is the median after compilation.\n\n")
  print("\n" + table)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "a", encoding="utf-8") as f:
    f.write(header + table + "\n\n")


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
