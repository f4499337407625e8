"""BIRD 2 configuration for one node, rendered from the cluster view (pure), and BIRD's status parsed.

Calico renders BIRD 1.x configs with confd templates (``bird.cfg``, ``bird_aggr.cfg``,
``bird_ipam.cfg``); podnet renders the same design for BIRD 2 (Debian's ``bird2``) with a function::

    BgpNode per node ──┐
    BGPConfiguration ──┼─▶ bgp_peerings() ─▶ [Peering]  Mesh_/Node_/Global_<ip>[_port_<p>]
    BGPPeers ──────────┘                         │
    blocks (affinity), IPPools, no_kernel ───────┴─▶ render_bird_config() ─▶ bird.conf text

What the rendered config does, section by section (same order in the file, everything sorted):

- ``router id`` = the node's IPv4 address; ``timeformat protocol iso long`` so ``show protocols``
  gives parseable dates; ``graceful restart wait`` bounds how long a restarted BIRD (``bird -R``)
  waits for its peers before syncing the kernel.
- filters (all in one place, named like Calico's):
  ``podnet_export_to_bgp_peers``: reject pools with ``disableBGPExport``; the node's own blocks
  exactly (``net = block``) are accepted and anything inside them rejected (Calico's ``calico_aggr``:
  export the block, not the /32s in it); anything else inside a pool is accepted (this node's
  borrowed /32s, and on a route reflector the blocks it reflects); everything else is rejected (the
  uplink subnet, prefixes learned from external peers).
  ``podnet_export_own_routes``: the same without BGP-learned routes, for eBGP peers without a
  ``nextHopMode`` (BIRD would re-announce every block with itself as next hop over a multihop
  session, so an external router would send a block's traffic through whichever node it prefers;
  here it hears each block from its owner; ``nextHopMode: Keep``/``Self`` re-export, as Calico does).
  ``podnet_import_from_bgp_peers``: reject a peer's announcement of one of our own blocks, accept
  the rest.
  ``podnet_kernel_programming``: only BGP-learned routes go to the kernel (never the static
  blackholes, never the direct uplink route: the agent owns those); routes into ``no_kernel`` CIDRs
  and into pools whose traffic is encapsulated are rejected (the agent programs them, Calico ≥ 3.33's
  default ``programClusterRoutes: EnabledNoEncapOnly``); for ``ipipMode: CrossSubnet`` pools only
  routes whose BGP next hop is in this node's subnet are programmed; everything else learned by
  BGP (pods behind plain routing, an external peer's prefixes) is.
- ``protocol device``; ``protocol direct`` on the uplink only (its subnet resolves BGP next hops,
  ``gateway recursive``); ``protocol kernel`` with ``learn off`` (routes other programs write are not
  BIRD's business), ``persist`` (routes stay when BIRD stops), ``graceful restart`` (no kernel sync
  until peers are back after a restart), ``merge paths on`` (ECMP), its own ``metric`` and ``kernel
  table``; its routes show as ``proto bird`` (RTPROT_BIRD, 12).
- ``protocol static blocks``: one ``blackhole`` per affine block (and per borrowed /32, Calico
  exports those from the kernel; with ``learn off`` we announce them from here), plus
  ``reachableBy`` routes to peers. They feed BGP only: the kernel filter rejects them.
- ``template bgp bgp_template``: ``local as``, ``multihop``, ``graceful restart``, timers; the
  ``ipv4`` channel with the filters, ``gateway recursive`` and ``add paths``.
- one ``protocol bgp`` per peering, sorted by name.

BIRD 1 → 2 translation: filters, ``gateway``, ``add paths``, ``next hop`` move into the ``ipv4 { }``
channel; ``listen bgp port`` becomes ``local port``; Calico's fork-only ``krt_tunnel`` has no
equivalent (podnet's agent programs encapsulated routes; BIRD programs only plain ones).

Peerings follow confd (``libcalico-go``'s BGP syncer + ``bgp_processor.go``): the mesh covers every
other node without a route-reflector cluster id, unless this node has one; global BGPPeers (no
``node``/``nodeSelector``) apply to every node, node-specific ones to matching nodes, global first
and a node-specific peering to an address a global one already covers is dropped; ``peerSelector``
peers with the selected nodes (their address, listen port and AS), and a peering is mirrored
("reverse peering") on the selected side unless ``reversePeering: Manual``. A route reflector
(cluster id set) marks each iBGP peer without the same cluster id ``rr client``. Mesh peerings and
global peerings to another node are ``passive`` towards the higher address, so exactly one side
connects. Explicit peerings to an address the mesh already covers are dropped (one session per
neighbour).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podnet.calc.cluster import NODE_ADDRESS_ANNOTATION, BlockInfo, NodeInfo
from podnet.errors import PodnetError
from podnet.model.calico import BGPConfigurationSpec, BGPPeer, IPPool
from podnet.model.calico_selector import parse_selector
from podnet.model.core import ANNOTATION_AS_NUMBER, ANNOTATION_RR_CLUSTER_ID, Node

DEFAULT_AS = 64512
BGP_PORT = 179
PEER_TYPES = {"Mesh": "node-to-node mesh", "Node": "node specific", "Global": "global"}
KINDS = {"mesh": "Mesh", "node": "Node", "global": "Global"}
_PEER_NAME = re.compile(r"^(Mesh|Node|Global)_(\d+)_(\d+)_(\d+)_(\d+)(?:_port_(\d+))?$")


class BirdConfigError(PodnetError):
    """The BIRD configuration cannot be rendered (e.g. the node has no IPv4 address yet)."""

    code = "bird-config"


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BgpNode:
    """What BGP needs to know about one node (Calico's ``/calico/bgp/v1/host/<node>/...`` keys)."""

    name: str
    ip: str | None  # IPv4 address (router id, session address)
    subnet: str | None = None  # the uplink subnet, e.g. 10.77.0.0/24 (for CrossSubnet pools)
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)
    as_number: int | None = None  # projectcalico.org/ASNumber; None: the cluster's AS
    rr_cluster_id: str | None = None  # projectcalico.org/RouteReflectorClusterID

    @classmethod
    def from_info(cls, info: NodeInfo, annotations: Mapping[str, str] | None = None) -> BgpNode:
        """From the agent's :class:`NodeInfo` plus the Node's annotations (AS, RR cluster id)."""
        annotations = annotations or {}
        as_text = annotations.get(ANNOTATION_AS_NUMBER)
        return cls(
            name=info.name,
            ip=info.ip,
            subnet=str(info.address.network) if info.address else None,
            labels=dict(info.labels),
            as_number=_as_number(as_text) if as_text else None,
            rr_cluster_id=annotations.get(ANNOTATION_RR_CLUSTER_ID) or None,
        )

    @classmethod
    def from_node(cls, node: Node) -> BgpNode:
        """From a ``v1`` Node (address as :class:`NodeInfo` finds it: annotation, then InternalIP)."""
        return cls.from_info(NodeInfo.from_node(node), node.metadata.annotations)


