"""``networking.k8s.io/v1`` NetworkPolicy.

Validation follows the API server: ``podSelector`` is required (``{}`` selects every pod in the
namespace); a peer is ``podSelector`` and/or ``namespaceSelector``, or an ``ipBlock`` alone; every
``except`` entry is a strict subset of its ``cidr``; ``endPort`` needs a numeric ``port`` and is at
least ``port``. Defaults as the API server applies them: port ``protocol: TCP`` and ``policyTypes``
(``Ingress`` always, plus ``Egress`` when there are egress rules), so what is stored says which
directions the policy isolates.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from podnet.model.base import ApiModel
from podnet.model.fields import CIDR, PortNumber, PortNumberOrName, Protocol
from podnet.model.problems import Problems
from podnet.model.resource import Resource
from podnet.model.selectors import LabelSelector

PolicyType = Literal["Ingress", "Egress"]


class IPBlock(ApiModel):
    cidr: CIDR
    except_: list[CIDR] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _check(self) -> IPBlock:
        problems = Problems()
        network = ipaddress.ip_network(self.cidr, strict=False)
        for i, text in enumerate(self.except_ or []):
            excluded = ipaddress.ip_network(text, strict=False)
            if excluded.version != network.version or not (
                excluded.subnet_of(network) and excluded.prefixlen > network.prefixlen  # type: ignore[arg-type]
            ):
                problems.add(f"except[{i}]", f"must be a strict subset of cidr {self.cidr}")
        problems.raise_if_any()
        return self


class NetworkPolicyPeer(ApiModel):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkPolicyPeer:
        problems = Problems()
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            problems.add("ipBlock", "may not be combined with podSelector or namespaceSelector")
        if self.ip_block is None and not selectors:
            problems.add("", "must specify podSelector, namespaceSelector or ipBlock")
        problems.raise_if_any()
        return self


class NetworkPolicyPort(ApiModel):
    protocol: Protocol = "TCP"
    port: PortNumberOrName | None = None
    end_port: PortNumber | None = None

    @model_validator(mode="after")
    def _check(self) -> NetworkPolicyPort:
        problems = Problems()
        if self.end_port is not None:
            if not isinstance(self.port, int):
                problems.add("endPort", "requires a numeric port")
            elif self.end_port < self.port:
                problems.add("endPort", f"must be greater than or equal to port ({self.port})")
        problems.raise_if_any()
        return self


class NetworkPolicyIngressRule(ApiModel):
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(ApiModel):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


def default_policy_types(egress_rules: object) -> list[PolicyType]:
    """Kubernetes defaulting: Ingress always; Egress too when egress rules exist."""
    return ["Ingress", "Egress"] if egress_rules else ["Ingress"]


class NetworkPolicySpec(ApiModel):
    pod_selector: LabelSelector
    policy_types: list[PolicyType] | None = None
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None

    @model_validator(mode="after")
    def _check_and_default(self) -> NetworkPolicySpec:
        problems = Problems()
        if self.policy_types is not None and len(set(self.policy_types)) != len(self.policy_types):
            problems.add("policyTypes", "must not repeat a type")
        problems.raise_if_any()
        if not self.policy_types:
            self.policy_types = default_policy_types(self.egress)
        return self

    def effective_policy_types(self) -> list[PolicyType]:
        """The directions this policy isolates (``policyTypes``, defaulted as Kubernetes does)."""
        return list(self.policy_types) if self.policy_types else default_policy_types(self.egress)


class PolicyCondition(ApiModel):
    """A ``metav1.Condition`` as NetworkPolicyStatus (KEP-2943) uses it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class NetworkPolicyStatus(ApiModel):
    """Read-only: computed by podnet from what each node's agent reports (never stored)."""

    conditions: list[PolicyCondition] | None = None


class NetworkPolicy(Resource):
    """A Kubernetes ``networking.k8s.io/v1`` NetworkPolicy (namespaced)."""

    KIND: ClassVar[str] = "NetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("networking.k8s.io/v1",)
    NAMESPACED: ClassVar[bool] = True

    spec: NetworkPolicySpec
    status: NetworkPolicyStatus | None = None

    def effective_policy_types(self) -> list[PolicyType]:
        return self.spec.effective_policy_types()
