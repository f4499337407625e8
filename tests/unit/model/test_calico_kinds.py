"""projectcalico.org/v3: IPPool, BGPConfiguration, BGPPeer, NetworkPolicy, GlobalNetworkPolicy."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import (
    BGPConfiguration,
    BGPPeer,
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    IPPool,
    load_documents,
    parse_resource,
)

PORT_NAME_RULE = (
    "a port name must contain only lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)


SEED_IPPOOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
spec:
  ipipMode: CrossSubnet
  natOutgoing: true
"""


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def calico(kind: str, spec: dict[str, Any] | None, name: str = "x", **metadata: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "projectcalico.org/v3",
        "kind": kind,
        "metadata": {"name": name, **metadata},
    }
    if spec is not None:
        doc["spec"] = spec
    return doc


def pool(**spec: Any) -> dict[str, Any]:
    return calico("IPPool", {"cidr": "10.0.0.0/16", **spec}, name="pool")


# --- IPPool ----------------------------------------------------------------------------------


def test_seed_ippool_names_both_missing_fields_and_suggests_the_fix() -> None:
    (doc,) = load_documents(SEED_IPPOOL, "seed.yaml")
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    error = info.value
    assert error.problems == [("metadata.name", "required"), ("spec.cidr", "required")]
    assert error.subject == "IPPool (no name)"
    assert error.hint is not None
    assert "metadata.name: default-ipv4-ippool" in error.hint
    assert "spec.cidr: 192.168.0.0/16" in error.hint
    assert (
        "podnet patch ippool default-ipv4-ippool -p "
        '\'{"spec": {"ipipMode": "CrossSubnet", "natOutgoing": true}}\''
    ) in error.hint


def test_seed_ippool_parses_once_it_has_a_name_and_a_cidr() -> None:
    (doc,) = load_documents(SEED_IPPOOL + "  cidr: 192.168.0.0/16\nmetadata:\n  name: default-ipv4-ippool\n")
    resource = parse_resource(doc)
    assert isinstance(resource, IPPool)
    assert resource.spec.ipip_mode == "CrossSubnet"
    assert resource.spec.nat_outgoing is True
    assert resource.to_dict()["spec"] == {
        "cidr": "192.168.0.0/16",
        "blockSize": 26,
        "ipipMode": "CrossSubnet",
        "vxlanMode": "Never",
        "natOutgoing": True,
        "disabled": False,
        "disableBGPExport": False,
        "nodeSelector": "all()",
        "allowedUses": ["Workload", "Tunnel"],
        "assignmentMode": "Automatic",
    }


