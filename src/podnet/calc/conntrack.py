"""Which packets may skip netfilter conntrack (pure): what the policy table's ``notrack`` rule needs.

Conntrack costs every new connection an entry (created, confirmed, timed out), and pod traffic that
no policy and no NAT concerns does not need one. The policy table's ``prerouting`` chain (priority
``raw``, before conntrack's own hook at ``-200``) jumps to a chain whose one rule marks such packets
untracked (one pool shown; several are an anonymous set)::

    ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16
        ip saddr != @notrack_tracked ip daddr != @notrack_tracked notrack

that is: both ends in the IPv4 pools, neither among the pool addresses that must stay tracked
(:func:`notrack_plan`; ``notrack_tracked`` is a hash set). The rule runs for every packet the node
sees, so its form is chosen by cost: ``perf`` on a forwarding namespace flooded with small UDP
packets put a pool-minus-tracked interval set (~1,200 intervals, two binary searches a packet)
at ~3.5 % of all CPU samples in the lookups alone; prefix compares plus two hash lookups cost
~0.9 % (the rest of the table ~4 %). Packets from outside the pools stop at the first compare.

**Who needs conntrack**, and why each stays tracked:

- an endpoint of THIS node that some tier selects (either direction): its replies pass by ``ct state
  established``, so both directions of every flow it is in must be tracked. Endpoints of other
  nodes are enforced there; this node's conntrack is not involved.
- Service DNAT: a pod's packet to a ClusterIP/ExternalIP/NodePort has a destination outside the
  pools and is tracked (DNAT happens at ``dstnat``, after ``raw``: the rule sees the service
  address). The backend's replies must be un-NATed on the client's node, so they must be tracked
  there too: every Service backend's address stays tracked (all its traffic: see below).
- natOutgoing and everything else leaving the pools: one end outside the pools.
- the node's own traffic: its pool addresses (VTEP, Cilium router address) stay tracked; its other
  addresses are outside the pools. Locally generated packets never meet ``prerouting``. So do the
  control plane's hosts (:class:`~podnet.calc.policy.ControlPlane`) should one be in a pool: the
  forward chains accept untracked packets before the control-plane drops.

**Both directions of a flow must get the same decision on a node.** A reply tracked alone starts a
new entry in the wrong direction (a TCP SYN-ACK is INVALID to conntrack) and ``ct state invalid
drop`` kills it; a request tracked whose reply is not never reaches ESTABLISHED. Every node sees
both directions of a pod flow that crosses it in ``prerouting`` (same node: both from the pods'
veths; across nodes: one from a veth, one from the uplink or the decapsulated tunnel), and the rule
is symmetric in source and destination. A backend test on the source alone is not: pod A (node 1)
→ ClusterIP → backend B (node 2) arrives on node 2 as A → B:port, plain pod to pod; untracked
there, while B's reply would be tracked alone (the lab showed it: the SYN-ACK dropped as INVALID).
With the backend's address tracked at both ends:

- same node, A → B: both directions on this node, untracked unless A or B is isolated here or a
  backend;
- across nodes, A (node 1) → B (node 2): each node decides for itself; the node of an isolated end
  tracks both directions, the other may untrack both (its conntrack is not used);
- A → Service → B, same node: the request is tracked by its ClusterIP destination (one entry,
  DNAT), B's reply by B's address: un-NATed by that entry;
- A → Service → B across nodes: node 1 as above; node 2 tracks both directions by B's address;
- NodePort from outside, SNATed or not: one end outside the pools, or B: tracked.

Tracking a backend's whole address, not only its (protocol, port), costs its other ports their
conntrack entries; a port-exact test is two more lookups on every packet of every pod (above).

Changes: an address joining ``notrack_tracked`` (a policy now selects the pod) makes its running flows
tracked mid-stream (TCP: conntrack picks an established flow up from its next ACK,
``nf_conntrack_tcp_loose``), and the next packet is NEW, judged by the policy; a flow caught mid
handshake is INVALID once and its retransmission goes through. Rejoining: entries idle out.

**Host endpoints with forward policy.** On a node where a GlobalNetworkPolicy with
``applyOnForward`` can select a HostEndpoint, nothing is untracked (:func:`forward_policy_here`):
that policy (the host table's forward chains) judges forwarded traffic via the endpoint's interface
and lets replies through as ``established``; an untracked reply from a remote pod would meet it as a
new packet, and a stateless walk of the policy would drop it.

Limits: IPv4 only (IPv6 pod traffic stays tracked); ICMP errors from outside the pools about an
untracked flow (a router between nodes reporting a smaller MTU) find no entry, are INVALID and
dropped in forward — pod MTUs leave room for the encapsulation, so the nodes send none.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from podnet.calc.policy import PolicyPlan

#: (address, protocol name, port) of a Service backend, as calc.policy_inputs.service_backends gives.
Triple = tuple[str, str, int]


@dataclass(frozen=True)
class NotrackPlan:
    """What the ``notrack`` rule needs: ``pools``, the IPv4 pool space whose traffic within itself
    may be untracked (empty: nothing is); ``tracked``, the pool addresses that stay tracked."""

    pools: tuple[str, ...] = ()  # disjoint IPv4 CIDRs
    tracked: tuple[str, ...] = ()  # IPv4 addresses inside the pools

    @property
    def pods(self) -> tuple[str, ...]:
        """The untracked pool space as disjoint CIDRs: ``pools`` minus ``tracked`` (reports, tests)."""
        pools = [ipaddress.IPv4Network(cidr) for cidr in self.pools]
        return tuple(str(n) for n in pools_minus(pools, map(ipaddress.IPv4Address, self.tracked)))


@functools.lru_cache(maxsize=1 << 16)  # the same pod and backend addresses, sync after sync
def _v4(text: str | None) -> ipaddress.IPv4Address | None:
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None
    return address if isinstance(address, ipaddress.IPv4Address) else None


def pools_minus(
    pools: list[ipaddress.IPv4Network], addresses: Iterable[ipaddress.IPv4Address]
) -> list[ipaddress.IPv4Network]:
    """Disjoint ``pools`` without ``addresses``, as CIDRs: the gaps between the addresses of each
    pool, summarized (linear in the addresses, unlike repeated ``address_exclude``)."""
    ordered = sorted(set(addresses))
    out: list[ipaddress.IPv4Network] = []
    for pool in pools:
        start = int(pool.network_address)
        last = int(pool.broadcast_address)
        for address in ordered:
            value = int(address)
            if not start <= value <= last:
                continue
            if value > start:
                out += ipaddress.summarize_address_range(
                    ipaddress.IPv4Address(start), ipaddress.IPv4Address(value - 1)
                )
            start = value + 1
        if start <= last:
            out += ipaddress.summarize_address_range(
                ipaddress.IPv4Address(start), ipaddress.IPv4Address(last)
            )
    return out


def forward_policy_here(node: str, host_endpoints: Iterable[Any], global_policies: Iterable[Any]) -> bool:
    """Whether forwarded traffic on ``node`` may meet host-endpoint policy: one of its HostEndpoints
    and some GlobalNetworkPolicy with ``applyOnForward`` (whatever it selects: conservative, a
    label change cannot then make a flow's replies untracked mid-stream)."""
    mine = any(h.spec.node == node for h in host_endpoints)
    return mine and any(p.spec.apply_on_forward for p in global_policies)


def notrack_plan(
    plan: PolicyPlan,
    pool_cidrs: Iterable[str],
    backends: Mapping[str, Iterable[Triple]] | Iterable[Triple],
    also_tracked: Iterable[str | None] = (),
    forward_policy: bool = False,
    flows: bool = False,
) -> NotrackPlan:
    """The ``notrack`` set for this node (see the module docstring): ``plan`` is the node's
    compiled policy (its endpoints are the local ones), ``pool_cidrs`` every IP pool (disabled ones
    too: pods may still hold their addresses), ``backends`` every Service's ready backends (a
    mapping ``ns/name`` -> triples, or the triples), ``also_tracked`` every node's addresses and the
    control plane's hosts (those inside the pools stay tracked; others are outside anyway);
    ``forward_policy``: host-endpoint policy may judge forwarded traffic here (nothing untracked);
    ``flows``: flow records are on, and conntrack is where this profile learns of a connection and
    counts its bytes (nothing untracked: Calico's own default, the bench's flows rows price it)."""
    if forward_policy or flows:
        return NotrackPlan()
    nets = [n for n in (ipaddress.ip_network(c, strict=False) for c in pool_cidrs) if n.version == 4]
    pools: list[ipaddress.IPv4Network] = list(ipaddress.collapse_addresses(nets))  # type: ignore[arg-type]
    if not pools:
        return NotrackPlan()
    isolated = (
        text
        for endpoint in plan.endpoints.values()
        if endpoint.ingress_isolated or endpoint.egress_isolated
        for text in endpoint.addresses
    )
    groups = backends.values() if isinstance(backends, Mapping) else [backends]
    serving = (ip for group in groups for ip, _protocol, _port in group)
    candidates = (_v4(text) for text in (*isolated, *serving, *also_tracked))
    tracked = {a for a in candidates if a is not None and any(a in pool for pool in pools)}
    return NotrackPlan(pools=tuple(str(n) for n in pools), tracked=tuple(str(a) for a in sorted(tracked)))
