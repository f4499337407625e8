"""policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy and BaselineAdminNetworkPolicy (v0.1.x):
the upstream-shaped fixtures parse, defaults, and every CRD rule refused with its field path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import AdminNetworkPolicy, BaselineAdminNetworkPolicy, parse_resource, parse_yaml

FIXTURE = Path(__file__).parent / "fixtures" / "network-policy-api.yaml"
NS = {"matchLabels": {"kubernetes.io/metadata.name": "ns-a"}}


def anp(spec: dict[str, Any], name: str = "a") -> dict[str, Any]:
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": "AdminNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"priority": 10, "subject": {"namespaces": {}}, **spec},
    }


def banp(spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    doc = anp(spec, name)
    doc["kind"] = "BaselineAdminNetworkPolicy"
    del doc["spec"]["priority"]
    return doc


def egress(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"egress": list(rules)}


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def test_the_upstream_shaped_examples_parse() -> None:
    resources = parse_yaml(FIXTURE.read_text(), FIXTURE.name)
    anps = [r for r in resources if isinstance(r, AdminNetworkPolicy)]
    [baseline] = [r for r in resources if isinstance(r, BaselineAdminNetworkPolicy)]
    gress = next(r for r in anps if r.name == "gress-rules")
    assert gress.spec.priority == 15
    assert [r.action for r in gress.spec.egress or []] == ["Allow", "Deny", "Pass"]
    ports = gress.spec.egress[1].ports or []  # type: ignore[index]
    assert [(p.port_number.protocol, p.port_number.port) for p in ports] == [  # type: ignore[union-attr]
        ("TCP", 80),
        ("UDP", 53),
        ("SCTP", 9003),
    ]
    pass_rule = gress.spec.egress[2]  # type: ignore[index]
    assert pass_rule.to[0].pods is not None
    assert pass_rule.to[0].pods.pod_selector.matches({"conformance-house": "hufflepuff"})
    assert [p.named_port for p in pass_rule.ports or []] == ["web", None]
    assert baseline.name == "default"
    deny = baseline.spec.egress[1]  # type: ignore[index]
    assert deny.to[1].networks == ["0.0.0.0/0", "::/0"]
    assert deny.to[0].nodes is not None and deny.to[0].nodes.matches({"kubernetes.io/os": "linux"})


def test_port_protocols_default_to_tcp() -> None:
    doc = anp(
        egress(
            {
                "action": "Allow",
                "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                "ports": [{"portNumber": {"port": 80}}, {"portRange": {"start": 1, "end": 2}}],
            }
        )
    )
    ports = parse_resource(doc).to_dict()["spec"]["egress"][0]["ports"]
    assert ports == [
        {"portNumber": {"protocol": "TCP", "port": 80}},
        {"portRange": {"protocol": "TCP", "start": 1, "end": 2}},
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"priority": 1001}, [("spec.priority", "must be between 0 and 1000")]),
        ({"priority": -1}, [("spec.priority", "must be between 0 and 1000")]),
        ({"priority": "5"}, [("spec.priority", "must be an integer")]),
        ({"subject": {}}, [("spec.subject", "set exactly one of namespaces or pods")]),
        (
            {"subject": {"namespaces": {}, "pods": {"namespaceSelector": {}, "podSelector": {}}}},
            [("spec.subject", "set exactly one of namespaces or pods (found namespaces, pods)")],
        ),
        (
            {"subject": {"pods": {"podSelector": {}}}},
            [("spec.subject.pods.namespaceSelector", "required")],
        ),
        (
            {"ingress": [{"action": "Reject", "from": [{"namespaces": {}}]}]},
            [("spec.ingress[0].action", "must be one of Allow, Deny, Pass")],
        ),
        (
            {"ingress": [{"action": "Deny", "from": []}]},
            [("spec.ingress[0].from", "must have at least 1 item(s)")],
        ),
        (
            {"ingress": [{"action": "Deny", "from": [{"nodes": {}}]}]},
            [("spec.ingress[0].from[0].nodes", "unknown field")],
        ),
        (
            {"ingress": [{"name": "x" * 101, "action": "Deny", "from": [{"namespaces": NS}]}]},
            [("spec.ingress[0].name", "must be at most 100 characters long")],
        ),
        (
            {"ingress": [{"action": "Deny", "from": [{"namespaces": NS}], "ports": []}]},
            [("spec.ingress[0].ports", "must have at least 1 item(s)")],
        ),
        (
            {"ingress": [{"action": "Deny", "from": [{"namespaces": NS}]}] * 101},
            [("spec.ingress", "must have at most 100 item(s)")],
        ),
    ],
)
def test_spec_rules(spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert problems(anp(spec)) == expected


def test_priority_is_required() -> None:
    doc = anp({})
    del doc["spec"]["priority"]
    assert problems(doc) == [("spec.priority", "required")]


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ({}, ("", "set exactly one of namespaces, pods, nodes, networks or domainNames")),
        (
            {"namespaces": {}, "networks": ["10.0.0.0/8"]},
            (
                "",
                "set exactly one of namespaces, pods, nodes, networks or domainNames "
                "(found namespaces, networks)",
            ),
        ),
        ({"networks": []}, ("networks", "must have at least 1 item(s)")),
        ({"networks": ["10.0.0.0/33"]}, ("networks[0]", "Invalid CIDR format provided")),
        ({"networks": ["10.0.0.1"]}, ("networks[0]", "Invalid CIDR format provided")),
        ({"networks": ["10.0.0.0/8", "10.0.0.0/8"]}, ("networks[1]", 'Duplicate value: "10.0.0.0/8"')),
        ({"networks": [f"10.{i}.0.0/16" for i in range(26)]}, ("networks", "must have at most 25 item(s)")),
        ({"domainNames": ["*.example.com", "bad..name"]}, ("domainNames[1]", "must be a domain name")),
        ({"domainNames": ["www.*.example.com"]}, ("domainNames[0]", "must be a domain name")),
        ({"nodes": {"matchLabels": {"bad key!": "x"}}}, ("nodes.matchLabels[bad key!]", "invalid key")),
    ],
)
def test_egress_peers(peer: dict[str, Any], expected: tuple[str, str]) -> None:
    [(path, message)] = problems(anp(egress({"action": "Allow", "to": [peer]})))
    prefix = "spec.egress[0].to[0]"
    assert path == (f"{prefix}.{expected[0]}" if expected[0] else prefix)
    assert message.startswith(expected[1])


def test_networks_keep_host_bits_as_isCIDR_does() -> None:
    doc = anp(egress({"action": "Deny", "to": [{"networks": ["10.1.2.3/8", "fd00::/8"]}]}))
    assert parse_resource(doc).spec.egress[0].to[0].networks == ["10.1.2.3/8", "fd00::/8"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ({}, ("", "set exactly one of portNumber, namedPort or portRange")),
        (
            {"portNumber": {"port": 80}, "namedPort": "http"},
            ("", "set exactly one of portNumber, namedPort or portRange (found portNumber, namedPort)"),
        ),
        ({"portNumber": {"port": 0}}, ("portNumber.port", "must be between 1 and 65535")),
        (
            {"portNumber": {"protocol": "ICMP", "port": 1}},
            ("portNumber.protocol", "must be one of TCP, UDP, SCTP"),
        ),
        ({"portNumber": {}}, ("portNumber.port", "required")),
        ({"portRange": {"start": 90, "end": 80}}, ("portRange", "Start port must be less than End port")),
        ({"portRange": {"start": 80, "end": 80}}, ("portRange", "Start port must be less than End port")),
        ({"portRange": {"start": 80, "end": 70000}}, ("portRange.end", "must be between 1 and 65535")),
        ({"namedPort": "HTTP"}, ("namedPort", "a port name must contain only lowercase letters")),
    ],
)
def test_ports(port: dict[str, Any], expected: tuple[str, str]) -> None:
    doc = anp({"ingress": [{"action": "Allow", "from": [{"namespaces": {}}], "ports": [port]}]})
    [(path, message)] = problems(doc)
    prefix = "spec.ingress[0].ports[0]"
    assert path == (f"{prefix}.{expected[0]}" if expected[0] else prefix)
    assert message.startswith(expected[1])


@pytest.mark.parametrize("peer", [{"networks": ["10.0.0.0/8"]}, {"nodes": {}}, {"domainNames": ["a.io"]}])
def test_named_ports_cannot_go_with_peers_outside_the_pods(peer: dict[str, Any]) -> None:
    rule = {"action": "Allow", "to": [{"namespaces": {}}, peer], "ports": [{"namedPort": "http"}]}
    assert problems(anp(egress(rule))) == [
        (
            "spec.egress[0]",
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
            "for networks/nodes/domainNames",
        )
    ]
    rule["ports"] = [{"portNumber": {"port": 80}}]
    parse_resource(anp(egress(rule)))


def test_domain_names_only_in_allow_rules() -> None:
    doc = anp(egress({"action": "Deny", "to": [{"namespaces": {}}, {"domainNames": ["kubernetes.io"]}]}))
    assert problems(doc) == [
        ("spec.egress[0].to[1].domainNames", "domainNames is only supported for Allow rules")
    ]


def test_baseline_is_the_singleton_default_with_allow_and_deny() -> None:
    spec = {"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
    assert isinstance(parse_resource(banp(spec)), BaselineAdminNetworkPolicy)
    assert problems(banp(spec, name="other")) == [
        (
            "metadata.name",
            'Only one baseline admin network policy with metadata.name="default" can be created in the '
            "cluster",
        )
    ]
    passing = {"ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}
    assert problems(banp(passing)) == [("spec.ingress[0].action", "must be one of Allow, Deny")]
    with_priority = banp({})
    with_priority["spec"]["priority"] = 3
    assert problems(with_priority) == [("spec.priority", "unknown field")]
    assert problems(banp(egress({"action": "Allow", "to": [{"domainNames": ["a.io"]}]}))) == [
        ("spec.egress[0].to[0].domainNames", "unknown field")
    ]
    named = {"action": "Deny", "to": [{"nodes": {}}], "ports": [{"namedPort": "dns"}]}
    assert problems(banp(egress(named))) == [
        (
            "spec.egress[0]",
            "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for "
            "networks/nodes",
        )
    ]


def test_cluster_scoped_and_null_selectors_select_everything() -> None:
    doc = anp({"subject": {"namespaces": None, "pods": {"namespaceSelector": None, "podSelector": {}}}})
    parsed = parse_resource(doc)
    assert parsed.spec.subject.namespaces is None  # type: ignore[attr-defined]
    assert parsed.spec.subject.pods.namespace_selector.is_empty()  # type: ignore[attr-defined]
    scoped = copy.deepcopy(anp({}))
    scoped["metadata"]["namespace"] = "x"
    assert problems(scoped) == [
        ("metadata.namespace", "must not be set: AdminNetworkPolicy is cluster-scoped")
    ]
