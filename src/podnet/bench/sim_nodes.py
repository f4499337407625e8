"""Simulated nodes for the ``nodes`` scale section: datastore documents only (pure, no I/O).

A simulated node is what the real agents of a lab would see of a node that exists elsewhere: its
``Node`` (address, VXLAN endpoint, labels), one IPAM block affine to it (with the tunnel address
and its pods' addresses allocated), the affinity record, and its pods, written ``Running`` with an
address of that block. No namespace, process or address is created for it.

Addresses are chosen so nothing can ever reach them: node ``i`` is ``<underlay>.<16 + i // 250>.
<1 + i % 250>/24``, inside the lab's own underlay /16 but outside the /24 the lab's nodes are on,
and a lab node namespace has no route beyond its /24 (BGP connects fail at once with "network
unreachable", VXLAN frames to it are dropped in the sender). Blocks are /26 of
:data:`SIM_POOL` (10.252.0.0/16: outside :func:`podnet.lab.topology.random_underlay`'s 10.112 to
10.250, the lab's pod pool and the service range), an IPPool with ``vxlanMode: Always`` (so every
real agent programs a route, a neighbour and an FDB entry per simulated node) and
``nodeSelector: "!all()"`` (no real node allocates from it).

BGP: route reflectors as Calico documents them: the node-to-node mesh off, the reflectors
annotated ``projectcalico.org/RouteReflectorClusterID`` and labelled ``route-reflector: "true"``,
one BGPPeer ``nodeSelector: all()`` / ``peerSelector: route-reflector == 'true'``. A reflector
then peers with every node (its configuration grows with the cluster), a client with the
reflectors only.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

from podnet.calc.cluster import NODE_ADDRESS_ANNOTATION, VXLAN_ADDRESS_ANNOTATION, VXLAN_MAC_ANNOTATION
from podnet.dataplane.vxlan import vtep_mac
from podnet.datastore.base import Write
from podnet.datastore.keys import KeyLayout
from podnet.ipam.block import Block, host_affinity
from podnet.ipam.liveness import tunnel_handle
from podnet.ipam.records import AffinityRecord
from podnet.model.core import ANNOTATION_RR_CLUSTER_ID

SIM_POOL = ipaddress.IPv4Network("10.252.0.0/16")
SIM_POOL_NAME = "bench-sim-nodes"
BLOCK_PREFIX = 26
PODS_PER_NODE = 30
SIM_LABEL = "bench.podnet.io/simulated"
RR_LABEL = "route-reflector"
RR_CLUSTER_ID = "244.0.0.1"
FIRST_SIM_SUBNET = 16  # node i is in <underlay>.<16 + i // 250>.0/24
NODES_PER_SUBNET = 250
MAX_SIM_NODES = SIM_POOL.num_addresses >> (32 - BLOCK_PREFIX)  # 1,024 blocks


@dataclass(frozen=True)
class SimNode:
    index: int
    name: str
    address: str  # with its subnet's prefix length: 10.x.16.1/24
    block: str  # its /26 of SIM_POOL
    vtep_ip: str  # ordinal 0 of the block, as Calico takes the tunnel address from a block
    vtep_mac: str

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def pod_ip(self, slot: int) -> str:
        """The address of the node's pod ``slot`` (0-based): ordinal ``slot + 1`` of its block."""
        return str(ipaddress.IPv4Network(self.block).network_address + slot + 1)


def sim_node(underlay: str, index: int) -> SimNode:
    """Simulated node ``index`` (0-based) of a lab whose underlay is ``underlay`` (a /16)."""
    if not 0 <= index < MAX_SIM_NODES:
        raise ValueError(f"simulated node index must be 0..{MAX_SIM_NODES - 1}, not {index}")
    net = ipaddress.IPv4Network(underlay)
    if net.prefixlen != 16:
        raise ValueError(f"the underlay must be a /16, not {underlay}")
    subnet = FIRST_SIM_SUBNET + index // NODES_PER_SUBNET
    ip = net.network_address + (subnet << 8) + 1 + index % NODES_PER_SUBNET
    block = ipaddress.IPv4Network(
        (int(SIM_POOL.network_address) + (index << (32 - BLOCK_PREFIX)), BLOCK_PREFIX)
    )
    name = f"sim-{index:04d}"
    return SimNode(index, name, f"{ip}/24", str(block), str(block.network_address), vtep_mac(name))


