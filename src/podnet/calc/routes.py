"""Which routes a node needs: pure, from the cluster view to a set of :class:`RouteSpec`.

Per node (Calico's model; the routing issue adds encapsulation):
- every local pod address: ``<ip>/32 dev <host veth>`` (the endpoint route);
- every block affine to this node: ``blackhole <block>`` so unallocated addresses of our own
  blocks are dropped here instead of following the default route (Felix/BIRD do the same);
- every block affine to another node that is directly reachable (same subnet as our uplink):
  ``<block> via <node IP> dev <uplink>``;
- every address borrowed from a block by another node than the block's: ``<ip>/32 via <that node>``
  (more specific than the block route, so it wins), and nothing for our own borrowed addresses
  (the endpoint route covers them).

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


@dataclass
class RoutePlan:
    routes: list[RouteSpec]
    unreachable: dict[str, str]  # node -> why no route could be built


def node_routes(
    local: str,
    nodes: dict[str, NodeInfo],
    blocks: Iterable[BlockInfo],
    endpoints: Iterable[EndpointRecord],
    uplink: str = "eth0",
) -> RoutePlan:
    routes: dict[str, RouteSpec] = {}
    unreachable: dict[str, str] = {}
    me = nodes.get(local)

    def remote_gateway(node_name: str) -> str | None:
        other = nodes.get(node_name)
        if other is None or other.address is None:
            unreachable[node_name] = "node unknown or without an address"
            return None
        if me is None or me.address is None:
            unreachable[node_name] = f"this node ({local}) has no address yet"
            return None
        if other.address.ip not in me.address.network:
            unreachable[node_name] = f"{other.ip} is outside {me.address.network}: needs encapsulation or BGP"
            return None
        return other.ip

    for block in blocks:
        if block.node == local:
            routes[block.cidr] = RouteSpec(block.cidr, kind="blackhole", reason="local block")
        elif block.node:
            gw = remote_gateway(block.node)
            if gw:
                routes[block.cidr] = RouteSpec(block.cidr, gw, uplink, reason=f"block of {block.node}")
        for ip, user in block.borrowed.items():
            if user not in (local, block.node):
                gw = remote_gateway(user)
                if gw:
                    dst = f"{ip}/32"
                    routes[dst] = RouteSpec(dst, gw, uplink, reason=f"address borrowed by {user}")
    for ep in endpoints:
        for ip in ep.addresses:
            dst = str(ipaddress.ip_network(ip))
            routes[dst] = RouteSpec(dst, None, ep.host_ifname, reason=f"pod {ep.pod_key}")
    return RoutePlan(sorted(routes.values()), unreachable)
