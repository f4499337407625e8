"""The service map of ``podnet observe map``: who talks to whom, from flows, as Hubble UI draws it.

:func:`build` folds flows (:func:`podnet.calc.flows.flow_of`'s shape) into a :class:`ServiceMap`;
:func:`to_dot` writes it as Graphviz DOT, :func:`to_html` wraps the SVG ``dot`` made of it in a
page with a legend, :func:`summary` gives it as plain data (what tests and ``-o json`` read)::

                     ┌ namespace demo ─────────────────────────────────────────────────────────────────┐
    ┌──────────────┐ │ ┌──────────┐ 8080/TCP       ╭───────╮ 8080/TCP   ┌────────┐ 5432/TCP ┌───────┐ │
    │    world     │──▶│ frontend │───────────────▶│  api  │───────────▶│  api   │─────────▶│  db   │ │
    │ 198.51.100.7 │ │ │  2 pods  │ 4 to L7 proxy  │service│            │ 2 pods │ 3 fwd    │ 1 pod │ │
    └──────────────┘ │ └──────────┘ HTTP 40 req,   ╰───────╯            └────────┘          └───────┘ │
      8080/TCP       │       ╎      2.0/s, err 25%                                              ▲     │
      2 forwarded    │       └╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌ 5432/TCP, 2 dropped (red, dashed) ╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┘     │
                     └─────────────────────────────────────────────────────────────────────────────────┘

Nodes (:class:`Node`):

- a **workload**: namespace + workload name (the endpoint's first ``workloads[].name``, else its
  ``pod_name``): the pods of one Deployment are one box, which says how many pods were seen;
- a **service** (``destination_service``): a flow to a Service is drawn client → service →
  backend workload, two edges, each counting the flow. The client's edge says what that client
  asked of the Service; the service's edge to each backend says what the Service delivered there
  (all its clients together). The backend hop exists only when the destination is a pod: a flow
  without one (no backend, or the address before translation) stops at the service;
- the **world**: endpoints without a pod. One box for outside clients (drawn on the left) and
  one for outside servers (on the right), each listing its addresses: Hubble UI's single "world"
  box, split so the left-to-right layout never has to bend an edge back.

Namespaces group their workloads and services (Graphviz clusters).

Edges (:class:`Edge`) aggregate flows per (source node, destination node, destination port and
protocol), counting two different things:

- **connections**, from ``trace`` (a connection the node forwarded or sent to the L7 proxy) and
  ``drop`` (a packet policy dropped) events, by verdict. A connection is its 5-tuple: the SYNs a
  client retries after a drop, or the same connection seen by both nodes it crosses, are one
  connection; its verdict is the strongest seen (DROPPED > REDIRECTED > AUDIT > FORWARDED) and its
  bytes (``traffic``) the largest report of each direction. A flow without a source port (ICMP)
  is a connection of its own.
- **requests**, from ``l7`` events: one HTTP request or DNS lookup each, never a connection. HTTP
  requests are counted by status class; the error ratio is (4xx + 5xx) / requests, the rate is
  requests per second over the window (``since``, or the earliest flow, to the latest flow). A
  request the proxy refused (verdict DROPPED) is counted as ``denied`` too.

``policy-verdict`` and ``log`` events are ignored: each annotates a connection that a ``trace`` or
``drop`` event already counts (which rule allowed it; that a Calico ``Log`` rule saw it), so
counting them would count connections twice. Reply flows (``is_reply``) are ignored as well.

An edge's colour (:func:`edge_status`): green when every connection was forwarded, red and
dashed when every one was dropped, orange and dashed when some were, blue when every one went to
the L7 proxy. An edge with requests only takes the colour of the requests (through the proxy:
blue; refused: red; both: orange). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import html
import ipaddress
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

WORKLOAD, SERVICE, WORLD = "workload", "service", "world"
WORLD_IN, WORLD_OUT = "world:in", "world:out"  # outside clients / outside servers
CONNECTION_EVENTS = ("trace", "drop")
REQUEST_EVENTS = ("l7",)
#: the strongest verdict wins when one connection is reported more than once
VERDICT_RANK = {"FORWARDED": 0, "AUDIT": 1, "REDIRECTED": 2, "DROPPED": 3}
VERDICT_WORDS = {
    "FORWARDED": "forwarded",
    "AUDIT": "audit",
    "REDIRECTED": "to L7 proxy",
    "DROPPED": "dropped",
}
#: verdict -> the status whose colour its count is written in
VERDICT_STATUS = {"FORWARDED": "forwarded", "AUDIT": "none", "REDIRECTED": "redirected", "DROPPED": "dropped"}
#: edge status -> colour (the DOT edges and the HTML legend use the same)
COLOURS = {
    "forwarded": "#2e7d32",
    "redirected": "#1565c0",
    "mixed": "#ef6c00",
    "dropped": "#c62828",
    "none": "#757575",
}
LEGEND = {
    "forwarded": "every connection forwarded",
    "redirected": "every connection through the L7 proxy",
    "mixed": "some connections dropped (dashed)",
    "dropped": "every connection dropped (dashed)",
}
FONT = "DejaVu Sans"
MAX_ADDRESSES = 6  # a world box lists this many addresses, then "+N more"

EdgeKey = tuple[str, str, int | None, str]


@dataclass
class Node:
    """A box: a workload (its pods), a service, or the world (its addresses)."""

    id: str
    kind: str
    namespace: str
    name: str
    pods: set[str] = field(default_factory=set)
    workload_kinds: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)


@dataclass
class HttpStats:
    """HTTP requests of one edge: count, status classes (``2xx``…, ``none`` without a response)."""

    requests: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    denied: int = 0

    @property
    def errors(self) -> int:
        return self.by_class["4xx"] + self.by_class["5xx"]

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass
class DnsStats:
    """DNS lookups of one edge: count, those answered with an error rcode, those the proxy refused."""

    queries: int = 0
    errors: int = 0
    denied: int = 0


@dataclass
class _Connection:
    verdict: str
    bytes_sent: int | None = None
    bytes_received: int | None = None
    drop_reasons: set[str] = field(default_factory=set)
    policies: set[str] = field(default_factory=set)


@dataclass
class Edge:
    """Flows from one node to another on one destination port and protocol."""

    source: str
    destination: str
    port: int | None
    protocol: str
    http: HttpStats = field(default_factory=HttpStats)
    dns: DnsStats = field(default_factory=DnsStats)
    _connections: dict[Hashable, _Connection] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> EdgeKey:
        return (self.source, self.destination, self.port, self.protocol)

    @property
    def connections(self) -> dict[str, int]:
        """Connections by verdict (verdicts with none left out), in :data:`VERDICT_RANK` order."""
        counts = Counter(c.verdict for c in self._connections.values())
        return {v: counts[v] for v in VERDICT_RANK if counts[v]}

    @property
    def bytes_sent(self) -> int | None:
        """Bytes the initiators sent (``None``: no flow carried ``traffic``)."""
        sent = [c.bytes_sent for c in self._connections.values() if c.bytes_sent is not None]
        return sum(sent) if sent else None

    @property
    def bytes_received(self) -> int | None:
        received = [c.bytes_received for c in self._connections.values() if c.bytes_received is not None]
        return sum(received) if received else None

    @property
    def drop_reasons(self) -> dict[str, int]:
        """Dropped connections by reason (``POLICY_DENIED``)."""
        counts = Counter(r for c in self._connections.values() for r in c.drop_reasons)
        return dict(sorted(counts.items()))

    @property
    def policies(self) -> list[str]:
        """The policies that decided the drops (``NetworkPolicy demo/default-deny``)."""
        return sorted({p for c in self._connections.values() for p in c.policies})

    def add_connection(self, key: Hashable, flow: Mapping[str, Any]) -> None:
        verdict = str(flow.get("verdict", "FORWARDED"))
        verdict = verdict if verdict in VERDICT_RANK else "FORWARDED"
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = _Connection(verdict)
        elif VERDICT_RANK[verdict] > VERDICT_RANK[conn.verdict]:
            conn.verdict = verdict
        traffic = flow.get("traffic") or {}
        if traffic.get("bytes_sent") is not None:
            conn.bytes_sent = max(conn.bytes_sent or 0, int(traffic["bytes_sent"]))
        if traffic.get("bytes_received") is not None:
            conn.bytes_received = max(conn.bytes_received or 0, int(traffic["bytes_received"]))
        if verdict == "DROPPED":
            if flow.get("drop_reason_desc"):
                conn.drop_reasons.add(str(flow["drop_reason_desc"]))
            policies = [p for p in flow.get("policies") or () if isinstance(p, Mapping)]
            conn.policies.update(_policy_name(p) for p in policies)

    def add_request(self, flow: Mapping[str, Any]) -> None:
        l7 = flow.get("l7") or {}
        denied = flow.get("verdict") == "DROPPED"
        if "http" in l7:
            code = (l7.get("http") or {}).get("code")
            self.http.requests += 1
            self.http.by_class[_status_class(code)] += 1
            self.http.denied += denied
        elif "dns" in l7:
            rcode = str((l7.get("dns") or {}).get("rcode") or "")
            self.dns.queries += 1
            self.dns.errors += rcode.upper() not in ("", "NOERROR")
            self.dns.denied += denied


@dataclass
class ServiceMap:
    """Nodes by id, edges by (source, destination, port, protocol), and the window they cover."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[EdgeKey, Edge] = field(default_factory=dict)
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    flows: int = 0
    ignored: Counter[str] = field(default_factory=Counter)

    @property
    def seconds(self) -> float | None:
        """The window's length; ``None`` when it has none (no times, or one instant)."""
        if self.start is None or self.end is None or self.end <= self.start:
            return None
        return (self.end - self.start).total_seconds()

    def per_second(self, count: int) -> float | None:
        seconds = self.seconds
        return count / seconds if seconds else None


