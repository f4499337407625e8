"""Kubernetes Services as one nftables table, built the way kube-proxy's nftables proxier is.

The Calico profile's service proxy (the Cilium profile uses it with ``nodeport_only=True``: its
ClusterIPs are load-balanced by eBPF at ``connect()``, but NodePort traffic from outside the node
still needs DNAT on the node). Input: :class:`podnet.calc.services.ServicePlan`. podnet owns
``table ip podnet_services`` and nothing else::

    table ip podnet_services {
        set cluster-cidrs { type ipv4_addr; flags interval; }   # pod CIDRs (kube-proxy --cluster-cidr)
        set cluster-ips   { type ipv4_addr; }                   # every ClusterIP served
        map service-ips   { type ipv4_addr . inet_proto . inet_service : verdict;   # ClusterIP, ExternalIP
                            elements = { 10.96.0.10 . tcp . 80 : goto service-<id>-ns/name/tcp/http } }
        map service-nodeports     { type inet_proto . inet_service : verdict; }   # NodePort: local addrs
        map no-endpoint-services  { type ipv4_addr . inet_proto . inet_service : verdict; }  # -> reject
        map no-endpoint-nodeports { type inet_proto . inet_service : verdict; }              # -> reject
        set affinity-<h>-<secs> { type ipv4_addr; flags dynamic,timeout; timeout <secs>s; }  # ClientIP

        chain nat-prerouting  { type nat hook prerouting priority dstnat; jump services }  # pods, outside
        chain nat-output      { type nat hook output priority -100; jump services }       # the node itself
        chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading }
        chain services {
            ip daddr . meta l4proto . th dport vmap @service-ips
            fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
        }
        chain service-<id>-… {                                   # one per Frontend
            ip saddr != @cluster-cidrs jump mark-for-masquerade # ClusterIP, when cluster CIDRs given
            jump mark-for-masquerade                             # ExternalIP, NodePort (not local_only)
            ip saddr @affinity-<h1>-<secs> goto endpoint-<h1>-…  # affinity: one rule per backend
            numgen random mod 3 0 goto endpoint-<h1>-…           # up to CASCADE_MAX backends: rule i
            numgen random mod 2 0 goto endpoint-<h2>-…           # picks 1 in (n - i), the last the
            goto endpoint-<h3>-…                                 # rest (uniform); above: one
        }                                                        # numgen ... vmap { 0 : goto ... }
        chain endpoint-<h>-ns/name/tcp/http__10.244.1.5/8080 {   # one per backend of a service port
            ip saddr 10.244.1.5 jump mark-for-masquerade         # hairpin: the backend reaches itself
            update @affinity-<h>-<secs> { ip saddr }             # affinity only
            meta l4proto tcp dnat to 10.244.1.5:8080
        }
        chain mark-for-masquerade { meta mark set meta mark | 0x4000 }
        chain masquerading {
            meta mark & 0x4000 == 0 return
            meta mark set meta mark ^ 0x4000
            masquerade fully-random
        }

        # a frontend without backends refuses at once (filter chains before DNAT, like kube-proxy)
        chain filter-prerouting { type filter hook prerouting priority -110;  # pods, outside; before
                                  ct state new jump service-endpoints-check }   # routing and DNAT
        chain filter-prerouting-post-dnat { type filter hook prerouting priority -90;
                                            ct state new jump cluster-ips-check }  # after DNAT
        chain filter-output  { type filter hook output priority -110;   # node -> anything, pre-DNAT
                               ct state new jump service-endpoints-check }
        chain filter-output-post-dnat { type filter hook output priority -90;
                                        ct state new jump cluster-ips-check }
        chain service-endpoints-check {
            ip daddr . meta l4proto . th dport vmap @no-endpoint-services
            fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
        }
        chain cluster-ips-check { ip daddr @cluster-ips reject }  # a ClusterIP's port it does not serve
        chain reject-chain { meta l4proto tcp reject with tcp reset; reject }  # else icmp port-unreachable
    }

**Cost per packet** does not grow with the number of services: only the first packet of a
connection meets the nat chains (conntrack remembers the translation), and it costs two verdict-map
lookups (hashes), then its frontend's chain (up to one ``numgen`` per backend, at most
:data:`CASCADE_MAX`; above that one ``numgen`` and an anonymous-map lookup; with affinity one set
lookup per backend of that service), then its endpoint chain (two or three rules).
The filter chains cost two map lookups for ``ct state new`` packets only.

**Naming.** Service chains are ``service-<Frontend.id>-<ns>/<name>/<proto>/<port name>``; endpoint
chains ``endpoint-<h>-<ns>/<name>/<proto>/<port name>__<ip>/<port>`` where ``<h>`` hashes the service
port and the backend, so every frontend of one service port (its ClusterIP, ExternalIPs and
NodePort) shares the backend's chain and affinity set (Kubernetes' affinity is per service port).
Affinity sets carry the timeout in their name: a new timeout is a new set, not an in-place change.

**Masquerade.** A packet is marked (``meta mark | 0x4000``) and masqueraded in postrouting (the mark
is cleared again there) when: the backend reaches itself through the service (hairpin; without it
the pod would get a packet from its own address); it came to an ExternalIP or a NodePort whose
``externalTrafficPolicy`` is Cluster (the backend may be on another node, its reply must come back
here); it came to a ClusterIP from outside the ``cluster_cidrs`` (host-network processes, other
nodes; kube-proxy's ``--cluster-cidr``) when those are given. ``local_only`` NodePorts keep the
client's address (their backends are all on this node, the reply passes through here anyway).

**Syncs** are :class:`podnet.dataplane.policy.PolicyManager`'s: the first apply and the one after
any failure is one full transaction (``add table; delete table; table … { … }``); later ones send
only the differences in one transaction (map elements, new/changed/removed chains and sets; a
backend added or removed touches its frontends' chains, one endpoint chain and nothing else). When
nft refuses, nothing of the script is applied and the next apply is a full resync.

**Conntrack.** UDP "connections" outlive a change of backends: after a sync, UDP entries whose
translation points at a removed backend, and untranslated UDP entries to a frontend that just got
its first backend, are deleted through ctnetlink (kube-proxy does the same), so DNS clients do not
keep talking to a pod that is gone. TCP connections to a removed backend are left to end by
themselves, as in Kubernetes.

IPv4 only: frontends and backends that are not IPv4 are skipped (``apply`` reports them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import logging
import re
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.calc.memo import ObjectMemo
from podnet.calc.services import CLUSTER_IP, EXTERNAL_IP, NODE_PORT, Backend, Frontend, ServicePlan
from podnet.dataplane.ctnetlink import (
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    NETLINK_NETFILTER,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    CtTuple,
    attrs,
    dump_table,
    nfgenmsg,
    request,
)
from podnet.dataplane.ctnetlink import nla as _nla
from podnet.dataplane.ctnetlink import parse_tuple as _tuple
from podnet.dataplane.netns import run_in_netns
from podnet.dataplane.nft import TableSync

log = logging.getLogger(__name__)

TABLE = "podnet_services"
FAMILY = "ip"
QUALIFIED = f"{FAMILY} {TABLE}"
MASQUERADE_MARK = 0x4000  # kube-proxy's bit

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
CLUSTER_IPS = "cluster-ips"
CLUSTER_CIDRS = "cluster-cidrs"
REJECT_CHAIN = "reject-chain"
MARK_CHAIN = "mark-for-masquerade"
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_IP_KEY = "ipv4_addr . inet_proto . inet_service"
_PORT_KEY = "inet_proto . inet_service"
_LOCAL = "fib daddr type local ip daddr != 127.0.0.0/8"

# Fixed chains. Service/endpoint chains are the only ones that vary with the plan.
_HELPER_CHAINS: dict[str, tuple[str, ...]] = {
    MARK_CHAIN: (f"meta mark set meta mark | {MASQUERADE_MARK:#x}",),
    "masquerading": (
        f"meta mark & {MASQUERADE_MARK:#x} == 0 return",
        f"meta mark set meta mark ^ {MASQUERADE_MARK:#x}",
        "masquerade fully-random",
    ),
    REJECT_CHAIN: ("meta l4proto tcp reject with tcp reset", "reject"),
    "services": (
        f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
        f"{_LOCAL} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
    ),
    "service-endpoints-check": (
        f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
        f"{_LOCAL} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
    ),
    "cluster-ips-check": (f"ip daddr @{CLUSTER_IPS} reject",),
}
_BASE_CHAINS: dict[str, tuple[str, ...]] = {
    # Before routing: a node without a route for the service range (no default route) still
    # answers with a reset / port unreachable, not "network unreachable".
    "filter-prerouting": (
        "type filter hook prerouting priority -110; policy accept;",
        "ct state new jump service-endpoints-check",
    ),
    "filter-prerouting-post-dnat": (
        "type filter hook prerouting priority -90; policy accept;",
        "ct state new jump cluster-ips-check",
    ),
    "filter-output": (
        "type filter hook output priority -110; policy accept;",
        "ct state new jump service-endpoints-check",
    ),
    "filter-output-post-dnat": (
        "type filter hook output priority -90; policy accept;",
        "ct state new jump cluster-ips-check",
    ),
    "nat-prerouting": ("type nat hook prerouting priority dstnat; policy accept;", "jump services"),
    "nat-output": ("type nat hook output priority -100; policy accept;", "jump services"),
    "nat-postrouting": ("type nat hook postrouting priority srcnat; policy accept;", "jump masquerading"),
}


# ------------------------------------------------------------------------------------------- names

_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")


def _readable(frontend: Frontend) -> str:
    port = frontend.port_name or f"p{frontend.port}"
    return _UNSAFE.sub("_", f"{frontend.service}/{frontend.protocol.lower()}/{port}")


def service_chain(frontend: Frontend) -> str:
    """``service-<Frontend.id>-<ns>/<name>/<proto>/<port name>``: stable per frontend."""
    return f"service-{frontend.id}-{_readable(frontend)}"


def endpoint_hash(frontend: Frontend, backend: Backend) -> str:
    """Hash of the service PORT (not the frontend) and the backend: shared by ClusterIP/NodePort/…"""
    text = f"{frontend.service}/{frontend.port_name}/{frontend.protocol}/{backend.ip}:{backend.port}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def endpoint_chain(frontend: Frontend, backend: Backend) -> str:
    return f"endpoint-{endpoint_hash(frontend, backend)}-{_readable(frontend)}__{backend.ip}/{backend.port}"


def affinity_set(frontend: Frontend, backend: Backend) -> str:
    return f"affinity-{endpoint_hash(frontend, backend)}-{frontend.affinity_seconds}"


def _ipv4(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


# --------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendering:
    """The table as data: what :class:`ServiceProxy` diffs between syncs."""

    base: tuple[tuple[str, tuple[str, ...]], ...] = ()  # fixed chains; a change forces a full resync
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # service-*/endpoint-* -> rules
    affinity_sets: frozenset[tuple[str, int]] = frozenset()  # (name, timeout seconds)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # map name -> {key: verdict}
    cluster_ips: frozenset[str] = frozenset()
    cluster_cidrs: tuple[str, ...] = ()
    # for conntrack: frontend (proto, ip or None, port) -> backends (ip, port)
    udp_frontends: dict[tuple[str | None, int], frozenset[tuple[str, int]]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()  # frontends not rendered (not IPv4), for the report


_MAP_TYPES = {
    SERVICE_IPS: _IP_KEY,
    SERVICE_NODEPORTS: _PORT_KEY,
    NO_ENDPOINT_SERVICES: _IP_KEY,
    NO_ENDPOINT_NODEPORTS: _PORT_KEY,
}


#: Up to this many backends a service picks one with a cascade of ``numgen`` rules, above it with an
#: anonymous verdict map (kube-proxy's way). The kernel names each anonymous set by scanning every
#: set of the table, so one map per service made a cold load quadratic: 10,000 services took ~46 s
#: of kernel time in one transaction, against ~1 s with cascades. A cascade costs the first packet
#: of a connection (only it meets the nat chains) at most one ``numgen`` per backend.
CASCADE_MAX = 16


def _service_rules(frontend: Frontend, backends: list[Backend], has_cidrs: bool) -> tuple[str, ...]:
    rules: list[str] = []
    if frontend.kind == CLUSTER_IP:
        if has_cidrs:
            rules.append(f"ip saddr != @{CLUSTER_CIDRS} jump {MARK_CHAIN}")
    elif not frontend.local_only:  # ExternalIP, NodePort with externalTrafficPolicy Cluster
        rules.append(f"jump {MARK_CHAIN}")
    if frontend.affinity_seconds > 0:
        for backend in backends:
            rules.append(
                f"ip saddr @{affinity_set(frontend, backend)} goto {endpoint_chain(frontend, backend)}"
            )
    if len(backends) <= CASCADE_MAX:  # rule i picks 1 in (n - i) of what reaches it: uniform
        last = len(backends) - 1
        rules += [
            f"numgen random mod {len(backends) - i} 0 goto {endpoint_chain(frontend, b)}"
            for i, b in enumerate(backends[:last])
        ]
        rules.append(f"goto {endpoint_chain(frontend, backends[last])}")
    else:
        choices = ", ".join(f"{i} : goto {endpoint_chain(frontend, b)}" for i, b in enumerate(backends))
        rules.append(f"numgen random mod {len(backends)} vmap {{ {choices} }}")
    return tuple(rules)


def _endpoint_rules(frontend: Frontend, backend: Backend) -> tuple[str, ...]:
    rules = [f"ip saddr {backend.ip} jump {MARK_CHAIN}"]
    if frontend.affinity_seconds > 0:
        rules.append(f"update @{affinity_set(frontend, backend)} {{ ip saddr }}")
    proto = _PROTOCOLS[frontend.protocol]
    rules.append(f"meta l4proto {proto} dnat to {backend.ip}:{backend.port}")
    return tuple(rules)


@dataclass(frozen=True)
class _Piece:
    """What one frontend adds to the table (build_rendering merges the pieces)."""

    skipped: str | None = None
    map_name: str = ""
    key: str = ""
    verdict: str = ""
    chains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    affinity: tuple[tuple[str, int], ...] = ()
    cluster_ip: str | None = None
    udp: tuple[tuple[str | None, int], frozenset[tuple[str, int]]] | None = None


def _piece(frontend: Frontend, has_cidrs: bool) -> _Piece:
    if frontend.protocol not in _PROTOCOLS or (frontend.kind != NODE_PORT and not _ipv4(frontend.ip)):
        return _Piece(
            skipped=f"{frontend.service} {frontend.kind} {frontend.ip}:{frontend.port}/{frontend.protocol}"
        )
    proto = _PROTOCOLS[frontend.protocol]
    key = (
        f"{proto} . {frontend.port}"
        if frontend.kind == NODE_PORT
        else f"{frontend.ip} . {proto} . {frontend.port}"
    )
    cluster_ip = str(frontend.ip) if frontend.kind == CLUSTER_IP else None
    backends = sorted({b for b in frontend.backends if _ipv4(b.ip)})
    udp = None
    if frontend.protocol == "UDP":
        udp = ((frontend.ip, frontend.port), frozenset((b.ip, b.port) for b in backends))
    if not backends:
        target = NO_ENDPOINT_NODEPORTS if frontend.kind == NODE_PORT else NO_ENDPOINT_SERVICES
        return _Piece(None, target, key, f"goto {REJECT_CHAIN}", cluster_ip=cluster_ip, udp=udp)
    chain = service_chain(frontend)
    chains = [(chain, _service_rules(frontend, backends, has_cidrs))]
    chains += [(endpoint_chain(frontend, b), _endpoint_rules(frontend, b)) for b in backends]
    affinity = tuple(
        (affinity_set(frontend, b), frontend.affinity_seconds)
        for b in backends
        if frontend.affinity_seconds > 0
    )
    target = SERVICE_NODEPORTS if frontend.kind == NODE_PORT else SERVICE_IPS
    return _Piece(None, target, key, f"goto {chain}", tuple(chains), affinity, cluster_ip, udp)


def build_rendering(
    plan: ServicePlan,
    cluster_cidrs: Iterable[str] = (),
    *,
    nodeport_only: bool = False,
    memo: ObjectMemo[_Piece] | None = None,
) -> Rendering:
    """The table for ``plan`` (pure). ``nodeport_only``: NodePort frontends only (Cilium profile).
    ``memo`` (kept between syncs): a frontend that is the same object as last time (calc.services
    hands back unchanged services' frontends as they were) is not rendered again."""
    cidrs = tuple(
        str(n)
        for n in ipaddress.collapse_addresses(
            n for n in (ipaddress.ip_network(c, strict=False) for c in cluster_cidrs) if n.version == 4
        )
    )
    base = dict(_HELPER_CHAINS)
    base_hooks = dict(_BASE_CHAINS)
    if nodeport_only:  # no ClusterIPs here: nothing to check them against
        del base["cluster-ips-check"]
        del base_hooks["filter-prerouting-post-dnat"]
        del base_hooks["filter-output-post-dnat"]
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, dict[str, str]] = {name: {} for name in _MAP_TYPES}
    affinity: set[tuple[str, int]] = set()
    cluster_ips: set[str] = set()
    udp: dict[tuple[str | None, int], frozenset[tuple[str, int]]] = {}
    skipped: list[str] = []
    has_cidrs = bool(cidrs)
    names = set()
    for frontend in plan.frontends:
        if nodeport_only and frontend.kind != NODE_PORT:
            continue
        if memo is None:
            piece = _piece(frontend, has_cidrs)
        else:
            name = (frontend.service, frontend.kind, frontend.ip, frontend.port, frontend.protocol)
            names.add(name)
            piece = memo.get(name, frontend, has_cidrs, lambda f=frontend: _piece(f, has_cidrs))
        if piece.skipped is not None:
            skipped.append(piece.skipped)
            continue
        if piece.cluster_ip is not None:
            cluster_ips.add(piece.cluster_ip)
        if piece.udp is not None:
            udp[piece.udp[0]] = piece.udp[1]
        maps[piece.map_name][piece.key] = piece.verdict
        chains.update(piece.chains)
        affinity.update(piece.affinity)
    if memo is not None:
        memo.retain(names)
    return Rendering(
        base=tuple(sorted(base.items())) + tuple(sorted(base_hooks.items())),
        chains=chains,
        affinity_sets=frozenset(affinity),
        maps=maps,
        cluster_ips=frozenset(() if nodeport_only else cluster_ips),
        cluster_cidrs=cidrs,
        udp_frontends=udp,
        skipped=tuple(skipped),
    )


