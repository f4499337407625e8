"""Kubernetes NetworkPolicy enforcement: the compiled :class:`PolicyPlan` as one nftables table.

podnet owns ``table inet podnet_policy`` (and, for Calico HostEndpoints, the small
``table inet podnet_host``: see :func:`render_host_table`) (kube-proxy's nftables proxier is the
model: one owned table, one transaction per sync, partial syncs, a full resync after any failure)::

    table inet podnet_policy {
        set pn-<hash> { type ipv4_addr; flags interval; elements = { 10.244.1.5/32, ... } }   # plan.sets
        set control_ports { type inet_proto . inet_service; elements = { tcp . 179, tcp . 9099 } }
        set control_hosts { type ipv4_addr . inet_proto . inet_service;           # other nodes, etcd
                            elements = { 10.77.0.11 . tcp . 179, 10.77.0.2 . tcp . 2379, ... } }
        map source_dispatch  { type ifname : verdict; elements = { "cali…" : jump ep-<h>-src, ... } }
        map egress_dispatch  { type ifname : verdict; elements = { "cali…" : jump ep-<h>-eg, ... } }
        map ingress_dispatch { type ifname : verdict; elements = { "cali…" : jump ep-<h>-in, ... } }
        chain prerouting {                                # EVERY packet from a local pod, first
            type filter hook prerouting priority raw; policy accept;
            iifname vmap @source_dispatch                 # anti-spoofing: MAC, then IP
        }
        chain forward {
            type filter hook forward priority filter; policy accept;
            ct state established,related accept          # replies of allowed connections
            ct state invalid drop
            iifname vmap @egress_dispatch                 # FROM a local pod: control plane + egress
            oifname vmap @ingress_dispatch                # TO a local pod: ingress
        }
        chain input {                                     # FROM a local pod TO this node
            type filter hook input priority filter; policy accept;
            ct state established,related accept          # replies to what the node opened
            icmpv6 type { nd-router-solicit, … } accept   # link control (like ARP), not policy
            iifname vmap @egress_dispatch                 # the same egress chains as forward
        }
        chain ep-<h>-src {                                # every local pod has one
            ether saddr != <pod eth0 MAC> counter log group 7 prefix "pns:<h>:mac" drop
            ip6 saddr { ::, fe80::/10 } icmpv6 type { nd-…, mld-… } return   # link control
            ip saddr != { <pod addresses> } counter log group 7 prefix "pns:<h>:spoof" drop
            meta nfproto ipv6 counter log … drop          # the pod has no IPv6 address
        }
        chain ep-<h>-eg {                                 # every local pod has one (control plane)
            meta l4proto . th dport @control_ports fib daddr type local counter log … "pnc:<h>:control" drop
            ip daddr . meta l4proto . th dport @control_hosts counter log … "pnc:<h>:control" drop
            # only when egress-isolated:
            ip daddr @pn-… meta l4proto tcp th dport 80 counter return comment "knp:ns/name:egress:0"
            counter log group 7 prefix "pnd:<h>:eg:ns/pod" drop
        }
        chain ep-<h>-in {                                 # only when ingress-isolated
            ip saddr @pn-… meta l4proto tcp th dport 8080 counter accept comment "knp:ns/name:ingress:1"
            counter log group 7 prefix "pnd:<h>:in:ns/pod" drop
        }
    }

**Anti-spoofing** runs in ``prerouting`` at priority ``raw``, before conntrack: a packet whose
source MAC is not the pod's eth0 MAC (recorded at wiring, :attr:`EndpointRecord.mac`; both
profiles' pods get a stable MAC, and proxy ARP does not change what the pod sends) or whose source
IP is not one of the pod's is dropped and logged, whatever hook it was heading for and even when
its addresses match an established connection (a ``ct state established accept`` first would let
a spoofed packet of a known 5-tuple through). ICMPv6 link control from ``::``/link-local (ND, MLD)
passes the IP check only; the MAC check applies to it too. ARP is not IP and this table does not see
it: a pod's ARP can only teach its own host veth a neighbour entry, which routing never uses for
another pod (each pod has its own /32 route via its own veth).

**Control plane.** :class:`podnet.calc.policy.ControlPlane` (computed from the BGP listen port, the
agent's metrics port, every node's addresses and the datastore endpoints) is rendered as two sets.
Every endpoint's egress chain starts with two drops, BEFORE any NetworkPolicy rule (a policy cannot
open them): a control port on any local address (``fib daddr type local``: the node IP, VTEP, router
IP; reached through ``input``), and an (address, protocol, port) of another node or the datastore
(reached through ``forward``). Node traffic (BIRD's sessions, the CLI, host-network pods) never
arrives on a pod interface and is not touched.

The cost per packet does not depend on the number of policies: one verdict-map lookup per
direction, then the endpoint's own rules (set lookups are hashes/interval trees).

**Egress allows ``return``, not ``accept``.** An ``accept`` in a chain jumped to from the base chain
ends the packet's traversal of the hook, so a pod-to-pod packet on one node would skip the
destination's ingress chain. Egress rules therefore ``return`` to ``forward``, which goes on to the
``oifname`` dispatch; ingress rules may ``accept``.

**Node to pod.** Traffic the node itself originates to its pods (kubelet health probes) goes
through OUTPUT and is never filtered here, as Kubernetes requires; the pod's replies come back
through INPUT as ``established``. Traffic from other nodes and pods is forwarded and is filtered.
Host-network pods have no veth: they are node traffic and are not isolated by this table.

**Pod to its own node.** A pod's packets to an address of its own node (the node's IP, its
host-network pods, node services) are not forwarded: they meet the INPUT hook, not FORWARD. Egress
isolation covers every destination in Kubernetes (only replies pass), so an ``input`` chain
dispatches on ``iifname`` into the SAME egress chains (control plane + egress rules, which
``return`` to ``input``, whose policy accepts). Only ICMPv6 neighbour discovery and multicast
listener reports are let through before the dispatch: link control, like ARP, that an
egress-isolated pod's default deny would otherwise drop (anti-spoofing let it pass in prerouting).

**Syncs.** :class:`PolicyManager` keeps the rendering it last applied (sets, chains, map entries).
The first apply, and the one after any failure, is one full transaction
(``add table; delete table; table … { … }``). Later applies send ONE transaction with only the
differences: ``add``/``delete element`` for set members and map entries, ``flush chain`` + ``add rule``
for an endpoint chain whose rules changed, ``add``/``delete`` of whole sets and chains. ``nft -f`` is
atomic: when it fails, nothing of the script is applied, the previous ruleset stays in force, and the
manager marks itself for a full resync and raises :class:`DataplaneError` with nft's message.

**Drops** are logged to NFLOG group :data:`NFLOG_GROUP` with a prefix (at most 63 characters) that
names the endpoint and the direction; :func:`deny_reasons` maps each prefix to the policies whose
default deny it stands for. :class:`NflogReader` binds a netlink socket to that group (in a given
netns) and parses each logged packet into :class:`Drop` (prefix, IPv4 src/dst, protocol, port).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.calc.host_endpoints import WILDCARD, WORKLOAD_PREFIXES, HostEndpointPlan
from podnet.calc.memo import GenerationMemo
from podnet.calc.policy import CompiledRule, ControlPlane, EndpointPolicy, PolicyPlan, Provenance
from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import run_in_netns
from podnet.dataplane.nft import TableSync, kernel_matches, list_table

TABLE = "podnet_policy"
FAMILY = "inet"
QUALIFIED = f"{FAMILY} {TABLE}"
NFLOG_GROUP = 7
EGRESS_MAP = "egress_dispatch"
INGRESS_MAP = "ingress_dispatch"
MAX_PREFIX = 63
MAX_COMMENT = 127
_DIRECTIONS = {"ingress": "in", "egress": "eg", "source": "src"}
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}

SOURCE_MAP = "source_dispatch"
CONTROL_SETS = {
    "control_ports": "inet_proto . inet_service",
    "control_hosts": "ipv4_addr . inet_proto . inet_service",
}

#: endpoint key -> (host interface name, pod addresses[, pod eth0 MAC]); no MAC: no MAC check
Endpoints = Mapping[str, tuple[str, tuple[str, ...]] | tuple[str, tuple[str, ...], str]]

PREROUTING_CHAIN = (
    "type filter hook prerouting priority raw; policy accept;",
    f"iifname vmap @{SOURCE_MAP}",
)

FORWARD_CHAIN = (
    "type filter hook forward priority filter; policy accept;",
    "ct state established,related accept",
    "ct state invalid drop",
    f"iifname vmap @{EGRESS_MAP}",
    f"oifname vmap @{INGRESS_MAP}",
)
#: ICMPv6 a pod sends its own host that is link control, not traffic policy governs.
LINK_CONTROL_ICMPV6 = (
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-report",
    "mld2-listener-report",
)
#: A pod's traffic to its own node (see "Pod to its own node"): no ``ct state invalid drop`` and no
#: ingress dispatch here, this hook also carries the node's own traffic from everywhere else.
INPUT_CHAIN = (
    "type filter hook input priority filter; policy accept;",
    "ct state established,related accept",
    f"icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} accept",
    f"iifname vmap @{EGRESS_MAP}",
)


# ------------------------------------------------------------------------------------------- names


def endpoint_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def chain_name(key: str, direction: str) -> str:
    """``ep-<sha256(key)[:12]>-in|eg``: a valid nft identifier, stable per endpoint key."""
    return f"ep-{endpoint_hash(key)}-{_DIRECTIONS[direction]}"


def deny_prefix(key: str, direction: str) -> str:
    """The NFLOG prefix of an endpoint's default deny (<= 63 chars, unique by the hash)."""
    return _clean(f"pnd:{endpoint_hash(key)}:{_DIRECTIONS[direction]}:{key}")[:MAX_PREFIX]


