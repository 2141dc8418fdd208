"""Reading Stable Diffusion checkpoints: pipeline folders, hub snapshots, weight files.

The plumbing under `dfjax.priors.stable_diffusion.load_stable_diffusion`: where a pipeline
lives (a diffusers-format directory, or a hub id resolved through the local Hugging Face
cache), which of its configs the Flax models of diffusers 0.39 implement (anything else is
refused rather than built silently wrong), and how weights are read: Flax msgpack directly, or
PyTorch safetensors read with numpy and converted to Flax names and layouts here, without torch.

Data flow: priors.diffusion (the noise schedule) -> here -> priors.stable_diffusion.
"""
import json
import logging
import os
import re

import jax
import numpy as np
from flax import traverse_util

from dfjax.errors import UserError
from dfjax.priors import diffusion


# Prediction targets of the U-Net that can be turned into the noise SDS needs.
PREDICTION_TYPES = ("epsilon", "v_prediction")


FLAX_WEIGHT_FILES = ("diffusion_flax_model.msgpack", "flax_model.msgpack")


TORCH_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


# Buffers PyTorch checkpoints store that are not weights (CLIP's position ids).
_TORCH_BUFFERS = ("position_ids",)


# diffusers' PyTorch attention layers name their projections to_q/to_k/to_v/to_out.0; the Flax
# VAE names them query/key/value/proj_attn.
_ATTENTION_RENAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out_0": "proj_attn"}


# The pipeline's subfolders the prior reads (the VAE last: use_vae=False skips it).
COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class _DropFlaxDeprecation(logging.Filter):
  """Drops the "Flax classes are deprecated" warnings of diffusers 0.39 and transformers 4.57.

  diffusers repeats it on every Flax module setup; dfjax pins those versions on purpose, so for
  a user the warning is only noise.
  """

  def filter(self, record):
    return "classes are deprecated and will be removed" not in record.getMessage()


def silence_flax_deprecation():
  """Adds the filter to the handlers of diffusers' and transformers' library loggers."""
  import diffusers
  import transformers
  for library in ("diffusers", "transformers"):
    for handler in logging.getLogger(library).handlers:
      if not any(isinstance(f, _DropFlaxDeprecation) for f in handler.filters):
        handler.addFilter(_DropFlaxDeprecation())


def flax_model_classes():
  """(FlaxUNet2DConditionModel, FlaxAutoencoderKL), with their deprecation warnings silenced."""
  silence_flax_deprecation()
  import diffusers
  return diffusers.FlaxUNet2DConditionModel, diffusers.FlaxAutoencoderKL


# Config values the Flax U-Net and VAE of diffusers 0.39 implement; a checkpoint asking for
# anything else would be built silently wrong, so it is refused.
UNET_FLAX_SUPPORTS = {
    "act_fn": "silu", "addition_embed_type": None, "attention_type": "default",
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_norm": None,
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "norm_eps": 1e-5, "norm_num_groups": 32, "num_attention_heads": None,
    "num_class_embeds": None, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "reverse_transformer_layers_per_block": None,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None,
}


VAE_FLAX_SUPPORTS = {
    "act_fn": "silu", "mid_block_add_attention": True, "shift_factor": None,
    "use_quant_conv": True, "use_post_quant_conv": True,
}


def load_component(root, name, module_class, supports, compute_dtype, **module_options):
  """A Flax module built from `root/name/config.json` and its float32 weights.

  `module_options` are module fields that do not change the weights (e.g. the U-Net's
  attention implementation); they override the config file.
  """
  folder = component_dir(root, name)
  config_path = os.path.join(folder, "config.json")
  config = _read_json(config_path)
  _check_supported(config, supports, config_path)
  module = _module_from_config(module_class, dict(config, **module_options), folder,
                               compute_dtype)
  abstract = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  return module, load_weights(folder, abstract, join_indices=True), folder


def _module_from_config(module_class, config, folder, compute_dtype):
  """Builds a diffusers Flax module from a (Flax or PyTorch) config.json dict."""
  try:
    return module_class.from_config(config, dtype=compute_dtype)
  except (TypeError, ValueError, KeyError) as error:
    raise UserError(f"{folder}/config.json does not describe a {module_class.__name__}: "
                    f"{first_line(error)}") from error


