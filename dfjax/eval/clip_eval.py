"""CLIP R-Precision: how often CLIP retrieves a render's own prompt among a set of captions.

DreamFusion's Table 1 (arXiv:2209.14988 §4) follows Dream Fields (Jain et al. 2022, §5):
each scene is rendered at 30 degrees elevation from several azimuths, every render is embedded
with a CLIP image encoder (Radford et al. 2021), and counted as a hit when, among the text
embeddings of 153 object-centric COCO captions, the one with the highest cosine similarity is
the scene's own prompt. R-Precision is the fraction of hits over all renders, i.e. averaged
over azimuths and scenes. "Geometry" R-Precision uses textureless, shaded renders.

This module holds the CLIP side only: loading a Flax CLIP model, embedding texts and images
(renders [M, H, W, 3] in [0, 1] made by the caller), the retrieval score and the paper's numbers.

Data flow: transformers' Flax CLIP -> here -> dfjax.evaluate (the R-Precision command line).
"""
import collections
import dataclasses
import json
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from transformers import CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel

from dfjax.errors import UserError

# OpenAI CLIP's image normalisation (Radford et al. 2021), used when a model directory has no
# preprocessor_config.json.
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# arXiv:2209.14988 Table 1, CLIP R-Precision in percent, keyed by the evaluating CLIP's image
# encoder and by the renders: "color" (albedo and shading) or "geometry" (textureless).
PAPER_R_PRECISION = {
    "B/32": {"color": 75.1, "geometry": 42.5},
    "B/16": {"color": 77.5, "geometry": 46.6},
    "L/14": {"color": 79.7, "geometry": 58.5},
}
# Same table: R-Precision of the ground-truth COCO images for their own captions (an upper
# reference; not reported for L/14).
PAPER_GROUND_TRUTH_R_PRECISION = {"B/32": 77.1, "B/16": 79.1}


@dataclasses.dataclass(frozen=True)
class Clip:
  """A loaded CLIP model with its tokenizer and image normalisation.

  Attributes:
    name: the directory or hub id it was loaded from.
    architecture: "B/32", "B/16", "L/14" (the keys of PAPER_R_PRECISION) or None if the
      vision tower is none of those.
    tokenizer: a transformers CLIPTokenizer.
    params: the frozen Flax parameter pytree.
    image_size: side S of the square image the vision tower takes.
    image_mean: per-channel RGB mean (3 floats) subtracted before the vision tower.
    image_std: per-channel RGB standard deviation (3 floats).
    max_length: token sequence length (the text tower's position embeddings).
    text_features: jitted (params, input_ids [B, L], attention_mask [B, L]) -> [B, D].
    image_features: jitted (params, images [B, H, W, 3] in [0, 1]) -> [B, D].
  """
  name: str
  architecture: str | None
  tokenizer: object
  params: dict
  image_size: int
  image_mean: tuple
  image_std: tuple
  max_length: int
  text_features: Callable
  image_features: Callable


def clip_architecture(vision_config) -> str | None:
  """The paper's name for a CLIP vision tower: B/<patch> or L/<patch>, None for other sizes.

  Args:
    vision_config: a transformers CLIPVisionConfig; ViT-B has 12 layers of width 768, ViT-L
      24 layers of width 1024.
  """
  size = {(12, 768): "B", (24, 1024): "L"}.get(
      (vision_config.num_hidden_layers, vision_config.hidden_size))
  return None if size is None else f"{size}/{vision_config.patch_size}"


def preprocess_images(images: jax.Array, *, image_size: int, image_mean, image_std) -> jax.Array:
  """CLIP's image preprocessing in jnp: resize, centre crop, normalise, channels first.

  Like CLIP's own pipeline, the shorter side is resized (bicubic, antialiased when shrinking)
  to image_size and the centre image_size x image_size square is cropped; square renders are
  simply resized.

  Args:
    images: [B, H, W, 3] RGB in [0, 1].
    image_size: S, the vision tower's input size.
    image_mean: 3 per-channel means.
    image_std: 3 per-channel standard deviations.

  Returns:
    [B, 3, S, S] float32 pixel values (the layout FlaxCLIPModel takes).
  """
  batch, height, width, channels = images.shape
  scale = image_size / min(height, width)
  resized_shape = (batch, max(image_size, round(height * scale)),
                   max(image_size, round(width * scale)), channels)
  resized = jax.image.resize(images.astype(jnp.float32), resized_shape, method="bicubic")
  top = (resized_shape[1] - image_size) // 2
  left = (resized_shape[2] - image_size) // 2
  cropped = resized[:, top:top + image_size, left:left + image_size]
  normalised = (cropped - jnp.asarray(image_mean)) / jnp.asarray(image_std)
  return jnp.transpose(normalised, (0, 3, 1, 2))


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| along the last axis (x: [..., D]); the floor only guards an all-zero vector."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _image_normalisation(model_dir_or_hub_id: str):
  """(mean, std) from the model's preprocessor_config.json if it has one, else CLIP's."""
  try:
    processor = CLIPImageProcessor.from_pretrained(model_dir_or_hub_id)
  except (OSError, json.JSONDecodeError):
    return CLIP_IMAGE_MEAN, CLIP_IMAGE_STD
  return tuple(map(float, processor.image_mean)), tuple(map(float, processor.image_std))


