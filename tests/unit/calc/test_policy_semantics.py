"""Kubernetes NetworkPolicy semantics of the compiled form, one test per feature."""

from __future__ import annotations

from typing import Any

from podnet.calc.policy import OrderedRule, PodInfo, PolicyPlan, PortMatch, Provenance, compile_policies
from podnet.calc.policy_explain import explain
from podnet.calc.policy_sets import cidr_minus
from podnet.model.k8s_policy import IPBlock, NetworkPolicy

NAMESPACES = {
    "prod": {"kubernetes.io/metadata.name": "prod", "env": "prod"},
    "dev": {"kubernetes.io/metadata.name": "dev", "env": "dev"},
}
WEB = PodInfo("prod", "web", {"app": "web"}, ("10.0.0.1",), "n1", (("http", 8080, "TCP"), ("dns", 53, "UDP")))
DB = PodInfo("prod", "db", {"app": "db"}, ("10.0.0.2",), "n1", (("http", 9090, "TCP"),))
CLIENT = PodInfo("prod", "client", {"app": "client"}, ("10.0.0.3",), "n2")
DEV_CLIENT = PodInfo("dev", "client", {"app": "client"}, ("10.0.1.3",), "n2")
DEV_WEB = PodInfo("dev", "web", {"app": "web"}, ("10.0.1.1",), "n2", (("http", 80, "TCP"),))
PODS = [WEB, DB, CLIENT, DEV_CLIENT, DEV_WEB]
OUTSIDE = "192.168.5.5"


def policy(name: str, spec: dict[str, Any], namespace: str = "prod") -> NetworkPolicy:
    return NetworkPolicy.from_dict(
        {"metadata": {"name": name, "namespace": namespace}, "spec": {"podSelector": {}, **spec}}
    )


def plan_for(*policies: NetworkPolicy, pods: list[PodInfo] = PODS):  # type: ignore[no-untyped-def]
    return compile_policies(pods, pods, NAMESPACES, list(policies))


def rules(plan: PolicyPlan, key: str, direction: str = "ingress") -> tuple[OrderedRule, ...]:
    return plan.endpoint_rules(key, direction)


def peer_set(rule: OrderedRule) -> str | None:
    """The one address set a Kubernetes rule's peer became (None: any address)."""
    side = rule.match.src if rule.provenance.direction == "ingress" else rule.match.dst
    return side.sets[0] if side.sets else None


def ports(rule: OrderedRule) -> tuple[PortMatch, ...]:
    side = rule.match.dst
    return side.ports


def allowed(plan, src, dst, port=80, protocol="TCP") -> bool:  # type: ignore[no-untyped-def]
    return explain(plan, src, dst, port, protocol).allowed


def test_no_policy_not_isolated() -> None:
    plan = plan_for()
    verdict = explain(plan, CLIENT, WEB, 80, "TCP")
    assert verdict.allowed and verdict.decided_by == "not isolated" and verdict.rules == ()
    assert not plan.endpoints["prod/web"].ingress_isolated


def test_default_deny_ingress_empty_rule_list() -> None:
    for spec in ({"policyTypes": ["Ingress"]}, {"policyTypes": ["Ingress"], "ingress": []}, {}):
        plan = plan_for(policy("deny", spec))
        verdict = explain(plan, CLIENT, WEB, 80, "TCP")
        assert not verdict.allowed
        assert verdict.decided_by == "ingress"
        assert verdict.rules == (Provenance("NetworkPolicy", "prod", "deny", "ingress", -1),)
        # not isolated for egress, and dev pods are untouched
        assert allowed(plan, WEB, DEV_WEB)
        assert allowed(plan, DEV_CLIENT, DEV_WEB)


def test_default_deny_egress() -> None:
    plan = plan_for(policy("deny-out", {"policyTypes": ["Egress"]}))
    verdict = explain(plan, WEB, DEV_WEB, 80, "TCP")
    assert not verdict.allowed and verdict.decided_by == "egress"
    assert verdict.rules == (Provenance("NetworkPolicy", "prod", "deny-out", "egress", -1),)
    assert allowed(plan, DEV_CLIENT, WEB)  # ingress not isolated


def test_policy_types_default_adds_egress_when_egress_rules() -> None:
    plan = plan_for(policy("p", {"egress": [{"to": [{"podSelector": {}}]}]}))
    endpoint = plan.endpoints["prod/web"]
    assert endpoint.ingress_isolated and endpoint.egress_isolated
    # egress to db passes, then db's own ingress isolation (same policy, no ingress rules) drops it
    assert explain(plan, WEB, DB, 80, "TCP").decided_by == "ingress"
    assert explain(plan, WEB, DEV_WEB, 80, "TCP").decided_by == "egress"
    assert allowed(plan, WEB, DEV_WEB) is False


