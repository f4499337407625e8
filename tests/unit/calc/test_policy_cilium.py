"""Kubernetes NetworkPolicy compiled the Cilium way (calc.policy_cilium): by identity, into
per-endpoint policy maps. The oracle is the ordered form the Calico profile enforces (proven by the
lab's truth tables): on a generated workload every sampled connection gets the same verdict."""

from __future__ import annotations

import random

from cilium_support import universe_of

from podnet.bench.policy_scale import _key, generate_workload, pod_infos
from podnet.calc.ipcache import cidr_identities, ipcache, lookup
from podnet.calc.policy import PodInfo, compile_policies
from podnet.calc.policy_cilium import (
    IdentityUniverse,
    compile_endpoint_maps,
    endpoint_allows,
    peer_identities,
    policy_cidrs,
)
from podnet.calc.policy_explain import explain
from podnet.calc.policymap import EGRESS, INGRESS
from podnet.model import parse_resource
from podnet.model.identity import RESERVED

TCP, UDP = 6, 17


def test_identity_verdicts_equal_the_ordered_form_on_a_generated_workload():
    workload = generate_workload(60, 12, 4, nodes=3, seed=11)
    ips = {_key(p): f"192.168.{i // 250}.{i % 250 + 1}" for i, p in enumerate(workload.pods)}
    pods = pod_infos(workload.pods, ips)
    namespaces = {d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in workload.namespaces}
    policies = [parse_resource(p) for p in workload.policies]
    plan = compile_policies(pods, pods, namespaces, policies)
    universe, pod_identity = universe_of(pods, namespaces, policy_cidrs(policies))
    maps = compile_endpoint_maps(pods, policies, universe)
    rng = random.Random(3)
    checks = allowed = by_rule = 0
    for _ in range(4000):
        src, dst = rng.sample(pods, 2)
        port = rng.choice([8080, 8080, 8080, 9090, 9090, 5432, 5432, 53, 9250, 80])
        verdict = explain(plan, src, dst, port, "TCP")
        want = verdict.allowed
        by_rule += want and verdict.decided_by != "not isolated"
        got = endpoint_allows(maps, src.key, EGRESS, pod_identity[dst.key], TCP, port) and endpoint_allows(
            maps, dst.key, INGRESS, pod_identity[src.key], TCP, port
        )
        assert got == want, (src.key, dst.key, port, verdict.describe())
        checks += 1
        allowed += want
    assert 0.05 * checks < allowed < 0.95 * checks  # the sample has both verdicts
    assert by_rule > 50, by_rule  # and connections that a rule allowed, not only unselected pods


NET = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "p", "namespace": "shop"},
}


def netpol(spec: dict) -> object:
    return parse_resource({**NET, "spec": spec})


def test_ip_block_selects_cidr_identities_inside_it_and_outside_its_excepts():
    policy = netpol(
        {
            "podSelector": {},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
        }
    )
    other = netpol({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.5.0/24"}}]}]})
    cidrs = cidr_identities(policy_cidrs([policy, other]))
    universe = IdentityUniverse({}, {}, cidrs)
    peer = policy.spec.ingress[0].from_[0]
    assert peer_identities(peer, "shop", universe) == {cidrs["10.0.0.0/8"], cidrs["10.0.5.0/24"]}
    web = PodInfo("shop", "web", {"app": "web"}, ("192.168.0.2",))
    maps = compile_endpoint_maps([web], [policy], universe)
    entries = ipcache([], {}, {}, "node-1", cidrs=cidrs)
    for address, allowed in (
        ("10.9.9.9", True),
        ("10.0.5.1", True),
        ("10.1.2.3", False),
        ("11.0.0.1", False),
    ):
        peer_id = lookup(entries, address)
        assert endpoint_allows(maps, "shop/web", INGRESS, peer_id, TCP, 80) is allowed, address


def test_named_ports_ingress_on_the_endpoint_egress_on_the_peers():
    web = PodInfo("shop", "web", {"app": "web"}, ("192.168.0.2",), ports=(("http", 8080, "TCP"),))
    api = PodInfo("shop", "api", {"app": "api"}, ("192.168.0.3",), ports=(("http", 9000, "TCP"),))
    namespaces = {"shop": {}}
    ingress = netpol(
        {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}
    )
    egress = netpol(
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]}
            ],
        }
    )
    universe, ids = universe_of([web, api], namespaces, [])
    maps = compile_endpoint_maps([web, api], [ingress], universe)
    assert endpoint_allows(maps, "shop/web", INGRESS, ids["shop/api"], TCP, 8080)
    assert not endpoint_allows(maps, "shop/web", INGRESS, ids["shop/api"], TCP, 9000)
    maps = compile_endpoint_maps([web, api], [egress], universe)
    assert endpoint_allows(maps, "shop/web", EGRESS, ids["shop/api"], TCP, 9000)  # api's "http"
    assert not endpoint_allows(maps, "shop/web", EGRESS, ids["shop/api"], TCP, 8080)
    provenance = {p for e in maps["shop/web"].entries.values() for p in e.provenance}
    assert provenance == {"knp:shop/p:egress:0"}


