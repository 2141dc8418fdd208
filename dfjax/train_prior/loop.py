"""Train a small Stable Diffusion pipeline from image banks, resumably, and write it out.

`train_prior` checks the config and the workdir (before anything slow), reads the banks,
builds the tokenizer and the modules, then runs the VAE phase and the U-Net phase of
`train_prior.steps` on one step counter, with the 3D trainer's machinery: the config guard
and orbax checkpoints of `train.checkpoint` (an interrupted run resumes bitwise), metrics,
TensorBoard and the progress bar of `train.logs`, SIGTERM and preemption saves. At the end the
pipeline is written to WORKDIR/pipeline (`train_prior.pipeline`), whole or not at all.

Data flow: train_prior (data, models, steps, sampling, pipeline, tokenizer) and train
(checkpoint, logs, step's mesh) -> here -> dfjax.train_prior.__main__.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from dfjax.errors import UserError
from dfjax.priors import diffusion
from dfjax.train import checkpoint as checkpoint_lib
from dfjax.train import compile_cache
from dfjax.train import distributed
from dfjax.train import logs
from dfjax.train import step as step_lib
from dfjax.train_prior import data as data_lib
from dfjax.train_prior import models as models_lib
from dfjax.train_prior import pipeline as pipeline_lib
from dfjax.train_prior import sampling
from dfjax.train_prior import steps as steps_lib
from dfjax.train_prior import tokenizer as tokenizer_lib

PIPELINE_SUBDIR = "pipeline"
# Fields that may change when a run resumes: more U-Net steps, other logging.
RESUMABLE_KEYS = ("steps", "train.")
WEIGHT_DTYPES = ("float32", "float16")


def check_config(config, *, num_devices):
  """One-line UserErrors for values that cannot train (before anything slow)."""
  def positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise UserError(f"config.{name} must be a positive integer, got {value!r}")
  for name in ("steps", "batch_size", "vae.steps", "vae.batch_size", "train.log_every",
               "train.checkpoint_every", "train.keep_checkpoints", "train.sample_steps",
               "text.hidden_size", "text.num_layers", "text.num_heads", "text.max_merges"):
    value = config
    for part in name.split("."):
      value = value[part]
    positive_int(name, value)
  for name, batch in (("batch_size", config.batch_size), ("vae.batch_size", config.vae.batch_size)):
    if batch % num_devices:
      raise UserError(f"config.{name}={batch} must be a multiple of the {num_devices} devices")
  if not 0.0 <= config.uncond_prob < 1.0:
    raise UserError(f"config.uncond_prob must be in [0, 1), got {config.uncond_prob}")
  if not 0.0 <= config.ema_decay < 1.0:
    raise UserError(f"config.ema_decay must be in [0, 1), got {config.ema_decay}")
  if config.vae.kl_weight < 0 or config.learning_rate <= 0 or config.vae.learning_rate <= 0:
    raise UserError("config.vae.kl_weight must be >= 0 and the learning rates > 0")
  if config.weight_dtype not in WEIGHT_DTYPES:
    raise UserError(f"config.weight_dtype must be one of {WEIGHT_DTYPES}, "
                    f"got {config.weight_dtype!r}")
  if config.text.hidden_size % config.text.num_heads:
    raise UserError("config.text.hidden_size must be a multiple of config.text.num_heads")
  _check_channels(config)
  if (len(config.view_suffixes) != 4 or isinstance(config.view_suffixes, str)
      or not all(isinstance(s, str) for s in config.view_suffixes)):
    raise UserError("config.view_suffixes must be four strings (front, side, back, overhead)")


def _check_channels(config):
  """Block widths the modules' group norms and attention heads can split."""
  for name in ("vae", "unet"):
    channels = tuple(config[name].block_out_channels)
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
      raise UserError(f"config.{name}.block_out_channels must be positive integers, "
                      f"got {channels!r}")
  groups = min(32, min(config.vae.block_out_channels))
  if any(c % groups for c in config.vae.block_out_channels):
    raise UserError(f"config.vae.block_out_channels {tuple(config.vae.block_out_channels)} "
                    f"must all be multiples of {groups} (the group norm's groups)")
  heads = config.unet.attention_head_dim  # diffusers' name for the number of heads
  if any(c % 32 or c % heads for c in config.unet.block_out_channels):
    raise UserError(f"config.unet.block_out_channels {tuple(config.unet.block_out_channels)} "
                    f"must be multiples of 32 (group norm) and of attention_head_dim {heads}")


