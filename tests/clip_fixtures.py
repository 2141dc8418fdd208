"""A tiny random CLIP in Flax format, written to disk for tests (no downloads).

No installed package ships a CLIP BPE vocabulary, so the tokenizer is built from the 256
byte-level symbols, their `</w>` forms and the two special tokens, with no merges.
"""
import json

import jax
import numpy as np
from transformers import CLIPConfig, CLIPTokenizer, FlaxCLIPModel
from transformers.models.clip.tokenization_clip import bytes_to_unicode


def tiny_tokenizer(directory):
  """A valid CLIP BPE tokenizer with byte-level symbols only (no merges)."""
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (directory / "merges.txt").write_text("#version: 0.2\n")
  return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                       pad_token="<|endoftext|>")


def write_tiny_clip(directory, *, hidden_size, intermediate_size, num_hidden_layers,
                    num_attention_heads, max_position_embeddings, image_size, patch_size,
                    projection_dim, seed=0):
  """Save a random FlaxCLIPModel and its tokenizer in `directory`; returns the tokenizer.

  Weights are drawn from the parameter shapes (jax.eval_shape), skipping Flax's slow eager
  initialisation.
  """
  tokenizer = tiny_tokenizer(directory)
  shared = dict(hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads)
  config = CLIPConfig(
      text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **shared),
      vision_config=dict(image_size=image_size, patch_size=patch_size, **shared),
      projection_dim=projection_dim)
  model = FlaxCLIPModel(config, _do_init=False)
  shapes = jax.eval_shape(lambda key: model.init_weights(key, model.input_shape),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  model.save_pretrained(directory, params=params)
  tokenizer.save_pretrained(directory)
  return tokenizer
