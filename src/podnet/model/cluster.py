"""podnet's own ``podnet.io/v1`` ClusterConfiguration: the cluster-wide choices and the profile preset.

One object, cluster-scoped, named ``default`` (the only one podnet reads; a document may omit the
name). A **profile** is a named
preset; every field set explicitly overrides it. Fields that depend on the profile are left unset in
the stored object (so switching the profile later switches them too) and resolved by
:meth:`ClusterConfiguration.effective`:

    field                   calico profile        cilium profile       notes
    ----------------------  --------------------  -------------------  ---------------------------------
    tunnel                  disabled              vxlan                Cilium-style overlay (vxlan|disabled)
    autoDirectNodeRoutes    false                 false                needs tunnel disabled
    defaultIPIPMode         Always                Never                for pools that do not say
    defaultVXLANMode        Never                 Always if tunnel     for pools that do not say
                                                  is vxlan, else Never
    kubeProxyReplacement    false                 true                 eBPF socket LB instead of DNAT

Profile-independent defaults are applied at parse time: ``profile: calico``, ``mtu: 0`` (detect from
the node's uplink and subtract the tunnel overhead), ``serviceClusterIPRange: 10.96.0.0/12``,
``nodePortRange: 30000-32767``, ``policyEnforcementMode: default`` (Cilium's: ``default`` enforces
once a policy selects an endpoint, ``always`` enforces with no policy, ``never`` never), and Felix's
``failsafeInboundHostPorts`` (TCP 22, UDP 68, TCP 179, 2379, 2380, 5473, 6443, 6666, 6667) and
``failsafeOutboundHostPorts`` (UDP 53, 67, TCP 179, 2379, 2380, 5473, 6443, 6666, 6667): what a
HostEndpoint's default deny never blocks (``[]`` turns failsafe off), as ``[{protocol: TCP, port: 22}]``;
left unset they stay unset in the stored object and :meth:`effective` fills in the defaults.
``clusterName`` (Cilium's ``cluster-name``, an RFC 1123 label; unset: ``default``) is part of every
identity's labels (``io.cilium.k8s.policy.cluster``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from podnet.model.base import ApiModel
from podnet.model.fields import EncapMode, NetworkCIDR
from podnet.model.meta import ObjectMeta
from podnet.model.names import dns1123_label_problem
from podnet.model.problems import Problems
from podnet.model.resource import Resource

Profile = Literal["calico", "cilium"]
Tunnel = Literal["vxlan", "disabled"]

CLUSTER_CONFIGURATION_NAME = "default"
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
IPIP_OVERHEAD = 20  # outer IPv4 header


def _mtu(value: int) -> int:
    if value != 0 and not 576 <= value <= 9000:
        raise ValueError("must be 0 (detect) or between 576 and 9000")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def parse_port_range(text: str) -> tuple[int, int]:
    """``"30000-32767"`` → ``(30000, 32767)``; ValueError unless 1 <= lo < hi <= 65535."""
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if not match:
        raise ValueError("must be a range 'lo-hi' such as 30000-32767")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1 <= low < high <= 65535:
        raise ValueError("must satisfy 1 <= lo < hi <= 65535")
    return low, high


def _port_range(text: str) -> str:
    parse_port_range(text)
    return text


@dataclass(frozen=True)
class EffectiveClusterSettings:
    """Every ClusterConfiguration choice with the profile's preset filled in."""

    profile: Profile
    mtu: int
    tunnel: Tunnel
    auto_direct_node_routes: bool
    default_ipip_mode: EncapMode
    default_vxlan_mode: EncapMode
    service_cluster_ip_range: str
    node_port_range: tuple[int, int]
    policy_enforcement_mode: Literal["default", "always", "never"]
    kube_proxy_replacement: bool
    failsafe_inbound: tuple[Failsafe, ...] = ()
    failsafe_outbound: tuple[Failsafe, ...] = ()
    cluster_name: str = "default"
    to_fqdns_min_ttl: int = 0  # seconds a toFQDNs address is kept at least (0: the answer's TTL)
    flows: bool = True  # a flow record per new connection (Hubble's enable-hubble; drops always)

    def tunnel_overhead(self) -> int:
        """Bytes of encapsulation the default mode adds to a pod packet (0 without a tunnel)."""
        if self.tunnel == "vxlan" or self.default_vxlan_mode != "Never":
            return VXLAN_OVERHEAD
        if self.default_ipip_mode != "Never":
            return IPIP_OVERHEAD
        return 0

    def pod_mtu(self, link_mtu: int) -> int:
        """The MTU to give pod interfaces: ``mtu`` if set, else the link's minus the tunnel overhead."""
        return self.mtu if self.mtu else link_mtu - self.tunnel_overhead()