@dataclass(frozen=True)
class BirdOptions:
    """Node-local settings that do not come from the datastore."""

    uplink: str = "eth0"  # the direct protocol's only interface
    kernel_table: int = 254  # main
    kernel_metric: int = 32  # BIRD's default; podnet's own routes use 0, so both can coexist
    scan_time: int = 2
    mesh_restart_time: int = 120  # graceful restart time of mesh sessions (Calico's value)
    graceful_restart_wait: int = 30  # after ``bird -R``: wait at most this long for peers
    log: str | None = "stderr"  # log target ("stderr", or a file path); None: BIRD's default (syslog)


@dataclass(frozen=True, order=True)
class Peering:
    """One BGP session of this node, as rendered (``name`` is the BIRD protocol name)."""

    name: str
    kind: str  # "mesh" | "node" | "global"
    ip: str
    as_number: int
    port: int | None = None  # None: 179
    passive: bool = False
    rr_client_cluster_id: str | None = None  # set: the peer is our route-reflector client
    source_address: str | None = None
    restart_time: int | None = None
    keepalive_time: int | None = None
    local_as: int | None = None
    next_hop: str | None = None  # "self" | "keep"
    allow_local_as: int | None = None
    ttl_security: int | None = None
    reachable_by: str | None = None  # a static /32 route to the peer via this gateway
    own_routes_only: bool = False  # eBGP without nextHopMode: announce only what this node originates
    peer_node: str | None = field(default=None, compare=False)
    origin: str = field(default="", compare=False)  # "mesh" or "BGPPeer <name>"

    @property
    def peer_type(self) -> str:
        """``node-to-node mesh``, ``node specific`` or ``global`` (``calicoctl node status``)."""
        return PEER_TYPES[KINDS[self.kind]]


