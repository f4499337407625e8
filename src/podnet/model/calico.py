"""``projectcalico.org/v3`` kinds: IPPool, BGPConfiguration, BGPPeer, NetworkPolicy, GlobalNetworkPolicy,
HostEndpoint.

Rules follow Calico's validator (``libcalico-go/lib/validator/v3``) and docs; defaults follow Calico:

    IPPool               blockSize 26 (IPv4) / 122 (IPv6); ipipMode, vxlanMode Never; natOutgoing,
                         disabled, disableBGPExport false; nodeSelector all(); allowedUses
                         [Workload, Tunnel]; assignmentMode Automatic
    BGPConfiguration     nodeToNodeMeshEnabled true; asNumber 64512; listenPort 179;
                         logSeverityScreen Info
    (Global)NetworkPolicy  tier default; selector all(); types Egress if only egress rules,
                         Ingress and Egress if both, else Ingress; doNotTrack, preDNAT,
                         applyOnForward false (GlobalNetworkPolicy)
    HostEndpoint         node required; interfaceName ("*" = every host interface) or expectedIPs
                         required (no interfaceName: the interface holding one of expectedIPs)

Selector fields hold Calico selector expressions (see :mod:`podnet.model.calico_selector`); they are
validated when parsed and kept as written. ``parsed_*`` helpers return the parsed form.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from podnet.model.base import ApiModel
from podnet.model.calico_selector import Global, Selector, SelectorSyntaxError, parse_selector
from podnet.model.fields import (
    CIDR,
    AnnotationMap,
    ASNumber,
    Duration,
    EncapMode,
    IPAddressStr,
    IPNetwork,
    IPOrCIDR,
    Order,
    PortNumber,
    between,
    int_or_string,
    ip_address_problem,
    parse_network,
)
from podnet.model.names import (
    NameRule,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    iana_svc_name_problem,
)
from podnet.model.problems import Problems
from podnet.model.resource import Resource

API_VERSION = "projectcalico.org/v3"

# --- selector fields -------------------------------------------------------------------------


def _selector_validator(allow_global: bool) -> Any:
    def check(text: str) -> str:
        try:
            selector = parse_selector(text)
        except SelectorSyntaxError as exc:
            raise ValueError(str(exc)) from None
        if selector.uses_global():
            if not allow_global:
                raise ValueError("global() may only be used in a rule's namespaceSelector")
            if not isinstance(selector, Global):
                raise ValueError("global() cannot be combined with other selectors")
        return text

    return AfterValidator(check)


CalicoSelector = Annotated[str, _selector_validator(allow_global=False)]
"""A Calico selector expression (``global()`` not allowed)."""

RuleNamespaceSelector = Annotated[str, _selector_validator(allow_global=True)]
"""A rule's namespaceSelector: a Calico selector, or ``global()`` alone."""


# --- IPPool ----------------------------------------------------------------------------------

IPV4_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
IPV6_LINK_LOCAL = ipaddress.ip_network("fe80::/10")
BLOCK_SIZE_DEFAULTS = {4: 26, 6: 122}
BLOCK_SIZE_RANGES = {4: (20, 32), 6: (116, 128)}

AllowedUse = Literal["Workload", "Tunnel", "LoadBalancer"]


def _pool_cidr(text: str) -> str:
    network = parse_network(text)
    if network.network_address != ipaddress.ip_address(text.split("/")[0]):
        raise ValueError(f"host bits must be zero (did you mean {network}?)")
    link_local = IPV4_LINK_LOCAL if network.version == 4 else IPV6_LINK_LOCAL
    if network.overlaps(link_local):  # type: ignore[arg-type]
        raise ValueError(f"must not overlap the link-local range {link_local}")
    return text


