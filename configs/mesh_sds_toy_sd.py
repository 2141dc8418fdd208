"""SDS on the vertices of an existing mesh, with the shipped toy Stable Diffusion, on a CPU.

Run:
  python -m dfjax.main --config=configs/toy.py --workdir=runs/toy   # writes runs/toy/mesh.ply
  python -m dfjax.mesh_sds --config=configs/mesh_sds_toy_sd.py --mesh=runs/toy/mesh.ply \
      --out=runs/toy/refined_sd.ply [--config.prompt="a yellow duck"]

configs/mesh_sds.py's refinement (the same `mesh_sds` section) with the prior, cameras,
guidance and t range of configs/toy_sd.py: the learned latent prior through the VAE encoder,
the path real Stable Diffusion takes, instead of the closed-form one. One departure: views
are Lambertian-lit with probability `shading.shaded_prob` (0.75, half of those textureless),
as in the toy SD's own runs after the albedo warm-up, since its training images hold all
three shadings (configs/mesh_sds.py renders albedo only, as its bank does).
"""
import ml_collections

from configs import mesh_sds
from configs import toy_sd


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = toy_sd.get_config(arg)
  config.mesh_sds = mesh_sds.mesh_sds_config()
  config.mesh_sds.shaded_prob = config.shading.shaded_prob
  return config
