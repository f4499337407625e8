"""Cilium's HTTP rules (``toPorts[].rules.http``) in one normalised form, and what they mean (pure).

An entry's fields are ANDed, a port's entries ORed (Cilium's ``layer7.rst``):

- ``method``, ``path``, ``host``: regular expressions matched against the **whole** request method,
  path (with its query string: Envoy's ``:path``) and ``Host`` header — Envoy's ``safe_regex`` is a
  full match, so ``/api/v1/*`` (``/api/v1`` then any number of ``/``) matches ``/api/v1`` and
  ``/api/v1//``, not ``/api/v1/x``, and not ``/api/v1?q=1``;
- ``headers``: ``"Name"`` (present) or ``"Name: value"`` (that exact value);
- ``headerMatches`` without a ``mismatch`` action (Cilium's default FAIL): the header must have the
  value (a ``secret``-sourced value is not supported here: such a rule matches nothing, fail closed);
  with an action (LOG, ADD, DELETE, REPLACE) the request is not refused over it, so it does not
  take part in the match.

An L4-only rule on the same port as an L7 rule makes the L7 part have no effect (Cilium): an
empty rule list, :data:`ALLOW_ALL`, matches every request. Header names compare case-insensitively,
values exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from podnet.calc.policymap import EGRESS, INGRESS

#: The rules of a port that an L4-only rule also allows: every request passes.
ALLOW_ALL: tuple[HttpRule, ...] = ()
#: The node's proxy listeners: the port a redirect entry of each direction sends its traffic to.
PROXY_PORTS = {INGRESS: 15001, EGRESS: 15002}


@dataclass(frozen=True)
class HttpRule:
    """One ``rules.http`` entry. ``headers``: (lower-case name, exact value or None for present)."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()
    #: a field this profile cannot check (a secret-sourced value): the rule matches nothing
    unmatchable: bool = False


@dataclass(frozen=True)
class L7Part:
    """An L7 section of one endpoint's policy: its ``direction`` traffic with ``peer`` (0: any) on
    (``protocol``, ``port``, ``prefix``) goes to the proxy, which lets through what ``rules`` match.
    ``provenance``: the section's name (``cnp:<ns>/<name>:<section>:<index>``)."""

    direction: str
    peer: int
    protocol: int
    port: int
    prefix: int
    rules: tuple[HttpRule, ...]
    provenance: str


@dataclass(frozen=True)
class HttpRequest:
    """What a rule is checked against: method, path with query, Host, headers (any case)."""

    method: str
    path: str
    host: str = ""
    headers: Mapping[str, str] | None = None


def http_rules(entries: Iterable[Any]) -> tuple[HttpRule, ...]:
    """The normalised form of a port's ``rules.http`` entries (``PortRuleHTTP`` models)."""
    out = []
    for entry in entries:
        headers: list[tuple[str, str | None]] = []
        for text in entry.headers or []:
            name, colon, value = text.partition(":")
            headers.append((name.strip().lower(), value.strip() if colon else None))
        unmatchable = False
        for match in entry.header_matches or []:
            if match.mismatch is not None:
                continue  # LOG/ADD/DELETE/REPLACE: never a refusal
            if match.secret is not None:
                unmatchable = True
                continue
            headers.append((match.name.lower(), match.value or ""))
        out.append(HttpRule(entry.method, entry.path, entry.host, tuple(headers), unmatchable))
    return tuple(out)


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def rule_matches(rule: HttpRule, request: HttpRequest) -> bool:
    """Whether every field of ``rule`` matches ``request`` (full-match regexes, exact headers)."""
    if rule.unmatchable:
        return False
    for pattern, value in (
        (rule.method, request.method),
        (rule.path, request.path),
        (rule.host, request.host),
    ):
        if pattern is not None and _regex(pattern).fullmatch(value) is None:
            return False
    headers = {k.lower(): v for k, v in (request.headers or {}).items()}
    for name, value in rule.headers:
        if name not in headers or (value is not None and headers[name] != value):
            return False
    return True


def allowed(rules: tuple[HttpRule, ...], request: HttpRequest) -> int | None:
    """The index of the first rule that matches ``request`` (-1 for :data:`ALLOW_ALL`), or None:
    the request is refused with 403."""
    if not rules:
        return -1
    for index, rule in enumerate(rules):
        if rule_matches(rule, request):
            return index
    return None