class IPPoolSpec(ApiModel):
    cidr: Annotated[str, AfterValidator(_pool_cidr)]
    block_size: int | None = None
    ipip_mode: EncapMode = "Never"
    vxlan_mode: EncapMode = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = Field(default=False, alias="disableBGPExport")
    node_selector: CalicoSelector = "all()"
    namespace_selector: CalicoSelector | None = None
    allowed_uses: list[AllowedUse] = Field(default_factory=lambda: ["Workload", "Tunnel"])
    assignment_mode: Literal["Automatic", "Manual"] = "Automatic"

    @model_validator(mode="after")
    def _check_and_default(self) -> IPPoolSpec:
        problems = Problems()
        network = self.network()
        version = network.version
        if self.block_size is None:
            self.block_size = BLOCK_SIZE_DEFAULTS[version]
        low, high = BLOCK_SIZE_RANGES[version]
        if not low <= self.block_size <= high:
            problems.add("blockSize", f"must be between {low} and {high} for IPv{version}")
        elif network.prefixlen > self.block_size and not self.disabled:
            problems.add(
                "cidr",
                f"pool /{network.prefixlen} is smaller than one block (/{self.block_size}); "
                f"use a prefix of /{self.block_size} or shorter, or a larger blockSize",
            )
        if version == 6 and self.ipip_mode != "Never":
            problems.add("ipipMode", "must be Never for an IPv6 pool (IPIP is IPv4 only)")
        if self.ipip_mode != "Never" and self.vxlan_mode != "Never":
            problems.add("ipipMode", "ipipMode and vxlanMode cannot both be enabled; choose one")
        if len(set(self.allowed_uses)) != len(self.allowed_uses):
            problems.add("allowedUses", "must not repeat a use")
        if "LoadBalancer" in self.allowed_uses:
            if set(self.allowed_uses) != {"LoadBalancer"}:
                problems.add("allowedUses", "LoadBalancer cannot be combined with Workload or Tunnel")
            if self.ipip_mode != "Never" or self.vxlan_mode != "Never":
                problems.add("ipipMode", "a LoadBalancer pool cannot use IPIP or VXLAN")
            if parse_selector(self.node_selector) != parse_selector("all()"):
                problems.add("nodeSelector", "must be all() for a LoadBalancer pool")
        problems.raise_if_any()
        return self

    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def ip_version(self) -> int:
        return self.network().version

    def parsed_node_selector(self) -> Selector:
        return parse_selector(self.node_selector)


class IPPool(Resource):
    """A Calico IP pool (cluster-scoped)."""

    KIND: ClassVar[str] = "IPPool"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: IPPoolSpec


# --- BGPConfiguration ------------------------------------------------------------------------

_STANDARD_COMMUNITY = re.compile(r"(\d+):(\d+)")
_LARGE_COMMUNITY = re.compile(r"(\d+):(\d+):(\d+)")
_INTERFACE_PATTERN = re.compile(r"[a-zA-Z0-9_.*-]{1,15}")


def community_problem(value: str) -> str | None:
    """``aa:nn`` (each ≤ 65535) or large ``aa:nn:mm`` (each ≤ 4294967295)."""
    standard = _STANDARD_COMMUNITY.fullmatch(value)
    if standard and all(int(p) <= 65535 for p in standard.groups()):
        return None
    large = _LARGE_COMMUNITY.fullmatch(value)
    if large and all(int(p) <= 4294967295 for p in large.groups()):
        return None
    return "must be a BGP community aa:nn (each part <= 65535) or a large community aa:nn:mm"


class SecretKeyRef(ApiModel):
    name: str
    key: str
    optional: bool | None = None


class SecretSource(ApiModel):
    secret_key_ref: SecretKeyRef | None = None


class ServiceCIDR(ApiModel):
    cidr: CIDR


class Community(ApiModel):
    name: str
    value: str

    @model_validator(mode="after")
    def _check(self) -> Community:
        problem = community_problem(self.value)
        if problem:
            problems = Problems()
            problems.add("value", problem)
            problems.raise_if_any()
        return self


class PrefixAdvertisement(ApiModel):
    cidr: IPOrCIDR
    communities: list[str] | None = None