def _load_flax_clip(model_dir_or_hub_id: str):
  """(FlaxCLIPModel, params), without a random initialisation when the weights are Flax's."""
  try:
    model, params = FlaxCLIPModel.from_pretrained(model_dir_or_hub_id, _do_init=False)
    # Without initialisation transformers leaves the weights committed to the host CPU, which
    # would pin every jitted call there; move them to the default device (GPU / TPU if any).
    return model, jax.device_put(params, jax.devices()[0])
  except ValueError as error:
    if "_do_init" not in str(error):
      raise
  # PyTorch-format weights (model.safetensors) are converted against freshly initialised Flax
  # parameters, which transformers only supports with _do_init=True: an eager (slow) random
  # initialisation comes first.
  model = FlaxCLIPModel.from_pretrained(model_dir_or_hub_id)
  return model, model.params


def load_clip(model_dir_or_hub_id: str) -> Clip:
  """Loads a Flax CLIP model, its tokenizer and image normalisation.

  Works offline (HF_HUB_OFFLINE=1) from a local directory holding config.json, the weights
  (flax_model.msgpack, or model.safetensors saved from PyTorch) and the tokenizer files
  (vocab.json, merges.txt), or from a hub id already in the local cache.
  preprocessor_config.json is optional (CLIP's standard mean/std otherwise).

  Raises:
    UserError: the model or its tokenizer cannot be found or read (one line).
  """
  verbosity = transformers.logging.get_verbosity()
  # The Flax classes log a deprecation notice on every load; it says nothing actionable here.
  transformers.logging.set_verbosity_error()
  try:
    model, params = _load_flax_clip(model_dir_or_hub_id)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir_or_hub_id)
  except (OSError, json.JSONDecodeError) as error:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserError(
        f"cannot load CLIP from {model_dir_or_hub_id!r} ({reason}); pass a directory with "
        "config.json, flax_model.msgpack or model.safetensors, vocab.json and merges.txt (e.g. a "
        "download of openai/clip-vit-base-patch32), or a hub id in the local cache") from None
  finally:
    transformers.logging.set_verbosity(verbosity)
  image_mean, image_std = _image_normalisation(model_dir_or_hub_id)
  image_size = int(model.config.vision_config.image_size)

  def text_features(params, input_ids, attention_mask):
    return model.get_text_features(input_ids, attention_mask, params=params)

  def image_features(params, images):
    pixels = preprocess_images(images, image_size=image_size, image_mean=image_mean,
                               image_std=image_std)
    return model.get_image_features(pixels, params=params)

  return Clip(
      name=model_dir_or_hub_id, architecture=clip_architecture(model.config.vision_config),
      tokenizer=tokenizer, params=params, image_size=image_size, image_mean=image_mean,
      image_std=image_std, max_length=int(model.config.text_config.max_position_embeddings),
      text_features=jax.jit(text_features), image_features=jax.jit(image_features))


def _batches(num_items: int, batch_size: int):
  for start in range(0, num_items, batch_size):
    yield start, min(start + batch_size, num_items)


def embed_texts(clip: Clip, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
  """L2-normalised CLIP text embeddings.

  Texts are padded (or truncated) to clip.max_length tokens and embedded in batches of
  batch_size (the last one padded with empty strings), so one compilation serves any count.

  Args:
    clip: from load_clip.
    texts: C strings.
    batch_size: texts per call of the text tower.

  Returns:
    [C, D] float32, unit rows.
  """
  texts = list(texts)
  embeddings = []
  for start, stop in _batches(len(texts), batch_size):
    batch = texts[start:stop] + [""] * (batch_size - (stop - start))
    tokens = clip.tokenizer(batch, padding="max_length", truncation=True,
                            max_length=clip.max_length, return_tensors="np")
    features = clip.text_features(clip.params, tokens["input_ids"].astype(np.int32),
                                  tokens["attention_mask"].astype(np.int32))
    embeddings.append(np.asarray(l2_normalize(features))[:stop - start])
  return np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32)


