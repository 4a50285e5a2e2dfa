"""The package's import structure: no cycles, and imports run one way (scripts -> demo/publish ->
eval/train/generate -> data -> core modules). Function-level imports count: they must not hide a cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpt2_scratch"
# Lower layers never import higher ones.
LAYERS = {"core": 0, "data": 1, "train": 2, "generate": 2, "eval": 2, "demo": 3, "publish": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, anywhere in the file (``from pkg import module`` included)."""
    found = set()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    found.add(f"{base}.{a.name}")
                elif base in modules:
                    found.add(base)
    found.discard(me)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    group = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "core"
    return group, LAYERS[group]


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if n.endswith("__init__") or n == "gpt2_scratch":
                continue
            if state.get(n) == 1:
                cycles.append(" -> ".join([*stack[stack.index(n) :], n]))
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_imports_run_one_way():
    wrong = []
    for module, deps in graph().items():
        group, level = layer(module)
        for dep in deps:
            if dep == "gpt2_scratch":
                continue
            dep_group, dep_level = layer(dep)
            if dep_level > level or (dep_level == level and level == 3 and dep_group != group):
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    # The checks above must be able to fail: a function-level import that closes a cycle is found.
    pkg = tmp_path / "gpt2_scratch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gpt2_scratch.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from gpt2_scratch import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    g = graph()
    assert g["gpt2_scratch.a"] == {"gpt2_scratch.b"} and g["gpt2_scratch.b"] == {"gpt2_scratch.a"}


# "About 450 lines a module, about 60 a function": the margins keep the check from failing on a line's
# difference; a function that reads better whole (e.g. a Gradio layout) stays under 65.
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 470, 65


def test_modules_and_functions_stay_readable():
    scripts = [PACKAGE.parent / name for name in ("finetune.py", "evaluate.py", "app.py", "publish.py")]
    too_long = []
    for path in [*sorted(PACKAGE.rglob("*.py")), *scripts]:
        source = path.read_text(encoding="utf-8")
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}: {node.name} has {lines} lines")
    assert too_long == []


def test_training_never_imports_the_inference_layer():
    # Training loads and runs the plain model of model.py (loading.load_gpt), never the inference layers.
    g = graph()

    def reach(module: str, seen: set[str]) -> set[str]:
        for dep in g.get(module, ()):
            if dep not in seen:
                seen.add(dep)
                reach(dep, seen)
        return seen

    for module in (m for m in g if m.startswith("gpt2_scratch.train")):
        assert not {"gpt2_scratch.inference", "gpt2_scratch.kernels"} & reach(module, set()), module


def test_nothing_rewires_a_model_at_run_time():
    """No class swapped, no thread-local, no forward pass outside model.py: what model.py says is what runs."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for needle in ("__class__ =", "threading.local", ".transformer.h[", "ln_f(", ".wte(", ".wpe("):
            if needle in source and path.name != "model.py":
                found.append(f"{path.relative_to(PACKAGE)}: {needle}")
    assert found == []
