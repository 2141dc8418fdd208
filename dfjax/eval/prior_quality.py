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
