"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy at L3/L4 compiled into the per-endpoint
maps (calc.policy_cnp), feature by feature, as the datapath's lookups decide."""

from __future__ import annotations

import dataclasses

from cilium_support import universe_of

from podnet.calc.identity import pod_label_sets
from podnet.calc.ipcache import ipcache, lookup
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import ServiceTarget, compile_endpoint_maps, endpoint_allows
from podnet.calc.policy_cnp import l7_sections, rule_cidrs, unsupported
from podnet.calc.policymap import EGRESS, INGRESS
from podnet.model import parse_resource
from podnet.model.identity import RESERVED

TCP, UDP, SCTP = 6, 17, 132
NS = "k8s:io.kubernetes.pod.namespace"
NAMESPACES = {"shop": {"team": "blue"}, "other": {"team": "red"}}
WEB = PodInfo("shop", "web", {"app": "web"}, ("192.168.0.2",), ports=(("http", 8080, "TCP"),))
API = PodInfo("shop", "api", {"app": "api"}, ("192.168.0.3",), ports=(("http", 9000, "TCP"),))
CLIENT = PodInfo("other", "client", {"app": "client"}, ("192.168.0.4",))
PODS = [WEB, API, CLIENT]


def cnp(spec: dict, name: str = "p", namespace: str = "shop", kind: str = "CiliumNetworkPolicy"):
    meta = (
        {"name": name} if kind == "CiliumClusterwideNetworkPolicy" else {"name": name, "namespace": namespace}
    )
    return parse_resource({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec})


def maps_for(*policies, knp=()):
    universe, ids = universe_of(PODS, NAMESPACES, rule_cidrs(policies))
    labels = {key: s.mapping() for key, s in pod_label_sets(PODS, NAMESPACES).items()}
    return (
        compile_endpoint_maps(PODS, knp, universe, cilium_policies=policies, pod_labels=labels),
        ids,
        universe,
    )


def allows(maps, key, direction, peer, port=80, protocol=TCP):
    return endpoint_allows(maps, key, direction, peer, protocol, port)


def test_endpoint_selector_is_scoped_to_the_namespace_in_a_cnp_not_in_a_ccnp():
    spec = {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}]}]}
    maps, ids, _ = maps_for(cnp(spec))
    assert maps["shop/web"].ingress_enforced and maps["shop/api"].ingress_enforced
    assert not maps["other/client"].ingress_enforced  # another namespace: not selected
    assert allows(maps, "shop/web", INGRESS, ids["shop/api"])
    assert not allows(maps, "shop/web", INGRESS, ids["other/client"])
    maps, ids, _ = maps_for(cnp(spec, kind="CiliumClusterwideNetworkPolicy"))
    assert maps["other/client"].ingress_enforced  # a CCNP selects every namespace
    assert not maps["shop/web"].egress_enforced  # no egress section: egress stays open


def test_from_endpoints_scoping_and_namespace_labels():
    scoped = {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"fromEndpoints": [{}]}]}
    maps, ids, _ = maps_for(cnp(scoped))
    assert allows(maps, "shop/web", INGRESS, ids["shop/api"])
    assert not allows(maps, "shop/web", INGRESS, ids["other/client"])  # {} = this namespace's endpoints
    assert not allows(maps, "shop/web", INGRESS, RESERVED["host"])  # endpoints only, no reserved identity
    named = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "other"}}]}],
    }
    maps, ids, _ = maps_for(cnp(named))
    assert allows(maps, "shop/web", INGRESS, ids["other/client"])
    assert not allows(maps, "shop/web", INGRESS, ids["shop/api"])
    by_team = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"io.cilium.k8s.namespace.labels.team": "red"}}]}],
    }
    maps, ids, _ = maps_for(cnp(by_team, kind="CiliumClusterwideNetworkPolicy"))
    assert allows(maps, "shop/web", INGRESS, ids["other/client"])


def test_entities():
    def with_entities(*entities):
        spec = {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "egress": [{"toEntities": list(entities)}],
        }
        return maps_for(cnp(spec))

    maps, ids, _ = with_entities("world")
    assert allows(maps, "shop/web", EGRESS, RESERVED["world"])
    assert not allows(maps, "shop/web", EGRESS, RESERVED["host"])
    maps, ids, _ = with_entities("cluster")
    for peer in (ids["other/client"], RESERVED["host"], RESERVED["remote-node"], RESERVED["health"]):
        assert allows(maps, "shop/web", EGRESS, peer), peer
    assert not allows(maps, "shop/web", EGRESS, RESERVED["world"])
    maps, ids, _ = with_entities("all")
    assert allows(maps, "shop/web", EGRESS, RESERVED["world"]) and allows(maps, "shop/web", EGRESS, 4242)
    maps, ids, _ = with_entities("host", "remote-node", "kube-apiserver")
    assert {p for p in (1, 2, 6, 7) if allows(maps, "shop/web", EGRESS, p)} == {1, 6, 7}


