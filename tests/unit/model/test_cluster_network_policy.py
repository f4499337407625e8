"""policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy: tiers, Accept/Deny/Pass, protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import ClusterNetworkPolicy, lookup, parse_resource, parse_yaml

FIXTURE = Path(__file__).parent / "fixtures" / "network-policy-api.yaml"


def cnp(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "c"},
        "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}, **spec},
    }


def ingress(**rule: Any) -> dict[str, Any]:
    return {"ingress": [{"action": "Accept", "from": [{"namespaces": {}}], **rule}]}


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def test_the_upstream_shaped_examples_parse() -> None:
    policies = [
        r for r in parse_yaml(FIXTURE.read_text(), FIXTURE.name) if isinstance(r, ClusterNetworkPolicy)
    ]
    admin, baseline = policies
    assert (admin.spec.tier, admin.spec.calico_tier) == ("Admin", "kube-admin")
    assert (baseline.spec.tier, baseline.spec.calico_tier) == ("Baseline", "kube-baseline")
    deny = admin.spec.egress[1]  # type: ignore[index]
    matches = [p.protocol_and_port() for p in deny.protocols or []]
    assert [(proto, port.number) for proto, port in matches] == [("TCP", 80), ("UDP", 53), ("SCTP", 9003)]  # type: ignore[union-attr]
    named, ranged = admin.spec.egress[2].protocols or []  # type: ignore[index]
    assert named.protocol_and_port() == (None, "web")
    proto, port = ranged.protocol_and_port()
    assert (proto, port.range.start, port.range.end) == ("TCP", 8080, 8090)  # type: ignore[union-attr]
    # namespaceSelector defaults to {} (every namespace) and is written out
    pods = admin.spec.egress[2].to[0].pods  # type: ignore[index]
    assert pods is not None and pods.namespace_selector.is_empty()
    assert admin.to_dict()["spec"]["egress"][2]["to"][0]["pods"]["namespaceSelector"] == {}
    assert lookup("clusternetworkpolicies.policy.networking.k8s.io").model_cls is ClusterNetworkPolicy


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tier": "Default"}, [("spec.tier", "must be one of Admin, Baseline")]),
        ({"priority": 1001}, [("spec.priority", "must be between 0 and 1000")]),
        (ingress(action="Allow"), [("spec.ingress[0].action", "must be one of Accept, Deny, Pass")]),
        ({"subject": {"pods": {}}}, [("spec.subject.pods.podSelector", "required")]),
        (
            {"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}] * 26},
            [("spec.ingress", "must have at most 25 item(s)")],
        ),
        (ingress(protocols=[]), [("spec.ingress[0].protocols", "must have at least 1 item(s)")]),
        (
            ingress(protocols=[{}]),
            [("spec.ingress[0].protocols[0]", "set exactly one of tcp, udp, sctp or destinationNamedPort")],
        ),
        (
            ingress(protocols=[{"tcp": {}}]),
            [("spec.ingress[0].protocols[0].tcp.destinationPort", "required")],
        ),
        (
            ingress(protocols=[{"udp": {"destinationPort": {}}}]),
            [("spec.ingress[0].protocols[0].udp.destinationPort", "set exactly one of number or range")],
        ),
        (
            ingress(
                protocols=[{"tcp": {"destinationPort": {"number": 80, "range": {"start": 1, "end": 2}}}}]
            ),
            [
                (
                    "spec.ingress[0].protocols[0].tcp.destinationPort",
                    "set exactly one of number or range (found number, range)",
                )
            ],
        ),
        (
            ingress(protocols=[{"sctp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]),
            [
                (
                    "spec.ingress[0].protocols[0].sctp.destinationPort.range",
                    "Start port must be less than End port",
                )
            ],
        ),
        (
            ingress(protocols=[{"tcp": {"destinationPort": {"number": 0}}}]),
            [("spec.ingress[0].protocols[0].tcp.destinationPort.number", "must be between 1 and 65535")],
        ),
        (
            ingress(protocols=[{"destinationNamedPort": "Web"}]),
            [
                (
                    "spec.ingress[0].protocols[0].destinationNamedPort",
                    "a port name must contain only lowercase letters, digits and '-', "
                    "starting and ending with a letter or digit",
                )
            ],
        ),
        (ingress(ports=[{"portNumber": {"port": 80}}]), [("spec.ingress[0].ports", "unknown field")]),
        (
            {"ingress": [{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]},
            [("spec.ingress[0].from[0].networks", "unknown field")],
        ),
    ],
)
def test_spec_rules(spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(cnp(spec)) == expected


def test_tier_and_priority_are_required() -> None:
    doc = cnp({})
    del doc["spec"]["tier"], doc["spec"]["priority"]
    assert problems(doc) == [("spec.tier", "required"), ("spec.priority", "required")]


def test_egress_peers_and_the_named_port_rule() -> None:
    to = [
        {"pods": {"podSelector": {}}},
        {"nodes": {}},
        {"networks": ["10.0.0.0/8"]},
        {"domainNames": ["a.io"]},
    ]
    parsed = parse_resource(cnp({"egress": [{"action": "Accept", "to": to}]}))
    assert [p.outside_pods() for p in parsed.spec.egress[0].to] == [False, True, True, True]  # type: ignore[attr-defined]
    named = {
        "action": "Deny",
        "to": [{"networks": ["10.0.0.0/8"]}],
        "protocols": [{"destinationNamedPort": "dns"}],
    }
    assert problems(cnp({"egress": [named]})) == [
        (
            "spec.egress[0]",
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
            "for networks/nodes/domainNames",
        )
    ]
    deny_domains = {"action": "Deny", "to": [{"domainNames": ["a.io"]}]}
    assert problems(cnp({"egress": [deny_domains]})) == [
        ("spec.egress[0].to[0].domainNames", "domainNames is only supported for Accept rules")
    ]
    both = {"action": "Deny", "to": [{"nodes": {}, "networks": ["::/0"]}]}
    assert problems(cnp({"egress": [both]})) == [
        (
            "spec.egress[0].to[0]",
            "set exactly one of namespaces, pods, nodes, networks or domainNames (found nodes, networks)",
        )
    ]
