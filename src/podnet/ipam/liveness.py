"""Which IPAM handles are still owned by something that exists: the input of check and GC.

A handle is live when the allocation's attributes name a Pod (``namespace`` + ``pod``) that is in
the datastore, or when it is a node's tunnel-address handle (``<kind>-tunnel-addr-<node>``, as
Calico names them) and that Node exists. Allocations made with neither (``podnet ipam assign``
without ``--pod``) are owned by whoever made them and only live while their ``node`` exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from podnet.datastore.resources import ResourceStore
from podnet.ipam.block import Allocation
from podnet.model import lookup

TUNNEL_HANDLE_KINDS = ("ipip", "vxlan", "wireguard")


def tunnel_handle(kind: str, node: str) -> str:
    return f"{kind}-tunnel-addr-{node}"


@dataclass(frozen=True)
class ClusterView:
    pods: frozenset[str]  # "namespace/name"
    nodes: frozenset[str]

    @classmethod
    def read(cls, resources: ResourceStore) -> ClusterView:
        pods = frozenset(f"{p.metadata.namespace}/{p.metadata.name}" for p in resources.list(lookup("pods")))
        nodes = frozenset(n.metadata.name for n in resources.list(lookup("nodes")))
        return cls(pods, nodes)

    def owner_exists(self, allocation: Allocation) -> bool:
        attrs = allocation.attrs
        if attrs.get("pod"):
            return f"{attrs.get('namespace', 'default')}/{attrs['pod']}" in self.pods
        for kind in TUNNEL_HANDLE_KINDS:
            prefix = tunnel_handle(kind, "")
            if allocation.handle_id.startswith(prefix):
                return allocation.handle_id.removeprefix(prefix) in self.nodes
        return attrs.get("node") in self.nodes

    def live_handles(self, allocations: Iterable[Allocation]) -> set[str]:
        return {a.handle_id for a in allocations if self.owner_exists(a)}
