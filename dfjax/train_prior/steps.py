"""The jitted, data-parallel training steps of a small Stable Diffusion, and its TrainState.

Training runs in two phases on one step counter, like Stable Diffusion's two stages (Rombach
et al. 2022, §3): steps [0, vae_steps) train the VAE as a KL-regularised autoencoder; then the
whole bank is encoded once, the latent scaling factor is set from the latents' standard
deviation (§4.3.2, App. G), and steps [vae_steps, vae_steps + steps) train the U-Net and the
text encoder together on scaled latents. Every step's randomness is folded from (seed, phase,
step, device), so an interrupted run resumes bitwise.

Each step is one `jax.jit` over a `jax.shard_map` on the trainer's 1-D data mesh
(`train.step.make_mesh`): every device draws its share of the batch from the replicated data,
computes its gradient, and `pmean` averages gradients and metrics, as the 3D trainer does.

Data flow: priors.diffusion, train.step (the mesh), train_prior.models and
train_prior.objectives -> here -> train_prior.loop.
"""
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import PartitionSpec as P

from dfjax.priors import diffusion
from dfjax.train.step import DATA_AXIS
from dfjax.train_prior import models as models_lib
from dfjax.train_prior import objectives

VAE_PHASE, DENOISER_PHASE, SCALING_KEY = 0, 1, 2


@struct.dataclass
class PriorTrainState:
  """Everything that changes while a pipeline trains (checkpointed as one pytree).

  Attributes:
    step: [] int32, steps taken over both phases.
    vae: the VAE's parameters.
    vae_opt_state: their optimizer state.
    denoiser: {"unet": ..., "text_encoder": ...} parameters.
    denoiser_opt_state: their optimizer state.
    ema: the exponential moving average of `denoiser`, the weights that are shipped.
  """
  step: jax.Array
  vae: Any
  vae_opt_state: Any
  denoiser: Any
  denoiser_opt_state: Any
  ema: Any


@struct.dataclass
class Models:
  """The pipeline's Flax modules (static: hashed by identity)."""
  vae: Any = struct.field(pytree_node=False)
  unet: Any = struct.field(pytree_node=False)
  text_encoder: Any = struct.field(pytree_node=False)


def make_optimizer(*, learning_rate, warmup_steps, total_steps, grad_clip):
  """Global-norm clipping, then Adam on a linear warm-up and a cosine decay to 10%."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, warmup_steps=min(warmup_steps, max(total_steps - 1, 1)),
      decay_steps=max(total_steps, 2), end_value=0.1 * learning_rate)
  return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(schedule))


def create_state(params, *, vae_optimizer, denoiser_optimizer):
  """Step 0 from `models.init_params`' weights."""
  denoiser = {"unet": params["unet"], "text_encoder": params["text_encoder"]}
  return PriorTrainState(
      step=jnp.zeros((), jnp.int32), vae=params["vae"],
      vae_opt_state=vae_optimizer.init(params["vae"]), denoiser=denoiser,
      denoiser_opt_state=denoiser_optimizer.init(denoiser),
      ema=jax.tree.map(jnp.copy, denoiser))


def step_key(seed, phase, step, device):
  """The key of one device's share of one step: fold_in(seed, phase, step, device)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), phase)
  return jax.random.fold_in(jax.random.fold_in(key, step), device)


def encode_posterior(vae, vae_params, images):
  """The VAE encoder's Gaussian posterior of images [B, H, W, 3] in [-1, 1] (NHWC in, the
  Flax VAE takes NCHW): (mean, logvar), each [B, h, w, c]."""
  posterior = vae.apply({"params": vae_params}, jnp.transpose(images, (0, 3, 1, 2)),
                        method="encode").latent_dist
  return posterior.mean, posterior.logvar


def decode_latents(vae, vae_params, latents):
  """Unscaled latents [B, h, w, c] to images [B, H, W, 3] in [-1, 1] (unclipped)."""
  return jnp.transpose(vae.apply({"params": vae_params}, latents, method="decode").sample,
                       (0, 2, 3, 1))


def _vae_gradients(vae_params, key, images, *, vae, batch, kl_weight):
  """One device's VAE loss gradient on `batch` images drawn from `images`."""
  k_index, k_sample = jax.random.split(key)
  x = images[jax.random.randint(k_index, (batch,), 0, images.shape[0])]

  def loss_fn(params):
    mean, logvar = encode_posterior(vae, params, x)
    z = objectives.gaussian_sample(mean, logvar, jax.random.normal(k_sample, mean.shape))
    return objectives.vae_loss(x, decode_latents(vae, params, z), mean, logvar,
                               kl_weight=kl_weight)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(vae_params)
  return grads, dict(metrics, loss_vae=loss)


def make_vae_step(models, optimizer, mesh, *, batch_size, kl_weight, seed):
  """The jitted VAE step: (state, images [N, S, S, 3] replicated) -> (state, metrics)."""
  batch = batch_size // mesh.size

  def per_device(state, images):
    key = step_key(seed, VAE_PHASE, state.step, jax.lax.axis_index(DATA_AXIS))
    grads, metrics = _vae_gradients(state.vae, key, images, vae=models.vae, batch=batch,
                                    kl_weight=kl_weight)
    grads, metrics = jax.lax.pmean((grads, metrics), DATA_AXIS)
    updates, opt_state = optimizer.update(grads, state.vae_opt_state, state.vae)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, vae=optax.apply_updates(state.vae, updates),
                         vae_opt_state=opt_state), metrics

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()),
                          check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


