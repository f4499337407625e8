"""``podnet.bench.scale_memory`` at ``--quick`` size on real labs: every row is there and plausible,
the traced snapshots name allocation sites, and the labs leave nothing behind. The goals are the
bench's figures, never asserted here."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import footprint, scale_memory

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    stems = (scale_memory.BENCH_PREFIX[:-1], footprint.BENCH_PREFIX[:-1])  # every lab is <stem><hex>-
    return [n for n in netns if n.startswith(stems)] + [
        p for p in procs if any(f"--lab-prefix={s}" in p for s in stems)
    ]


def test_quick_memory_section() -> None:
    before = set(_leftovers())
    steps: list[str] = []
    out = scale_memory.run(quick=True, step=steps.append)
    rows = {r.figure: r for r in out["rows"]}
    idle = next(r for f, r in rows.items() if f.startswith("agent RSS idle"))
    loaded = next(r for f, r in rows.items() if f.startswith("agent RSS loaded"))
    per_pod = next(r for f, r in rows.items() if f.startswith("agent RSS growth per pod"))
    heap = next(r for f, r in rows.items() if f.startswith("Python heap"))
    assert 10 < idle.value < 500 and idle.goal == scale_memory.GOAL_IDLE_MIB
    assert idle.value <= loaded.value + 5 < 1000
    assert per_pod.goal == scale_memory.GOAL_PER_POD_KIB and 0 < per_pod.value < 100
    assert 0 < heap.value < 100

    series = out["samples"]["per_pod"]
    assert set(series["rss_mib"]) == {str(s) for s in scale_memory.QUICK_SIZES}
    top = series["traced"][str(max(scale_memory.QUICK_TRACED))]
    assert top["traced_mib"] > series["traced"]["0"]["traced_mib"]  # the pods are on the heap
    assert len(top["top"]) >= 10 and all(":" in s["site"] and s["kib"] > 0 for s in top["top"])
    assert any("memory: lab down" in s for s in steps)
    assert set(_leftovers()) <= before
