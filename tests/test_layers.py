"""The package's layers: imports point down only, and the ops load no trainer.

backends -> ops -> nn -> models -> step -> loop, with tooling (fastgan.perf) on top.
The graph is read from the source (every import statement, function-level ones too), so a
lazy import cannot hide a cycle.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastgan"

# What `import fastgan.ops` / `import fastgan.nn` must not load.
HEAVY = ("fastgan.train", "fastgan.step", "fastgan.api", "fastgan.distributed", "fastgan.data",
         "fastgan.config", "fastgan.graphs", "fastgan.perf", "fastgan.checkpoint",
         "fastgan.models", "torch.distributed.run")

# Each layer, and the fastgan modules it may never import.
FORBIDDEN = {
    "fastgan.backends": ("fastgan.ops", "fastgan.nn", "fastgan.models", "fastgan.step",
                         "fastgan.train", "fastgan.api", "fastgan.cli", "fastgan.perf"),
    "fastgan.ops": ("fastgan.nn", "fastgan.models", "fastgan.step", "fastgan.train",
                    "fastgan.api", "fastgan.cli", "fastgan.perf"),
    "fastgan.nn": ("fastgan.models", "fastgan.step", "fastgan.train", "fastgan.api",
                   "fastgan.cli", "fastgan.perf"),
    "fastgan.models": ("fastgan.step", "fastgan.train", "fastgan.api", "fastgan.cli",
                       "fastgan.perf"),
    "fastgan.step": ("fastgan.train", "fastgan.api", "fastgan.cli", "fastgan.perf"),
    "fastgan.train": ("fastgan.cli", "fastgan.perf"),  # api (a trained Run) sits below it
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every fastgan module a file imports, at any depth of the file."""
    name = _module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from fastgan.perf import roofline` imports the module fastgan.perf.roofline.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = _all_modules()
    return {m for m in found if m in modules and m != name}


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) for name, path in _all_modules().items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of layers.
    edges = {m: {d for d in deps if not _under(d, m)} for m, deps in graph.items()}
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(edges[module]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep):] + [dep] if dep in path else path + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_every_import_points_down():
    wrong = [f"{m} imports {d}" for m, deps in _graph().items() for layer, banned in
             FORBIDDEN.items() if _under(m, layer) for d in deps
             if any(_under(d, b) for b in banned)]
    assert not wrong, "\n".join(wrong)


def test_no_private_module_is_imported_from_outside_its_package():
    wrong = []
    for module, deps in _graph().items():
        for dep in deps:
            parts = dep.split(".")
            private = [i for i, p in enumerate(parts) if p.startswith("_") and p != "__init__"]
            if private and not _under(module, ".".join(parts[:private[0]])):
                wrong.append(f"{module} imports {dep}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("target", ["fastgan.ops", "fastgan.nn"])
def test_the_ops_and_layers_load_no_trainer(target):
    script = (f"import sys, json; import {target}; import fastgan; "
              "print(json.dumps([m for m in sys.modules if m.startswith(('fastgan', 'torch'))]))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                       text=True, check=True).stdout)
    heavy = [m for m in loaded if any(_under(m, h) for h in HEAVY)]
    assert "fastgan.ops" in loaded and not heavy, heavy


def test_fastgan_load_is_still_there_lazily():
    script = ("import sys, fastgan; before = 'fastgan.api' in sys.modules; "
              "load = fastgan.load; print(before, 'fastgan.api' in sys.modules, callable(load))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True", "True"]
