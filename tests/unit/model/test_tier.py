"""projectcalico.org/v3 Tier: defaults, Calico's rules for the built-in tiers, the tier table."""

from __future__ import annotations

import math
from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import BUILTIN_TIERS, Tier, TierInfo, parse_resource, tier_table


def builtin(name: str) -> str:
    return f" (a tier with the name {name} is built in)"


def tier(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": name}}
    if spec is not None:
        doc["spec"] = spec
    return doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def test_defaults_deny_and_no_order() -> None:
    parsed = parse_resource(tier("security"))
    assert isinstance(parsed, Tier)
    assert (parsed.spec.order, parsed.spec.default_action) == (None, "Deny")
    assert parsed.to_dict()["spec"] == {"defaultAction": "Deny"}


def test_order_is_written_as_given() -> None:
    assert parse_resource(tier("a", {"order": 100})).to_dict()["spec"]["order"] == 100
    assert parse_resource(tier("a", {"order": 100.5})).to_dict()["spec"]["order"] == 100.5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"order": math.inf}, ("spec.order", "must be a finite number")),
        ({"order": "10"}, ("spec.order", "must be a number")),
        ({"defaultAction": "Allow"}, ("spec.defaultAction", "must be one of Deny, Pass")),
        ({"defaultActon": "Pass"}, ("spec.defaultActon", "unknown field (did you mean defaultAction?)")),
    ],
)
def test_spec_problems_name_the_field(spec: dict[str, Any], expected: tuple[str, str]) -> None:
    [(path, message)] = problems(tier("a", spec))
    assert (path, message[: len(expected[1])]) == expected


def test_names_are_labels_without_dots() -> None:
    [(path, message)] = problems(tier("team.a"))
    assert path == "metadata.name" and "RFC 1123 label" in message
    [(path, _)] = problems(tier("x" * 64))
    assert path == "metadata.name"
    assert problems({**tier("a"), "metadata": {"name": "a", "namespace": "x"}}) == [
        ("metadata.namespace", "must not be set: Tier is cluster-scoped")
    ]


def test_builtin_tiers_have_calicos_order_and_action() -> None:
    assert {n: (t.order, t.default_action) for n, t in BUILTIN_TIERS.items()} == {
        "kube-admin": (1000.0, "Pass"),
        "default": (1_000_000.0, "Deny"),
        "kube-baseline": (10_000_000.0, "Pass"),
    }
    for name, info in BUILTIN_TIERS.items():
        stored = parse_resource(tier(name, {"order": info.order, "defaultAction": info.default_action}))
        assert TierInfo.of(stored) == info  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        (
            "default",
            {"order": 1000000, "defaultAction": "Pass"},
            [
                (
                    "spec.defaultAction",
                    "The 'default' tier must have default action 'Deny'" + builtin("default"),
                ),
            ],
        ),
        (
            "default",
            {},
            [("spec.order", "default tier order must be 1000000" + builtin("default"))],
        ),
        (
            "kube-admin",
            {"order": 1000},
            [
                (
                    "spec.defaultAction",
                    "The 'kube-admin' tier must have default action 'Pass'" + builtin("kube-admin"),
                ),
            ],
        ),
        (
            "kube-admin",
            {"order": 5, "defaultAction": "Pass"},
            [
                (
                    "spec.order",
                    "kube-admin tier order must be 1000" + builtin("kube-admin"),
                )
            ],
        ),
        (
            "kube-baseline",
            {"defaultAction": "Deny"},
            [
                (
                    "spec.defaultAction",
                    "The 'kube-baseline' tier must have default action 'Pass'" + builtin("kube-baseline"),
                ),
                (
                    "spec.order",
                    "kube-baseline tier order must be 10000000" + builtin("kube-baseline"),
                ),
            ],
        ),
    ],
)
def test_builtin_tiers_refuse_another_order_or_action(
    name: str, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert problems(tier(name, spec)) == expected


def test_tier_table_adds_the_builtin_tiers_and_sorts_by_order_then_name() -> None:
    stored = [
        parse_resource(tier(name, spec))
        for name, spec in (
            ("zeta", {"order": 100}),
            ("alpha", {"order": 100, "defaultAction": "Pass"}),
            ("unordered", {}),
            ("late", {"order": 2e7}),
        )
    ]
    table = tier_table(stored)  # type: ignore[arg-type]
    ordered = [t.name for t in sorted(table.values(), key=lambda t: t.sort_key)]
    assert ordered == ["alpha", "zeta", "kube-admin", "default", "kube-baseline", "late", "unordered"]
    assert table["alpha"].default_action == "Pass"
    assert tier_table([]) == BUILTIN_TIERS
