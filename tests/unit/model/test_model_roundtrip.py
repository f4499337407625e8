"""parse -> to_dict -> parse is the identity, for every fixture and for generated objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.errors import ValidationError
from podnet.model import RESOURCE_TYPES, Resource, dump_yaml, parse_resource, parse_yaml, type_of

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.yaml"))


def _fixture_resources() -> list[tuple[str, Resource]]:
    out: list[tuple[str, Resource]] = []
    for path in FIXTURES:
        for resource in parse_yaml(path.read_text(), path.name):
            out.append((f"{path.stem}:{resource.KIND}:{resource.name}", resource))
    return out


RESOURCES = _fixture_resources()


def test_fixtures_cover_every_kind() -> None:
    assert {type_of(r).key_name for _, r in RESOURCES} == {rt.key_name for rt in RESOURCE_TYPES}
    assert len(RESOURCES) >= 40


@pytest.mark.parametrize(("label", "resource"), RESOURCES, ids=[label for label, _ in RESOURCES])
def test_fixture_round_trip(label: str, resource: Resource) -> None:
    data = resource.to_dict()
    again = parse_resource(data)
    assert again == resource
    assert again.to_dict() == data
    assert list(data)[:3] == ["apiVersion", "kind", "metadata"]
    # through JSON, as the datastore stores it
    assert parse_resource(json.loads(json.dumps(data))) == resource


def test_whole_files_round_trip_through_yaml() -> None:
    for path in FIXTURES:
        resources = parse_yaml(path.read_text(), path.name)
        assert parse_yaml(dump_yaml(resources), "dumped") == resources


# --- generated objects ----------------------------------------------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
LABEL_KEYS = st.sampled_from(["app", "tier", "app.kubernetes.io/name", "env"])
LABEL_VALUES = st.from_regex(r"([a-z0-9]([a-z0-9._-]{0,6}[a-z0-9])?)?", fullmatch=True)
LABELS = st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=3)
MODES = st.sampled_from(["Always", "CrossSubnet", "Never"])


@st.composite
def ippool_docs(draw: st.DrawFn) -> dict[str, Any]:
    v6 = draw(st.booleans())
    if v6:
        prefix = draw(st.integers(48, 120))
        cidr = f"fd{draw(st.integers(0, 255)):02x}::/{prefix}"
        block = draw(st.none() | st.integers(max(prefix, 116), 128))
        spec: dict[str, Any] = {"cidr": cidr, "vxlanMode": draw(MODES)}
    else:
        prefix = draw(st.integers(8, 28))
        cidr = f"10.0.0.0/{prefix}"
        block = draw(st.none() | st.integers(max(prefix, 20), 32))
        ipip, vxlan = draw(MODES), draw(MODES)
        if ipip != "Never":
            vxlan = "Never"
        spec = {"cidr": cidr, "ipipMode": ipip, "vxlanMode": vxlan}
    if block is not None:
        spec["blockSize"] = block
    for field in ("natOutgoing", "disabled", "disableBGPExport"):
        value = draw(st.none() | st.booleans())
        if value is not None:
            spec[field] = value
    spec["nodeSelector"] = draw(st.sampled_from(["all()", "", "has(edge)", "rack in {'a', 'b'} && !has(x)"]))
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": draw(NAMES), "labels": draw(LABELS)},
        "spec": spec,
    }


@st.composite
def k8s_policy_docs(draw: st.DrawFn) -> dict[str, Any]:
    ports = st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "protocol": st.sampled_from(["TCP", "UDP", "SCTP"]),
                "port": st.integers(1, 65535) | st.sampled_from(["http", "dns-tcp"]),
            },
        ),
        max_size=2,
    )
    peer = st.one_of(
        st.fixed_dictionaries({"podSelector": st.fixed_dictionaries({"matchLabels": LABELS})}),
        st.fixed_dictionaries({"namespaceSelector": st.just({})}),
        st.fixed_dictionaries({"ipBlock": st.just({"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]})}),
    )
    spec: dict[str, Any] = {"podSelector": {"matchLabels": draw(LABELS)}}
    if draw(st.booleans()):
        spec["ingress"] = draw(
            st.lists(st.fixed_dictionaries({"from": st.lists(peer, max_size=2), "ports": ports}), max_size=2)
        )
    if draw(st.booleans()):
        spec["egress"] = draw(
            st.lists(st.fixed_dictionaries({"to": st.lists(peer, max_size=2), "ports": ports}), max_size=2)
        )
    if draw(st.booleans()):
        spec["policyTypes"] = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": draw(NAMES), "namespace": draw(NAMES)},
        "spec": spec,
    }


@settings(max_examples=150, deadline=None)
@given(ippool_docs())
def test_generated_ippools_round_trip(doc: dict[str, Any]) -> None:
    try:
        resource = parse_resource(doc)
    except ValidationError as exc:  # only the documented pool-size rule may reject these
        assert exc.problems == [("spec.cidr", exc.problems[0][1])]
        assert "smaller than one block" in exc.problems[0][1]
        return
    data = resource.to_dict()
    assert parse_resource(data) == resource
    assert parse_resource(json.loads(json.dumps(data))).to_dict() == data
    assert data["spec"]["blockSize"] == doc["spec"].get(
        "blockSize", 122 if ":" in doc["spec"]["cidr"] else 26
    )


@settings(max_examples=150, deadline=None)
@given(k8s_policy_docs())
def test_generated_network_policies_round_trip(doc: dict[str, Any]) -> None:
    resource = parse_resource(doc)
    data = resource.to_dict()
    assert parse_resource(data) == resource
    assert parse_yaml(dump_yaml([resource])) == [resource]
    for rule in data["spec"].get("ingress", []) + data["spec"].get("egress", []):
        assert all(port["protocol"] in ("TCP", "UDP", "SCTP") for port in rule.get("ports", []))
