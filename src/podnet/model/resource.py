"""The common shape of every podnet resource: ``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``.

Each kind subclasses :class:`Resource`, declares its ``spec`` (and ``status`` when it has one) and sets
four class constants the registry and the validators read::

    KIND          "IPPool"
    API_VERSIONS  ("projectcalico.org/v3",)   first one is written by to_dict()
    NAMESPACED    False
    NAME_RULE     "subdomain" | "label" | "dns1035" | "calico-policy"   (see names.py)

Defaults (Kubernetes' and Calico's) are applied while parsing, so ``to_dict()`` (and therefore
``podnet get -o yaml``) shows the effective object, and ``parse(to_dict(x)) == x``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import pydantic
from pydantic import Field, field_validator

from podnet.errors import ValidationError
from podnet.model.base import ApiModel
from podnet.model.meta import ObjectMeta
from podnet.model.names import NameRule, name_problem
from podnet.model.problems import Problems, problems_from_pydantic

TOP_LEVEL_ORDER = ("apiVersion", "kind", "metadata", "spec", "status")


def describe_document(kind: str | None, name: str | None) -> str:
    """``IPPool "pool-a"``, or ``IPPool (no name)`` when the document has no name yet."""
    kind = kind or "resource"
    return f'{kind} "{name}"' if name else f"{kind} (no name)"


class Resource(ApiModel):
    """Base class of every kind. Use ``from_dict`` to parse, ``to_dict`` to serialise."""

    KIND: ClassVar[str] = ""
    API_VERSIONS: ClassVar[tuple[str, ...]] = ()
    NAMESPACED: ClassVar[bool] = True
    NAME_RULE: ClassVar[NameRule] = "subdomain"

    api_version: str = Field(default=None, alias="apiVersion", validate_default=True)  # type: ignore[assignment]
    kind: str = Field(default=None, validate_default=True)  # type: ignore[assignment]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, validate_default=True)

    @field_validator("api_version", mode="before")
    @classmethod
    def _fill_api_version(cls, value: Any) -> Any:
        if value is None:
            return cls.API_VERSIONS[0]
        if value not in cls.API_VERSIONS:
            raise ValueError(f"must be {' or '.join(cls.API_VERSIONS)} for kind {cls.KIND}")
        return value

    @field_validator("kind", mode="before")
    @classmethod
    def _fill_kind(cls, value: Any) -> Any:
        if value is None:
            return cls.KIND
        if value != cls.KIND:
            raise ValueError(f"must be {cls.KIND}")
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, meta: ObjectMeta) -> ObjectMeta:
        problems = Problems()
        if meta.name is None:
            if not meta.generate_name:
                problems.add("name", "required")
        else:
            problem = name_problem(meta.name, cls.NAME_RULE)
            if problem:
                problems.add("name", problem)
        if meta.generate_name:
            problem = name_problem(meta.generate_name.rstrip("-") or "x", cls.NAME_RULE)
            if problem:
                problems.add("generateName", problem)
        if meta.namespace is not None and not cls.NAMESPACED:
            problems.add("namespace", f"must not be set: {cls.KIND} is cluster-scoped")
        cls.check_kind_metadata(meta, problems)
        problems.raise_if_any()
        return meta

    @classmethod
    def check_kind_metadata(cls, meta: ObjectMeta, problems: Problems) -> None:
        """Hook for kinds with rules of their own about metadata (e.g. Node annotations)."""

    # --- convenience ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.name or ""

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    def describe(self) -> str:
        """``IPPool "pool-a"`` (used in messages)."""
        return describe_document(self.KIND, self.metadata.name)

    def with_namespace(self, namespace: str) -> Self:
        """A copy placed in ``namespace`` (for namespaced kinds whose document named none)."""
        if not self.NAMESPACED:
            raise ValueError(f"{self.KIND} is cluster-scoped")
        return type(self).from_dict(
            {**self.to_dict(), "metadata": {**self.metadata_dict(), "namespace": namespace}}
        )

    def metadata_dict(self) -> dict[str, Any]:
        return self.metadata.model_dump(mode="json", by_alias=True, exclude_none=True)

    # --- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: YAML names, ``None`` omitted, keys apiVersion/kind/metadata/spec/status."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        ordered = {key: data.pop(key) for key in TOP_LEVEL_ORDER if key in data}
        ordered.update(data)
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validate a document of this kind; raise podnet's ValidationError listing every problem."""
        context = {"name_rule": cls.NAME_RULE, "namespaced": cls.NAMESPACED, "kind": cls.KIND}
        try:
            # by_name=False: documents must use the YAML names (ipipMode, not ipip_mode).
            return cls.model_validate(data, context=context, by_alias=True, by_name=False)
        except pydantic.ValidationError as exc:
            name = None
            if isinstance(data, Mapping) and isinstance(data.get("metadata"), Mapping):
                name = data["metadata"].get("name")
            subject = describe_document(cls.KIND, name if isinstance(name, str) else None)
            raise ValidationError(problems_from_pydantic(exc, cls), subject=subject) from None
