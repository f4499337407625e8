"""The one pydantic configuration every podnet API object shares.

- ``extra="forbid"``: an unknown or misspelt key is an error, never silently dropped.
- ``strict=True``: ``"80"`` is not an integer and ``"yes"`` is not a boolean; YAML values keep the
  type the user wrote, as the Kubernetes API server would see them.
- camelCase aliases (the YAML names) generated from snake_case attributes; acronyms that the real
  APIs spell differently (``hostIP``, ``podCIDR``, ``toFQDNs``) set their alias explicitly.
- ``populate_by_name``: Python code may construct objects with attribute names.
- ``defer_build``: a model's validator is built when it is first used, not at import.
- Opaque fields (typed ``Any``: Kubernetes fields podnet keeps but does not interpret) must hold
  JSON values: ``.inf``/``.nan`` or a non-string key would not survive ``to_dict`` and the datastore.
- ``null`` decodes as the Kubernetes API server (Go's JSON) decodes it: an optional field given
  ``null`` is absent (its default applies); a required mapping or object is ``{}`` and a required
  list ``[]`` (``podSelector: null`` selects every pod, as ``{}`` does); a required scalar is
  missing ("required").
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from podnet.model.problems import Problems, join_path, printable


def _is_text(text: str) -> bool:
    """Encodable as UTF-8 (JSON, etcd and YAML output need it; a lone surrogate is not)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _not_json(value: Any) -> tuple[str, str] | None:
    """Where and why ``value`` is not a JSON value (``None`` when it is one)."""
    if isinstance(value, str):
        return None if _is_text(value) else ("", "is not valid Unicode text (a lone surrogate)")
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", "must be a finite number (JSON has no inf or nan)")
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _not_json(item)
            if found:
                return join_path(f"[{index}]", found[0]), found[1]
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"[{key}]", "key must be a string (quote it in YAML)"
            if not _is_text(key):
                return f"[{printable(key)}]", "key is not valid Unicode text (a lone surrogate)"
            found = _not_json(item)
            if found:
                return join_path(f"[{key}]", found[0]), found[1]
        return None
    return "", "must be a JSON value (a string, number, boolean, list or mapping)"


def _unwrap(annotation: Any) -> Any:
    """The type under ``Annotated[...]`` (validators and aliases stripped)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _null_as(field: FieldInfo) -> Callable[[], Any] | None:
    """What ``null`` decodes to for this field: ``dict`` or ``list`` (a factory of the empty value),
    or ``None``: the field is left out."""
    if not field.is_required():
        return None
    annotation = _unwrap(field.annotation)
    origin = typing.get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, BaseModel | dict | Mapping):
        return dict
    if origin is list:
        return list
    return None


_NULL_RULES: dict[type, dict[str, Callable[[], Any] | None]] = {}


def _null_rules(cls: type[BaseModel]) -> dict[str, Callable[[], Any] | None]:
    """Per class, by YAML name and attribute name: what a ``null`` value decodes to."""
    rules = _NULL_RULES.get(cls)
    if rules is None:
        rules = {}
        for name, field in cls.model_fields.items():
            rules[name] = rules[field.alias or name] = _null_as(field)
        _NULL_RULES[cls] = rules
    return rules


class ApiModel(BaseModel):
    """Base class of every object in a podnet resource (metadata, specs, rules, ...)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
        # Validators are built on a model's first use, not at import: a process builds only the
        # kinds it meets (an agent's import of the whole model cost ~20 MiB of RSS; issue 18).
        defer_build=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        """``null`` as the API server decodes it (see the module docstring)."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        rules = _null_rules(cls)
        decoded = {}
        for key, value in data.items():
            if value is None and key in rules:
                empty = rules[key]
                if empty is None:
                    continue
                value = empty()
            decoded[key] = value
        return decoded

    @model_validator(mode="after")
    def _opaque_values_are_json(self) -> Any:
        problems = Problems()
        for name, field in type(self).model_fields.items():
            if field.annotation is Any:
                found = _not_json(getattr(self, name))
                if found:
                    problems.add(join_path(field.alias or name, found[0]), found[1])
        problems.raise_if_any()
        return self