class BGPConfigurationSpec(ApiModel):
    log_severity_screen: Literal["Trace", "Debug", "Info", "Warning", "Error", "Fatal"] = "Info"
    node_to_node_mesh_enabled: bool = True
    as_number: ASNumber = 64512
    listen_port: PortNumber = 179
    service_cluster_ips: list[ServiceCIDR] | None = Field(default=None, alias="serviceClusterIPs")
    service_external_ips: list[ServiceCIDR] | None = Field(default=None, alias="serviceExternalIPs")
    service_load_balancer_ips: list[ServiceCIDR] | None = Field(default=None, alias="serviceLoadBalancerIPs")
    communities: list[Community] | None = None
    prefix_advertisements: list[PrefixAdvertisement] | None = None
    node_mesh_password: SecretSource | None = None
    node_mesh_max_restart_time: Duration | None = None
    bind_mode: Literal["None", "NodeIP"] | None = None
    ignored_interfaces: list[str] | None = None
    program_cluster_routes: Literal["Enabled", "Disabled"] | None = None
    local_workload_peering_ipv4: IPAddressStr | None = Field(default=None, alias="localWorkloadPeeringIPV4")
    local_workload_peering_ipv6: IPAddressStr | None = Field(default=None, alias="localWorkloadPeeringIPV6")

    @model_validator(mode="after")
    def _check(self) -> BGPConfigurationSpec:
        problems = Problems()
        defined = {c.name for c in self.communities or []}
        if self.communities and not self.prefix_advertisements:
            problems.add("communities", "are defined but not used by any prefixAdvertisements entry")
        for i, advert in enumerate(self.prefix_advertisements or []):
            for j, community in enumerate(advert.communities or []):
                if community not in defined and community_problem(community):
                    problems.add(
                        f"prefixAdvertisements[{i}].communities[{j}]",
                        f"{community!r} is neither a community value (aa:nn) nor a name in communities",
                    )
        for i, interface in enumerate(self.ignored_interfaces or []):
            if not _INTERFACE_PATTERN.fullmatch(interface):
                problems.add(
                    f"ignoredInterfaces[{i}]", "must be an interface name or pattern (<= 15 characters)"
                )
        if not self.node_to_node_mesh_enabled:
            if self.node_mesh_password is not None:
                problems.add("nodeMeshPassword", "cannot be set when nodeToNodeMeshEnabled is false")
            if self.node_mesh_max_restart_time is not None:
                problems.add("nodeMeshMaxRestartTime", "cannot be set when nodeToNodeMeshEnabled is false")
        problems.raise_if_any()
        return self


class BGPConfiguration(Resource):
    """Calico BGP configuration (cluster-scoped; ``default`` or ``node.<name>``)."""

    KIND: ClassVar[str] = "BGPConfiguration"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: BGPConfigurationSpec = Field(default_factory=BGPConfigurationSpec)


# --- BGPPeer ---------------------------------------------------------------------------------


def parse_peer_ip(text: str) -> tuple[str, int | None]:
    """``"10.0.0.1"``, ``"10.0.0.1:1179"``, ``"fd00::1"`` or ``"[fd00::1]:1179"`` → (IP, port)."""
    bracketed = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)", text)
    v4_port = re.fullmatch(r"([0-9.]+):(\d+)", text)
    match = bracketed or v4_port
    if match:
        address, port_text = match.group(1), match.group(2)
        port: int | None = int(port_text)
    else:
        address, port = text, None
    problem = ip_address_problem(address)
    if problem:
        raise ValueError(
            "must be an IP address, optionally with a port: 10.0.0.1, 10.0.0.1:179 or [fd00::1]:179"
        )
    if port is not None:
        between(1, 65535)(port)
    return address, port


def _peer_ip(text: str) -> str:
    parse_peer_ip(text)
    return text


