"""``podnet bench`` end to end as a user runs it, on one profile at quick size: the table with a
ratio to the hand-built baseline on every data-path row, ``bench.json`` and the plots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def test_podnet_bench_quick_one_profile(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        "-m",
        "podnet.cli.main",
        "bench",
        "--quick",
        "--profiles",
        "cilium-direct",
        "--skip-footprint",
        "--skip-control-plane",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout
    for row in (
        "TCP bandwidth, 1 stream",
        "TCP bandwidth, 4 streams",
        "Latency P99, fixed rate",
        "Latency P99, saturation",
        "New connections/s",
        "CPU per Gbit",
    ):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert " x" in line, line  # the ratio to the baseline
    doc = json.loads((out / "bench.json").read_text())
    for side in (doc["profiles"]["cilium-direct"], doc["baselines"]["direct"]):
        assert all(s["samples"] and min(s["samples"]) > 0 for s in side["scenarios"].values())
    assert len(list(out.glob("*.png"))) >= 8
