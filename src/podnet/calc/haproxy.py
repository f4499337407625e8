"""The node's L7 proxy configuration: HAProxy in transparent mode, rendered from the HTTP rules the
Cilium profile's policy maps redirect (pure).

How traffic gets there (verified on this kernel with HAProxy 2.6 in network namespaces): a packet
the policy map redirects is marked and goes up the stack, where an nftables ``tproxy`` rule and a
``local`` route in the proxy's table deliver it to the listener of its direction, still addressed
to the server; HAProxy then connects to that original destination (``server 0.0.0.0:0``) from the
client's own address (``usesrc clientip``), so the server sees the client, and the server's answers
come back to the proxy's transparent socket (``socket transparent`` marks them for the same
table). The proxy runs in a cgroup of its own, by which its packets are told apart.

The rendered file, in order:

- ``global``: master-worker (hitless reloads: ``USR2`` to the master, the listeners handed over
  through the admin socket, ``expose-fd listeners``), the admin socket, records sent as syslog to
  the agent's socket;
- ``defaults``: HTTP mode, keep-alive, timeouts, the record format (one JSON object per request:
  addresses, method, URL, status, time, the rule that decided);
- one ``frontend`` per direction (``ingress``, ``egress``), bound ``transparent``: the peer's
  identity looked up in the ipcache map (longest prefix, ``world`` when none: the same answer as the
  datapath's ipcache), then per :class:`HttpPolicy` and rule an ``allow`` with the rule's name in
  ``txn.rule``, and at the end ``deny`` with ``403`` and the body ``Access denied`` (Cilium's answer);
- ``backend original``: the original destination, from the client's address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet.calc.l7_http import HttpRule
from podnet.calc.policymap import EGRESS, INGRESS
from podnet.model.identity import RESERVED

DENIED_BODY = "Access denied"
#: what a request refused by every rule records as its rule
DEFAULT_DENY = "default-deny"
_SAFE = re.compile(r"[A-Za-z0-9_.:/@=+-]+")


@dataclass(frozen=True)
class HttpPolicy:
    """HTTP rules one local endpoint's map redirects: ``direction`` traffic to (ingress) or from
    (egress) the endpoint at ``endpoint``, on destination ports ``first``..``last``, with peers of
    ``identities`` (None: any peer), refused unless one of ``rules`` matches (:data:`ALLOW_ALL`,
    empty: every request passes). ``name``: the rule's provenance, recorded with each request."""

    direction: str
    endpoint: str
    first: int
    last: int
    identities: frozenset[int] | None
    rules: tuple[HttpRule, ...]
    name: str
    #: each rule's own name (the section it comes from); empty: ``<name>:http:<index>``
    rule_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxySettings:
    """Where the proxy listens and what it reads and writes."""

    ports: Mapping[str, int]  # direction -> listener port
    ipcache_map: str  # "prefix identity" lines (HAProxy map, longest-prefix match)
    admin_socket: str
    log_socket: str
    pidfile: str
    timeout_client: int = 60  # seconds: an idle keep-alive connection is closed after this
    timeout_server: int = 60
    maxconn: int = 4096  # per process; HAProxy raises its file limit to about twice this
    exporter: str | None = None  # "ADDRESS:PORT" of HAProxy's Prometheus exporter (PROMEX); None: none


def quote(text: str) -> str:
    """``text`` as one HAProxy config word: single-quoted (nothing is interpreted inside), or
    double-quoted with ``\\``, ``"`` and ``$`` escaped when it holds a single quote."""
    if "'" not in text:
        return f"'{text}'"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _name(text: str) -> str:
    """A rule name safe inside ``str(...)`` (no spaces, commas or parentheses)."""
    return text if _SAFE.fullmatch(text) else re.sub(r"[^A-Za-z0-9_.:/@=+-]", "_", text)


def _full(pattern: str) -> str:
    """A full-match regex (Envoy's semantics) from one HAProxy matches anywhere."""
    return f"^(?:{pattern})$"


def _rule_acls(prefix: str, rule: HttpRule) -> tuple[list[str], list[str]]:
    """(``acl`` lines, their names) for the fields of one HTTP rule."""
    lines, names = [], []
    fields = (
        ("method", "method", rule.method),
        ("path", "pathq", rule.path),
        ("host", "req.hdr(host)", rule.host),
    )
    for label, fetch, pattern in fields:
        if pattern is not None:
            lines.append(f"acl {prefix}_{label} {fetch} -m reg {quote(_full(pattern))}")
            names.append(f"{prefix}_{label}")
    for k, (header, value) in enumerate(rule.headers):
        if value is None:
            lines.append(f"acl {prefix}_h{k} req.hdr_cnt({header}) gt 0")
        else:
            lines.append(f"acl {prefix}_h{k} req.hdr({header}) -m str {quote(value)}")
        names.append(f"{prefix}_h{k}")
    return lines, names