def _affinity_decl(name: str, seconds: int) -> str:
    return f"set {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {seconds}s; }}"


def _elements(items: Iterable[str]) -> str:
    items = sorted(items)
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def _map_entries(entries: Mapping[str, str]) -> str:
    return ", ".join(f"{k} : {v}" for k, v in sorted(entries.items()))


def render_full(rendering: Rendering) -> str:
    """The whole table as one transaction that replaces whatever podnet_services held."""
    out = [f"add table {QUALIFIED}", f"delete table {QUALIFIED}", f"table {QUALIFIED} {{"]
    out.append(
        f"    set {CLUSTER_CIDRS} {{ type ipv4_addr; flags interval;{_elements(rendering.cluster_cidrs)} }}"
    )
    out.append(f"    set {CLUSTER_IPS} {{ type ipv4_addr;{_elements(rendering.cluster_ips)} }}")
    out += [f"    {_affinity_decl(name, secs)}" for name, secs in sorted(rendering.affinity_sets)]
    # Regular chains are declared (empty) first, so that maps and rules may name them in any order
    # (base chains are not: a chain declared regular cannot become a base chain).
    names = [name for name, rules in rendering.base if not rules[0].startswith("type ")]
    out += [f"    chain {name} {{ }}" for name in names + sorted(rendering.chains)]
    for name, entries in rendering.maps.items():
        body = f" elements = {{ {_map_entries(entries)} }};" if entries else ""
        out.append(f"    map {name} {{ type {_MAP_TYPES[name]} : verdict;{body} }}")
    for name, rules in [*rendering.base, *sorted(rendering.chains.items())]:
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_services(
    plan: ServicePlan, cluster_cidrs: Iterable[str] = (), *, nodeport_only: bool = False
) -> str:
    """The full ``nft -f`` transaction for ``plan`` (pure)."""
    return render_full(build_rendering(plan, cluster_cidrs, nodeport_only=nodeport_only))


