"""Tests for dfjax.eval.clip_eval with a tiny random CLIP built in the test (no downloads).

The reference is transformers' PyTorch CLIPModel with its own CLIPImageProcessor and tokenizer:
the model is saved in Flax format, loaded through load_clip and, as the reference, into
PyTorch, and the normalised embeddings must agree, which checks tokenisation, image resizing,
normalisation, channel order and pooling end to end.
"""
import shutil
import warnings

import numpy as np
import pytest
import torch
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer,
                          FlaxCLIPModel)
from transformers.modeling_flax_pytorch_utils import load_flax_weights_in_pytorch_model

import clip_fixtures
from dfjax.errors import UserError
from dfjax.eval import clip_eval

CAPTIONS = ["a red apple", "a blue car on a road", "an owl", "a wooden chair", "a small boat"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A tiny random CLIP saved in Flax format with its tokenizer and image processor."""
  directory = tmp_path_factory.mktemp("tiny_clip")
  clip_fixtures.write_tiny_clip(
      directory, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=24, image_size=32, patch_size=8,
      projection_dim=16)
  CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                     image_mean=list(MEAN), image_std=list(STD)).save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def clip(model_dir):
  return clip_eval.load_clip(str(model_dir))


@pytest.fixture(scope="module")
def torch_reference(model_dir):
  """(model, tokenizer, processor) from transformers' PyTorch implementation."""
  flax_model, params = FlaxCLIPModel.from_pretrained(model_dir, _do_init=False)
  # transformers' own Flax -> PyTorch weight conversion (from_pretrained(from_flax=True) loads
  # into meta tensors in 4.57 and silently keeps nothing).
  with warnings.catch_warnings():  # torch.from_numpy on a read-only array; copied on load
    warnings.simplefilter("ignore", UserWarning)
    model = load_flax_weights_in_pytorch_model(CLIPModel(flax_model.config), params)
  return (model.eval(), CLIPTokenizer.from_pretrained(model_dir),
          CLIPImageProcessor.from_pretrained(model_dir))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_load_clip_reads_the_model_directory(clip):
  assert clip.image_size == 32 and clip.max_length == 24
  np.testing.assert_allclose(clip.image_mean, MEAN)
  np.testing.assert_allclose(clip.image_std, STD)
  assert clip.architecture is None  # a tiny tower is neither ViT-B nor ViT-L


def test_text_embeddings_match_pytorch_clip(clip, torch_reference):
  model, tokenizer, _ = torch_reference
  ours = clip_eval.embed_texts(clip, CAPTIONS, batch_size=2)  # 3 batches, the last padded
  tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
  with torch.no_grad():
    expected = unit(model.get_text_features(**tokens).numpy())
  assert ours.shape == (5, 16)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  np.testing.assert_array_equal(clip_eval.embed_texts(clip, CAPTIONS, batch_size=2), ours)


def test_image_embeddings_match_pytorch_clip(clip, torch_reference):
  model, _, processor = torch_reference
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # already the input size
  ours = clip_eval.embed_images(clip, images / 255.0, batch_size=2)
  with torch.no_grad():
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    expected = unit(model.get_image_features(pixel_values=pixels).numpy())
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  np.testing.assert_array_equal(clip_eval.embed_images(clip, images / 255.0, batch_size=2), ours)


def test_larger_renders_are_resized_like_clip(clip, torch_reference):
  # A smooth 64 x 96 render: the shorter side is resized to 32 and the centre cropped. jnp's
  # antialiased bicubic and PIL's differ slightly and PIL rounds its result to uint8 (up to
  # 0.5 / 255 / std = 0.01 in normalised units): measured 0.013, allowed 0.03.
  _, _, processor = torch_reference
  y, x = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 96), indexing="ij")
  image = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], axis=-1)
  image_uint8 = np.round(image * 255).astype(np.uint8)
  ours = np.asarray(clip_eval.preprocess_images(
      image_uint8[None] / 255.0, image_size=32, image_mean=MEAN, image_std=STD))
  expected = processor(images=[image_uint8], return_tensors="np")["pixel_values"]
  assert ours.shape == expected.shape == (1, 3, 32, 32)
  np.testing.assert_allclose(ours, expected, atol=0.03)


