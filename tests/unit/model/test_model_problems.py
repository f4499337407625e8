"""The pydantic-to-podnet problem translator: paths in YAML names, plain messages, all problems."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import IPPool, NetworkPolicy, parse_resource
from podnet.model.problems import Problems, join_path, loc_to_path


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def pool(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": "p"},
        "spec": {"cidr": "10.0.0.0/16", **spec},
    }


def test_paths_use_yaml_names_and_indices() -> None:
    assert loc_to_path(("spec", "ingress", 0, "ports", 1, "port")) == "spec.ingress[0].ports[1].port"
    assert join_path("metadata.labels", "[app]") == "metadata.labels[app]"
    assert join_path("spec", "") == "spec"
    assert join_path("", "spec.cidr") == "spec.cidr"


def test_literal_error_lists_the_choices() -> None:
    assert problems(pool(ipipMode="Sometimes")) == [
        ("spec.ipipMode", "must be one of Always, CrossSubnet, Never")
    ]


def test_missing_field_is_required() -> None:
    doc = pool()
    del doc["spec"]["cidr"]
    assert problems(doc) == [("spec.cidr", "required")]


def test_unknown_field() -> None:
    assert problems(pool(bogus=1)) == [("spec.bogus", "unknown field")]


def test_unknown_field_suggests_a_near_miss() -> None:
    assert problems(pool(ipipmode="Always")) == [("spec.ipipmode", "unknown field (did you mean ipipMode?)")]
    assert problems(pool(natOutgoin=True)) == [
        ("spec.natOutgoin", "unknown field (did you mean natOutgoing?)")
    ]
    assert problems(pool(nat_outgoing=True)) == [
        ("spec.nat_outgoing", "unknown field (did you mean natOutgoing?)")
    ]


def test_type_errors_in_plain_words() -> None:
    assert problems(pool(blockSize="26")) == [("spec.blockSize", "must be an integer")]
    assert problems(pool(natOutgoing="yes")) == [("spec.natOutgoing", "must be true or false")]
    assert problems(pool(allowedUses="Workload")) == [("spec.allowedUses", "must be a list")]
    doc = pool()
    doc["spec"] = ["cidr"]
    assert problems(doc) == [("spec", "must be a mapping")]


def test_no_pydantic_jargon_in_messages() -> None:
    found = problems(pool(ipipMode=3, blockSize="x", bogus=1, natOutgoing=None, cidr=7))
    text = " ".join(m for _, m in found)
    for jargon in ("Input should", "pydantic", "https://", "Value error", "extra_forbidden", "literal_error"):
        assert jargon not in text


def test_all_problems_of_a_document_are_reported() -> None:
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "Bad_Name", "labels": {"ok": "yes", "bad key!": "x"}},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Sideways"],
            "ingress": [
                {
                    "from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}],
                    "ports": [{"port": 80}, {"port": 70000}, {"protocol": "ICMP"}],
                }
            ],
            "egres": [],
        },
    }
    found = problems(doc)
    paths = [p for p, _ in found]
    assert "metadata.name" in paths
    assert "metadata.labels[bad key!]" in paths
    assert ("spec.policyTypes[1]", "must be one of Ingress, Egress") in found
    assert (
        "spec.ingress[0].from[0].ipBlock",
        "may not be combined with podSelector or namespaceSelector",
    ) in found
    assert ("spec.ingress[0].ports[1].port", "must be between 1 and 65535") in found
    assert ("spec.ingress[0].ports[2].protocol", "must be one of TCP, UDP, SCTP") in found
    assert ("spec.egres", "unknown field (did you mean egress?)") in found
    assert len(found) == 7


def test_problems_collector_raises_all_at_once() -> None:
    collected = Problems()
    collected.add("a", "first")
    collected.extend("b", [("[0]", "second"), ("", "third")])
    assert collected.items == [("a", "first"), ("b[0]", "second"), ("b", "third")]
    with pytest.raises(Exception, match="first"):
        collected.raise_if_any()
    Problems().raise_if_any()  # nothing collected: no error


def test_from_dict_on_a_kind_class_raises_podnet_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        IPPool.from_dict(pool(blockSize=40))
    assert info.value.problems == [("spec.blockSize", "must be between 20 and 32 for IPv4")]
    assert info.value.subject == 'IPPool "p"'
    assert str(info.value) == 'IPPool "p": spec.blockSize: must be between 20 and 32 for IPv4'


def test_wrong_kind_for_the_class() -> None:
    with pytest.raises(ValidationError) as info:
        NetworkPolicy.from_dict({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy"})
    assert ("apiVersion", "must be networking.k8s.io/v1 for kind NetworkPolicy") in info.value.problems
