"""The package's layers import one way: a test fails on any upward import, any import cycle, and
any import of the package deferred into a function (the old way of dodging a cycle)."""

import ast
import subprocess
import sys
from pathlib import Path

import pyro_vae

PACKAGE = Path(pyro_vae.__file__).parent

# Lowest first: a module may import only modules listed before it. "" is the package itself
# (pyro_vae/__init__.py, the Python API), which sits on top with the CLI.
ORDER = [
    "errors", "files", "data", "nets", "parts", "models", "objectives", "capture", "estimators", "distributed", "svi", "plots",
    "runs.config", "runs.store", "runs.classifier", "runs.figures", "runs.training", "runs.evaluation",
    "runs.quadrants", "runs.compare", "runs", "cli", "", "__main__",
]


# The one module that imports the library when it is needed: `pyro-vae --help` and a mistyped option
# must answer in well under a second, without importing torch (cli.facts caches what they show).
DEFERRED = {"cli"}


def module_name(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def package_imports(path):
    """(module imported, line, whether at module level) for every import of the package in a file."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_package else here[:-1]  # the package a relative import starts from
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = anchor + (node.module.split(".") if node.module else [])
                if node.module:
                    targets.append(".".join(prefix))
                else:  # from . import distributed
                    targets += [".".join(prefix + [alias.name]) for alias in node.names]
            elif node.module and node.module.split(".")[0] == "pyro_vae":
                targets.append(node.module.partition(".")[2])
        elif isinstance(node, ast.Import):
            targets += [a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "pyro_vae"]
        found += [(t, node.lineno, id(node) in top_level) for t in targets]
    return found


def all_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert {module_name(p) for p in all_modules()} == set(ORDER)


def test_imports_go_down_the_layers_only():
    rank = {m: i for i, m in enumerate(ORDER)}
    wrong = []
    for path in all_modules():
        me = module_name(path)
        for target, line, top in package_imports(path):
            if target not in rank:
                wrong.append(f"{path.name}:{line} imports unknown module {target!r}")
            elif rank[target] >= rank[me]:
                wrong.append(f"{me or '__init__'}:{line} imports {target or 'the package'}, a layer above it")
            if not top and me not in DEFERRED:
                wrong.append(f"{me or '__init__'}:{line} imports {target} inside a function (deferred import)")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    graph = {module_name(p): {t for t, _, _ in package_imports(p)} for p in all_modules()}
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_each_module_imports_first_in_a_fresh_package():
    """Any module can be the first one imported: no hidden dependence on import order."""
    names = [f"pyro_vae.{m}" if m else "pyro_vae" for m in ORDER if m != "__main__"]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    for k in [k for k in sys.modules if k == 'pyro_vae' or k.startswith('pyro_vae.')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(name)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_layer_test_sees_an_upward_and_a_deferred_import(tmp_path, monkeypatch):
    """The checker itself: a planted upward import and a planted deferred import are both caught."""
    fake = tmp_path / "pyro_vae"
    (fake / "runs").mkdir(parents=True)
    (fake / "models.py").write_text("from .runs.store import load_run\n")
    (fake / "data.py").write_text("def f():\n    from . import models\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = {module_name(p): package_imports(p) for p in sorted(fake.rglob("*.py"))}
    assert found["models"] == [("runs.store", 1, True)]
    assert found["data"] == [("models", 2, False)]


def test_an_installed_package_holds_every_module():
    """pyproject.toml's package list finds every folder of the package (0.1 shipped without runs/)."""
    import tomllib

    from setuptools import find_packages

    settings = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(PACKAGE.parent), **settings["packages"]["find"]))
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders == found, folders ^ found
