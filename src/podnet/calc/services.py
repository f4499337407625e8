"""Services: from ``v1`` Services and the Pods that back them to what one node must load-balance.

Pure calculation, the agent's (and ``podnet service list``'s) view::

    service_plan(node, services, pods, node_ips, settings) -> ServicePlan

**Endpoints** follow EndpointSlice semantics: the pods of the service's namespace that its
``selector`` matches (a service without a selector has no managed endpoints), that are Running
with an address, are not being deleted, and are Ready when they report readiness. ``targetPort``
by number applies to every pod; by name it is resolved per pod against its containerPorts of the
same protocol (a pod without that name is not a backend of that port). Host-network pods are
backends at their node's address.

**Frontends**, one per address and port a client can use:

- ``ClusterIP``: ``spec.clusterIP`` : ``port``; with ``internalTrafficPolicy: Local`` only the
  backends on this node (none there = no backend; Kubernetes does not fall back).
- ``ExternalIP``: each ``spec.externalIPs`` entry : ``port`` (same backends as ClusterIP).
- ``NodePort``: any local address of this node : ``nodePort`` (``ip`` is None); with
  ``externalTrafficPolicy: Local`` only local backends and the client address is kept (no SNAT).

A frontend with no backend must refuse at once (TCP reset / ICMP port unreachable), never hang.
``affinity_seconds`` > 0 is ``sessionAffinity: ClientIP`` with its timeout. Everything is sorted,
so the same inputs give the same plan (the dataplanes diff plans).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
EXTERNAL_IP = "ExternalIP"


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int
    node: str
    pod: str  # "namespace/name"


@dataclass(frozen=True, order=True)
class Frontend:
    service: str  # "namespace/name"
    port_name: str  # the service port's name ("" when unnamed)
    kind: str  # CLUSTER_IP | EXTERNAL_IP | NODE_PORT
    ip: str | None  # None for NODE_PORT: every local address of the node
    port: int  # the service port, or the nodePort
    protocol: str  # "TCP" | "UDP" | "SCTP"
    backends: tuple[Backend, ...] = ()  # the ones THIS node may use (traffic policies applied)
    affinity_seconds: int = 0  # sessionAffinity ClientIP timeout; 0 = no affinity
    local_only: bool = False  # externalTrafficPolicy Local (NodePort): local backends, no SNAT

    @property
    def id(self) -> str:
        """A short stable name: ``<kind>:<ip or *>:<port>/<proto>`` hashed (nft chain names)."""
        text = f"{self.kind}:{self.ip or '*'}:{self.port}/{self.protocol}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ServicePlan:
    node: str | None  # None: computed for no node in particular (every endpoint, no traffic policy)
    frontends: tuple[Frontend, ...] = ()
    node_ips: tuple[str, ...] = ()  # this node's addresses (NodePort listens on them)
    service_cidr: str = "10.96.0.0/12"
    errors: dict[str, str] = field(default_factory=dict)  # "ns/name" -> why it is not served

    def by_service(self) -> dict[str, list[Frontend]]:
        out: dict[str, list[Frontend]] = {}
        for frontend in self.frontends:
            out.setdefault(frontend.service, []).append(frontend)
        return out


def _ready(pod) -> bool:  # type: ignore[no-untyped-def]
    status = pod.status
    if status is None or status.phase != "Running" or not status.pod_ip:
        return False
    if pod.metadata.deletion_timestamp:
        return False
    for condition in status.conditions or []:
        if not isinstance(condition, Mapping):
            condition = {k: getattr(condition, k, None) for k in ("type", "status")}
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return True


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    if not selector:
        return False  # no selector: endpoints are not managed (none here)
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _target(pod, target: int | str | None, protocol: str, default: int) -> int | None:  # type: ignore[no-untyped-def]
    if target is None:
        return default
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == target and port.protocol == protocol:
                return port.container_port
    return None


def service_endpoints(service, pods: Iterable) -> dict[tuple[str, str], list[Backend]]:  # type: ignore[no-untyped-def]
    """``{(port name, protocol): [Backend, ...]}`` for every port of ``service`` (EndpointSlice)."""
    namespace = service.metadata.namespace or "default"
    chosen = [
        p
        for p in pods
        if (p.metadata.namespace or "default") == namespace
        and _selects(service.spec.selector, p.metadata.labels)
        and _ready(p)
    ]
    out: dict[tuple[str, str], list[Backend]] = {}
    for port in service.spec.ports or []:
        backends = []
        for pod in chosen:
            number = _target(pod, port.target_port, port.protocol, port.port)
            if number is None:
                continue
            key = f"{pod.metadata.namespace or 'default'}/{pod.metadata.name}"
            backends.append(Backend(pod.status.pod_ip, number, pod.spec.node_name or "", key))
        out[(port.name or "", port.protocol)] = sorted(set(backends))
    return out


def service_plan(
    node: str | None,
    services: Iterable,
    pods: Iterable,
    node_ips: Iterable[str] = (),
    service_cidr: str = "10.96.0.0/12",
) -> ServicePlan:
    """What ``node`` load-balances (see the module docstring); ``node=None`` ignores traffic policies."""
    pods = list(pods)
    frontends: list[Frontend] = []
    errors: dict[str, str] = {}
    for service in sorted(services, key=lambda s: (s.metadata.namespace or "default", s.metadata.name)):
        key = f"{service.metadata.namespace or 'default'}/{service.metadata.name}"
        spec = service.spec
        if spec.type == "ExternalName" or spec.is_headless():
            continue  # DNS only: nothing to load-balance
        if not spec.cluster_ip:
            errors[key] = "no clusterIP allocated yet"
            continue
        try:
            ipaddress.ip_address(spec.cluster_ip)
        except ValueError:
            errors[key] = f"clusterIP {spec.cluster_ip!r} is not an address"
            continue
        affinity = 0
        if spec.session_affinity == "ClientIP":
            config = spec.session_affinity_config.client_ip if spec.session_affinity_config else None
            affinity = config.timeout_seconds if config else 10800
        endpoints = service_endpoints(service, pods)
        for port in spec.ports or []:
            everyone = endpoints.get((port.name or "", port.protocol), [])
            local = [b for b in everyone if b.node == node]
            internal = local if node is not None and spec.internal_traffic_policy == "Local" else everyone
            common = {
                "service": key,
                "port_name": port.name or "",
                "protocol": port.protocol,
                "affinity_seconds": affinity,
            }
            frontends.append(
                Frontend(
                    kind=CLUSTER_IP, ip=spec.cluster_ip, port=port.port, backends=tuple(internal), **common
                )
            )
            for external in spec.external_ips or []:
                frontends.append(
                    Frontend(
                        kind=EXTERNAL_IP, ip=external, port=port.port, backends=tuple(internal), **common
                    )
                )
            if spec.type in ("NodePort", "LoadBalancer") and port.node_port:
                local_only = spec.external_traffic_policy == "Local"
                chosen = local if node is not None and local_only else everyone
                frontends.append(
                    Frontend(
                        kind=NODE_PORT,
                        ip=None,
                        port=port.node_port,
                        local_only=local_only,
                        backends=tuple(chosen),
                        **common,
                    )
                )
    return ServicePlan(
        node=node,
        frontends=tuple(sorted(frontends)),
        node_ips=tuple(sorted(node_ips)),
        service_cidr=service_cidr,
        errors=errors,
    )
