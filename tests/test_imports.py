"""The package's imports run one way, and ``import aftlib`` loads nothing heavy or of testing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aftlib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import that can run, at module level or inside a function, outside ``if TYPE_CHECKING:``.

    Lazy imports count, so a cycle cannot hide in a function.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _is_type_checking(node):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.append(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            found.append(node)

    Visitor().visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the aftlib modules it imports, at import time or lazily.

    A package import counts as its ``__init__``.
    """
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                prefix = node.module if node.level == 0 else ".".join(p for p in (base, node.module) if p)
                targets = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in modules]
                targets = targets or [prefix or base]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("aftlib") and target != name:
                    graph[name].add(target)
                    parent = target.rpartition(".")[0]  # importing a.b runs a/__init__ first
                    while parent.startswith("aftlib"):
                        if parent != name and not name.startswith(parent + "."):
                            graph[name].add(parent)
                        parent = parent.rpartition(".")[0]
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_import_graph_has_no_cycle() -> None:
    """No module of aftlib imports, directly or through others, a module that imports it back."""
    graph = import_graph()
    cycles = sorted(name for name in graph if name in _reachable(graph, name))
    assert cycles == [], f"modules on an import cycle: {cycles}"


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("aftlib._errors", "aftlib._types"),
        ("aftlib._types", "aftlib._results"),
        ("aftlib._results", "aftlib.engines"),
        ("aftlib.engines", "aftlib._budget"),
        ("aftlib.engines", "aftlib._agents"),
        ("aftlib._agents", "aftlib._topology"),
        ("aftlib._topology", "aftlib.config"),
        ("aftlib._topology", "aftlib.run"),
        ("aftlib.config", "aftlib.cli"),
        ("aftlib.run", "aftlib.cli"),
        ("aftlib.engines", "aftlib.testing"),
    ],
)
def test_imports_run_one_way(low: str, high: str) -> None:
    """A lower layer never imports a higher one (the house's import direction)."""
    graph = import_graph()
    lows = [name for name in graph if name == low or name.startswith(low + ".")]
    leaks = sorted(
        name for name in lows if any(t == high or t.startswith(high + ".") for t in _reachable(graph, name))
    )
    assert leaks == [], f"{low} reaches {high} through {leaks}"


HEAVY_EXTRAS = {
    "vllm": {"aftlib.engines._vllm": "the in-process engine, imported when it starts"},
    "openai": {"aftlib.engines._openai": "the HTTP engine's client, imported when it starts"},
    "huggingface_hub": {
        "aftlib.engines._vllm": "finding a hub model in the local cache before vLLM starts",
        "aftlib.evaluate._alpaca": "the AlpacaEval judge's annotator files",
    },
    "alpaca_eval": {"aftlib.evaluate._alpaca": "the AlpacaEval judge, imported when it judges"},
    "math_verify": {"aftlib.evaluate._math": "symbolic comparison, in the worker process that runs it"},
    "matplotlib": {"aftlib.evaluate._plots": "a sweep's plots, drawn when asked"},
    "uvicorn": {"aftlib.serve._server": "the HTTP server of aftlib serve, when it starts"},
    "ray": {"aftlib._ray": "Ray Data, when a dataset is mapped"},
    "pyarrow": {"aftlib._ray": "the mapped batches' columns"},
    "transformers": {
        "aftlib.finetune._card": "counting a dataset's tokens with the model's tokenizer",
        "aftlib.testing._tiny": "building the tiny test model",
        "aftlib.testing._adapter": "building a tiny LoRA adapter",
    },
    "torch": {
        "aftlib.testing._tiny": "building the tiny test model",
        "aftlib.testing._adapter": "building a tiny LoRA adapter",
        "aftlib.testing.rebuild": "rebuilding the shipped arithmetic models",
    },
    "tokenizers": {"aftlib.testing._tiny": "training the tiny model's tokenizer"},
    "peft": {"aftlib.testing._adapter": "building a tiny LoRA adapter"},
}
"""Each heavy extra, the modules that may import it, and why: only inside functions, never at import time."""


def test_heavy_extras_are_imported_only_where_allowed_and_only_lazily() -> None:
    """A heavy extra (vLLM, torch, openai, ...) is imported only inside functions of its listed modules."""
    misplaced = []
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)}
        for node in _imports(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for imported in names:
                extra = imported.split(".")[0]
                if extra not in HEAVY_EXTRAS:
                    continue
                if name not in HEAVY_EXTRAS[extra]:
                    misplaced.append(f"{name} imports {extra} (not allowed there)")
                elif id(node) in top_level:
                    misplaced.append(f"{name} imports {extra} at import time")
    assert misplaced == []


def test_import_aftlib_loads_no_test_servers_or_heavy_extras() -> None:
    """A fresh ``import aftlib`` loads no HTTP server, subprocess, tracemalloc, vLLM, torch or openai."""
    probe = (
        "import sys, json, aftlib; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('http', 'subprocess', 'tracemalloc', 'vllm', 'torch', 'openai', 'transformers', 'trl') "
        "or m.startswith('aftlib.testing.') or m.startswith('aftlib.cli'))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert not [m for m in loaded if m in ("http.server", "subprocess", "tracemalloc")], loaded
    assert not [m for m in loaded if m.split(".")[0] in ("vllm", "torch", "openai", "transformers", "trl")]
    assert not [m for m in loaded if m.startswith(("aftlib.testing.", "aftlib.cli"))], loaded
