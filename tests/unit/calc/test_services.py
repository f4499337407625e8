"""Service frontends and backends (EndpointSlice semantics, traffic policies), pure."""

from __future__ import annotations

from podnet.calc.services import CLUSTER_IP, EXTERNAL_IP, NODE_PORT, Backend, service_plan
from podnet.model import parse_resource


def pod(name: str, node: str, ip: str, labels: dict, ports=(), phase="Running", **extra):  # type: ignore[no-untyped-def]
    meta = {"name": name, "namespace": "ns", "labels": labels, **extra.pop("meta", {})}
    spec = {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]}
    status = {"phase": phase, "podIP": ip, **extra.pop("status", {})}
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
    return parse_resource(doc)


def svc(name: str, **spec):  # type: ignore[no-untyped-def]
    body = {
        "selector": {"app": "web"},
        "clusterIP": "10.96.0.10",
        "ports": [{"port": 80, "targetPort": 8080}],
    }
    body.update(spec)
    return parse_resource(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": body}
    )


WEB1 = pod("web-1", "node-1", "10.244.1.2", {"app": "web"}, [{"name": "http", "containerPort": 8080}])
WEB2 = pod("web-2", "node-2", "10.244.2.2", {"app": "web"}, [{"name": "http", "containerPort": 9090}])
OTHER = pod("other", "node-1", "10.244.1.3", {"app": "db"})
PENDING = pod("web-3", "node-1", "10.244.1.4", {"app": "web"}, phase="Pending")
GOING = pod(
    "web-4", "node-1", "10.244.1.5", {"app": "web"}, meta={"deletionTimestamp": "2026-11-25T10:00:00Z"}
)
UNREADY = pod(
    "web-5",
    "node-2",
    "10.244.2.5",
    {"app": "web"},
    status={"conditions": [{"type": "Ready", "status": "False"}]},
)
PODS = [WEB1, WEB2, OTHER, PENDING, GOING, UNREADY]


def only(plan, kind):  # type: ignore[no-untyped-def]
    return [f for f in plan.frontends if f.kind == kind]


def test_backends_are_the_ready_running_selected_pods() -> None:
    (front,) = service_plan("node-1", [svc("web")], PODS).frontends
    assert (front.kind, front.ip, front.port, front.protocol) == (CLUSTER_IP, "10.96.0.10", 80, "TCP")
    assert front.backends == (
        Backend("10.244.1.2", 8080, "node-1", "ns/web-1"),
        Backend("10.244.2.2", 8080, "node-2", "ns/web-2"),
    )


def test_named_target_port_resolves_per_pod() -> None:
    named = svc("web", ports=[{"port": 80, "targetPort": "http"}])
    (front,) = service_plan("node-1", [named], PODS).frontends
    assert [(b.pod, b.port) for b in front.backends] == [("ns/web-1", 8080), ("ns/web-2", 9090)]
    udp = svc("web", ports=[{"port": 53, "protocol": "UDP", "targetPort": "http"}])
    assert service_plan("node-1", [udp], PODS).frontends[0].backends == ()  # http is a TCP port


def test_internal_traffic_policy_local_uses_local_backends_only() -> None:
    local = svc("web", internalTrafficPolicy="Local")
    assert [b.pod for b in service_plan("node-1", [local], PODS).frontends[0].backends] == ["ns/web-1"]
    assert service_plan("node-3", [local], PODS).frontends[0].backends == ()  # no fallback
    assert len(service_plan(None, [local], PODS).frontends[0].backends) == 2  # the cluster-wide view


def test_node_port_external_ips_and_external_traffic_policy() -> None:
    spec = {
        "type": "NodePort",
        "externalIPs": ["192.0.2.7"],
        "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}],
    }
    plan = service_plan("node-2", [svc("web", **spec)], PODS, node_ips=["10.0.0.12"])
    (node_port,) = only(plan, NODE_PORT)
    assert (node_port.ip, node_port.port, node_port.local_only) == (None, 30080, False)
    assert len(node_port.backends) == 2
    assert only(plan, EXTERNAL_IP)[0].ip == "192.0.2.7" and plan.node_ips == ("10.0.0.12",)
    local = service_plan("node-2", [svc("web", externalTrafficPolicy="Local", **spec)], PODS)
    (node_port,) = only(local, NODE_PORT)
    assert node_port.local_only and [b.pod for b in node_port.backends] == ["ns/web-2"]
    assert len(only(local, CLUSTER_IP)[0].backends) == 2  # ClusterIP is not affected


def test_affinity_headless_external_name_and_unallocated() -> None:
    sticky = svc("sticky", sessionAffinity="ClientIP")
    headless = svc("headless", clusterIP="None")
    meta = {"name": "n", "namespace": "ns"}
    spec = {"type": "ExternalName", "externalName": "db.example.org"}
    name = parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})
    fresh = svc("fresh", clusterIP="")
    plan = service_plan("node-1", [sticky, headless, name, fresh], PODS)
    assert [(f.service, f.affinity_seconds) for f in plan.frontends] == [("ns/sticky", 10800)]
    assert plan.errors == {"ns/fresh": "no clusterIP allocated yet"}


def test_no_selector_means_no_managed_endpoints_and_plans_are_deterministic() -> None:
    bare = svc("bare", selector=None)
    assert service_plan("node-1", [bare], PODS).frontends[0].backends == ()
    services = [svc("a"), svc("b", clusterIP="10.96.0.11")]
    assert service_plan("node-1", services, PODS) == service_plan("node-1", services[::-1], PODS[::-1])


# -- at scale: the label index and the per-service memo ------------------------------------


def test_ready_pods_match_a_selector_through_its_rarest_label():
    from podnet.calc.services import ReadyPods

    tier = pod("web-9", "node-1", "10.244.1.9", {"app": "web", "tier": "gold"})
    ready = ReadyPods([WEB1, WEB2, OTHER, PENDING, GOING, tier])
    assert ready.selected("ns", {"app": "web"}) == (WEB1, WEB2, tier)
    assert ready.selected("ns", {"app": "web", "tier": "gold"}) == (tier,)
    assert ready.selected("ns", {"app": "web", "tier": "none"}) == ()
    assert ready.selected("other-ns", {"app": "web"}) == ()
    assert ready.selected("ns", None) == () and ready.selected("ns", {}) == ()


def test_memo_hands_back_the_same_frontends_until_the_service_or_its_pods_change():
    from podnet.calc.memo import ObjectMemo

    memo: ObjectMemo = ObjectMemo()
    a, b = svc("a"), svc("b", clusterIP="10.96.0.11", selector={"app": "db"})
    first = service_plan("node-1", [a, b], [WEB1, WEB2, OTHER], memo=memo)
    again = service_plan("node-1", [b, a], [WEB1, WEB2, OTHER], memo=memo)
    assert again == first and all(x is y for x, y in zip(again.frontends, first.frontends, strict=True))
    moved = pod("web-2", "node-2", "10.244.2.9", {"app": "web"})  # a new object: a's backends change
    changed = service_plan("node-1", [a, b], [WEB1, moved, OTHER], memo=memo)
    assert changed == service_plan("node-1", [a, b], [WEB1, moved, OTHER])  # as without a memo
    by = {f.service: f for f in changed.frontends}
    assert {x.ip for x in by["ns/a"].backends} == {"10.244.1.2", "10.244.2.9"}
    assert by["ns/b"] is {f.service: f for f in first.frontends}["ns/b"]  # b untouched
    service_plan("node-1", [b], [WEB1, moved, OTHER], memo=memo)
    assert len(memo) == 1  # a deleted: forgotten
