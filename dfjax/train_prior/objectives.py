"""The losses a latent diffusion model is trained with, one pure function per equation.

The VAE (Rombach et al. 2022, §3 and App. G; Kingma & Welling 2014) is trained as a
KL-regularised autoencoder: an L1 reconstruction loss plus a small KL term towards N(0, I)
(Stable Diffusion adds a perceptual and an adversarial loss, which these tiny images do without).
The U-Net is trained with the simplified DDPM objective (Ho et al. 2020, Eq. 14) on scaled
latents, its text condition replaced by the empty prompt a fraction of the time
(classifier-free guidance, Ho & Salimans 2022, §3.2).

Data flow: the bottom of train_prior -> train_prior.steps.
"""
import jax
import jax.numpy as jnp


def gaussian_sample(mean, logvar, noise):
  """Reparameterised sample z = mean + exp(logvar / 2) * noise (Kingma & Welling 2014, Eq. 10).

  Args:
    mean, logvar, noise: [batch, h, w, c].

  Returns:
    z: [batch, h, w, c].
  """
  return mean + jnp.exp(0.5 * logvar) * noise


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per image (Kingma & Welling 2014, App. B).

  KL = 1/2 sum (mean^2 + exp(logvar) - 1 - logvar) over the latent's elements.

  Args:
    mean, logvar: [batch, h, w, c].

  Returns:
    kl: [batch].
  """
  terms = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def vae_loss(images, reconstructions, mean, logvar, *, kl_weight):
  """L1 reconstruction plus weighted KL, both per pixel value (Rombach et al. 2022, App. G).

  loss = mean |x - x_rec| + kl_weight * mean_batch(KL) / (H W C). Stable Diffusion sums both
  terms over pixels with kl_weight 1e-6; dividing both by the pixel count keeps that ratio.

  Args:
    images, reconstructions: [batch, H, W, C] in [-1, 1].
    mean, logvar: [batch, h, w, c], the encoder's posterior.
    kl_weight: weight of the KL term.

  Returns:
    (loss, {"reconstruction_l1": ..., "kl": mean KL per image}).
  """
  l1 = jnp.mean(jnp.abs(images - reconstructions))
  kl = jnp.mean(kl_to_standard_normal(mean, logvar))
  loss = l1 + kl_weight * kl / (images[0].size)
  return loss, {"reconstruction_l1": l1, "kl": kl}


def drop_condition(prompt_index, drop, *, unconditional_index):
  """Classifier-free guidance training (Ho & Salimans 2022, Alg. 1): the prompt of each image
  where `drop` is True is replaced by the empty prompt.

  Args:
    prompt_index: [batch] int32 rows of the prompt table.
    drop: [batch] bool.
    unconditional_index: the empty prompt's row.

  Returns:
    [batch] int32.
  """
  return jnp.where(drop, unconditional_index, prompt_index)


def denoising_loss(predicted_noise, noise):
  """The simplified DDPM objective E ||eps - eps_theta(x_t, t, c)||^2 (Ho et al. 2020, Eq. 14),
  as a mean over elements.

  Args:
    predicted_noise, noise: [batch, h, w, c].

  Returns:
    scalar.
  """
  return jnp.mean(jnp.square(predicted_noise.astype(jnp.float32) - noise))


def ema_update(ema, params, *, decay):
  """Exponential moving average of weights, ema <- decay ema + (1 - decay) params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def ema_decay(step, *, max_decay):
  """The EMA decay at `step`, warmed up as min(max_decay, (1 + step) / (10 + step)) so early
  averages are not dominated by the random initialisation."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))
