"""Property test: ``explain`` on the compiled plan agrees with a reference evaluator.

The reference (``tests/netpol_reference.py``, shared with the lab truth-table suite) reads the
NetworkPolicy model objects directly, following the Kubernetes API text (``networking.k8s.io/v1``
NetworkPolicySpec docs); it shares nothing with the compiler.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpol_reference import reference_allowed
from podnet.calc.policy import PodInfo, compile_policies
from podnet.calc.policy_explain import explain
from podnet.model.k8s_policy import NetworkPolicy

# ---------------------------------------------------------------------------------------- strategies

NAMESPACES = ["ns0", "ns1", "ns2"]
LABEL_VALUES = ["a", "b", "c"]
PORT_CHOICES = [
    ("http", 80, "TCP"),
    ("http", 8080, "TCP"),
    ("dns", 53, "UDP"),
    ("web", 81, "TCP"),
    ("dns", 5353, "TCP"),
]
PROBES = [(80, "TCP"), (81, "TCP"), (8080, "TCP"), (53, "UDP"), (5353, "TCP"), (53, "TCP"), (9000, "SCTP")]
EXTERNAL = ["192.168.1.1", "10.0.1.200"]

labels_st = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(LABEL_VALUES), max_size=2)


@st.composite
def selector_st(draw) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["empty", "labels", "in", "notin", "exists", "dne"]))
    key = draw(st.sampled_from(["app", "tier", "team"]))
    value = draw(st.sampled_from(LABEL_VALUES))
    if kind == "empty":
        return {}
    if kind == "labels":
        return {"matchLabels": {key: value}}
    if kind in ("in", "notin"):
        values = draw(st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True))
        return {
            "matchExpressions": [
                {"key": key, "operator": "In" if kind == "in" else "NotIn", "values": values}
            ]
        }
    return {"matchExpressions": [{"key": key, "operator": "Exists" if kind == "exists" else "DoesNotExist"}]}


@st.composite
def peer_st(draw) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["pod", "ns", "both", "ip"]))
    if kind == "ip":
        block = draw(
            st.sampled_from(
                [
                    {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24"]},
                    {"cidr": "10.0.0.0/22", "except": ["10.0.2.0/24", "10.0.0.2/32"]},
                    {"cidr": "10.0.1.1/32"},
                    {"cidr": "192.168.0.0/16"},
                    {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]},
                ]
            )
        )
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selector_st())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(selector_st())
    return peer


port_st = st.sampled_from(
    [
        {"port": 80},
        {"port": 53, "protocol": "UDP"},
        {"port": "http"},
        {"port": "dns", "protocol": "UDP"},
        {"port": "dns"},
        {"port": "nothere"},
        {"port": 80, "endPort": 81},
        {"protocol": "UDP"},
        {"port": 9000, "protocol": "SCTP"},
    ]
)


@st.composite
def rule_st(draw, peers_key: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rule: dict[str, Any] = {}
    peers = draw(st.one_of(st.none(), st.lists(peer_st(), max_size=2)))
    if peers is not None:
        rule[peers_key] = peers
    ports = draw(st.one_of(st.none(), st.lists(port_st, max_size=2)))
    if ports is not None:
        rule["ports"] = ports
    return rule


@st.composite
def policy_st(draw, index: int) -> NetworkPolicy:  # type: ignore[no-untyped-def]
    spec: dict[str, Any] = {"podSelector": draw(selector_st())}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types is not None:
        spec["policyTypes"] = types
    ingress = draw(st.one_of(st.none(), st.lists(rule_st("from"), max_size=2)))
    if ingress is not None:
        spec["ingress"] = ingress
    egress = draw(st.one_of(st.none(), st.lists(rule_st("to"), max_size=2)))
    if egress is not None:
        spec["egress"] = egress
    namespace = draw(st.sampled_from(NAMESPACES))
    return NetworkPolicy.from_dict({"metadata": {"name": f"p{index}", "namespace": namespace}, "spec": spec})


@st.composite
def cluster_st(draw):  # type: ignore[no-untyped-def]
    namespaces = {
        ns: {
            "kubernetes.io/metadata.name": ns,
            **draw(st.dictionaries(st.just("team"), st.sampled_from(LABEL_VALUES))),
        }
        for ns in NAMESPACES
    }
    pods = []
    for n, ns in enumerate(NAMESPACES):
        for i in range(draw(st.integers(2, 4))):
            chosen = draw(st.lists(st.sampled_from(PORT_CHOICES), max_size=3, unique_by=lambda p: p[0]))
            pods.append(
                PodInfo(ns, f"pod{i}", draw(labels_st), (f"10.0.{n}.{i + 1}",), f"node{i % 2}", tuple(chosen))
            )
    policies = [draw(policy_st(i)) for i in range(draw(st.integers(0, 4)))]
    return pods, namespaces, policies


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_st())
def test_explain_agrees_with_reference(cluster) -> None:  # type: ignore[no-untyped-def]
    pods, namespaces, policies = cluster
    plan = compile_policies(pods, pods, namespaces, policies)
    assert plan.errors == {}
    ends: list[PodInfo | str] = [*pods, *EXTERNAL]
    for src in ends:
        for dst in ends:
            if isinstance(src, str) and isinstance(dst, str):
                continue
            for port, protocol in PROBES:
                expected = reference_allowed(src, dst, port, protocol, pods, namespaces, policies)
                verdict = explain(plan, src, dst, port, protocol)
                assert verdict.allowed == expected, (src, dst, port, protocol, verdict)
                if not verdict.allowed:
                    assert verdict.rules and all(p.rule == -1 for p in verdict.rules)


@settings(max_examples=50, deadline=None)
@given(cluster_st())
def test_compile_is_deterministic(cluster) -> None:  # type: ignore[no-untyped-def]
    pods, namespaces, policies = cluster
    first = compile_policies(pods, pods, namespaces, policies)
    second = compile_policies(
        list(reversed(pods)), list(reversed(pods)), namespaces, list(reversed(policies))
    )
    assert first == second
    used = {
        name
        for key in first.endpoints
        for direction in ("ingress", "egress")
        for rule in first.endpoint_rules(key, direction)
        for name in rule.match.src.sets + rule.match.dst.sets
    }
    assert used == set(first.sets)


@settings(max_examples=50, deadline=None)
@given(cluster_st(), st.sampled_from(["node0", "node1"]))
def test_local_plan_is_a_slice_of_the_full_plan(cluster, node) -> None:  # type: ignore[no-untyped-def]
    pods, namespaces, policies = cluster
    full = compile_policies(pods, pods, namespaces, policies)
    local = compile_policies([p for p in pods if p.node == node], pods, namespaces, policies)
    for key, endpoint in local.endpoints.items():
        assert full.endpoints[key] == endpoint
        for direction in ("ingress", "egress"):
            assert local.endpoint_rules(key, direction) == full.endpoint_rules(key, direction)
            for rule in local.endpoint_rules(key, direction):
                for name in rule.match.src.sets + rule.match.dst.sets:
                    assert local.sets[name] == full.sets[name]
