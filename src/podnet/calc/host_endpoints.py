"""Calico HostEndpoints of this node → what the host-endpoint table enforces (pure).

A ``projectcalico.org/v3`` HostEndpoint puts the node's OWN traffic through an interface under host
policy: with no policy allowing it, traffic to and from the host through that interface is denied.
The GlobalNetworkPolicies that select it (``policy``, :mod:`podnet.calc.host_policy`) come between
what Felix lets through before any host endpoint policy and that default deny:

    always allowed                          inbound (to the host)          outbound (from the host)
    --------------------------------------  -----------------------------  -------------------------
    loopback, replies (ct established)      yes                            yes
    failsafe ports (ClusterConfiguration)   failsafeInboundHostPorts       failsafeOutboundHostPorts
                                            (dport; ``net``: source)       (dport; ``net``: dest)
    this node's own pods                    from a local pod address       to a local pod address
    overlay tunnel traffic of known nodes   from a node IP: VXLAN UDP      to a node IP: the same
                                            (4789/8472) or IPIP (proto 4)
    ICMPv6 neighbour discovery              yes (link control, like ARP)   yes

Forwarded (pod) traffic is affected only by ``applyOnForward`` policies (Calico's default is
false), and workload interfaces (``cali*``, ``lxc*``) are never host endpoints, not even for ``"*"``.

Which interface: ``interfaceName`` (a name, or ``"*"`` for every host interface); without it, the
interfaces holding one of ``expectedIPs`` (as Calico). A host endpoint of this node whose interface
cannot be found is reported in ``errors`` and enforces nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from podnet.calc.policy import EndpointTier, PolicyPlan
from podnet.model import HostEndpoint
from podnet.model.cluster import Failsafe

WILDCARD = "*"
#: Host-side names of pod veths (Calico and Cilium profiles): never a host endpoint.
WORKLOAD_PREFIXES = ("cali", "lxc")
#: Felix's default VXLAN port and the Cilium profile's.
TUNNEL_UDP_PORTS = (4789, 8472)


@dataclass(frozen=True)
class HostEndpointPlan:
    """What the host-endpoint table of one node enforces."""

    interfaces: dict[str, str] = field(default_factory=dict)  # ifname or "*" -> HostEndpoint name
    failsafe_in: tuple[Failsafe, ...] = ()
    failsafe_out: tuple[Failsafe, ...] = ()
    tunnel_peers: tuple[str, ...] = ()  # other nodes' IPv4 addresses
    tunnel_ports: tuple[int, ...] = TUNNEL_UDP_PORTS
    local_pods: tuple[str, ...] = ()  # this node's pod addresses
    errors: dict[str, str] = field(default_factory=dict)  # HostEndpoint name -> why it enforces nothing
    policy: PolicyPlan | None = None  # the GlobalNetworkPolicies of its subjects (calc.host_policy)

    def tiers(self, key: str, direction: str) -> tuple[EndpointTier, ...]:
        """The tiers host policy subject ``key`` (:func:`~podnet.calc.host_policy.host_key`) meets."""
        endpoint = self.policy.endpoints.get(key) if self.policy is not None else None
        return endpoint.tiers(direction) if endpoint is not None else ()

    @property
    def active(self) -> bool:
        """True when some interface of this node is under a host endpoint."""
        return bool(self.interfaces)


def resolve_interfaces(hep: HostEndpoint, interface_addresses: Mapping[str, Sequence[str]]) -> list[str]:
    """The interfaces ``hep`` covers on its node: ``interfaceName``, else those holding an expected IP."""
    if hep.spec.interface_name:
        return [hep.spec.interface_name]
    expected = {ipaddress.ip_address(ip) for ip in hep.spec.expected_ips or ()}
    return sorted(
        ifname
        for ifname, addresses in interface_addresses.items()
        if any(ipaddress.ip_interface(a).ip in expected for a in addresses)
        and not ifname.startswith(WORKLOAD_PREFIXES)
    )


def host_endpoint_plan(
    node: str,
    host_endpoints: Iterable[HostEndpoint],
    failsafe_in: Sequence[Failsafe],
    failsafe_out: Sequence[Failsafe],
    node_addresses: Iterable[str | None] = (),
    local_pod_addresses: Iterable[str] = (),
    interface_addresses: Mapping[str, Sequence[str]] | None = None,
) -> HostEndpointPlan:
    """The plan for ``node``: its host endpoints (by name; the first name wins an interface), the
    failsafe ports, the other nodes' addresses (tunnel traffic) and its own pods' addresses."""
    interfaces: dict[str, str] = {}
    errors: dict[str, str] = {}
    for hep in sorted(host_endpoints, key=lambda h: h.metadata.name or ""):
        if hep.spec.node != node:
            continue
        name = hep.metadata.name or ""
        if hep.spec.interface_name and hep.spec.interface_name.startswith(WORKLOAD_PREFIXES):
            errors[name] = f"{hep.spec.interface_name} is a workload interface, not a host interface"
            continue
        found = resolve_interfaces(hep, interface_addresses or {})
        if not found:
            errors[name] = f"no interface of node {node} holds any of expectedIPs {hep.spec.expected_ips}"
            continue
        for ifname in found:
            interfaces.setdefault(ifname, name)
    if not interfaces:
        return HostEndpointPlan(errors=errors)
    peers = sorted(
        {a for a in node_addresses if a and ipaddress.ip_address(a).version == 4},
        key=ipaddress.ip_address,
    )
    pods = sorted(
        {a for a in local_pod_addresses if ipaddress.ip_address(a).version == 4}, key=ipaddress.ip_address
    )
    return HostEndpointPlan(
        interfaces=interfaces,
        failsafe_in=tuple(failsafe_in),
        failsafe_out=tuple(failsafe_out),
        tunnel_peers=tuple(peers),
        local_pods=tuple(pods),
        errors=errors,
    )
