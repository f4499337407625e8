"""Core ``v1`` kinds: Namespace, Pod, Node, Service, ServiceAccount.

Only the network-relevant fields are modelled in depth: pod IPs, container ports, node addresses and
pod CIDRs, service ports and traffic policies. Every other field Kubernetes defines (image, command,
env, resources, probes, volumes, tolerations, affinity, ...) is accepted under its real name as an
opaque value, so real manifests apply, while a misspelt or unknown key is still an error.

Kubernetes defaults applied at parse time: container port ``protocol: TCP``; Service ``type:
ClusterIP``, ``sessionAffinity: None``, ``internalTrafficPolicy: Cluster``, ``externalTrafficPolicy:
Cluster`` (NodePort/LoadBalancer), port ``protocol: TCP``, ``targetPort`` = ``port``, and
``sessionAffinityConfig.clientIP.timeoutSeconds: 10800`` with ``ClientIP`` affinity.

Node annotations that podnet reads the way Calico does on a Kubernetes datastore are validated when
present: ``projectcalico.org/IPv4Address`` (address with prefix, ``10.0.0.1/24``),
``projectcalico.org/ASNumber`` (1-4294967295), ``projectcalico.org/RouteReflectorClusterID``
(dotted IPv4), ``projectcalico.org/IPv4IPIPTunnelAddr`` and ``IPv4VXLANTunnelAddr`` (IPv4 address).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from podnet.model.base import ApiModel
from podnet.model.fields import (
    CIDR,
    MAX_AS_NUMBER,
    IPAddressStr,
    LabelMap,
    PortNumber,
    PortNumberOrName,
    Protocol,
    TrafficPolicy,
    between,
    cidr_problem,
    ip_address_problem,
)
from podnet.model.meta import ObjectMeta
from podnet.model.names import (
    NameRule,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    iana_svc_name_problem,
)
from podnet.model.problems import Problems
from podnet.model.resource import Resource

# --- Namespace -------------------------------------------------------------------------------


class NamespaceSpec(ApiModel):
    finalizers: list[str] | None = None


class NamespaceStatus(ApiModel):
    phase: Literal["Active", "Terminating"] | None = None
    conditions: Any = None


NAME_LABEL = "kubernetes.io/metadata.name"


class Namespace(Resource):
    """A ``v1`` Namespace (cluster-scoped; its name is a DNS-1123 label)."""

    KIND: ClassVar[str] = "Namespace"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = False
    NAME_RULE: ClassVar[NameRule] = "label"

    spec: NamespaceSpec | None = None
    status: NamespaceStatus | None = None

    @model_validator(mode="after")
    def _name_label(self) -> Namespace:
        """Like the API server: every Namespace carries ``kubernetes.io/metadata.name``."""
        if self.metadata.name:
            labels = dict(self.metadata.labels or {})
            labels[NAME_LABEL] = self.metadata.name
            self.metadata.labels = labels
        return self


# --- Pod -------------------------------------------------------------------------------------


class ContainerPort(ApiModel):
    name: str | None = None
    container_port: PortNumber
    protocol: Protocol = "TCP"
    host_port: PortNumber | None = None
    host_ip: IPAddressStr | None = Field(default=None, alias="hostIP")

    @model_validator(mode="after")
    def _check(self) -> ContainerPort:
        if self.name is not None:
            problem = iana_svc_name_problem(self.name)
            if problem:
                problems = Problems()
                problems.add("name", problem)
                problems.raise_if_any()
        return self


class Container(ApiModel):
    """A container: ``name`` and ``ports`` modelled; the other Kubernetes fields accepted as opaque."""

    name: str
    image: str | None = None
    ports: list[ContainerPort] | None = None
    # Opaque: known Kubernetes Container fields podnet does not interpret.
    args: Any = None
    command: Any = None
    env: Any = None
    env_from: Any = None
    image_pull_policy: Any = None
    lifecycle: Any = None
    liveness_probe: Any = None
    readiness_probe: Any = None
    resize_policy: Any = None
    resources: Any = None
    restart_policy: Any = None
    security_context: Any = None
    startup_probe: Any = None
    stdin: Any = None
    stdin_once: Any = None
    termination_message_path: Any = None
    termination_message_policy: Any = None
    tty: Any = None
    volume_devices: Any = None
    volume_mounts: Any = None
    working_dir: Any = None

    @model_validator(mode="after")
    def _check(self) -> Container:
        problems = Problems()
        problem = dns1123_label_problem(self.name)
        if problem:
            problems.add("name", problem)
        seen_names: set[str] = set()
        seen_ports: set[tuple[int, str]] = set()
        for i, port in enumerate(self.ports or []):
            if port.name is not None:
                if port.name in seen_names:
                    problems.add(f"ports[{i}].name", f"duplicate port name {port.name!r}")
                seen_names.add(port.name)
            key = (port.container_port, port.protocol)
            if key in seen_ports:
                problems.add(f"ports[{i}]", f"duplicate port {port.container_port}/{port.protocol}")
            seen_ports.add(key)
        problems.raise_if_any()
        return self


DEFAULT_SERVICE_ACCOUNT = "default"


class PodSpec(ApiModel):
    """Pod spec: node, host networking and containers modelled; the rest accepted as opaque."""

    node_name: str | None = None
    host_network: bool | None = None
    containers: list[Container]
    init_containers: list[Container] | None = None
    # Opaque: known Kubernetes PodSpec fields podnet does not interpret.
    active_deadline_seconds: Any = None
    affinity: Any = None
    automount_service_account_token: Any = None
    dns_config: Any = None
    dns_policy: Any = None
    enable_service_links: Any = None
    ephemeral_containers: Any = None
    host_aliases: Any = None
    host_ipc: Any = Field(default=None, alias="hostIPC")
    host_pid: Any = Field(default=None, alias="hostPID")
    host_users: Any = None
    hostname: Any = None
    image_pull_secrets: Any = None
    node_selector: Any = None
    os: Any = None
    overhead: Any = None
    preemption_policy: Any = None
    priority: Any = None
    priority_class_name: Any = None
    readiness_gates: Any = None
    resource_claims: Any = None
    resources: Any = None
    restart_policy: Any = None
    runtime_class_name: Any = None
    scheduler_name: Any = None
    scheduling_gates: Any = None
    security_context: Any = None
    service_account: str | None = Field(default=None, description="deprecated alias of serviceAccountName")
    service_account_name: str | None = None
    set_hostname_as_fqdn: Any = Field(default=None, alias="setHostnameAsFQDN")
    share_process_namespace: Any = None
    subdomain: Any = None
    termination_grace_period_seconds: Any = None
    tolerations: Any = None
    topology_spread_constraints: Any = None
    volumes: Any = None

    @model_validator(mode="after")
    def _check(self) -> PodSpec:
        problems = Problems()
        if not self.containers:
            problems.add("containers", "must have at least one container")
        for field, value in (
            ("nodeName", self.node_name),
            ("serviceAccountName", self.service_account_name),
            ("serviceAccount", self.service_account),
        ):
            problem = dns1123_subdomain_problem(value) if value else None
            if problem:
                problems.add(field, problem)
        names: set[str] = set()
        for field, containers in (("initContainers", self.init_containers), ("containers", self.containers)):
            for i, container in enumerate(containers or []):
                if container.name in names:
                    problems.add(f"{field}[{i}].name", f"duplicate container name {container.name!r}")
                names.add(container.name)
                if self.host_network:
                    for j, port in enumerate(container.ports or []):
                        if port.host_port is not None and port.host_port != port.container_port:
                            problems.add(
                                f"{field}[{i}].ports[{j}].hostPort",
                                "must equal containerPort when hostNetwork is true",
                            )
        problems.raise_if_any()
        return self

    def effective_service_account(self) -> str:
        """The pod's ServiceAccount: ``serviceAccountName``, else the deprecated ``serviceAccount``,
        else ``default`` (what the API server's ServiceAccount admission fills in)."""
        return self.service_account_name or self.service_account or DEFAULT_SERVICE_ACCOUNT


class PodIP(ApiModel):
    ip: IPAddressStr


class PodStatus(ApiModel):
    """What podnet writes back: phase, addresses, conditions (plus opaque kubelet fields)."""

    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    pod_ip: IPAddressStr | None = Field(default=None, alias="podIP")
    pod_ips: list[PodIP] | None = Field(default=None, alias="podIPs")
    host_ip: IPAddressStr | None = Field(default=None, alias="hostIP")
    host_ips: list[PodIP] | None = Field(default=None, alias="hostIPs")
    conditions: Any = None
    message: str | None = None
    reason: str | None = None
    # Opaque: written by kubelet in real clusters; accepted so `kubectl get -o yaml` output applies.
    container_statuses: Any = None
    ephemeral_container_statuses: Any = None
    init_container_statuses: Any = None
    nominated_node_name: Any = None
    qos_class: Any = None
    resize: Any = None
    resource_claim_statuses: Any = None
    start_time: Any = None

    @model_validator(mode="after")
    def _check(self) -> PodStatus:
        problems = Problems()
        if self.pod_ip and self.pod_ips and self.pod_ips[0].ip != self.pod_ip:
            problems.add("podIPs[0].ip", f"must equal podIP ({self.pod_ip})")
        families = [ipaddress.ip_address(p.ip).version for p in self.pod_ips or []]
        if len(families) != len(set(families)):
            problems.add("podIPs", "may hold at most one address per IP family")
        problems.raise_if_any()
        return self


class Pod(Resource):
    """A ``v1`` Pod (namespaced)."""

    KIND: ClassVar[str] = "Pod"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = True

    spec: PodSpec
    status: PodStatus | None = None


# --- Node ------------------------------------------------------------------------------------


class Taint(ApiModel):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    time_added: str | None = None


class NodeSpec(ApiModel):
    pod_cidr: CIDR | None = Field(default=None, alias="podCIDR")
    pod_cidrs: list[CIDR] | None = Field(default=None, alias="podCIDRs")
    provider_id: str | None = Field(default=None, alias="providerID")
    taints: list[Taint] | None = None
    unschedulable: bool | None = None
    config_source: Any = None
    external_id: Any = Field(default=None, alias="externalID")

    @model_validator(mode="after")
    def _check(self) -> NodeSpec:
        problems = Problems()
        if self.pod_cidr and self.pod_cidrs and self.pod_cidrs[0] != self.pod_cidr:
            problems.add("podCIDRs[0]", f"must equal podCIDR ({self.pod_cidr})")
        families = [ipaddress.ip_network(c, strict=False).version for c in self.pod_cidrs or []]
        if len(families) != len(set(families)):
            problems.add("podCIDRs", "may hold at most one CIDR per IP family")
        problems.raise_if_any()
        return self


class NodeAddress(ApiModel):
    type: Literal["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]
    address: str

    @model_validator(mode="after")
    def _check(self) -> NodeAddress:
        if self.type in ("InternalIP", "ExternalIP"):
            problem = ip_address_problem(self.address)
            if problem:
                problems = Problems()
                problems.add("address", problem)
                problems.raise_if_any()
        return self


class NodeStatus(ApiModel):
    addresses: list[NodeAddress] | None = None
    # Opaque: written by kubelet in real clusters.
    allocatable: Any = None
    capacity: Any = None
    conditions: Any = None
    config: Any = None
    daemon_endpoints: Any = None
    features: Any = None
    images: Any = None
    node_info: Any = None
    phase: Any = None
    runtime_handlers: Any = None
    volumes_attached: Any = None
    volumes_in_use: Any = None


ANNOTATION_IPV4_ADDRESS = "projectcalico.org/IPv4Address"
ANNOTATION_IPV6_ADDRESS = "projectcalico.org/IPv6Address"
ANNOTATION_AS_NUMBER = "projectcalico.org/ASNumber"
ANNOTATION_RR_CLUSTER_ID = "projectcalico.org/RouteReflectorClusterID"
ANNOTATION_IPIP_TUNNEL_ADDR = "projectcalico.org/IPv4IPIPTunnelAddr"
ANNOTATION_VXLAN_TUNNEL_ADDR = "projectcalico.org/IPv4VXLANTunnelAddr"
ANNOTATION_CILIUM_HOST = "network.cilium.io/ipv4-cilium-host"  # the router IP on cilium_host
ANNOTATION_CILIUM_HOST_ALIAS = "io.cilium.network.ipv4-cilium-host"  # the name older Cilium writes


def _node_address_with_prefix_problem(value: str, version: int) -> str | None:
    problem = cidr_problem(value)
    if problem:
        return (
            f"must be an address with prefix length such as {'10.0.0.1/24' if version == 4 else 'fd00::1/64'}"
        )
    if ipaddress.ip_network(value, strict=False).version != version:
        return f"must be an IPv{version} address"
    return None


def _ipv4_problem(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"must be a dotted IPv4 address such as 244.0.0.1 (got {value!r})"
    return None


class Node(Resource):
    """A ``v1`` Node (cluster-scoped)."""

    KIND: ClassVar[str] = "Node"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = False

    spec: NodeSpec | None = None
    status: NodeStatus | None = None

    @classmethod
    def check_kind_metadata(cls, meta: ObjectMeta, problems: Problems) -> None:
        annotations = meta.annotations or {}
        checks = {
            ANNOTATION_IPV4_ADDRESS: lambda v: _node_address_with_prefix_problem(v, 4),
            ANNOTATION_IPV6_ADDRESS: lambda v: _node_address_with_prefix_problem(v, 6),
            ANNOTATION_AS_NUMBER: _as_number_problem,
            ANNOTATION_RR_CLUSTER_ID: _ipv4_problem,
            ANNOTATION_IPIP_TUNNEL_ADDR: _ipv4_problem,
            ANNOTATION_VXLAN_TUNNEL_ADDR: _ipv4_problem,
            ANNOTATION_CILIUM_HOST: _ipv4_problem,
            ANNOTATION_CILIUM_HOST_ALIAS: _ipv4_problem,
        }
        for key, check in checks.items():
            if key in annotations:
                problem = check(annotations[key])
                if problem:
                    problems.add(f"annotations[{key}]", problem)

    def internal_ip(self) -> str | None:
        """The first InternalIP address in status, if any."""
        for address in (self.status.addresses if self.status else None) or []:
            if address.type == "InternalIP":
                return address.address
        return None


def _as_number_problem(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= MAX_AS_NUMBER:
        return f"must be an AS number between 1 and {MAX_AS_NUMBER}"
    return None


# --- Service ---------------------------------------------------------------------------------

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]


class ServicePort(ApiModel):
    name: str | None = None
    protocol: Protocol = "TCP"
    app_protocol: str | None = None
    port: PortNumber
    target_port: PortNumberOrName | None = None
    node_port: PortNumber | None = None

    @model_validator(mode="after")
    def _defaults(self) -> ServicePort:
        if self.name is not None:
            problem = dns1123_label_problem(self.name)
            if problem:
                problems = Problems()
                problems.add("name", problem)
                problems.raise_if_any()
        if self.target_port is None:
            self.target_port = self.port
        return self


class ClientIPConfig(ApiModel):
    timeout_seconds: Annotated[int, AfterValidator(between(1, 86400))] = 10800


class SessionAffinityConfig(ApiModel):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


class ServiceSpec(ApiModel):
    """Service spec: type, selector, cluster IPs, ports, affinity, traffic policies."""

    type: ServiceType = "ClusterIP"
    selector: LabelMap | None = None
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[str] | None = Field(default=None, alias="clusterIPs")
    ports: list[ServicePort] | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    internal_traffic_policy: TrafficPolicy | None = None
    external_traffic_policy: TrafficPolicy | None = None
    external_ips: list[IPAddressStr] | None = Field(default=None, alias="externalIPs")
    external_name: str | None = None
    ip_families: list[Literal["IPv4", "IPv6"]] | None = Field(default=None, alias="ipFamilies")
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = Field(
        default=None, alias="ipFamilyPolicy"
    )
    load_balancer_ip: IPAddressStr | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_source_ranges: list[CIDR] | None = None
    load_balancer_class: str | None = None
    health_check_node_port: PortNumber | None = None
    allocate_load_balancer_node_ports: bool | None = None
    publish_not_ready_addresses: bool | None = None
    traffic_distribution: str | None = None

    def is_headless(self) -> bool:
        return self.cluster_ip == "None"

    @model_validator(mode="after")
    def _check_and_default(self) -> ServiceSpec:
        problems = Problems()
        node_ports = self.type in ("NodePort", "LoadBalancer")
        for field, value in (
            ("clusterIP", self.cluster_ip),
            *((f"clusterIPs[{i}]", ip) for i, ip in enumerate(self.cluster_ips or [])),
        ):
            if value not in (None, "", "None"):
                problem = ip_address_problem(value)
                if problem:
                    problems.add(field, f"{problem}, or None for a headless service")
        if self.cluster_ip is not None and self.cluster_ips and self.cluster_ips[0] != self.cluster_ip:
            problems.add("clusterIPs[0]", f"must equal clusterIP ({self.cluster_ip})")
        if self.type == "ExternalName":
            if not self.external_name:
                problems.add("externalName", "required when type is ExternalName")
            else:
                problem = dns1123_subdomain_problem(self.external_name.rstrip("."))
                if problem:
                    problems.add("externalName", problem)
            if self.cluster_ip not in (None, ""):
                problems.add("clusterIP", "must be empty when type is ExternalName")
        elif not self.ports and not self.is_headless():
            problems.add("ports", "required (at least one port) unless the service is headless")
        if self.is_headless() and self.type != "ClusterIP":
            problems.add("clusterIP", f"may not be None (headless) when type is {self.type}")
        ports = self.ports or []
        names: set[str] = set()
        seen: set[tuple[int, str]] = set()
        for i, port in enumerate(ports):
            if len(ports) > 1 and not port.name:
                problems.add(f"ports[{i}].name", "required when a service has more than one port")
            if port.name:
                if port.name in names:
                    problems.add(f"ports[{i}].name", f"duplicate port name {port.name!r}")
                names.add(port.name)
            if (port.port, port.protocol) in seen:
                problems.add(f"ports[{i}]", f"duplicate port {port.port}/{port.protocol}")
            seen.add((port.port, port.protocol))
            if port.node_port is not None and not node_ports:
                problems.add(f"ports[{i}].nodePort", f"may not be set when type is {self.type}")
        if self.session_affinity_config is not None and self.session_affinity != "ClientIP":
            problems.add("sessionAffinityConfig", "may only be set when sessionAffinity is ClientIP")
        if self.external_traffic_policy is not None and not node_ports:
            problems.add("externalTrafficPolicy", "may only be set when type is NodePort or LoadBalancer")
        if self.health_check_node_port is not None and not (
            self.type == "LoadBalancer" and self.external_traffic_policy == "Local"
        ):
            problems.add(
                "healthCheckNodePort",
                "may only be set when type is LoadBalancer and externalTrafficPolicy is Local",
            )
        if self.load_balancer_source_ranges and self.type != "LoadBalancer":
            problems.add("loadBalancerSourceRanges", "may only be set when type is LoadBalancer")
        if self.ip_families and len(self.ip_families) != len(set(self.ip_families)):
            problems.add("ipFamilies", "must not repeat a family")
        problems.raise_if_any()
        # Kubernetes defaults.
        if self.session_affinity == "ClientIP" and self.session_affinity_config is None:
            self.session_affinity_config = SessionAffinityConfig(client_ip=ClientIPConfig())
        elif self.session_affinity_config is not None and self.session_affinity_config.client_ip is None:
            self.session_affinity_config.client_ip = ClientIPConfig()
        if self.type != "ExternalName" and self.internal_traffic_policy is None:
            self.internal_traffic_policy = "Cluster"
        if node_ports and self.external_traffic_policy is None:
            self.external_traffic_policy = "Cluster"
        return self


class LoadBalancerStatus(ApiModel):
    ingress: Any = None


class ServiceStatus(ApiModel):
    load_balancer: LoadBalancerStatus | None = None
    conditions: Any = None


class Service(Resource):
    """A ``v1`` Service (namespaced; its name is a DNS-1035 label)."""

    KIND: ClassVar[str] = "Service"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = True
    NAME_RULE: ClassVar[NameRule] = "dns1035"

    spec: ServiceSpec
    status: ServiceStatus | None = None


# --- ServiceAccount --------------------------------------------------------------------------


class ServiceAccount(Resource):
    """A ``v1`` ServiceAccount (namespaced). Policy reads its name and labels (Calico's
    ``serviceAccounts`` match); ``secrets``, ``imagePullSecrets`` and
    ``automountServiceAccountToken`` are accepted as given, so real manifests apply."""

    KIND: ClassVar[str] = "ServiceAccount"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("v1",)
    NAMESPACED: ClassVar[bool] = True

    automount_service_account_token: bool | None = None
    image_pull_secrets: Any = None
    secrets: Any = None
