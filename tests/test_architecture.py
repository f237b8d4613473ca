"""The layout is the architecture: core <- engine <- tasks <- cli, no import cycles, one training loop,
one version string, and every public symbol documented."""
import ast
import inspect
import re
from pathlib import Path

import pytest

import deqnca

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "deqnca"
# the floors are the package's folders; a module may import from its own floor and the floors below it
FLOORS = [
    ("core", 0, ("_version", "core")),          # pure PyTorch: rules, solvers, gradients, read-outs, the protocol
    ("data", 1, ("data",)),                     # dataset files (MNIST's IDX)
    ("viz", 1, ("viz",)),                       # figures, frames, the HTML page writer
    ("engine", 2, ("engine",)),                 # the trainer, checkpoints, run folders, the command line's parts
    ("tasks", 3, ("tasks",)),                   # one folder per task
    ("reports", 4, ("reports", "web")),         # what spans tasks: the main job's report, the live page
    ("cli", 5, ("cli",)),
]


def _modules():
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _floor(module: str):
    rel = module.removeprefix("deqnca").lstrip(".")
    best = None
    for name, level, prefixes in FLOORS:
        for p in prefixes:
            if rel == p or rel.startswith(p + "."):
                if best is None or len(p) > best[2]:
                    best = (name, level, len(p))
    return best


def _imports(mods):
    graph = {}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        base = m.split(".") if is_pkg else m.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out |= {t for t in names if t in mods and t != m and not m.startswith(t + ".")}
        graph[m] = out
    return graph


def test_every_module_has_a_floor_and_imports_only_from_below():
    mods = _modules()
    graph = _imports(mods)
    unplaced = [m for m in mods if m != "deqnca" and _floor(m) is None]
    assert not unplaced, f"modules without a floor (add them to FLOORS): {unplaced}"
    bad = []
    for m, targets in graph.items():
        if m == "deqnca":
            continue
        name, level, _ = _floor(m)
        for t in targets:
            if t == "deqnca":
                continue                      # the package root: only __version__ is imported from it
            tname, tlevel, _ = _floor(t)
            if tlevel > level or (tlevel == level and tname != name):
                bad.append(f"{m} ({name}) imports {t} ({tname})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = _imports(_modules())
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_one_training_loop_and_small_tasks():
    # optimiser steps live in the engine only (the captured CUDA-graph step included); a backward pass
    # elsewhere only measures (hardware.py times one)
    steppers = sorted(str(f.relative_to(SRC)) for f in PACKAGE.rglob("*.py")
                      if re.search(r"optimi[sz]er\.step\(\)|opt\.step\(\)|\.step\(\)\s*#\s*optimi", f.read_text()))
    assert all(s.startswith("deqnca/engine/") for s in steppers), steppers
    folders = sorted(d for d in (PACKAGE / "tasks").iterdir() if (d / "__init__.py").exists())
    assert [d.name for d in folders] == ["cells", "cnn", "grow", "maze", "mnist"]
    for folder in folders:                # a task is one folder: its Task class in task.py, its options in config
        tree = ast.parse((folder / "task.py").read_text())
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and any(
            getattr(b, "id", "") == "Task" for b in n.bases)]
        assert len(classes) == 1, folder.name
        lines = classes[0].end_lineno - classes[0].lineno + 1
        assert lines <= 150, f"{folder.name}: the task class is {lines} lines"


def test_one_version_string():
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "deqnca._version.__version__" in pyproject
    hits = [f for f in PACKAGE.rglob("*.py") if re.search(r"""['"]\d+\.\d+\.\d+['"]""", f.read_text())
            and f.name != "_version.py"]
    assert not hits, hits


def test_every_public_symbol_has_a_docstring_with_an_example_or_args():
    missing = []
    for name in deqnca.__all__:
        if name == "__version__":
            continue
        obj = getattr(deqnca, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)):
            assert getattr(obj, "protocol", None) or isinstance(obj, dict), name     # registries, PRESETS
            continue
        doc = inspect.getdoc(obj) or ""
        if len(doc) < 20:
            missing.append(name)
    assert not missing, f"public symbols without a docstring: {missing}"



def test_no_file_in_src_over_400_lines():
    long = {str(f.relative_to(SRC)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > 400}
    assert not long, long


def test_no_function_in_src_above_cyclomatic_complexity_15():
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (make test installs it)")
    r = subprocess.run([ruff, "check", "--no-cache", "--select", "C901", "--config", "lint.mccabe.max-complexity = 15",
                        str(PACKAGE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]


# the functions that build a model from what a checkpoint holds (its config, its kind)
_BUILDS = {"build_checked", "model_class", "EquilibriumModel", "CellsModel", "GrowModel", "MazeSolverNet"}
_OLD_LOADERS = {"load_model", "load_grow_checkpoint", "load_maze_model", "load_cells_checkpoint"}


def _calls(fn) -> set:
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
            if isinstance(f, ast.Attribute) and f.attr == "get" and getattr(f.value, "id", "") == "MODELS":
                out.add("MODELS.get")
    return out


def test_one_function_reads_a_checkpoint_into_a_model():
    readers, builders, lookups, old = [], [], [], []
    for name, f in _modules().items():
        for fn in ast.walk(ast.parse(f.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            calls = _calls(fn)
            where = f"{name}.{fn.name}"
            if "read_checkpoint" in calls and calls & (_BUILDS | {"MODELS.get"}):
                readers.append(where)
            if "build_checked" in calls:
                builders.append(where)
            if "MODELS.get" in calls:
                lookups.append(where)
            if fn.name in _OLD_LOADERS:
                # the old loaders are thin aliases: the one loader, with the kind they need
                if "read_checkpoint" in calls or not calls & {"load", "_deprecated"}:
                    old.append(where)
    assert readers == ["deqnca.engine.checkpoint.load"], readers
    assert builders == ["deqnca.engine.checkpoint.load"], builders
    assert lookups == ["deqnca.engine.checkpoint.model_class"], lookups      # a kind's class: one place
    assert not old, f"old loaders that do more than call deqnca.load: {old}"


def test_the_training_loop_is_short_and_the_task_protocol_small():
    # `fit` reads top to bottom, as nanoGPT's loop does: its pieces live in named helpers; a task says what
    # is its own through at most twelve hooks (no hook found by getattr)
    from deqnca.engine.task import Task

    tree = ast.parse((PACKAGE / "engine" / "trainer.py").read_text())
    fit = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fit")
    assert fit.end_lineno - fit.lineno + 1 <= 80, f"fit is {fit.end_lineno - fit.lineno + 1} lines"
    hooks = [name for name, value in vars(Task).items()
             if inspect.isfunction(value) and not (name.startswith("__") and name.endswith("__"))]
    assert len(hooks) <= 12, hooks
    engine = "\n".join(f.read_text() for f in (PACKAGE / "engine").glob("*.py"))
    called = set(re.findall(r"\btask\.([a-z_]+)\(", engine)) - {"log"}     # `log`: the engine's, given to the task
    assert called <= set(hooks), f"the engine calls task methods that are not hooks: {called - set(hooks)}"
    assert len((PACKAGE / "engine" / "trainer.py").read_text().splitlines()) <= 400
