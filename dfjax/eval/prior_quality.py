"""A learned prior judged as a generator: does a sample show the object and view it was asked?

Samples of each view-dependent prompt ("{caption}, {front|side|back|overhead} view") are
labelled by their nearest bank image (Euclidean distance in pixel space, a 1-nearest-neighbour
classifier over the training banks): the object accuracy is the fraction whose nearest image
has the prompt's caption, the view accuracy the fraction whose nearest image also lies in the
prompt's view bucket. On the toy world the bank covers each object densely, so the nearest
image is a faithful label; a sample unlike every bank image still gets a label, which is why
the distance itself is reported too.

Data flow: train_prior (data, sampling) -> here -> tests, the model card's numbers.
"""
import dataclasses

import jax
import numpy as np


def nearest_bank_index(samples, bank_images, *, chunk=256):
  """Index of each sample's nearest bank image and the RMS distance to it.

  Args:
    samples: [M, H, W, 3] float in [0, 1].
    bank_images: [N, H, W, 3] float in [0, 1] (or uint8, divided by 255).

  Returns:
    (index [M] int, rms_distance [M] float).
  """
  bank = np.asarray(bank_images, np.float32)
  if bank_images.dtype == np.uint8:
    bank = bank / 255.0
  bank = bank.reshape(bank.shape[0], -1)
  queries = np.asarray(samples, np.float32).reshape(len(samples), -1)
  best, best_distance = [], []
  bank_norms = np.sum(bank * bank, axis=1)
  for start in range(0, len(queries), chunk):
    part = queries[start:start + chunk]
    squared = (np.sum(part * part, axis=1)[:, None] - 2.0 * part @ bank.T + bank_norms[None])
    index = np.argmin(squared, axis=1)
    best.append(index)
    best_distance.append(np.sqrt(np.maximum(squared[np.arange(len(part)), index], 0.0)
                                 / bank.shape[1]))
  return np.concatenate(best), np.concatenate(best_distance)


@dataclasses.dataclass(frozen=True)
class SampleScores:
  """How samples of prompts (caption, view bucket) were classified.

  Attributes:
    object_accuracy: fraction of samples whose nearest bank image has their caption.
    view_accuracy: fraction whose nearest image has their caption and their view bucket.
    per_caption: {caption: object accuracy of its samples}.
    rms_distance: mean RMS pixel distance of a sample to its nearest bank image.
  """
  object_accuracy: float
  view_accuracy: float
  per_caption: dict
  rms_distance: float


def score_samples(samples, caption_index, view_bucket, *, bank_images, bank_caption_index,
                  bank_view_bucket, captions):
  """Classifies samples by their nearest bank image and scores them against what was asked.

  Args:
    samples: [M, H, W, 3] in [0, 1].
    caption_index, view_bucket: [M] int, what each sample was asked to show.
    bank_images: [N, H, W, 3]; bank_caption_index, bank_view_bucket: [N] int labels.
    captions: the caption of each caption index.

  Returns:
    SampleScores.
  """
  index, distance = nearest_bank_index(samples, bank_images)
  object_hit = np.asarray(bank_caption_index)[index] == np.asarray(caption_index)
  view_hit = object_hit & (np.asarray(bank_view_bucket)[index] == np.asarray(view_bucket))
  per_caption = {caption: float(np.mean(object_hit[np.asarray(caption_index) == c]))
                 for c, caption in enumerate(captions)
                 if np.any(np.asarray(caption_index) == c)}
  return SampleScores(object_accuracy=float(np.mean(object_hit)),
                      view_accuracy=float(np.mean(view_hit)), per_caption=per_caption,
                      rms_distance=float(np.mean(distance)))


