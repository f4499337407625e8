"""The one pydantic configuration every podnet API object shares.

- ``extra="forbid"``: an unknown or misspelt key is an error, never silently dropped.
- ``strict=True``: ``"80"`` is not an integer and ``"yes"`` is not a boolean; YAML values keep the
  type the user wrote, as the Kubernetes API server would see them.
- camelCase aliases (the YAML names) generated from snake_case attributes; acronyms that the real
  APIs spell differently (``hostIP``, ``podCIDR``, ``toFQDNs``) set their alias explicitly.
- ``populate_by_name``: Python code may construct objects with attribute names.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base class of every object in a podnet resource (metadata, specs, rules, ...)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        populate_by_name=True,
        alias_generator=to_camel,
    )