def _check_supported(config, supported, path):
  """Refuses config values the Flax models do not implement."""
  for key, value in supported.items():
    if key in config and config[key] != value:
      raise UserError(f"{path}: {key}={config[key]!r} is not supported by the Flax models "
                      f"(only {value!r}); use a Stable Diffusion 1.x/2.x checkpoint")


def load_schedule(root):
  """alphas_cumprod [T] and the prediction type from scheduler/scheduler_config.json."""
  path = os.path.join(component_dir(root, "scheduler"), "scheduler_config.json")
  config = _read_json(path)
  if config.get("trained_betas") is not None:
    raise UserError(f"{path}: trained_betas are not supported; use a named beta_schedule")
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in PREDICTION_TYPES:
    raise UserError(f"{path}: prediction_type {prediction_type!r} is not supported; "
                    f"use one of {PREDICTION_TYPES}")
  names = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
  try:
    alphas_cumprod = diffusion.alphas_cumprod_from_config(
        **{name: config[name] for name in names if name in config})
  except UserError as error:
    raise UserError(f"{path}: {error}") from error
  return alphas_cumprod, prediction_type


def load_weights(folder, abstract, *, join_indices):
  """Float32 weights of one component, from Flax msgpack or PyTorch safetensors files.

  Flax msgpack (`diffusion_flax_model.msgpack`, `flax_model.msgpack`) is preferred when both
  formats are present. Safetensors files (single or sharded with an `.index.json`) are read
  with numpy and converted by `convert_torch_state_dict`; torch is not needed.

  Args:
    folder: the component's directory.
    abstract: the Flax parameter tree of the model built from the folder's config, leaves
      with `.shape` (e.g. from `jax.eval_shape` of its init).
    join_indices: how PyTorch names map to Flax names (see `convert_torch_state_dict`).

  Returns:
    the parameter tree (nested dicts of float32 np.ndarray), checked against `abstract`.
  """
  for name in FLAX_WEIGHT_FILES:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return _check_tree(_read_msgpack(path), abstract, path)
  for name in TORCH_WEIGHT_FILES:
    files = _safetensors_files(folder, name)
    if files:
      state = {}
      for path in files:
        state.update(_read_safetensors(path))
      return convert_torch_state_dict(state, abstract, source=files[0],
                                      join_indices=join_indices)
  raise UserError(f"no weights in {folder}: expected one of "
                  f"{', '.join(FLAX_WEIGHT_FILES + TORCH_WEIGHT_FILES)}")


def _safetensors_files(folder, name):
  """The file `name`, or the shards its `.index.json` lists, or [] if neither exists."""
  path = os.path.join(folder, name)
  if os.path.isfile(path):
    return [path]
  index_path = path + ".index.json"
  if not os.path.isfile(index_path):
    return []
  shards = sorted(set(_read_json(index_path).get("weight_map", {}).values()))
  missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
  if missing or not shards:
    raise UserError(f"{index_path} lists shards that are missing: {missing or 'none listed'}")
  return [os.path.join(folder, s) for s in shards]


def _read_msgpack(path):
  """A Flax msgpack parameter file as nested dicts of float32 arrays."""
  from flax import serialization
  try:
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except Exception as error:  # msgpack raises several unrelated types on corrupt files.
    raise UserError(f"cannot read {path}: {first_line(error)}") from error
  return jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), tree)