def downsampling(config):
  """How many pixels of a bank image one U-Net cell at its coarsest level covers."""
  return (models_lib.vae_downsampling(config.vae.block_out_channels)
          * 2 ** (len(config.unet.block_out_channels) - 1))


def load_data(config):
  """The training images and prompts: config.bank, or the toy world's banks."""
  if config.bank:
    paths = [config.bank]
  else:
    paths = data_lib.toy_world_banks(**config.toy)
  return data_lib.load_prior_data(paths, view_suffixes=tuple(config.view_suffixes),
                                  downsampling=downsampling(config))


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run trains: data, tokenizer and token ids, modules, optimizers."""
  data: data_lib.PriorData
  tokenizer: object
  token_ids: np.ndarray
  models: steps_lib.Models
  vae_optimizer: object
  denoiser_optimizer: object


def build_setup(config, data):
  """The tokenizer (learnt from the prompts), the modules sized from the config and data."""
  tokenizer = tokenizer_lib.build_tokenizer(data.prompts, max_merges=config.text.max_merges,
                                            model_max_length=77)
  length = config.text.max_length or 8 * -(-tokenizer_lib.longest_prompt(tokenizer,
                                                                          data.prompts) // 8)
  tokenizer.model_max_length = length
  size = data.images.shape[1]
  latent_size = size // models_lib.vae_downsampling(config.vae.block_out_channels)
  vocab = tokenizer.get_vocab()
  models = steps_lib.Models(
      vae=models_lib.make_vae(sample_size=size, **_vae_sizes(config)),
      unet=models_lib.make_unet(
          block_out_channels=tuple(config.unet.block_out_channels),
          layers_per_block=config.unet.layers_per_block,
          attention_head_dim=config.unet.attention_head_dim,
          cross_attention_dim=config.text.hidden_size,
          latent_channels=config.vae.latent_channels, sample_size=latent_size),
      text_encoder=models_lib.make_text_encoder(
          vocab_size=len(vocab), hidden_size=config.text.hidden_size,
          num_layers=config.text.num_layers, num_heads=config.text.num_heads,
          intermediate_size=config.text.intermediate_size, max_length=length,
          bos_token_id=vocab[tokenizer_lib.BOS], eos_token_id=vocab[tokenizer_lib.EOS]))
  optimizer = lambda lr, warmup, total: steps_lib.make_optimizer(
      learning_rate=lr, warmup_steps=warmup, total_steps=total, grad_clip=config.grad_clip)
  return Setup(data=data, tokenizer=tokenizer,
               token_ids=tokenizer_lib.token_ids(tokenizer, data.prompts), models=models,
               vae_optimizer=optimizer(config.vae.learning_rate, config.vae.warmup_steps,
                                       config.vae.steps),
               denoiser_optimizer=optimizer(config.learning_rate, config.warmup_steps,
                                            config.steps))


def _vae_sizes(config):
  return dict(block_out_channels=tuple(config.vae.block_out_channels),
              layers_per_block=config.vae.layers_per_block,
              latent_channels=config.vae.latent_channels)


def initial_state(config, setup, mesh, checkpointer, workdir):
  """Fresh weights, or the latest checkpoint's state. Returns (state, its step)."""
  def fresh():
    params = models_lib.init_params(
        jax.random.PRNGKey(config.seed), vae=setup.models.vae, unet=setup.models.unet,
        text_encoder=setup.models.text_encoder, max_length=setup.token_ids.shape[1])
    return steps_lib.create_state(params, vae_optimizer=setup.vae_optimizer,
                                  denoiser_optimizer=setup.denoiser_optimizer)
  sharding = step_lib.replicated_sharding(mesh)
  target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                          sharding=sharding),
                        jax.eval_shape(fresh))
  state, start_step = checkpointer.restore_latest(target)
  if start_step is None:
    return step_lib.replicate(fresh(), mesh), 0
  print(f"resumed from step {start_step} in {workdir}", flush=True)
  return state, start_step


