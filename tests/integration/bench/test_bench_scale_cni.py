"""``podnet bench --scale --sections cni --quick`` on a real one-node lab: every row is there with its
goal, the samples hold each call, the CPU is accounted per process, and the lab leaves nothing."""

from __future__ import annotations

import json
import subprocess

import pytest

from podnet.bench import scale
from podnet.bench.control_plane import BENCH_PREFIX
from podnet.cli.main import main as cli_main

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    return [n for n in netns if n.startswith(BENCH_PREFIX)]


def test_quick_cni_section_through_the_cli(tmp_path, capsys) -> None:
    before = set(_leftovers())
    assert cli_main(["bench", "--scale", "--sections", "cni", "--quick", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    doc = json.loads((tmp_path / "bench.json").read_text())["scale"]
    assert doc["order"] == ["cni"] and doc["quick"] is True
    rows = {r["figure"]: r for r in doc["cni"]["rows"]}
    for concurrency, goal in ((1, 60.0), (10, 250.0), (50, 500.0)):
        p99 = rows[f"calico: ADD, {concurrency} at once, p99"]
        assert p99["goal"] == goal and p99["op"] == "<=" and p99["met"] == (p99["value"] <= goal)
        assert 0 < rows[f"calico: ADD, {concurrency} at once, p50"]["value"] <= p99["value"]
        assert f"calico: ADD, {concurrency} at once, p99" in table
    assert rows["calico: ADD, 1 at once, p50"]["goal"] == 30.0
    samples = doc["cni"]["samples"]["calico"]
    for concurrency, size in scale_sizes().items():
        level = samples[str(concurrency)]
        assert len(level["add_chain_s"]) == size == level["add_chain"]["n"]
        assert level["chain"][0] == "podnet"
        cpu = level["add_cpu_ms"]
        assert set(cpu) == {"agent", "etcd", "plugins", "runtime"}
        assert cpu["agent"] > 0 and cpu["etcd"] > 0 and cpu["plugins"] > 0  # each process did work
    assert set(_leftovers()) <= before


def scale_sizes() -> dict[int, int]:
    from podnet.bench.scale_cni import QUICK

    return QUICK


def test_a_failing_section_is_reported_and_the_others_run(monkeypatch) -> None:
    def broken(**_: object) -> dict:
        raise RuntimeError("lab refused")

    monkeypatch.setattr(scale, "_section", lambda name: broken)
    results = scale.run(["cni"], quick=True)
    assert results["cni"] == {"error": "RuntimeError: lab refused"}
    assert "failed: RuntimeError: lab refused" in scale.render(results)
