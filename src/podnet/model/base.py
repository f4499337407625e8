"""The one pydantic configuration every podnet API object shares.

- ``extra="forbid"``: an unknown or misspelt key is an error, never silently dropped.
- ``strict=True``: ``"80"`` is not an integer and ``"yes"`` is not a boolean; YAML values keep the
  type the user wrote, as the Kubernetes API server would see them.
- camelCase aliases (the YAML names) generated from snake_case attributes; acronyms that the real
  APIs spell differently (``hostIP``, ``podCIDR``, ``toFQDNs``) set their alias explicitly.
- ``populate_by_name``: Python code may construct objects with attribute names.
- Opaque fields (typed ``Any``: Kubernetes fields podnet keeps but does not interpret) must hold
  JSON values: ``.inf``/``.nan`` or a non-string key would not survive ``to_dict`` and the datastore.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

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


class ApiModel(BaseModel):
    """Base class of every object in a podnet resource (metadata, specs, rules, ...)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )

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
