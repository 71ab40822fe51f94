"""The package's layers: a module imports only from lower layers (models never import engine/,
the dataset code never imports the network, nothing below the command line imports it). Read
from the source with `ast`, so an import inside a function counts as much as one at the top."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "mmnas")

# lowest first; a part may import its own modules and any part of a lower layer
LAYERS = [
    {"runtime", "progress", "checkpoint_files", "metrics"},
    {"ops"},
    {"config"},
    {"data", "models"},
    {"tasks"},
    {"search", "inference"},
    {"engine"},
    {"cli"},
    {"web_demo"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def imported_parts(path, module):
    """The top-level parts of mmnas (`engine`, `checkpoint_files`, ...) that a source file imports."""
    package = module.split(".")[:-1] if not path.endswith("__init__.py") else module.split(".")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # `from .. import runtime` names the part in the imported names
            targets = [f"{target}.{alias.name}" for alias in node.names] if target == "mmnas" else [target]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            if parts[0] == "mmnas" and len(parts) > 1:
                yield parts[1], node.lineno


def source_files():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                yield path, module.removesuffix(".__init__") if name == "__init__.py" else module


def test_every_part_has_a_layer():
    parts = {module.split(".")[1] for _, module in source_files() if "." in module}
    assert parts == set(RANK), f"place the new part in LAYERS: {sorted(parts ^ set(RANK))}"


def test_imports_go_down_the_layers():
    upward = []
    for path, module in source_files():
        if "." not in module:
            continue
        own = module.split(".")[1]
        for part, line in imported_parts(path, module):
            if part != own and RANK[part] >= RANK[own]:
                upward.append(f"{os.path.relpath(path, REPO)}:{line} imports mmnas.{part}")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_scan_sees_relative_imports(tmp_path):
    """The scanner itself: both import forms of both depths are found."""
    source = tmp_path / "probe.py"
    source.write_text("from ..engine.train import train\nfrom .. import cli\nimport mmnas.ops.blocks\n"
                      "def f():\n    from .supernet import x\n")
    found = [part for part, _ in imported_parts(str(source), "mmnas.models.probe")]
    assert found == ["engine", "cli", "ops", "models"]
