"""``cilium.io/v2`` CiliumNetworkPolicy (namespaced) and CiliumClusterwideNetworkPolicy (cluster-scoped).

A policy holds one rule in ``spec`` and/or a list in ``specs`` (at least one). A rule selects the
endpoints it applies to with ``endpointSelector`` or, in a clusterwide policy only, the nodes with
``nodeSelector`` (exactly one of the two), and lists allow sections (``ingress``, ``egress``) and deny
sections (``ingressDeny``, ``egressDeny``).

Checks follow Cilium's ``pkg/policy/api`` sanitizers:

- one kind of L3 peer per rule entry (``fromEndpoints`` *or* ``fromCIDR`` *or* ``fromEntities`` ...);
  ``from/toRequires`` only narrow and may accompany any of them;
- ``toServices`` cannot be combined with ``toPorts``; ``icmps`` cannot be combined with ``toPorts``;
- one L7 type (``http``, ``kafka``, ``dns``, ``l7proto``) per ``toPorts`` entry; L7 rules only on TCP
  ports (DNS also UDP/ANY), never with port 0; DNS rules only on egress and need a port;
- deny sections have no L7 rules and (egress) no ``toFQDNs``;
- ``endPort`` needs a numeric ``port`` and is at least ``port``; ``except`` CIDRs lie inside ``cidr``.

Defaults: ``toPorts[].ports[].protocol: ANY``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from podnet.model.base import ApiModel
from podnet.model.fields import CIDR, IPOrCIDR, between, int_or_string
from podnet.model.names import iana_svc_name_problem
from podnet.model.problems import Problems
from podnet.model.resource import Resource
from podnet.model.selectors import EndpointSelector

API_VERSION = "cilium.io/v2"

ENTITIES = (
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "remote-node",
    "kube-apiserver",
    "ingress",
    "init",
    "health",
    "unmanaged",
    "none",
)


def _entity(value: str) -> str:
    if value not in ENTITIES:
        raise ValueError(f"must be one of {', '.join(ENTITIES)}")
    return value


Entity = Annotated[str, AfterValidator(_entity)]


def _port_text(value: Any) -> Any:
    """Cilium ports are strings; ``port: 80`` written without quotes is accepted as ``"80"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _port(value: str) -> str:
    if value.isdigit():
        between(0, 65535)(int(value))
        return value
    problem = iana_svc_name_problem(value)
    if problem:
        raise ValueError(f"must be a port number 0-65535 or a port name: {problem}")
    return value


class PortProtocol(ApiModel):
    port: Annotated[str, BeforeValidator(_port_text), AfterValidator(_port)]
    end_port: Annotated[int, AfterValidator(between(0, 65535))] | None = None
    protocol: Literal["TCP", "UDP", "SCTP", "ANY"] = "ANY"

    def is_numeric(self) -> bool:
        return self.port.isdigit()

    @model_validator(mode="after")
    def _check(self) -> PortProtocol:
        problems = Problems()
        if self.end_port is not None:
            if not self.is_numeric():
                problems.add("endPort", "requires a numeric port")
            elif self.end_port < int(self.port):
                problems.add("endPort", f"must be greater than or equal to port ({self.port})")
        problems.raise_if_any()
        return self


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"must be a valid regular expression ({exc})") from None
    return value


Regex = Annotated[str, AfterValidator(_regex)]


class Secret(ApiModel):
    name: str
    namespace: str | None = None


class HeaderMatch(ApiModel):
    name: str
    value: str | None = None
    secret: Secret | None = None
    mismatch: Literal["LOG", "ADD", "DELETE", "REPLACE"] | None = None


class PortRuleHTTP(ApiModel):
    """An HTTP rule: fields are ANDed; ``path``, ``method`` and ``host`` are full-match regexes."""

    method: Regex | None = None
    path: Regex | None = None
    host: Regex | None = None
    headers: list[str] | None = None
    header_matches: list[HeaderMatch] | None = None


_FQDN_NAME = re.compile(r"[-a-zA-Z0-9_]+(\.[-a-zA-Z0-9_]+)*\.?")
_FQDN_PATTERN = re.compile(r"[-a-zA-Z0-9_*]+(\.[-a-zA-Z0-9_*]+)*\.?|\*")


class FQDNSelector(ApiModel):
    """``matchName`` (exact DNS name) or ``matchPattern`` (``*`` matches within one label)."""

    match_name: str | None = None
    match_pattern: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FQDNSelector:
        problems = Problems()
        if (self.match_name is None) == (self.match_pattern is None):
            problems.add("", "set exactly one of matchName or matchPattern")
        if self.match_name is not None and not _FQDN_NAME.fullmatch(self.match_name):
            problems.add("matchName", "must be a DNS name such as api.example.com")
        if self.match_pattern is not None and not _FQDN_PATTERN.fullmatch(self.match_pattern):
            problems.add("matchPattern", "must be a DNS name pattern such as *.example.com")
        problems.raise_if_any()
        return self


