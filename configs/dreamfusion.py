"""DreamFusion as in the paper, with a Stable Diffusion prior (arXiv:2209.14988, App. A.2).

Run (real weights in a diffusers-format directory or a hub id you have cached):
  python -m dfjax.main --config=configs/dreamfusion.py --workdir=runs/corgi \
      --config.prompt="a corgi wearing a top hat" --config.prior.model=PATH_OR_HUB_ID
Produces, in the workdir, checkpoints, metrics.jsonl, TensorBoard logs, and at the end
mesh.glb (textured), mesh.ply (vertex colours) and turntable.mp4. The paper's run is 15k
steps at 64×64 on 4 chips.

Each departure from the paper is named where it is set:
- Stable Diffusion (latent, 64×64 renders upsampled to 512) stands in for Imagen (pixel space).
- Adam with a peak learning rate of 1e-3 stands in for Distributed Shampoo at 1e-4 (no
  maintained optax-compatible Shampoo installs cleanly; see README).
"""
import ml_collections



def get_config(arg=None) -> ml_collections.ConfigDict:
  """The paper's method and values (App. A.2), sub-configs in data-flow order."""
  del arg
  config = ml_collections.ConfigDict()
  config.prompt = "a DSLR photo of a corgi wearing a top hat"  # the text to make 3D
  config.seed = 0  # every step's randomness derives from (seed, step, device index)
  config.multihost = False  # call jax.distributed.initialize() first (TPU pods)
  config.camera = camera_config()
  config.field = field_config()
  config.shading = shading_config()
  config.background = background_config()
  config.render = render_config()
  config.prior = prior_config()
  config.loss = loss_config()
  config.optimizer = optimizer_config()
  config.train = train_config()
  config.export = export_config()
  return config


def camera_config() -> ml_collections.ConfigDict:
  """Cameras (App. A.2). Angles in degrees, distances in world units."""
  camera = ml_collections.ConfigDict()
  camera.resolution = 64  # render width = height in pixels (paper: 64)
  camera.elevation_range = (-10.0, 90.0)
  camera.azimuth_range = (0.0, 360.0)
  camera.distance_range = (1.0, 1.5)
  camera.focal_range = (0.7, 1.35)  # focal length as a multiple of the render width
  camera.angle_uniform_prob = 0.5  # P(elevation uniform in angle); else uniform in area
  camera.position_jitter = 0.1  # camera position + U(-j, j)^3
  camera.look_at_std = 0.2  # look-at point ~ N(0, std^2 I)
  camera.up_std = 0.02  # up vector + N(0, std^2 I)
  return camera


def field_config() -> ml_collections.ConfigDict:
  """Field (§3.1, App. A.2)."""
  field = ml_collections.ConfigDict()
  field.num_blocks = 5  # residual blocks
  field.hidden_units = 128
  field.max_deg = 8  # IPE frequencies 2^0 .. 2^(L-1), L = 8
  field.blob_density = 5.0  # λ_τ
  field.blob_radius = 0.2  # σ_τ, world units
  field.density_bias = 0.0  # added to the density pre-activation (paper: none)
  field.cov_scale_start = 5e-2  # λ_Σ at step 0 (isotropic IPE variance)
  field.cov_scale_end = 2e-3  # λ_Σ after the anneal
  field.cov_anneal_steps = 5000  # linear anneal length in steps
  return field


def shading_config() -> ml_collections.ConfigDict:
  """Shading and light (§3.1, App. A.2)."""
  shading = ml_collections.ConfigDict()
  shading.albedo_warmup_steps = 1000  # albedo only before this step
  shading.shaded_prob = 0.75  # P(lit) after the warm-up
  shading.textureless_prob = 0.5  # P(textureless | lit)
  shading.ambient = 0.1
  shading.diffuse = 0.9
  shading.light_distance_range = (0.8, 1.5)
  return shading


def background_config() -> ml_collections.ConfigDict:
  """Background (App. A.2): "mlp" environment map, or "fixed" colour."""
  background = ml_collections.ConfigDict()
  background.kind = "mlp"
  background.color = (1.0, 1.0, 1.0)  # used when kind == "fixed"
  background.hidden_units = 64
  background.max_deg = 4
  return background


def render_config() -> ml_collections.ConfigDict:
  """Renderer."""
  render = ml_collections.ConfigDict()
  render.num_samples = 64  # stratified samples per ray inside the bounding sphere
  render.num_importance = 0  # hierarchical samples per ray (0: none)
  render.bound_radius = 1.4  # bounding sphere radius (App. A.2)
  render.normals = "autodiff"  # or "finite_difference"
  render.chunk = 4096  # rays per chunk
  # "uniform": num_samples stratified samples over the whole ray (the paper). "occupancy":
  # empty-space skipping, num_samples stratified samples over only the bins (num_candidates
  # per ray) that lie in occupied cells of a G^3 grid of the density (dfjax.scene.occupancy),
  # refreshed every grid_every steps as max(grid_decay * g, density at a random point of the
  # cell); a cell is occupied when it or a neighbour exceeds min(grid_threshold, mean g).
  render.sampler = "uniform"
  render.num_candidates = 128
  render.grid_resolution = 32  # G; the grid spans the bounding sphere's cube
  render.grid_every = 16
  render.grid_decay = 0.95
  render.grid_threshold = 0.2  # density per world unit
  return render


