"""Cilium's DNS names in policy (``rules.dns`` and ``toFQDNs``): which names a selector matches (pure).

- ``matchName``: that name exactly (case-insensitive; a trailing dot changes nothing);
- ``matchPattern``: ``*`` stands for any run of DNS name characters **within one label**
  (``*.example.test`` matches ``api.example.test``, not ``example.test`` nor ``a.b.example.test``;
  ``api-*.example.test`` matches ``api-1.example.test``); ``*`` alone matches every name.

A DNS rule list allows a lookup when any selector matches its name (an empty list: none); the DNS
proxy refuses the others (REFUSED). These are Cilium's semantics (``pkg/fqdn/matchpattern``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_LABEL_CHARS = "[-a-zA-Z0-9_]"


def normalize(name: str) -> str:
    """Lower case, one trailing dot: how names are compared (``Api.Example.Test`` → ``api.example.test.``)."""
    return name.lower().rstrip(".") + "."


@lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The full-match regex of a ``matchPattern`` (over normalised names)."""
    text = normalize(pattern)
    if text == "*.":
        return re.compile(rf"(?:{_LABEL_CHARS}+\.)+|\.")
    parts = [re.escape(piece) for piece in text.split("*")]
    return re.compile(f"{_LABEL_CHARS}*".join(parts))


def matches(selector: Any, name: str) -> bool:
    """Whether an ``FQDNSelector`` (``match_name`` or ``match_pattern``) matches ``name``."""
    wanted = normalize(name)
    if selector.match_name is not None:
        return normalize(selector.match_name) == wanted
    if selector.match_pattern is not None:
        return pattern_regex(selector.match_pattern).fullmatch(wanted) is not None
    return False


def allowed(selectors: Iterable[Any], name: str) -> bool:
    """Whether a lookup of ``name`` passes the DNS rules ``selectors`` (any one matching)."""
    return any(matches(selector, name) for selector in selectors)


#: The node's DNS proxy listener (UDP and TCP): where a DNS rule's redirect entry sends lookups.
DNS_PROXY_PORT = 15053


@dataclass(frozen=True)
class DnsSelector:
    """One ``rules.dns`` entry, normalised (hashable): ``match_name`` or ``match_pattern``."""

    match_name: str | None = None
    match_pattern: str | None = None


def dns_selectors(entries: Iterable[Any]) -> tuple[DnsSelector, ...]:
    """A port's ``rules.dns`` entries (``FQDNSelector`` models) as :class:`DnsSelector`."""
    return tuple(DnsSelector(e.match_name, e.match_pattern) for e in entries)


@dataclass(frozen=True)
class DnsPart:
    """A DNS section of one endpoint's egress policy: lookups to ``peer`` (0: any) on (``protocol``,
    ``port``, ``prefix``) go to the DNS proxy, which answers REFUSED unless ``selectors`` allow the
    name. ``provenance``: the section's name."""

    peer: int
    protocol: int
    port: int
    prefix: int
    selectors: tuple[DnsSelector, ...]
    provenance: str
