"""The ``podnet`` CLI as a user runs it against a test lab: a subprocess with the lab's prefix."""

from __future__ import annotations

import os
import subprocess
import sys

from podnet.lab.naming import LabNames


def podnet(names: LabNames, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``podnet ARGS`` on the lab ``names`` (its own etcd, found by prefix); ``check``: exit 0."""
    env = {**os.environ, "PODNET_LAB_PREFIX": names.prefix}
    env.pop("PODNET_ETCD_ENDPOINTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert proc.returncode == 0, f"podnet {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc
