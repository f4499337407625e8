"""calc.local_pods: an endpoint wired on a node stays under policy whatever its Pod object says."""

from __future__ import annotations

from podnet.calc.endpoints import EndpointRecord
from podnet.calc.local_pods import local_pods
from podnet.calc.policy import PodInfo, compile_policies
from podnet.model import parse_resource

NODE = "node-1"


def record(pod: str, ip: str, labels: dict[str, str] | None = None, node: str = NODE) -> EndpointRecord:
    return EndpointRecord(node, "t", pod, "c1", "eth0", f"cali{pod}", (ip,), labels=labels or {})


def deny_locked():  # type: ignore[no-untyped-def]
    return parse_resource(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "t"},
            "spec": {"podSelector": {"matchLabels": {"role": "locked"}}, "policyTypes": ["Ingress"]},
        }
    )


def test_pod_bound_here_is_local_without_conflict() -> None:
    pods = [PodInfo("t", "srv", {"role": "locked"}, ("10.0.0.2",), NODE)]
    got = local_pods(NODE, pods, [record("srv", "10.0.0.2")], {})
    assert [p.key for p in got.pods] == ["t/srv"]
    assert got.conflicts == {}


def test_pod_bound_here_not_yet_wired_is_still_compiled() -> None:
    pods = [PodInfo("t", "new", {}, (), NODE), PodInfo("t", "far", {}, ("10.0.1.2",), "node-2")]
    got = local_pods(NODE, pods, [], {})
    assert [p.key for p in got.pods] == ["t/new"]
    assert got.conflicts == {}


def test_pod_without_node_keeps_its_endpoint_under_its_labels() -> None:
    """The issue's reproduction: a re-applied manifest dropped nodeName and added role=locked."""
    pods = [PodInfo("t", "srv", {"role": "locked"}, ("10.0.0.2",), "")]
    got = local_pods(NODE, pods, [record("srv", "10.0.0.2")], {})
    assert [(p.key, p.node, dict(p.labels)) for p in got.pods] == [("t/srv", NODE, {"role": "locked"})]
    assert "claims no node" in got.conflicts["t/srv"]
    plan = compile_policies(got.pods, pods, {"t": {}}, [deny_locked()])
    assert plan.endpoints["t/srv"].ingress_isolated
    assert plan.endpoint_rules("t/srv", "ingress") == ()


def test_pod_claiming_another_node_stays_enforced_here() -> None:
    pods = [PodInfo("t", "srv", {"role": "locked"}, ("10.0.0.2",), "node-2")]
    got = local_pods(NODE, pods, [record("srv", "10.0.0.2")], {})
    assert [p.key for p in got.pods] == ["t/srv"]
    assert "claims node 'node-2'" in got.conflicts["t/srv"]


def test_endpoint_of_another_node_is_not_ours() -> None:
    pods = [PodInfo("t", "srv", {}, ("10.0.1.2",), "node-2")]
    got = local_pods(NODE, pods, [record("srv", "10.0.1.2", node="node-2")], {})
    assert got.pods == [] and got.conflicts == {}


def test_gone_pod_keeps_its_last_policy() -> None:
    last = {"t/srv": PodInfo("t", "srv", {"role": "locked"}, ("10.0.0.2",), NODE)}
    got = local_pods(NODE, [], [record("srv", "10.0.0.2", labels={"role": "open"})], last)
    assert [dict(p.labels) for p in got.pods] == [{"role": "locked"}]
    assert "last policy" in got.conflicts["t/srv"]


def test_gone_pod_without_history_uses_labels_recorded_at_cni_add() -> None:
    got = local_pods(NODE, [], [record("srv", "10.0.0.2", labels={"role": "locked"})], {})
    assert [(p.key, dict(p.labels), p.ips) for p in got.pods] == [
        ("t/srv", {"role": "locked"}, ("10.0.0.2",))
    ]
    assert "labels at CNI ADD" in got.conflicts["t/srv"]
    plan = compile_policies(got.pods, [], {"t": {}}, [deny_locked()])
    assert plan.endpoints["t/srv"].ingress_isolated