class BGPPeerSpec(ApiModel):
    node: str | None = None
    node_selector: CalicoSelector | None = None
    peer_ip: Annotated[str, AfterValidator(_peer_ip)] | None = Field(default=None, alias="peerIP")
    peer_selector: CalicoSelector | None = None
    local_workload_selector: CalicoSelector | None = None
    as_number: ASNumber | None = None
    local_as_number: ASNumber | None = Field(default=None, alias="localASNumber")
    num_allowed_local_as_numbers: int | None = Field(default=None, alias="numAllowedLocalASNumbers")
    keep_original_next_hop: bool | None = None
    next_hop_mode: Literal["Auto", "Self", "Keep"] | None = None
    password: SecretSource | None = None
    source_address: Literal["UseNodeIP", "None"] | None = None
    max_restart_time: Duration | None = None
    keepalive_time: Duration | None = None
    ttl_security: Annotated[int, AfterValidator(between(0, 255))] | None = None
    reachable_by: IPAddressStr | None = None
    filters: list[str] | None = None
    reverse_peering: Literal["Auto", "Manual"] | None = None

    @model_validator(mode="after")
    def _check(self) -> BGPPeerSpec:
        problems = Problems()
        if self.node and self.node_selector:
            problems.add("node", "must be empty when nodeSelector is set")
        remote = [
            f
            for f, v in (
                ("peerIP", self.peer_ip),
                ("peerSelector", self.peer_selector),
                ("localWorkloadSelector", self.local_workload_selector),
            )
            if v
        ]
        if not remote:
            problems.add("peerIP", "required: set peerIP (with asNumber) or peerSelector")
        elif len(remote) > 1:
            problems.add(remote[1], f"must be empty when {remote[0]} is set")
        if remote == ["peerSelector"] and self.as_number is not None:
            problems.add("asNumber", "must be empty when peerSelector is set (the peer node's AS is used)")
        if remote in (["peerIP"], ["localWorkloadSelector"]) and self.as_number is None:
            problems.add("asNumber", f"required when {remote[0]} is set")
        if self.reachable_by:
            if not self.peer_ip:
                problems.add("reachableBy", "must be empty when peerIP is empty")
            else:
                peer, _ = parse_peer_ip(self.peer_ip)
                if ipaddress.ip_address(peer).version != ipaddress.ip_address(self.reachable_by).version:
                    problems.add("reachableBy", "must be in the same IP family as peerIP")
        if self.keep_original_next_hop and self.next_hop_mode is not None:
            problems.add("keepOriginalNextHop", "must not be true when nextHopMode is set (it is deprecated)")
        problems.raise_if_any()
        return self

    def peer_address(self) -> tuple[str, int | None] | None:
        """``(ip, port)`` from peerIP; port None means the BGP default 179."""
        return parse_peer_ip(self.peer_ip) if self.peer_ip else None


class BGPPeer(Resource):
    """A Calico BGP peer (cluster-scoped)."""

    KIND: ClassVar[str] = "BGPPeer"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: BGPPeerSpec


# --- policy ----------------------------------------------------------------------------------

PROTOCOL_NAMES = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
PORT_PROTOCOLS = {"TCP", "UDP", "SCTP", 6, 17, 132}


def _calico_protocol(value: Any) -> int | str:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be one of {', '.join(PROTOCOL_NAMES)} or a number 1-255")
    if isinstance(value, int):
        return between(1, 255)(value)
    if value not in PROTOCOL_NAMES:
        raise ValueError(f"must be one of {', '.join(PROTOCOL_NAMES)} or a number 1-255")
    return value


CalicoProtocol = int_or_string(_calico_protocol)
"""``TCP``, ``UDP``, ``ICMP``, ``ICMPv6``, ``SCTP``, ``UDPLite`` or a protocol number 1-255."""

_PORT_RANGE = re.compile(r"(\d+):(\d+)")


def _calico_port(value: Any) -> int | str:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a port number, a range 'lo:hi' or a port name")
    if isinstance(value, int):
        return between(1, 65535)(value)
    match = _PORT_RANGE.fullmatch(value)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if not 1 <= low <= high <= 65535:
            raise ValueError("a port range 'lo:hi' needs 1 <= lo <= hi <= 65535")
        return value
    problem = iana_svc_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