def _stage(
    prefix: str, policies: list[HttpPolicy], me: str, peer_var: str, passed: str, joiner: str = ""
) -> list[str]:
    """One judging stage: for each policy that applies (the endpoint, the port, the peer's
    identity in ``peer_var``), its rules in order; the first that matches names itself in
    ``txn.rule`` (after ``joiner``, when it adds to a name already there) and sets ``passed``."""
    out = [f"    acl {passed} var(txn.{passed}) -m bool"]
    for i, policy in enumerate(policies):
        if policy.identities is not None and not policy.identities:
            continue  # no peer can match
        tag = f"{prefix}{i}"
        out.append(f"    acl {tag}_ep {me} {policy.endpoint}")
        out.append(f"    acl {tag}_port dst_port {policy.first}:{policy.last}")
        conditions = [f"{tag}_ep", f"{tag}_port"]
        if policy.identities is not None:
            numbers = " ".join(str(n) for n in sorted(policy.identities))
            out.append(f"    acl {tag}_peer var(txn.{peer_var}) -m int {numbers}")
            conditions.append(f"{tag}_peer")
        if joiner:
            out.append(f"    http-request set-var(txn.{passed}_applies) bool(1) if {' '.join(conditions)}")
        rules: list[tuple[str, HttpRule | None]] = [(policy.name, None)] if not policy.rules else []
        labels = policy.rule_names or tuple(f"{policy.name}:http:{j}" for j in range(len(policy.rules)))
        rules += list(zip(labels, policy.rules, strict=True))
        for j, (name, rule) in enumerate(rules):
            names = list(conditions)
            if rule is not None:
                if rule.unmatchable:
                    continue
                lines, extra = _rule_acls(f"{tag}r{j}", rule)
                out += [f"    {line}" for line in lines]
                names += extra
            condition = " ".join([*names, f"!{passed}"])
            if joiner:
                added = f'"%[var(txn.rule)]{joiner}{_name(name)}"'
                out.append(f"    http-request set-var-fmt(txn.rule) {added} if {condition}")
            else:
                out.append(f"    http-request set-var(txn.rule) str({_name(name)}) if {condition}")
            out.append(f"    http-request set-var(txn.{passed}) bool(1) if {condition}")
    return out


_DENY = f'    http-request deny deny_status 403 content-type text/plain string "{DENIED_BODY}"'


def _frontend(
    direction: str, policies: list[HttpPolicy], local_ingress: list[HttpPolicy], settings: ProxySettings
) -> list[str]:
    """One listener's frontend. The egress one also judges a request to a local endpoint by that
    endpoint's ingress rules for the client (``local_ingress``): the proxy's own connection reaches
    it past the routing step, where no second redirect can happen (bpf/lxc.c lets it pass)."""
    me, peer = ("dst", "src") if direction == INGRESS else ("src", "dst")
    out = [
        f"frontend {direction}",
        f"    bind 0.0.0.0:{settings.ports[direction]} transparent",
        f"    http-request set-var(txn.peer) {peer},map_ip({settings.ipcache_map},{RESERVED['world']})",
        f"    http-request set-var(txn.rule) str({DEFAULT_DENY})",
        *_stage("p", policies, me, "peer", "passed"),
        f"{_DENY} if !passed",
    ]
    if local_ingress:
        out += [
            f"    http-request set-var(txn.client) src,map_ip({settings.ipcache_map},{RESERVED['world']})",
            *_stage("q", local_ingress, "dst", "client", "passed_in", joiner="&"),
            "    acl inbound var(txn.passed_in_applies) -m bool",
            f"    http-request set-var(txn.rule) str({DEFAULT_DENY}) if inbound !passed_in",
            f"{_DENY} if inbound !passed_in",
        ]
    out.append("    default_backend original")
    return out


#: One JSON object per request (the agent's L7 records): who, what, the answer, the time, the rule.
LOG_FORMAT = (
    '{"frontend":"%f","client":"%ci:%cp","server":"%fi:%fp","method":"%HM","uri":"%[capture.req.uri]",'
    '"version":"%HV","status":%ST,"time_ms":%Ta,"bytes":%B,"rule":"%[var(txn.rule)]",'
    '"peer":%[var(txn.peer)],"termination":"%ts"}'
)


def render_haproxy(policies: Iterable[HttpPolicy], settings: ProxySettings) -> str:
    """The proxy's whole configuration for ``policies`` (sorted: the same input gives the same text)."""
    ordered = sorted(policies, key=lambda p: (p.direction, p.endpoint, p.first, p.last, p.name))
    out = [
        "global",
        "    master-worker",
        f"    pidfile {settings.pidfile}",
        f"    stats socket {settings.admin_socket} mode 600 level admin expose-fd listeners",
        f"    log unix@{settings.log_socket} len 4096 format raw local0",
        f"    maxconn {settings.maxconn}",
        "",
        "defaults",
        "    mode http",
        "    log global",
        f"    log-format {quote(LOG_FORMAT)}",
        "    option http-keep-alive",
        "    timeout connect 5s",
        f"    timeout client {settings.timeout_client}s",
        f"    timeout server {settings.timeout_server}s",
        "    timeout http-request 10s",
        "",
    ]
    ingress = [p for p in ordered if p.direction == INGRESS]
    out += _frontend(INGRESS, ingress, [], settings)
    out.append("")
    out += _frontend(EGRESS, [p for p in ordered if p.direction == EGRESS], ingress, settings)
    out.append("")
    if settings.exporter:
        out += [
            "frontend prometheus",  # HAProxy's own exporter: the proxy's counters, for Prometheus
            "    mode http",
            f"    bind {settings.exporter}",
            "    no log",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    http-request deny",
            "",
        ]
    out += [
        "backend original",
        "    http-reuse never",  # a server connection carries one client's requests, from its address
        "    source 0.0.0.0 usesrc client",  # the client's address and port: the tuple bpf/lxc.c tracks
        "    server original 0.0.0.0:0",
        "",
    ]
    return "\n".join(out)


def ipcache_map(entries: Mapping[str, int]) -> str:
    """The ipcache as an HAProxy map file: ``prefix identity`` per line (``map_ip`` takes the
    longest prefix that contains an address)."""
    return "".join(f"{prefix} {number}\n" for prefix, number in sorted(entries.items()))
