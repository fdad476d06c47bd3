"""The import layering of the package: every ``fastshower`` import of every module (parsed with ast,
function-local imports included) points down the pipeline, never up.

The allowed order is written once, in LAYERS: a module may import its own layer and the layers
before it. ``base`` holds the shared modules every stage uses (geometry, showers, files, conditions);
``app`` the orchestration on top (command line, demo, HPO).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastshower

#: The pipeline, bottom to top: a module may import only its own layer and those before it.
LAYERS = ("base", "simulate", "data", "models", "train", "validate", "infer", "app")
#: Top-level modules (not sub-packages) and the layer they belong to.
TOP_LEVEL = {"__init__": "base", "fileio": "base", "geometry": "base", "showers": "base", "conditions": "base",
             "errors": "base", "production": "app", "cli": "app", "demo": "app", "hpo": "app", "gflash_tune": "app",
             "__main__": "app"}

PACKAGE = Path(fastshower.__file__).resolve().parent


def layer_of(module: str) -> str:
    """The layer of a dotted ``fastshower`` module name (``fastshower`` itself is base)."""
    parts = module.split(".")
    if parts[0] != "fastshower":
        raise ValueError(f"not a fastshower module: {module}")
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head in LAYERS:
        return head
    if head in TOP_LEVEL:
        return TOP_LEVEL[head]
    raise KeyError(f"{module}: no layer assigned; add it to LAYERS or TOP_LEVEL in tests/test_layers.py")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """The dotted name of the module at ``path`` in the package folder ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def fastshower_imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a fastshower module in the file, anywhere in it
    (module level, functions, ``if TYPE_CHECKING``). ``from fastshower import x`` counts as an
    import of ``fastshower.x``; relative imports are resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "fastshower"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "fastshower":
                continue
            if base == "fastshower":
                found += [(node.lineno, f"fastshower.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """Every import from a module into a layer above it, as ``path:line module (layer) -> imported
    (layer)``."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path, root)
        own = layer_of(here)
        for line, target in fastshower_imports(path, root):
            if target == "fastshower.__version__":
                continue
            theirs = layer_of(target)
            if rank[theirs] > rank[own]:
                bad.append(f"{path.relative_to(root.parent)}:{line} {here} ({own}) -> {target} ({theirs})")
    return bad


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)) in LAYERS


@pytest.mark.parametrize("source, target", [
    ("simulate/geant4/sources.py", "from fastshower.infer.generator import Generator"),
    ("train/trainer.py", "    from fastshower.validate.metrics import quick_metrics"),
    ("data/io.py", "from fastshower import hpo"),
    ("models/registry.py", "from ..train import trainer"),
])
def test_an_upward_import_is_caught(tmp_path, source, target):
    """The checker itself: a package holding one module with one upward import (inside a function)."""
    root = tmp_path / "fastshower"
    path = root / source
    path.parent.mkdir(parents=True)
    path.write_text(f"import numpy\n\n\ndef _late():\n    {target.strip()}\n")
    bad = upward_imports(root)
    assert len(bad) == 1 and bad[0].startswith(f"fastshower/{source}:5 ")
