"""SDS on the vertices of an existing mesh, with the toy world's closed-form prior, on a CPU.

Run:
  python -m dfjax.main --config=configs/toy.py --workdir=runs/toy   # writes runs/toy/mesh.ply
  python -m dfjax.mesh_sds --config=configs/mesh_sds.py --mesh=runs/toy/mesh.ply \
      --out=runs/toy/refined.ply [--config.prompt="a yellow duck"]
Any .ply, .glb or .obj triangle mesh works as input (vertex colours are kept; a mesh
without them is mid-grey); the input file is only read. The refinement moves the vertices
only (faces and colours stay), prints a progress line every `log_every` steps, and writes the
result to --out. On 2 CPU cores a mesh of ~1k faces takes about 0.5 s per step at 32x32.

The "after optimisation" use of SDS (arXiv:2209.14988): the image signal is the SDS gradient
of soft-rasterised renders (SoftRas, Liu et al. 2019), and Laplacian smoothness and
edge-length regularisers keep the noisy signal from tearing the surface. Cameras, prompt,
guidance, t range and w(t) are the toy config's (configs/toy.py, built on configs/bank.py):
the bank's camera distribution, guidance 7.5, albedo-only shading (the toy bank holds albedo
renders, so shaded_prob is 0 here as there).
"""
import ml_collections

from configs import toy


def get_config(arg=None) -> ml_collections.ConfigDict:
  config = toy.get_config(arg)
  config.mesh_sds = mesh_sds_config()
  return config


def mesh_sds_config() -> ml_collections.ConfigDict:
  """The `mesh_sds` section: mesh refinement, in data-flow order: renderer -> regularisers ->
  optimiser -> loop."""
  m = ml_collections.ConfigDict()
  # Soft rasteriser (SoftRas, Liu et al. 2019). Renders are at the prior's resolution.
  m.sigma = 0.3  # coverage sharpness, pixels^2: D = 1/(1+e) at sqrt(sigma) px outside a face
  m.gamma = 1e-4  # depth-softmax temperature, in units of the normalised inverse depth
  m.epsilon = 1e-3  # the background's normalised inverse depth in the depth softmax
  m.min_coverage = 1e-4  # faces with coverage D below this leave a pixel's colour alone
  m.near = 0.1  # depth range (world units) of the normalised inverse depth; faces nearer
  m.far = 5.0  # than `near` are dropped
  m.pixel_chunk = 1024  # pixels rasterised at once (memory ~ pixel_chunk x faces x 40 floats)
  m.views_per_step = 1  # cameras per step, their SDS gradients averaged
  m.shaded_prob = 0.0  # P(a view is Lambertian-lit); 0 for the albedo toy bank
  # Regularisers (added to the SDS surrogate).
  m.laplacian_weight = 3000.0  # x mean |uniform Laplacian|^2, world units^-2
  m.edge_weight = 30.0  # x mean ((|e| - |e_0|) / |e_0|)^2, dimensionless
  # Optimiser: Adam on the vertex offsets.
  m.learning_rate = 5e-3  # Adam step size, world units per step
  m.steps = 200  # updates
  m.log_every = 20  # steps between progress lines
  return m