class PortRuleKafka(ApiModel):
    role: Literal["produce", "consume"] | None = None
    api_key: str | None = None
    api_version: str | None = None
    client_id: str | None = Field(default=None, alias="clientID")
    topic: str | None = None


class L7Rules(ApiModel):
    http: list[PortRuleHTTP] | None = None
    kafka: list[PortRuleKafka] | None = None
    dns: list[FQDNSelector] | None = None
    l7proto: str | None = Field(default=None, alias="l7proto")
    l7: list[dict[str, str]] | None = None

    def types(self) -> list[str]:
        """Which L7 protocols this entry uses (``http``, ``kafka``, ``dns``, ``l7proto``)."""
        used = [name for name in ("http", "kafka", "dns") if getattr(self, name) is not None]
        if self.l7proto:
            used.append("l7proto")
        return used

    def is_empty(self) -> bool:
        return not self.types()

    @model_validator(mode="after")
    def _check(self) -> L7Rules:
        problems = Problems()
        if len(self.types()) > 1:
            problems.add("", f"only one L7 type per toPorts entry (found {', '.join(self.types())})")
        if self.l7 is not None and not self.l7proto:
            problems.add("l7", "may only be set together with l7proto")
        problems.raise_if_any()
        return self


class PortRule(ApiModel):
    ports: list[PortProtocol] | None = None
    rules: L7Rules | None = None
    server_names: list[str] | None = None
    listener: Any = None
    originating_tls: Any = Field(default=None, alias="originatingTLS")
    terminating_tls: Any = Field(default=None, alias="terminatingTLS")

    def has_l7(self) -> bool:
        return self.rules is not None and not self.rules.is_empty()

    @model_validator(mode="after")
    def _check(self) -> PortRule:
        problems = Problems()
        ports = self.ports or []
        if len(ports) > 40:
            problems.add("ports", "must have at most 40 entries")
        if self.has_l7():
            assert self.rules is not None
            dns = self.rules.dns is not None
            if dns and not ports:
                problems.add("rules.dns", "needs a port (53) in ports")
            for i, port in enumerate(ports):
                if port.is_numeric() and int(port.port) == 0:
                    problems.add(f"ports[{i}].port", "L7 rules cannot be used with port 0")
                if not dns and port.protocol != "TCP":
                    problems.add(f"ports[{i}].protocol", "L7 rules apply to TCP only (DNS rules excepted)")
                if dns and port.end_port is not None and port.end_port > int(port.port or 0):
                    problems.add(f"ports[{i}].endPort", "DNS rules do not support port ranges")
        for i, name in enumerate(self.server_names or []):
            if not name:
                problems.add(f"serverNames[{i}]", "must not be empty")
        problems.raise_if_any()
        return self


class CIDRRule(ApiModel):
    cidr: CIDR | None = None
    except_: list[CIDR] | None = Field(default=None, alias="except")
    cidr_group_ref: str | None = None
    cidr_group_selector: EndpointSelector | None = None

    @model_validator(mode="after")
    def _check(self) -> CIDRRule:
        problems = Problems()
        sources = [v for v in (self.cidr, self.cidr_group_ref, self.cidr_group_selector) if v is not None]
        if len(sources) != 1:
            problems.add("", "set exactly one of cidr, cidrGroupRef or cidrGroupSelector")
        if self.cidr is not None:
            network = ipaddress.ip_network(self.cidr, strict=False)
            for i, text in enumerate(self.except_ or []):
                excluded = ipaddress.ip_network(text, strict=False)
                if excluded.version != network.version or not network.supernet_of(excluded):  # type: ignore[arg-type]
                    problems.add(f"except[{i}]", f"must lie inside cidr {self.cidr}")
        problems.raise_if_any()
        return self


