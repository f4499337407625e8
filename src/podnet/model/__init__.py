"""podnet's resource model: Kubernetes-style objects as typed Python values, validated on parse.

Pure data, no I/O besides parsing text. The main entry points::

    docs = load_documents(text, "pools.yaml")      # YAML → [dict]
    resources = parse_documents(docs, "pools.yaml")  # → [Resource], or one ValidationError for all
    pool = IPPool.from_dict(doc)                    # one document of a known kind
    pool.to_dict()                                  # → JSON-ready dict, defaults filled in
    dump_yaml(resources)                            # → YAML text
    lookup("gnp").key_name                          # → "globalnetworkpolicies.projectcalico.org"

Every validation failure is a :class:`podnet.errors.ValidationError` whose ``problems`` are
``(field path, message)`` pairs such as ``("spec.ingress[0].ports[1].port", "must be between 1 and
65535")``; see :mod:`podnet.model.problems`.

Modules: ``resource`` (base class), ``meta`` (ObjectMeta), ``selectors`` (Kubernetes label
selectors), ``calico_selector`` (Calico selector expressions), ``core`` (Namespace, Pod, Node,
Service, ServiceAccount), ``k8s_policy`` (NetworkPolicy), ``calico`` (IPPool, BGP, Calico policy),
``tier`` (Calico Tier, the built-in tiers), ``admin_policy`` (AdminNetworkPolicy,
BaselineAdminNetworkPolicy), ``cluster_network_policy`` (ClusterNetworkPolicy), ``cilium``
(Cilium policy), ``cluster`` (ClusterConfiguration), ``registry`` (the table of kinds),
``documents`` (YAML in and out), ``names``/``fields``/``problems``/``base`` (shared rules).
"""

from podnet.model.admin_policy import AdminNetworkPolicy, BaselineAdminNetworkPolicy
from podnet.model.calico import (
    BGPConfiguration,
    BGPPeer,
    CalicoNetworkPolicy,
    GlobalNetworkPolicy,
    HostEndpoint,
    IPPool,
)
from podnet.model.calico_selector import Selector, SelectorSyntaxError, parse_selector
from podnet.model.cilium import CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy
from podnet.model.cluster import ClusterConfiguration, EffectiveClusterSettings
from podnet.model.cluster_network_policy import ClusterNetworkPolicy
from podnet.model.core import Namespace, Node, Pod, Service, ServiceAccount
from podnet.model.documents import (
    DocumentsError,
    dump_yaml,
    load_documents,
    parse_documents,
    parse_resource,
    parse_yaml,
    resource_from_stored,
)
from podnet.model.k8s_policy import NetworkPolicy
from podnet.model.meta import ObjectMeta
from podnet.model.registry import RESOURCE_TYPES, ResourceType, lookup, resource_type_for, type_of
from podnet.model.resource import Resource
from podnet.model.selectors import EndpointSelector, LabelSelector
from podnet.model.tier import BUILTIN_TIERS, Tier, TierInfo, tier_table

__all__ = [
    "BUILTIN_TIERS",
    "RESOURCE_TYPES",
    "AdminNetworkPolicy",
    "BGPConfiguration",
    "BGPPeer",
    "BaselineAdminNetworkPolicy",
    "CalicoNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "CiliumNetworkPolicy",
    "ClusterConfiguration",
    "ClusterNetworkPolicy",
    "DocumentsError",
    "EffectiveClusterSettings",
    "EndpointSelector",
    "GlobalNetworkPolicy",
    "HostEndpoint",
    "IPPool",
    "LabelSelector",
    "Namespace",
    "NetworkPolicy",
    "Node",
    "ObjectMeta",
    "Pod",
    "Resource",
    "ResourceType",
    "Selector",
    "SelectorSyntaxError",
    "Service",
    "ServiceAccount",
    "Tier",
    "TierInfo",
    "dump_yaml",
    "load_documents",
    "lookup",
    "parse_documents",
    "parse_resource",
    "parse_selector",
    "parse_yaml",
    "resource_from_stored",
    "resource_type_for",
    "tier_table",
    "type_of",
]
