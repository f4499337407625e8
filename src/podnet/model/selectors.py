"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``) and their evaluation.

A selector matches a set of labels when every ``matchLabels`` pair is present with that value and
every expression holds:

    In            key present and its value in ``values``        (values must not be empty)
    NotIn         key absent, or its value not in ``values``     (values must not be empty)
    Exists        key present                                    (no values)
    DoesNotExist  key absent                                     (no values)

The empty selector ``{}`` matches everything. (A *missing* selector means something different in
each API; that is for the policy calculation to decide, not this module.)

:class:`EndpointSelector` is Cilium's variant: keys may carry a label source prefix (``k8s:app``,
``any:app``, ``reserved:host``). Matching plain Kubernetes labels treats ``k8s:`` and ``any:`` as
"this label from Kubernetes"; other sources only match a label stored under the full prefixed key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, model_validator

from podnet.model.base import ApiModel
from podnet.model.names import (
    check_endpoint_label_map,
    check_label_map,
    label_value_problem,
    selector_key_problem,
    split_cilium_source,
)
from podnet.model.problems import Problems

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class LabelSelectorRequirement(ApiModel):
    """One ``matchExpressions`` entry: ``key``, ``operator`` and (for In/NotIn) ``values``."""

    key: str
    operator: Operator
    values: list[str] | None = None

    ALLOW_SOURCE_PREFIX: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        problems = Problems()
        key_problem = selector_key_problem(self.key, self.ALLOW_SOURCE_PREFIX)
        if key_problem:
            problems.add("key", key_problem)
        if self.operator in ("In", "NotIn"):
            if not self.values:
                problems.add("values", f"must not be empty when operator is {self.operator}")
        elif self.values:
            problems.add("values", f"must be empty when operator is {self.operator}")
        for i, value in enumerate(self.values or []):
            value_problem = label_value_problem(value)
            if value_problem:
                problems.add(f"values[{i}]", value_problem)
        problems.raise_if_any()
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = _lookup(labels, self.key, self.ALLOW_SOURCE_PREFIX)
        if self.operator == "In":
            return value is not None and value in (self.values or [])
        if self.operator == "NotIn":
            return value is None or value not in (self.values or [])
        if self.operator == "Exists":
            return value is not None
        return value is None


class EndpointSelectorRequirement(LabelSelectorRequirement):
    """A ``matchExpressions`` entry of a Cilium endpoint selector (keys may have a source prefix)."""

    ALLOW_SOURCE_PREFIX: ClassVar[bool] = True


def _lookup(labels: Mapping[str, str], key: str, allow_source_prefix: bool) -> str | None:
    if key in labels:
        return labels[key]
    if allow_source_prefix:
        source, bare = split_cilium_source(key)
        if source in ("k8s", "any"):
            return labels.get(bare)
    return None


class LabelSelector(ApiModel):
    """A Kubernetes ``LabelSelector``; ``matches(labels)`` evaluates it."""

    match_labels: Annotated[dict[str, str], BeforeValidator(check_label_map)] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None

    def is_empty(self) -> bool:
        """True for ``{}``: selects everything."""
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if _lookup(labels, key, self._prefixes()) != value:
                return False
        return all(expr.matches(labels) for expr in self.match_expressions or [])

    @classmethod
    def _prefixes(cls) -> bool:
        return False

    def __str__(self) -> str:
        """kubectl's text form: ``app=web,tier in (a,b),!legacy``; ``<all>`` for ``{}``."""
        parts = [f"{k}={v}" for k, v in (self.match_labels or {}).items()]
        for expr in self.match_expressions or []:
            values = ",".join(expr.values or [])
            parts.append(
                {
                    "In": f"{expr.key} in ({values})",
                    "NotIn": f"{expr.key} notin ({values})",
                    "Exists": expr.key,
                    "DoesNotExist": f"!{expr.key}",
                }[expr.operator]
            )
        return ",".join(parts) or "<all>"


class EndpointSelector(LabelSelector):
    """Cilium's endpoint/node selector: a LabelSelector whose keys may carry ``k8s:``/``any:``."""

    match_labels: Annotated[dict[str, str], BeforeValidator(check_endpoint_label_map)] | None = None
    match_expressions: list[EndpointSelectorRequirement] | None = None  # type: ignore[assignment]

    @classmethod
    def _prefixes(cls) -> bool:
        return True