def test_ipv6_pool_defaults() -> None:
    resource = parse_resource(calico("IPPool", {"cidr": "fd00:10::/64"}))
    assert isinstance(resource, IPPool)
    assert resource.spec.block_size == 122
    assert resource.spec.ip_version == 6


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"cidr": "10.0.0.1/16"}, ("spec.cidr", "host bits must be zero (did you mean 10.0.0.0/16?)")),
        ({"cidr": "169.254.0.0/20"}, ("spec.cidr", "must not overlap the link-local range 169.254.0.0/16")),
        ({"cidr": "169.0.0.0/8"}, ("spec.cidr", "must not overlap the link-local range 169.254.0.0/16")),
        ({"cidr": "fe80::/64"}, ("spec.cidr", "must not overlap the link-local range fe80::/10")),
        (
            {"cidr": "10.0.0.0"},
            ("spec.cidr", "must be a CIDR such as 10.0.0.0/16 (got '10.0.0.0'; add a prefix length)"),
        ),
        ({"cidr": "banana/8"}, ("spec.cidr", "must be a CIDR such as 10.0.0.0/16 (got 'banana/8')")),
        ({"blockSize": 19}, ("spec.blockSize", "must be between 20 and 32 for IPv4")),
        ({"blockSize": 33}, ("spec.blockSize", "must be between 20 and 32 for IPv4")),
        ({"cidr": "fd00::/64", "blockSize": 64}, ("spec.blockSize", "must be between 116 and 128 for IPv6")),
        (
            {"cidr": "10.0.0.0/28"},
            (
                "spec.cidr",
                (
                    "pool /28 is smaller than one block (/26); "
                    "use a prefix of /26 or shorter, or a larger blockSize"
                ),
            ),
        ),
        ({"ipipMode": "always"}, ("spec.ipipMode", "must be one of Always, CrossSubnet, Never")),
        ({"vxlanMode": True}, ("spec.vxlanMode", "must be one of Always, CrossSubnet, Never")),
        (
            {"ipipMode": "Always", "vxlanMode": "CrossSubnet"},
            ("spec.ipipMode", "ipipMode and vxlanMode cannot both be enabled; choose one"),
        ),
        (
            {"cidr": "fd00::/64", "ipipMode": "CrossSubnet"},
            ("spec.ipipMode", "must be Never for an IPv6 pool (IPIP is IPv4 only)"),
        ),
        (
            {"nodeSelector": "rack = '1'"},
            (
                "spec.nodeSelector",
                (
                    "invalid selector \"rack = '1'\": "
                    "expected '==' (a single '=' is not an operator) at position 6"
                ),
            ),
        ),
        (
            {"nodeSelector": "global()"},
            ("spec.nodeSelector", "global() may only be used in a rule's namespaceSelector"),
        ),
        (
            {"allowedUses": ["Workload", "Pods"]},
            ("spec.allowedUses[1]", "must be one of Workload, Tunnel, LoadBalancer"),
        ),
        (
            {"allowedUses": ["LoadBalancer", "Workload"]},
            ("spec.allowedUses", "LoadBalancer cannot be combined with Workload or Tunnel"),
        ),
        ({"assignmentMode": "Auto"}, ("spec.assignmentMode", "must be one of Automatic, Manual")),
        ({"natOutgoing": "true"}, ("spec.natOutgoing", "must be true or false")),
    ],
)
def test_ippool_rules(spec: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(pool(**spec)) == [problem]


def test_a_disabled_pool_may_be_smaller_than_a_block() -> None:
    resource = parse_resource(pool(cidr="10.0.0.0/28", disabled=True))
    assert isinstance(resource, IPPool)
    assert resource.spec.disabled is True
    assert (str(resource.spec.network()), resource.spec.block_size) == ("10.0.0.0/28", 26)
    [(field, message)] = problems(pool(cidr="10.0.0.0/28"))  # the same pool enabled is refused
    assert field == "spec.cidr" and "smaller than one block" in message


def test_pool_with_blocksize_32_and_small_cidr() -> None:
    resource = parse_resource(pool(cidr="10.0.0.0/30", blockSize=32))
    assert isinstance(resource, IPPool)
    assert resource.spec.network().num_addresses == 4


def test_pool_parsed_node_selector() -> None:
    resource = parse_resource(pool(nodeSelector="rack == 'a'"))
    assert isinstance(resource, IPPool)
    assert resource.spec.parsed_node_selector().matches({"rack": "a"})


# --- BGPConfiguration --------------------------------------------------------------------------


def test_bgp_configuration_defaults() -> None:
    resource = parse_resource(calico("BGPConfiguration", None, name="default"))
    assert isinstance(resource, BGPConfiguration)
    assert resource.to_dict()["spec"] == {
        "logSeverityScreen": "Info",
        "nodeToNodeMeshEnabled": True,
        "asNumber": 64512,
        "listenPort": 179,
    }


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"asNumber": 0}, ("spec.asNumber", "must be between 1 and 4294967295")),
        ({"asNumber": "64512x"}, ("spec.asNumber", "must be an AS number such as 64512 or 1.10 (asdot)")),
        ({"listenPort": 0}, ("spec.listenPort", "must be between 1 and 65535")),
        (
            {"logSeverityScreen": "Verbose"},
            ("spec.logSeverityScreen", "must be one of Trace, Debug, Info, Warning, Error, Fatal"),
        ),
        (
            {"serviceClusterIPs": [{"cidr": "10.96.0.0"}]},
            (
                "spec.serviceClusterIPs[0].cidr",
                "must be a CIDR such as 10.0.0.0/16 (got '10.96.0.0'; add a prefix length)",
            ),
        ),
        (
            {"serviceExternalIPs": [{"cidr": "1.2.3.0/24", "extra": 1}]},
            ("spec.serviceExternalIPs[0].extra", "unknown field"),
        ),
        (
            {
                "communities": [{"name": "c", "value": "70000:1"}],
                "prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["c"]}],
            },
            (
                "spec.communities[0].value",
                "must be a BGP community aa:nn (each part <= 65535) or a large community aa:nn:mm",
            ),
        ),
        (
            {"communities": [{"name": "c", "value": "100:1"}]},
            ("spec.communities", "are defined but not used by any prefixAdvertisements entry"),
        ),
        (
            {"prefixAdvertisements": [{"cidr": "10.0.0.0/8", "communities": ["unknown"]}]},
            (
                "spec.prefixAdvertisements[0].communities[0]",
                "'unknown' is neither a community value (aa:nn) nor a name in communities",
            ),
        ),
        (
            {"nodeToNodeMeshEnabled": False, "nodeMeshMaxRestartTime": "120s"},
            ("spec.nodeMeshMaxRestartTime", "cannot be set when nodeToNodeMeshEnabled is false"),
        ),
        (
            {"nodeMeshMaxRestartTime": "2 minutes"},
            ("spec.nodeMeshMaxRestartTime", "must be a duration such as 120s, 1m30s or 2h (got '2 minutes')"),
        ),
        ({"bindMode": "All"}, ("spec.bindMode", "must be one of None, NodeIP")),
        (
            {"ignoredInterfaces": ["way-too-long-interface-name"]},
            ("spec.ignoredInterfaces[0]", "must be an interface name or pattern (<= 15 characters)"),
        ),
    ],
)
def test_bgp_configuration_rules(spec: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(calico("BGPConfiguration", spec, name="default")) == [problem]


def test_asdot_as_numbers_are_stored_as_plain_numbers() -> None:
    resource = parse_resource(calico("BGPConfiguration", {"asNumber": "1.10"}, name="default"))
    assert isinstance(resource, BGPConfiguration)
    assert resource.spec.as_number == 65546
    assert resource.to_dict()["spec"]["asNumber"] == 65546


# --- BGPPeer -----------------------------------------------------------------------------------


def peer(**spec: Any) -> dict[str, Any]:
    return calico("BGPPeer", spec, name="peer")


def test_bgp_peer_addresses() -> None:
    for text, expected in [
        ("192.168.1.1", ("192.168.1.1", None)),
        ("192.168.1.1:1179", ("192.168.1.1", 1179)),
        ("fd00::1", ("fd00::1", None)),
        ("[fd00::1]:179", ("fd00::1", 179)),
    ]:
        resource = parse_resource(peer(peerIP=text, asNumber=64512))
        assert isinstance(resource, BGPPeer)
        assert resource.spec.peer_address() == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"peerIP": "192.168.1.1"}, ("spec.asNumber", "required when peerIP is set")),
        ({"asNumber": 64512}, ("spec.peerIP", "required: set peerIP (with asNumber) or peerSelector")),
        (
            {"peerSelector": "rr == 'true'", "asNumber": 64512},
            ("spec.asNumber", "must be empty when peerSelector is set (the peer node's AS is used)"),
        ),
        (
            {"peerIP": "10.0.0.1", "peerSelector": "has(rr)", "asNumber": 1},
            ("spec.peerSelector", "must be empty when peerIP is set"),
        ),
        (
            {"node": "n1", "nodeSelector": "all()", "peerSelector": "has(rr)"},
            ("spec.node", "must be empty when nodeSelector is set"),
        ),
        ({"peerIP": "10.0.0.1:99999", "asNumber": 1}, ("spec.peerIP", "must be between 1 and 65535")),
        (
            {"peerIP": "fd00::1:179x", "asNumber": 1},
            (
                "spec.peerIP",
                "must be an IP address, optionally with a port: 10.0.0.1, 10.0.0.1:179 or [fd00::1]:179",
            ),
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "reachableBy": "fd00::1"},
            ("spec.reachableBy", "must be in the same IP family as peerIP"),
        ),
        (
            {"peerSelector": "has(rr)", "reachableBy": "10.0.0.1"},
            ("spec.reachableBy", "must be empty when peerIP is empty"),
        ),
        (
            {"peerIP": "10.0.0.1", "asNumber": 1, "keepOriginalNextHop": True, "nextHopMode": "Self"},
            ("spec.keepOriginalNextHop", "must not be true when nextHopMode is set (it is deprecated)"),
        ),
        ({"peerSelector": "has(rr)", "ttlSecurity": 256}, ("spec.ttlSecurity", "must be between 0 and 255")),
        (
            {"peerSelector": "has(rr)", "nextHopMode": "Next"},
            ("spec.nextHopMode", "must be one of Auto, Self, Keep"),
        ),
        (
            {"peerSelector": "has(rr", "nodeSelector": "all()"},
            ("spec.peerSelector", "invalid selector 'has(rr': expected ')' to close has( at position 7"),
        ),
    ],
)
def test_bgp_peer_rules(spec: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(peer(**spec)) == [problem]


def test_route_reflector_peering_parses() -> None:
    resource = parse_resource(peer(nodeSelector="all()", peerSelector="route-reflector == 'true'"))
    assert isinstance(resource, BGPPeer)
    assert resource.spec.as_number is None


# --- NetworkPolicy / GlobalNetworkPolicy -------------------------------------------------------


def cnp(spec: dict[str, Any], name: str = "pol") -> dict[str, Any]:
    return calico("NetworkPolicy", spec, name=name, namespace="prod")


def gnp(spec: dict[str, Any], name: str = "pol") -> dict[str, Any]:
    return calico("GlobalNetworkPolicy", spec, name=name)


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ["Ingress"]),
        ({"ingress": [{"action": "Allow"}]}, ["Ingress"]),
        ({"egress": [{"action": "Allow"}]}, ["Egress"]),
        ({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}, ["Ingress", "Egress"]),
        ({"types": ["Egress"], "ingress": [{"action": "Allow"}]}, ["Egress"]),
    ],
)
def test_calico_default_types(spec: dict[str, Any], types: list[str]) -> None:
    resource = parse_resource(cnp(spec))
    assert isinstance(resource, CalicoNetworkPolicy)
    assert resource.spec.types == types
    assert resource.spec.effective_types() == types