# -------------------------------------------------------------------------------------------- build


def build(flows: Iterable[Mapping[str, Any]], since: str | None = None) -> ServiceMap:
    """The service map of ``flows`` (``{"time", "node_name", "flow": {...}}``, or bare flow objects).

    ``since`` (RFC 3339, as the CLI resolves ``--since 5m``) starts the window: older flows are
    left out and request rates are per second from it. Any order of ``flows`` gives the same map."""
    m = ServiceMap()
    start = parse_time(since) if since else None
    if since and start is None:
        raise ValueError(f"since: not an RFC 3339 time: {since!r}")
    times: list[dt.datetime] = []
    for number, item in enumerate(flows):
        flow: Mapping[str, Any] = item.get("flow", item)
        time = parse_time(flow.get("time") or item.get("time"))
        if start is not None and time is not None and time < start:
            m.ignored["before since"] += 1
            continue
        if time is not None:
            times.append(time)
        kind = _event_type(flow)
        if kind not in CONNECTION_EVENTS + REQUEST_EVENTS:
            m.ignored[kind or "unknown"] += 1
            continue
        if flow.get("is_reply"):
            m.ignored["reply"] += 1
            continue
        m.flows += 1
        port, protocol = _port(flow)
        for source, destination in _hops(m, flow):
            key = (source, destination, port, protocol)
            edge = m.edges.get(key)
            if edge is None:
                edge = m.edges[key] = Edge(*key)
            if kind in CONNECTION_EVENTS:
                edge.add_connection(_connection_key(flow, number), flow)
            else:
                edge.add_request(flow)
    m.start = start or (min(times) if times else None)
    m.end = max(times) if times else None
    return m


