"""The layering of docs/ARCHITECTURE.md, checked on every import in the source tree.

A package may import its own layer and the layers below it, never above. Imports inside
functions count too (placing an import in a function does not remove the dependency).
`KNOWN` lists the imports that still break the rule, each to be removed, so a new one fails.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Lowest first. Names are alignment's subpackages (and main); outside the package, the driver
# folders sit on top.
LAYERS = (
    ("files", "schema", "judges", "model", "tokenizer"),
    ("sharding", "lora", "quantization", "checkpoints"),
    ("data", "prompts", "answers"),
    ("sampling",),
    ("training",),
    ("evaluation", "reward", "interpret"),
    ("rl",),
    ("jobs", "main"),
    ("configs", "experiments", "launch"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

# (importing file, imported package): upward imports not yet removed (docs/ARCHITECTURE.md).
KNOWN: set[tuple[str, str]] = set()
# Jobs are drivers: only main.py, other jobs and configs (their sections) import them.
# Experiments go through `python -m alignment.main` (experiments/commands.py) or the library.
KNOWN_JOB_IMPORTS: set[str] = set()


def _unit(path: pathlib.Path) -> str:
  rel = path.relative_to(REPO).parts
  if rel[0] == "alignment":
    return rel[1].removesuffix(".py") if len(rel) > 1 else "alignment"
  return rel[0]


def _imported(tree: ast.AST) -> set[str]:
  """The alignment subpackages a module imports (anywhere in it)."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      parts = node.module.split(".")
      if parts[0] == "alignment":
        out.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
    elif isinstance(node, ast.Import):
      out.update(a.name.split(".")[1] for a in node.names
                 if a.name.startswith("alignment."))
  return out


def _files() -> list[pathlib.Path]:
  return [p for d in ("alignment", "configs", "experiments", "launch")
          for p in (REPO / d).rglob("*.py")]


def upward_imports() -> set[tuple[str, str]]:
  found = set()
  for path in _files():
    unit = _unit(path)
    if unit not in LAYER:
      continue
    for target in _imported(ast.parse(path.read_text(), str(path))):
      if target in LAYER and target != unit and LAYER[target] > LAYER[unit]:
        found.add((str(path.relative_to(REPO)), target))
  return found


def test_every_package_has_a_layer():
  packages = {p.name for p in (REPO / "alignment").iterdir()
              if p.is_dir() and (p / "__init__.py").exists()}
  assert packages <= set(LAYER), f"packages without a layer: {sorted(packages - set(LAYER))}"


def test_no_package_imports_a_layer_above_it():
  found = upward_imports()
  new = found - KNOWN
  assert not new, ("imports against the layering of docs/ARCHITECTURE.md: "
                   + ", ".join(f"{f} -> alignment.{t}" for f, t in sorted(new)))
  fixed = KNOWN - found
  assert not fixed, f"no longer needed in KNOWN (remove them): {sorted(fixed)}"


def test_only_main_jobs_and_configs_import_jobs():
  importers = set()
  for path in _files():
    if _unit(path) not in ("jobs", "main", "configs") and "jobs" in _imported(
        ast.parse(path.read_text(), str(path))):
      importers.add(str(path.relative_to(REPO)))
  assert importers <= KNOWN_JOB_IMPORTS, sorted(importers - KNOWN_JOB_IMPORTS)
  assert not KNOWN_JOB_IMPORTS - importers, "remove from KNOWN_JOB_IMPORTS: " + str(
      sorted(KNOWN_JOB_IMPORTS - importers))


def _imports_inside_functions(tree: ast.AST) -> list[tuple[int, str]]:
  """(line, module) of each import of an alignment module placed inside a function."""
  found = []
  for fn in ast.walk(tree):
    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for node in ast.walk(fn):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alignment"):
          found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
          found += [(node.lineno, a.name) for a in node.names if a.name.startswith("alignment")]
  return found


def test_no_library_import_is_placed_inside_a_function():
  """An import inside a function hides a dependency (often a cycle); the library has none."""
  found = [f"{p.relative_to(REPO)}:{line} imports {module}"
           for p in (REPO / "alignment").rglob("*.py")
           for line, module in _imports_inside_functions(ast.parse(p.read_text(), str(p)))]
  assert not found, found
  assert _imports_inside_functions(ast.parse("def f():\n  from alignment import rl\n")) == [
      (2, "alignment")]


def test_the_checker_sees_imports_inside_functions():
  tree = ast.parse("def f():\n  from alignment.jobs import sft\n  import alignment.rl.ppo\n")
  assert _imported(tree) == {"jobs", "rl"}


def test_the_layer_table_is_the_documented_one():
  text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
  for names in LAYERS:
    assert any(all(f"`{n}`" in line for n in names) for line in text.splitlines()), names
