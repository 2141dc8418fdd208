"""A CLIP tokenizer built offline: byte-level symbols plus a small BPE learnt from captions.

Stable Diffusion reads prompts through CLIP's byte-pair encoding (Radford et al. 2021; BPE,
Sennrich et al. 2016). No CLIP vocabulary ships in any installed package, so the tokenizer of a
trained toy pipeline is built here: the 256 byte-level symbols of CLIP's byte-to-unicode map
and their end-of-word forms (so that any text, also a word never seen, can be tokenised),
merges learnt greedily over the words of the training prompts (so that a caption is a few
tokens instead of one per character), and the two special tokens, last. The result is a plain
`transformers.CLIPTokenizer` written with `save_pretrained`.

Data flow: the captions of the training data -> here -> train_prior.loop (the pipeline's
tokenizer/ folder and the token ids the text encoder is trained on).
"""
import collections
import json
import os
import re
import tempfile

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def caption_words(texts):
  """Word counts of `texts` as CLIP's pre-tokenizer splits them (lower case; runs of letters,
  of digits, single other symbols)."""
  counts = collections.Counter()
  for text in texts:
    counts.update(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()))
  return counts


def learn_merges(word_counts, *, max_merges):
  """Byte-pair merges (Sennrich et al. 2016, Alg. 1) over words in CLIP's symbol form.

  A word is its characters with "</w>" on the last one; each round merges the most frequent
  adjacent pair (ties broken by the pair itself, so the result is deterministic), until every
  word is one symbol or `max_merges` merges were made.

  Args:
    word_counts: {word: count}, words of ASCII letters, digits or punctuation.
    max_merges: the most merges to learn.

  Returns:
    list of (left, right) symbol pairs, in merge order.
  """
  words = {tuple(word[:-1]) + (word[-1] + "</w>",): count
           for word, count in word_counts.items() if word}
  merges = []
  while len(merges) < max_merges:
    pairs = collections.Counter()
    for symbols, count in words.items():
      for pair in zip(symbols, symbols[1:]):
        pairs[pair] += count
    if not pairs:
      break
    best = min(pairs, key=lambda pair: (-pairs[pair], pair))
    merges.append(best)
    words = {_merge(symbols, best): count for symbols, count in words.items()}
  return merges


def _merge(symbols, pair):
  """`symbols` with every adjacent occurrence of `pair` joined into one symbol."""
  out, i = [], 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      out.append(symbols[i] + symbols[i + 1])
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return tuple(out)


def vocabulary(merges):
  """CLIP's vocabulary layout: 256 byte symbols, their "</w>" forms, one token per merge, then
  <|startoftext|> and <|endoftext|>. Returns {token: id}."""
  from transformers.models.clip.tokenization_clip import bytes_to_unicode
  symbols = list(bytes_to_unicode().values())
  tokens = symbols + [s + "</w>" for s in symbols]
  for left, right in merges:
    if left + right not in tokens:
      tokens.append(left + right)
  tokens += [BOS, EOS]
  return {token: index for index, token in enumerate(tokens)}


def build_tokenizer(texts, *, max_merges, model_max_length):
  """A `CLIPTokenizer` whose merges are learnt from `texts`.

  Args:
    texts: the training prompts.
    max_merges: the most BPE merges to learn.
    model_max_length: the padded prompt length L (the text encoder's positions).

  Returns:
    transformers.CLIPTokenizer (save it with `save_pretrained`).
  """
  from transformers import CLIPTokenizer
  merges = learn_merges(caption_words(texts), max_merges=max_merges)
  with tempfile.TemporaryDirectory() as scratch:
    vocab_file = os.path.join(scratch, "vocab.json")
    merges_file = os.path.join(scratch, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
      json.dump(vocabulary(merges), f)
    with open(merges_file, "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)


def token_ids(tokenizer, texts):
  """[len(texts), L] int32 ids, padded with <|endoftext|> to the tokenizer's length, as Stable
  Diffusion pads its prompts (and `priors.stable_diffusion.prompt_embeddings` reads them)."""
  return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                   truncation=True, return_tensors="np").input_ids.astype("int32")


def longest_prompt(tokenizer, texts):
  """The most tokens any of `texts` takes, <|startoftext|> and <|endoftext|> included."""
  return max(len(tokenizer(text, truncation=False).input_ids) for text in texts)
