"""``podnet.bench.footprint`` at ``--quick`` size on real labs (Calico with BGP, Cilium with VXLAN):
every figure is there and sane, and the labs leave nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import footprint

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    stem = footprint.BENCH_PREFIX[:-2]  # "pnfp": every lab of this bench is pnfp<hex>-
    return [n for n in netns if n.startswith(stem)] + [p for p in procs if f"--lab-prefix={stem}" in p]


def test_quick_footprint_and_control_plane() -> None:
    before = set(_leftovers())
    seen: list[tuple[str, int, int]] = []
    r = footprint.run(
        ["calico-bgp", "cilium-vxlan"], quick=True, progress=lambda m, d, t: seen.append((m, d, t))
    )
    assert set(r["profiles"]) == {"calico-bgp", "cilium-vxlan"}
    assert r["settings"]["pods"] == footprint.QUICK.pods and r["settings"]["quick"] is True
    assert seen[-1][1] == seen[-1][2] and all(d <= t for _, d, t in seen)

    for profile, fp in r["profiles"].items():
        bgp = profile == "calico-bgp"
        for phase in ("idle", "loaded"):
            nodes = fp["memory"][phase]
            assert set(nodes) == {"node-1", "node-2", "node-3"}, (profile, phase)
            for m in nodes.values():
                assert 10 < m["agent"]["rss_mib"] <= m["agent"]["peak_mib"] + 0.1
                if bgp:
                    assert m["bird"] is not None and 0.5 < m["bird"]["rss_mib"] < 100
                else:
                    assert m["bird"] is None
                assert m["total_rss_mib"] >= m["agent"]["rss_mib"]
        w = fp["workload"]
        assert w["pods"] == footprint.QUICK.pods + 2 and w["policies"] == footprint.QUICK.policies
        assert w["pods_running_s"] > 0 and w["policies_programmed_s"] > 0

        cp = fp["control_plane"]
        assert [c["concurrency"] for c in cp["cni"]] == [10, 1]
        for c in cp["cni"]:
            assert c["add_chain"]["n"] == footprint.QUICK.sandboxes
            assert 0 < c["add_chain"]["p50_ms"] <= c["add_chain"]["p99_ms"] < 30_000
        assert cp["ipam"]["n"] == footprint.QUICK.ipam_allocations and cp["ipam"]["allocations_per_s"] > 0
        change = cp["policy_change"]["all_nodes"]
        assert change["n"] == footprint.QUICK.changes and 0 < change["p99_ms"] < 60_000
        conv = cp["route_convergence"]
        assert conv["node"] == "node-3" and set(conv["routes_after_node_s"]) == {"node-1", "node-2"}
        assert conv["blocks_kept_at_leave"] == 0
        assert 0 < conv["converged_after_node_s"] < footprint.QUICK.timeout
        if bgp:  # Calico style claims the node's block with its first pod (all were released at leave)
            assert conv["block_claimed_by"] == "first pod"
            assert 0 < conv["converged_after_pod_s"] <= conv["converged_after_node_s"]
        else:  # Cilium style claims it at agent start, for its router address
            assert conv["block_claimed_by"] == "agent start (router address)"
            assert conv["converged_after_pod_s"] is None
    assert set(_leftovers()) <= before