def spoof_prefix(key: str) -> str:
    return f"pns:{endpoint_hash(key)}:spoof"


def mac_spoof_prefix(key: str) -> str:
    return f"pns:{endpoint_hash(key)}:mac"


def control_prefix(key: str) -> str:
    return f"pnc:{endpoint_hash(key)}:control"


def deny_reasons(plan: PolicyPlan) -> dict[str, list[Provenance]]:
    """NFLOG prefix -> the policies whose default deny that drop stands for."""
    reasons: dict[str, list[Provenance]] = {}
    for key, endpoint in sorted(plan.endpoints.items()):
        if endpoint.ingress_isolated:
            reasons[deny_prefix(key, "ingress")] = list(endpoint.ingress_deniers)
        if endpoint.egress_isolated:
            reasons[deny_prefix(key, "egress")] = list(endpoint.egress_deniers)
    return reasons


def _clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')


def provenance_comment(p: Provenance) -> str:
    kind = "knp" if p.kind == "NetworkPolicy" else p.kind.lower()
    return _clean(f"{kind}:{p.namespace}/{p.name}:{p.direction}:{p.rule}")[:MAX_COMMENT]


# --------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendering:
    """The table as data: what the manager diffs between syncs."""

    sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> disjoint IPv4 CIDRs
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)  # endpoint chain -> rules
    egress_map: dict[str, str] = field(default_factory=dict)  # ifname -> chain
    ingress_map: dict[str, str] = field(default_factory=dict)
    source_map: dict[str, str] = field(default_factory=dict)
    control: dict[str, tuple[str, ...]] = field(default_factory=dict)  # CONTROL_SETS name -> elements


