"""The field's points as one flat [N, 3] batch against [rays, samples, 3], in one process.

  python experiments/compare_field_batch.py [--setups=toy,bank,paper] [--rounds=20]

NeRFField.__call__ reshapes its points to [N, 3] before the MLP (dfjax/scene/field.py); the
layout before it kept the [rays, samples] axes, which XLA:CPU ran about 3x slower in the paper
setup's second-order normal pass. This script compiles one device's train step
(profile_step.py's setups) with each layout in the same process, on the same parameters, then
calls the two in turn, round after round after a warm-up round, each on a fresh copy of the
state (the step donates it), and prints the medians. One process and alternation keep the
machine's drift and the first calls' page faults (glibc's huge pages, dfjax/cli.py) out of the
comparison. Appends its table to experiments/results/bench.md.
"""
import argparse
import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import profile_step  # pylint: disable=g-import-not-at-top,wrong-import-position

from dfjax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from dfjax.scene import field as field_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dfjax.scene import mip  # pylint: disable=g-import-not-at-top,wrong-import-position


class BatchedAxesField(field_lib.NeRFField):
  """NeRFField as it was before the flat batch: the MLP applied to [..., features] as given."""

  @nn.compact
  def __call__(self, means, cov_diag):
    features = mip.integrated_pos_enc(means, cov_diag, min_deg=self.min_deg,
                                      max_deg=self.max_deg)
    h = field_lib.ResidualMLP(self.num_blocks, self.hidden_units)(features)
    raw = nn.Dense(4, name="output")(h)
    log_density = raw[..., 0] + self.density_bias + field_lib.density_blob(
        means, blob_density=self.blob_density, blob_radius=self.blob_radius)
    density = jnp.exp(jnp.minimum(log_density, field_lib._MAX_LOG_DENSITY))  # pylint: disable=protected-access
    return density, nn.sigmoid(raw[..., 1:])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setups", default="toy,bank,paper")
  parser.add_argument("--rounds", type=int, default=20)
  args = parser.parse_args()
  rows = []
  for setup in args.setups.split(","):
    config, scene, state, prior_params = profile_step.build(setup)
    # The same field and parameters, the MLP given the points' [rays, samples] axes as they come.
    batched = BatchedAxesField(**{f.name: getattr(scene.field, f.name)
                                  for f in dataclasses.fields(scene.field)
                                  if f.init and f.name not in ("parent", "name")})
    calls = {}
    for name, field in (("flat", scene.field), ("batched", batched)):
      fn, (state, *rest) = profile_step.step_parts(
          config, dataclasses.replace(scene, field=field), state, prior_params)["step"]
      compiled = fn.lower(state, *rest).compile()
      # A fresh copy of the state for every call, as profile_step.py times it: the step donates.
      calls[name] = lambda compiled=compiled, state=state, rest=rest: jax.block_until_ready(
          compiled(jax.tree.map(jnp.copy, state), *rest))
    seconds = common.time_alternately(calls, rounds=args.rounds)
    flat_ms, batched_ms = seconds["flat"] * 1e3, seconds["batched"] * 1e3
    rows.append([setup, f"{batched_ms:.1f}", f"{flat_ms:.1f}", f"{batched_ms / flat_ms:.2f}x"])
    print(rows[-1], flush=True)
    del calls
  common.append_table(
      "The field's points as one flat batch against [rays, samples], one process, alternating",
      ["setup", "[rays, samples, 3] ms", "flat [N, 3] ms", "speed-up"], rows,
      command="python experiments/compare_field_batch.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
  cli.restart_with_huge_pages()  # as the command lines run (dfjax/cli.py)
  main()
