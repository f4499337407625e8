"""``policy.networking.k8s.io/v1alpha1`` AdminNetworkPolicy and BaselineAdminNetworkPolicy.

Modelled on kubernetes-sigs/network-policy-api v0.1.8 (tag, commit 5a629542, 2025-12-10):
``apis/v1alpha1/*.go`` and the experimental CRDs of ``config/crd/experimental`` (a superset of the
standard ones: ``nodes`` and ``domainNames`` peers, ``namedPort``). Both kinds are cluster-scoped.

    spec.priority      ANP only, required, 0-1000 (lower applies first)
    spec.subject       exactly one of namespaces (LabelSelector) or pods
                       (namespaceSelector and podSelector, both required)
    spec.ingress[]     name (<= 100 characters), action, from[] (1-100 peers), ports[] (1-100)
    spec.egress[]      the same with to[]; at most 100 rules in each direction
    action             ANP: Allow, Deny or Pass; BANP: Allow or Deny
    peer               exactly one of: namespaces, pods; egress also nodes (LabelSelector),
                       networks (1-25 CIDRs, no repeats), and (ANP) domainNames (1-25 names)
    port               exactly one of: portNumber {protocol (default TCP), port},
                       namedPort, portRange {protocol (default TCP), start, end}

Messages are the CRD's where it has one (``Invalid CIDR format provided``, the namedPort rule, the
BANP name rule). Beyond the CRD, as the API's documentation states it: a protocol is TCP, UDP or
SCTP; a port range's start is less than its end (the CRD of v1alpha2 checks it in these words); a
named port is a valid container port name (another never matches); domainNames only in Allow rules.
A BaselineAdminNetworkPolicy is the singleton named ``default``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from podnet.model.base import ApiModel
from podnet.model.fields import PortNumber, Protocol, between, checked_by, cidr_problem
from podnet.model.meta import ObjectMeta
from podnet.model.names import iana_svc_name_problem
from podnet.model.problems import Problems
from podnet.model.resource import Resource
from podnet.model.selectors import LabelSelector

API_VERSION = "policy.networking.k8s.io/v1alpha1"
MAX_RULES = 100
MAX_PEERS = 100
MAX_PORTS = 100
MAX_NETWORKS = 25
MAX_RULE_NAME = 100


def _cidr_problem(text: str) -> str | None:
    return "Invalid CIDR format provided" if len(text) > 43 or cidr_problem(text) else None


PeerCIDR = Annotated[str, AfterValidator(checked_by(_cidr_problem))]
"""A ``networks`` entry: CIDR notation (``isCIDR``, host bits allowed), at most 43 characters."""

_DOMAIN_NAME = re.compile(
    r"(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?"
)


def _domain_name_problem(text: str) -> str | None:
    if _DOMAIN_NAME.fullmatch(text):
        return None
    return "must be a domain name such as kubernetes.io or *.kubernetes.io ('*.' only as a prefix)"


DomainName = Annotated[str, AfterValidator(checked_by(_domain_name_problem))]
"""A ``domainNames`` entry: the CRD's pattern (``*.`` only as a prefix)."""

NamedPort = Annotated[str, AfterValidator(checked_by(iana_svc_name_problem))]
"""A container port name (IANA_SVC_NAME)."""

RuleName = Annotated[str, Field(max_length=MAX_RULE_NAME)]
Priority = Annotated[int, AfterValidator(between(0, 1000))]


def exactly_one(model: ApiModel, fields: tuple[str, ...], problems: Problems, path: str = "") -> None:
    """The CRD's ``minProperties: 1, maxProperties: 1``: exactly one of ``fields`` (YAML names)."""
    names = type(model).model_fields
    by_alias = {f.alias or n: n for n, f in names.items()}
    given = [name for name in fields if getattr(model, by_alias[name]) is not None]
    if len(given) != 1:
        choices = ", ".join(fields[:-1]) + f" or {fields[-1]}"
        found = f" (found {', '.join(given)})" if given else ""
        problems.add(path, f"set exactly one of {choices}{found}")


def no_repeats(values: list[str] | None, field: str, problems: Problems) -> None:
    """``listType: set``: the API server refuses a repeated item (``Duplicate value``)."""
    seen: set[str] = set()
    for i, value in enumerate(values or []):
        if value in seen:
            problems.add(f"{field}[{i}]", f'Duplicate value: "{value}"')
        seen.add(value)


