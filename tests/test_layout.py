"""The package's shape: every module imports on its own, the import graph has no circle
and its layers point one way, config files load without JAX."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import child_env

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "albert_jax"


def _modules() -> dict[str, Path]:
    """``{"albert_jax.training.trainer": path, ...}`` for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside functions;
    ``TYPE_CHECKING`` blocks excluded), from an AST walk of the sources."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                typing_only.update(id(n) for n in ast.walk(node))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("albert_jax"):
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_import_graph_has_no_circle():
    graph = import_graph()
    assert "albert_jax.training.trainer" in graph and "albert_jax.cli" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_layers_point_one_way():
    graph = import_graph()
    above_the_trainer = {"albert_jax.training.pretrain", "albert_jax.training.finetune",
                         "albert_jax.training.export", "albert_jax.cli"}
    above_the_trainer |= {m for m in graph if m.startswith("albert_jax.training.tasks")}
    for low in ("albert_jax.training.trainer", "albert_jax.training.checkpoint"):
        assert not _reachable(graph, low) & above_the_trainer, low
    assert "albert_jax.training.trainer" not in _reachable(graph, "albert_jax.training.checkpoint")
    # The library below the training wing does not reach up into it; only the CLI does.
    for module, edges in graph.items():
        if not module.startswith(("albert_jax.training", "albert_jax.cli")):
            assert not {e for e in edges if e.startswith("albert_jax.training")}, module
    # run_config is light: it imports only the (light) model config at load time.
    assert graph["albert_jax.training.run_config"] <= {"albert_jax.config",
                                                       "albert_jax.training.optim",
                                                       "albert_jax.sharding",
                                                       "albert_jax.training"}


# Forks, each importing one package module into an interpreter that holds no albert_jax
# module yet. The heavy third-party libraries are imported once before forking (they cost
# seconds per interpreter); what is checked is the package's own import order.
_IMPORT_EACH = """
import importlib, json, os, sys, traceback
for lib in ("numpy", "jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint",
            "sentencepiece", "tensorflow_datasets", "fastapi", "uvicorn", "sqlalchemy"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] == "albert_jax"], "preloaded"
failures = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    if os.waitpid(pid, 0)[1]:
        failures[name] = message or "died"
print(json.dumps(failures))
"""


def test_every_module_imports_alone_in_a_fresh_interpreter():
    import json

    env = child_env(JAX_PLATFORMS="cpu")
    names = list(_modules())
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_config_files_load_without_jax():
    """Every configs/**/*.py builds its config with neither JAX nor flax imported, from any
    working directory, and its data paths are absolute (resolved from the file)."""
    script = """
import importlib.util, json, sys
from pathlib import Path
out = {}
for path in sorted(Path(sys.argv[1]).rglob("*.py")):
    spec = importlib.util.spec_from_file_location("cfg_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    out[str(path)] = [v for k, v in c.data.items() if isinstance(v, str) and "/" in v]
heavy = sorted(m for m in ("jax", "flax", "optax", "tensorflow_datasets") if m in sys.modules)
print(json.dumps({"heavy": heavy, "paths": out}))
"""
    env = child_env()
    proc = subprocess.run([sys.executable, "-c", script, str(REPO / "configs")], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    assert len(result["paths"]) >= 10
    for paths in result["paths"].values():
        assert all(os.path.isabs(p) for p in paths), paths
