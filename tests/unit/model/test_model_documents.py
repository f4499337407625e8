"""YAML in and out: multi-document streams, List expansion, errors for a whole file, dump order."""

from __future__ import annotations

import pytest

from podnet.errors import ValidationError
from podnet.model import (
    DocumentsError,
    IPPool,
    Namespace,
    dump_yaml,
    load_documents,
    parse_documents,
    parse_resource,
    parse_yaml,
    resource_from_stored,
)

TWO_NAMESPACES = """\
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
# only a comment
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
...
"""


def test_load_skips_empty_documents() -> None:
    docs = load_documents(TWO_NAMESPACES, "ns.yaml")
    assert [d["metadata"]["name"] for d in docs] == ["a", "b"]
    assert load_documents("", "empty.yaml") == []


def test_load_expands_lists() -> None:
    text = """\
apiVersion: v1
kind: List
items:
  - {apiVersion: v1, kind: Namespace, metadata: {name: a}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: b}}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
"""
    assert [d["metadata"]["name"] for d in load_documents(text)] == ["a", "b", "c"]


def test_load_accepts_json() -> None:
    docs = load_documents('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}')
    assert docs[0]["metadata"]["name"] == "j"


def test_yaml_syntax_error_names_source_and_line() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n   labels: x\n"
    with pytest.raises(ValidationError) as info:
        load_documents(text, "bad.yaml")
    assert info.value.subject == "bad.yaml"
    assert info.value.problems[0][0] == "line 5, column 10"
    assert "mapping values are not allowed here" in info.value.problems[0][1]
    assert str(info.value).startswith("bad.yaml: line 5, column 10:")


def test_tab_indentation_is_a_syntax_error() -> None:
    with pytest.raises(ValidationError) as info:
        load_documents("metadata:\n\tname: a\n", "tabs.yaml")
    assert info.value.problems[0][0].startswith("line 2")


def test_unquoted_calico_negation_gets_a_quoting_hint() -> None:
    with pytest.raises(ValidationError) as info:
        load_documents("spec:\n  nodeSelector: !has(edge)\n", "pool.yaml")
    assert info.value.problems[0][0] == "line 2, column 17"
    assert (
        info.value.hint
        == "quote values that start with '!', such as Calico selectors: nodeSelector: \"!has(edge)\""
    )


def test_duplicate_keys_are_errors_not_silent_overwrites() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  name: b\n"
    with pytest.raises(ValidationError) as info:
        load_documents(text, "dup.yaml")
    assert info.value.problems[0][0] == "line 5, column 3"
    assert "duplicate key 'name'" in info.value.problems[0][1]


def test_a_document_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as info:
        load_documents("- a\n- b\n", "list.yaml")
    assert info.value.problems == [("document 1", "must be a mapping with apiVersion, kind, metadata, ...")]


def test_timestamps_stay_strings() -> None:
    doc = load_documents("metadata:\n  creationTimestamp: 2024-05-01T10:00:00Z\n  day: 2024-05-01\n")[0]
    assert doc["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"
    assert doc["metadata"]["day"] == "2024-05-01"


def test_parse_resource_requires_api_version_and_kind() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource({"metadata": {"name": "x"}})
    assert info.value.problems == [("apiVersion", "required"), ("kind", "required")]
    assert info.value.subject == 'resource "x"'
    with pytest.raises(ValidationError) as info:
        parse_resource({"apiVersion": "v1", "kind": 3})
    assert info.value.problems == [("kind", "must be a string")]


def test_parse_resource_subject_names_the_object() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource(
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {}}
        )
    assert info.value.subject == 'IPPool "p"'
    assert info.value.problems == [("spec.cidr", "required")]
    assert info.value.hint is None  # the name is there: no patch hint


def test_parse_documents_reports_every_problem_of_every_document() -> None:
    text = """\
apiVersion: v1
kind: Namespace
metadata: {name: ok}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.0.0.0/16, blockSize: 99, ipipMode: Sometimes}
---
apiVersion: projectcalico.org/v3
kind: IPPol
metadata: {name: typo}
---
apiVersion: v1
kind: Namespace
metadata: {name: Bad_Name}
"""
    with pytest.raises(DocumentsError) as info:
        parse_yaml(text, "cluster.yaml")
    error = info.value
    assert isinstance(error, ValidationError)
    assert error.subject == "cluster.yaml"
    assert error.problems[:2] == [
        ('document 2 (IPPool "pool-a") spec.ipipMode', "must be one of Always, CrossSubnet, Never"),
        (
            'document 3 (IPPol "typo") kind',
            'apiVersion: projectcalico.org/v3 has no kind "IPPol"; did you mean IPPool?',
        ),
    ]
    assert error.problems[2][0] == 'document 4 (Namespace "Bad_Name") metadata.name'
    assert [index for index, _ in error.errors] == [2, 3, 4]
    assert error.errors[0][1].problems == [("spec.ipipMode", "must be one of Always, CrossSubnet, Never")]