def embed_images(clip: Clip, images, *, batch_size: int = 32) -> np.ndarray:
  """L2-normalised CLIP image embeddings of renders.

  Args:
    clip: from load_clip.
    images: [M, H, W, 3] RGB in [0, 1] (any H, W; resized to clip.image_size).
    batch_size: images per call (the last batch is zero-padded; one compilation per H, W).

  Returns:
    [M, D] float32, unit rows.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise UserError(f"images must have shape [count, height, width, 3], got {images.shape}")
  embeddings = []
  for start, stop in _batches(len(images), batch_size):
    batch = np.zeros((batch_size,) + images.shape[1:], np.float32)
    batch[:stop - start] = images[start:stop]
    features = clip.image_features(clip.params, batch)
    embeddings.append(np.asarray(l2_normalize(features))[:stop - start])
  return np.concatenate(embeddings)


def retrieval_hits(image_embeds, text_embeds, true_index) -> np.ndarray:
  """Whether each image's most similar caption (by cosine similarity) is its true one.

  Args:
    image_embeds: [M, D] image embeddings.
    text_embeds: [C, D] caption embeddings.
    true_index: [M] int, index into the captions of each image's prompt.

  Returns:
    [M] bool.
  """
  image_embeds, text_embeds = np.asarray(image_embeds), np.asarray(text_embeds)
  true_index = np.asarray(true_index)
  if (image_embeds.ndim != 2 or text_embeds.ndim != 2
      or image_embeds.shape[1] != text_embeds.shape[1]
      or true_index.shape != image_embeds.shape[:1]):
    raise ValueError(f"retrieval needs image_embeds [M, D], text_embeds [C, D] and true_index "
                     f"[M], got {image_embeds.shape}, {text_embeds.shape} and {true_index.shape}")
  if np.any((true_index < 0) | (true_index >= len(text_embeds))):
    raise ValueError(f"true_index must lie in [0, {len(text_embeds)}), got {true_index}")
  similarity = np.asarray(l2_normalize(image_embeds)) @ np.asarray(l2_normalize(text_embeds)).T
  return np.argmax(similarity, axis=1) == true_index


def r_precision(image_embeds, text_embeds, true_index) -> float:
  """CLIP R-Precision (Dream Fields, Jain et al. 2022 §5; DreamFusion Table 1), R = 1.

  Args:
    image_embeds: [M, D] embeddings of all renders (every azimuth of every scene).
    text_embeds: [C, D] embeddings of the caption set.
    true_index: [M] int, the caption index of each render's prompt.

  Returns:
    the fraction of renders whose top-1 retrieved caption is their own prompt, in [0, 1].
  """
  return float(np.mean(retrieval_hits(image_embeds, text_embeds, true_index)))


def read_captions(path: str, *, required: Sequence[str] = ()) -> list:
  """Reads a caption set, one caption per line (surrounding whitespace and blank lines dropped).

  Args:
    path: text file.
    required: prompts that must be in the set (the evaluated scenes' prompts).

  Returns:
    list of captions, in file order.

  Raises:
    UserError: the file is missing or empty, has a duplicate caption, or lacks a required one.
  """
  try:
    with open(path, encoding="utf-8") as file:
      captions = [line.strip() for line in file if line.strip()]
  except OSError as error:
    raise UserError(f"cannot read the caption file {path!r}: {error.strerror}") from None
  if not captions:
    raise UserError(f"the caption file {path!r} has no captions (one per line expected)")
  duplicates = sorted(c for c, count in collections.Counter(captions).items() if count > 1)
  if duplicates:
    raise UserError(f"the caption file {path!r} repeats {duplicates[0]!r}: retrieval needs "
                    "distinct captions")
  missing = [prompt for prompt in required if prompt.strip() not in captions]
  if missing:
    raise UserError(f"the prompt {missing[0]!r} is not in the caption file {path!r}; add it as "
                    "its own line (R-Precision retrieves it among the file's captions)")
  return captions


def caption_indices(captions: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
  """Index of each prompt (whitespace-stripped) in the caption list: [len(prompts)] int32."""
  position = {caption: index for index, caption in enumerate(captions)}
  missing = [p for p in prompts if p.strip() not in position]
  if missing:
    raise UserError(f"the prompt {missing[0]!r} is not among the captions")
  return np.array([position[p.strip()] for p in prompts], np.int32)