def parse_time(text: Any) -> dt.datetime | None:
    """An RFC 3339 time (``...Z``, up to nanoseconds) as an aware datetime; ``None`` if it is not one."""
    if not text:
        return None
    match = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", str(text).strip())
    if not match:
        return None
    head, fraction, zone = match.groups()
    fraction = f".{fraction[:6]}" if fraction else ""
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return dt.datetime.fromisoformat(f"{head}{fraction}{zone}")
    except ValueError:
        return None


def _event_type(flow: Mapping[str, Any]) -> str:
    kind = (flow.get("event_type") or {}).get("type")
    if kind:
        return str(kind)
    return "l7" if flow.get("Type") == "L7" else ""


def _port(flow: Mapping[str, Any]) -> tuple[int | None, str]:
    """(destination port, protocol): ``(8080, "TCP")``, ``(None, "ICMPv4")``, ``(None, "IP")``."""
    for protocol, header in sorted((flow.get("l4") or {}).items()):
        port = (header or {}).get("destination_port") if isinstance(header, Mapping) else None
        return (int(port) if port else None), str(protocol)
    return None, "IP"


def _connection_key(flow: Mapping[str, Any], number: int) -> Hashable:
    """The connection's 5-tuple; a flow without a source port is a connection of its own."""
    ip = flow.get("IP") or {}
    for protocol, header in sorted((flow.get("l4") or {}).items()):
        if isinstance(header, Mapping) and header.get("source_port"):
            return (
                protocol,
                ip.get("source"),
                header["source_port"],
                ip.get("destination"),
                header.get("destination_port"),
            )
    return ("flow", number)