def test_calico_policy_defaults_and_order_output() -> None:
    resource = parse_resource(cnp({"order": 100}))
    spec = resource.to_dict()["spec"]
    assert spec == {"tier": "default", "order": 100, "selector": "all()", "types": ["Ingress"]}
    assert isinstance(resource, CalicoNetworkPolicy)
    assert resource.spec.order == 100.0
    assert parse_resource(cnp({"order": 10.5})).to_dict()["spec"]["order"] == 10.5


def rule_problem(rule: dict[str, Any], direction: str = "ingress") -> list[tuple[str, str]]:
    return problems(cnp({direction: [rule]}))


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({}, ("spec.ingress[0].action", "required")),
        ({"action": "Accept"}, ("spec.ingress[0].action", "must be one of Allow, Deny, Log, Pass")),
        (
            {"action": "Allow", "protocol": "HTTP"},
            (
                "spec.ingress[0].protocol",
                "must be one of TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255",
            ),
        ),
        ({"action": "Allow", "protocol": 256}, ("spec.ingress[0].protocol", "must be between 1 and 255")),
        (
            {"action": "Allow", "destination": {"ports": [80]}},
            ("spec.ingress[0].destination.ports", "needs protocol TCP, UDP or SCTP on the rule"),
        ),
        (
            {"action": "Allow", "protocol": "ICMP", "source": {"notPorts": [80]}},
            ("spec.ingress[0].source.notPorts", "needs protocol TCP, UDP or SCTP on the rule"),
        ),
        (
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}},
            ("spec.ingress[0].destination.ports[0]", "a port range 'lo:hi' needs 1 <= lo <= hi <= 65535"),
        ),
        (
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": [0]}},
            ("spec.ingress[0].destination.ports[0]", "must be between 1 and 65535"),
        ),
        (
            {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["Web_Port"]}},
            (
                "spec.ingress[0].destination.ports[0]",
                PORT_NAME_RULE,
            ),
        ),
        (
            {"action": "Allow", "icmp": {"type": 8}},
            ("spec.ingress[0].icmp", "needs protocol ICMP or ICMPv6 on the rule"),
        ),
        (
            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}},
            ("spec.ingress[0].icmp.type", "must be between 0 and 254"),
        ),
        (
            {"action": "Allow", "protocol": "ICMP", "icmp": {"code": 0}},
            (
                "spec.ingress[0].icmp.code",
                "requires type (the kernel matches a code only together with a type)",
            ),
        ),
        (
            {"action": "Allow", "protocol": "ICMP", "ipVersion": 6},
            ("spec.ingress[0].ipVersion", "must be 4 with protocol ICMP"),
        ),
        (
            {"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4},
            ("spec.ingress[0].ipVersion", "must be 6 with protocol ICMPv6"),
        ),
        ({"action": "Allow", "ipVersion": 5}, ("spec.ingress[0].ipVersion", "must be one of 4, 6")),
        (
            {"action": "Allow", "ipVersion": 6, "source": {"nets": ["10.0.0.0/8"]}},
            ("spec.ingress[0].source.nets", "must all be IPv6 (ipVersion)"),
        ),
        (
            {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"nets": ["fd00::/8"]}},
            ("spec.ingress[0].destination.nets", "a rule cannot mix IPv4 and IPv6 networks"),
        ),
        (
            {"action": "Allow", "source": {"nets": ["10.0.0.300/8"]}},
            ("spec.ingress[0].source.nets[0]", "must be a CIDR such as 10.0.0.0/16 (got '10.0.0.300/8')"),
        ),
        (
            {"action": "Allow", "source": {"selector": "app = 'x'"}},
            (
                "spec.ingress[0].source.selector",
                (
                    "invalid selector \"app = 'x'\": "
                    "expected '==' (a single '=' is not an operator) at position 5"
                ),
            ),
        ),
        (
            {"action": "Allow", "source": {"selector": "global()"}},
            ("spec.ingress[0].source.selector", "global() may only be used in a rule's namespaceSelector"),
        ),
        (
            {"action": "Allow", "source": {"namespaceSelector": "global() && has(x)"}},
            ("spec.ingress[0].source.namespaceSelector", "global() cannot be combined with other selectors"),
        ),
        (
            {"action": "Allow", "source": {"services": {"name": "dns"}, "selector": "has(a)"}},
            ("spec.ingress[0].source.services", "cannot be combined with selector"),
        ),
        (
            {"action": "Allow", "protocol": "TCP", "destination": {"services": {"name": "db"}}},
            ("spec.ingress[0].destination.services", "not allowed in an ingress rule's destination"),
        ),
        (
            {"action": "Deny", "http": {"methods": ["GET"]}},
            ("spec.ingress[0].http", "is only valid in Allow rules"),
        ),
        (
            {"action": "Allow", "http": {"paths": [{"exact": "/a", "prefix": "/b"}]}},
            ("spec.ingress[0].http.paths[0]", "set exactly one of exact or prefix"),
        ),
        (
            {"action": "Allow", "http": {"paths": [{"prefix": "api"}]}},
            ("spec.ingress[0].http.paths[0].prefix", "must start with '/' and contain no '?', '#' or space"),
        ),
        (
            {"action": "Allow", "protocol": "UDP", "http": {"methods": ["GET"]}},
            ("spec.ingress[0].protocol", "must be TCP or empty in a rule with http"),
        ),
        (
            {"action": "Allow", "sources": {}},
            ("spec.ingress[0].sources", "unknown field (did you mean source?)"),
        ),
    ],
)
def test_calico_rule_rules(rule: dict[str, Any], problem: tuple[str, str]) -> None:
    assert rule_problem(rule) == [problem]


