"""metadata: names by kind, namespaces, labels, annotations; the naming rules themselves."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import IPPool, Namespace, ObjectMeta, parse_resource
from podnet.model.calico import IPPoolSpec
from podnet.model.names import (
    calico_policy_name_problem,
    dns1035_label_problem,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    iana_svc_name_problem,
    label_value_problem,
    qualified_name_problem,
)


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def namespace(**metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def pool(**metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": metadata,
        "spec": {"cidr": "10.0.0.0/16"},
    }


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "1abc"])
def test_valid_dns1123_labels(name: str) -> None:
    assert dns1123_label_problem(name) is None


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a.b", "a_b", "x" * 64])
def test_invalid_dns1123_labels(name: str) -> None:
    assert dns1123_label_problem(name) is not None


def test_subdomain_and_dns1035() -> None:
    assert dns1123_subdomain_problem("my.ippool-1") is None
    assert dns1123_subdomain_problem("a..b") is not None
    assert dns1123_subdomain_problem("a" * 254) == "must be no more than 253 characters"
    assert dns1035_label_problem("web") is None
    assert dns1035_label_problem("1web") is not None


def test_calico_policy_names() -> None:
    assert calico_policy_name_problem("allow-dns") is None
    assert calico_policy_name_problem("platform.allow-dns") is None
    assert calico_policy_name_problem("a.b.c") is not None


@pytest.mark.parametrize(
    "key", ["app", "app.kubernetes.io/name", "example.com/My_Key.1", "k8s-app", "a" * 63]
)
def test_valid_label_keys(key: str) -> None:
    assert qualified_name_problem(key) is None


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("a/b/c", "at most one '/'"),
        ("/name", "prefix before '/' must not be empty"),
        ("Example.com/x", "prefix part"),
        ("example.com/", "name part must not be empty"),
        ("-app", "must start and end with an alphanumeric"),
        ("a" * 64, "no more than 63"),
    ],
)
def test_invalid_label_keys(key: str, fragment: str) -> None:
    problem = qualified_name_problem(key)
    assert problem is not None and fragment in problem


def test_label_values() -> None:
    assert label_value_problem("") is None
    assert label_value_problem("v1.2_3-x") is None
    assert label_value_problem("-x") is not None
    assert label_value_problem("x" * 64) == "must be no more than 63 characters"


@pytest.mark.parametrize("name", ["http", "dns-tcp", "h2c", "a1"])
def test_valid_port_names(name: str) -> None:
    assert iana_svc_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("80", "at least one letter"), ("a--b", "consecutive"), ("Http", "lowercase"), ("x" * 16, "15")],
)
def test_invalid_port_names(name: str, fragment: str) -> None:
    problem = iana_svc_name_problem(name)
    assert problem is not None and fragment in problem


def test_namespace_names_are_dns_labels() -> None:
    assert problems(namespace(name="my.namespace"))[0][0] == "metadata.name"
    assert parse_resource(namespace(name="team-a")).name == "team-a"


def test_name_required() -> None:
    assert problems(namespace()) == [("metadata.name", "required")]
    assert problems(namespace(name="")) == [("metadata.name", "must not be empty")]


def test_generate_name_stands_in_for_name() -> None:
    resource = parse_resource(namespace(generateName="tmp-"))
    assert resource.metadata.generate_name == "tmp-"
    assert resource.name == ""
    assert problems(namespace(generateName="Bad_"))[0][0] == "metadata.generateName"


def test_namespace_on_a_cluster_scoped_kind_is_an_error() -> None:
    assert problems(pool(name="p", namespace="default")) == [
        ("metadata.namespace", "must not be set: IPPool is cluster-scoped")
    ]


def test_namespace_must_be_a_label() -> None:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "Prod"},
    }
    assert problems(doc)[0][0] == "metadata.namespace"


def test_labels_and_annotations_report_each_bad_entry() -> None:
    found = problems(
        pool(
            name="p",
            labels={"app": "web", "bad key": "x", "enabled": True},
            annotations={"note": "anything goes: 日本語 / spaces", "a/b/c": "x", "count": 3},
        )
    )
    assert found == [
        ("metadata.labels[bad key]", found[0][1]),
        ("metadata.labels[enabled]", "must be a string (quote the value in YAML)"),
        ("metadata.annotations[a/b/c]", "invalid key: a key may contain at most one '/' (prefix/name)"),
        ("metadata.annotations[count]", "must be a string (quote the value in YAML)"),
    ]


def test_name_and_label_problems_are_reported_together() -> None:
    found = problems(pool(name="Bad_Name", labels={"-x": "y"}))
    assert [p for p, _ in found] == ["metadata.name", "metadata.labels[-x]"]


def test_annotations_are_limited_in_total_size() -> None:
    found = problems(pool(name="p", annotations={"big": "x" * (256 * 1024)}))
    assert found == [("metadata.annotations", "annotations must be at most 262144 bytes in total")]


def test_opaque_bookkeeping_fields_are_kept() -> None:
    resource = parse_resource(
        pool(
            name="p",
            uid="123",
            resourceVersion=42,
            generation=3,
            creationTimestamp="2024-01-01T00:00:00Z",
            finalizers=["x/y"],
            ownerReferences=[{"kind": "Thing", "name": "t"}],
            managedFields=[{"manager": "kubectl"}],
        )
    )
    meta = resource.to_dict()["metadata"]
    assert meta["resourceVersion"] == "42"
    assert meta["creationTimestamp"] == "2024-01-01T00:00:00Z"
    assert meta["ownerReferences"] == [{"kind": "Thing", "name": "t"}]


def test_python_construction_checks_names_too() -> None:
    import pydantic

    with pytest.raises(pydantic.ValidationError):
        IPPool(metadata=ObjectMeta(name="Bad_Name"), spec=IPPoolSpec(cidr="10.0.0.0/16"))
    with pytest.raises(pydantic.ValidationError):
        Namespace(metadata=ObjectMeta())
    ok = IPPool(metadata=ObjectMeta(name="p"), spec=IPPoolSpec(cidr="10.0.0.0/16"))
    assert ok.api_version == "projectcalico.org/v3"
    assert ok.kind == "IPPool"
    assert ok.spec.block_size == 26
