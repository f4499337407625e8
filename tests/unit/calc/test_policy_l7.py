"""CNP HTTP rules compiled for the L7 proxy (calc.policy_cnp with l7_proxy, calc.policy_l7): ports
with HTTP rules become redirect entries to the direction's listener, and the proxy gets, per peer
and port, the rules that apply — or every request when an L4-only rule allows the same port."""

from __future__ import annotations

from cilium_support import universe_of

from podnet.calc.identity import pod_label_sets
from podnet.calc.l7_http import ALLOW_ALL, PROXY_PORTS, HttpRequest, HttpRule, allowed
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import compile_endpoint_maps
from podnet.calc.policy_l7 import http_policies
from podnet.calc.policymap import ANY_IDENTITY, EGRESS, INGRESS, PolicyKey
from podnet.model import parse_resource

NAMESPACES = {"shop": {}}
API = PodInfo("shop", "api", {"app": "sensitive-api"}, ("10.0.0.2",), ports=(("http", 80, "TCP"),))
FRONT = PodInfo("shop", "frontend", {"app": "frontend"}, ("10.0.0.3",))
OTHER = PodInfo("shop", "other", {"app": "other"}, ("10.0.0.4",))
PODS = [API, FRONT, OTHER]
ADDRESSES = {p.key: p.ips[0] for p in PODS}
SEED_HTTP = [{"method": "PUT", "path": "/api/v1/*"}]


def cnp(name: str, spec: dict):
    meta = {"name": name, "namespace": "shop"}
    return parse_resource(
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": meta, "spec": spec}
    )


def ingress_to_api(*rules: dict) -> dict:
    return {"endpointSelector": {"matchLabels": {"app": "sensitive-api"}}, "ingress": list(rules)}


def http_port(port: str = "80", http=SEED_HTTP, protocol: str = "TCP") -> list[dict]:
    return [{"ports": [{"port": port, "protocol": protocol}], "rules": {"http": http}}]


def compile_(*policies, l7_proxy: bool = True):  # type: ignore[no-untyped-def]
    universe, ids = universe_of(PODS, NAMESPACES, [])
    labels = {key: s.mapping() for key, s in pod_label_sets(PODS, NAMESPACES).items()}
    maps = compile_endpoint_maps(
        PODS, (), universe, cilium_policies=policies, pod_labels=labels, l7_proxy=l7_proxy
    )
    return maps, ids


def test_the_seed_policy_redirects_port_80_and_the_proxy_allows_put_only():
    seed = cnp(
        "l7-rule",
        ingress_to_api({"fromEndpoints": [{"matchLabels": {"app": "frontend"}}], "toPorts": http_port()}),
    )
    maps, ids = compile_(seed)
    entry = maps[API.key].entries[PolicyKey(INGRESS, ids[FRONT.key], 6, 80, 16)]
    assert entry.proxy_port == PROXY_PORTS[INGRESS] and not entry.deny
    (policy,) = http_policies(maps, ADDRESSES)
    assert (policy.direction, policy.endpoint, policy.first, policy.last) == (INGRESS, "10.0.0.2", 80, 80)
    assert policy.identities == frozenset({ids[FRONT.key]})
    assert policy.rule_names == ("cnp:shop/l7-rule:ingress:0:http:0",)
    assert allowed(policy.rules, HttpRequest("PUT", "/api/v1")) is not None
    assert allowed(policy.rules, HttpRequest("GET", "/api/v1")) is None
    # without the proxy: a plain allow on the port (the status says the rules are not enforced)
    plain, _ = compile_(seed, l7_proxy=False)
    assert plain[API.key].entries[PolicyKey(INGRESS, ids[FRONT.key], 6, 80, 16)].proxy_port == 0
    assert http_policies(plain, ADDRESSES) == []


