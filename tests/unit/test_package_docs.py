"""Claims the package docstrings make about the code, checked so they cannot go stale."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

import podnet
from podnet import calc, dataplane

SRC = Path(podnet.__file__).parent
PYPROJECT = SRC.parent.parent / "pyproject.toml"


def _contract_layers() -> list[list[str]]:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers" and c["containers"] == ["podnet"]]
    return [sorted(part.strip() for part in layer.split("|")) for layer in layers]


def _docstring_layers() -> list[list[str]]:
    (line,) = [ln for ln in (podnet.__doc__ or "").splitlines() if "→" in ln]
    return [sorted(part.strip() for part in layer.split("|")) for layer in line.split("→")]


def test_the_layer_order_in_the_package_docstring_is_the_import_contract() -> None:
    assert _docstring_layers() == _contract_layers()


def test_every_top_level_module_of_podnet_is_in_a_layer() -> None:
    layered = {name for layer in _contract_layers() for name in layer}
    top = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    top |= {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert top == layered


@pytest.mark.parametrize("package", [dataplane, calc], ids=lambda p: p.__name__)
def test_the_package_docstring_lists_every_module(package) -> None:
    modules = {p.name for p in Path(package.__file__).parent.glob("*.py") if p.name != "__init__.py"}
    listed = set(re.findall(r"^\s{4}(\w+\.py)\s", package.__doc__ or "", re.MULTILINE))
    assert listed == modules


def _imports_pyroute2(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "pyroute2" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pyroute2":
            return True
        if isinstance(node, ast.Call) and _named(node.func) in _IMPORTERS and node.args:
            arg = node.args[0]  # importlib.import_module("pyroute2...."), netlink.pyroute2_module(...)
            if isinstance(arg, ast.Constant | ast.JoinedStr) and "pyroute2" in ast.unparse(arg):
                return True
    return False


_IMPORTERS = {"import_module", "find_spec", "pyroute2_module", "__import__"}


def _named(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_pyroute2_is_imported_only_where_the_netlink_docstring_says() -> None:
    importers = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if _imports_pyroute2(p)}
    assert importers == {"lab/fabric.py"}  # the agent and the CNI path do not import it
    assert "podnet.lab.fabric" in (SRC / "dataplane" / "netlink.py").read_text().split('"""')[1]