def _icmp_type(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return between(0, 255)(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", value):
        return value
    raise ValueError("must be an ICMP type number 0-255 or a name such as EchoRequest")


ICMPType = int_or_string(_icmp_type)


class ICMPField(ApiModel):
    type: ICMPType
    family: Literal["IPv4", "IPv6"] = "IPv4"


class ICMPRule(ApiModel):
    fields: list[ICMPField]

    @model_validator(mode="after")
    def _check(self) -> ICMPRule:
        if len(self.fields) > 40:
            problems = Problems()
            problems.add("fields", "must have at most 40 entries")
            problems.raise_if_any()
        return self


class K8sServiceNamespace(ApiModel):
    service_name: str | None = None
    namespace: str | None = None


class ServiceSelector(ApiModel):
    selector: EndpointSelector
    namespace: str | None = None


class ServiceRef(ApiModel):
    k8s_service: K8sServiceNamespace | None = Field(default=None, alias="k8sService")
    k8s_service_selector: ServiceSelector | None = Field(default=None, alias="k8sServiceSelector")

    @model_validator(mode="after")
    def _check(self) -> ServiceRef:
        if (self.k8s_service is None) == (self.k8s_service_selector is None):
            problems = Problems()
            problems.add("", "set exactly one of k8sService or k8sServiceSelector")
            problems.raise_if_any()
        return self


class _RuleSection(ApiModel):
    """What ingress and egress entries share. Each subclass declares its peers, then ``toPorts`` and
    ``icmps`` (declared there, not here, so that output lists peers first)."""

    L3_FIELDS: ClassVar[tuple[str, ...]] = ()

    def l3_fields_used(self) -> list[str]:
        return [alias for alias in self.L3_FIELDS if getattr(self, _attr(alias))]

    def check_section(self, problems: Problems) -> None:
        used = self.l3_fields_used()
        if len(used) > 1:
            problems.add(used[1], f"cannot be combined with {used[0]} in one rule; write two rules")
        if getattr(self, "icmps", None) and getattr(self, "to_ports", None):
            problems.add("icmps", "cannot be combined with toPorts in one rule; write two rules")


def _attr(alias: str) -> str:
    return {
        "fromCIDR": "from_cidr",
        "fromCIDRSet": "from_cidr_set",
        "toCIDR": "to_cidr",
        "toCIDRSet": "to_cidr_set",
        "toFQDNs": "to_fqdns",
    }.get(alias) or re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), alias)


class IngressRule(_RuleSection):
    from_endpoints: list[EndpointSelector] | None = None
    from_requires: list[EndpointSelector] | None = None
    from_entities: list[Entity] | None = None
    from_cidr: list[IPOrCIDR] | None = Field(default=None, alias="fromCIDR")
    from_cidr_set: list[CIDRRule] | None = Field(default=None, alias="fromCIDRSet")
    from_nodes: list[EndpointSelector] | None = None
    from_groups: Any = None
    to_ports: list[PortRule] | None = None
    icmps: list[ICMPRule] | None = None
    authentication: Any = None

    L3_FIELDS: ClassVar[tuple[str, ...]] = (
        "fromEndpoints",
        "fromCIDR",
        "fromCIDRSet",
        "fromEntities",
        "fromNodes",
        "fromGroups",
    )

    @model_validator(mode="after")
    def _check(self) -> IngressRule:
        problems = Problems()
        self.check_section(problems)
        for i, port_rule in enumerate(self.to_ports or []):
            if port_rule.rules is not None and port_rule.rules.dns is not None:
                problems.add(f"toPorts[{i}].rules.dns", "DNS rules are not allowed on ingress")
            if port_rule.listener is not None:
                problems.add(f"toPorts[{i}].listener", "not allowed on ingress")
        problems.raise_if_any()
        return self


class EgressRule(_RuleSection):
    to_endpoints: list[EndpointSelector] | None = None
    to_requires: list[EndpointSelector] | None = None
    to_entities: list[Entity] | None = None
    to_cidr: list[IPOrCIDR] | None = Field(default=None, alias="toCIDR")
    to_cidr_set: list[CIDRRule] | None = Field(default=None, alias="toCIDRSet")
    to_services: list[ServiceRef] | None = None
    to_fqdns: list[FQDNSelector] | None = Field(default=None, alias="toFQDNs")
    to_nodes: list[EndpointSelector] | None = None
    to_groups: Any = None
    to_ports: list[PortRule] | None = None
    icmps: list[ICMPRule] | None = None
    authentication: Any = None

    L3_FIELDS: ClassVar[tuple[str, ...]] = (
        "toEndpoints",
        "toCIDR",
        "toCIDRSet",
        "toEntities",
        "toServices",
        "toFQDNs",
        "toNodes",
        "toGroups",
    )

    @model_validator(mode="after")
    def _check(self) -> EgressRule:
        problems = Problems()
        self.check_section(problems)
        if self.to_services and self.to_ports:
            problems.add("toPorts", "cannot be combined with toServices")
        problems.raise_if_any()
        return self


class EnableDefaultDeny(ApiModel):
    ingress: bool | None = None
    egress: bool | None = None