def pool_doc() -> dict:
    spec = {
        "cidr": str(SIM_POOL),
        "blockSize": BLOCK_PREFIX,
        "ipipMode": "Never",
        "vxlanMode": "Always",
        "natOutgoing": False,
        "nodeSelector": "!all()",
    }
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "IPPool",
        "metadata": {"name": SIM_POOL_NAME},
        "spec": spec,
    }


def node_doc(sim: SimNode) -> dict:
    annotations = {
        NODE_ADDRESS_ANNOTATION: sim.address,
        VXLAN_ADDRESS_ANNOTATION: sim.vtep_ip,
        VXLAN_MAC_ANNOTATION: sim.vtep_mac,
    }
    labels = {"kubernetes.io/hostname": sim.name, "kubernetes.io/os": "linux", SIM_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": sim.name, "labels": labels, "annotations": annotations},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": sim.ip},
                {"type": "Hostname", "address": sim.name},
            ]
        },
    }


def pod_doc(sim: SimNode, slot: int, namespace: str, labels: dict[str, str], ports: list[dict]) -> dict:
    """Pod ``slot`` of ``sim``: bound to it and ``Running`` at its block address (datastore only)."""
    ip = sim.pod_ip(slot)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{sim.name}-p{slot:02d}", "namespace": namespace, "labels": labels},
        "spec": {"nodeName": sim.name, "containers": [{"name": "c", "ports": ports}]},
        "status": {
            "phase": "Running",
            "hostIP": sim.ip,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def ipam_writes(layout: KeyLayout, sim: SimNode, pods: Sequence[dict]) -> list[Write]:
    """The node's block (tunnel address at ordinal 0, ``pods`` at their addresses) and affinity,
    as the IPAM allocator writes them (handles are left out: no agent reads them)."""
    block = Block.empty(sim.block, host_affinity(sim.name))
    block.assign_ordinal(
        0, tunnel_handle("vxlan", sim.name), {"node": sim.name, "type": "vxlanTunnelAddress"}
    )
    for doc in pods:
        meta = doc["metadata"]
        handle = f"bench.{meta['namespace']}.{meta['name']}"
        attrs = {"node": sim.name, "namespace": meta["namespace"], "pod": meta["name"]}
        block.assign_ordinal(block.ordinal(doc["status"]["podIP"]), handle, attrs)
    return [
        Write(layout.block(sim.block), block.to_json()),
        Write(layout.affinity(sim.name, sim.block), AffinityRecord(sim.name, sim.block).to_json()),
    ]


def bgp_docs() -> list[dict]:
    """Mesh off, and every node peering with the route reflectors (Calico's documented setup)."""
    return [
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPConfiguration",
            "metadata": {"name": "default"},
            "spec": {"nodeToNodeMeshEnabled": False, "asNumber": 64512},
        },
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "BGPPeer",
            "metadata": {"name": "peer-with-route-reflectors"},
            "spec": {"nodeSelector": "all()", "peerSelector": f"{RR_LABEL} == 'true'"},
        },
    ]


def reflector_patch() -> dict:
    """The patch that makes a node a route reflector of :data:`RR_CLUSTER_ID`."""
    return {
        "metadata": {"labels": {RR_LABEL: "true"}, "annotations": {ANNOTATION_RR_CLUSTER_ID: RR_CLUSTER_ID}}
    }


def growth_exponent(sizes: Sequence[float], values: Sequence[float | None]) -> float | None:
    """``b`` of the least-squares fit ``value = a * size**b`` in log-log space (1: linear, 0: flat);
    None with fewer than 2 positive points."""
    points = [
        (math.log(s), math.log(v))
        for s, v in zip(sizes, values, strict=True)
        if v is not None and v > 0 and s > 0
    ]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    if den == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den
