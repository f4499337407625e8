"""``python -m podnet.bench.policy_scale --quick`` on a real lab: every figure is there and sane, and
the lab leaves nothing behind."""

from __future__ import annotations

import json
import subprocess

import pytest

from podnet.bench.policy_scale import BENCH_PREFIX, main

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    stem = BENCH_PREFIX[:-1]
    return [n for n in netns if n.startswith(stem)] + [p for p in procs if f"--lab-prefix={stem}" in p]


def test_quick_run_reports_every_figure(tmp_path, capsys):
    before = set(_leftovers())
    out = tmp_path / "policy_scale.json"
    assert main(["--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "cold program" in table and "change -> kernel" in table and "throughput" in table

    p = r["params"]
    assert (p["pods"], p["policies"], p["rules"], p["changes"]) == (30, 100, 500, 3)
    assert r["pods_running_s"] > 0
    cold = r["cold"]
    assert 0 < cold["apply_s"] <= cold["programmed_s"] < 120
    assert set(cold["kernel"]) == {"node-1", "node-2", "node-3"}
    for node, k in cold["kernel"].items():
        assert k["policy_rules"] > 0, node
        assert k["policy_rules"] == k["expected_policy_rules"], node  # the agent compiled what we did
        assert k["rules"] > k["policy_rules"] and k["sets"] > 0
        assert cold["syncs"][node]["syncs"] >= 1
    for key in ("first_node", "all_nodes"):
        s = r["change"][key]
        assert s["n"] == 3 and 0 < s["p50_ms"] <= s["p99_ms"] < 60_000
    assert r["change"]["first_node"]["p50_ms"] <= r["change"]["all_nodes"]["p50_ms"]
    for phase in ("memory_idle", "memory_loaded"):
        assert set(r[phase]) == {"node-1", "node-2", "node-3"}
        assert all(m["rss_mib"] > 10 and m["peak_mib"] >= m["rss_mib"] for m in r[phase].values())
    assert "new connections/s" in table
    for measure in ("throughput", "conn_rate"):
        t = r[measure]
        assert all(v > 0 for v in t["median"].values()), measure
        assert t["ratio_with_vs_without"] > 0 and t["ratio_with_vs_control"] > 0, measure
    assert set(_leftovers()) <= before