def test_empty_from_allows_all_sources() -> None:
    for rule in ({}, {"from": []}):
        plan = plan_for(policy("all", {"ingress": [rule]}))
        assert allowed(plan, DEV_CLIENT, WEB)
        assert allowed(plan, OUTSIDE, WEB)
        assert peer_set(rules(plan, "prod/web")[0]) is None


def test_pod_selector_in_policy_namespace() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    }
    plan = plan_for(policy("p", spec))
    assert allowed(plan, CLIENT, WEB)
    assert not allowed(plan, DEV_CLIENT, WEB)  # same labels, other namespace
    assert allowed(plan, DEV_CLIENT, DB)  # db not selected
    rule = rules(plan, "prod/web")[0]
    assert plan.sets[peer_set(rule)] == frozenset({"10.0.0.3/32"})  # type: ignore[index]
    assert rule.provenance == Provenance("NetworkPolicy", "prod", "p", "ingress", 0)


def test_match_expressions() -> None:
    spec = {
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["client"]}]
                        }
                    }
                ]
            }
        ]
    }
    plan = plan_for(policy("p", spec))
    assert allowed(plan, DB, WEB)
    assert not allowed(plan, CLIENT, WEB)


def test_namespace_selector() -> None:
    spec = {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "dev"}}}]}]}
    plan = plan_for(policy("p", spec))
    assert allowed(plan, DEV_CLIENT, WEB) and allowed(plan, DEV_WEB, WEB)
    assert not allowed(plan, CLIENT, WEB)


def test_empty_namespace_selector_all_namespaces() -> None:
    plan = plan_for(policy("p", {"ingress": [{"from": [{"namespaceSelector": {}}]}]}))
    assert allowed(plan, DEV_CLIENT, WEB) and allowed(plan, CLIENT, WEB)
    assert not allowed(plan, OUTSIDE, WEB)


def test_namespace_by_metadata_name_label() -> None:
    spec = {
        "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}]}
        ]
    }
    plan = compile_policies(PODS, PODS, {"prod": {}, "dev": {}}, [policy("p", spec)])
    assert allowed(plan, DEV_CLIENT, WEB)
    assert not allowed(plan, CLIENT, WEB)


def test_pod_and_namespace_selector_and() -> None:
    peer = {
        "namespaceSelector": {"matchLabels": {"env": "dev"}},
        "podSelector": {"matchLabels": {"app": "client"}},
    }
    plan = plan_for(policy("p", {"ingress": [{"from": [peer]}]}))
    assert allowed(plan, DEV_CLIENT, WEB)
    assert not allowed(plan, DEV_WEB, WEB)  # right namespace, wrong pod
    assert not allowed(plan, CLIENT, WEB)  # right pod, wrong namespace


def test_separate_peers_or() -> None:
    peers = [
        {"namespaceSelector": {"matchLabels": {"env": "dev"}}},
        {"podSelector": {"matchLabels": {"app": "client"}}},
    ]
    plan = plan_for(policy("p", {"ingress": [{"from": peers}]}))
    assert allowed(plan, DEV_WEB, WEB) and allowed(plan, DEV_CLIENT, WEB) and allowed(plan, CLIENT, WEB)
    assert not allowed(plan, DB, WEB)
    assert len(rules(plan, "prod/web")) == 2