class NamespacedPod(ApiModel):
    """Pods chosen by a namespace selector AND a pod selector (``{}`` selects all)."""

    namespace_selector: LabelSelector
    pod_selector: LabelSelector


class NamespacesOrPods(ApiModel):
    """Exactly one of ``namespaces`` (every pod of the namespaces it selects) or ``pods``."""

    namespaces: LabelSelector | None = None
    pods: NamespacedPod | None = None

    @model_validator(mode="after")
    def _one(self) -> NamespacesOrPods:
        problems = Problems()
        exactly_one(self, ("namespaces", "pods"), problems)
        problems.raise_if_any()
        return self


class AdminNetworkPolicySubject(NamespacesOrPods):
    """The pods a policy applies to (host-network pods never are)."""


class PortNumberMatch(ApiModel):
    """``portNumber``: one port of one protocol."""

    protocol: Protocol = "TCP"
    port: PortNumber


class PortRange(ApiModel):
    """``start`` to ``end`` inclusive."""

    start: PortNumber
    end: PortNumber

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.start >= self.end:
            problems = Problems()
            problems.add("", "Start port must be less than End port")
            problems.raise_if_any()
        return self


class PortRangeMatch(PortRange):
    """``portRange``: ``start`` to ``end`` inclusive, of one protocol."""

    protocol: Protocol = "TCP"


class AdminNetworkPolicyPort(ApiModel):
    """Exactly one of ``portNumber``, ``namedPort`` or ``portRange``."""

    port_number: PortNumberMatch | None = None
    named_port: NamedPort | None = None
    port_range: PortRangeMatch | None = None

    @model_validator(mode="after")
    def _one(self) -> AdminNetworkPolicyPort:
        problems = Problems()
        exactly_one(self, ("portNumber", "namedPort", "portRange"), problems)
        problems.raise_if_any()
        return self


class AdminNetworkPolicyIngressPeer(NamespacesOrPods):
    """Where ingress traffic comes from."""


class BaselineAdminNetworkPolicyEgressPeer(ApiModel):
    """Where egress traffic goes: exactly one of ``namespaces``, ``pods``, ``nodes`` or ``networks``."""

    namespaces: LabelSelector | None = None
    pods: NamespacedPod | None = None
    nodes: LabelSelector | None = None
    networks: Annotated[list[PeerCIDR], Field(min_length=1, max_length=MAX_NETWORKS)] | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = ("namespaces", "pods", "nodes", "networks")

    @model_validator(mode="after")
    def _one(self) -> BaselineAdminNetworkPolicyEgressPeer:
        problems = Problems()
        exactly_one(self, self.PEER_FIELDS, problems)
        no_repeats(self.networks, "networks", problems)
        self.check_more(problems)
        problems.raise_if_any()
        return self

    def check_more(self, problems: Problems) -> None:
        """Hook for the AdminNetworkPolicy peer's ``domainNames``."""

    def outside_pods(self) -> bool:
        """A peer without named ports: ``nodes``, ``networks`` (or ``domainNames``)."""
        return self.nodes is not None or self.networks is not None


class AdminNetworkPolicyEgressPeer(BaselineAdminNetworkPolicyEgressPeer):
    """An AdminNetworkPolicy's egress peer: the baseline's, or ``domainNames``."""

    domain_names: Annotated[list[DomainName], Field(min_length=1, max_length=MAX_NETWORKS)] | None = None

    PEER_FIELDS: ClassVar[tuple[str, ...]] = ("namespaces", "pods", "nodes", "networks", "domainNames")

    def check_more(self, problems: Problems) -> None:
        no_repeats(self.domain_names, "domainNames", problems)

    def outside_pods(self) -> bool:
        return super().outside_pods() or self.domain_names is not None


PortList = Annotated[list[AdminNetworkPolicyPort], Field(min_length=1, max_length=MAX_PORTS)]
IngressPeers = Annotated[list[AdminNetworkPolicyIngressPeer], Field(min_length=1, max_length=MAX_PEERS)]