def _v4_elements(cidrs: frozenset[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The IPv4 members as nft elements, collapsed."""
    nets = []
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        if net.version == 4:
            nets.append(net)
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


def _rule_lines(rule: CompiledRule, verdict: str) -> list[str]:
    peer = ""
    if rule.peer_set is not None:
        peer = f"ip {'saddr' if rule.direction == 'ingress' else 'daddr'} @{rule.peer_set} "
    tail = f'counter {verdict} comment "{provenance_comment(rule.provenance)}"'
    if not rule.ports:
        return [f"{peer}{tail}"]
    lines = []
    for port in rule.ports:
        ports = str(port.first) if port.first == port.last else f"{port.first}-{port.last}"
        lines.append(f"{peer}meta l4proto {_PROTOCOLS[port.protocol]} th dport {ports} {tail}")
    return lines


def _source_chain(key: str, addresses: tuple[str, ...], mac: str) -> tuple[str, ...]:
    """Anti-spoofing: the pod's MAC (when known), then its addresses."""
    v4 = sorted({str(a) for a in map(ipaddress.ip_address, addresses) if a.version == 4})
    v6 = sorted({str(a) for a in map(ipaddress.ip_address, addresses) if a.version == 6})
    log = f'log group {NFLOG_GROUP} prefix "{spoof_prefix(key)}"'
    lines = []
    if mac:
        mac_log = f'log group {NFLOG_GROUP} prefix "{mac_spoof_prefix(key)}"'
        lines.append(f"ether saddr != {mac.lower()} counter {mac_log} drop")
    lines += [
        f"ip6 saddr {{ ::, fe80::/10 }} icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} return",
        f"ip saddr != {{ {', '.join(v4)} }} counter {log} drop"
        if v4
        else f"meta nfproto ipv4 counter {log} drop",
        f"ip6 saddr != {{ {', '.join(v6)} }} counter {log} drop"
        if v6
        else f"meta nfproto ipv6 counter {log} drop",
    ]
    return tuple(lines)


def _egress_chain(key: str, policy: EndpointPolicy | None) -> tuple[str, ...]:
    """Control plane first (no policy opens it), then the egress policy when isolated."""
    log = f'counter log group {NFLOG_GROUP} prefix "{control_prefix(key)}" drop'
    lines = [
        f"meta l4proto . th dport @control_ports fib daddr type local {log}",
        f"ip daddr . meta l4proto . th dport @control_hosts {log}",
    ]
    if policy is not None and policy.egress_isolated:
        for rule in policy.egress:
            lines.extend(_rule_lines(rule, "return"))
        lines.append(f'counter log group {NFLOG_GROUP} prefix "{deny_prefix(key, "egress")}" drop')
    return tuple(lines)


def _ingress_chain(key: str, policy: EndpointPolicy) -> tuple[str, ...]:
    lines: list[str] = []
    for rule in policy.ingress:
        lines.extend(_rule_lines(rule, "accept"))
    lines.append(f'counter log group {NFLOG_GROUP} prefix "{deny_prefix(key, "ingress")}" drop')
    return tuple(lines)


def control_elements(control: ControlPlane | None) -> dict[str, tuple[str, ...]]:
    """The two control-plane sets' elements (empty sets without ``control``)."""
    if control is None:
        return {name: () for name in CONTROL_SETS}
    return {
        "control_ports": tuple(f"{proto} . {port}" for proto, port in control.local),
        "control_hosts": tuple(f"{ip} . {proto} . {port}" for ip, proto, port in control.remote),
    }


# Most sets are unchanged from one sync to the next: memoised for the renderings that ask.
V4_ELEMENTS: GenerationMemo[frozenset[str] | tuple[str, ...], tuple[str, ...]] = GenerationMemo(_v4_elements)


def build_rendering(plan: PolicyPlan, endpoints: Endpoints, control: ControlPlane | None = None) -> Rendering:
    """The table for ``plan`` over the LOCAL ``endpoints`` (pure). Plan endpoints without an
    interface here are skipped (nothing to dispatch on); local endpoints without a plan entry get
    anti-spoofing and the control-plane drops only."""
    V4_ELEMENTS.new_generation()
    rendering = Rendering(
        sets={name: V4_ELEMENTS(cidrs) for name, cidrs in sorted(plan.sets.items())},
        control=control_elements(control),
    )
    for key, (ifname, addresses, *rest) in sorted(endpoints.items()):
        policy = plan.endpoints.get(key)
        source = chain_name(key, "source")
        rendering.chains[source] = _source_chain(key, addresses, rest[0] if rest else "")
        rendering.source_map[ifname] = source
        egress = chain_name(key, "egress")
        rendering.chains[egress] = _egress_chain(key, policy)
        rendering.egress_map[ifname] = egress
        if policy is not None and policy.ingress_isolated:
            ingress = chain_name(key, "ingress")
            rendering.chains[ingress] = _ingress_chain(key, policy)
            rendering.ingress_map[ifname] = ingress
    return rendering


def _set_decl(name: str, elements: tuple[str, ...]) -> str:
    body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    return f"set {name} {{ type ipv4_addr; flags interval;{body} }}"


def _map_elements(entries: Mapping[str, str]) -> str:
    return ", ".join(f'"{ifname}" : jump {chain}' for ifname, chain in sorted(entries.items()))


def _map_decl(name: str, entries: Mapping[str, str]) -> str:
    body = f" elements = {{ {_map_elements(entries)} }};" if entries else ""
    return f"map {name} {{ type ifname : verdict;{body} }}"


def render_full(rendering: Rendering) -> str:
    """The whole table as one transaction that replaces whatever podnet_policy held."""
    out = [f"add table {QUALIFIED}", f"delete table {QUALIFIED}", f"table {QUALIFIED} {{"]
    out += [f"    {_set_decl(name, elements)}" for name, elements in sorted(rendering.sets.items())]
    for name, kind in CONTROL_SETS.items():
        elements = rendering.control.get(name, ())
        body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        out.append(f"    set {name} {{ type {kind};{body} }}")
    # Chains before the maps that jump to them, maps before the forward chain that uses them.
    for name, rules in sorted(rendering.chains.items()):
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    out.append(f"    {_map_decl(SOURCE_MAP, rendering.source_map)}")
    out.append(f"    {_map_decl(EGRESS_MAP, rendering.egress_map)}")
    out.append(f"    {_map_decl(INGRESS_MAP, rendering.ingress_map)}")
    for name, rules in (("prerouting", PREROUTING_CHAIN), ("forward", FORWARD_CHAIN), ("input", INPUT_CHAIN)):
        out.append(f"    chain {name} {{")
        out += [f"        {rule}" for rule in rules]
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


def render_policy(plan: PolicyPlan, endpoints: Endpoints, control: ControlPlane | None = None) -> str:
    """The full ``nft -f`` transaction for ``plan`` on this node's ``endpoints`` (pure)."""
    return render_full(build_rendering(plan, endpoints, control))


def _chunks(items: list[str], size: int = 1000) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def render_diff(old: Rendering, new: Rendering) -> str:
    """One transaction turning ``old`` into ``new`` ("" when they are equal). Order: new sets and
    elements, new chains, changed chains, map entries, then removals (chains once no map jumps to
    them, sets once no rule uses them)."""
    out: list[str] = []
    # 1. sets: created, then members added; removed members of kept sets.
    for name in sorted(new.sets.keys() - old.sets.keys()):
        out.append(f"add set {QUALIFIED} {name} {{ type ipv4_addr; flags interval; }}")
    for name, elements in sorted(new.sets.items()):
        before = set(old.sets.get(name, ()))
        after = set(elements)
        for part in _chunks(sorted(before - after)):
            out.append(f"delete element {QUALIFIED} {name} {{ {', '.join(part)} }}")
        for part in _chunks(sorted(after - before)):
            out.append(f"add element {QUALIFIED} {name} {{ {', '.join(part)} }}")
    for name in CONTROL_SETS:  # always declared: only their members change
        before, after = set(old.control.get(name, ())), set(new.control.get(name, ()))
        if before - after:
            out.append(f"delete element {QUALIFIED} {name} {{ {', '.join(sorted(before - after))} }}")
        if after - before:
            out.append(f"add element {QUALIFIED} {name} {{ {', '.join(sorted(after - before))} }}")
    # 2. chains: new ones filled, changed ones flushed and refilled.
    for name, rules in sorted(new.chains.items()):
        if old.chains.get(name) == rules:
            continue
        if name in old.chains:
            out.append(f"flush chain {QUALIFIED} {name}")
        else:
            out.append(f"add chain {QUALIFIED} {name}")
        out += [f"add rule {QUALIFIED} {name} {rule}" for rule in rules]
    # 3. dispatch maps.
    for map_name, before_map, after_map in (
        (SOURCE_MAP, old.source_map, new.source_map),
        (EGRESS_MAP, old.egress_map, new.egress_map),
        (INGRESS_MAP, old.ingress_map, new.ingress_map),
    ):
        gone = {k: v for k, v in before_map.items() if after_map.get(k) != v}
        added = {k: v for k, v in after_map.items() if before_map.get(k) != v}
        if gone:
            keys = ", ".join(f'"{k}"' for k in sorted(gone))
            out.append(f"delete element {QUALIFIED} {map_name} {{ {keys} }}")
        if added:
            out.append(f"add element {QUALIFIED} {map_name} {{ {_map_elements(added)} }}")
    # 4. removals.
    for name in sorted(old.chains.keys() - new.chains.keys()):
        out += [f"flush chain {QUALIFIED} {name}", f"delete chain {QUALIFIED} {name}"]
    for name in sorted(old.sets.keys() - new.sets.keys()):
        out.append(f"delete set {QUALIFIED} {name}")
    return "\n".join(out) + "\n" if out else ""


def diff_policy(
    old_plan: PolicyPlan,
    old_endpoints: Endpoints,
    plan: PolicyPlan,
    endpoints: Endpoints,
    control: ControlPlane | None = None,
) -> str:
    """The partial transaction from one plan to the next (pure; what :class:`PolicyManager` sends)."""
    old = build_rendering(old_plan, old_endpoints, control)
    return render_diff(old, build_rendering(plan, endpoints, control))


# ----------------------------------------------------------------------------------------- manager


class PolicyManager:
    """Keeps ``table inet podnet_policy`` of the caller's network namespace (or ``netns``) in shape:
    full transaction first (or the kernel's table adopted), then partial ones (:class:`TableSync`)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.table: TableSync[Rendering] = TableSync(
            FAMILY,
            TABLE,
            netns,
            full=render_full,
            diff=render_diff,
            hint="the previous policy ruleset is still in force; the next sync is a full resync",
        )

    @property
    def needs_full_resync(self) -> bool:
        return self.table.applied is None

    @property
    def last_script(self) -> str | None:
        return self.table.last_script

    def apply(
        self, plan: PolicyPlan, endpoints: Endpoints, control: ControlPlane | None = None
    ) -> dict[str, Any]:
        """Make the table enforce ``plan`` (and close ``control`` to every pod): ``{"mode":
        "full"|"partial"|"noop"|"adopted", "statements": n, "seconds": t}``. Raises
        :class:`DataplaneError` (nothing applied) when nft refuses."""
        started = time.perf_counter()
        mode, statements = self.table.sync(build_rendering(plan, endpoints, control))
        return {"mode": mode, "statements": statements, "seconds": time.perf_counter() - started}

    def remove(self) -> None:
        """Delete the table (absent is fine)."""
        self.table.remove()


# -------------------------------------------------------------------------------- host endpoints

HOST_TABLE = "podnet_host"
HOST_QUALIFIED = f"{FAMILY} {HOST_TABLE}"
HOST_RESET = f"add table {HOST_QUALIFIED}\ndelete table {HOST_QUALIFIED}\n"  # also: no host endpoint
_HOST_DIRECTIONS = {"in": ("iifname", "saddr"), "out": ("oifname", "daddr")}


def host_chain_name(ifname: str, direction: str) -> str:
    """``hep-<sha256(ifname)[:12]>-in|out``: one chain per host-endpoint interface and direction."""
    return f"hep-{endpoint_hash(ifname)}-{direction}"


def host_deny_prefix(ifname: str, direction: str, hep: str) -> str:
    """The NFLOG prefix of a host endpoint's default deny: ``pnh:<hash>:in|out:<HostEndpoint>``."""
    return _clean(f"pnh:{endpoint_hash(ifname)}:{direction}:{hep}")[:MAX_PREFIX]


def _failsafe_rule(entry: tuple[str, int, str | None], addr: str) -> str:
    protocol, port, net = entry
    match = ""
    if net:
        family = "ip6" if ipaddress.ip_network(net, strict=False).version == 6 else "ip"
        match = f"{family} {addr} {net} "
    return f"{match}meta l4proto {_PROTOCOLS[protocol]} th dport {port} accept"


def _host_chain(plan: HostEndpointPlan, ifname: str, direction: str) -> list[str]:
    addr = _HOST_DIRECTIONS[direction][1]
    ports = ", ".join(str(p) for p in plan.tunnel_ports)
    lines = [
        "ct state established,related accept",
        f"ip {addr} @local_pods accept",
        f"ip {addr} @tunnel_peers udp dport {{ {ports} }} accept",
        f"ip {addr} @tunnel_peers ip protocol ipip accept",
        f"icmpv6 type {{ {', '.join(LINK_CONTROL_ICMPV6)} }} accept",
    ]
    failsafe = plan.failsafe_in if direction == "in" else plan.failsafe_out
    lines += [_failsafe_rule(entry, addr) for entry in failsafe]
    prefix = host_deny_prefix(ifname, direction, plan.interfaces[ifname])
    lines.append(f'counter log group {NFLOG_GROUP} prefix "{prefix}" drop')
    return lines


def render_host_table(plan: HostEndpointPlan) -> str:
    """``table inet podnet_host`` for ``plan`` as ONE transaction replacing whatever it held; with no
    host endpoint on this node, the transaction that deletes it (pure)::

        table inet podnet_host {
            set tunnel_peers { type ipv4_addr; elements = { <node IPs> } }
            set local_pods { type ipv4_addr; elements = { <this node's pod IPs> } }
            chain hep-<h>-in {                    # one per host-endpoint interface (and -out)
                ct state established,related accept
                ip saddr @local_pods accept
                ip saddr @tunnel_peers udp dport { 4789, 8472 } accept
                ip saddr @tunnel_peers ip protocol ipip accept
                icmpv6 type { nd-… } accept
                meta l4proto tcp th dport 22 accept           # failsafe inbound ports
                counter log group 7 prefix "pnh:<h>:in:<HostEndpoint>" drop
            }
            chain input {
                type filter hook input priority filter; policy accept;
                iif lo accept
                iifname { "cali*", "lxc*" } accept    # pods: their own policy, not host policy
                iifname "eth0" jump hep-<h>-in        # named interfaces, then "*"
            }
            chain output { ... the same with oif / oifname / daddr ... }
        }

    Base chains of other tables on the same hooks still see the packet (an ``accept`` here ends only
    this table's verdict); forwarded traffic never meets ``input``/``output``.
    """
    if not plan.active:
        return HOST_RESET
    out = [HOST_RESET.rstrip("\n"), f"table {HOST_QUALIFIED} {{"]
    for name, elements in (("tunnel_peers", plan.tunnel_peers), ("local_pods", plan.local_pods)):
        body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
        out.append(f"    set {name} {{ type ipv4_addr;{body} }}")
    ordered = sorted(plan.interfaces, key=lambda i: (i == WILDCARD, i))  # named first, "*" last
    for ifname in ordered:
        for direction in ("in", "out"):
            out.append(f"    chain {host_chain_name(ifname, direction)} {{")
            out += [f"        {rule}" for rule in _host_chain(plan, ifname, direction)]
            out.append("    }")
    workloads = ", ".join(f'"{p}*"' for p in WORKLOAD_PREFIXES)
    for hook, direction in (("input", "in"), ("output", "out")):
        key = _HOST_DIRECTIONS[direction][0]
        out.append(f"    chain {hook} {{")
        out.append(f"        type filter hook {hook} priority filter; policy accept;")
        out.append(f"        {key[0]}if lo accept")
        out.append(f"        {key} {{ {workloads} }} accept")
        for ifname in ordered:
            match = "" if ifname == WILDCARD else f'{key} "{ifname}" '
            out.append(f"        {match}jump {host_chain_name(ifname, direction)}")
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"


class HostEndpointManager:
    """Keeps ``table inet podnet_host`` (this netns or ``netns``) enforcing a :class:`HostEndpointPlan`:
    one full transaction whenever the rendering changes (the table is small), none otherwise."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.table: TableSync[str] = TableSync(
            FAMILY,
            HOST_TABLE,
            netns,
            full=lambda script: script,
            matches=self._kernel_has,
            hint="the previous host-endpoint ruleset is still in force",
        )

    def apply(self, plan: HostEndpointPlan) -> str:
        """``"applied"``, ``"adopted"`` or ``"noop"``; raises :class:`DataplaneError` (nothing
        applied) on refusal. On the first sync (a restarted agent) the kernel's table is adopted
        when it is already what the plan needs (absent for no host endpoint, or identical), so a
        restart rewrites nothing."""
        mode, _ = self.table.sync(render_host_table(plan))
        return "applied" if mode == "full" else mode

    def _kernel_has(self, script: str) -> bool:
        if script == HOST_RESET:
            return list_table(FAMILY, HOST_TABLE, self.netns) is None  # no host endpoint: absent
        return kernel_matches(script, FAMILY, HOST_TABLE, self.netns)

    def remove(self) -> None:
        """Delete the table (absent is fine)."""
        self.table.remove()


# ------------------------------------------------------------------------------------------- NFLOG

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET, _NFULNL_MSG_CONFIG = 0, 1
_NFULA_CFG_CMD, _NFULA_CFG_MODE = 1, 2
_NFULNL_CFG_CMD_BIND = 1
_NFULNL_COPY_PACKET = 2
_NFULA_PAYLOAD, _NFULA_PREFIX = 9, 10
_NLMSG_ERROR = 2
_IP_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True)
class Drop:
    prefix: str
    src: str
    dst: str
    protocol: str
    dport: int | None


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def parse_nflog_packet(body: bytes) -> Drop | None:
    """A NFULNL_MSG_PACKET body (after the netlink header): prefix and the IPv4 header's addresses."""
    prefix, payload = "", b""
    offset = 4  # struct nfgenmsg
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        value = body[offset + 4 : offset + length]
        kind &= 0x7FFF
        if kind == _NFULA_PREFIX:
            prefix = value.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == _NFULA_PAYLOAD:
            payload = value
        offset += (length + 3) & ~3
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    dport = None
    if proto in (6, 17, 132) and len(payload) >= ihl + 4:
        dport = struct.unpack_from("!H", payload, ihl + 2)[0]
    return Drop(
        prefix=prefix,
        src=str(ipaddress.IPv4Address(payload[12:16])),
        dst=str(ipaddress.IPv4Address(payload[16:20])),
        protocol=_IP_PROTOCOLS.get(proto, str(proto)),
        dport=dport,
    )


class NflogReader:
    """Reads the drops logged to NFLOG ``group`` (in ``netns``): ``for drop in reader.read(timeout)``."""

    def __init__(self, group: int = NFLOG_GROUP, netns: str | None = None) -> None:
        self.group = group
        self.sock = run_in_netns(netns, self._open)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            self._config(sock, _nlattr(_NFULA_CFG_CMD, struct.pack("B", _NFULNL_CFG_CMD_BIND)))
            mode = struct.pack("!IBB", 256, _NFULNL_COPY_PACKET, 0)
            self._config(sock, _nlattr(_NFULA_CFG_MODE, mode))
        except BaseException:
            sock.close()
            raise
        return sock

    def _config(self, sock: socket.socket, attr: bytes) -> None:
        nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.group)
        kind = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG
        body = nfgen + attr
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, 0x1 | 0x4, 1, 0) + body)  # REQUEST|ACK
        data = sock.recv(65536)
        _, msg_type, _, _, _ = struct.unpack_from("=IHHII", data)
        if msg_type == _NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, 16)[0]
            if err:
                raise DataplaneError(f"NFLOG group {self.group}: {os.strerror(err)}")

    def read(self, timeout: float = 1.0) -> list[Drop]:
        """The drops that arrive within ``timeout`` (returns early after the first batch)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        drops = []
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if msg_type == (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET:
                drop = parse_nflog_packet(data[offset + 16 : offset + length])
                if drop is not None:
                    drops.append(drop)
            offset += (length + 3) & ~3
        return drops

    def close(self) -> None:
        self.sock.close()