def render_diff(old: Rendering, new: Rendering) -> str | None:
    """One transaction turning ``old`` into ``new`` ("" when equal; None when only a full resync
    can do it: the fixed chains differ). Order: sets and new chains (empty), chain bodies, map
    elements, then removals (chains once nothing jumps to them, sets once no rule uses them)."""
    if old.base != new.base:
        return None
    out: list[str] = []
    # 1. element sets, new affinity sets, new chains (empty: rules below may name each other).
    if old.cluster_cidrs != new.cluster_cidrs:  # intervals: replaced whole (they may overlap the old)
        out.append(f"flush set {QUALIFIED} {CLUSTER_CIDRS}")
        if new.cluster_cidrs:
            out.append(f"add element {QUALIFIED} {CLUSTER_CIDRS} {{ {', '.join(new.cluster_cidrs)} }}")
    if new.cluster_ips - old.cluster_ips:
        fresh = ", ".join(sorted(new.cluster_ips - old.cluster_ips))
        out.append(f"add element {QUALIFIED} {CLUSTER_IPS} {{ {fresh} }}")
    for name, secs in sorted(new.affinity_sets - old.affinity_sets):
        out.append(f"add {_affinity_decl(name, secs).replace('set ', f'set {QUALIFIED} ', 1)}")
    added = sorted(new.chains.keys() - old.chains.keys())
    out += [f"add chain {QUALIFIED} {name}" for name in added]
    # 2. chain bodies: new ones filled, changed ones flushed and refilled (only the changed ones
    #    are sorted: at 10,000 services sorting every chain name costs more than the comparison).
    changed = sorted(name for name, rules in new.chains.items() if old.chains.get(name) != rules)
    for name in changed:
        rules = new.chains[name]
        if name in old.chains:
            out.append(f"flush chain {QUALIFIED} {name}")
        out += [f"add rule {QUALIFIED} {name} {rule}" for rule in rules]
    # 3. map elements: gone or changed out, new or changed in.
    for map_name in _MAP_TYPES:
        before_map, after_map = old.maps.get(map_name, {}), new.maps.get(map_name, {})
        gone = sorted(k for k, v in before_map.items() if after_map.get(k) != v)
        fresh = {k: v for k, v in after_map.items() if before_map.get(k) != v}
        if gone:
            out.append(f"delete element {QUALIFIED} {map_name} {{ {', '.join(gone)} }}")
        if fresh:
            out.append(f"add element {QUALIFIED} {map_name} {{ {_map_entries(fresh)} }}")
    # 4. removals: flush every removed chain first (they may jump to each other), then delete.
    removed = sorted(old.chains.keys() - new.chains.keys())
    out += [f"flush chain {QUALIFIED} {name}" for name in removed]
    out += [f"delete chain {QUALIFIED} {name}" for name in removed]
    for name, _ in sorted(old.affinity_sets - new.affinity_sets):
        out.append(f"delete set {QUALIFIED} {name}")
    if old.cluster_ips - new.cluster_ips:
        gone = ", ".join(sorted(old.cluster_ips - new.cluster_ips))
        out.append(f"delete element {QUALIFIED} {CLUSTER_IPS} {{ {gone} }}")
    return "\n".join(out) + "\n" if out else ""


