"""Writes notebooks/dreamfusion_colab.ipynb: `python notebooks/make_colab_notebook.py`.

The notebook is generated so that its cells are reviewed as code here, and so that it is
committed without outputs or execution counts (tests/test_notebook.py checks both, and that
the committed file is what this script writes).
"""
import os

import nbformat
from nbformat import v4

NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dreamfusion_colab.ipynb")
# The repository path in the Colab badge: replace OWNER with the GitHub account of your copy.
REPOSITORY = "OWNER/dfjax"
COLAB_URL = (f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/"
             "dreamfusion_colab.ipynb")

TITLE = f"""\
# DreamFusion in JAX: text to 3D in a notebook

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

This notebook runs [dfjax](https://github.com/{REPOSITORY}) through its Python API
(`dfjax.api`, the functions `python -m dfjax.main` and `python -m dfjax.export` run):

1. the quick start: "a yellow duck" distilled from the toy world's closed-form prior, which
   needs no weights and runs on any runtime, CPU included;
2. its turntable video, shown here, and its textured mesh, to download;
3. optionally, the paper's setup with Stable Diffusion (a TPU or GPU runtime);
4. the ablation study's table, as committed in the repository.

Set the knobs in the next cell, then *Runtime → Run all*."""

PARAMETERS = """\
# Parameters (this cell is tagged "parameters": papermill and the tests replace it).
PROMPT = "a yellow duck"  # a caption of the toy world (an unknown one lists them all)
STEPS = 800  # the quick start's length: within 10 minutes on 2 CPU cores
WORKDIR = "runs/toy"  # the run directory; on Google Drive it survives a runtime reset
OVERRIDES = {}  # more config fields, "__" between levels: {"export__video_frames": 24}
REPOSITORY = "https://github.com/OWNER/dfjax"  # where the install cell gets dfjax from

RUN_STABLE_DIFFUSION = False  # the paper's setup; needs a TPU or GPU runtime
SD_MODEL = "CompVis/stable-diffusion-v1-4"  # a hub id or a diffusers-format directory
SD_REVISION = "bf16"  # the hub branch; CompVis/stable-diffusion-v1-4 has Flax weights on bf16
SD_PROMPT = "a DSLR photo of a corgi wearing a top hat"
SD_STEPS = 15000  # the paper's
SD_WORKDIR = "runs/corgi\""""

INSTALL_TEXT = """\
## Install

The cell below installs nothing when dfjax is importable already (a local checkout, or the
tests, which set `DFJAX_NOTEBOOK_CI=1`). Otherwise it installs the jax build for the runtime
first, then dfjax from a clone of the repository (the clone also holds the ablation study's
results, shown at the end):

- **TPU runtime** (Colab's TPU runtimes are TPU VMs; found by their `/dev/accel*` or
  `/dev/vfio` devices): `pip install -U "jax[tpu]"`, no setup call;
- **GPU runtime** (`nvidia-smi` is present): `pip install -U "jax[cuda12]"`; use
  `jax[cuda13]` instead if the driver wants it;
- **CPU runtime**: dfjax's own dependency, the CPU build of jax.

If a TPU or GPU runtime's jax was imported before this cell ran, restart the runtime once
after the install."""

INSTALL = """\
import glob
import importlib.util
import os
import shutil
import subprocess
import sys


def pip_install(*args):
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


CLONE_DIR = os.path.abspath("dfjax-src")
installed = importlib.util.find_spec("dfjax")
if installed is not None or os.environ.get("DFJAX_NOTEBOOK_CI") == "1":
  print("dfjax is importable already: installing nothing")
else:
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    print("TPU runtime: installing jax[tpu]")
    pip_install("-U", "jax[tpu]")
  elif shutil.which("nvidia-smi"):
    print("GPU runtime: installing jax[cuda12]")
    pip_install("-U", "jax[cuda12]")
  else:
    print("CPU runtime: the CPU build of jax comes with dfjax")
  if not os.path.isdir(CLONE_DIR):
    subprocess.run(["git", "clone", "--depth=1", REPOSITORY, CLONE_DIR], check=True)
  pip_install(CLONE_DIR)
# The repository's files (experiments/results): the clone, or the checkout dfjax runs from.
import dfjax

REPO_DIR = CLONE_DIR if os.path.isdir(CLONE_DIR) else os.path.dirname(
    os.path.dirname(os.path.abspath(dfjax.__file__)))
print(f"dfjax from {os.path.dirname(dfjax.__file__)}")"""

DEVICES = """\
import jax

kinds = sorted({device.device_kind for device in jax.devices()})
print(f"platform: {jax.default_backend()}")
print(f"devices: {jax.device_count()} ({', '.join(kinds)}), "
      f"on {jax.process_count()} process(es)")"""

TRAIN_TEXT = """\
## The quick start, trained here

`api.config` loads `configs/toy.py` and applies the overrides (`train__steps` is
`config.train.steps`); a misspelt field or a bad value stops with one line naming it.
`api.train` shows progress (a bar where the notebook has ipywidgets, plain lines otherwise),
then exports the meshes and the turntable. The first run renders the toy bank into the
cache (about a minute). Running the cell again with more `STEPS` resumes from the last
checkpoint in `WORKDIR`."""