ANP_NAMED_PORT_RULE = (
    "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
    "for networks/nodes/domainNames"
)
BANP_NAMED_PORT_RULE = (
    "networks/nodes peer cannot be set with namedPorts since there are no namedPorts for networks/nodes"
)


def check_egress_rule(rule: Any, named_port_rule: str, problems: Problems) -> None:
    """The CRD's egress rule check: no named port together with a peer outside the pods."""
    if any(peer.outside_pods() for peer in rule.to) and any(p.named_port for p in rule.ports or []):
        problems.add("", named_port_rule)


class AdminNetworkPolicyIngressRule(ApiModel):
    name: RuleName | None = None
    action: Literal["Allow", "Deny", "Pass"]
    from_: IngressPeers = Field(alias="from")
    ports: PortList | None = None


class AdminNetworkPolicyEgressRule(ApiModel):
    name: RuleName | None = None
    action: Literal["Allow", "Deny", "Pass"]
    to: Annotated[list[AdminNetworkPolicyEgressPeer], Field(min_length=1, max_length=MAX_PEERS)]
    ports: PortList | None = None

    @model_validator(mode="after")
    def _check(self) -> AdminNetworkPolicyEgressRule:
        problems = Problems()
        check_egress_rule(self, ANP_NAMED_PORT_RULE, problems)
        for i, peer in enumerate(self.to):
            if peer.domain_names is not None and self.action != "Allow":
                problems.add(f"to[{i}].domainNames", "domainNames is only supported for Allow rules")
        problems.raise_if_any()
        return self


class BaselineAdminNetworkPolicyIngressRule(ApiModel):
    name: RuleName | None = None
    action: Literal["Allow", "Deny"]
    from_: IngressPeers = Field(alias="from")
    ports: PortList | None = None


class BaselineAdminNetworkPolicyEgressRule(ApiModel):
    name: RuleName | None = None
    action: Literal["Allow", "Deny"]
    to: Annotated[list[BaselineAdminNetworkPolicyEgressPeer], Field(min_length=1, max_length=MAX_PEERS)]
    ports: PortList | None = None

    @model_validator(mode="after")
    def _check(self) -> BaselineAdminNetworkPolicyEgressRule:
        problems = Problems()
        check_egress_rule(self, BANP_NAMED_PORT_RULE, problems)
        problems.raise_if_any()
        return self


class AdminNetworkPolicyStatus(ApiModel):
    """Written by implementations (``metav1.Condition`` list); kept as given."""

    conditions: Any = None


class AdminNetworkPolicySpec(ApiModel):
    priority: Priority
    subject: AdminNetworkPolicySubject
    ingress: Annotated[list[AdminNetworkPolicyIngressRule], Field(max_length=MAX_RULES)] | None = None
    egress: Annotated[list[AdminNetworkPolicyEgressRule], Field(max_length=MAX_RULES)] | None = None


class BaselineAdminNetworkPolicySpec(ApiModel):
    subject: AdminNetworkPolicySubject
    ingress: Annotated[list[BaselineAdminNetworkPolicyIngressRule], Field(max_length=MAX_RULES)] | None = None
    egress: Annotated[list[BaselineAdminNetworkPolicyEgressRule], Field(max_length=MAX_RULES)] | None = None


class AdminNetworkPolicy(Resource):
    """A cluster-wide policy in the tier before every NetworkPolicy (Calico's ``kube-admin``)."""

    KIND: ClassVar[str] = "AdminNetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: AdminNetworkPolicySpec
    status: AdminNetworkPolicyStatus | None = None


BANP_NAME = "default"
BANP_NAME_RULE = (
    'Only one baseline admin network policy with metadata.name="default" can be created in the cluster'
)


class BaselineAdminNetworkPolicy(Resource):
    """The cluster's one baseline policy, named ``default``, in the tier after every NetworkPolicy
    (Calico's ``kube-baseline``)."""

    KIND: ClassVar[str] = "BaselineAdminNetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: BaselineAdminNetworkPolicySpec
    status: AdminNetworkPolicyStatus | None = None

    @classmethod
    def check_kind_metadata(cls, meta: ObjectMeta, problems: Problems) -> None:
        if meta.name != BANP_NAME:
            problems.add("name", BANP_NAME_RULE)