def test_ipblock_except() -> None:
    block = {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.0.0.2/32"]}}
    plan = plan_for(policy("p", {"ingress": [{"from": [block]}]}))
    assert allowed(plan, CLIENT, WEB)  # 10.0.0.3: a pod, but matched only as an address
    assert allowed(plan, "10.0.200.1", WEB)
    assert not allowed(plan, DB, WEB)  # 10.0.0.2 excepted
    assert not allowed(plan, DEV_CLIENT, WEB)  # 10.0.1.0/24 excepted
    assert not allowed(plan, OUTSIDE, WEB)
    rule = rules(plan, "prod/web")[0]
    cidrs = plan.sets[peer_set(rule)]  # type: ignore[index]
    assert "10.0.1.0/24" not in cidrs and "10.0.0.2/32" not in cidrs and "10.0.0.3/32" in cidrs


def test_cidr_minus_exact_disjoint() -> None:
    assert cidr_minus("10.0.0.0/30", ["10.0.0.1/32"]) == frozenset({"10.0.0.0/32", "10.0.0.2/31"})
    assert cidr_minus("10.0.0.0/24", ["10.0.0.0/25", "10.0.0.0/26"]) == frozenset({"10.0.0.128/25"})


def test_ipblock_egress() -> None:
    spec = {"policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}
    plan = plan_for(policy("p", spec))
    assert allowed(plan, WEB, OUTSIDE)
    assert not allowed(plan, WEB, DB)


def test_numeric_port_and_default_tcp() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": 80}]}]}))
    assert allowed(plan, CLIENT, WEB, 80, "TCP")
    assert not allowed(plan, CLIENT, WEB, 80, "UDP")
    assert not allowed(plan, CLIENT, WEB, 81, "TCP")
    assert ports(rules(plan, "prod/web")[0]) == (PortMatch("TCP", 80, 80),)


def test_protocol_only_port() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"protocol": "UDP"}]}]}))
    assert allowed(plan, CLIENT, WEB, 5353, "UDP")
    assert not allowed(plan, CLIENT, WEB, 5353, "TCP")


def test_end_port_range() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]}))
    assert allowed(plan, CLIENT, WEB, 8000) and allowed(plan, CLIENT, WEB, 8100)
    assert not allowed(plan, CLIENT, WEB, 7999) and not allowed(plan, CLIENT, WEB, 8101)


def test_sctp_kept_as_protocol() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": 9000, "protocol": "SCTP"}]}]}))
    assert allowed(plan, CLIENT, WEB, 9000, "SCTP")
    assert not allowed(plan, CLIENT, WEB, 9000, "TCP")


def test_named_port_ingress_resolved_on_destination() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": "http"}]}]}))
    assert allowed(plan, CLIENT, WEB, 8080) and not allowed(plan, CLIENT, WEB, 9090)
    assert allowed(plan, CLIENT, DB, 9090) and not allowed(plan, CLIENT, DB, 8080)
    assert not allowed(plan, CLIENT, WEB, 8080, "UDP")  # name is per protocol


def test_named_port_resolving_nowhere_matches_nothing() -> None:
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": "metrics"}]}]}))
    (rule,) = rules(plan, "prod/web")
    assert plan.port_sets[rule.match.dst.port_sets[0]] == frozenset()  # the name is nowhere
    assert not allowed(plan, CLIENT, WEB, 8080)
    # a named port with the wrong protocol is also nowhere
    plan = plan_for(policy("p", {"ingress": [{"ports": [{"port": "dns", "protocol": "TCP"}]}]}))
    assert not allowed(plan, CLIENT, WEB, 53, "TCP") and not allowed(plan, CLIENT, WEB, 53, "UDP")


def test_named_port_egress_per_destination_pod() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "client"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}],
    }
    plan = plan_for(policy("p", spec))
    assert allowed(plan, CLIENT, WEB, 8080) and not allowed(plan, CLIENT, WEB, 80)
    assert allowed(plan, CLIENT, DB, 9090) and not allowed(plan, CLIENT, DB, 8080)
    assert allowed(plan, CLIENT, DEV_WEB, 80) and not allowed(plan, CLIENT, DEV_WEB, 8080)
    (rule,) = rules(plan, "prod/client", "egress")
    assert rule.match.dst.ports == ()
    assert plan.port_sets[rule.match.dst.port_sets[0]] == frozenset(
        {("10.0.1.1", "TCP", 80), ("10.0.0.1", "TCP", 8080), ("10.0.0.2", "TCP", 9090)}
    )


def test_named_port_egress_without_peers_and_with_numbers() -> None:
    spec = {
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "http"}, {"port": 53, "protocol": "UDP"}]}],
    }
    plan = plan_for(policy("p", spec))
    assert allowed(plan, CLIENT, DEV_WEB, 80) and allowed(plan, CLIENT, OUTSIDE, 53, "UDP")
    assert not allowed(plan, CLIENT, OUTSIDE, 80)  # not a pod: no port called http


def test_several_policies_union() -> None:
    a = policy("a", {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]})
    b = policy(
        "b",
        {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}]},
    )
    plan = plan_for(a, b)
    assert allowed(plan, CLIENT, WEB, 1)
    assert allowed(plan, DB, WEB, 5432) and not allowed(plan, DB, WEB, 1)
    verdict = explain(plan, DEV_CLIENT, WEB, 80, "TCP")
    assert not verdict.allowed
    assert {p.name for p in verdict.rules} == {"a", "b"}  # both policies' selection isolates
    assert verdict.describe() == "tier default: end of tier Deny"
    verdict = explain(plan, DB, WEB, 5432, "TCP")
    assert verdict.rules == (Provenance("NetworkPolicy", "prod", "b", "ingress", 0),)


