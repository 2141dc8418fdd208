"""Background: an environment map seen where the object does not cover a pixel.

DreamFusion App. A.2: a small MLP on the positionally encoded ray direction gives the
background colour, composited behind the object with the accumulated alpha (see
`render.composite_background`). A fixed colour is the alternative (used with image banks
rendered on a plain background).

Data flow: scene.mip (the direction encoding) -> here -> scene.render.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfjax.scene import mip

BackgroundFn = Callable[[jax.Array], jax.Array]


class EnvironmentMap(nn.Module):
  """Colour of a viewing direction: sigmoid(MLP(γ(d))).

  Attributes:
    hidden_units, num_layers: MLP size.
    max_deg: positional encoding frequencies 2^l, l in [0, max_deg).
  """
  hidden_units: int = 64
  num_layers: int = 2
  max_deg: int = 4

  @nn.compact
  def __call__(self, directions: jax.Array) -> jax.Array:
    """directions: [..., 3] unit vectors -> [..., 3] colours in (0, 1)."""
    h = mip.positional_encoding(directions, min_deg=0, max_deg=self.max_deg)
    for i in range(self.num_layers):
      h = nn.swish(nn.Dense(self.hidden_units, name=f"layer_{i}")(h))
    return nn.sigmoid(nn.Dense(3, name="output")(h))


def fixed_background(color: Sequence[float]) -> BackgroundFn:
  """A background of one colour: directions [..., 3] -> [..., 3]."""
  rgb = jnp.asarray(color, jnp.float32)
  return lambda directions: jnp.broadcast_to(rgb, directions.shape)
