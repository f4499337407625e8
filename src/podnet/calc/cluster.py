"""The agent's view of the cluster: datastore keys decoded into what calculation needs.

``ClusterCache`` is fed the datastore snapshot (``reset``) and then every change (``update``); it
keeps the last good value of each key, so a corrupt or invalid value is reported (``errors``) and
skipped without disturbing anything else. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from podnet.calc.endpoints import EndpointRecord
from podnet.calc.memo import ObjectMemo
from podnet.calc.pod_record import Interner, PodRecord
from podnet.calc.policy import PodInfo
from podnet.calc.services import ReadyPods
from podnet.datastore.base import KeyValue
from podnet.datastore.keys import KeyLayout, token_to_cidr
from podnet.errors import PodnetError
from podnet.ipam.block import Block
from podnet.ipam.pools import IPV4_POOLS_ANNOTATION
from podnet.model import (
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    CalicoNetworkPolicy,
    ClusterConfiguration,
    ClusterNetworkPolicy,
    GlobalNetworkPolicy,
    IPPool,
    Node,
    Tier,
    lookup,
    parse_resource,
)
from podnet.model.core import ANNOTATION_CILIUM_HOST, ANNOTATION_CILIUM_HOST_ALIAS
from podnet.model.identity import LabelSet, parse_label_set

NODE_ADDRESS_ANNOTATION = "projectcalico.org/IPv4Address"
VXLAN_ADDRESS_ANNOTATION = "projectcalico.org/IPv4VXLANTunnelAddr"
VXLAN_MAC_ANNOTATION = "projectcalico.org/VXLANTunnelMACAddr"


# Datastore type key -> (ClusterCache attribute, keyed "namespace/name"); every change is "policy".
_POLICY_KINDS: dict[str, tuple[str, bool]] = {
    "networkpolicies.projectcalico.org": ("calico_policies", True),
    "globalnetworkpolicies.projectcalico.org": ("global_policies", False),
    "tiers.projectcalico.org": ("tiers", False),
    "adminnetworkpolicies.policy.networking.k8s.io": ("admin_policies", False),
    "baselineadminnetworkpolicies.policy.networking.k8s.io": ("baseline_policy", False),
    "clusternetworkpolicies.policy.networking.k8s.io": ("cluster_policies", False),
    "serviceaccounts": ("service_accounts", True),
    "ciliumnetworkpolicies.cilium.io": ("cilium_policies", True),
    "ciliumclusterwidenetworkpolicies.cilium.io": ("cilium_cluster_policies", False),
}


IPAM_ANNOTATIONS = (IPV4_POOLS_ANNOTATION,)  # the namespace annotations a pod's address depends on


def _put(table: dict, key: str, value: object | None) -> None:
    """Store ``value`` under ``key``; ``None`` (a delete) removes it."""
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


@dataclass(frozen=True)
class NodeInfo:
    name: str
    address: ipaddress.IPv4Interface | None  # node IP with its subnet
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    vxlan_ip: str | None = None  # the node's VTEP: tunnel address and MAC, published by its agent
    vxlan_mac: str | None = None
    router_ip: str | None = None  # Cilium scheme: the pods' gateway on cilium_host, published by its agent

    @classmethod
    def from_node(cls, node: Node) -> NodeInfo:
        annotations = node.metadata.annotations or {}
        address = None
        if annotations.get(NODE_ADDRESS_ANNOTATION):
            address = ipaddress.IPv4Interface(annotations[NODE_ADDRESS_ANNOTATION])
        else:
            for item in node.status.addresses if node.status and node.status.addresses else []:
                if item.type == "InternalIP" and ":" not in item.address:
                    address = ipaddress.IPv4Interface(f"{item.address}/32")
                    break
        return cls(
            node.metadata.name,
            address,
            dict(node.metadata.labels or {}),
            annotations.get(VXLAN_ADDRESS_ANNOTATION),
            annotations.get(VXLAN_MAC_ANNOTATION),
            annotations.get(ANNOTATION_CILIUM_HOST) or annotations.get(ANNOTATION_CILIUM_HOST_ALIAS),
        )

    @property
    def ip(self) -> str | None:
        return str(self.address.ip) if self.address else None


@dataclass(frozen=True)
class BlockInfo:
    cidr: str
    node: str | None  # affinity
    borrowed: dict[str, str] = field(default_factory=dict, compare=False)  # ip -> node using it


class ClusterCache:
    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        self.nodes: dict[str, NodeInfo] = {}
        self.pools: dict[str, IPPool] = {}
        self.blocks: dict[str, BlockInfo] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.config: ClusterConfiguration | None = None
        self.node_annotations: dict[str, dict[str, str]] = {}  # BGP reads AS / RR cluster id from them
        self.bgp_config = None  # the BGPConfiguration named "default", if any
        self.bgp_peers: dict[str, object] = {}
        self.pods: dict[str, PodRecord] = {}  # "namespace/name" -> what policy, services, CNI read
        self._shared = Interner()  # label mappings and port lists the pods have in common
        self.ready_pods = ReadyPods()  # the pods that can be Service endpoints, by label (kept current)
        self.namespaces: dict[str, dict[str, str]] = {}  # name -> labels
        self.namespace_ipam: dict[str, dict[str, str]] = {}  # name -> its IPAM annotations (CNI ADD)
        self.netpols: dict[str, object] = {}  # "namespace/name" -> networking.k8s.io NetworkPolicy
        self.host_endpoints: dict[str, object] = {}  # name -> Calico HostEndpoint (host policy)
        self.services: dict[str, object] = {}  # "namespace/name" -> v1 Service
        # Calico's policy model and the network-policy-api kinds (issue 16's ordered policy):
        self.calico_policies: dict[str, CalicoNetworkPolicy] = {}  # "namespace/name"
        self.global_policies: dict[str, GlobalNetworkPolicy] = {}  # name
        self.tiers: dict[str, Tier] = {}  # name -> stored Tier (model.tier.tier_table adds built-ins)
        self.admin_policies: dict[str, AdminNetworkPolicy] = {}  # name
        self.baseline_policy: BaselineAdminNetworkPolicy | None = None  # the singleton "default"
        self.cluster_policies: dict[str, ClusterNetworkPolicy] = {}  # name
        self.service_accounts: dict[str, dict[str, str]] = {}  # "namespace/name" -> labels
        self.cilium_policies: dict[str, object] = {}  # "namespace/name" -> CiliumNetworkPolicy
        self.cilium_cluster_policies: dict[str, object] = {}  # name -> CiliumClusterwideNetworkPolicy
        # Cilium identities (datastore.identity_alloc): allocated numbers and label-set digests
        self.identities: dict[int, LabelSet] = {}
        self.identity_numbers: dict[str, int] = {}  # LabelSet.digest -> number
        self.errors: dict[str, str] = {}  # key -> why its value was not taken
        self.revision = 0
        self._pod_infos: ObjectMemo[PodInfo] = ObjectMemo()  # per pod key, while its Pod is the same
        self._pod_list: list[PodInfo] | None = None  # pod_infos() until a pod or endpoint changes

    def reset(self, items: Iterable[KeyValue], revision: int) -> None:
        self.__init__(self.layout)  # type: ignore[misc]
        for kv in items:
            self.update(kv.key, kv.value)
        self.revision = revision

    def update(self, key: str, value: bytes | None, revision: int = 0) -> str | None:
        """Apply one change; returns what changed ("nodes", "pools", "blocks", ...) or None."""
        self.revision = max(self.revision, revision)
        try:
            kind = self._update(key, value)
        except (PodnetError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # RecursionError: json.loads of a value nested thousands deep ("[[[[...").
            self.errors[key] = str(exc)
            return None
        self.errors.pop(key, None)
        if kind in ("pods", "endpoints"):
            self._pod_list = None
        return kind

    def _update(self, key: str, value: bytes | None) -> str | None:
        lay = self.layout
        if key.startswith(lay.blocks_prefix()):
            cidr = token_to_cidr(key.removeprefix(lay.blocks_prefix()))
            if value is None:
                self.blocks.pop(cidr, None)
            else:
                block = Block.from_json(value)
                borrowed = {
                    a.address: a.node for a in block.all_allocations() if a.node and a.node != block.node
                }
                info = BlockInfo(block.cidr, block.node, borrowed)
                old = self.blocks.get(cidr)
                if old is not None and (old.cidr, old.node, old.borrowed) == (info.cidr, info.node, borrowed):
                    return None  # an address of the block's own node taken or freed: no route changes
                self.blocks[cidr] = info
            return "blocks"
        if key.startswith(lay.endpoints_prefix()):
            if value is None:
                self.endpoints.pop(key, None)
            else:
                self.endpoints[key] = EndpointRecord.from_json(value)
            return "endpoints"
        if key.startswith(lay.identity_labels("")):
            digest = key.removeprefix(lay.identity_labels(""))
            if value is None:
                self.identity_numbers.pop(digest, None)
            else:
                self.identity_numbers[digest] = int(json.loads(value)["id"])
            return "identities"
        if key.startswith(lay.identities_prefix()):
            number = int(key.removeprefix(lay.identities_prefix()))
            if value is None:
                self.identities.pop(number, None)
            else:
                self.identities[number] = parse_label_set(json.loads(value)["labels"])
            return "identities"
        if not key.startswith(lay.resources_prefix()):
            return None  # references to identities, IPAM handles, ...: not inputs
        type_key, _namespace, name = lay.parse_resource(key)
        if type_key == "nodes":
            if value is None:
                self.nodes.pop(name, None)
                self.node_annotations.pop(name, None)
            else:
                node = parse_resource(json.loads(value))
                self.nodes[name] = NodeInfo.from_node(node)
                self.node_annotations[name] = dict(node.metadata.annotations or {})
            return "nodes"
        if type_key == "pods":
            key = f"{_namespace}/{name}"
            if value is None:
                self.pods.pop(key, None)
                self.ready_pods.drop(key)
            else:
                record = PodRecord.from_pod(parse_resource(json.loads(value)), self._shared)
                self.pods[key] = record
                self.ready_pods.put(key, record)
            return "pods"
        if type_key == "namespaces":
            if value is None:
                self.namespaces.pop(name, None)
                self.namespace_ipam.pop(name, None)
            else:
                meta = parse_resource(json.loads(value)).metadata
                self.namespaces[name] = dict(meta.labels or {})
                annotations = meta.annotations or {}
                self.namespace_ipam[name] = {k: annotations[k] for k in IPAM_ANNOTATIONS if k in annotations}
            return "namespaces"
        if type_key == "networkpolicies.networking.k8s.io":
            key = f"{_namespace}/{name}"
            if value is None:
                self.netpols.pop(key, None)
            else:
                self.netpols[key] = parse_resource(json.loads(value))
            return "policy"
        if type_key in _POLICY_KINDS:
            self._update_policy(type_key, _namespace, name, value)
            return "policy"
        if type_key == "hostendpoints.projectcalico.org":
            if value is None:
                self.host_endpoints.pop(name, None)
            else:
                self.host_endpoints[name] = parse_resource(json.loads(value))
            return "policy"
        if type_key == "services":
            key = f"{_namespace}/{name}"
            if value is None:
                self.services.pop(key, None)
            else:
                self.services[key] = parse_resource(json.loads(value))
            return "services"
        if type_key == "bgpconfigurations.projectcalico.org":
            if name == "default":
                self.bgp_config = None if value is None else parse_resource(json.loads(value))
            return "bgp"
        if type_key == "bgppeers.projectcalico.org":
            if value is None:
                self.bgp_peers.pop(name, None)
            else:
                self.bgp_peers[name] = parse_resource(json.loads(value))
            return "bgp"
        if type_key == "ippools.projectcalico.org":
            if value is None:
                self.pools.pop(name, None)
            else:
                self.pools[name] = parse_resource(json.loads(value))
            return "pools"
        if type_key == "clusterconfigurations.podnet.io":
            self.config = None if value is None else parse_resource(json.loads(value))
            return "config"
        return None

    def _update_policy(self, type_key: str, namespace: str | None, name: str, value: bytes | None) -> None:
        """One of the policy kinds of :data:`_POLICY_KINDS` (service accounts too: policy reads them)."""
        # Parsed as the key's kind: a value of another kind under the key is refused, not filed.
        resource = None if value is None else lookup(type_key).model_cls.from_dict(json.loads(value))
        if type_key == "baselineadminnetworkpolicies.policy.networking.k8s.io":
            self.baseline_policy = resource  # type: ignore[assignment]  # validation: only "default"
            return
        if type_key == "serviceaccounts":
            labels = None if resource is None else dict(resource.metadata.labels or {})
            _put(self.service_accounts, f"{namespace}/{name}", labels)
            return
        attribute, namespaced = _POLICY_KINDS[type_key]
        _put(getattr(self, attribute), f"{namespace}/{name}" if namespaced else name, resource)

    def pod_infos(self) -> list[PodInfo]:
        """Every pod as NetworkPolicy sees it: labels, container ports, and its addresses (from the
        endpoint records agents write at CNI ADD, else the Pod's status). Host-network pods are
        left out: they are their node (its address, its traffic), so no pod selector picks them
        and no policy isolates them, as in Calico and Cilium. A pod whose object and recorded
        addresses are unchanged gives the same PodInfo object as before (callers must not edit it);
        the list itself is kept until a pod or an endpoint record changes (a sync asks several times)."""
        if self._pod_list is not None:
            return list(self._pod_list)
        addresses: dict[str, set[str]] = {}
        for record in self.endpoints.values():
            addresses.setdefault(record.pod_key, set()).update(record.addresses)
        out = []
        for key, pod in self.pods.items():
            if pod.spec.host_network:
                continue
            recorded = tuple(sorted(addresses.get(key, ())))
            out.append(self._pod_infos.get(key, pod, recorded, lambda p=pod, r=recorded: _pod_info(p, r)))
        self._pod_infos.retain({info.key for info in out})
        self._shared.retain_used([v for p in self.pods.values() for v in (p.labels, p.ports)])
        self._pod_list = out
        return list(out)

    def local_endpoints(self, node: str) -> list[EndpointRecord]:
        return [e for e in self.endpoints.values() if e.node == node]


def _pod_info(pod: PodRecord, recorded: tuple[str, ...]) -> PodInfo:
    """``pod`` as NetworkPolicy sees it, at ``recorded`` addresses (else its status's); its labels
    and ports are the record's own (shared) objects."""
    return PodInfo(
        pod.namespace,
        pod.name,
        pod.labels,
        recorded or pod.ips,
        pod.node_name or "",
        pod.ports,
        pod.service_account,
    )
