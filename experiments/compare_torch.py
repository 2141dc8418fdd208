"""The Stable Diffusion prior's side of a step under PyTorch and under dfjax, alternating.

  python experiments/compare_torch.py [--rounds=2] [--step]   # ~8 min on 2 CPU cores

The PyTorch reproductions of DreamFusion (stable-dreamfusion among them) run Stable Diffusion
through diffusers' PyTorch models. Their step spends most of its time in two pieces, which
this script times with diffusers' own PyTorch classes beside dfjax's jitted equivalents, on the
same machine, one call of each in turn, round after round:
  unet:      the guided U-Net call (cond + uncond as one batch of 2, 64x64x4 latents, 77 prompt
             tokens, guidance 100), without gradient (torch.no_grad; dfjax's U-Net is under
             stop_gradient);
  vae+grad:  64x64 renders resized bilinearly to 512x512, the VAE encoder, and the gradient of
             <latents, cotangent> w.r.t. the renders;
  sds:       the whole prior side: both of the above plus the noising and w(t)(eps_hat - eps),
             back-propagated to the renders (stable-dreamfusion's `train_step` of its SD guidance
             with `latents.backward(gradient=grad)`; dfjax's `score_distillation` under jax.grad).
Both sides: SD 1.5's U-Net and VAE configs (bench_prior.py), random weights, float32, each
framework's default attention (PyTorch: scaled_dot_product_attention through diffusers'
AttnProcessor2_0; dfjax: config.prior.attention's default). PyTorch uses every CPU thread.

The issue that asked for this speed timed stable-dreamfusion on another machine: its guided
U-Net call 12.1 s, its VAE encode with gradient 18.9 s, and its whole albedo-only step
40.0-41.9 s (`ISSUE_SECONDS`). The PyTorch pieces timed here give that machine's speed
relative to this one for the same PyTorch code, so the script prints stable-dreamfusion's step
scaled to this machine. With --step it then times dfjax's whole train step on the same work
(profile_step.py's sd15_albedo setup, in a fresh process once the PyTorch models are freed).

Needs torch (the `test` extra installs a CPU build). Appends its table to
experiments/results/bench.md.
"""
import argparse
import gc
import importlib.util
import os
import subprocess
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_prior  # pylint: disable=g-import-not-at-top,wrong-import-position
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

from dfjax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import dreamfusion  # pylint: disable=g-import-not-at-top,wrong-import-position

PIECES = ("unet", "vae+grad", "sds")
# The issue's stable-dreamfusion figures on its machine (float32, 2 CPU cores): seconds per call
# of the two pieces timed apart, and the whole albedo-only step's range.
ISSUE_SECONDS = {"unet": 12.1, "vae+grad": 18.9}
ISSUE_STEP_SECONDS = (40.0, 41.9)
GUIDANCE = 100.0
TIMESTEP = 500


def torch_pieces(*, seed: int = 0):
  """{piece: a function of no arguments running it once} with diffusers' PyTorch SD 1.5 U-Net
  and VAE (random weights, float32), as a PyTorch DreamFusion step calls them."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  from diffusers import AutoencoderKL, UNet2DConditionModel  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(seed)
  unet = UNet2DConditionModel(**bench_prior.SD15_UNET).eval().requires_grad_(False)
  vae = AutoencoderKL(**bench_prior.SD_VAE).eval().requires_grad_(False)
  size = bench_prior.RENDER_SIZE
  embeddings = torch.randn(2, bench_prior.TOKENS, bench_prior.SD15_UNET["cross_attention_dim"])
  x_t = torch.randn(1, 4, 64, 64)
  cotangent = torch.randn(1, 4, 64, 64)
  images = torch.rand(1, 3, size, size)
  alpha_bar = torch.tensor(0.5)  # the noise level does not change the cost
  timestep = torch.tensor([TIMESTEP])

  def guided_noise(latents):
    with torch.no_grad():
      eps = unet(torch.cat([latents, latents]), timestep, encoder_hidden_states=embeddings).sample
      uncond, cond = eps.chunk(2)
      return uncond + GUIDANCE * (cond - uncond)

  def encode(renders):
    pixels = F.interpolate(renders, (512, 512), mode="bilinear", align_corners=False)
    return vae.encode(pixels * 2 - 1).latent_dist.sample() * bench_prior.SD_VAE["scaling_factor"]

  def vae_and_grad():
    renders = images.clone().requires_grad_(True)
    encode(renders).backward(gradient=cotangent)
    return renders.grad

  def sds():
    renders = images.clone().requires_grad_(True)
    latents = encode(renders)
    noise = torch.randn_like(latents)
    noisy = alpha_bar.sqrt() * latents.detach() + (1 - alpha_bar).sqrt() * noise
    grad = (1 - alpha_bar) * (guided_noise(noisy) - noise)
    latents.backward(gradient=grad)
    return renders.grad

  return {"unet": lambda: guided_noise(x_t), "vae+grad": vae_and_grad, "sds": sds}


def dfjax_pieces():
  """{piece: a function of no arguments running it once}: bench_prior.py's jitted pieces on
  the SD 1.5-size prior with the default config's attention, float32."""
  attention = dreamfusion.get_config().prior.attention
  prior = bench_prior.build_prior(bench_prior.SD15_UNET, dtype="float32", attention=attention)
  calls = {}
  for piece, (function, args) in bench_prior.workloads(prior, batch=1).items():
    compiled, args, _, _ = bench_prior.compile_piece(function, args)
    calls[piece] = lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args))
  return calls, attention