def test_namespace_selectors_never_match_reserved_identities_and_enforcement_modes():
    web = PodInfo("shop", "web", {"app": "web"}, ("192.168.0.2",))
    universe, ids = universe_of([web], {"shop": {}}, [])
    policy = netpol({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert peer_identities(policy.spec.ingress[0].from_[0], "shop", universe) == {ids["shop/web"]}
    maps = compile_endpoint_maps([web], [policy], universe)
    assert not endpoint_allows(maps, "shop/web", INGRESS, RESERVED["world"], TCP, 80)
    assert endpoint_allows(maps, "shop/web", EGRESS, RESERVED["world"], TCP, 80)  # egress not selected
    always = compile_endpoint_maps([web], [], universe, "always")["shop/web"]
    assert always.ingress_enforced and always.egress_enforced and not always.entries
    never = compile_endpoint_maps([web], [policy], universe, "never")["shop/web"]
    assert not never.ingress_enforced and not never.entries


def test_ip_block_selects_pods_and_nodes_by_address_as_kubernetes_says():
    """Kubernetes' ipBlock (not Cilium's): pods and nodes inside the block are selected, by every
    member address of their identity; an identity straddling the block is not (fail closed)."""
    inside = PodInfo("shop", "in", {"app": "in"}, ("10.244.1.5",))
    excepted = PodInfo("shop", "ex", {"app": "ex"}, ("10.244.1.9",))
    outside = PodInfo("shop", "out", {"app": "out"}, ("10.250.0.1",))
    split_a = PodInfo("shop", "split-a", {"app": "split"}, ("10.244.1.20",))
    split_b = PodInfo("shop", "split-b", {"app": "split"}, ("10.250.0.2",))  # same labels: one identity
    web = PodInfo("shop", "web", {"app": "web"}, ("10.250.0.9",))
    pods = [inside, excepted, outside, split_a, split_b, web]
    policy = netpol(
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.9/32"]}}]}],
        }
    )
    universe, ids = universe_of(pods, {"shop": {}}, policy_cidrs([policy]))
    universe = IdentityUniverse(
        universe.labels,
        universe.pods,
        universe.cidrs,
        {**universe.addresses, RESERVED["host"]: ("10.244.0.1",), RESERVED["remote-node"]: ("10.77.0.12",)},
    )
    maps = compile_endpoint_maps(pods, [policy], universe)
    verdicts = {
        name: endpoint_allows(maps, "shop/web", INGRESS, number, TCP, 80)
        for name, number in (
            ("in", ids["shop/in"]),
            ("ex", ids["shop/ex"]),
            ("out", ids["shop/out"]),
            ("split", ids["shop/split-a"]),
            ("host", RESERVED["host"]),
            ("remote-node", RESERVED["remote-node"]),
        )
    }
    assert verdicts == {
        "in": True,
        "ex": False,
        "out": False,
        "split": False,
        "host": True,
        "remote-node": False,
    }
    assert ids["shop/split-a"] == ids["shop/split-b"]
