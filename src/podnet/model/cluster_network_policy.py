"""``policy.networking.k8s.io/v1alpha2`` ClusterNetworkPolicy: the successor of AdminNetworkPolicy and
BaselineAdminNetworkPolicy, one kind for both tiers.

Modelled on kubernetes-sigs/network-policy-api main at 0eec1b0e (2026-07-01): its
``apis/v1alpha2/clusternetworkpolicy_types.go`` differs from tag v0.2.0 (a17adecd) in comments only;
validations from ``config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml``
(a superset of the standard CRD: ``nodes`` and ``domainNames`` peers). Cluster-scoped.

    spec.tier          required: Admin (Calico's tier kube-admin) or Baseline (kube-baseline)
    spec.priority      required, 0-1000 (lower applies first within the tier)
    spec.subject       exactly one of namespaces (LabelSelector) or pods (namespaceSelector,
                       default {} = every namespace, and podSelector, required)
    spec.ingress[]     name (<= 100 characters), action, from[] (1-25 peers), protocols[] (1-25)
    spec.egress[]      the same with to[]; at most 25 rules in each direction
    action             Accept, Deny or Pass (Pass: on to the next tier)
    peer               exactly one of: namespaces, pods; egress also nodes (LabelSelector),
                       networks (1-25 CIDRs, no repeats), domainNames (1-25, Accept rules only)
    protocol           exactly one of: tcp, udp, sctp (each {destinationPort: exactly one of
                       number or range {start, end}}) or destinationNamedPort

Messages are the CRD's where it has one (``Start port must be less than End port``, ``Invalid CIDR
format provided``, the named-port rule). As for AdminNetworkPolicy, a named port must be a valid
container port name and domainNames are refused outside Accept rules (the API's documentation).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from podnet.model.admin_policy import (
    DomainName,
    NamedPort,
    NamespacesOrPods,
    PeerCIDR,
    PortRange,
    Priority,
    RuleName,
    exactly_one,
    no_repeats,
)
from podnet.model.base import ApiModel
from podnet.model.fields import PortNumber
from podnet.model.problems import Problems
from podnet.model.resource import Resource
from podnet.model.selectors import LabelSelector
from podnet.model.tier import KUBE_ADMIN_TIER, KUBE_BASELINE_TIER

API_VERSION = "policy.networking.k8s.io/v1alpha2"
MAX_RULES = 25
MAX_ITEMS = 25

CNPTier = Literal["Admin", "Baseline"]
CALICO_TIERS: dict[str, str] = {"Admin": KUBE_ADMIN_TIER, "Baseline": KUBE_BASELINE_TIER}
"""The Calico tier of each ClusterNetworkPolicy tier (as Calico's converter maps them)."""

NAMED_PORT_RULE = (
    "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
    "for networks/nodes/domainNames"
)


class NamespacedPod(ApiModel):
    """Pods chosen by a namespace selector (default ``{}``: every namespace) AND a pod selector."""

    namespace_selector: LabelSelector = Field(default_factory=LabelSelector)
    pod_selector: LabelSelector


def _one_of(model: ApiModel, fields: tuple[str, ...]) -> None:
    problems = Problems()
    exactly_one(model, fields, problems)
    problems.raise_if_any()


class _NamespacesOrPods(NamespacesOrPods):
    pods: NamespacedPod | None = None  # type: ignore[assignment]  # v1alpha2's: namespaceSelector optional


class ClusterNetworkPolicySubject(_NamespacesOrPods):
    """The pods a policy applies to: exactly one of ``namespaces`` or ``pods``."""


class ClusterNetworkPolicyIngressPeer(_NamespacesOrPods):
    """Where ingress traffic comes from: exactly one of ``namespaces`` or ``pods``."""


class ClusterNetworkPolicyEgressPeer(ApiModel):
    """Where egress traffic goes: exactly one of ``namespaces``, ``pods``, ``nodes``, ``networks``
    or ``domainNames``."""

    namespaces: LabelSelector | None = None
    pods: NamespacedPod | None = None
    nodes: LabelSelector | None = None
    networks: Annotated[list[PeerCIDR], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    domain_names: Annotated[list[DomainName], Field(min_length=1, max_length=MAX_ITEMS)] | None = None

    @model_validator(mode="after")
    def _one(self) -> ClusterNetworkPolicyEgressPeer:
        problems = Problems()
        exactly_one(self, ("namespaces", "pods", "nodes", "networks", "domainNames"), problems)
        no_repeats(self.networks, "networks", problems)
        no_repeats(self.domain_names, "domainNames", problems)
        problems.raise_if_any()
        return self

    def outside_pods(self) -> bool:
        """A peer without named ports: ``nodes``, ``networks`` or ``domainNames``."""
        return self.nodes is not None or self.networks is not None or self.domain_names is not None


class Port(ApiModel):
    """Exactly one of ``number`` or ``range``."""

    number: PortNumber | None = None
    range: PortRange | None = None

    @model_validator(mode="after")
    def _one(self) -> Port:
        _one_of(self, ("number", "range"))
        return self


class ProtocolMatch(ApiModel):
    """``tcp``, ``udp`` or ``sctp``: its ``destinationPort`` (required: the CRD wants one property)."""

    destination_port: Port


class ClusterNetworkPolicyProtocol(ApiModel):
    """Exactly one of ``tcp``, ``udp``, ``sctp`` or ``destinationNamedPort``."""

    tcp: ProtocolMatch | None = None
    udp: ProtocolMatch | None = None
    sctp: ProtocolMatch | None = None
    destination_named_port: NamedPort | None = None

    @model_validator(mode="after")
    def _one(self) -> ClusterNetworkPolicyProtocol:
        _one_of(self, ("tcp", "udp", "sctp", "destinationNamedPort"))
        return self

    def protocol_and_port(self) -> tuple[str | None, Port | str | None]:
        """``("TCP", Port)``, ...; ``(None, "http")`` for a named port (any protocol it is on)."""
        for name, match in (("TCP", self.tcp), ("UDP", self.udp), ("SCTP", self.sctp)):
            if match is not None:
                return name, match.destination_port
        return None, self.destination_named_port


Protocols = Annotated[list[ClusterNetworkPolicyProtocol], Field(min_length=1, max_length=MAX_ITEMS)]
Action = Literal["Accept", "Deny", "Pass"]


IngressPeers = Annotated[list[ClusterNetworkPolicyIngressPeer], Field(min_length=1, max_length=MAX_ITEMS)]


class ClusterNetworkPolicyIngressRule(ApiModel):
    name: RuleName | None = None
    action: Action
    from_: IngressPeers = Field(alias="from")
    protocols: Protocols | None = None


class ClusterNetworkPolicyEgressRule(ApiModel):
    name: RuleName | None = None
    action: Action
    to: Annotated[list[ClusterNetworkPolicyEgressPeer], Field(min_length=1, max_length=MAX_ITEMS)]
    protocols: Protocols | None = None

    @model_validator(mode="after")
    def _check(self) -> ClusterNetworkPolicyEgressRule:
        problems = Problems()
        outside = any(peer.outside_pods() for peer in self.to)
        if outside and any(p.destination_named_port for p in self.protocols or []):
            problems.add("", NAMED_PORT_RULE)
        for i, peer in enumerate(self.to):
            if peer.domain_names is not None and self.action != "Accept":
                problems.add(f"to[{i}].domainNames", "domainNames is only supported for Accept rules")
        problems.raise_if_any()
        return self


class ClusterNetworkPolicySpec(ApiModel):
    tier: CNPTier
    priority: Priority
    subject: ClusterNetworkPolicySubject
    ingress: Annotated[list[ClusterNetworkPolicyIngressRule], Field(max_length=MAX_RULES)] | None = None
    egress: Annotated[list[ClusterNetworkPolicyEgressRule], Field(max_length=MAX_RULES)] | None = None

    @property
    def calico_tier(self) -> str:
        """``kube-admin`` or ``kube-baseline``."""
        return CALICO_TIERS[self.tier]


class ClusterNetworkPolicyStatus(ApiModel):
    """Written by implementations (``metav1.Condition`` list); kept as given."""

    conditions: Any = None


class ClusterNetworkPolicy(Resource):
    """A cluster-wide policy in the Admin tier (before every NetworkPolicy) or the Baseline tier
    (after them)."""

    KIND: ClassVar[str] = "ClusterNetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: ClusterNetworkPolicySpec
    status: ClusterNetworkPolicyStatus | None = None
