"""Declared run dependencies are exactly the third-party packages the package imports."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "berg_scale"
# Distribution name -> the module it is imported as, where they differ.
IMPORT_NAME = {"pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn", "faiss-cpu": "faiss"}
# Modules a distribution ships besides its own name (matplotlib installs mpl_toolkits).
SHIPPED_BY = {"mpl_toolkits": "matplotlib"}
# berg_scale.testing is test infrastructure (loopback S3 server); its imports come from the test extra.
TEST_ONLY = {PACKAGE / "testing"}
# Run dependencies loaded by name rather than imported: fsspec opens s3:// with s3fs.
LOADED_BY_NAME = {"s3fs"}


def _distribution(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()


def _imported_modules() -> set[str]:
    modules: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if any(folder in path.parents for folder in TEST_ONLY):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in ("berg_scale", "__future__")}


def test_run_dependencies_match_the_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {IMPORT_NAME.get(d, d) for d in map(_distribution, project["dependencies"])}
    optional = {IMPORT_NAME.get(d, d) for group in project["optional-dependencies"].values()
                for d in map(_distribution, group)}
    imported = {SHIPPED_BY.get(m, m) for m in _imported_modules()}
    unused = declared - imported - LOADED_BY_NAME
    assert not unused, f"declared but never imported at run time: {sorted(unused)}"
    missing = imported - declared - optional
    assert not missing, f"imported but not declared: {sorted(missing)}"


def test_every_declared_dependency_is_pinned_in_the_constraints():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = {
        line.split("==")[0].strip().lower().replace("_", "-")
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    wanted = {_distribution(d).replace("_", "-") for d in project["dependencies"]}
    for group in project["optional-dependencies"].values():
        wanted |= {_distribution(d).replace("_", "-") for d in group}
    assert not (wanted - pinned), f"not pinned in requirements/constraints.txt: {sorted(wanted - pinned)}"
