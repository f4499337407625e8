"""Flow filters with ``hubble observe``'s semantics, applied by each agent to its flows.

A filter is a list of ``(negated, key, value)`` terms, in the order the command line gave them::

    --verdict DROPPED --verdict REDIRECTED --pod demo/web --not --protocol udp
    → [(False, "verdict", "DROPPED"), (False, "verdict", "REDIRECTED"),
       (False, "pod", "demo/web"), (True, "protocol", "udp")]

A flow passes when, for every key among the plain terms, one of that key's values matches (values
of one key are ORed, keys ANDed), and no negated term matches (``--not`` negates the one filter
after it). Keys (:data:`KEYS`):

    verdict       FORWARDED | DROPPED | REDIRECTED | AUDIT
    type          trace | drop | l7 | policy-verdict | log
    protocol      tcp | udp | icmp | sctp | http | dns
    pod           [ns/]name-prefix on either side (no namespace: ``default``, as Hubble)
    from-pod, to-pod                       the source (initiator) / destination side only
    namespace     either side's namespace (``-n``)
    label         ``key=value`` / ``key`` on either side (``from-label``, ``to-label``)
    ip            either side's address (``from-ip``, ``to-ip``); a CIDR matches its addresses
    port          either side's L4 port (``from-port``, ``to-port``)
    node-name     the node that saw it (``*`` wildcards, ``node-*``)
    http-status   ``403``, or a class: ``4+`` (every 4xx), ``5+``
    http-method   case-insensitive
    http-path     a regular expression, full match of the URL's path

Pure: no I/O.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from podnet.calc.flows import EVENT_TYPES, VERDICTS

KEYS = (
    "verdict",
    "type",
    "protocol",
    "pod",
    "from-pod",
    "to-pod",
    "namespace",
    "label",
    "from-label",
    "to-label",
    "ip",
    "from-ip",
    "to-ip",
    "port",
    "from-port",
    "to-port",
    "node-name",
    "http-status",
    "http-method",
    "http-path",
)
PROTOCOLS = ("tcp", "udp", "icmp", "sctp", "http", "dns")
DEFAULT_NAMESPACE = "default"

Term = tuple[bool, str, str]


class FilterError(ValueError):
    """A filter term that cannot match anything as written (its message names the flag)."""


def validate(terms: Iterable[Sequence[Any]]) -> list[Term]:
    """The terms as tuples, each checked; :class:`FilterError` names the first bad one."""
    out: list[Term] = []
    for term in terms:
        try:
            negated, key, value = bool(term[0]), str(term[1]), str(term[2])
        except (TypeError, IndexError, KeyError) as exc:
            raise FilterError(f"a filter term is [negated, key, value], not {term!r}") from exc
        if key not in KEYS:
            raise FilterError(f"--{key}: not a filter (one of --{', --'.join(KEYS)})")
        _check(key, value)
        out.append((negated, key, value))
    return out


def _check(key: str, value: str) -> None:
    if key == "verdict" and value.upper() not in VERDICTS:
        raise FilterError(f"--verdict {value}: one of {', '.join(VERDICTS)}")
    if key == "type" and value not in EVENT_TYPES:
        raise FilterError(f"--type {value}: one of {', '.join(EVENT_TYPES)}")
    if key == "protocol" and value.lower() not in PROTOCOLS:
        raise FilterError(f"--protocol {value}: one of {', '.join(PROTOCOLS)}")
    if key.endswith("ip"):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise FilterError(f"--{key} {value}: not an address or CIDR") from exc
    if key.endswith("port") and not (value.isdigit() and 0 <= int(value) <= 65535):
        raise FilterError(f"--{key} {value}: a port number 0-65535")
    if key == "http-status" and not re.fullmatch(r"[1-5](\d\d|\+)", value):
        raise FilterError(f"--http-status {value}: a status (403) or a class (4+)")
    if key == "http-path":
        try:
            re.compile(value)
        except re.error as exc:
            raise FilterError(f"--http-path {value}: not a regular expression: {exc}") from exc


# ------------------------------------------------------------------------------------------ matching


def _sides(flow: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    if key.startswith("from-"):
        return [flow.get("source") or {}]
    if key.startswith("to-"):
        return [flow.get("destination") or {}]
    return [flow.get("source") or {}, flow.get("destination") or {}]


def _addresses(flow: Mapping[str, Any], key: str) -> list[str]:
    ip = flow.get("IP") or {}
    if key.startswith("from-"):
        return [ip.get("source", "")]
    if key.startswith("to-"):
        return [ip.get("destination", "")]
    return [ip.get("source", ""), ip.get("destination", "")]


def _ports(flow: Mapping[str, Any], key: str) -> list[int]:
    l4 = next(iter((flow.get("l4") or {}).values()), {})
    src, dst = l4.get("source_port"), l4.get("destination_port")
    if key.startswith("from-"):
        return [src] if src is not None else []
    if key.startswith("to-"):
        return [dst] if dst is not None else []
    return [p for p in (src, dst) if p is not None]


def _pod_matches(side: Mapping[str, Any], value: str) -> bool:
    namespace, _, prefix = value.rpartition("/")
    if side.get("pod_name") is None:
        return False
    return side.get("namespace") == (namespace or DEFAULT_NAMESPACE) and str(side["pod_name"]).startswith(
        prefix
    )


def _label_matches(side: Mapping[str, Any], value: str) -> bool:
    labels = side.get("labels") or []
    key, eq, want = value.partition("=")
    for label in labels:
        name, _, have = str(label).partition("=")
        _, colon, bare = name.partition(":")
        names = {name, bare} if colon else {name}
        if key in names and (not eq or have == want):
            return True
    return False


def _protocol_matches(flow: Mapping[str, Any], value: str) -> bool:
    value = value.lower()
    l7 = flow.get("l7") or {}
    if value in ("http", "dns"):
        return value in l7
    l4 = {k.lower() for k in (flow.get("l4") or {})}
    return value in l4 or (value == "icmp" and "icmpv4" in l4)


def _http(flow: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (flow.get("l7") or {}).get("http")


def _path_of(url: str) -> str:
    path = re.sub(r"^[a-z]+://[^/]*", "", url)
    return path.split("?", 1)[0] or "/"


def term_matches(flow: Mapping[str, Any], key: str, value: str) -> bool:
    """Does ``flow`` (the ``flow`` object of :func:`podnet.calc.flows.flow_of`) match one term?"""
    if key == "verdict":
        return flow.get("verdict") == value.upper()
    if key == "type":
        return (flow.get("event_type") or {}).get("type") == value
    if key == "protocol":
        return _protocol_matches(flow, value)
    if key in ("pod", "from-pod", "to-pod"):
        return any(_pod_matches(side, value) for side in _sides(flow, key))
    if key == "namespace":
        return any(side.get("namespace") == value for side in _sides(flow, key))
    if key in ("label", "from-label", "to-label"):
        return any(_label_matches(side, value) for side in _sides(flow, key))
    if key in ("ip", "from-ip", "to-ip"):
        network = ipaddress.ip_network(value, strict=False)
        return any(a and ipaddress.ip_address(a) in network for a in _addresses(flow, key))
    if key in ("port", "from-port", "to-port"):
        return int(value) in _ports(flow, key)
    if key == "node-name":
        return fnmatch.fnmatchcase(str(flow.get("node_name", "")), value)
    http = _http(flow)
    if http is None:
        return False
    if key == "http-status":
        code = str(http.get("code", ""))
        return code[:1] == value[:1] if value.endswith("+") else code == value
    if key == "http-method":
        return str(http.get("method", "")).upper() == value.upper()
    if key == "http-path":
        return re.fullmatch(value, _path_of(str(http.get("url", "")))) is not None
    raise FilterError(f"--{key}: not a filter")


def matches(flow: Mapping[str, Any], terms: Sequence[Term]) -> bool:
    """Every plain key has a matching value, and no negated term matches."""
    wanted: dict[str, bool] = {}
    for negated, key, value in terms:
        if negated:
            if term_matches(flow, key, value):
                return False
        elif not wanted.get(key):
            wanted[key] = term_matches(flow, key, value)
    return all(wanted.values())
