"""``metadata``: the ObjectMeta every resource carries.

Modelled: ``name``, ``generateName``, ``namespace``, ``labels``, ``annotations``, ``uid``,
``resourceVersion``, ``generation``, ``creationTimestamp``, ``deletionTimestamp``,
``deletionGracePeriodSeconds``, ``finalizers``. ``ownerReferences`` and ``managedFields`` are accepted
as opaque values so that ``kubectl get -o yaml`` output applies unchanged.

Which name rule applies (DNS-1123 subdomain, label, DNS-1035 label, Calico policy name) and whether
a namespace is allowed depend on the kind: ``Resource.from_dict`` passes them in the validation
context so they are checked here, next to labels and annotations, and every problem of the metadata
is reported at once. :class:`podnet.model.resource.Resource` checks them again for objects built in
Python (no context).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator

from podnet.model.base import ApiModel
from podnet.model.fields import AnnotationMap, LabelMap
from podnet.model.names import dns1123_label_problem, name_problem


def _rfc3339(value: Any) -> Any:
    """Timestamps stay strings; a datetime (from a YAML loader that parses them) becomes RFC 3339."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _version_string(value: Any) -> Any:
    """``resourceVersion: 42`` written without quotes is still the version "42"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Timestamp = Annotated[str, BeforeValidator(_rfc3339)]


class ObjectMeta(ApiModel):
    """Kubernetes ObjectMeta (the fields podnet reads or writes, plus opaque bookkeeping)."""

    generate_name: str | None = None
    name: str | None = Field(default=None, validate_default=True)
    namespace: str | None = None
    labels: LabelMap | None = None
    annotations: AnnotationMap | None = None
    uid: str | None = None
    resource_version: Annotated[str, BeforeValidator(_version_string)] | None = None
    generation: int | None = None
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] | None = None
    owner_references: Any = None
    managed_fields: Any = None
    self_link: str | None = Field(default=None, description="deprecated; accepted from old kubectl output")

    @field_validator("name")
    @classmethod
    def _name_follows_the_kind_rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        """With a parse context (``Resource.from_dict``), check the name by the kind's rule here, so
        a bad name is reported together with any other metadata problem."""
        context = info.context if isinstance(info.context, dict) else {}
        rule = context.get("name_rule")
        if rule is None:
            return value
        if value is None:
            if not info.data.get("generate_name"):
                raise ValueError("required")
            return value
        problem = name_problem(value, rule)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            context = info.context if isinstance(info.context, dict) else {}
            if context.get("namespaced") is False:
                raise ValueError(f"must not be set: {context.get('kind', 'this kind')} is cluster-scoped")
            problem = dns1123_label_problem(value) if value else "must not be empty"
            if problem:
                raise ValueError(problem)
        return value