def test_cidr_rules_with_except_world_for_0_0_0_0_and_never_pods():
    spec = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "egress": [
            {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]},
            {"toCIDR": ["20.1.1.1/32"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
        ],
    }
    maps, ids, universe = maps_for(cnp(spec))
    table = ipcache(PODS, ids, {}, "node-1", cidrs=universe.cidrs)
    assert allows(maps, "shop/web", EGRESS, lookup(table, "10.1.2.3"))
    assert not allows(maps, "shop/web", EGRESS, lookup(table, "10.100.0.1"))  # excepted
    assert allows(maps, "shop/web", EGRESS, lookup(table, "20.1.1.1"), 443)
    assert not allows(maps, "shop/web", EGRESS, lookup(table, "20.1.1.1"), 80)
    assert not allows(maps, "shop/web", EGRESS, lookup(table, "8.8.8.8"))  # world: not in the rules
    everything = {"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [{"toCIDR": ["0.0.0.0/0"]}]}
    maps, ids, universe = maps_for(cnp(everything))
    table = ipcache(PODS, ids, {}, "node-1", cidrs=universe.cidrs)
    assert allows(maps, "shop/web", EGRESS, lookup(table, "8.8.8.8"))
    assert not allows(maps, "shop/web", EGRESS, ids["shop/api"])  # CIDR rules never select pods


def test_ports_ranges_any_protocol_named_ports():
    spec = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {"toPorts": [{"ports": [{"port": "9000", "endPort": 9010, "protocol": "ANY"}]}]},
            {"toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]},
        ],
        "egress": [
            {"toEndpoints": [{"matchLabels": {"app": "api"}}], "toPorts": [{"ports": [{"port": "http"}]}]}
        ],
    }
    maps, ids, _ = maps_for(cnp(spec))
    for protocol in (TCP, UDP, SCTP):
        assert allows(maps, "shop/web", INGRESS, 4242, 9005, protocol)
    assert not allows(maps, "shop/web", INGRESS, 4242, 9011)
    assert allows(maps, "shop/web", INGRESS, 4242, 8080)  # web's own "http"
    assert allows(maps, "shop/web", EGRESS, ids["shop/api"], 9000)  # api's "http"
    assert not allows(maps, "shop/web", EGRESS, ids["shop/api"], 8080)


def test_deny_wins_over_a_network_policy_allow_and_default_deny_can_be_off():
    allow_all = parse_resource(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "open", "namespace": "shop"},
            "spec": {"podSelector": {}, "ingress": [{}]},
        }
    )
    deny = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingressDeny": [
            {"fromEndpoints": [{"matchLabels": {"app": "api"}}], "toPorts": [{"ports": [{"port": "80"}]}]}
        ],
    }
    maps, ids, _ = maps_for(cnp(deny), knp=[allow_all])
    assert not allows(maps, "shop/web", INGRESS, ids["shop/api"], 80)
    assert allows(maps, "shop/web", INGRESS, ids["shop/api"], 81)
    assert allows(maps, "shop/web", INGRESS, ids["other/client"], 80)
    denied = [e for e in maps["shop/web"].entries.values() if e.deny]
    assert any("cnp:shop/p:ingressDeny:0" in e.provenance for e in denied)
    lenient = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "enableDefaultDeny": {"ingress": False},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "api"}}]}],
    }
    maps, ids, _ = maps_for(cnp(lenient))
    assert not maps["shop/web"].ingress_enforced
    assert allows(maps, "shop/web", INGRESS, ids["other/client"])


def test_l7_rules_allow_their_ports_at_l4_unsupported_sections_fail_closed_both_are_named():
    spec = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"app": "api"}}],
                "toPorts": [
                    {"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}
                ],
            },
            {"fromNodes": [{"matchLabels": {"zone": "a"}}]},
        ],
    }
    policy = cnp(spec)
    maps, ids, _ = maps_for(policy)
    assert maps["shop/web"].ingress_enforced
    assert allows(maps, "shop/web", INGRESS, ids["shop/api"], 80)  # L4 part, as the seed's example
    assert not allows(maps, "shop/web", INGRESS, ids["shop/api"], 81)
    assert not allows(maps, "shop/web", INGRESS, ids["other/client"], 80)  # L3 part enforced
    assert l7_sections(policy) == {"http": ["specs[0].ingress[0].toPorts[0].rules"]}
    assert unsupported(policy) == ["specs[0].ingress[1].fromNodes"]