class CiliumLabel(ApiModel):
    key: str
    value: str | None = None
    source: str | None = None


class CiliumRule(ApiModel):
    """One Cilium policy rule (the content of ``spec`` or of one ``specs`` entry)."""

    endpoint_selector: EndpointSelector | None = None
    node_selector: EndpointSelector | None = None
    ingress: list[IngressRule] | None = None
    ingress_deny: list[IngressRule] | None = None
    egress: list[EgressRule] | None = None
    egress_deny: list[EgressRule] | None = None
    enable_default_deny: EnableDefaultDeny | None = None
    labels: list[CiliumLabel] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CiliumRule:
        problems = Problems()
        if self.endpoint_selector is None and self.node_selector is None:
            problems.add("endpointSelector", "required: set endpointSelector (or nodeSelector)")
        if self.endpoint_selector is not None and self.node_selector is not None:
            problems.add("nodeSelector", "cannot be combined with endpointSelector")
        for section, rules in (("ingressDeny", self.ingress_deny), ("egressDeny", self.egress_deny)):
            for i, rule in enumerate(rules or []):
                for j, port_rule in enumerate(rule.to_ports or []):
                    if port_rule.rules is not None:
                        problems.add(
                            f"{section}[{i}].toPorts[{j}].rules",
                            "deny rules cannot have L7 rules (deny works at L3/L4 only)",
                        )
        for i, rule in enumerate(self.egress_deny or []):
            if rule.to_fqdns:
                problems.add(f"egressDeny[{i}].toFQDNs", "not allowed in deny rules")
        if self.node_selector is not None:
            for section, rules in (("ingress", self.ingress), ("egress", self.egress)):
                for i, rule in enumerate(rules or []):
                    if any(p.has_l7() for p in rule.to_ports or []):
                        problems.add(
                            f"{section}[{i}].toPorts", "host policies (nodeSelector) do not support L7 rules"
                        )
        problems.raise_if_any()
        return self

    def default_deny(self) -> tuple[bool, bool]:
        """(ingress, egress) default-deny as Cilium computes it when enableDefaultDeny is unset."""
        flags = self.enable_default_deny or EnableDefaultDeny()
        ingress = flags.ingress if flags.ingress is not None else bool(self.ingress or self.ingress_deny)
        egress = flags.egress if flags.egress is not None else bool(self.egress or self.egress_deny)
        return ingress, egress


class _CiliumPolicy(Resource):
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    ALLOWS_NODE_SELECTOR: ClassVar[bool] = False

    spec: CiliumRule | None = None
    specs: list[CiliumRule] | None = None
    status: dict[str, Any] | None = None

    @field_validator("spec")
    @classmethod
    def _spec_scope(cls, rule: CiliumRule | None) -> CiliumRule | None:
        if rule is not None:
            cls._check_scope([("", rule)])
        return rule

    @field_validator("specs")
    @classmethod
    def _specs_scope(cls, rules: list[CiliumRule] | None) -> list[CiliumRule] | None:
        cls._check_scope([(f"[{i}]", r) for i, r in enumerate(rules or [])])
        return rules

    @classmethod
    def _check_scope(cls, rules: list[tuple[str, CiliumRule]]) -> None:
        problems = Problems()
        if not cls.ALLOWS_NODE_SELECTOR:
            for path, rule in rules:
                if rule.node_selector is not None:
                    problems.add(
                        f"{path}.nodeSelector" if path else "nodeSelector",
                        "only a CiliumClusterwideNetworkPolicy may select nodes",
                    )
        problems.raise_if_any()

    @model_validator(mode="after")
    def _one_rule_at_least(self) -> _CiliumPolicy:
        if self.spec is None and not self.specs:
            problems = Problems()
            problems.add("spec", "required: set spec (one rule) or specs (a list of rules)")
            problems.raise_if_any()
        return self

    def rules(self) -> list[CiliumRule]:
        """``spec`` followed by ``specs``."""
        return ([self.spec] if self.spec is not None else []) + list(self.specs or [])


class CiliumNetworkPolicy(_CiliumPolicy):
    """A CiliumNetworkPolicy (namespaced)."""

    KIND: ClassVar[str] = "CiliumNetworkPolicy"
    NAMESPACED: ClassVar[bool] = True


class CiliumClusterwideNetworkPolicy(_CiliumPolicy):
    """A CiliumClusterwideNetworkPolicy (cluster-scoped; may use nodeSelector)."""

    KIND: ClassVar[str] = "CiliumClusterwideNetworkPolicy"
    NAMESPACED: ClassVar[bool] = False
    ALLOWS_NODE_SELECTOR: ClassVar[bool] = True