CalicoPort = int_or_string(_calico_port)
"""A port: ``80``, a range ``"6040:6050"`` (inclusive) or a named port ``"http"``."""


class ICMPMatch(ApiModel):
    type: Annotated[int, AfterValidator(between(0, 254))] | None = None
    code: Annotated[int, AfterValidator(between(0, 255))] | None = None

    @model_validator(mode="after")
    def _check(self) -> ICMPMatch:
        if self.code is not None and self.type is None:
            problems = Problems()
            problems.add("code", "requires type (the kernel matches a code only together with a type)")
            problems.raise_if_any()
        return self


class ServiceAccountMatch(ApiModel):
    names: list[str] | None = None
    selector: CalicoSelector | None = None


class ServiceMatch(ApiModel):
    name: str
    namespace: str | None = None


class EntityRule(ApiModel):
    nets: list[IPOrCIDR] | None = None
    not_nets: list[IPOrCIDR] | None = None
    selector: CalicoSelector | None = None
    not_selector: CalicoSelector | None = None
    namespace_selector: RuleNamespaceSelector | None = None
    ports: list[CalicoPort] | None = None
    not_ports: list[CalicoPort] | None = None
    service_accounts: ServiceAccountMatch | None = None
    services: ServiceMatch | None = None

    @model_validator(mode="after")
    def _check(self) -> EntityRule:
        problems = Problems()
        if self.services is not None:
            for field, value in (
                ("namespaceSelector", self.namespace_selector),
                ("selector", self.selector),
                ("notSelector", self.not_selector),
                ("serviceAccounts", self.service_accounts),
                ("nets", self.nets),
                ("notNets", self.not_nets),
            ):
                if value:
                    problems.add("services", f"cannot be combined with {field}")
        problems.raise_if_any()
        return self


class HTTPPath(ApiModel):
    exact: str | None = None
    prefix: str | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPPath:
        problems = Problems()
        values = [v for v in (self.exact, self.prefix) if v is not None]
        if len(values) != 1:
            problems.add("", "set exactly one of exact or prefix")
        for field, value in (("exact", self.exact), ("prefix", self.prefix)):
            if value is not None and (not value.startswith("/") or any(c in value for c in "? #")):
                problems.add(field, "must start with '/' and contain no '?', '#' or space")
        problems.raise_if_any()
        return self


class HTTPMatch(ApiModel):
    methods: list[str] | None = None
    paths: list[HTTPPath] | None = None


class RuleMetadata(ApiModel):
    annotations: AnnotationMap | None = None


def _nets_version(nets: list[str] | None) -> set[int]:
    return {ipaddress.ip_network(n, strict=False).version for n in nets or []}