def test_requires_narrow_every_allow_of_the_endpoint_and_allow_nothing_themselves():
    prod = PodInfo("shop", "prod-api", {"app": "api", "env": "prod"}, ("192.168.0.9",))
    pods = [*PODS, prod]
    universe, ids = universe_of(pods, NAMESPACES, [])
    labels = {key: s.mapping() for key, s in pod_label_sets(pods, NAMESPACES).items()}
    require = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"fromRequires": [{"matchLabels": {"env": "prod"}}]}],
    }
    allow = {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"fromEndpoints": [{}]}]}
    maps = compile_endpoint_maps(pods, [], universe, cilium_policies=[cnp(require)], pod_labels=labels)
    assert maps["shop/web"].ingress_enforced
    assert not allows(maps, "shop/web", INGRESS, ids["shop/prod-api"])  # requires allow nothing
    policies = [cnp(require), cnp(allow, name="q")]
    maps = compile_endpoint_maps(pods, [], universe, cilium_policies=policies, pod_labels=labels)
    assert allows(maps, "shop/web", INGRESS, ids["shop/prod-api"])
    assert not allows(maps, "shop/web", INGRESS, ids["shop/api"])  # allowed by q, fails the requirement
    assert allows(maps, "shop/api", INGRESS, ids["shop/web"])  # api is not under the requirement


def test_icmps_by_number_and_name_per_family():
    spec = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {"icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]},
            {"icmps": [{"fields": [{"type": "NoSuchType"}]}]},
        ],
    }
    policy = cnp(spec)
    maps, _, _ = maps_for(policy)
    assert allows(maps, "shop/web", INGRESS, 4242, 8, 1)  # echo request, ICMP
    assert allows(maps, "shop/web", INGRESS, 4242, 128, 58)  # echo request, ICMPv6
    assert not allows(maps, "shop/web", INGRESS, 4242, 0, 1)  # echo reply: not listed
    assert not allows(maps, "shop/web", INGRESS, 4242, 8)  # TCP port 8: ICMP rules are ICMP only
    assert unsupported(policy) == ["specs[0].ingress[1].icmps[0].fields[0].type NoSuchType"]


def test_to_services_select_the_pods_behind_the_services_they_name():
    def service(name, namespace, selector, labels=None):
        return ServiceTarget(namespace, name, labels or {}, selector)

    services = (
        service("web-svc", "shop", {"app": "web"}, {"expose": "yes"}),
        service("api-svc", "shop", {"app": "api"}),
        service("web-svc", "other", {"app": "client"}),  # same name, another namespace
        service("outside", "shop", None, {"expose": "yes"}),  # no selector: no endpoints here
    )

    def egress(*refs, deny=False, extra=()):
        section = "egressDeny" if deny else "egress"
        spec = {"endpointSelector": {"matchLabels": {"app": "client"}}, section: [{"toServices": list(refs)}]}
        if deny:
            spec["egress"] = [{"toEndpoints": [{"matchLabels": {NS: "shop"}}]}]
        policies = (cnp(spec, namespace="other"), *extra)
        universe, ids = universe_of(PODS, NAMESPACES, [])
        universe = dataclasses.replace(universe, services=services)
        labels = {key: s.mapping() for key, s in pod_label_sets(PODS, NAMESPACES).items()}
        maps = compile_endpoint_maps(PODS, (), universe, cilium_policies=policies, pod_labels=labels)
        assert maps["other/client"].egress_enforced
        return {  # two ports: a toServices rule has no toPorts, so it allows every port or none
            peer: {allows(maps, "other/client", EGRESS, ids[peer], port) for port in (80, 9000)} == {True}
            for peer in ("shop/web", "shop/api", "other/client")
        }

    by_name = {"k8sService": {"serviceName": "web-svc", "namespace": "shop"}}
    assert egress(by_name) == {"shop/web": True, "shop/api": False, "other/client": False}
    any_namespace = {"k8sService": {"serviceName": "web-svc"}}
    assert egress(any_namespace) == {"shop/web": True, "shop/api": False, "other/client": True}
    by_labels = {"k8sServiceSelector": {"selector": {"matchLabels": {"expose": "yes"}}, "namespace": "shop"}}
    assert egress(by_labels) == {"shop/web": True, "shop/api": False, "other/client": False}
    nothing = {"k8sService": {"serviceName": "outside", "namespace": "shop"}}
    assert egress(nothing) == {"shop/web": False, "shop/api": False, "other/client": False}
    # in egressDeny: the Service's pods denied though another rule allows the namespace
    assert egress(by_name, deny=True) == {"shop/web": False, "shop/api": True, "other/client": False}
    assert unsupported(cnp({"endpointSelector": {}, "egress": [{"toServices": [by_name]}]})) == []
