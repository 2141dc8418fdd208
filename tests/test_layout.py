"""The package layout: no import circle, and no module importing a module above it.

Every import of every module under dfjax/ is read with `ast` (those inside functions too), and
checked against LAYERS, the data-flow order the README's "Layout" section describes: a module
may import a module of a lower layer, or one listed before it in its own layer. A new module
must be placed in LAYERS, which is where a reader learns where it sits.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom to top. Each layer is a package (or a module) and, for packages, the order of its
# modules: within a layer a module imports only the modules listed before it.
LAYERS = (
    ("dfjax.errors", ()),
    ("dfjax.scene", ("cameras", "mip", "field", "occupancy", "shading", "background", "render",
                     "losses")),
    ("dfjax.priors", ("diffusion", "sds", "bank", "sd_checkpoint", "stable_diffusion")),
    ("dfjax.toy", ("sdf", "objects", "truth", "banks")),
    ("dfjax.train", ("config_checks", "distributed", "model", "prior_setup", "step",
                     "checkpoint", "logs", "compile_cache", "loop", "restore")),
    ("dfjax.train_prior", ("tokenizer", "data", "models", "objectives", "steps", "sampling",
                           "pipeline", "loop")),
    ("dfjax.export", ("mesh", "video", "texture", "outputs")),
    ("dfjax.mesh_sds", ("rasterize", "regularizers", "refine")),
    ("dfjax.run", ()),
    ("dfjax.api", ()),
    ("dfjax.eval", ("metrics", "ablation_metrics", "clip_eval", "ablations",
                    "prior_quality")),
    ("dfjax.cli", ()),
    # The entry points, at the top: `python -m` of each.
    ("dfjax.main", ()),
    ("dfjax.evaluate", ()),
    ("dfjax.export.__main__", ()),
    ("dfjax.mesh_sds.__main__", ()),
    ("dfjax.launch", ()),  # starts several `dfjax.main` processes
    ("dfjax.train_prior.__main__", ()),
)


def module_files(root: str, package: str = "dfjax") -> dict:
  """{dotted module name: path} of every .py file under root/package (packages as __init__)."""
  found = {}
  for directory, _, files in os.walk(os.path.join(root, package)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
  return found


def imported_modules(path: str, known: set, package: str = "dfjax") -> set:
  """The modules of `known` that the file imports, at the top level or inside functions.

  `from a.b import c` counts as importing a.b.c when that is a module, else a.b.
  """
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  targets = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        child = f"{node.module}.{alias.name}"
        targets.add(child if child in known else node.module)
  return {t for t in targets if t in known and (t == package or t.startswith(package + "."))}


def import_graph(root: str, package: str = "dfjax") -> dict:
  """{module: set of the package's modules it imports} for every module under root/package."""
  files = module_files(root, package)
  return {module: imported_modules(path, set(files), package) for module, path in files.items()}


def find_cycle(graph: dict) -> list | None:
  """One import circle as [a, b, ..., a], or None when the graph has none (depth-first)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == "open":
        return stack[stack.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def rank(module: str, layers=LAYERS):
  """(layer index, position within the layer) of a module, or None when LAYERS omits it."""
  if module == layers[0][0].split(".")[0]:
    return (-1, -1)  # the root package's __init__, a docstring only
  best = None
  for index, (name, order) in enumerate(layers):
    if module == name:
      best = (index, -1)  # a package's __init__ sits below its modules
    elif module.startswith(name + "."):
      rest = module[len(name) + 1:]
      if rest in order:
        best = (index, order.index(rest))
  return best


def layer_violations(graph: dict, layers=LAYERS) -> list:
  """'a imports b, which sits above it' for every upward or sideways import."""
  problems = []
  for module in sorted(graph):
    if rank(module, layers) is None:
      problems.append(f"{module} is not placed in LAYERS")
      continue
    for target in sorted(graph[module]):
      if rank(target, layers) is None:
        continue  # reported as a module of its own
      if rank(target, layers) >= rank(module, layers):
        problems.append(f"{module} imports {target}, which sits above it (or beside it)")
  return problems


def test_no_module_imports_one_above_it_and_there_is_no_import_circle():
  graph = import_graph(ROOT)
  assert len(graph) > 40  # every module was read
  assert graph["dfjax.train.loop"] >= {"dfjax.train.step", "dfjax.train.checkpoint"}
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
  assert layer_violations(graph) == []


def test_configs_import_no_dfjax_module():
  # dfjax.eval.ablations imports configs/ablations.py, so a config importing dfjax could close
  # a circle outside the package.
  graph = import_graph(ROOT, package="configs")
  files = module_files(ROOT, "dfjax")
  for module, path in module_files(ROOT, "configs").items():
    assert not imported_modules(path, set(files)), module
  assert graph  # the configs were read


def write_package(tmp_path, files: dict):
  for name, text in files.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
  # A three-module package where the bottom imports the top inside a function: a circle.
  write_package(tmp_path, {
      "dfjax/__init__.py": "",
      "dfjax/errors.py": "def helper():\n  from dfjax.scene import render\n",
      "dfjax/scene/__init__.py": "",
      "dfjax/scene/render.py": "from dfjax import errors\nfrom dfjax.scene import cameras\n",
      "dfjax/scene/cameras.py": "import dfjax.errors\n",
  })
  graph = import_graph(str(tmp_path))
  assert graph["dfjax.scene.render"] == {"dfjax.errors", "dfjax.scene.cameras"}
  assert graph["dfjax.errors"] == {"dfjax.scene.render"}
  cycle = find_cycle(graph)
  assert cycle[0] == cycle[-1] and set(cycle) >= {"dfjax.errors", "dfjax.scene.render"}
  layers = (("dfjax.errors", ()), ("dfjax.scene", ("cameras", "render")))
  assert layer_violations(graph, layers) == [
      "dfjax.errors imports dfjax.scene.render, which sits above it (or beside it)"]
  # Without the upward import, both checks pass; a module missing from the layers is named.
  write_package(tmp_path, {"dfjax/errors.py": "", "dfjax/scene/extra.py": ""})
  graph = import_graph(str(tmp_path))
  assert find_cycle(graph) is None
  assert layer_violations(graph, layers) == ["dfjax.scene.extra is not placed in LAYERS"]


@pytest.mark.parametrize("module, expected", [
    ("dfjax", (-1, -1)), ("dfjax.scene", (1, -1)), ("dfjax.scene.render", (1, 6)),
    ("dfjax.export.__main__", (14, -1)), ("dfjax.export.mesh", (6, 0)), ("dfjax.nowhere", None)])
def test_rank_places_packages_below_their_modules(module, expected):
  assert rank(module) == expected