def sample_every_prompt(sampler, data, *, samples_per_prompt, seed=0, num_steps=25,
                        guidance_scale=7.5, view_suffixes):
  """Samples of every (caption, view bucket) prompt of `data` and their scores.

  Args:
    sampler: `train_prior.sampling.PipelineSampler`.
    data: `train_prior.data.PriorData` of the banks to classify against.
    samples_per_prompt: images drawn per prompt.
    view_suffixes: the four suffixes the prompts are built with.

  Returns:
    (images [C * 4 * samples_per_prompt, H, W, 3], SampleScores); images are ordered caption
    by caption, then view bucket, then sample.
  """
  prompts, captions, buckets = [], [], []
  for c, caption in enumerate(data.captions):
    for bucket, suffix in enumerate(view_suffixes):
      prompts += [f"{caption}, {suffix}"] * samples_per_prompt
      captions += [c] * samples_per_prompt
      buckets += [bucket] * samples_per_prompt
  images = sampler.sample(prompts, jax.random.PRNGKey(seed), num_steps=num_steps,
                          guidance_scale=guidance_scale)
  scores = score_samples(
      images, np.asarray(captions), np.asarray(buckets),
      bank_images=(data.images + 1.0) / 2.0, bank_caption_index=data.caption_index,
      bank_view_bucket=data.view_bucket, captions=data.captions)
  return images, scores


def exact_conditional_eps(x_t, alpha_bar, view_bucket, *, latents, latent_buckets):
  """The exact noise prediction of the empirical distribution of `latents` whose view bucket is
  each sample's (the ideal denoiser, Karras et al. 2022, App. B.3, as `priors.bank` computes it
  for pixels), in latent space.

  Args:
    x_t: [B, h, w, c] noisy latents.
    alpha_bar: [B] abar_t.
    view_bucket: [B] int, the bucket whose latents each row may come from.
    latents: [N, h, w, c] clean latents (the training images of one caption, encoded).
    latent_buckets: [N] int view bucket of each latent.

  Returns:
    [B, h, w, c] eps.
  """
  from dfjax.priors import bank as bank_lib  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  flat = jnp.reshape(latents, (latents.shape[0], -1))
  x = jnp.reshape(x_t, (x_t.shape[0], -1))
  log_weights = bank_lib.ideal_denoiser_log_weights(x, flat, jnp.sum(flat * flat, axis=1),
                                                    alpha_bar)
  mask = jnp.asarray(latent_buckets)[None, :] == jnp.asarray(view_bucket)[:, None]
  x0 = bank_lib.masked_posterior_mean(log_weights, mask, flat)
  return jnp.reshape(bank_lib.eps_from_x0(x, x0, alpha_bar), x_t.shape)


def eps_relative_error(predict_noise, key, *, latents, latent_buckets, alphas_cumprod,
                       timesteps, batch):
  """Relative error ||eps_learned - eps_exact|| / ||eps_exact|| of a conditional noise
  prediction against the exact one, per timestep.

  For each t: `batch` clean latents drawn from `latents`, noised by the forward process, and
  the prediction for their own view bucket compared with `exact_conditional_eps`.

  Args:
    predict_noise: (x_t [B,h,w,c], timesteps [B], view_bucket [B]) -> eps [B,h,w,c].
    key: PRNG key.
    latents: [N, h, w, c]; latent_buckets: [N] int.
    alphas_cumprod: [T].
    timesteps: the t to evaluate at.
    batch: samples per t.

  Returns:
    [len(timesteps)] mean relative error per t.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dfjax.priors import diffusion  # pylint: disable=g-import-not-at-top
  errors = []
  for i, t in enumerate(timesteps):
    k_index, k_noise = jax.random.split(jax.random.fold_in(key, i))
    index = jax.random.randint(k_index, (batch,), 0, latents.shape[0])
    x0, buckets = jnp.asarray(latents)[index], jnp.asarray(latent_buckets)[index]
    t_batch = jnp.full((batch,), t, jnp.int32)
    x_t = diffusion.add_noise(alphas_cumprod, x0, jax.random.normal(k_noise, x0.shape), t_batch)
    alpha_bar = jnp.asarray(alphas_cumprod, jnp.float32)[t_batch]
    exact = exact_conditional_eps(x_t, alpha_bar, buckets, latents=latents,
                                  latent_buckets=latent_buckets)
    learned = predict_noise(x_t, t_batch, buckets)
    norm = lambda v: jnp.sqrt(jnp.sum(jnp.square(v), axis=(1, 2, 3)))
    errors.append(float(jnp.mean(norm(learned - exact) / norm(exact))))
  return np.asarray(errors)
