"""Which packets may skip netfilter conntrack (pure): the inputs of the policy table's ``notrack`` rule.

Conntrack costs every new connection an entry (created, confirmed, timed out), and pod traffic that
no policy and no NAT concerns does not need one. The policy table's ``prerouting`` chain (priority
``raw``, before conntrack's own hook at ``-200``) marks such packets untracked::

    ip saddr @notrack_pools ip daddr @notrack_pools
    ip saddr != @notrack_keep ip daddr != @notrack_keep
    ip saddr . meta l4proto . th sport != @notrack_backends
    ip daddr . meta l4proto . th dport != @notrack_backends notrack

**Who needs conntrack**, and why each stays tracked:

- an endpoint of THIS node that some tier selects (either direction): its replies pass by ``ct state
  established``, so both directions of every flow it is in must be tracked. Its address is in
  ``keep``. Endpoints of other nodes are enforced there; this node's conntrack is not involved.
- Service DNAT: a pod's packet to a ClusterIP/ExternalIP/NodePort has a destination outside the
  pools and is tracked (DNAT happens at ``dstnat``, after ``raw``: the rule sees the service
  address). The backend's replies must be un-NATed on the client's node, so they must be tracked
  there too: their source is a backend's (address, protocol, port), in ``backends``.
- natOutgoing and everything else leaving the pools: one end outside the pools.
- the node's own traffic: its pool addresses (VTEP, Cilium router address) are in ``keep``; its
  other addresses are outside the pools. Locally generated packets never meet ``prerouting``.

**Both directions of a flow must get the same decision on a node.** A reply tracked alone starts a
new entry in the wrong direction (a TCP SYN-ACK or mid-handshake packet is INVALID to conntrack) and
``ct state invalid drop`` kills it; a request tracked whose reply is not never reaches ESTABLISHED.
Every node sees both directions of a pod flow that crosses it in ``prerouting`` (same node: both
from the pods' veths; across nodes: one from a veth, one from the uplink or the decapsulated
tunnel), and the rule is symmetric in source and destination: both ends in the pools, neither end
in ``keep``, neither end a backend triple. The backend test must look at BOTH ends, not only the
source: pod A (node 1) → ClusterIP → backend B (node 2) arrives on node 2 as A → B:port, plain pod
to pod; testing only the reply's source would untrack the request there and track its reply alone.
With both ends tested:

- same node, A → B: both directions on this node, untracked unless A or B is isolated here;
- across nodes, A (node 1) → B (node 2): each node decides for itself; the node of an isolated end
  tracks both directions, the other may untrack both (its conntrack is not used);
- A → Service → B, same node: the request is tracked by its ClusterIP destination (one entry, DNAT),
  B's reply matches ``backends`` by its source and is tracked: un-NATed by that entry;
- A → Service → B across nodes: node 1 as above; on node 2 request (destination B:port) and reply
  (source B:port) both match ``backends``: tracked both ways. A direct connection to a backend port
  is tracked too (the price of not knowing, on node 2, that node 1 translated it).
- NodePort from outside, SNATed or not: one end outside the pools, or the backend end in
  ``backends``: tracked.

Changes: an address joining ``keep`` (a policy now selects the pod) makes its running flows
tracked mid-stream (TCP: conntrack picks an established flow up from its next ACK,
``nf_conntrack_tcp_loose``), and the next packet is NEW, judged by the policy; a flow caught mid
handshake is INVALID once and its retransmission goes through. Leaving ``keep``: entries idle out.

Limits: IPv4 only (IPv6 pod traffic stays tracked); ICMP errors from outside the pools about an
untracked flow (a router between nodes reporting a smaller MTU) find no entry, are INVALID and
dropped in forward — pod MTUs leave room for the encapsulation, so the nodes send none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet.calc.policy import PolicyPlan, protocol_name

#: (address, protocol name, port) of a Service backend, as calc.policy_inputs.service_backends gives.
Triple = tuple[str, str, int]
TRACKED_PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class NotrackPlan:
    """What the ``notrack`` rule needs; empty ``pools``: nothing is untracked."""

    pools: tuple[str, ...] = ()  # IPv4 pool CIDRs, collapsed
    keep: tuple[str, ...] = ()  # IPv4 addresses in the pools that stay tracked
    backends: tuple[Triple, ...] = ()  # IPv4 Service backends (address, protocol, port)


def _v4(text: str) -> ipaddress.IPv4Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address if isinstance(address, ipaddress.IPv4Address) else None


def notrack_plan(
    plan: PolicyPlan,
    pool_cidrs: Iterable[str],
    backends: Mapping[str, Iterable[Triple]] | Iterable[Triple],
    node_addresses: Iterable[str | None] = (),
) -> NotrackPlan:
    """The ``notrack`` inputs for this node (see the module docstring): ``plan`` is the node's
    compiled policy (its endpoints are the local ones), ``pool_cidrs`` every IP pool (disabled ones
    too: pods may still hold their addresses), ``backends`` every Service's ready backends (a
    mapping ``ns/name`` -> triples, or the triples), ``node_addresses`` every node's addresses (the
    ones inside the pools stay tracked)."""
    nets = [n for n in (ipaddress.ip_network(c, strict=False) for c in pool_cidrs) if n.version == 4]
    pools = list(ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]
    if not pools:
        return NotrackPlan()

    def pooled(text: str | None) -> ipaddress.IPv4Address | None:
        address = _v4(text) if text else None
        return address if address is not None and any(address in p for p in pools) else None

    keep = {
        address
        for endpoint in plan.endpoints.values()
        if endpoint.ingress_isolated or endpoint.egress_isolated
        for address in map(pooled, endpoint.addresses)
        if address is not None
    }
    keep |= {a for a in map(pooled, node_addresses) if a is not None}
    triples = backends.values() if isinstance(backends, Mapping) else [backends]
    found = {
        (str(address), protocol_name(protocol), int(port))
        for group in triples
        for ip, protocol, port in group
        if (address := pooled(ip)) is not None and protocol_name(protocol) in TRACKED_PROTOCOLS
    }
    return NotrackPlan(
        pools=tuple(str(p) for p in pools),
        keep=tuple(str(a) for a in sorted(keep)),
        backends=tuple(sorted(found, key=lambda t: (ipaddress.ip_address(t[0]), t[1], t[2]))),
    )