class ProtoPort(ApiModel):
    """A failsafe port in Calico's format: ``{protocol: TCP, port: 179}`` (optional ``net``: only
    from / to that network)."""

    protocol: Literal["TCP", "UDP"] = "TCP"
    port: Annotated[int, AfterValidator(_port)]
    net: NetworkCIDR | None = None


#: ``(protocol, port, net or None)``: a failsafe port as calculation uses it.
Failsafe = tuple[str, int, str | None]


def _failsafe(ports: list[ProtoPort] | None, defaults: tuple[str, ...]) -> tuple[Failsafe, ...]:
    if ports is None:
        return tuple((p.upper(), int(n), None) for p, _, n in (d.partition(":") for d in defaults))
    return tuple((p.protocol, p.port, p.net) for p in ports)


#: Felix's FailsafeInboundHostPorts / FailsafeOutboundHostPorts defaults (SSH, DHCP, BGP, etcd,
#: Typha, the Kubernetes API server, kube-proxy / calico-node health).
DEFAULT_FAILSAFE_INBOUND = (
    "tcp:22",
    "udp:68",
    "tcp:179",
    "tcp:2379",
    "tcp:2380",
    "tcp:5473",
    "tcp:6443",
    "tcp:6666",
    "tcp:6667",
)
DEFAULT_FAILSAFE_OUTBOUND = (
    "udp:53",
    "udp:67",
    "tcp:179",
    "tcp:2379",
    "tcp:2380",
    "tcp:5473",
    "tcp:6443",
    "tcp:6666",
    "tcp:6667",
)


