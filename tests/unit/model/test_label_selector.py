"""Kubernetes LabelSelector and Cilium EndpointSelector: validation and matching."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.model.problems import problems_from_pydantic
from podnet.model.selectors import EndpointSelector, LabelSelector


def selector(data: dict) -> LabelSelector:
    return LabelSelector.model_validate(data)


def problems(cls: type[pydantic.BaseModel], data: dict) -> list[tuple[str, str]]:
    with pytest.raises(pydantic.ValidationError) as info:
        cls.model_validate(data)
    return problems_from_pydantic(info.value, cls)


def test_empty_selector_matches_everything() -> None:
    empty = selector({})
    assert empty.is_empty()
    assert empty.matches({})
    assert empty.matches({"app": "web"})
    assert str(empty) == "<all>"


def test_match_labels_needs_every_pair() -> None:
    sel = selector({"matchLabels": {"app": "web", "tier": "front"}})
    assert sel.matches({"app": "web", "tier": "front", "extra": "x"})
    assert not sel.matches({"app": "web"})
    assert not sel.matches({"app": "web", "tier": "back"})


@pytest.mark.parametrize(
    ("expression", "labels", "expected"),
    [
        ({"key": "env", "operator": "In", "values": ["prod", "staging"]}, {"env": "prod"}, True),
        ({"key": "env", "operator": "In", "values": ["prod"]}, {"env": "dev"}, False),
        ({"key": "env", "operator": "In", "values": ["prod"]}, {}, False),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "dev"}, True),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {}, True),
        ({"key": "env", "operator": "NotIn", "values": ["prod"]}, {"env": "prod"}, False),
        ({"key": "env", "operator": "Exists"}, {"env": ""}, True),
        ({"key": "env", "operator": "Exists"}, {}, False),
        ({"key": "env", "operator": "DoesNotExist"}, {}, True),
        ({"key": "env", "operator": "DoesNotExist"}, {"env": "x"}, False),
    ],
)
def test_match_expressions(expression: dict, labels: dict, expected: bool) -> None:
    assert selector({"matchExpressions": [expression]}).matches(labels) is expected


def test_labels_and_expressions_are_anded() -> None:
    sel = selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}],
        }
    )
    assert sel.matches({"app": "web"})
    assert not sel.matches({"app": "web", "legacy": "true"})
    assert str(sel) == "app=web,!legacy"


def test_in_and_notin_need_values() -> None:
    assert problems(LabelSelector, {"matchExpressions": [{"key": "a", "operator": "In"}]}) == [
        ("matchExpressions[0].values", "must not be empty when operator is In")
    ]
    assert problems(
        LabelSelector, {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}
    ) == [("matchExpressions[0].values", "must not be empty when operator is NotIn")]


def test_exists_takes_no_values() -> None:
    assert problems(
        LabelSelector, {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
    ) == [("matchExpressions[0].values", "must be empty when operator is Exists")]


def test_unknown_operator_names_the_choices() -> None:
    assert problems(LabelSelector, {"matchExpressions": [{"key": "a", "operator": "Equals"}]}) == [
        ("matchExpressions[0].operator", "must be one of In, NotIn, Exists, DoesNotExist")
    ]


def test_bad_keys_and_values_are_reported_per_key() -> None:
    found = problems(
        LabelSelector, {"matchLabels": {"-bad": "x", "ok": "fine", "version": 1.0, "v": "-also bad-"}}
    )
    assert [p for p, _ in found] == ["matchLabels[-bad]", "matchLabels[version]", "matchLabels[v]"]
    assert found[0][1].startswith("invalid key: name part must consist of alphanumeric")
    assert found[1] == ("matchLabels[version]", "must be a string (quote the value in YAML)")
    assert found[2][1].startswith("a label value must be empty or consist of")


def test_kubernetes_selectors_reject_cilium_source_prefixes() -> None:
    found = problems(LabelSelector, {"matchLabels": {"k8s:app": "web"}})
    assert found[0][0] == "matchLabels[k8s:app]"


def test_endpoint_selector_accepts_source_prefixes_and_matches_plain_labels() -> None:
    sel = EndpointSelector.model_validate(
        {
            "matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system", "any:app": "dns"},
            "matchExpressions": [{"key": "k8s:tier", "operator": "NotIn", "values": ["x"]}],
        }
    )
    assert sel.matches({"io.kubernetes.pod.namespace": "kube-system", "app": "dns"})
    assert not sel.matches({"io.kubernetes.pod.namespace": "default", "app": "dns"})
    assert not sel.matches({"io.kubernetes.pod.namespace": "kube-system", "app": "dns", "tier": "x"})
    # a reserved: label only matches when stored under its full key
    host = EndpointSelector.model_validate({"matchLabels": {"reserved:host": ""}})
    assert host.matches({"reserved:host": ""})
    assert not host.matches({"host": ""})


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=3))
def test_match_labels_is_a_subset_check(labels: dict[str, str]) -> None:
    wanted = {"a": "1", "b": "2"}
    assert selector({"matchLabels": wanted}).matches(labels) == (wanted.items() <= labels.items())
