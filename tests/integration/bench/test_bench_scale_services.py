"""The services scale section on real labs, small (200 services, both profiles): every figure is
there with its goal, the kernels really held every service (nftables map / socket LB map), the
datastore-only endpoints never became real pods, and the labs leave nothing behind. Timings are
the bench's to report, not asserted here."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import scale_services as ss

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.lab]


def _netns(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    return [line.split()[0] for line in out if line.startswith(prefix)]


@pytest.mark.parametrize("profile", ["calico", "cilium"])
def test_small_services_section(profile: str) -> None:
    before = set(_netns(ss.BENCH_PREFIX[:-1]))
    opts = ss.Options(services=200, adds=2, rounds=2, duration=1, timeout=300.0)
    out = ss.run(profiles=(profile,), opts=opts)
    sample = out["samples"][profile]
    # every node's kernel served all 200 ClusterIPs at the end (the N-1 and the real one)
    assert sorted(sample["kernel_services"]) == ["node-1", "node-2", "node-3"]
    assert all(count == 200 for count in sample["kernel_services"].values())
    assert len(sample["cold"]) == 2 and all(c["services"] == 199 for c in sample["cold"])
    assert sample["cold"][0]["pods"] == 2 * 199 and sample["cold"][1]["pods"] == 0
    for cold in sample["cold"]:
        assert set(cold["kernel_s"]) == {"node-1", "node-2", "node-3"} and cold["seconds"] > 0
    assert len(sample["deletes"]) == 1 and len(sample["one_added"]) == 2
    assert all(a["add_s"] > 0 and a["delete_s"] > 0 for a in sample["one_added"])
    conn = sample["conn_per_s"]
    assert len(conn["with_1"]) == len(conn["with_n"]) == 2 and min(conn["with_1"] + conn["with_n"]) > 0
    rows = {r.figure: r for r in out["rows"]}
    cold = rows[f"{profile}: cold sync, 200 services + pods"]
    assert cold.goal == ss.COLD_GOAL_S and cold.met == (cold.value <= ss.COLD_GOAL_S)
    added = rows[f"{profile}: one service added at 200, median"]
    assert added.goal == ss.ADD_GOAL_MS and added.unit == "ms"
    ratio = rows[f"{profile}: conn/s via ClusterIP, 200 / 1 services"]
    assert ratio.op == ">=" and ratio.goal == ss.RATIO_GOAL and ratio.value > 0
    assert {f"{profile}: agent RSS node-{i}, 200 services" for i in (1, 2, 3)} <= set(rows)
    assert sample["leftovers"] == []
    assert set(_netns(ss.BENCH_PREFIX[:-1])) <= before
