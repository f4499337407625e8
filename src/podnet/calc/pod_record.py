"""What the agent keeps of a Pod: the fields calculation reads, in one small object.

A validated ``Pod`` is a tree of pydantic models with every Kubernetes field it may carry (most
``None``), about 7 KiB per pod in the watch cache (``podnet.bench.scale_memory``: 33.8 MiB of a
traced agent's heap at 5,000 pods); a node's agent holds every pod of the cluster. A
:class:`PodRecord` keeps what its readers use (NetworkPolicy: labels, addresses, named ports,
node, ServiceAccount; services: readiness, ports; the CNI ADD: uid, labels, IPAM annotations)
in one object with ``__slots__``, and shares what pods have in common: label mappings and port
lists equal to another pod's are the same object (:class:`Interner`), node, namespace and
phase strings are interned.

It reads like the Pod it came from for those fields (``record.metadata.labels``,
``record.spec.containers[0].ports[0].container_port``, ``record.status.pod_ip``): ``metadata``,
``spec`` and ``status`` are the record itself. Records are never edited, so shared values must not
be either (the watch cache replaces a record when its Pod changes).
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

from podnet.ipam.pools import IP_ADDRS_ANNOTATION, IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION
from podnet.model import Pod

# The Pod annotations the agent reads (IPAM at CNI ADD); the others stay in the datastore.
KEPT_ANNOTATIONS = (IP_ADDRS_ANNOTATION, IPV4_POOLS_ANNOTATION, IPV6_POOLS_ANNOTATION)
_READY_TRUE = ({"type": "Ready", "status": "True"},)
_READY_FALSE = ({"type": "Ready", "status": "False"},)
_EMPTY: Mapping[str, str] = {}


class PodPort(NamedTuple):
    """A container port: equal to the ``(name, containerPort, protocol)`` tuples PodInfo holds."""

    name: str | None
    container_port: int
    protocol: str


class Interner:
    """Equal values made one object: ``intern(key, value)`` returns the value kept for ``key``
    (``value`` on first use); ``retain_used(values)`` forgets every value not among ``values``."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}

    def intern(self, key: Hashable, value: Any) -> Any:
        return self._values.setdefault(key, value)

    def retain_used(self, values: Iterable[Any]) -> None:
        used = {id(v) for v in values}
        for key in [k for k, v in self._values.items() if id(v) not in used]:
            del self._values[key]

    def __len__(self) -> int:
        return len(self._values)


class _Ports:
    """One container, as the records show their ports (all of the pod's, in container order)."""

    __slots__ = ("ports",)

    def __init__(self, ports: tuple[PodPort, ...]) -> None:
        self.ports = ports


class PodRecord:
    """A Pod as the agent keeps it (see the module docstring); build with :meth:`from_pod`."""

    __slots__ = (
        "annotations",
        "conditions",
        "deletion_timestamp",
        "host_network",
        "ips",
        "labels",
        "name",
        "namespace",
        "node_name",
        "phase",
        "pod_ip",
        "ports",
        "service_account",
        "uid",
    )

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PodRecord is immutable ({name})")

    @classmethod
    def from_pod(cls, pod: Pod, shared: Interner | None = None) -> PodRecord:
        """The record of ``pod``; with ``shared``, labels and ports equal to another pod's are
        that pod's objects."""
        meta, spec, status = pod.metadata, pod.spec, pod.status
        labels = dict(meta.labels or {})
        ports = tuple(
            PodPort(p.name, p.container_port, sys.intern(p.protocol))
            for c in spec.containers
            for p in (c.ports or [])
        )
        if shared is not None:
            labels = shared.intern(("labels", *sorted(labels.items())), labels)
            ports = shared.intern(("ports", *ports), ports)
        annotations = {k: v for k, v in (meta.annotations or {}).items() if k in KEPT_ANNOTATIONS}
        ips = tuple(
            sorted({ip.ip for ip in (status.pod_ips if status else None) or [] if getattr(ip, "ip", None)})
        )
        return cls(
            namespace=sys.intern(meta.namespace or "default"),
            name=meta.name,
            uid=meta.uid,
            labels=labels,
            annotations=annotations or None,
            deletion_timestamp=meta.deletion_timestamp,
            node_name=sys.intern(spec.node_name) if spec.node_name else spec.node_name,
            host_network=bool(spec.host_network),
            ports=ports,
            service_account=sys.intern(spec.effective_service_account()),
            phase=sys.intern(status.phase) if status and status.phase else None,
            pod_ip=status.pod_ip if status else None,
            ips=ips,
            conditions=_conditions(status.conditions if status else None),
        )

    # Read like a Pod: pod.metadata.labels, pod.spec.node_name, pod.status.pod_ip, ...
    @property
    def metadata(self) -> PodRecord:
        return self

    @property
    def spec(self) -> PodRecord:
        return self

    @property
    def status(self) -> PodRecord:
        return self

    @property
    def containers(self) -> tuple[_Ports, ...]:
        return (_Ports(self.ports),) if self.ports else ()

    def effective_service_account(self) -> str:
        return self.service_account  # type: ignore[no-any-return]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PodRecord):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # equal by value, as the Pod it stands for

    def __repr__(self) -> str:
        return f"PodRecord({self.namespace}/{self.name} on {self.node_name!r}, ips={self.ips})"


def _conditions(conditions: Any) -> tuple[dict[str, str], ...] | None:
    """Only the Ready condition is read (services): one shared tuple for each of its values."""
    for condition in conditions or []:
        if not isinstance(condition, Mapping):
            condition = {k: getattr(condition, k, None) for k in ("type", "status")}
        if condition.get("type") == "Ready":
            return _READY_TRUE if condition.get("status") == "True" else _READY_FALSE
    return None
