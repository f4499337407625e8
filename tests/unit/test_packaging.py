"""The built wheel carries every file podnet reads from its own directory at run time.

``pip install .`` (not editable) installs what the wheel holds, nothing else: a data file that is
not package data (the demo's ``examples/lab/pods.yaml`` was one) works from a checkout and is
missing from an install. The wheel is built from a copy of the source (pip builds in the tree it
is given) and listed; tests/integration/test_install.py installs it and runs ``podnet demo``.
"""

from __future__ import annotations

import importlib.resources
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from podnet.dataplane import bpf, ipip, sock_lb
from source_copy import REPO, copy_source

PACKAGE = REPO / "src" / "podnet"
CODE_SUFFIXES = (".py", ".pyc")
#: Files the code opens by name inside the package (besides what ``data_files`` finds).
RUNTIME_FILES = (
    "examples/pods.yaml",
    "examples/lab/pods.yaml",
    "examples/seed-ippool-as-written.yaml.txt",
    f"bpf/{ipip.SOURCE}",
    f"bpf/{sock_lb.SOURCE}",
)


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of ``source`` into ``out``; the wheel's path."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("podnet-*.whl")
    return wheel


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def data_files(package: Path = PACKAGE) -> set[str]:
    """Every file in the package's tree that is not Python code, as ``podnet/...`` names."""
    return {
        f"podnet/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in CODE_SUFFIXES and "__pycache__" not in p.parts
    }


def outside_reaches(text: str, depth: int) -> list[str]:
    """Lines of a module ``depth`` directories below ``podnet/`` whose ``Path(__file__)...parents[N]``
    leaves the package (N >= depth): a file the install does not have."""
    hits = []
    for line in text.splitlines():
        for match in re.finditer(r"__file__\)[^\n]*?\.parents\[(\d+)\]", line):
            if int(match.group(1)) >= depth:
                hits.append(line.strip())
    return hits


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    tmp = tmp_path_factory.mktemp("wheel")
    return wheel_names(build_wheel(copy_source(tmp / "src-copy"), tmp / "dist"))


def test_every_data_file_of_the_package_is_in_the_wheel(wheel: set[str]) -> None:
    found = data_files()
    assert {f"podnet/{f}" for f in RUNTIME_FILES} <= found  # the scan sees what the code opens
    assert sorted(found - wheel) == []


def test_a_file_left_out_of_package_data_is_caught(tmp_path: Path) -> None:
    """Positive control: the package-data line before the fix loses the demo's files and BPF's."""
    source = copy_source(tmp_path / "src-copy")
    pyproject = source / "pyproject.toml"
    text, count = re.subn(r"(?m)^podnet = \[.*\]$", 'podnet = ["examples/*.yaml"]', pyproject.read_text())
    assert count == 1
    pyproject.write_text(text)
    missing = data_files() - wheel_names(build_wheel(source, tmp_path / "dist"))
    assert {"podnet/examples/lab/pods.yaml", "podnet/examples/seed-ippool-as-written.yaml.txt"} <= missing
    assert f"podnet/bpf/{ipip.SOURCE}" in missing


def test_runtime_paths_are_inside_the_package() -> None:
    root = importlib.resources.files("podnet")
    for name in RUNTIME_FILES:
        assert root.joinpath(name).is_file(), name
    for source in (ipip.SOURCE, sock_lb.SOURCE):
        assert Path(bpf.source_path(source)).resolve().is_relative_to(PACKAGE.resolve())


def test_no_module_reaches_outside_the_package() -> None:
    hits = {
        str(path.relative_to(PACKAGE)): found
        for path in PACKAGE.rglob("*.py")
        if (found := outside_reaches(path.read_text(), len(path.relative_to(PACKAGE).parts)))
    }
    assert hits == {}


def test_outside_reaches_sees_a_path_out_of_the_package() -> None:
    """Positive control: the BPF source path as it was (``parents[3]`` from dataplane/bpf.py)."""
    line = 'SRC = Path(os.environ.get("X") or Path(__file__).resolve().parents[3] / "bpf")'
    assert outside_reaches(line, depth=2) == [line]
    assert outside_reaches(line.replace("[3]", "[1]"), depth=2) == []
