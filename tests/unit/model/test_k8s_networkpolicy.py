"""networking.k8s.io/v1 NetworkPolicy: validation, defaults, effective policy types."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import NetworkPolicy, parse_resource

PORT_NAME_RULE = (
    "a port name must contain only lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)


def policy(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {"podSelector": {}, **spec},
    }


def parse(**spec: Any) -> NetworkPolicy:
    resource = parse_resource(policy(**spec))
    assert isinstance(resource, NetworkPolicy)
    return resource


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def test_pod_selector_is_required_but_may_be_empty() -> None:
    doc = policy()
    del doc["spec"]["podSelector"]
    assert problems(doc) == [("spec.podSelector", "required")]
    assert parse().spec.pod_selector.is_empty()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ["Ingress"]),
        ({"ingress": [{}]}, ["Ingress"]),
        ({"egress": [{}]}, ["Ingress", "Egress"]),
        ({"egress": []}, ["Ingress"]),
        ({"policyTypes": ["Egress"]}, ["Egress"]),
        ({"policyTypes": ["Egress"], "ingress": [{}]}, ["Egress"]),
    ],
)
def test_effective_policy_types(spec: dict[str, Any], expected: list[str]) -> None:
    resource = parse(**spec)
    assert resource.effective_policy_types() == expected
    assert resource.to_dict()["spec"]["policyTypes"] == expected  # defaulted as the API server does


def test_policy_types_values() -> None:
    assert problems(policy(policyTypes=["Ingress", "Ingress"])) == [
        ("spec.policyTypes", "must not repeat a type")
    ]
    assert problems(policy(policyTypes=["ingress"])) == [
        ("spec.policyTypes[0]", "must be one of Ingress, Egress")
    ]


def test_port_defaults_to_tcp_and_accepts_named_ports() -> None:
    resource = parse(ingress=[{"ports": [{"port": 80}, {"port": "http"}, {}]}])
    ports = resource.to_dict()["spec"]["ingress"][0]["ports"]
    assert ports == [
        {"protocol": "TCP", "port": 80},
        {"protocol": "TCP", "port": "http"},
        {"protocol": "TCP"},
    ]


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ({"port": 0}, ("spec.ingress[0].ports[1].port", "must be between 1 and 65535")),
        (
            {"port": "HTTP"},
            (
                "spec.ingress[0].ports[1].port",
                PORT_NAME_RULE,
            ),
        ),
        ({"port": 1.5}, ("spec.ingress[0].ports[1].port", "must be a port number or a port name")),
        (
            {"port": 80, "endPort": 79},
            ("spec.ingress[0].ports[1].endPort", "must be greater than or equal to port (80)"),
        ),
        ({"port": "http", "endPort": 90}, ("spec.ingress[0].ports[1].endPort", "requires a numeric port")),
        ({"endPort": 90}, ("spec.ingress[0].ports[1].endPort", "requires a numeric port")),
        (
            {"port": 80, "protocol": "ICMP"},
            ("spec.ingress[0].ports[1].protocol", "must be one of TCP, UDP, SCTP"),
        ),
    ],
)
def test_port_rules(port: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(policy(ingress=[{"ports": [{"port": 53}, port]}])) == [problem]


def test_end_port_range_is_accepted() -> None:
    resource = parse(egress=[{"ports": [{"port": 32000, "endPort": 32768}]}])
    assert resource.spec.egress is not None
    assert resource.spec.egress[0].ports is not None
    assert resource.spec.egress[0].ports[0].end_port == 32768


def test_peer_rules() -> None:
    assert problems(policy(ingress=[{"from": [{}]}])) == [
        ("spec.ingress[0].from[0]", "must specify podSelector, namespaceSelector or ipBlock")
    ]
    assert problems(
        policy(egress=[{"to": [{"namespaceSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}])
    ) == [("spec.egress[0].to[0].ipBlock", "may not be combined with podSelector or namespaceSelector")]


def test_ip_block_rules() -> None:
    def block(cidr: str, *excepts: str) -> dict[str, Any]:
        return policy(ingress=[{"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}])

    assert problems(block("10.0.0.0/8", "11.0.0.0/16")) == [
        ("spec.ingress[0].from[0].ipBlock.except[0]", "must be a strict subset of cidr 10.0.0.0/8")
    ]
    assert problems(block("10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8")) == [
        ("spec.ingress[0].from[0].ipBlock.except[1]", "must be a strict subset of cidr 10.0.0.0/8")
    ]
    assert problems(block("10.0.0.0/8", "fd00::/64"))[0][0] == "spec.ingress[0].from[0].ipBlock.except[0]"
    assert problems(block("10.0.0.0"))[0] == (
        "spec.ingress[0].from[0].ipBlock.cidr",
        "must be a CIDR such as 10.0.0.0/16 (got '10.0.0.0'; add a prefix length)",
    )
    assert problems(block("10.0.0.0/33"))[0][0] == "spec.ingress[0].from[0].ipBlock.cidr"
    parse_resource(block("172.17.0.0/16", "172.17.1.0/24"))


def test_from_is_the_yaml_name() -> None:
    resource = parse(ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}])
    rule = resource.spec.ingress[0]  # type: ignore[index]
    assert rule.from_ is not None
    assert rule.from_[0].pod_selector is not None
    assert rule.from_[0].pod_selector.matches({"role": "frontend"})
    assert "from" in resource.to_dict()["spec"]["ingress"][0]