def test_missing_preprocessor_config_uses_clip_constants(model_dir, tmp_path):
  copy = tmp_path / "no_processor"
  shutil.copytree(model_dir, copy)
  (copy / "preprocessor_config.json").unlink()
  clip = clip_eval.load_clip(str(copy))
  assert clip.image_mean == clip_eval.CLIP_IMAGE_MEAN
  assert clip.image_std == clip_eval.CLIP_IMAGE_STD


def test_missing_model_is_a_one_line_user_error(tmp_path):
  with pytest.raises(UserError, match="cannot load CLIP from") as error:
    clip_eval.load_clip(str(tmp_path / "nowhere"))
  assert "\n" not in str(error.value)


def test_r_precision_of_perfect_and_always_wrong_retrievers(clip):
  text_embeds = clip_eval.embed_texts(clip, CAPTIONS, batch_size=2)
  true_index = np.array([0, 1, 2, 3, 4, 4, 2])
  assert clip_eval.r_precision(text_embeds[true_index], text_embeds, true_index) == 1.0
  wrong = (true_index + 1) % len(CAPTIONS)
  assert clip_eval.r_precision(text_embeds[wrong], text_embeds, true_index) == 0.0
  hits = clip_eval.retrieval_hits(text_embeds[[0, 1, 0]], text_embeds, np.array([0, 1, 2]))
  np.testing.assert_array_equal(hits, [True, True, False])


def test_r_precision_of_a_random_retriever_is_one_over_captions():
  rng = np.random.default_rng(0)
  num_images, num_captions = 4000, 10
  text_embeds = unit(rng.normal(size=(num_captions, 32)))
  image_embeds = unit(rng.normal(size=(num_images, 32)))
  true_index = rng.integers(0, num_captions, num_images)
  # Hits ~ Binomial(4000, 0.1): standard deviation sqrt(0.1 * 0.9 / 4000) = 0.0047; 4 sigma.
  score = clip_eval.r_precision(image_embeds, text_embeds, true_index)
  assert abs(score - 1.0 / num_captions) < 4 * np.sqrt(0.1 * 0.9 / num_images)


def test_r_precision_rejects_bad_shapes():
  with pytest.raises(ValueError, match="true_index"):
    clip_eval.r_precision(np.ones((3, 4)), np.ones((2, 4)), np.array([0, 1]))
  with pytest.raises(ValueError, match="must lie in"):
    clip_eval.r_precision(np.ones((2, 4)), np.ones((2, 4)), np.array([0, 2]))


def test_read_captions(tmp_path):
  path = tmp_path / "captions.txt"
  path.write_text("a red apple\n\n  an owl  \n\na wooden chair\n")
  captions = clip_eval.read_captions(str(path), required=["an owl"])
  assert captions == ["a red apple", "an owl", "a wooden chair"]
  np.testing.assert_array_equal(
      clip_eval.caption_indices(captions, ["a wooden chair", "an owl "]), [2, 1])
  with pytest.raises(UserError, match="'a cat' is not in the caption file"):
    clip_eval.read_captions(str(path), required=["a cat"])
  with pytest.raises(UserError, match="cannot read the caption file"):
    clip_eval.read_captions(str(tmp_path / "missing.txt"))
  path.write_text("an owl\nan owl\n")
  with pytest.raises(UserError, match="repeats 'an owl'"):
    clip_eval.read_captions(str(path))


def test_paper_numbers_and_architecture_names():
  assert clip_eval.PAPER_R_PRECISION["B/32"] == {"color": 75.1, "geometry": 42.5}
  assert clip_eval.PAPER_R_PRECISION["L/14"]["geometry"] == 58.5
  vit_b16 = CLIPConfig().vision_config
  vit_b16.patch_size = 16
  assert clip_eval.clip_architecture(vit_b16) == "B/16"