# -- helpers --------------------------------------------------------------------------------------
def _as_number(text: str) -> int:
    if "." in text:  # asdot
        high, low = text.split(".", 1)
        return int(high) * 65536 + int(low)
    return int(text)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> int:
    """A Go duration (``120s``, ``1m30s``, ``0``) in whole seconds (rounded, as Calico does)."""
    if text == "0":
        return 0
    return round(sum(float(n) * _DURATION_UNIT[u] for n, u in _DURATION_PART.findall(text)))


def protocol_name(kind: str, ip: str, port: int | None = None) -> str:
    """``Mesh_10_77_0_12``, ``Node_10_77_0_12_port_1179``: Calico's names."""
    name = f"{KINDS[kind]}_{ip.replace('.', '_')}"
    return f"{name}_port_{port}" if port is not None else name


def parse_protocol_name(name: str) -> tuple[str, str, int | None] | None:
    """``Mesh_10_77_0_12`` → ``("node-to-node mesh", "10.77.0.12", None)``; None if not a peering."""
    m = _PEER_NAME.match(name)
    if not m:
        return None
    return PEER_TYPES[m.group(1)], ".".join(m.group(2, 3, 4, 5)), int(m.group(6)) if m.group(6) else None


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def _node_list(nodes: Mapping[str, BgpNode] | Iterable[BgpNode]) -> list[BgpNode]:
    values = nodes.values() if isinstance(nodes, Mapping) else nodes
    return sorted(values, key=lambda n: n.name)


