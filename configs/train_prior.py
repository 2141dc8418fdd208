"""Train a small Stable Diffusion pipeline on image banks: the recipe of dfjax's toy SD.

Run:
  python -m dfjax.train_prior --config=configs/train_prior.py --workdir=runs/toy_sd
  python -m dfjax.train_prior --config=configs/train_prior.py --workdir=runs/my_sd \
      --config.bank=my_bank.npz
The pipeline goes to WORKDIR/pipeline (diffusers' format); use it with
`--config.prior.model=WORKDIR/pipeline` (configs/toy_sd.py, configs/dreamfusion.py). Without
`--config.bank` it trains on the toy world: its seven objects in three shadings (albedo, lit,
lit with textureless views), 2016 images of 32x32, the data of the shipped
dfjax/assets/toy_sd (see its model card for the time and losses on 2 CPU cores).

The architecture is Stable Diffusion's, scaled down: a KL-regularised VAE with 4x (not 8x)
downsampling, 32x32 pixels to 8x8x4 latents; a U-Net with cross-attention at both of its two
resolutions; a 2-layer CLIP text encoder trained with the U-Net. The schedule is SD's
(scaled_linear betas, 1000 steps, epsilon prediction) and 10% of prompts are dropped for
classifier-free guidance, as in SD's training.
"""
import ml_collections


def get_config(arg=None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds the weights, the batches and the noise

  # 1. Data: a bank file (dfjax.priors.bank's format), or the toy world's banks.
  config.bank = ""  # path of an .npz bank; empty: the toy world (config.toy)
  config.toy = toy = ml_collections.ConfigDict()
  toy.resolution = 32  # image size, pixels (the toy configs render at 32x32)
  toy.views_per_object = 96  # cameras per object and shading
  toy.shadings = ("albedo", "lambertian", "lambertian_textureless")
  toy.seed = 0  # cameras and lights of the toy banks
  # "{caption}, {suffix}" by the image camera's view bucket (front, side, back, overhead).
  config.view_suffixes = ("front view", "side view", "back view", "overhead view")

  # 2. Tokenizer and text encoder (FlaxCLIPTextModel, trained with the U-Net).
  config.text = text = ml_collections.ConfigDict()
  text.max_merges = 256  # BPE merges learnt from the prompts (byte-level symbols always kept)
  text.max_length = 0  # padded prompt length in tokens; 0: the longest prompt, rounded up to 8
  text.hidden_size = 64  # also the U-Net's cross_attention_dim
  text.num_layers = 2
  text.num_heads = 4
  text.intermediate_size = 256

  # 3. VAE (FlaxAutoencoderKL), trained first.
  config.vae = vae = ml_collections.ConfigDict()
  vae.block_out_channels = (32, 64, 64)  # 3 blocks: 4x downsampling
  vae.layers_per_block = 1
  vae.latent_channels = 4  # as SD
  vae.kl_weight = 1e-4  # KL weight per pixel value (SD: 1e-6, with perceptual and GAN losses)
  vae.steps = 1500
  vae.batch_size = 32
  vae.learning_rate = 1e-3
  vae.warmup_steps = 100

  # 4. U-Net (FlaxUNet2DConditionModel) on the scaled latents, epsilon prediction.
  config.unet = unet = ml_collections.ConfigDict()
  unet.block_out_channels = (64, 128)
  unet.layers_per_block = 1
  unet.attention_head_dim = 8
  config.steps = 8000  # U-Net steps, after config.vae.steps
  config.batch_size = 32
  config.learning_rate = 5e-4
  config.warmup_steps = 200
  config.grad_clip = 1.0  # global-norm clipping of both phases' gradients
  config.uncond_prob = 0.1  # prompts replaced by "" (classifier-free guidance training)
  config.ema_decay = 0.999  # the shipped U-Net and text encoder are this EMA of the weights

  # 5. Output and logs.
  config.weight_dtype = "float16"  # dtype of the written weight files: float16 or float32
  config.train = train = ml_collections.ConfigDict()
  train.log_every = 50
  train.image_every = 1000  # sample grids to TensorBoard every this many U-Net steps; 0: never
  train.sample_steps = 25  # DDIM steps of those samples
  train.sample_guidance = 5.0  # their classifier-free guidance scale
  train.checkpoint_every = 500
  train.keep_checkpoints = 2
  return config