@struct.dataclass
class LatentData:
  """The bank in latent space, for the U-Net phase (replicated on every device).

  Attributes:
    mean, logvar: [N, h, w, c] the VAE posterior of every image.
    scaling_factor: [] float32, latents are multiplied by it (unit standard deviation).
    prompt_index: [N] int32 rows of the prompt table.
    token_ids: [P + 1, L] int32 token ids of the prompt table (the empty prompt last).
  """
  mean: jax.Array
  logvar: jax.Array
  scaling_factor: jax.Array
  prompt_index: jax.Array
  token_ids: jax.Array


def _denoiser_gradients(denoiser, key, data, alphas_cumprod, *, models, batch, uncond_prob):
  """One device's denoising loss gradient (Ho et al. 2020, Alg. 1, with CFG dropout)."""
  k_index, k_latent, k_drop, k_t, k_noise = jax.random.split(key, 5)
  index = jax.random.randint(k_index, (batch,), 0, data.mean.shape[0])
  mean, logvar = data.mean[index], data.logvar[index]
  x0 = data.scaling_factor * objectives.gaussian_sample(
      mean, logvar, jax.random.normal(k_latent, mean.shape))
  prompts = objectives.drop_condition(
      data.prompt_index[index], jax.random.uniform(k_drop, (batch,)) < uncond_prob,
      unconditional_index=data.token_ids.shape[0] - 1)
  timesteps = jax.random.randint(k_t, (batch,), 0, alphas_cumprod.shape[0])
  noise = jax.random.normal(k_noise, x0.shape)
  x_t = diffusion.add_noise(alphas_cumprod, x0, noise, timesteps)

  def loss_fn(params):
    states = models_lib.text_hidden_states(models.text_encoder, params["text_encoder"],
                                           data.token_ids)
    predicted = models.unet.apply({"params": params["unet"]}, jnp.transpose(x_t, (0, 3, 1, 2)),
                                  timesteps, states[prompts]).sample
    return objectives.denoising_loss(jnp.transpose(predicted, (0, 2, 3, 1)), noise)
  loss, grads = jax.value_and_grad(loss_fn)(denoiser)
  return grads, {"loss_unet": loss}


def make_denoiser_step(models, optimizer, mesh, *, batch_size, uncond_prob, ema_decay, seed,
                       vae_steps):
  """The jitted U-Net and text encoder step: (state, LatentData, alphas_cumprod [T]) ->
  (state, metrics), with the EMA of the weights updated after each step."""
  batch = batch_size // mesh.size

  def per_device(state, data, alphas_cumprod):
    key = step_key(seed, DENOISER_PHASE, state.step, jax.lax.axis_index(DATA_AXIS))
    grads, metrics = _denoiser_gradients(state.denoiser, key, data, alphas_cumprod,
                                         models=models, batch=batch, uncond_prob=uncond_prob)
    grads, metrics = jax.lax.pmean((grads, metrics), DATA_AXIS)
    updates, opt_state = optimizer.update(grads, state.denoiser_opt_state, state.denoiser)
    denoiser = optax.apply_updates(state.denoiser, updates)
    decay = objectives.ema_decay(state.step - vae_steps, max_decay=ema_decay)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, denoiser=denoiser, denoiser_opt_state=opt_state,
                         ema=objectives.ema_update(state.ema, denoiser, decay=decay)), metrics

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P()),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=0)


@functools.partial(jax.jit, static_argnames=("vae",))
def _encode_chunk(vae_params, images, *, vae):
  return encode_posterior(vae, vae_params, images)


def encode_bank(vae, vae_params, images, *, chunk=256):
  """The posterior (mean, logvar) of every image, [N, h, w, c] each, in fixed-size chunks
  (the last one padded) so one compiled encoder serves any N."""
  means, logvars = [], []
  for start in range(0, images.shape[0], chunk):
    part = images[start:start + chunk]
    padded = jnp.pad(part, ((0, chunk - part.shape[0]), (0, 0), (0, 0), (0, 0)))
    mean, logvar = _encode_chunk(vae_params, padded, vae=vae)
    means.append(mean[:part.shape[0]])
    logvars.append(logvar[:part.shape[0]])
  return jnp.concatenate(means), jnp.concatenate(logvars)


def latent_scaling_factor(mean, logvar, *, seed):
  """1 / std of posterior samples of the whole bank, as Stable Diffusion's authors set
  theirs (Rombach et al. 2022, §4.3.2: rescale "by the component-wise standard deviation" so
  the latents have unit variance; 0.18215 for SD 1.x). Deterministic given (mean, logvar)."""
  noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), SCALING_KEY),
                            mean.shape)
  return 1.0 / jnp.std(objectives.gaussian_sample(mean, logvar, noise))