def test_parse_documents_multiple_problems_in_one_document() -> None:
    docs = load_documents(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n"
        "spec: {cidr: 10.0.0.0/16, ipipMode: x, vxlanMode: y, bogus: 1}\n"
    )
    with pytest.raises(DocumentsError) as info:
        parse_documents(docs, "f.yaml")
    assert [p for p, _ in info.value.problems] == [
        'document 1 (IPPool "p") spec.ipipMode',
        'document 1 (IPPool "p") spec.vxlanMode',
        'document 1 (IPPool "p") spec.bogus',
    ]


def test_seed_ippool_through_a_file() -> None:
    text = (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\n"
        "spec:\n  ipipMode: CrossSubnet\n  natOutgoing: true\n"
    )
    with pytest.raises(DocumentsError) as info:
        parse_yaml(text, "seed.yaml")
    paths = [p for p, _ in info.value.problems]
    assert paths == ["document 1 (IPPool) metadata.name", "document 1 (IPPool) spec.cidr"]
    assert info.value.hint is not None
    assert "podnet patch ippool default-ipv4-ippool -p" in info.value.hint


def test_patch_hint_is_generic_and_quotes_for_the_shell() -> None:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "prod"},
        "spec": {"selector": "app == 'db'"},
    }
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    assert info.value.problems == [("metadata.name", "required")]
    hint = info.value.hint
    assert hint is not None
    assert hint.startswith("add metadata.name to create the NetworkPolicy (e.g. metadata.name: <name>)")
    assert hint.endswith(
        'podnet patch networkpolicy <name> -n prod -p \'{"spec": {"selector": "app == \'"\'"\'db\'"\'"\'"}}\''
    )


def test_no_patch_hint_without_a_spec() -> None:
    with pytest.raises(ValidationError) as info:
        parse_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {}})
    assert info.value.hint is None


def test_dump_yaml_orders_keys_and_separates_documents() -> None:
    pool = IPPool.from_dict(
        {
            "spec": {"cidr": "10.0.0.0/16"},
            "metadata": {"name": "p"},
            "kind": "IPPool",
            "apiVersion": "projectcalico.org/v3",
        }
    )
    text = dump_yaml(
        [Namespace.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}), pool]
    )
    assert text.startswith(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n"
        "    kubernetes.io/metadata.name: a\n---\n"
    )
    second = text.split("---\n")[1]
    assert [line.split(":")[0] for line in second.splitlines() if not line.startswith(" ")] == [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
    ]
    assert "{" not in text  # block style
    assert parse_yaml(text) == [parse_resource(d) for d in load_documents(text)]


def test_dump_yaml_quotes_strings_that_look_like_other_types() -> None:
    resource = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "a", "labels": {"on": "true", "v": "1.0"}},
        }
    )
    text = dump_yaml([resource])
    assert "'on': 'true'" in text
    assert "v: '1.0'" in text
    assert parse_yaml(text) == [resource]


def test_with_namespace_places_a_namespaced_resource() -> None:
    pod = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}]},
        }
    )
    assert pod.namespace is None
    placed = pod.with_namespace("team-a")
    assert placed.namespace == "team-a"
    assert placed.spec == pod.spec  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="cluster-scoped"):
        Namespace.from_dict(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
        ).with_namespace("x")


def test_resource_from_stored() -> None:
    pool = IPPool.from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.0.0.0/16"},
        }
    )
    assert resource_from_stored(pool.to_dict()) == pool
    broken = pool.to_dict()
    broken["spec"]["blockSize"] = 99
    with pytest.raises(ValidationError) as info:
        resource_from_stored(broken)
    assert info.value.subject == 'stored IPPool "p"'
    assert info.value.problems == [("spec.blockSize", "must be between 20 and 32 for IPv4")]
