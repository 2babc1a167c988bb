"""The package's shape: run-directory names live in the layout module only; no import circles."""

import ast
import json
from pathlib import Path

import pytest

from ctbrainage.core.config import REPO_ROOT

PACKAGE = REPO_ROOT / "ctbrainage"
LAYOUT = PACKAGE / "core" / "layout.py"
# The layers, lowest first (docs/architecture.md): a module may import from its own package and
# from any package listed before it, never from one after it.
LAYERS = (
    "core",
    "imaging",
    "synth",
    "lobes",
    "learn",
    "interpret",
    "stats",
    "views",
    "steps",
    "apps",
    "run",
)
# fragments of layout names that are ordinary words elsewhere: a column, pandas' orient, a lobe
# method, a module
GENERIC = {"fold", "version_0", "records", "totalsegmentator", "table1"}
# (file, literal): the same word with another meaning there
ALLOWED = {
    ("ctbrainage/synth/schedule.py", "lobes"),  # a key of the schedule's JSON format
    ("ctbrainage/steps/s08_stacking.py", "stacking"),  # the profile section step 08 reads
    ("ctbrainage/steps/s10_robustness.py", "robustness"),  # the profile section step 10 reads
    ("ctbrainage/views/docs.py", "robustness"),  # a results block's name
    ("ctbrainage/steps/s11_multitask.py", "multitask"),  # the profile section step 11 reads
    ("ctbrainage/views/docs.py", "multitask"),  # a results block's name
}


def _strings(tree: ast.AST) -> list[str]:
    """Every string literal of a module, with the literal parts of f-strings."""
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _layout_names() -> set[str]:
    """The file and folder names that RunLayout and SyntheticLayout join into paths."""
    names = set()
    for node in ast.walk(ast.parse(LAYOUT.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            names |= {s for s in _strings(node.right)}
        if isinstance(node, ast.JoinedStr):
            names |= {s for s in _strings(node)}
        if isinstance(node, ast.IfExp):  # "perturbation.csv" if ... else f"perturbation_{fill}.csv"
            names |= {s for s in _strings(node) if "." in s}
    words = {n.strip("/") for n in names}
    return {
        n
        for n in words
        if len(n) > 2 and n not in GENERIC and not (n.startswith(".") and n.count(".") <= 2)
    }


def _sources() -> dict[str, ast.AST]:
    sources = {
        str(p.relative_to(REPO_ROOT)): ast.parse(p.read_text())
        for p in PACKAGE.rglob("*.py")
        if p != LAYOUT
    }
    sources["run_all.py"] = ast.parse((REPO_ROOT / "run_all.py").read_text())
    for notebook in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        authored = [  # papermill's injected parameters are the driver's values, not code
            c
            for c in cells
            if c["cell_type"] == "code"
            and "injected-parameters" not in c["metadata"].get("tags", [])
        ]
        code = "\n".join("".join(c["source"]) for c in authored).replace("%", "#")
        sources[str(notebook.relative_to(REPO_ROOT))] = ast.parse(code)
    return sources


def test_the_layout_names_are_found():
    names = _layout_names()
    for expected in ("predictions.csv", "lobes", "preprocessed", "exclusions.csv", "models"):
        assert expected in names


def test_no_run_directory_name_outside_the_layout_module():
    names = _layout_names()
    found = [
        f"{where}: {text!r}"
        for where, tree in _sources().items()
        for text in _strings(tree)
        if (where, text) not in ALLOWED
        and (text in names or any(text.endswith(n) and "." in n for n in names if len(n) > 6))
    ]
    assert not found, "run-directory names outside ctbrainage/layout.py:\n" + "\n".join(found)


def _imports(path: Path) -> set[str]:
    """ctbrainage modules imported by ``path`` anywhere in it (also inside functions)."""
    module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ctbrainage")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("ctbrainage"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_no_import_circle_in_the_package():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ re-exporting its own submodules is not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    circles = {" → ".join(c) for name in graph if (c := cycle_from(name))}
    assert not circles, "import circles:\n" + "\n".join(sorted(circles))


@pytest.mark.parametrize("name", ["runner", "pipeline", "io", "manifest", "synthesis", "loaders"])
def test_the_old_modules_are_gone(name):
    assert not (PACKAGE / f"{name}.py").exists()


def _package_of(module: str) -> str:
    """``ctbrainage.views.plots.common`` → ``views``; a top-level module is its own package."""
    return module.split(".")[1]


def _module_imports() -> dict[str, set[str]]:
    """Each module of the package → the ctbrainage modules and packages it imports (also those
    imported inside functions: a lazy import is still a dependency)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not name.endswith(".__main__"):  # a command line is an entry point, not a layer's module
            found[name] = {m for m in _imports(path) if m.count(".") >= 1}
    return found


def test_every_package_is_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert packages == set(LAYERS), "a package without a layer (or a layer without a package)"
    assert not modules, f"modules outside every layer: {sorted(modules)}"


def test_no_module_imports_from_a_layer_above_its_own():
    """The layer rule (docs/architecture.md): a module imports only from its own package and
    from the packages of lower layers."""
    rank = {package: i for i, package in enumerate(LAYERS)}
    upward = sorted(
        f"{name} ({_package_of(name)}) imports {target} ({_package_of(target)})"
        for name, targets in _module_imports().items()
        if name.count(".") >= 1
        for target in targets
        if _package_of(target) in rank
        and _package_of(target) != _package_of(name)
        and rank[_package_of(target)] > rank[_package_of(name)]
    )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_layer_rule_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule's own check: a core module that imports a view is reported."""
    package = tmp_path / "ctbrainage"
    for sub in ("core", "views"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "core" / "bad.py").write_text("from ctbrainage.views import plots\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    monkeypatch.setattr(__import__(__name__), "REPO_ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"ctbrainage.core.bad \(core\) imports"):
        test_no_module_imports_from_a_layer_above_its_own()


def test_each_notebook_runs_the_step_of_its_name():
    from ctbrainage.run import NOTEBOOKS
    from ctbrainage.run.steps import MODULES, step_module

    assert set(NOTEBOOKS) == set(MODULES)
    for number, name in NOTEBOOKS.items():
        assert step_module(number).STEP.name == name
        assert (REPO_ROOT / "notebooks" / f"{name}.ipynb").exists()