def latent_data(config, setup, state, mesh):
  """The whole bank through the trained VAE encoder, its scaling factor, the prompts: the
  U-Net phase's data, replicated (recomputed identically when a run resumes)."""
  images = jnp.asarray(setup.data.images)
  mean, logvar = steps_lib.encode_bank(setup.models.vae, state.vae, images)
  data = steps_lib.LatentData(
      mean=mean, logvar=logvar,
      scaling_factor=steps_lib.latent_scaling_factor(mean, logvar, seed=config.seed),
      prompt_index=jnp.asarray(setup.data.prompt_index),
      token_ids=jnp.asarray(setup.token_ids))
  return step_lib.replicate(data, mesh)


def sample_grid(config, setup, state, data, alphas_cumprod):
  """Guided DDIM samples of up to 8 captions (rows) in the four view buckets (columns)."""
  prompts = [p for p in setup.data.prompts[:-1]][:8 * 4]
  models = setup.models
  states = models_lib.text_hidden_states(models.text_encoder, state.ema["text_encoder"],
                                         data.token_ids)
  rows = jnp.asarray([setup.data.prompts.index(p) for p in prompts])
  size, channels = int(models.unet.sample_size), int(models.unet.in_channels)
  noise = jax.random.normal(jax.random.PRNGKey(config.seed), (len(prompts), size, size,
                                                              channels))
  latents = sampling.sample_latents(
      state.ema["unet"], states[rows], states[-1:], alphas_cumprod, noise,
      unet=models.unet, num_steps=config.train.sample_steps,
      guidance_scale=config.train.sample_guidance)
  images = sampling.decode_to_images(state.vae, latents, data.scaling_factor, vae=models.vae)
  return sampling.image_grid(jax.device_get(images), columns=4)


def _alphas_cumprod():
  return jnp.asarray(diffusion.alphas_cumprod_from_config(
      **{k: v for k, v in pipeline_lib.SCHEDULE.items() if k != "prediction_type"}),
                     jnp.float32)


def write_pipeline(config, setup, state, data, directory):
  """The trained pipeline (EMA U-Net and text encoder, the VAE with its scaling factor)."""
  vae = models_lib.make_vae(sample_size=setup.data.images.shape[1],
                            scaling_factor=float(data.scaling_factor), **_vae_sizes(config))
  pipeline_lib.save_pipeline(
      directory, vae=vae, unet=setup.models.unet, text_encoder=setup.models.text_encoder,
      tokenizer=setup.tokenizer,
      params={"vae": state.vae, "unet": state.ema["unet"],
              "text_encoder": state.ema["text_encoder"]},
      weight_dtype=config.weight_dtype)


def prepare(config, workdir, *, allow_config_change):
  """Checks (config, workdir, data) in the order that leaves a workdir untouched on error,
  then records the config. Returns (Setup, mesh)."""
  mesh = step_lib.make_mesh()
  check_config(config, num_devices=mesh.size)
  config_json = config.to_json(sort_keys=True)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 resumable_keys=RESUMABLE_KEYS, primary=False)
  data = load_data(config)
  setup = build_setup(config, data)
  checkpoint_lib.prepare_workdir(workdir, config_json, allow_config_change=allow_config_change,
                                 resumable_keys=RESUMABLE_KEYS,
                                 primary=distributed.is_primary())
  return setup, mesh


@dataclasses.dataclass(frozen=True)
class PriorTrained:
  """What `train_prior` returns.

  Attributes:
    pipeline: the written pipeline directory, or None when the run was stopped early.
    step: the last step trained (both phases counted).
    finished: False when a signal or a preemption stopped the run (its checkpoint is saved
      and the same command resumes it).
  """
  pipeline: str | None
  step: int
  finished: bool


