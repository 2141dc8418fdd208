"""The real-size train step on an accelerator: one prepared run for a GPU or TPU you are lent.

  python experiments/bench_accelerator.py                  # the default setups, ~8 min on one H100
  python experiments/bench_accelerator.py --setups=paper:1,paper:4 --steps=5
  python experiments/bench_accelerator.py --setups=toy:1 --steps=2     # a CPU check of the script

A setup is NAME:VIEWS, VIEWS renders per device per step (train.views_per_device):
  sd15, sd21base  configs/dreamfusion.py (64x64 renders, the paper's 5x128 field, 64 samples,
                  guidance 100, lit and textureless views) with the SD 1.5 or SD 2.1-base
                  U-Net and VAE built from their configs with random weights (no download),
                  bfloat16; NAME@ATTENTION picks the U-Net's attention (e.g. sd15@dense);
  paper           the same field and renders with the closed-form prior over a 64x64 toy bank
                  (the renderer's cost alone);
  toy             configs/toy.py (for checking this script on a CPU).
Each setup runs in its own process (so the peak memory is its own) on one device: the jitted
train step is compiled (compile seconds), run once, then timed over --steps steps (median).
Peak device memory comes from the device's memory_stats (GPUs and TPUs; "–" on a CPU), FLOPs
from XLA's cost analysis of the compiled step, and model FLOP utilisation is FLOPs / time /
the device's peak (--peak_tflops, or a table of dense bfloat16 peaks by device kind).
Every setup's row is appended to experiments/results/bench.md as soon as it is measured, so
a run cut short keeps what it measured.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SETUPS = "paper:1,paper:4,sd15:1,sd15@dense:1,sd15:4,sd21base:1"
# Dense bfloat16 peak TFLOP/s by jax device_kind (vendor datasheets, without sparsity).
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100": 989.0, "NVIDIA H200": 989.0,
               "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0,
               "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
               "TPU v6 lite": 918.0}


def build(setup: str, views: int):
  """(config, scene, train state, prior params) of a setup, for one device."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import profile_step  # pylint: disable=g-import-not-at-top
  from dfjax.train import model as model_lib  # pylint: disable=g-import-not-at-top
  from dfjax.train import prior_setup  # pylint: disable=g-import-not-at-top
  from dfjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  name, _, attention = setup.partition("@")
  if name in ("sd15", "sd21base"):
    import bench_step  # pylint: disable=g-import-not-at-top
    config, prior, camera_kwargs = bench_step.setup(name, attention or None)
  elif name in ("paper", "toy"):
    config = profile_step.setup_config(name)
    prior, camera_kwargs = prior_setup.build_prior(config)
  else:
    raise SystemExit(f"error: unknown setup {setup!r}; use sd15, sd21base, paper or toy")
  config.train.views_per_device = views
  scene = model_lib.create_scene(config, prior, camera_kwargs=camera_kwargs)
  state = step_lib.create_train_state(scene, step_lib.create_optimizer(config),
                                      jax.random.PRNGKey(0))
  return config, scene, state, prior.params


def measure(setup: str, views: int, steps: int) -> dict:
  """Compile seconds, median step seconds, XLA FLOPs and peak memory of one setup's step."""
  import jax  # pylint: disable=g-import-not-at-top
  from dfjax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  config, scene, state, prior_params = build(setup, views)
  mesh = step_lib.make_mesh(jax.devices()[:1])
  train_step = step_lib.make_train_step(scene, step_lib.create_optimizer(config), mesh)
  state, prior_params = step_lib.replicate(state, mesh), step_lib.replicate(prior_params, mesh)
  start = time.perf_counter()
  compiled = train_step.lower(state, prior_params).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  state, metrics = compiled(state, prior_params)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, prior_params)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  return dict(setup=setup, views=views, device=device.device_kind, compile_s=compile_s,
              step_s=statistics.median(times), gflop=float(cost.get("flops", 0.0)) / 1e9,
              peak_gib=stats.get("peak_bytes_in_use", 0) / 2**30 or None)


def row(result: dict, peak_tflops: float | None) -> list[str]:
  mfu = (f"{result['gflop'] / result['step_s'] / 1e3 / peak_tflops:.1%}"
         if peak_tflops else "–")
  return [result["setup"], str(result["views"]), result["device"],
          f"{result['compile_s']:.1f}", f"{result['step_s'] * 1e3:.1f}",
          f"{result['gflop']:.1f}",
          f"{result['peak_gib']:.1f}" if result["peak_gib"] else "–", mfu]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default=DEFAULT_SETUPS, help="comma-separated NAME:VIEWS")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per setup")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the device's dense bfloat16 peak (default: PEAK_TFLOPS by kind)")
  parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # a child's setup
  args = parser.parse_args()
  if args.one:  # the child process: measure one setup, print it as JSON
    setup, views = args.one.rsplit(":", 1)
    print("RESULT " + json.dumps(measure(setup, int(views), args.steps)), flush=True)
    return
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  command = "python experiments/bench_accelerator.py " + " ".join(sys.argv[1:])
  header = ["setup", "views per device", "device", "compile s", "ms per step",
            "GFLOP per step (XLA)", "peak memory GiB", "model FLOP utilisation"]
  measured = 0
  for setup in args.setups.split(","):
    out = subprocess.run([sys.executable, __file__, f"--one={setup}", f"--steps={args.steps}"],
                         capture_output=True, text=True, check=False)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
      print(f"{setup}: failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}", flush=True)
      continue
    result = json.loads(lines[-1][len("RESULT "):])
    cells = row(result, args.peak_tflops or PEAK_TFLOPS.get(result["device"]))
    if not measured:  # the table's heading and first row
      common.append_table(f"The train step on {result['device']} (one device)", header,
                          [cells], command=command)
    else:  # one more row of that table, which ends the file
      with open(common.RESULTS, "r+") as f:
        text = f.read().rstrip("\n") + "\n| " + " | ".join(cells) + " |\n\n"
        f.seek(0)
        f.write(text)
      print("| " + " | ".join(cells) + " |", flush=True)
    measured += 1


if __name__ == "__main__":
  from dfjax import cli  # pylint: disable=g-import-not-at-top
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
