"""``pip install .`` (not editable) into a fresh virtualenv runs ``podnet demo`` to the end.

The install comes from a copy of the source tree, and everything runs from a directory outside it
with no ``PYTHONPATH``: the installed package alone must carry what podnet reads at run time (the
demo's manifests, the eBPF C sources the agent compiles). The demo brings a 3-node lab up under a
prefix of its own and takes it down; nothing of that prefix may be left. About 25 s.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from podnet.lab.cleanup import clean, snapshot_host
from podnet.lab.naming import LabNames
from podnet.lab.state import LabState
from source_copy import copy_source

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.slow]

if os.geteuid() != 0:
    pytest.skip("the demo's lab needs root", allow_module_level=True)

#: What a lab leaves behind under its own prefix (links, addresses, routes are machine-wide).
PREFIXED = ("netns", "processes", "files", "cgroups")


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with podnet installed from a copy of this tree (``pip install DIR``)."""
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    tmp = tmp_path_factory.mktemp("install")
    source = copy_source(tmp / "source")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    made = run([sys.executable, "-m", "venv", str(tmp / "venv")], tmp, env, 120)
    assert made.returncode == 0, made.stderr
    pip = [str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(source)]
    installed = run(pip, tmp, env, 600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    shutil.rmtree(source)  # nothing may come from the copy either
    return tmp / "venv"


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env | extra


def test_the_installed_package_is_not_this_checkout(venv: Path) -> None:
    proc = run(
        [str(venv / "bin" / "python"), "-c", "import podnet; print(podnet.__file__)"],
        venv,
        clean_env(venv),
        60,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(venv), proc.stdout


def test_the_installed_agent_compiles_its_bpf_sources(venv: Path, tmp_path: Path) -> None:
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    code = (
        "import sys\nfrom podnet.dataplane import bpf, ipip, sock_lb\n"
        "for name in (ipip.SOURCE, sock_lb.SOURCE):\n"
        "    print(bpf.source_path(name), bpf.compile_program(bpf.source_path(name), sys.argv[1]))\n"
    )
    env = clean_env(venv)
    env.pop("PODNET_BPF_DIR", None)
    proc = run([str(venv / "bin" / "python"), "-c", code, str(tmp_path)], tmp_path, env, 180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.splitlines():
        source, obj = line.split()
        assert Path(source).is_relative_to(venv) and Path(obj).is_file(), line


def test_podnet_demo_runs_to_the_end_and_cleans_up(venv: Path, tmp_path: Path) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    before = snapshot_host(names)
    try:
        proc = run(
            [str(venv / "bin" / "podnet"), "demo"],
            tmp_path,
            clean_env(venv, PODNET_LAB_PREFIX=names.prefix),
            480,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert "demo finished: every step did what it should" in proc.stdout
        assert f"netns {names.prefix}node-3" in proc.stdout  # its lab ran under our prefix
        assert not LabState(names.state_dir).exists()
        after = snapshot_host(names)
        left = {k: v for k, v in before.diff(after).items() if k in PREFIXED}
        assert left == {}, left
    finally:
        clean(names)