def _hops(m: ServiceMap, flow: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The edges one flow is counted on: client → destination, or client → service → backend."""
    ip = flow.get("IP") or {}
    source = _endpoint_node(m, flow.get("source") or {}, ip.get("source"), WORLD_IN)
    destination = flow.get("destination") or {}
    service = flow.get("destination_service") or {}
    if not service.get("name"):
        return [(source, _endpoint_node(m, destination, ip.get("destination"), WORLD_OUT))]
    namespace = str(service.get("namespace") or destination.get("namespace") or "default")
    name = str(service["name"])
    service_id = f"{SERVICE}:{namespace}/{name}"
    m.nodes.setdefault(service_id, Node(service_id, SERVICE, namespace, name))
    hops = [(source, service_id)]
    if destination.get("pod_name"):
        hops.append((service_id, _endpoint_node(m, destination, ip.get("destination"), WORLD_OUT)))
    return hops


def _endpoint_node(m: ServiceMap, endpoint: Mapping[str, Any], address: Any, world_id: str) -> str:
    """The node of one side of a flow (made on first sight): its workload, else the world."""
    pod = endpoint.get("pod_name")
    if not pod:
        node = m.nodes.setdefault(world_id, Node(world_id, WORLD, "", "world"))
        if address:
            node.addresses.add(str(address))
        return world_id
    namespace = str(endpoint.get("namespace") or "default")
    workloads = [w for w in endpoint.get("workloads") or () if isinstance(w, Mapping) and w.get("name")]
    name = str(workloads[0]["name"]) if workloads else str(pod)
    node_id = f"{WORKLOAD}:{namespace}/{name}"
    node = m.nodes.setdefault(node_id, Node(node_id, WORKLOAD, namespace, name))
    node.pods.add(str(pod))
    if workloads and workloads[0].get("kind"):
        node.workload_kinds.add(str(workloads[0]["kind"]))
    return node_id


def _status_class(code: Any) -> str:
    try:
        number = int(code)
    except (TypeError, ValueError):
        return "none"
    return f"{number // 100}xx" if 100 <= number <= 599 else "none"


def _policy_name(policy: Mapping[str, Any]) -> str:
    where = "/".join(str(p) for p in (policy.get("namespace"), policy.get("name")) if p)
    return f"{policy.get('kind', 'policy')} {where}".strip()


# ------------------------------------------------------------------------------------------ reading


def edge_status(edge: Edge) -> str:
    """``forwarded``, ``redirected``, ``mixed``, ``dropped`` (see the module docstring), or ``none``."""
    connections = edge.connections
    total = sum(connections.values())
    if total:
        dropped = connections.get("DROPPED", 0)
        if dropped:
            return "dropped" if dropped == total else "mixed"
        return "redirected" if connections.get("REDIRECTED", 0) == total else "forwarded"
    requests = edge.http.requests + edge.dns.queries
    denied = edge.http.denied + edge.dns.denied
    if not requests:
        return "none"
    if denied:
        return "dropped" if denied == requests else "mixed"
    return "redirected"


def summary(m: ServiceMap) -> dict[str, Any]:
    """The map as plain data, sorted: the window, nodes with their kinds, edges with their counts."""
    nodes = [
        {
            "id": n.id,
            "kind": n.kind,
            "namespace": n.namespace,
            "name": n.name,
            "pods": sorted(n.pods),
            "addresses": _sorted_addresses(n.addresses),
        }
        for n in _sorted_nodes(m)
    ]
    edges = []
    for e in _sorted_edges(m):
        entry: dict[str, Any] = {
            "source": e.source,
            "destination": e.destination,
            "port": e.port,
            "protocol": e.protocol,
            "status": edge_status(e),
            "connections": e.connections,
            "bytes_sent": e.bytes_sent,
            "bytes_received": e.bytes_received,
            "drop_reasons": e.drop_reasons,
            "policies": e.policies,
            "http": None,
            "dns": None,
        }
        if e.http.requests:
            entry["http"] = {
                "requests": e.http.requests,
                "by_class": dict(sorted(e.http.by_class.items())),
                "errors": e.http.errors,
                "error_ratio": e.http.error_ratio,
                "per_second": m.per_second(e.http.requests),
                "denied": e.http.denied,
            }
        if e.dns.queries:
            entry["dns"] = {"queries": e.dns.queries, "errors": e.dns.errors, "denied": e.dns.denied}
        edges.append(entry)
    window = {
        "start": _iso(m.start),
        "end": _iso(m.end),
        "seconds": m.seconds,
        "flows": m.flows,
        "ignored": dict(sorted(m.ignored.items())),
    }
    return {"window": window, "nodes": nodes, "edges": edges}


def _sorted_nodes(m: ServiceMap) -> list[Node]:
    return [m.nodes[k] for k in sorted(m.nodes)]


def _sorted_edges(m: ServiceMap) -> list[Edge]:
    return [m.edges[k] for k in sorted(m.edges, key=lambda k: (k[0], k[1], k[2] or -1, k[3]))]


def _sorted_addresses(addresses: Iterable[str]) -> list[str]:
    def key(address: str) -> tuple[int, Any, str]:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return (2, 0, address)
        return (ip.version - 4, int(ip), address)

    return sorted(addresses, key=key)


def _iso(time: dt.datetime | None) -> str | None:
    return time.isoformat().replace("+00:00", "Z") if time else None


# --------------------------------------------------------------------------------------------- DOT


def to_dot(m: ServiceMap) -> str:
    """Graphviz DOT of the map, left to right; the same map gives the same text, byte for byte."""
    ids = {node.id: f"n{i}" for i, node in enumerate(_sorted_nodes(m))}
    lines = [
        "digraph service_map {",
        f'  graph [rankdir=LR, newrank=true, nodesep=0.4, ranksep=1.0, fontname="{FONT}", fontsize=12,'
        f" labelloc=t, labeljust=l, label=<{_title(m)}>];",
        f'  node [fontname="{FONT}", fontsize=11, penwidth=1.2];',
        f'  edge [fontname="{FONT}", fontsize=9, penwidth=1.6, arrowsize=0.8];',
    ]
    namespaces = sorted({n.namespace for n in m.nodes.values() if n.kind != WORLD})
    for number, namespace in enumerate(namespaces):
        cluster = f"cluster_{namespace}" if _plain(namespace) else f"cluster_{number}"
        lines.append(f'  subgraph "{cluster}" {{')
        lines.append(
            f'    label=<<B>namespace {_html(namespace)}</B>>; style="rounded,filled";'
            ' fillcolor="#f4f6f8"; color="#90a4ae"; fontsize=11;'
        )
        for node in _sorted_nodes(m):
            if node.kind != WORLD and node.namespace == namespace:
                lines.append(f"    {ids[node.id]} {_node_attributes(node)};")
        lines.append("  }")
    for node in _sorted_nodes(m):
        if node.kind == WORLD:
            rank = "source" if node.id == WORLD_IN else "sink"
            lines.append(f"  {{ rank={rank}; {ids[node.id]} {_node_attributes(node)}; }}")
    for edge in _sorted_edges(m):
        lines.append(f"  {ids[edge.source]} -> {ids[edge.destination]} {_edge_attributes(m, edge)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _title(m: ServiceMap) -> str:
    parts = [f"service map: {m.flows} flow{'s' if m.flows != 1 else ''}"]
    if m.start and m.end:
        parts.append(f"{_iso(m.start)} to {_iso(m.end)}")
    if m.seconds:
        parts.append(f"{m.seconds:g} s")
    return _html(", ".join(parts))


def _node_attributes(node: Node) -> str:
    name = f"<B>{_html(node.name)}</B>"
    if node.kind == WORKLOAD:
        pods = len(node.pods)
        label = f'{name}<BR/><FONT POINT-SIZE="9">{pods} pod{"s" if pods != 1 else ""}</FONT>'
        kinds = "/".join(sorted(node.workload_kinds)) or "workload"
        tooltip = [f"{kinds} {node.namespace}/{node.name}", "pods: " + ", ".join(sorted(node.pods))]
        style = 'shape=box, style="rounded,filled", fillcolor="#e3f2fd", color="#1e88e5"'
    elif node.kind == SERVICE:
        label = f'{name}<BR/><FONT POINT-SIZE="9">service</FONT>'
        tooltip = [f"Service {node.namespace}/{node.name}"]
        style = 'shape=hexagon, style=filled, fillcolor="#fff8e1", color="#f9a825"'
    else:
        addresses = _sorted_addresses(node.addresses)
        role = "outside clients" if node.id == WORLD_IN else "outside servers"
        shown = [_html(a) for a in addresses[:MAX_ADDRESSES]]
        if len(addresses) > MAX_ADDRESSES:
            shown.append(f"+{len(addresses) - MAX_ADDRESSES} more")
        rows = "".join(f"<BR/>{a}" for a in shown)
        label = f'{name}<BR/><FONT POINT-SIZE="9">{role}{rows}</FONT>'
        tooltip = [f"world: {role}", *addresses]
        style = 'shape=box3d, style=filled, fillcolor="#eceff1", color="#546e7a"'
    return f"[{style}, label=<{label}>, tooltip={_tooltip(tooltip)}]"


def _edge_attributes(m: ServiceMap, edge: Edge) -> str:
    status = edge_status(edge)
    colour = COLOURS[status]
    port = f"{edge.port}/{edge.protocol}" if edge.port is not None else edge.protocol
    rows = [f"<B>{_html(port)}</B>"]
    counts = [
        f'<FONT COLOR="{COLOURS[VERDICT_STATUS[v]]}">{n} {VERDICT_WORDS[v]}</FONT>'
        for v, n in edge.connections.items()
    ]
    if counts:
        rows.append(", ".join(counts))
    if edge.drop_reasons:
        rows.append(_html(", ".join(edge.drop_reasons)))
    if edge.http.requests:
        rows.append(_html(_http_text(m, edge.http)))
    if edge.dns.queries:
        rows.append(_html(f"DNS {edge.dns.queries} q, err {_percent(edge.dns.errors / edge.dns.queries)}"))
    if edge.bytes_sent is not None or edge.bytes_received is not None:
        rows.append(_html(f"{_bytes(edge.bytes_sent)} sent, {_bytes(edge.bytes_received)} back"))
    tooltip = [f"{m.nodes[edge.source].name} → {m.nodes[edge.destination].name} {port}"]
    tooltip += [f"{VERDICT_WORDS[v]}: {n}" for v, n in edge.connections.items()]
    tooltip += [f"dropped ({reason}): {n}" for reason, n in edge.drop_reasons.items()]
    tooltip += [f"decided by {p}" for p in edge.policies]
    tooltip += [f"HTTP {c}: {n}" for c, n in sorted(edge.http.by_class.items())]
    style = ', style="dashed"' if status in ("dropped", "mixed") else ""
    return (
        f'[color="{colour}", fontcolor="#263238"{style}, label=<{"<BR/>".join(rows)}>, '
        f"tooltip={_tooltip(tooltip)}]"
    )


def _http_text(m: ServiceMap, http: HttpStats) -> str:
    parts = [f"HTTP {http.requests} req"]
    rate = m.per_second(http.requests)
    if rate is not None:
        parts.append(f"{rate:.1f}/s" if rate >= 0.1 else f"{rate:.2g}/s")
    parts.append(f"err {_percent(http.error_ratio or 0.0)}")
    return ", ".join(parts)


def _percent(ratio: float) -> str:
    pct = ratio * 100
    return f"{pct:.0f}%" if pct >= 10 or pct == int(pct) else f"{pct:.1f}%"


def _bytes(count: int | None) -> str:
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"  # not reached


def _plain(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9_.-]+", text) is not None


# Escaping user text (names, addresses) for dot, as Graphviz 2.43 reads it (checked end to end
# with the real dot by tests/unit/cli/test_service_map_render.py): labels go through Graphviz's
# escString substitution once (``\N`` is the node's name, ``\l`` a line end: a literal backslash
# is two), tooltips twice (a literal backslash is four). Inside a quoted string only ``\"`` is
# an escape of the DOT parser itself.


def _printable(text: Any) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def _html(text: Any) -> str:
    """Literal text in an HTML-like label: ``& < > " '`` as entities, backslashes doubled."""
    return html.escape(_printable(text), quote=True).replace("\\", "\\\\")


def _tooltip(lines: Iterable[str]) -> str:
    """A quoted tooltip of literal lines (``\\n`` between them): quotes escaped, backslashes x4."""
    escaped = (_printable(line).replace("\\", "\\" * 4).replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(escaped) + '"'


# -------------------------------------------------------------------------------------------- HTML


def to_html(svg: str, title: str) -> str:
    """A standalone page: ``svg`` (what ``dot -Tsvg`` made of :func:`to_dot`) and a legend."""
    body = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", svg)
    body = re.sub(r"<!DOCTYPE[^>]*>\s*", "", body, count=1)
    dash = ' stroke-dasharray="6 4"'
    legend = "".join(
        f'<li><svg width="46" height="12" aria-hidden="true"><line x1="2" y1="6" x2="44" y2="6" '
        f'stroke="{COLOURS[status]}" stroke-width="2.5"{dash if status in ("dropped", "mixed") else ""}/>'
        f"</svg> {html.escape(text)}</li>"
        for status, text in LEGEND.items()
    )
    shapes = (
        '<li><span class="box workload"></span> workload (its pods; namespaces are the grey frames)</li>'
        '<li><span class="box service"></span> service (client → service → backend)</li>'
        '<li><span class="box world"></span> world: addresses outside the cluster</li>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: "{FONT}", sans-serif; margin: 1.5em; color: #263238; }}
h1 {{ font-size: 1.3em; }}
.map svg {{ max-width: 100%; height: auto; }}
.legend {{ list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4em 1.6em; font-size: .9em; }}
.legend li {{ display: flex; align-items: center; gap: 0.4em; }}
.box {{ display: inline-block; width: 1.6em; height: 0.9em; border: 1.5px solid; border-radius: 3px; }}
.workload {{ background: #e3f2fd; border-color: #1e88e5; }}
.service {{ background: #fff8e1; border-color: #f9a825; }}
.world {{ background: #eceff1; border-color: #546e7a; border-radius: 0; }}
</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<ul class="legend">{legend}{shapes}</ul>
<p class="legend">Edge labels: port/protocol, connections by verdict, HTTP requests (rate, error
ratio = 4xx+5xx / requests). Hover a box or an edge for details.</p>
<div class="map">
{body}</div>
</body>
</html>
"""