class _Session:
  """The host-side loop shared by both phases: metrics, progress, checkpoints, stopping."""

  def __init__(self, config, workdir, checkpointer, start_step, *, progress):
    self.config, self.checkpointer = config, checkpointer
    primary = distributed.is_primary()
    self.writer = logs.MetricsWriter(workdir, resume_step=start_step, enabled=primary)
    self.display = logs.Progress(config.vae.steps + config.steps, start_step=start_step,
                                 every=config.train.log_every, enabled=progress)
    self.stop = checkpoint_lib.install_sigterm_handler()

  def run(self, state, step, until, step_fn, *args, after_step=None):
    """Steps until `until`; returns (state, step, stopped by a signal or preemption)."""
    while step < until:
      state, metrics = step_fn(state, *args)
      step += 1
      if step % self.config.train.log_every == 0 or step == until:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(np.isfinite(list(metrics.values()))):
          raise UserError(f"the loss is not finite at step {step} ({metrics}); the last "
                          "checkpoint is kept: lower --config.learning_rate")
        self.writer.write_scalars(step, metrics)
        self.display.update(step, metrics)
      if after_step is not None:
        after_step(state, step)
      if self.stop.requested or self.checkpointer.reached_preemption(step):
        self.checkpointer.save(step, state, force=True)
        print(f"stopped by {self.stop.signal_name or 'preemption'} at step {step}; checkpoint "
              "saved, run the same command to resume", flush=True)
        return state, step, True
      self.checkpointer.save(step, state, force=step == until)
    return state, step, False

  def close(self):
    self.display.close()
    self.checkpointer.wait()
    self.writer.close()
    self.stop.uninstall()


def _train_phases(config, setup, mesh, session, state, step):
  """The VAE phase, then the U-Net phase. Returns (state, step, stopped, LatentData)."""
  models, vae_steps = setup.models, config.vae.steps
  if step < vae_steps:
    vae_step = steps_lib.make_vae_step(models, setup.vae_optimizer, mesh,
                                       batch_size=config.vae.batch_size,
                                       kl_weight=config.vae.kl_weight, seed=config.seed)
    images = step_lib.replicate(jnp.asarray(setup.data.images), mesh)
    state, step, stopped = session.run(state, step, vae_steps, vae_step, images)
    if stopped:
      return state, step, True, None
  data = latent_data(config, setup, state, mesh)
  denoiser_step = steps_lib.make_denoiser_step(
      models, setup.denoiser_optimizer, mesh, batch_size=config.batch_size,
      uncond_prob=config.uncond_prob, ema_decay=config.ema_decay, seed=config.seed,
      vae_steps=vae_steps)

  alphas_cumprod = step_lib.replicate(_alphas_cumprod(), mesh)

  def log_samples(state, step):
    every = config.train.image_every
    if every and (step - vae_steps) % every == 0:
      grid = sample_grid(config, setup, state, data, alphas_cumprod)
      session.writer.write_images(step, {"samples": grid})
  state, step, stopped = session.run(
      state, step, vae_steps + config.steps, denoiser_step, data, alphas_cumprod,
      after_step=log_samples)
  return state, step, stopped, data


def train_prior(config, workdir, *, allow_config_change=False, progress=True):
  """Trains (or resumes) the pipeline in `workdir` and writes WORKDIR/pipeline.

  Raises:
    UserError: a bad config value, a missing or invalid bank, an image size the VAE and U-Net
      cannot take, or a workdir that holds another run; nothing in the workdir changes then.
  """
  compile_cache.enable_compilation_cache()
  setup, mesh = prepare(config, workdir, allow_config_change=allow_config_change)
  checkpointer = checkpoint_lib.Checkpointer(workdir, save_every=config.train.checkpoint_every,
                                             keep=config.train.keep_checkpoints)
  state, start_step = initial_state(config, setup, mesh, checkpointer, workdir)
  session = _Session(config, workdir, checkpointer, start_step, progress=progress)
  try:
    state, step, stopped, data = _train_phases(config, setup, mesh, session, state,
                                               start_step)
  finally:
    session.close()
  checkpointer.close()
  if stopped:
    return PriorTrained(pipeline=None, step=step, finished=False)
  directory = os.path.join(os.fspath(workdir), PIPELINE_SUBDIR)
  if distributed.is_primary():
    write_pipeline(config, setup, state, data, directory)
  return PriorTrained(pipeline=directory, step=step, finished=True)