class Rule(ApiModel):
    """One Calico policy rule: an action and what it matches."""

    action: Literal["Allow", "Deny", "Log", "Pass"]
    protocol: CalicoProtocol | None = None
    not_protocol: CalicoProtocol | None = None
    icmp: ICMPMatch | None = None
    not_icmp: ICMPMatch | None = Field(default=None, alias="notICMP")
    ip_version: Literal[4, 6] | None = None
    source: EntityRule | None = None
    destination: EntityRule | None = None
    http: HTTPMatch | None = None
    metadata: RuleMetadata | None = None

    @model_validator(mode="after")
    def _check(self) -> Rule:
        problems = Problems()
        for side_name, side in (("source", self.source), ("destination", self.destination)):
            if side is None:
                continue
            for field, value in (("ports", side.ports), ("notPorts", side.not_ports)):
                if value and self.protocol not in PORT_PROTOCOLS:
                    problems.add(f"{side_name}.{field}", "needs protocol TCP, UDP or SCTP on the rule")
        if self.http is not None:
            if self.protocol is not None and self.protocol not in ("TCP", 6):
                problems.add("protocol", "must be TCP or empty in a rule with http")
            if self.action != "Allow":
                problems.add("http", "is only valid in Allow rules")
        for field, value in (("icmp", self.icmp), ("notICMP", self.not_icmp)):
            if value is not None and self.protocol not in ("ICMP", "ICMPv6", 1, 58):
                problems.add(field, "needs protocol ICMP or ICMPv6 on the rule")
        protocols = {self.protocol, self.not_protocol}
        if protocols & {"ICMP", 1} and self.ip_version not in (None, 4):
            problems.add("ipVersion", "must be 4 with protocol ICMP")
        if protocols & {"ICMPv6", 58} and self.ip_version not in (None, 6):
            problems.add("ipVersion", "must be 6 with protocol ICMPv6")
        seen: set[int] = set()
        for side_name, side in (("source", self.source), ("destination", self.destination)):
            if side is None:
                continue
            for field, nets in (("nets", side.nets), ("notNets", side.not_nets)):
                if not nets:
                    continue
                versions = _nets_version(nets)
                if self.ip_version is not None and versions - {self.ip_version}:
                    problems.add(f"{side_name}.{field}", f"must all be IPv{self.ip_version} (ipVersion)")
                elif len(versions | seen) > 1:
                    problems.add(f"{side_name}.{field}", "a rule cannot mix IPv4 and IPv6 networks")
                seen |= versions
        if self.destination is not None and self.destination.services is not None:
            for field in ("ports", "notPorts"):
                if getattr(self.destination, "ports" if field == "ports" else "not_ports"):
                    problems.add(f"destination.{field}", "cannot be combined with destination.services")
        problems.raise_if_any()
        return self


PolicyType = Literal["Ingress", "Egress"]


def calico_default_types(ingress: object, egress: object) -> list[PolicyType]:
    """Calico's defaulting: Egress if only egress rules, both if both, else Ingress."""
    if egress and not ingress:
        return ["Egress"]
    if egress and ingress:
        return ["Ingress", "Egress"]
    return ["Ingress"]


class _PolicySpec(ApiModel):
    tier: str = "default"
    order: Order | None = None
    selector: CalicoSelector = "all()"
    types: list[PolicyType] | None = None
    ingress: list[Rule] | None = None
    egress: list[Rule] | None = None
    service_account_selector: CalicoSelector | None = None
    performance_hints: list[Literal["AssumeNeededOnEveryNode"]] | None = None

    NEEDS_SERVICE_NAMESPACE: ClassVar[bool] = False

    def check_policy(self, problems: Problems) -> None:
        tier_problem = dns1123_label_problem(self.tier)
        if tier_problem:
            problems.add("tier", tier_problem)
        if self.types is not None and len(set(self.types)) != len(self.types):
            problems.add("types", "must not repeat a type")
        for i, rule in enumerate(self.egress or []):
            if rule.source is not None and rule.source.services is not None:
                problems.add(f"egress[{i}].source.services", "not allowed in an egress rule's source")
            if rule.http is not None:
                problems.add(f"egress[{i}].http", "not allowed in egress rules")
        for i, rule in enumerate(self.ingress or []):
            if rule.destination is not None and rule.destination.services is not None:
                problems.add(
                    f"ingress[{i}].destination.services", "not allowed in an ingress rule's destination"
                )
        if self.NEEDS_SERVICE_NAMESPACE:
            for direction, rules, side in (
                ("egress", self.egress, "destination"),
                ("ingress", self.ingress, "source"),
            ):
                for i, rule in enumerate(rules or []):
                    entity = getattr(rule, side)
                    if entity is not None and entity.services is not None and not entity.services.namespace:
                        problems.add(
                            f"{direction}[{i}].{side}.services.namespace",
                            "required in a GlobalNetworkPolicy",
                        )

    def effective_types(self) -> list[PolicyType]:
        return list(self.types) if self.types else calico_default_types(self.ingress, self.egress)

    def parsed_selector(self) -> Selector:
        return parse_selector(self.selector)


class CalicoNetworkPolicySpec(_PolicySpec):
    @model_validator(mode="after")
    def _check_and_default(self) -> CalicoNetworkPolicySpec:
        problems = Problems()
        self.check_policy(problems)
        problems.raise_if_any()
        if not self.types:
            self.types = calico_default_types(self.ingress, self.egress)
        return self


