"""The memory section's pure parts: the per-pod slope, the datastore-only pods, the rows."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.bench import scale_memory as sm
from podnet.bench.churn import VIRTUAL_NET, is_virtual
from podnet.model import parse_resource


def test_fit_slope_is_least_squares() -> None:
    assert sm.fit_slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert sm.fit_slope([0, 10, 20], [0.0, 1.0, 5.0]) == pytest.approx(0.25)  # (0,0),(10,1),(20,5)
    assert sm.fit_slope([5], [1.0]) is None
    assert sm.fit_slope([3, 3], [1.0, 2.0]) is None
    with pytest.raises(ValueError):
        sm.fit_slope([1, 2], [1.0])


def test_per_pod_kib_leaves_the_first_size_out() -> None:
    # 60 MiB at 0 (one-time costs), then 1 MiB per 1,024 pods: 1 KiB per pod
    points = [(0, 60.0), (1024, 70.0), (2048, 71.0), (3072, 72.0)]
    assert sm.per_pod_kib(points) == pytest.approx(1.0)
    assert sm.per_pod_kib(points, skip_first=False) == pytest.approx(3.7, abs=1e-3)
    assert sm.per_pod_kib([(0, 50.0), (100, 51.0)]) is None  # one point after the first: no slope


def test_virtual_pods_are_valid_unique_and_left_to_the_datastore() -> None:
    docs = [sm.virtual_pod(i) for i in range(0, 3 * sm.PODS_PER_NODE, 7)]
    pods = [parse_resource(d) for d in docs]
    assert all(is_virtual(p) for p in pods)
    assert all(p.status.phase == "Running" for p in pods)
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == len(pods) and all(ipaddress.IPv4Address(ip) in VIRTUAL_NET for ip in ips)
    assert all(p.spec.node_name.startswith("vnode-") for p in pods)  # no lab node: no kubelet
    same = [sm.virtual_pod(i)["metadata"]["labels"] for i in range(sm.REPLICAS)]
    assert all(labels == same[0] for labels in same)  # one Deployment's replicas share labels
    assert sm.virtual_pod(sm.REPLICAS)["metadata"]["labels"] != same[0]


def test_guard_docs_are_valid_and_select_the_virtual_pods() -> None:
    docs = sm.guard_docs(pods=2, policies=6)
    kinds = [parse_resource(d).kind for d in docs]
    assert kinds.count("Namespace") == sm.NAMESPACES + 1
    assert kinds.count("Pod") == 2 and kinds.count("NetworkPolicy") == 6
    peers = [d["spec"]["ingress"][0]["from"][0] for d in docs if d["kind"] == "NetworkPolicy"]
    apps = {p["podSelector"]["matchLabels"]["app"] for p in peers if "podSelector" in p}
    assert apps <= {sm.virtual_pod(i)["metadata"]["labels"]["app"] for i in range(100)}
    assert any("podSelector" not in p for p in peers)  # whole namespaces too


def _fp(idle: list[float], loaded: list[float]) -> dict:
    def nodes(values: list[float]) -> dict:
        return {f"node-{i}": {"agent": {"rss_mib": v}} for i, v in enumerate(values, 1)}

    return {
        "memory": {"idle": nodes(idle), "loaded": nodes(loaded)},
        "workload": {"pods": 102, "policies": 1000},
    }


def test_rows_carry_the_goals_and_the_largest_node() -> None:
    series = {
        "rss_mib": {"0": 40.0, "10000": 50.0, "20000": 60.0},
        "traced": {"50000": {"traced_mib": 60.0}, "5000": {"traced_mib": 24.0}, "0": {"traced_mib": 20.0}},
    }
    rows = {r.figure.split(",")[0].split(" (")[0]: r for r in sm.rows(_fp([40, 42], [55, 58]), series, False)}
    idle, loaded = rows["agent RSS idle"], rows["agent RSS loaded"]
    assert (idle.value, idle.goal) == (42, sm.GOAL_IDLE_MIB) and idle.met is True
    assert (loaded.value, loaded.goal) == (58, sm.GOAL_LOADED_MIB)
    per_pod = rows["agent RSS growth per pod in the cluster"]
    assert per_pod.value == pytest.approx(1.024) and per_pod.goal == sm.GOAL_PER_POD_KIB
    assert rows["Python heap"].value == pytest.approx(0.819, abs=1e-3)
    quick = sm.rows(_fp([40], [55]), series, True)
    assert [r.goal for r in quick if "loaded" in r.figure] == [None]  # a smaller load: no goal