def test_egress_rule_restrictions() -> None:
    assert rule_problem({"action": "Allow", "source": {"services": {"name": "x"}}}, "egress") == [
        ("spec.egress[0].source.services", "not allowed in an egress rule's source")
    ]
    assert rule_problem({"action": "Allow", "http": {"methods": ["GET"]}}, "egress") == [
        ("spec.egress[0].http", "not allowed in egress rules")
    ]


def test_calico_ports_numbers_ranges_names() -> None:
    resource = parse_resource(
        cnp(
            {
                "ingress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "destination": {"ports": [80, "443", "8000:8080", "http"]},
                    }
                ]
            }
        )
    )
    assert resource.to_dict()["spec"]["ingress"][0]["destination"]["ports"] == [80, 443, "8000:8080", "http"]


def test_calico_policy_level_rules() -> None:
    assert problems(cnp({"types": ["Ingress", "Ingress"]})) == [("spec.types", "must not repeat a type")]
    assert problems(cnp({"selector": "global()"})) == [
        ("spec.selector", "global() may only be used in a rule's namespaceSelector")
    ]
    assert problems(cnp({"tier": "Security"})) == [
        (
            "spec.tier",
            (
                "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            ),
        )
    ]
    assert problems(cnp({"doNotTrack": True})) == [("spec.doNotTrack", "unknown field")]
    assert problems(cnp({}, name="a.b.c"))[0][0] == "metadata.name"


def test_gnp_rules() -> None:
    assert problems(gnp({"preDNAT": True, "applyOnForward": True, "egress": [{"action": "Allow"}]})) == [
        ("spec.egress", "a preDNAT policy cannot have egress rules")
    ]
    assert problems(gnp({"doNotTrack": True})) == [
        ("spec.applyOnForward", "must be true when preDNAT or doNotTrack is true")
    ]
    assert problems(gnp({"doNotTrack": True, "preDNAT": True, "applyOnForward": True})) == [
        ("spec.preDNAT", "preDNAT and doNotTrack cannot both be true")
    ]
    assert problems(gnp({"ingress": [{"action": "Allow", "source": {"services": {"name": "dns"}}}]})) == [
        ("spec.ingress[0].source.services.namespace", "required in a GlobalNetworkPolicy")
    ]
    doc = gnp({})
    doc["metadata"]["namespace"] = "default"
    assert problems(doc) == [("metadata.namespace", "must not be set: GlobalNetworkPolicy is cluster-scoped")]


def test_gnp_defaults() -> None:
    resource = parse_resource(gnp({"selector": "has(x)"}))
    assert isinstance(resource, GlobalNetworkPolicy)
    assert resource.to_dict()["spec"] == {
        "tier": "default",
        "selector": "has(x)",
        "types": ["Ingress"],
        "doNotTrack": False,
        "preDNAT": False,
        "applyOnForward": False,
    }
    assert resource.spec.parsed_selector().matches({"x": ""})