def prior_config() -> ml_collections.ConfigDict:
  """Prior and SDS (§3, Eq. 3)."""
  prior = ml_collections.ConfigDict()
  prior.kind = "stable_diffusion"  # or "bank" (closed-form prior over an image bank)
  prior.model = ""  # diffusers-format directory or hub id
  prior.revision = ""  # hub revision (e.g. "bf16" for CompVis/stable-diffusion-v1-4)
  prior.dtype = "bfloat16"  # U-Net/VAE parameter and compute dtype; SDS gradient is float32
  prior.use_vae = True  # False skips the VAE (cost studies only)
  # The U-Net's attention: "deferred_softmax", "dense" (diffusers' own), "split_heads" or
  # "chunked" (dfjax.priors.stable_diffusion.ATTENTION; same weights, same result up to
  # rounding). SD 1.5 on 2 CPU cores, per guided U-Net call, alternating: deferred_softmax
  # 11.1 s against dense 15.5 s in float32, 16.0 against 17.5 s in bfloat16 (bench.md)
  prior.attention = "deferred_softmax"
  prior.bank = ""  # .npz bank file, for kind == "bank"
  prior.view_dependent = True  # view-dependent prompts (§3.2)
  prior.guidance_scale = 100.0  # classifier-free guidance s in u + s (c - u)
  prior.t_range = (0.02, 0.98)  # t ~ U(t_min, t_max) as a fraction of the schedule
  prior.weighting = "sds"  # w(t): "sds" (1 - ᾱ), "uniform", "sqrt_alpha_one_minus"
  return prior


def loss_config() -> ml_collections.ConfigDict:
  """Regularisers (App. A.2)."""
  loss = ml_collections.ConfigDict()
  loss.orientation_weight = 1e-2  # final orientation-loss weight
  loss.orientation_weight_start = 1e-4  # annealed linearly up from this ...
  loss.orientation_anneal_steps = 5000  # ... over this many steps
  # The paper's orientation loss applies to every view, so every view computes normals.
  # False: albedo-only views skip the loss and, with it, the normals' second pass (as
  # stable-dreamfusion, whose albedo views compute no normals); a faster albedo-only step.
  loss.orientation_in_albedo_views = True
  loss.opacity_weight = 1e-3
  return loss


def optimizer_config() -> ml_collections.ConfigDict:
  """Optimiser."""
  optimizer = ml_collections.ConfigDict()
  optimizer.name = "adam"
  optimizer.peak_learning_rate = 1e-3  # departure: Adam instead of Shampoo at 1e-4
  optimizer.initial_learning_rate = 1e-9  # warm-up start
  optimizer.warmup_steps = 3000
  optimizer.final_learning_rate = 1e-6  # end of the cosine decay
  optimizer.b1 = 0.9
  optimizer.b2 = 0.99
  optimizer.eps = 1e-15
  optimizer.grad_clip = 1.0  # global-norm clipping (0: none)
  optimizer.max_nonfinite_steps = 20  # abort after this many non-finite steps in a row
  return optimizer


def train_config() -> ml_collections.ConfigDict:
  """Training loop."""
  train = ml_collections.ConfigDict()
  train.steps = 15000
  train.views_per_device = 1  # the paper: one view per chip
  train.log_every = 50
  train.image_every = 1000  # TensorBoard render grids
  train.checkpoint_every = 1000
  train.keep_checkpoints = 3
  return train


def export_config() -> ml_collections.ConfigDict:
  """Export at the end of training (see dfjax.export)."""
  export = ml_collections.ConfigDict()
  export.at_end = True  # write mesh and video when training ends
  export.resolution = 128  # marching-cubes grid points per axis
  # Density level of the surface, per world unit; 0 chooses it from the renders: the level
  # whose silhouettes match the renders' (export.outputs.surface_threshold), so the mesh is the
  # object the video shows whatever density scale the field learned.
  export.threshold = 0.0
  export.bound = 1.0  # the grid spans [-bound, bound]^3
  # Mesh files, comma-separated: "ply" (vertex colours), "obj" (+ .mtl and a .png texture) and
  # "glb" (texture embedded; the format every viewer opens). obj and glb are UV-unwrapped
  # (xatlas) with the albedo baked into a texture.
  export.formats = "glb,ply"
  # Texels per side of the baked texture. 512 gives 3.5 texels per marching-cubes voxel
  # (2/128 world units) on an object of radius about 0.5 (measured, README "Outputs"), already
  # finer than the grid the surface comes from; 1024 triples the bake time for detail that
  # the 64x64 training renders rarely put into the field.
  export.texture_size = 512
  # Face budget of the textured meshes, by quadric edge collapse before unwrapping (0: none).
  # xatlas's time grows fast with faces (measured: 3.5 s at 20k faces, 47 s at 80k); the PLY
  # keeps the full mesh, since its colours live on the vertices.
  export.faces = 20000
  export.video_format = "mp4"  # turntable video: "mp4" (H.264) or "gif"
  export.video_frames = 60
  export.video_resolution = 128
  export.video_elevation = 30.0
  export.video_distance = 1.6
  export.video_fov = 40.0
  return export