@dataclass(frozen=True)
class StaleFlow:
    """UDP conntrack entries to delete: to ``dst``:``port`` (``dst`` None: any local address, a
    NodePort), translated to ``backend`` (``None``: not translated at all)."""

    dst: str | None
    port: int
    backend: tuple[str, int] | None


def stale_udp_flows(old: Rendering | None, new: Rendering) -> list[StaleFlow]:
    """What a sync from ``old`` to ``new`` leaves stale in conntrack (pure). ``old`` None (a full
    resync): every frontend with backends may have untranslated entries from before."""
    flows: list[StaleFlow] = []
    for (ip, port), backends in sorted(new.udp_frontends.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        before = None if old is None else old.udp_frontends.get((ip, port))
        if backends and not before:
            flows.append(StaleFlow(ip, port, None))
        for backend in sorted((before or frozenset()) - backends):
            flows.append(StaleFlow(ip, port, backend))
    if old is not None:
        for (ip, port), backends in sorted(
            old.udp_frontends.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        ):
            if (ip, port) not in new.udp_frontends:
                flows += [StaleFlow(ip, port, b) for b in sorted(backends)]
    return flows


# ------------------------------------------------------- ctnetlink (UDP); the codec: dataplane/ctnetlink.py


def _matches(flow: StaleFlow, orig: CtTuple, reply: CtTuple, local: set[str]) -> bool:
    if orig[2] != socket.IPPROTO_UDP or orig[4] != flow.port:
        return False
    if flow.dst is not None and orig[1] != flow.dst:
        return False
    if flow.dst is None and orig[1] not in local:
        return False
    translated = (reply[0], reply[3]) != (orig[1], orig[4])
    if flow.backend is None:
        return not translated
    return translated and (reply[0], reply[3]) == flow.backend


def delete_udp_flows(flows: list[StaleFlow], local_addresses: Iterable[str] = ()) -> int:
    """Delete the conntrack entries ``flows`` describe, in the calling thread's netns (dump the
    IPv4 table through ctnetlink, delete each match by its original tuple). Returns how many."""
    if not flows:
        return 0
    local = set(local_addresses)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        victims: list[bytes] = []
        for payload in dump_table(sock, socket.AF_INET, seq=1):
            entry = attrs(payload[4:])
            orig_raw = entry.get(CTA_TUPLE_ORIG)
            orig = _tuple(orig_raw) if orig_raw else None
            reply = _tuple(entry[CTA_TUPLE_REPLY]) if CTA_TUPLE_REPLY in entry else None
            if orig and reply and orig_raw and any(_matches(f, orig, reply, local) for f in flows):
                victims.append(orig_raw)
        deleted = 0
        for seq, orig_raw in enumerate(victims, start=2):
            body = nfgenmsg(socket.AF_INET) + _nla(CTA_TUPLE_ORIG | NLA_F_NESTED, orig_raw)
            sock.send(request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, body))
            answer = sock.recv(65536)
            if (
                struct.unpack_from("=H", answer, 4)[0] == NLMSG_ERROR
                and struct.unpack_from("=i", answer, 16)[0] == 0
            ):
                deleted += 1
        return deleted


