"""The package layout as docs/DEVELOPING.md draws it: the map matches the tree, imports point
the way the map says, and importing the library does not pull in what it does not need."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "jaxgrad"
EXP = ROOT / "experiments"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names; ``from a import b`` gives ``a`` and ``a.b``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _layout_block() -> dict[str, str]:
    text = (ROOT / "docs" / "DEVELOPING.md").read_text()
    m = re.search(r"<!-- layout -->\n```\n(.*?)```", text, re.S)
    assert m, "docs/DEVELOPING.md lost its <!-- layout --> block"
    return dict(line.split(maxsplit=1) for line in m[1].strip().splitlines())


def test_developing_md_maps_every_module_and_only_those():
    drawn = set(_layout_block())
    tree = {p.relative_to(ROOT).as_posix() for p in LIB.rglob("*.py")}
    tree = {p for p in tree if not p.endswith("/__init__.py") or p == "jaxgrad/__init__.py"}
    tree |= {
        p.relative_to(ROOT).as_posix()
        for p in (EXP / "_support").glob("*.py")
        if p.name != "__init__.py"
    }
    assert drawn - tree == set(), "docs/DEVELOPING.md names files that do not exist"
    assert tree - drawn == set(), "add these files to docs/DEVELOPING.md's layout block"


def test_top_level_is_a_few_concepts_each_with_a_docstring():
    entries = [p for p in LIB.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 11, sorted(p.name for p in entries)
    for pkg in (p for p in entries if p.is_dir()):
        init = pkg / "__init__.py"
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), pkg


@pytest.mark.parametrize("path", sorted((LIB / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_only_jax_flax_numpy_and_models(path):
    allowed = ("jax", "flax", "numpy", "jaxgrad.models", "__future__", "dataclasses", "math",
               "typing", "collections", "functools")  # fmt: skip
    bad = {m for m in _imports(path) if not m.startswith(allowed)}
    assert bad == set(), f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("pkg", ["autodiff", "losses"])
def test_autodiff_and_losses_import_no_flax_and_nothing_above_them(pkg):
    for path in (LIB / pkg).glob("*.py"):
        jaxgrad_imports = {m for m in _imports(path) if m.startswith("jaxgrad.")}
        bad = {m for m in jaxgrad_imports if not m.startswith(("jaxgrad.autodiff", "jaxgrad.losses",
                                                                "jaxgrad.errors"))}  # fmt: skip
        assert bad == set(), f"{path} imports {sorted(bad)}"


def test_report_never_imports_the_runtime():
    for path in (LIB / "report").glob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("jaxgrad.training.distributed",
                                                          "jaxgrad.tasks", "jaxgrad.inspect"))}  # fmt: skip
        assert bad == set(), f"{path} imports {sorted(bad)}"


def test_no_private_name_is_imported_across_modules():
    for path in [*LIB.rglob("*.py"), *EXP.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                ("jaxgrad", "experiments")
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path}: from {node.module} import {private}"


def test_no_runnable_experiment_imports_another():
    runnable = {p.stem for p in EXP.glob("*.py") if p.stem != "__init__"}
    for name in runnable - {"tour"}:  # the tour runs every experiment's tour(), by design
        mods = _imports(EXP / f"{name}.py")
        others = {m for m in mods if m.split(".")[0] == "experiments"} - {"experiments"}
        others = {m for m in others if m.split(".")[1] in runnable - {name}}
        assert others == set(), f"experiments/{name}.py imports {sorted(others)}"
    for path in (EXP / "_support").glob("*.py"):
        assert "__main__" not in path.read_text(), f"{path} is a helper: no main block"


def test_light_imports_do_not_pull_in_the_runtime():
    code = (
        "import sys, jaxgrad, jaxgrad.port.hf_clip, jaxgrad.training.loop, jaxgrad.report.tables\n"
        "heavy = [m for m in ('jaxgrad.training.distributed', 'PIL', 'tarfile', 'urllib.request')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# import name -> distribution name, where they differ
_DIST = {"PIL": "pillow", "orbax": "orbax-checkpoint", "jaxlib": "jaxlib"}


def test_every_third_party_import_of_the_library_is_declared():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in deps}
    stdlib = set(sys.stdlib_module_names)
    for path in LIB.rglob("*.py"):
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in stdlib or top in {"jaxgrad", "__future__"}:
                continue
            if top in {"torch", "transformers"}:  # optional, imported inside functions only
                continue
            dist = _DIST.get(top, top).lower()
            assert dist in declared, f"{path.relative_to(ROOT)} imports {top}: not in pyproject"