def test_egress_then_ingress_both_must_allow() -> None:
    out = policy("out", {"policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}]}]})
    into = policy(
        "in",
        {
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    )
    plan = plan_for(out, into)
    verdict = explain(plan, WEB, DB, 5432, "TCP")
    assert verdict.allowed and verdict.decided_by == "ingress"
    assert [p.direction for p in verdict.rules] == ["egress", "ingress"]
    verdict = explain(plan, CLIENT, DB, 5432, "TCP")
    assert not verdict.allowed and verdict.decided_by == "ingress"
    verdict = explain(plan, CLIENT, DEV_WEB, 80, "TCP")
    assert not verdict.allowed and verdict.decided_by == "egress"


def test_only_local_endpoints_compiled() -> None:
    plan = compile_policies([WEB, DB], PODS, NAMESPACES, [policy("deny", {})])
    assert set(plan.endpoints) == {"prod/db", "prod/web"}
    assert not allowed(plan, CLIENT, WEB)
    assert allowed(plan, WEB, CLIENT)  # client not local: its ingress is not this node's job


def test_explain_by_address() -> None:
    plan = plan_for(policy("deny", {}))
    assert not allowed(plan, "10.0.0.3", "10.0.0.1")
    assert allowed(plan, "10.0.0.3", "10.0.1.1")


def test_invalid_policy_fails_closed() -> None:
    good = policy("ok", {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]})
    bad = policy("bad", {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]}]})
    # Bypass validation as a datastore write from an older version could: except outside cidr.
    bad.spec.ingress[0].from_[0].ip_block = IPBlock.model_construct(  # type: ignore[index]
        cidr="10.0.0.0/16", except_=["10.9.0.0/24"]
    )
    plan = plan_for(good, bad)
    assert "prod/bad" in plan.errors and "10.9.0.0/24" in plan.errors["prod/bad"]
    assert not allowed(plan, DB, WEB)  # bad allows nothing...
    assert allowed(plan, CLIENT, WEB)  # ...the good policy still works
    endpoint = plan.endpoints["prod/web"]
    assert endpoint.ingress_isolated
    deniers = plan.deniers(endpoint, endpoint.ingress[0], "ingress")
    assert Provenance("NetworkPolicy", "prod", "bad", "ingress", -1) in deniers
    assert all(r.provenance.name == "ok" for r in rules(plan, "prod/web"))
    assert not plan.policies["prod/bad"].fail_closed  # a Kubernetes policy only loses its allows
    # a bad policy alone still isolates
    plan = plan_for(bad)
    assert not allowed(plan, CLIENT, WEB)


def test_determinism_and_shared_sets() -> None:
    peer = {"podSelector": {"matchLabels": {"app": "client"}}}
    a = policy("a", {"ingress": [{"from": [peer]}]})
    b = policy("b", {"ingress": [{"from": [peer], "ports": [{"port": 80}]}]})
    first = plan_for(a, b)
    second = plan_for(b, a, pods=list(reversed(PODS)))
    assert first == second
    found = rules(first, "prod/web")
    assert len({peer_set(r) for r in found}) == 1  # identical peers share one set
    assert list(first.sets) == sorted(first.sets)
    # the name depends on the peer's meaning, not on membership
    moved = PodInfo("prod", "client", {"app": "client"}, ("10.0.0.99",), "n2")
    third = plan_for(a, b, pods=[WEB, DB, moved])
    assert set(third.sets) == set(first.sets)
    assert third.sets[peer_set(found[0])] == frozenset({"10.0.0.99/32"})  # type: ignore[index]


def test_ipv6_pod_addresses() -> None:
    web6 = PodInfo("prod", "web6", {"app": "web"}, ("10.0.0.10", "fd00::10"), "n1")
    client6 = PodInfo("prod", "client6", {"app": "client"}, ("10.0.0.11", "fd00::11"), "n1")
    spec = {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}
    plan = plan_for(policy("p", spec), pods=[web6, client6])
    assert allowed(plan, "fd00::11", "fd00::10")
    assert not allowed(plan, "fd00::12", "fd00::10")
    rule = rules(plan, "prod/web6")[0]
    assert plan.sets[peer_set(rule)] == frozenset({"10.0.0.11/32", "fd00::11/128"})  # type: ignore[index]
