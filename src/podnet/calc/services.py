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
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.calc.memo import ObjectMemo

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


class ReadyPods:
    """The pods that can be endpoints (Running, Ready, ...), indexed by ``(namespace, label, value)``:
    a selector is matched against the pods carrying its rarest pair, not against every pod (10,000
    Services over 20,000 pods: 20,000 candidates in all instead of 200 million checks).

    Built from a list of pods, or kept up to date pod by pod (:meth:`put`, :meth:`drop`: the
    cluster cache's, so that a sync does not index 20,000 pods again for every Service change)."""

    def __init__(self, pods: Iterable = ()) -> None:  # type: ignore[type-arg]
        self.by_label: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pairs: dict[str, tuple[tuple[str, str, str], ...]] = {}  # pod key -> its index entries
        # each entry's version (from one counter: a removed and re-made entry never repeats one),
        # and what a selector selected at the versions of its pairs' entries
        self._versions: dict[tuple[str, str, str], int] = {}
        self._counter = itertools.count(1)
        self._answers: dict[tuple, tuple[tuple[int | None, ...], tuple]] = {}  # type: ignore[type-arg]
        for pod in pods:
            self.put(f"{pod.metadata.namespace or 'default'}/{pod.metadata.name}", pod)

    def put(self, key: str, pod: Any) -> None:
        """``pod`` (``namespace/name`` ``key``) as it is now: indexed if ready, else dropped. A pod
        already indexed keeps its place in each entry it stays in."""
        if not _ready(pod):
            self.drop(key)
            return
        namespace = pod.metadata.namespace or "default"
        pairs = tuple((namespace, k, v) for k, v in (pod.metadata.labels or {}).items())
        for pair in set(self._pairs.get(key, ())) - set(pairs):
            self._unindex(pair, key)
        for pair in pairs:
            self.by_label.setdefault(pair, {})[key] = pod
            self._versions[pair] = next(self._counter)
        self._pairs[key] = pairs

    def drop(self, key: str) -> None:
        """Pod ``key`` is gone or not ready."""
        for pair in self._pairs.pop(key, ()):
            self._unindex(pair, key)

    def _unindex(self, pair: tuple[str, str, str], key: str) -> None:
        bucket = self.by_label.get(pair)
        if bucket is not None:
            bucket.pop(key, None)
            self._versions[pair] = next(self._counter)
            if not bucket:
                del self.by_label[pair]
                del self._versions[pair]

    def selected(self, namespace: str, selector: Mapping[str, str] | None) -> tuple:  # type: ignore[type-arg]
        """The ready pods of ``namespace`` that ``selector`` matches (none without a selector). The
        same tuple as last time while no entry of the selector's pairs changed (a sync at 10,000
        Services asks each one again)."""
        if not selector:
            return ()
        pairs = tuple((namespace, k, v) for k, v in selector.items())
        versions = tuple(self._versions.get(pair) for pair in pairs)
        found = self._answers.get(pairs)
        if found is not None and found[0] == versions:
            return found[1]
        candidates = min((self.by_label.get(pair, _EMPTY) for pair in pairs), key=len)
        answer = tuple(p for p in candidates.values() if _selects(selector, p.metadata.labels))
        if len(self._answers) > 2 * len(self.by_label) + 1024:
            self._answers.clear()  # selectors of Services long gone: bounded, asked again
        self._answers[pairs] = (versions, answer)
        return answer


_EMPTY: dict[str, Any] = {}


def service_endpoints(service, pods: Iterable | ReadyPods) -> dict[tuple[str, str], list[Backend]]:  # type: ignore[no-untyped-def, type-arg]
    """``{(port name, protocol): [Backend, ...]}`` for every port of ``service`` (EndpointSlice).
    ``pods``: every pod, or a :class:`ReadyPods` of them (built once for many services)."""
    ready = pods if isinstance(pods, ReadyPods) else ReadyPods(pods)
    return selected_endpoints(
        service, ready.selected(service.metadata.namespace or "default", service.spec.selector)
    )


