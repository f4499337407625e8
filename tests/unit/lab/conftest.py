"""Helpers for the lab unit tests: free ports and a podserver subprocess on loopback (no root)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """``free_port()`` / ``free_port(socket.SOCK_DGRAM)``: a port free on 127.0.0.1 right now."""
    return _free_port


def wait_file(path: str, proc: subprocess.Popen, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} not written in {timeout}s"
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


@pytest.fixture
def podserver(tmp_path) -> Iterator:
    """``start(name, *ports) -> (Popen, {"80/TCP": actual_port})`` on 127.0.0.1; stopped at the end."""
    procs: list[subprocess.Popen] = []

    def start(name: str, *ports: str, stderr=None):
        ready = str(tmp_path / f"ready-{len(procs)}")
        cmd = [sys.executable, "-m", "podnet.lab.podserver", "--name", name, "--host", "127.0.0.1"]
        for p in ports:
            cmd += ["--port", p]
        cmd += ["--ready-file", ready, "--lab-prefix=pnt0000-"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL, text=True
        )
        procs.append(proc)
        wait_file(ready, proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)
