"""notebooks/dreamfusion_colab.ipynb: committed clean, and run top to bottom on CPU.

The notebook is executed with nbclient in a fresh kernel of this Python (kernel "python3"
resolves to the running interpreter when ipykernel is installed in it), after a cell of small
parameters is injected below its "parameters" cell, as papermill does: 20 steps of a smaller
toy run (a 1×16 field, 16 samples per ray, an 8-view bank) and a small export. The install
cell installs nothing (DFJAX_NOTEBOOK_CI=1). The checks: every cell ran without an error, the
kernel imported this checkout's dfjax, the workdir holds the meshes and the video, the
turntable is shown inline, and the ablation table is displayed.
"""
import base64
import os
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "notebooks", "dreamfusion_colab.ipynb")
sys.path.insert(0, os.path.join(REPO_ROOT, "notebooks"))
import make_colab_notebook  # pylint: disable=g-import-not-at-top,wrong-import-position

STEPS = 20
# The quick start made small; every field is one of configs/toy.py's.
SMALL = {"toy__views_per_object": 8, "field__num_blocks": 1, "field__hidden_units": 16,
         "render__num_samples": 16, "render__num_candidates": 32, "train__log_every": 5,
         "train__image_every": 0,
         "train__checkpoint_every": STEPS, "export__resolution": 32, "export__threshold": 5.0,
         "export__video_frames": 4, "export__video_resolution": 16,
         "export__texture_size": 32, "export__faces": 200}
TIMEOUT = 600  # seconds per cell: a hang fails instead of blocking the suite


def read_notebook():
  with open(NOTEBOOK) as f:
    return nbformat.read(f, as_version=4)


def test_notebook_is_committed_clean_and_as_generated():
  notebook = read_notebook()
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
  assert notebook == make_colab_notebook.build()  # edit the generator, then run it
  tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1 and "STEPS = " in tagged[0].source
  assert make_colab_notebook.COLAB_URL in notebook.cells[0].source


def stream_text(cell, name: str) -> str:
  return "".join(o.get("text", "") for o in cell.outputs
                 if o.output_type == "stream" and o.name == name)


def displayed(cell, mime: str) -> list[str]:
  return [o.data[mime] for o in cell.outputs
          if o.output_type in ("display_data", "execute_result") and mime in o.data]


def test_notebook_runs_on_cpu(tmp_path):
  notebook = read_notebook()
  workdir = str(tmp_path / "runs" / "toy")
  index = next(i for i, cell in enumerate(notebook.cells)
               if "parameters" in cell.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(
      f"STEPS = {STEPS}\nWORKDIR = {workdir!r}\nOVERRIDES = {SMALL!r}\n")
  injected.metadata["tags"] = ["injected-parameters"]
  check = nbformat.v4.new_code_cell("import sys\nprint(sys.executable)\nprint(dfjax.__file__)")
  notebook.cells.insert(index + 1, injected)
  install = next(i for i, cell in enumerate(notebook.cells) if "pip_install" in cell.source)
  notebook.cells.insert(install + 1, check)
  env = dict(os.environ, DFJAX_NOTEBOOK_CI="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
  # One CPU device: conftest.py's four forced devices only slow a notebook down.
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  client = nbclient.NotebookClient(notebook, timeout=TIMEOUT, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute(env=env)  # raises CellExecutionError, with the cell, if any cell fails
  if os.environ.get("DFJAX_KEEP_NOTEBOOK"):  # where to keep the executed notebook
    nbformat.write(notebook, os.environ["DFJAX_KEEP_NOTEBOOK"])

  cells = {name: next(c for c in notebook.cells if c.cell_type == "code" and marker in c.source)
           for name, marker in (("check", "print(sys.executable)"), ("devices", "jax.devices()"),
                                ("train", "api.train(config"), ("video", "Video(result"),
                                ("download", "FileLink"), ("sd", "RUN_STABLE_DIFFUSION:"),
                                ("ablations", "ablations.md"))}
  executable, module = stream_text(cells["check"], "stdout").split()
  assert executable == sys.executable
  assert module == os.path.join(REPO_ROOT, "dfjax", "__init__.py")
  assert "platform: cpu" in stream_text(cells["devices"], "stdout")
  assert f"step {STEPS}/{STEPS} (100%)" in stream_text(cells["train"], "stderr")
  assert f"step {STEPS}, finished: True" in stream_text(cells["train"], "stdout")
  for name in ("mesh.glb", "mesh.ply", "turntable.mp4"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  (video,) = displayed(cells["video"], "text/html")
  embedded = re.search(r'src="data:video/mp4;base64,([^"]+)"', video)
  with open(os.path.join(workdir, "turntable.mp4"), "rb") as f:
    assert embedded and base64.b64decode(embedded.group(1)) == f.read()
  (link,) = displayed(cells["download"], "text/html")
  assert "mesh.glb" in link
  assert "skipped" in stream_text(cells["sd"], "stdout")
  (table,) = displayed(cells["ablations"], "text/markdown")
  assert table.startswith("# Ablations on the toy world") and "| no_view_dependence |" in table
