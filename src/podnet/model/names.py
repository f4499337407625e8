"""Kubernetes naming rules: object names, label keys and values, annotation keys, port names.

Each ``*_problem`` function returns ``None`` for a valid value or a message that says what is wrong,
worded like the Kubernetes API server's. The ``check_*_map`` functions validate whole maps (labels,
annotations, selectors) and report each bad entry under ``[key]``, the ``field.Path`` convention.

    DNS-1123 label      [a-z0-9]([-a-z0-9]*[a-z0-9])?                ≤ 63   Namespace, container names
    DNS-1123 subdomain  labels joined by '.'                          ≤ 253  most object names
    DNS-1035 label      [a-z]([-a-z0-9]*[a-z0-9])?                   ≤ 63   Service names
    Calico policy name  label or label.label                                (Global)NetworkPolicy
    qualified name      [prefix/]name, name ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9] ≤ 63
    label value         empty or like a qualified name's name part   ≤ 63
    IANA_SVC_NAME       [a-z0-9]([a-z0-9-]*[a-z0-9])?, no '--', one letter at least, ≤ 15
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from podnet.model.problems import Problems

NameRule = Literal["subdomain", "label", "dns1035", "calico-policy"]

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_CILIUM_SOURCE = re.compile(r"([a-z0-9][-a-z0-9]*):")

MAX_ANNOTATIONS_BYTES = 256 * 1024


def dns1123_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1035_label_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            "must be a lowercase RFC 1035 label: lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def calico_policy_name_problem(value: str) -> str | None:
    """Calico policy names: one DNS-1123 label, or two joined by a dot (``tier.name``)."""
    parts = value.split(".")
    if len(parts) > 2 or any(dns1123_label_problem(p) for p in parts):
        return (
            "must be a lowercase RFC 1123 label (letters, digits and '-'), optionally prefixed "
            "with a tier name and a dot"
        )
    return None


def name_problem(value: str, rule: NameRule) -> str | None:
    """Check an object name against the kind's rule (``subdomain``, ``label`` or ``dns1035``)."""
    if value == "":
        return "must not be empty"
    if rule == "label":
        return dns1123_label_problem(value)
    if rule == "dns1035":
        return dns1035_label_problem(value)
    if rule == "calico-policy":
        return calico_policy_name_problem(value)
    return dns1123_subdomain_problem(value)


def qualified_name_problem(key: str) -> str | None:
    """A label or annotation key: optional DNS-subdomain prefix, '/', a name of ≤ 63 characters."""
    if key.count("/") > 1:
        return "a key may contain at most one '/' (prefix/name)"
    prefix, _, name = key.rpartition("/")
    if "/" in key:
        if not prefix:
            return "prefix before '/' must not be empty"
        problem = dns1123_subdomain_problem(prefix)
        if problem:
            return f"prefix part {problem}"
    if not name:
        return "name part must not be empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return (
            "a label value must be empty or consist of alphanumeric characters, '-', '_' or '.', "
            "and must start and end with an alphanumeric character"
        )
    return None


def split_cilium_source(key: str) -> tuple[str | None, str]:
    """``"k8s:app"`` → ``("k8s", "app")``; ``"app"`` → ``(None, "app")`` (Cilium label sources)."""
    match = _CILIUM_SOURCE.match(key)
    if match:
        return match.group(1), key[match.end() :]
    return None, key


def selector_key_problem(key: str, allow_source_prefix: bool = False) -> str | None:
    """A selector key is a label key; Cilium's may carry a source prefix (``k8s:``, ``any:``)."""
    if allow_source_prefix:
        _, key = split_cilium_source(key)
    return qualified_name_problem(key)


def iana_svc_name_problem(value: str) -> str | None:
    """A named port (IANA_SVC_NAME): ≤ 15 lowercase letters, digits and '-', with a letter."""
    if len(value) > 15:
        return "a port name must be no more than 15 characters"
    if not _IANA_SVC_NAME.fullmatch(value):
        return (
            "a port name must contain only lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    if "--" in value:
        return "a port name must not contain consecutive '-'"
    if not any(c.isalpha() for c in value):
        return "a port name must contain at least one letter (write a port number without quotes)"
    return None


def is_iana_svc_name(value: str) -> bool:
    return iana_svc_name_problem(value) is None


def _string_entries(value: Any, problems: Problems) -> Iterator[tuple[str, str]]:
    """The string entries of a map, in order; a non-string key or value is reported as it is met."""
    if not isinstance(value, dict):
        problems.add("", "must be a mapping")
        return
    for key, item in value.items():
        if not isinstance(key, str):
            problems.add(f"[{key}]", "key must be a string (quote it in YAML)")
        elif not isinstance(item, str):
            hint = " (quote the value in YAML)" if isinstance(item, bool | int | float) else ""
            problems.add(f"[{key}]", f"must be a string{hint}")
        else:
            yield key, item


def check_label_map(value: Any, allow_source_prefix: bool = False) -> Any:
    """Before-validator for labels and ``matchLabels``-style maps (Kubernetes label rules)."""
    if value is None:
        return value
    problems = Problems()
    for key, item in _string_entries(value, problems):
        key_problem = selector_key_problem(key, allow_source_prefix)
        if key_problem:
            problems.add(f"[{key}]", f"invalid key: {key_problem}")
        value_problem = label_value_problem(item)
        if value_problem:
            problems.add(f"[{key}]", value_problem)
    problems.raise_if_any()
    return value


def check_endpoint_label_map(value: Any) -> Any:
    """Like :func:`check_label_map` but keys may carry a Cilium source prefix."""
    return check_label_map(value, allow_source_prefix=True)


def check_annotation_map(value: Any) -> Any:
    """Before-validator for annotations: qualified-name keys, any string values, <= 256 KiB total."""
    if value is None:
        return value
    problems = Problems()
    total = 0
    for key, item in _string_entries(value, problems):
        key_problem = qualified_name_problem(key)
        if key_problem:
            problems.add(f"[{key}]", f"invalid key: {key_problem}")
        try:
            total += len(key) + len(item.encode())
        except UnicodeEncodeError:  # "\uD800" in YAML: not text that can be stored or printed
            problems.add(f"[{key}]", "must be valid Unicode text (no lone surrogates)")
    if total > MAX_ANNOTATIONS_BYTES:
        problems.add("", f"annotations must be at most {MAX_ANNOTATIONS_BYTES} bytes in total")
    problems.raise_if_any()
    return value


def check_string_map(value: Any) -> Any:
    """Before-validator for a map of strings with no other rules."""
    if value is None:
        return value
    problems = Problems()
    for _ in _string_entries(value, problems):
        pass
    problems.raise_if_any()
    return value