# -- peerings -------------------------------------------------------------------------------------
def bgp_peerings(
    node: str,
    nodes: Mapping[str, BgpNode] | Iterable[BgpNode],
    config: BGPConfigurationSpec | None = None,
    peers: Iterable[BGPPeer] = (),
) -> list[Peering]:
    """Every BGP session ``node`` should have, sorted by protocol name (see the module notes)."""
    config = config or BGPConfigurationSpec()
    all_nodes = _node_list(nodes)
    by_name = {n.name: n for n in all_nodes}
    me = by_name.get(node)
    if me is None or not me.ip:
        raise BirdConfigError(
            f"node {node} has no IPv4 address", hint=f"set the {NODE_ADDRESS_ANNOTATION} annotation"
        )
    my_as = me.as_number or config.as_number
    port = config.listen_port if config.listen_port != BGP_PORT else None
    by_ip = {n.ip: n for n in all_nodes if n.ip}
    out: dict[str, Peering] = {}

    def node_as(n: BgpNode) -> int:
        return n.as_number or config.as_number

    def rr_client(peer_as: int, peer_cluster: str | None) -> str | None:
        if me.rr_cluster_id and peer_as == my_as and peer_cluster != me.rr_cluster_id:
            return me.rr_cluster_id
        return None

    # 1. the node-to-node mesh
    mesh_ips: set[str] = set()
    if config.node_to_node_mesh_enabled and not me.rr_cluster_id:
        restart = (
            duration_seconds(config.node_mesh_max_restart_time) if config.node_mesh_max_restart_time else None
        )
        for other in all_nodes:
            if not other.ip or other.ip == me.ip or other.rr_cluster_id:
                continue
            name = protocol_name("mesh", other.ip)
            mesh_ips.add(other.ip)
            out[name] = Peering(
                name,
                "mesh",
                other.ip,
                node_as(other),
                port,
                passive=_ip_key(other.ip) > _ip_key(me.ip),
                source_address=me.ip,
                restart_time=restart,
                own_routes_only=node_as(other) != my_as,
                peer_node=other.name,
                origin="mesh",
            )

    # 2. BGPPeers: global ones first, then node-specific, then the reverse peerings.
    def selected(text: str | None, n: BgpNode) -> bool:
        return text is not None and parse_selector(text).matches(n.labels)

    def local_nodes(spec) -> list[BgpNode]:
        if spec.node_selector:
            return [n for n in all_nodes if selected(spec.node_selector, n)]
        if spec.node:
            return [by_name[spec.node]] if spec.node in by_name else []
        return list(all_nodes)

    def emit(
        kind: str, resource: BGPPeer, ip: str, peer_port: int | None, peer_as: int, reverse: bool = False
    ) -> None:
        if ip == me.ip or ip in mesh_ips:
            return
        name = protocol_name(kind, ip, peer_port)
        if name in out or (kind == "node" and protocol_name("global", ip, peer_port) in out):
            return  # the first peering to an address wins (global before node-specific)
        spec = resource.spec
        other = by_ip.get(ip)
        passive = kind == "global" and other is not None and _ip_key(ip) > _ip_key(me.ip)
        next_hop = {"Self": "self", "Keep": "keep"}.get(spec.next_hop_mode or "")
        local_as = (None if reverse else spec.local_as_number) or my_as
        if next_hop is None and spec.keep_original_next_hop and peer_as != local_as:
            next_hop = "keep"
        out[name] = Peering(
            name,
            kind,
            ip,
            peer_as,
            peer_port,
            passive=passive,
            rr_client_cluster_id=rr_client(peer_as, other.rr_cluster_id if other else None),
            source_address=None if spec.source_address == "None" else me.ip,
            restart_time=duration_seconds(spec.max_restart_time) if spec.max_restart_time else None,
            keepalive_time=duration_seconds(spec.keepalive_time) if spec.keepalive_time else None,
            local_as=None if reverse else spec.local_as_number,
            next_hop=next_hop,
            allow_local_as=spec.num_allowed_local_as_numbers,
            ttl_security=spec.ttl_security or None,
            reachable_by=spec.reachable_by if spec.peer_ip and not reverse else None,
            own_routes_only=peer_as != local_as and next_hop is None,
            peer_node=other.name if other else None,
            origin=f"BGPPeer {resource.metadata.name}",
        )

    def remote_targets(resource: BGPPeer) -> list[tuple[str, int | None, int]]:
        spec = resource.spec
        if spec.peer_selector:
            return [(n.ip, port, node_as(n)) for n in all_nodes if n.ip and selected(spec.peer_selector, n)]
        address = spec.peer_address()
        if address is None or ":" in address[0] or spec.as_number is None:
            return []
        ip, peer_port = address
        if peer_port is None and ip in by_ip and node_as(by_ip[ip]) == spec.as_number:
            peer_port = port  # a Calico node: its listen port
        return [(ip, None if peer_port == BGP_PORT else peer_port, spec.as_number)]

    ordered = sorted(peers, key=lambda p: p.metadata.name or "")
    for global_pass in (True, False):
        for resource in ordered:
            spec = resource.spec
            is_global = not spec.node and not spec.node_selector
            if is_global != global_pass or me not in local_nodes(spec):
                continue
            for ip, peer_port, peer_as in remote_targets(resource):
                emit("global" if is_global else "node", resource, ip, peer_port, peer_as)

    # Reverse peerings: this node is the remote side of a BGPPeer (selected by peerSelector, or its
    # address and AS are the peerIP/asNumber); it peers back with the BGPPeer's local nodes.
    for resource in ordered:
        spec = resource.spec
        if spec.reverse_peering == "Manual":
            continue
        if spec.peer_selector:
            is_remote = selected(spec.peer_selector, me)
        else:
            address = spec.peer_address()
            is_remote = (
                address is not None
                and address[0] == me.ip
                and spec.as_number == my_as
                and address[1] in (None, config.listen_port)
            )
        if not is_remote:
            continue
        for other in local_nodes(spec):
            if other.ip:
                emit("node", resource, other.ip, port, node_as(other), reverse=True)
    return sorted(out.values())