def selected_endpoints(service, chosen: Iterable) -> dict[tuple[str, str], list[Backend]]:  # type: ignore[no-untyped-def, type-arg]
    """:func:`service_endpoints` of pods already selected and ready (``ReadyPods.selected``)."""
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


ServiceFrontends = tuple[tuple[Frontend, ...], str | None]  # a service's frontends, sorted; or why none


def service_plan(
    node: str | None,
    services: Iterable,
    pods: Iterable | ReadyPods,
    node_ips: Iterable[str] = (),
    service_cidr: str = "10.96.0.0/12",
    memo: ObjectMemo[ServiceFrontends] | None = None,
) -> ServicePlan:
    """What ``node`` load-balances (see the module docstring); ``node=None`` ignores traffic policies.

    ``memo`` (kept by the caller between syncs): a service's frontends are computed again only
    when the service object or the pods it selects are not the same objects as last time, so a
    sync at 10,000 services costs a selector lookup per service, not 10,000 recomputations; and an
    unchanged service hands back the very same Frontend objects (the dataplanes memoize on them)."""
    ready = pods if isinstance(pods, ReadyPods) else ReadyPods(pods)
    keyed = sorted((f"{s.metadata.namespace or 'default'}/{s.metadata.name}", s) for s in services)
    frontends: list[Frontend] = []
    errors: dict[str, str] = {}
    for key, service in keyed:
        chosen = ready.selected(service.metadata.namespace or "default", service.spec.selector)

        def compute(key: str = key, service=service, chosen: tuple = chosen) -> ServiceFrontends:  # type: ignore[no-untyped-def, type-arg]
            return _service_frontends(node, key, service, chosen)

        found, error = compute() if memo is None else memo.get(key, service, (node, chosen), compute)
        frontends.extend(found)  # services in key order, each sorted: the plan is sorted
        if error is not None:
            errors[key] = error
    if memo is not None:
        memo.retain({key for key, _ in keyed})
    return ServicePlan(
        node=node,
        frontends=tuple(frontends),
        node_ips=tuple(sorted(node_ips)),
        service_cidr=service_cidr,
        errors=errors,
    )


def _service_frontends(node: str | None, key: str, service, chosen: tuple) -> ServiceFrontends:  # type: ignore[no-untyped-def, type-arg]
    """The frontends of one service for ``node`` (sorted), backed by the ready pods ``chosen``."""
    frontends: list[Frontend] = []
    spec = service.spec
    if spec.type == "ExternalName" or spec.is_headless():
        return (), None  # DNS only: nothing to load-balance
    if not spec.cluster_ip:
        return (), "no clusterIP allocated yet"
    try:
        ipaddress.ip_address(spec.cluster_ip)
    except ValueError:
        return (), f"clusterIP {spec.cluster_ip!r} is not an address"
    affinity = 0
    if spec.session_affinity == "ClientIP":
        config = spec.session_affinity_config.client_ip if spec.session_affinity_config else None
        affinity = config.timeout_seconds if config else 10800
    endpoints = selected_endpoints(service, chosen)
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
            Frontend(kind=CLUSTER_IP, ip=spec.cluster_ip, port=port.port, backends=tuple(internal), **common)
        )
        for external in spec.external_ips or []:
            frontends.append(
                Frontend(kind=EXTERNAL_IP, ip=external, port=port.port, backends=tuple(internal), **common)
            )
        if spec.type in ("NodePort", "LoadBalancer") and port.node_port:
            local_only = spec.external_traffic_policy == "Local"
            picked = local if node is not None and local_only else everyone
            frontends.append(
                Frontend(
                    kind=NODE_PORT,
                    ip=None,
                    port=port.node_port,
                    local_only=local_only,
                    backends=tuple(picked),
                    **common,
                )
            )
    return tuple(sorted(frontends)), None