STEP_TIMER = """
import sys
sys.path.insert(0, sys.argv[1])
import profile_step
print(profile_step.train_step_cost("sd15_albedo", repeats=int(sys.argv[2]))[2])
"""


def dfjax_step_seconds(*, repeats: int) -> float:
  """Median seconds of dfjax's whole train step on the same work (a fresh process)."""
  env = dict(os.environ, DFJAX_COMPILATION_CACHE="off")
  env = cli.huge_pages_environment(env) or env
  out = subprocess.run([sys.executable, "-c", STEP_TIMER, os.path.dirname(__file__),
                        str(repeats)], cwd=common.REPO, env=env, check=True,
                       capture_output=True, text=True).stdout
  return float(out.split()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2, help="timed rounds after a warm-up")
  parser.add_argument("--step", action="store_true",
                      help="then time dfjax's whole sd15_albedo train step (2 steps)")
  args = parser.parse_args()
  if importlib.util.find_spec("torch") is None:
    raise SystemExit("error: this comparison needs PyTorch; install the test extra "
                     "(pip install -e '.[test]') or a CPU build of torch")
  ours, attention = dfjax_pieces()
  theirs = torch_pieces()
  calls = {}
  for piece in PIECES:
    calls["torch " + piece], calls["dfjax " + piece] = theirs[piece], ours[piece]
  times = common.time_alternately(calls, rounds=args.rounds, progress=True)
  del theirs, ours, calls
  gc.collect()
  rows = [[piece, f"{times['torch ' + piece]:.1f}", f"{times['dfjax ' + piece]:.1f}",
           f"{times['torch ' + piece] / times['dfjax ' + piece]:.2f}x",
           f"{ISSUE_SECONDS[piece]:.1f}" if piece in ISSUE_SECONDS else "–"]
          for piece in PIECES]
  # The issue's machine against this one, for the same PyTorch pieces.
  factor = (sum(times["torch " + p] for p in ISSUE_SECONDS) / sum(ISSUE_SECONDS.values()))
  low, high = (s * factor for s in ISSUE_STEP_SECONDS)
  rows.append(["stable-dreamfusion's albedo step, scaled", f"{low:.1f}-{high:.1f}", "", "",
               f"{ISSUE_STEP_SECONDS[0]:.1f}-{ISSUE_STEP_SECONDS[1]:.1f}"])
  if args.step:
    step = dfjax_step_seconds(repeats=2)
    rows.append(["dfjax's whole step (sd15_albedo), after", "", f"{step:.1f}",
                 f"{(low + high) / 2 / step:.2f}x", ""])
  common.append_table(
      f"Stable Diffusion 1.5's prior side under PyTorch (diffusers) and dfjax "
      f"({attention} attention), float32, alternating",
      ["piece", "PyTorch s", "dfjax s", "PyTorch / dfjax", "issue's stable-dreamfusion s"],
      rows, command="python experiments/compare_torch.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