def _local_addresses() -> set[str]:
    """IPv4 addresses of the calling thread's netns (for NodePort flows), from its fib_trie."""
    out: set[str] = set()
    try:
        with open("/proc/thread-self/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for prev, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            out.add(prev.split()[-1])
    return out


# ----------------------------------------------------------------------------------------- manager


class ServiceProxy:
    """Keeps ``table ip podnet_services`` of the caller's network namespace (or ``netns``) in shape:
    full transaction first (or the kernel's table adopted), then partial ones (:class:`TableSync`);
    UDP flows to backends that left are deleted from conntrack."""

    def __init__(self, netns: str | None = None, *, nodeport_only: bool = False) -> None:
        self.netns = netns
        self.nodeport_only = nodeport_only
        self.table: TableSync[Rendering] = TableSync(
            FAMILY,
            TABLE,
            netns,
            full=render_full,
            diff=render_diff,
            hint="the previous service ruleset is still in force; the next sync is a full resync",
        )
        self._ever_applied: Rendering | None = None  # for conntrack: what the kernel last had
        self._pieces: ObjectMemo[_Piece] = ObjectMemo()  # per frontend, between syncs

    @property
    def needs_full_resync(self) -> bool:
        return self.table.applied is None

    def apply(
        self,
        plan: ServicePlan,
        cluster_cidrs: Iterable[str] = (),
        *,
        nodeport_only: bool | None = None,
    ) -> dict[str, Any]:
        """Make the table serve ``plan``. ``cluster_cidrs``: the pod CIDRs (traffic to a ClusterIP
        from outside them is masqueraded; empty: only hairpin/external traffic is).
        Returns ``{"mode": "full"|"partial"|"noop"|"adopted", "statements", "seconds",
        "nft_seconds", "conntrack_deleted", "skipped"}``. Raises :class:`DataplaneError` (nothing
        applied) when nft refuses."""
        started = time.perf_counter()
        if nodeport_only is not None:
            self.nodeport_only = nodeport_only
        rendering = build_rendering(plan, cluster_cidrs, nodeport_only=self.nodeport_only, memo=self._pieces)
        mode, statements = self.table.sync(rendering)
        nft_seconds = time.perf_counter() - started
        deleted = 0
        flows = stale_udp_flows(self._ever_applied, rendering) if mode not in ("noop", "adopted") else []
        if flows:
            try:
                deleted = run_in_netns(self.netns, lambda: delete_udp_flows(flows, _local_addresses()))
            except OSError as exc:  # the table is right; stale UDP flows expire by themselves
                log.warning("could not delete stale UDP conntrack entries: %s", exc)
        self._ever_applied = rendering
        return {
            "mode": mode,
            "statements": statements,
            "seconds": time.perf_counter() - started,
            "nft_seconds": 0.0 if mode == "adopted" else nft_seconds,
            "conntrack_deleted": deleted,
            "skipped": list(rendering.skipped),
        }

    def remove(self) -> None:
        """Delete the table (absent is fine)."""
        self._ever_applied = None
        self.table.remove()


__all__ = [
    "CLUSTER_IP",
    "EXTERNAL_IP",
    "NODE_PORT",
    "Rendering",
    "ServiceProxy",
    "StaleFlow",
    "build_rendering",
    "delete_udp_flows",
    "endpoint_chain",
    "render_diff",
    "render_full",
    "render_services",
    "service_chain",
    "stale_udp_flows",
]