class GlobalNetworkPolicySpec(_PolicySpec):
    namespace_selector: CalicoSelector | None = None
    do_not_track: bool = False
    pre_dnat: bool = Field(default=False, alias="preDNAT")
    apply_on_forward: bool = False

    NEEDS_SERVICE_NAMESPACE: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_and_default(self) -> GlobalNetworkPolicySpec:
        problems = Problems()
        self.check_policy(problems)
        if self.do_not_track and self.pre_dnat:
            problems.add("preDNAT", "preDNAT and doNotTrack cannot both be true")
        if self.pre_dnat and self.egress:
            problems.add("egress", "a preDNAT policy cannot have egress rules")
        if self.pre_dnat and self.types and "Egress" in self.types:
            problems.add("types", "a preDNAT policy cannot have type Egress")
        if (self.do_not_track or self.pre_dnat) and not self.apply_on_forward:
            problems.add("applyOnForward", "must be true when preDNAT or doNotTrack is true")
        problems.raise_if_any()
        if not self.types:
            self.types = calico_default_types(self.ingress, self.egress)
        return self


class CalicoNetworkPolicy(Resource):
    """A Calico ``projectcalico.org/v3`` NetworkPolicy (namespaced)."""

    KIND: ClassVar[str] = "NetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = True
    NAME_RULE: ClassVar[NameRule] = "calico-policy"

    spec: CalicoNetworkPolicySpec = Field(default_factory=CalicoNetworkPolicySpec)


class GlobalNetworkPolicy(Resource):
    """A Calico GlobalNetworkPolicy (cluster-scoped)."""

    KIND: ClassVar[str] = "GlobalNetworkPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False
    NAME_RULE: ClassVar[NameRule] = "calico-policy"

    spec: GlobalNetworkPolicySpec = Field(default_factory=GlobalNetworkPolicySpec)


# --- HostEndpoint ----------------------------------------------------------------------------

_HOST_INTERFACE = re.compile(r"[a-zA-Z0-9_.@:-]{1,15}")


def _host_interface(text: str) -> str:
    if text != "*" and not _HOST_INTERFACE.fullmatch(text):
        raise ValueError('must be "*" (every interface) or an interface name of at most 15 characters')
    return text


def _iana_name(text: str) -> str:
    problem = iana_svc_name_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def _node_name(text: str) -> str:
    problem = dns1123_subdomain_problem(text)
    if problem:
        raise ValueError(problem)
    return text


class EndpointPort(ApiModel):
    """A named port of a host endpoint (Calico ``EndpointPort``: name, protocol, port)."""

    name: Annotated[str, AfterValidator(_iana_name)]
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: PortNumber


class HostEndpointSpec(ApiModel):
    node: Annotated[str, AfterValidator(_node_name)]
    interface_name: Annotated[str, AfterValidator(_host_interface)] | None = None
    expected_ips: list[IPAddressStr] | None = Field(default=None, alias="expectedIPs")
    profiles: list[str] | None = None
    ports: list[EndpointPort] | None = None

    @model_validator(mode="after")
    def _check(self) -> HostEndpointSpec:
        problems = Problems()
        if not self.interface_name and not self.expected_ips:
            problems.add("interfaceName", 'required: set interfaceName (a name or "*") or expectedIPs')
        problems.raise_if_any()
        return self


class HostEndpoint(Resource):
    """A Calico host endpoint (cluster-scoped): puts a node's own traffic through ``interfaceName``
    under host policy. podnet enforces its default deny, Felix's failsafe ports and the
    GlobalNetworkPolicies selecting it (see :mod:`podnet.calc.host_endpoints`,
    :mod:`podnet.calc.host_policy`); its ``profiles`` and ``ports`` are not applied."""

    KIND: ClassVar[str] = "HostEndpoint"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    NAMESPACED: ClassVar[bool] = False

    spec: HostEndpointSpec