def _read_safetensors(path):
  """A safetensors file as {name: float32 np.ndarray}.

  numpy cannot hold bfloat16 tensors, so files with any are read through jax, on the CPU so
  that a multi-gigabyte checkpoint does not pass through accelerator memory.
  """
  import safetensors
  try:
    try:
      with safetensors.safe_open(path, framework="numpy") as f:
        return {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
    except TypeError:  # "data type 'bfloat16' not understood"
      with jax.default_device(jax.devices("cpu")[0]):
        with safetensors.safe_open(path, framework="flax") as f:
          return {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
  except Exception as error:  # safetensors raises its own error types on corrupt files.
    raise UserError(f"cannot read {path}: {first_line(error)}") from error


def convert_torch_state_dict(state, abstract, *, source, join_indices):
  """Maps a PyTorch state dict (numpy arrays) onto a Flax parameter tree, without torch.

  Names: "a.b.weight" becomes ("a", "b", leaf) with leaf the one of kernel / scale /
  embedding the Flax tree has ("gamma"/"beta" of old LayerNorms become scale/bias). diffusers
  writes list indices into the module name ("down_blocks.0" -> "down_blocks_0",
  join_indices=True), transformers keeps them as their own level ("layers", "0"); the VAE's
  attention projections to_q/to_k/to_v/to_out.0 become query/key/value/proj_attn.
  Layouts: convolution kernels OIHW -> HWIO, linear kernels [out, in] -> [in, out] (a 1x1
  convolution stored for a linear layer, as in old VAE checkpoints, is squeezed first).

  Args:
    state: {PyTorch name: np.ndarray}.
    abstract: the Flax parameter tree with the target shapes.
    source: file name for error messages.
    join_indices: True for diffusers models, False for transformers models.

  Returns:
    the Flax parameter tree (nested dicts of float32 np.ndarray).

  Raises:
    UserError: a weight is missing, unexpected or has the wrong shape.
  """
  targets = {key: tuple(leaf.shape) for key, leaf in
             traverse_util.flatten_dict(_as_dict(abstract)).items()}
  flat, unexpected = {}, []
  for name, array in state.items():
    key = _flax_key(name, targets, join_indices=join_indices)
    if key is None:
      if name.split(".")[-1] not in _TORCH_BUFFERS:
        unexpected.append(name)
      continue
    flat[key] = _to_flax_layout(np.asarray(array, np.float32), key[-1], len(targets[key]))
  _raise_on_mismatch(flat, targets, source, unexpected=unexpected)
  return traverse_util.unflatten_dict(flat)


def _flax_key(name, targets, *, join_indices):
  """The Flax key (tuple) of PyTorch parameter `name`, or None if the tree has none."""
  *path, leaf = name.split(".")
  if join_indices:
    joined = []
    for part in path:
      if part.isdigit() and joined:
        joined[-1] = f"{joined[-1]}_{part}"
      else:
        joined.append(part)
    path = joined
  leaves = {"weight": ("kernel", "scale", "embedding"), "gamma": ("scale",),
            "beta": ("bias",)}.get(leaf, (leaf,))
  renamed = path[:-1] + [_ATTENTION_RENAMES.get(path[-1], path[-1])] if path else path
  for candidate_path in (path, renamed):
    for candidate_leaf in leaves:
      key = tuple(candidate_path) + (candidate_leaf,)
      if key in targets:
        return key
  return None


def _to_flax_layout(array, leaf, target_ndim):
  """PyTorch layout -> Flax layout of a weight whose Flax name ends in `leaf`.

  Kernels: convolutions OIHW -> HWIO; linear [out, in] -> [in, out], after squeezing a 1x1
  convolution stored for a linear layer. Biases, norm scales and embedding tables have the
  same layout in both.
  """
  if leaf != "kernel":
    return array
  if array.ndim == 4 and target_ndim == 2 and array.shape[2:] == (1, 1):
    array = array[:, :, 0, 0]
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  return np.ascontiguousarray(array.T)


def _as_dict(tree):
  """A (possibly frozen) parameter tree as plain nested dicts."""
  from flax.core import unfreeze
  return unfreeze(tree)


def _check_tree(tree, abstract, source):
  """Checks a loaded parameter tree against the model's; returns it as nested dicts."""
  flat = traverse_util.flatten_dict(_as_dict(tree))
  targets = {key: tuple(leaf.shape) for key, leaf in
             traverse_util.flatten_dict(_as_dict(abstract)).items()}
  unexpected = ["/".join(key) for key in flat if key not in targets]
  _raise_on_mismatch({k: v for k, v in flat.items() if k in targets}, targets, source,
                     unexpected=unexpected)
  return traverse_util.unflatten_dict(flat)


def _raise_on_mismatch(flat, targets, source, *, unexpected):
  """One-line UserError if weights are missing, unexpected or of the wrong shape."""
  missing = ["/".join(key) for key in targets if key not in flat]
  wrong = [f"{'/'.join(key)} {tuple(value.shape)} (expected {targets[key]})"
           for key, value in flat.items() if tuple(value.shape) != targets[key]]
  problems = [(f"{len(missing)} missing", missing), (f"{len(unexpected)} unexpected", unexpected),
              (f"{len(wrong)} of the wrong shape", wrong)]
  problems = [f"{what} (e.g. {names[0]})" for what, names in problems if names]
  if problems:
    raise UserError(f"{source}: the weights do not fit the model of its config.json: "
                    f"{'; '.join(problems)}; weights and config must come from the same "
                    "checkpoint")


def component_dir(root, name):
  """root/name, or a UserError naming the missing subfolder."""
  folder = os.path.join(root, name)
  if not os.path.isdir(folder):
    raise UserError(f"{root} is not a complete Stable Diffusion pipeline: subfolder {name}/ is "
                    f"missing (expected {', '.join(c + '/' for c in COMPONENTS)})")
  return folder


def _read_json(path):
  """A JSON file as a dict, or a one-line UserError."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError) as error:
    raise UserError(f"cannot read {path}: {first_line(error)}") from error
  if not isinstance(value, dict):
    raise UserError(f"cannot read {path}: expected a JSON object")
  return value


def first_line(error):
  """The first non-empty line of an exception's message (for one-line errors)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def resolve_model_dir(model, revision, *, use_vae):
  """The local pipeline directory of `model`: itself, or its snapshot in the hub cache."""
  path = os.path.expanduser(str(model))
  if os.path.isdir(path):
    if revision is not None:
      raise UserError(f"revision={revision!r} applies to hub ids only, but {model!r} is a local "
                      "directory; drop the revision")
    return path
  if os.path.exists(path):
    raise UserError(f"{model!r} is a file; pass a diffusers-format pipeline directory")
  if not _HUB_ID.fullmatch(str(model)):
    raise UserError(f"model directory {model!r} does not exist; pass a diffusers-format "
                    "pipeline directory or a hub id such as 'owner/name'")
  return _hub_snapshot(str(model), revision, use_vae=use_vae)


def _hub_offline():
  """Whether HF_HUB_OFFLINE is set (read now, not only when huggingface_hub was imported)."""
  from huggingface_hub import constants
  flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
  return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def _hub_snapshot(repo_id, revision, *, use_vae):
  """Downloads (or finds in the cache) the files the prior needs; returns the snapshot dir.

  Flax msgpack weights are fetched first; PyTorch safetensors only for components that have
  no msgpack file, so a repository holding both is not downloaded twice.
  """
  components = ["unet", "text_encoder"] + (["vae"] if use_vae else [])
  patterns = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*"]
  patterns += [f"{c}/config.json" for c in components]
  patterns += [f"{c}/{name}" for c in components for name in FLAX_WEIGHT_FILES]
  root = _snapshot_download(repo_id, revision, patterns)
  need_torch = [c for c in components if not any(
      os.path.isfile(os.path.join(root, c, name)) for name in FLAX_WEIGHT_FILES)]
  if need_torch and not _hub_offline():
    stems = [name[:-len(".safetensors")] for name in TORCH_WEIGHT_FILES]
    patterns = [f"{c}/{stem}{suffix}" for c in need_torch for stem in stems
                for suffix in (".safetensors", ".safetensors.index.json", "-*-of-*.safetensors")]
    root = _snapshot_download(repo_id, revision, patterns)
  return root


def _snapshot_download(repo_id, revision, patterns):
  """huggingface_hub.snapshot_download with its errors turned into one-line UserErrors."""
  from huggingface_hub import errors, snapshot_download
  offline = _hub_offline()
  name = repo_id + (f"@{revision}" if revision else "")
  try:
    return snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                             local_files_only=offline)
  except errors.LocalEntryNotFoundError as error:
    if offline:
      raise UserError(f"{name} is not a local directory and is not in the local Hugging Face "
                      "cache (HF_HUB_OFFLINE is set): download it once with network access, "
                      "or pass a local diffusers-format directory") from error
    raise UserError(f"cannot download {name}: {first_line(error)}; check the network, or "
                    "pass a local diffusers-format directory") from error
  except errors.RevisionNotFoundError as error:
    raise UserError(f"{repo_id} has no revision {revision!r}") from error
  except errors.RepositoryNotFoundError as error:
    raise UserError(f"{repo_id} is not a local directory nor a hub repository you can access "
                    "(check the name, or log in for gated models)") from error
  except (errors.HfHubHTTPError, OSError) as error:
    raise UserError(f"cannot download {name}: {first_line(error)}") from error