# -- pools ----------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class PoolRule:
    """How BIRD treats one pool: export to peers, and who programs its routes into the kernel."""

    cidr: str
    export: bool = True  # False: disableBGPExport
    kernel: str = "program"  # "program" | "skip" (agent programs: encapsulated) | "same-subnet"


def pool_rules(pools: Iterable[IPPool], program_cluster_routes: str | None = None) -> list[PoolRule]:
    """One :class:`PoolRule` per IPv4 pool (Calico ≥ 3.33, ``EnabledNoEncapOnly`` by default).

    VXLAN pools and ``ipipMode: Always`` pools: ``skip`` (the agent programs tunnel routes);
    ``ipipMode: CrossSubnet``: ``same-subnet`` (BIRD programs routes to nodes on our subnet, the
    agent the encapsulated rest); ``Never``: ``program``. ``programClusterRoutes: Disabled``: BIRD
    programs no pool routes. (``Enabled`` would have BIRD program IPIP routes through ``tunl0``;
    podnet's IPIP is eBPF without a ``tunl0`` device, so it behaves as the default.)
    """
    out = []
    for pool in pools:
        spec = pool.spec
        if spec.ip_version != 4:
            continue
        if program_cluster_routes == "Disabled" or spec.vxlan_mode != "Never" or spec.ipip_mode == "Always":
            kernel = "skip"
        elif spec.ipip_mode == "CrossSubnet":
            kernel = "same-subnet"
        else:
            kernel = "program"
        out.append(PoolRule(str(spec.network()), not spec.disable_bgp_export, kernel))
    return sorted(out, key=lambda r: (ipaddress.ip_network(r.cidr), r))


# -- rendering ------------------------------------------------------------------------------------
def _net_sorted(cidrs: Iterable[str]) -> list[str]:
    return sorted({str(ipaddress.ip_network(c, strict=False)) for c in cidrs}, key=ipaddress.ip_network)