TRAIN = """\
from dfjax import api

config = api.config("toy", prompt=PROMPT, train__steps=STEPS, **OVERRIDES)
result = api.train(config, WORKDIR)
print(f"step {result.step}, finished: {result.finished}")
print(f"loss {result.metrics['loss']:.4g}, {result.metrics['seconds_per_step']:.3g} s/step")
print("files:", ", ".join(os.path.basename(path) for path in (*result.meshes, result.video)
                           if path))"""

TURNTABLE_TEXT = """\
## The turntable and the mesh

Colour, normals and textureless shading side by side, orbiting at 30° elevation from the
front. `mesh.glb` is the textured mesh (every glTF viewer and Blender open it); `mesh.ply`
carries the albedo as vertex colours."""

TURNTABLE = """\
from IPython.display import Video, display

# Renders are small (export.video_resolution pixels high): the browser scales them up.
display(Video(result.video, embed=True, width=720,
              html_attributes="controls autoplay loop muted"))"""

DOWNLOAD = """\
from IPython.display import FileLink

glb = [path for path in result.meshes if path.endswith(".glb")]
if not glb:
  print("no mesh was written (the training log says why): train longer, or set the "
        "surface's density level yourself (OVERRIDES = {'export__threshold': 10.0})")
else:
  try:
    from google.colab import files  # Colab: the browser downloads the file
    files.download(glb[0])
  except ImportError:
    display(FileLink(os.path.relpath(glb[0])))"""

SD_TEXT = """\
## Stable Diffusion (the paper's setup)

Set `RUN_STABLE_DIFFUSION = True` in the parameters cell on a TPU or GPU runtime.

- **Model**: `SD_MODEL` is a hub id or a diffusers-format directory (`unet/`, `vae/`,
  `text_encoder/`, `tokenizer/`, `scheduler/`), Flax msgpack or PyTorch `.safetensors`
  weights (converted without torch). `SD_REVISION` picks the hub branch:
  `CompVis/stable-diffusion-v1-4` has Flax weights on `bf16`.
- **Gated models** need a Hugging Face token: run `huggingface_hub.login()` (or set
  `HF_TOKEN` in Colab's secrets) after accepting the model's licence on its hub page.
- **Memory and time**: the project has not measured runs on TPUs or GPUs, so it gives no
  figures for them. What it has measured is on 2 CPU cores (`experiments/results/bench.md`):
  one SD 1.5 U-Net call at batch 1 in float32 took 65–87 s there, so a CPU runtime is out
  of reach for the paper's 15,000 steps. The U-Net and VAE run in bfloat16 by default
  (`prior__dtype`); on a TPU VM every local chip renders one view per step.
- **Resuming after the runtime resets**: put `SD_WORKDIR` on Google Drive
  (`from google.colab import drive; drive.mount("/content/drive")`, then
  `SD_WORKDIR = "/content/drive/MyDrive/dfjax/corgi"`), and run the same cell again with the
  same workdir: training continues from the last checkpoint (`train.checkpoint_every`
  steps apart). A `gs://BUCKET/run` workdir works too (checkpoints, config, metrics and the
  exports go through etils.epath; see the README's storage note)."""

SD = """\
if RUN_STABLE_DIFFUSION:
  # import huggingface_hub; huggingface_hub.login()  # for a gated model
  sd_config = api.config("dreamfusion", prompt=SD_PROMPT, prior__model=SD_MODEL,
                         prior__revision=SD_REVISION, train__steps=SD_STEPS)
  sd_result = api.train(sd_config, SD_WORKDIR)
  display(Video(sd_result.video, embed=True, width=720,
                html_attributes="controls autoplay loop muted"))
else:
  print("skipped: set RUN_STABLE_DIFFUSION = True in the parameters cell")"""

ABLATIONS_TEXT = """\
## The ablation study

The paper's ablations (§4, Fig. 6) on the toy world, as committed in
`experiments/results/ablations.md` (26 runs of 800 steps on 2 CPU cores; the README's
"Ablations" section summarises them). `python experiments/run_ablations.py --quick` checks
the pipeline in a few minutes."""

ABLATIONS = """\
from IPython.display import Markdown

with open(os.path.join(REPO_DIR, "experiments", "results", "ablations.md")) as f:
  display(Markdown(f.read()))"""


def build() -> nbformat.NotebookNode:
  """The notebook, without outputs."""
  parameters = v4.new_code_cell(PARAMETERS)
  parameters.metadata["tags"] = ["parameters"]
  cells = [v4.new_markdown_cell(TITLE), parameters,
           v4.new_markdown_cell(INSTALL_TEXT), v4.new_code_cell(INSTALL),
           v4.new_markdown_cell("## Devices"), v4.new_code_cell(DEVICES),
           v4.new_markdown_cell(TRAIN_TEXT), v4.new_code_cell(TRAIN),
           v4.new_markdown_cell(TURNTABLE_TEXT), v4.new_code_cell(TURNTABLE),
           v4.new_code_cell(DOWNLOAD),
           v4.new_markdown_cell(SD_TEXT), v4.new_code_cell(SD),
           v4.new_markdown_cell(ABLATIONS_TEXT), v4.new_code_cell(ABLATIONS)]
  for index, cell in enumerate(cells):
    cell["id"] = f"cell-{index:02d}"  # stable ids: regenerating changes nothing
  notebook = v4.new_notebook(cells=cells)
  notebook.metadata.update({
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": []},
  })
  return notebook


def main():
  notebook = build()
  nbformat.validate(notebook)
  nbformat.write(notebook, NOTEBOOK)
  print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
  main()