def test_an_l4_rule_on_the_same_port_makes_the_l7_part_have_no_effect():
    l7 = cnp(
        "l7",
        ingress_to_api({"fromEndpoints": [{"matchLabels": {"app": "frontend"}}], "toPorts": http_port()}),
    )
    same_peer = cnp(
        "l4",
        ingress_to_api(
            {
                "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
            }
        ),
    )
    maps, ids = compile_(l7, same_peer)
    (policy,) = http_policies(maps, ADDRESSES)
    assert policy.rules == ALLOW_ALL and policy.identities == frozenset({ids[FRONT.key]})
    any_peer = cnp("l4-any", ingress_to_api({"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}))
    maps, ids = compile_(l7, any_peer)
    (policy,) = http_policies(maps, ADDRESSES)
    assert policy.rules == ALLOW_ALL  # frontend's connections still go to the proxy, which lets all pass
    other_port = cnp(
        "l4-81",
        ingress_to_api(
            {
                "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                "toPorts": [{"ports": [{"port": "81", "protocol": "TCP"}]}],
            }
        ),
    )
    maps, ids = compile_(l7, other_port)
    (policy,) = http_policies(maps, ADDRESSES)
    assert policy.rules != ALLOW_ALL  # another port: the L7 rules stay


def test_rules_of_any_peer_and_of_one_peer_are_ored_for_that_peer():
    for_any = cnp("any", ingress_to_api({"toPorts": http_port(http=[{"method": "GET", "path": "/health"}])}))
    for_front = cnp(
        "front",
        ingress_to_api({"fromEndpoints": [{"matchLabels": {"app": "frontend"}}], "toPorts": http_port()}),
    )
    maps, ids = compile_(for_any, for_front)
    by_peers = {p.identities: p for p in http_policies(maps, ADDRESSES)}
    anyone = by_peers[None]
    front = by_peers[frozenset({ids[FRONT.key]})]
    assert allowed(anyone.rules, HttpRequest("GET", "/health")) is not None
    assert allowed(anyone.rules, HttpRequest("PUT", "/api/v1")) is None
    assert allowed(front.rules, HttpRequest("GET", "/health")) is not None  # the any-peer rule too
    assert allowed(front.rules, HttpRequest("PUT", "/api/v1")) is not None
    assert maps[API.key].entries[PolicyKey(INGRESS, ANY_IDENTITY, 6, 80, 16)].proxy_port


def test_egress_ranges_and_named_ports():
    egress = cnp(
        "out",
        {
            "endpointSelector": {"matchLabels": {"app": "frontend"}},
            "egress": [
                {
                    "toEndpoints": [{"matchLabels": {"app": "sensitive-api"}}],
                    "toPorts": [
                        {"ports": [{"port": "http", "protocol": "TCP"}], "rules": {"http": SEED_HTTP}}
                    ],
                },
                {
                    "toEndpoints": [{"matchLabels": {"app": "other"}}],
                    "toPorts": [
                        {
                            "ports": [{"port": "8000", "endPort": 8003, "protocol": "TCP"}],
                            "rules": {"http": [{}]},
                        }
                    ],
                },
            ],
        },
    )
    maps, ids = compile_(egress)
    entries = maps[FRONT.key].entries
    assert (
        entries[PolicyKey(EGRESS, ids[API.key], 6, 80, 16)].proxy_port == PROXY_PORTS[EGRESS]
    )  # api's "http"
    assert entries[PolicyKey(EGRESS, ids[OTHER.key], 6, 8000, 14)].proxy_port == PROXY_PORTS[EGRESS]
    ranges = {(p.first, p.last, p.identities) for p in http_policies(maps, ADDRESSES)}
    assert ranges == {(80, 80, frozenset({ids[API.key]})), (8000, 8003, frozenset({ids[OTHER.key]}))}
    (other,) = [p for p in http_policies(maps, ADDRESSES) if p.first == 8000]
    assert (
        other.rules == (HttpRule(),) and allowed(other.rules, HttpRequest("DELETE", "/x")) == 0
    )  # {} matches all


def test_dns_rules_redirect_to_the_dns_proxy_and_an_l4_rule_lets_every_name_through():
    from podnet.calc.l7_dns import DNS_PROXY_PORT, allowed
    from podnet.calc.policy_l7 import dns_policies

    dns_port = [
        {
            "ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
            "rules": {
                "dns": [{"matchPattern": "*.example.test"}, {"matchName": "api.shop.svc.cluster.local"}]
            },
        }
    ]
    to_api = {"toEndpoints": [{"matchLabels": {"app": "sensitive-api"}}], "toPorts": dns_port}
    policy = cnp("dns", {"endpointSelector": {"matchLabels": {"app": "frontend"}}, "egress": [to_api]})
    maps, ids = compile_(policy)
    for protocol in (6, 17):
        entry = maps[FRONT.key].entries[PolicyKey(EGRESS, ids[API.key], protocol, 53, 16)]
        assert entry.proxy_port == DNS_PROXY_PORT
    assert http_policies(maps, ADDRESSES) == []  # the HTTP proxy has nothing of it
    policies = dns_policies(maps, ADDRESSES)
    assert sorted(p.protocol for p in policies) == [6, 17]
    for p in policies:
        assert (p.endpoint, p.first, p.last, p.identities) == ("10.0.0.3", 53, 53, frozenset({ids[API.key]}))
        assert p.selectors is not None and p.name == "cnp:shop/dns:egress:0"
        assert allowed(p.selectors, "web.example.test.") and allowed(
            p.selectors, "API.shop.svc.cluster.local"
        )
        assert not allowed(p.selectors, "a.b.example.test") and not allowed(p.selectors, "example.test")
    plain = {
        "toEndpoints": [{"matchLabels": {"app": "sensitive-api"}}],
        "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}],
    }
    both = cnp("l4", {"endpointSelector": {"matchLabels": {"app": "frontend"}}, "egress": [plain]})
    maps, _ = compile_(policy, both)
    by_protocol = {p.protocol: p.selectors for p in dns_policies(maps, ADDRESSES)}
    assert by_protocol[17] is None and by_protocol[6] is not None  # UDP: every name; TCP: the rules


def test_to_fqdns_without_a_dns_rule_is_named():
    from podnet.calc.policy_cnp import fqdn_without_dns

    fqdn_only = {"toFQDNs": [{"matchName": "api.example.test"}], "toPorts": [{"ports": [{"port": "443"}]}]}
    blind = cnp("fqdn", {"endpointSelector": {"matchLabels": {"app": "frontend"}}, "egress": [fqdn_only]})
    maps, _ = compile_(blind)
    assert maps[FRONT.key].fqdn_policies == ("cnp:shop/fqdn",)
    assert fqdn_without_dns(maps) == {"cnp:shop/fqdn": [FRONT.key]}
    dns = {
        "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}], "rules": {"dns": [{"matchPattern": "*"}]}}]
    }
    visible = cnp("dns", {"endpointSelector": {"matchLabels": {"app": "frontend"}}, "egress": [dns]})
    maps, _ = compile_(blind, visible)
    assert fqdn_without_dns(maps) == {}  # its lookups go through the proxy now
