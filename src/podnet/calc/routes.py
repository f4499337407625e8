"""Which routes and tunnel entries a node needs: pure, from the cluster view to a :class:`RoutePlan`.

Per node (Calico's model):
- every local pod address: ``<ip>/32 dev <host veth>`` (the endpoint route);
- every block affine to this node: ``blackhole <block>`` so unallocated addresses of our own
  blocks are dropped here instead of following the default route (Felix/BIRD do the same);
- every block affine to another node, by the mode its pool (Calico profile) or the cluster
  configuration (Cilium profile) asks for towards that node:

      mode    when                                          route
      vxlan   vxlanMode Always, or CrossSubnet and another      <block> via <VTEP IP> dev vxlan.calico onlink
              subnet; Cilium tunnel: vxlan                  (+ neighbour and FDB entries for the VTEP)
      ipip    ipipMode Always, or CrossSubnet and another   <block> via <node IP> dev tunl0 onlink
              subnet                                        (+ the block in the IPIP map)
      direct  otherwise, the node in our subnet             <block> via <node IP> dev <uplink>
      bgp     otherwise, Calico with BGP                    nothing here: BIRD programs it
              (without BGP the plan says why it is unreachable)
- every address borrowed from a block by another node than the block's: the same towards that
  node, as a /32 (more specific than the block route, so it wins).

Each RouteSpec says why it exists (``reason``), for ``podnet`` diagnostics.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from podnet.calc.cluster import BlockInfo, NodeInfo
from podnet.calc.endpoints import EndpointRecord


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: str
    gateway: str | None = None
    dev: str | None = None
    kind: str = "unicast"  # "unicast" | "blackhole"
    onlink: bool = False
    reason: str = field(default="", compare=False)


@dataclass(frozen=True)
class Peer:
    """A remote node's VXLAN endpoint."""

    tunnel_ip: str
    mac: str
    node_ip: str


@dataclass(frozen=True)
class EncapPolicy:
    """How this cluster reaches other nodes' pods (from the profile, pools and configuration)."""

    profile: str = "calico"  # "calico" | "cilium"
    cilium_tunnel: str = "disabled"  # "vxlan" | "disabled"
    pools: tuple[tuple[str, str, str], ...] = ()  # (cidr, ipipMode, vxlanMode), enabled pools
    bgp: bool = False  # Calico: BIRD distributes unencapsulated routes

    def mode(self, dst: str, same_subnet: bool) -> str:
        if self.profile == "cilium":
            return "vxlan" if self.cilium_tunnel == "vxlan" else "direct"
        net = ipaddress.ip_network(dst)
        for cidr, ipip, vxlan in self.pools:
            if net.subnet_of(ipaddress.ip_network(cidr)):
                if vxlan == "Always" or (vxlan == "CrossSubnet" and not same_subnet):
                    return "vxlan"
                if ipip == "Always" or (ipip == "CrossSubnet" and not same_subnet):
                    return "ipip"
                break
        return "direct"


@dataclass
class RoutePlan:
    routes: list[RouteSpec]
    unreachable: dict[str, str]  # node -> why no route could be built
    vxlan_peers: dict[str, Peer] = field(default_factory=dict)  # node -> its VTEP
    ipip_map: dict[str, str] = field(default_factory=dict)  # remote CIDR -> remote node IP
    bird_cidrs: set[str] = field(default_factory=set)  # remote CIDRs BIRD programs (no encapsulation)
    modes: set[str] = field(default_factory=set)  # the encapsulations in use towards some node
    endpoint_dsts: frozenset[str] = frozenset()  # the local pods' /32s the plan was computed from


TUNL_DEVICE = "tunl0"
VXLAN_DEVICES = {"calico": ("vxlan.calico", 4096, 4789), "cilium": ("cilium_vxlan", 2, 8472)}


def node_routes(
    local: str,
    nodes: dict[str, NodeInfo],
    blocks: Iterable[BlockInfo],
    endpoints: Iterable[EndpointRecord],
    uplink: str = "eth0",
    policy: EncapPolicy | None = None,
) -> RoutePlan:
    policy = policy or EncapPolicy()
    plan = RoutePlan([], {})
    routes: dict[str, RouteSpec] = {}
    me = nodes.get(local)
    vxlan_dev = VXLAN_DEVICES[policy.profile][0]

    def route_to(dst: str, node_name: str, why: str) -> None:
        other = nodes.get(node_name)
        if other is None or other.address is None:
            plan.unreachable[node_name] = "node unknown or without an address"
            return
        if me is None or me.address is None:
            plan.unreachable[node_name] = f"this node ({local}) has no address yet"
            return
        same = other.address.ip in me.address.network
        node_ip = str(other.address.ip)
        mode = policy.mode(dst, same)
        if mode == "vxlan":
            if not (other.vxlan_ip and other.vxlan_mac):
                plan.unreachable[node_name] = "its VXLAN endpoint is not published yet"
                return
            plan.vxlan_peers[node_name] = Peer(other.vxlan_ip, other.vxlan_mac, node_ip)
            routes[dst] = RouteSpec(dst, other.vxlan_ip, vxlan_dev, onlink=True, reason=f"{why} (vxlan)")
        elif mode == "ipip":
            plan.ipip_map[dst] = node_ip
            routes[dst] = RouteSpec(dst, node_ip, TUNL_DEVICE, onlink=True, reason=f"{why} (ipip)")
        elif policy.bgp and policy.profile == "calico":
            plan.bird_cidrs.add(dst)  # BIRD learns it from that node and programs it
            return
        elif same:
            routes[dst] = RouteSpec(dst, node_ip, uplink, reason=f"{why} (direct)")
        else:
            need = (
                "autoDirectNodeRoutes needs every node in one subnet (or tunnel: vxlan)"
                if policy.profile == "cilium"
                else "needs encapsulation or BGP"
            )
            plan.unreachable[node_name] = f"{other.ip} is outside {me.address.network}: {need}"
            return
        plan.modes.add(mode)

    for block in blocks:
        if block.node == local:
            routes[block.cidr] = RouteSpec(block.cidr, kind="blackhole", reason="local block")
        elif block.node:
            route_to(block.cidr, block.node, f"block of {block.node}")
        for ip, user in block.borrowed.items():
            if user not in (local, block.node):
                route_to(f"{ip}/32", user, f"address borrowed by {user}")
    local: set[str] = set()
    for ep in endpoints:
        for ip in ep.addresses:
            dst = str(ipaddress.ip_network(ip))
            routes[dst] = RouteSpec(dst, None, ep.host_ifname, reason=f"pod {ep.pod_key}")
            local.add(dst)
    plan.routes = sorted(routes.values())
    plan.endpoint_dsts = frozenset(local)
    return plan


def encap_policy(pools: Iterable, config, bgp: bool = False) -> EncapPolicy:
    """The :class:`EncapPolicy` of the model's IPPools and ClusterConfiguration."""
    settings = config.effective() if config is not None else None
    enabled = sorted((p.spec.cidr, p.spec.ipip_mode, p.spec.vxlan_mode) for p in pools if not p.spec.disabled)
    return EncapPolicy(
        profile=settings.profile if settings else "calico",
        cilium_tunnel=settings.tunnel if settings else "disabled",
        pools=tuple(enabled),
        bgp=bgp,
    )