def render_bird_config(
    node: str,
    nodes: Mapping[str, BgpNode] | Iterable[BgpNode],
    blocks: Iterable[BlockInfo],
    config: BGPConfigurationSpec | None = None,
    peers: Iterable[BGPPeer] = (),
    pools: Iterable[IPPool | PoolRule] = (),
    no_kernel: Iterable[str] = (),
    options: BirdOptions | None = None,
) -> str:
    """The complete ``bird.conf`` of ``node``: deterministic (sorted), so equal inputs give equal text.

    ``blocks``: every block of the cluster (the node's affine ones are announced, its borrowed
    addresses too); ``pools``: IPPools (or ready :class:`PoolRule`); ``no_kernel``: further CIDRs
    whose BGP routes BIRD must not program (the caller programs them, e.g. encapsulated).
    """
    config = config or BGPConfigurationSpec()
    options = options or BirdOptions()
    all_nodes = _node_list(nodes)
    peerings = bgp_peerings(node, all_nodes, config, peers)
    me = next(n for n in all_nodes if n.name == node)
    my_as = me.as_number or config.as_number
    blocks = list(blocks)
    own = _net_sorted(b.cidr for b in blocks if b.node == node)
    borrowed = _net_sorted(
        f"{ip}/32" for b in blocks if b.node != node for ip, user in b.borrowed.items() if user == node
    )
    pools = list(pools)
    rules = sorted(
        [p for p in pools if isinstance(p, PoolRule)]
        + pool_rules([p for p in pools if not isinstance(p, PoolRule)], config.program_cluster_routes),
        key=lambda r: ipaddress.ip_network(r.cidr),
    )
    reachable = sorted(
        {(p.ip, p.reachable_by) for p in peerings if p.reachable_by}, key=lambda t: _ip_key(t[0])
    )
    listen_port = config.listen_port if config.listen_port != BGP_PORT else None

    lines: list[str] = [
        f"# BIRD 2 configuration of node {node}, rendered by podnet (calc/bird.py). Do not edit.",
        "",
        f"router id {me.ip};",
        "timeformat protocol iso long;",
        f"graceful restart wait {options.graceful_restart_wait};",
    ]
    if options.log:
        target = "stderr" if options.log == "stderr" else f'"{options.log}"'
        lines.append(f"log {target} {{ info, remote, warning, error, auth, fatal, bug }};")
    lines.append("debug protocols { states };")

    # Filters.
    export_rules = [f"  if net ~ {r.cidr} then reject;  # disableBGPExport" for r in rules if not r.export]
    for cidr in own:
        export_rules += [f"  if net = {cidr} then accept;  # our block", f"  if net ~ {cidr} then reject;"]
    export_rules += [f"  if net ~ {r.cidr} then accept;" for r in rules if r.export]
    lines += ["", "filter podnet_export_to_bgp_peers {", *export_rules, "  reject;", "}"]
    lines += ["", "filter podnet_export_own_routes {"]
    lines.append(
        "  if source = RTS_BGP then reject;  # learned: external peers hear each block from its node"
    )
    lines += [*export_rules, "  reject;", "}"]

    lines += ["", "filter podnet_import_from_bgp_peers {"]
    lines += [f"  if net = {cidr} then reject;  # our block: ours to announce" for cidr in own]
    lines += ["  accept;", "}"]

    lines += ["", "filter podnet_kernel_programming {"]
    lines.append("  if source != RTS_BGP then reject;  # blackholes and the uplink: the agent's")
    lines += [f"  if net ~ {cidr} then reject;  # programmed by the agent" for cidr in _net_sorted(no_kernel)]
    for r in rules:
        if r.kernel == "skip":
            lines.append(f"  if net ~ {r.cidr} then reject;  # encapsulated: programmed by the agent")
        elif r.kernel == "same-subnet":
            if me.subnet:
                lines.append(f"  if net ~ {r.cidr} then {{")
                lines.append(f"    if bgp_next_hop ~ {ipaddress.ip_network(me.subnet)} then accept;")
                lines.append("    reject;  # another subnet: encapsulated, programmed by the agent")
                lines.append("  }")
            else:
                lines.append(f"  if net ~ {r.cidr} then reject;  # subnet unknown: treated as encapsulated")
    lines += ["  accept;", "}"]

    # Protocols.
    lines += ["", "protocol device {", f"  scan time {options.scan_time};", "}"]
    lines += ["", "protocol direct {", "  ipv4;", f'  interface "{options.uplink}";', "}"]
    lines += [
        "",
        "protocol kernel kernel4 {",
        "  ipv4 {",
        "    import none;",
        "    export filter podnet_kernel_programming;",
        "  };",
        "  learn off;",
        "  persist;",
        f"  scan time {options.scan_time};",
        "  graceful restart;",
        "  merge paths on;",
        f"  kernel table {options.kernel_table};",
        f"  metric {options.kernel_metric};",
        "}",
    ]
    lines += ["", "protocol static blocks {", "  ipv4;"]
    lines += [f"  route {cidr} blackhole;" for cidr in own + borrowed]
    lines += [f"  route {ip}/32 via {via};  # reachableBy" for ip, via in reachable]
    lines.append("}")

    local = "  local"
    if listen_port is not None:
        local += f" port {listen_port}"
    lines += [
        "",
        "template bgp bgp_template {",
        f"{local} as {my_as};",
        "  multihop;",
        "  graceful restart;",
        "  connect delay time 1;",
        "  connect retry time 3;",
        "  error wait time 5, 60;",
        "  ipv4 {",
        "    import filter podnet_import_from_bgp_peers;",
        "    export filter podnet_export_to_bgp_peers;",
        "    gateway recursive;",
        "    add paths on;",
        "  };",
        "}",
    ]
    if me.rr_cluster_id:
        lines += ["", f"# This node is a route reflector (cluster id {me.rr_cluster_id}): no mesh."]
    elif not config.node_to_node_mesh_enabled:
        lines += ["", "# Node-to-node mesh disabled."]
    for p in peerings:
        lines += ["", *_render_peering(p, options)]
    if not peerings:
        lines += ["", "# No BGP peers."]
    return "\n".join(lines) + "\n"