class ClusterConfigurationSpec(ApiModel):
    profile: Profile = "calico"
    mtu: Annotated[int, AfterValidator(_mtu)] = 0
    tunnel: Tunnel | None = None
    auto_direct_node_routes: bool | None = None
    default_ipip_mode: EncapMode | None = Field(default=None, alias="defaultIPIPMode")
    default_vxlan_mode: EncapMode | None = Field(default=None, alias="defaultVXLANMode")
    service_cluster_ip_range: NetworkCIDR = Field(default="10.96.0.0/12", alias="serviceClusterIPRange")
    node_port_range: Annotated[str, AfterValidator(_port_range)] = "30000-32767"
    policy_enforcement_mode: Literal["default", "always", "never"] = "default"
    kube_proxy_replacement: bool | None = None
    failsafe_inbound_host_ports: list[ProtoPort] | None = None  # None: Felix's defaults
    failsafe_outbound_host_ports: list[ProtoPort] | None = None
    # Cilium's cluster-name: every identity carries it (io.cilium.k8s.policy.cluster). Unset stays
    # unset in the stored object (an agent of the previous release refuses fields it does not know)
    cluster_name: str | None = None
    # Cilium's tofqdns-min-ttl: an address learnt for toFQDNs is kept at least this long (seconds)
    to_fqdns_min_ttl: Annotated[int, Field(ge=0, le=86400)] | None = Field(
        default=None, alias="toFQDNsMinTTL"
    )
    # a flow record per new connection on every node (Hubble's enable-hubble); drops are always
    # recorded. Off: no trace events from the datapath (the bench measures what they cost)
    flows: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> ClusterConfigurationSpec:
        problems = Problems()
        effective = self.effective()
        if effective.default_ipip_mode != "Never" and effective.default_vxlan_mode != "Never":
            problems.add(
                "defaultVXLANMode" if self.default_vxlan_mode is not None else "defaultIPIPMode",
                f"defaultIPIPMode ({effective.default_ipip_mode}) and defaultVXLANMode "
                f"({effective.default_vxlan_mode}) cannot both be enabled",
            )
        if effective.auto_direct_node_routes and effective.tunnel != "disabled":
            problems.add(
                "autoDirectNodeRoutes", "needs tunnel: disabled (direct routes replace the VXLAN tunnel)"
            )
        name_problem = dns1123_label_problem(self.cluster_name) if self.cluster_name is not None else None
        if name_problem:
            problems.add("clusterName", name_problem)
        network = ipaddress.ip_network(self.service_cluster_ip_range)
        if network.version == 4 and network.prefixlen < 12:
            problems.add("serviceClusterIPRange", "an IPv4 service range must be /12 or smaller")
        problems.raise_if_any()
        return self

    def effective(self) -> EffectiveClusterSettings:
        """Resolve the profile's preset for every field left unset."""
        cilium = self.profile == "cilium"
        tunnel: Tunnel = self.tunnel or ("vxlan" if cilium else "disabled")
        if cilium:
            ipip: EncapMode = self.default_ipip_mode or "Never"
            vxlan: EncapMode = self.default_vxlan_mode or ("Always" if tunnel == "vxlan" else "Never")
        else:
            ipip = self.default_ipip_mode or (
                "Never" if self.default_vxlan_mode not in (None, "Never") else "Always"
            )
            vxlan = self.default_vxlan_mode or "Never"
        return EffectiveClusterSettings(
            profile=self.profile,
            mtu=self.mtu,
            tunnel=tunnel,
            auto_direct_node_routes=bool(self.auto_direct_node_routes),
            default_ipip_mode=ipip,
            default_vxlan_mode=vxlan,
            service_cluster_ip_range=self.service_cluster_ip_range,
            node_port_range=parse_port_range(self.node_port_range),
            policy_enforcement_mode=self.policy_enforcement_mode,
            kube_proxy_replacement=cilium
            if self.kube_proxy_replacement is None
            else self.kube_proxy_replacement,
            failsafe_inbound=_failsafe(self.failsafe_inbound_host_ports, DEFAULT_FAILSAFE_INBOUND),
            failsafe_outbound=_failsafe(self.failsafe_outbound_host_ports, DEFAULT_FAILSAFE_OUTBOUND),
            cluster_name=self.cluster_name or "default",
            to_fqdns_min_ttl=self.to_fqdns_min_ttl or 0,
            flows=True if self.flows is None else self.flows,
        )


class ClusterConfiguration(Resource):
    """podnet's cluster-wide configuration (cluster-scoped; must be named ``default``)."""

    KIND: ClassVar[str] = "ClusterConfiguration"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("podnet.io/v1",)
    NAMESPACED: ClassVar[bool] = False

    metadata: ObjectMeta = Field(
        default_factory=lambda: ObjectMeta(name=CLUSTER_CONFIGURATION_NAME), validate_default=True
    )
    spec: ClusterConfigurationSpec = Field(default_factory=ClusterConfigurationSpec)

    @field_validator("metadata", mode="before")
    @classmethod
    def _default_name(cls, meta: Any) -> Any:
        """The one ClusterConfiguration is ``default``; a document may leave the name out."""
        if isinstance(meta, dict) and "name" not in meta:
            return {**meta, "name": CLUSTER_CONFIGURATION_NAME}
        if isinstance(meta, ObjectMeta) and meta.name is None:
            return meta.model_copy(update={"name": CLUSTER_CONFIGURATION_NAME})
        return meta

    @classmethod
    def check_kind_metadata(cls, meta: ObjectMeta, problems: Problems) -> None:
        if meta.name is not None and meta.name != CLUSTER_CONFIGURATION_NAME:
            problems.add(
                "name",
                f'must be "{CLUSTER_CONFIGURATION_NAME}" (podnet reads only the ClusterConfiguration '
                f'named "{CLUSTER_CONFIGURATION_NAME}")',
            )

    def effective(self) -> EffectiveClusterSettings:
        return self.spec.effective()