def _render_peering(p: Peering, options: BirdOptions) -> list[str]:
    neighbor = f"  neighbor {p.ip}"
    if p.port is not None:
        neighbor += f" port {p.port}"
    out = [f"protocol bgp {p.name} from bgp_template {{  # {p.peer_type}: {p.peer_node or p.origin}"]
    out.append(f"{neighbor} as {p.as_number};")
    if p.local_as is not None:
        out.append(f"  local as {p.local_as};")
    if p.source_address:
        out.append(f"  source address {p.source_address};")
    if p.passive:
        out.append("  passive on;  # the peer has the higher address and connects")
    restart = (
        p.restart_time
        if p.restart_time is not None
        else (options.mesh_restart_time if p.kind == "mesh" else None)
    )
    if restart is not None:
        out.append(f"  graceful restart time {restart};")
    if p.keepalive_time is not None:
        out.append(f"  keepalive time {p.keepalive_time};")
    if p.ttl_security:
        out += ["  ttl security on;", f"  multihop {p.ttl_security};"]
    if p.allow_local_as:
        out.append(f"  allow local as {p.allow_local_as};")
    if p.rr_client_cluster_id:
        out += ["  rr client;", f"  rr cluster id {p.rr_client_cluster_id};"]
    channel = [f"    next hop {p.next_hop};"] if p.next_hop else []
    if p.own_routes_only:
        channel.append("    export filter podnet_export_own_routes;")
    if channel:
        out += ["  ipv4 {", *channel, "  };"]
    out.append("}")
    return out


# -- BIRD's status text ---------------------------------------------------------------------------
_SINCE_DATE = re.compile(r"\d{4}-\d\d-\d\d$")


def parse_protocols(text: str) -> list[dict]:
    """Parse ``birdc show protocols [all]`` output (the codes of the control socket stripped).

    Each protocol: ``name``, ``proto``, ``table``, ``state``, ``since``, ``info`` and, from the
    ``all`` details when present, ``bgp_state``, ``neighbor_address``, ``neighbor_port``,
    ``neighbor_as``, ``local_as``, ``neighbor_id``, ``last_error`` and ``routes`` (the channel's counts line).
    """
    out: list[dict] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("BIRD ", "Name ")):
            continue
        if not line[0].isspace():
            parts = line.split()
            if len(parts) < 4:
                continue
            since, rest = "", parts[4:]
            if rest:
                since, rest = rest[0], rest[1:]
                if _SINCE_DATE.match(since) and rest and ":" in rest[0]:
                    since, rest = f"{since} {rest[0]}", rest[1:]
            out.append(
                {
                    "name": parts[0],
                    "proto": parts[1],
                    "table": parts[2],
                    "state": parts[3],
                    "since": since,
                    "info": " ".join(rest),
                }
            )
            continue
        if not out:
            continue
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        value = value.strip()
        field_name = {
            "BGP state": "bgp_state",
            "Neighbor address": "neighbor_address",
            "Neighbor port": "neighbor_port",
            "Neighbor AS": "neighbor_as",
            "Local AS": "local_as",
            "Neighbor ID": "neighbor_id",
            "Last error": "last_error",
            "Routes": "routes",
        }.get(key)
        if field_name and field_name not in out[-1]:
            out[-1][field_name] = (
                int(value) if field_name in ("neighbor_as", "local_as", "neighbor_port") else value
            )
    return out
