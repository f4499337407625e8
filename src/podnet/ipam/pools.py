"""IP pools as IPAM sees them, and which pools a pod may draw from. Pure, no I/O.

``PoolSpec`` is the IPAM-side view of an ``IPPool`` resource (``pool_from_resource`` converts one).
Pool choice follows Calico's ``AutoAssign`` (design/ipam/ipam-core-library.md):

1. the pod's ``cni.projectcalico.org/ipv4pools`` annotation (a JSON list of pool names or CIDRs),
   else the namespace's (:func:`requested_pools`). Requested pools must exist, be enabled and allow
   the use; their ``nodeSelector`` is ignored, as in Calico (an explicit request wins);
2. otherwise every enabled pool with ``assignmentMode: Automatic`` that allows the use, whose
   ``nodeSelector`` matches the node's labels and whose ``namespaceSelector`` (if set, and if the
   namespace's labels are given) matches the namespace (:func:`select_pools`).

Selector expressions are evaluated by the model (:mod:`podnet.model.calico_selector`), imported
lazily so that importing :mod:`podnet.ipam` stays cheap.

Disabled pools are never used for auto-assignment, but addresses already allocated in them stay
valid (nothing here touches allocations).
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podnet.errors import ValidationError
from podnet.ipam.block import IPNetwork

if TYPE_CHECKING:
    from podnet.model.calico import IPPool

IPV4_POOLS_ANNOTATION = "cni.projectcalico.org/ipv4pools"
IPV6_POOLS_ANNOTATION = "cni.projectcalico.org/ipv6pools"
IP_ADDRS_ANNOTATION = "cni.projectcalico.org/ipAddrs"

WORKLOAD = "Workload"
TUNNEL = "Tunnel"
LOAD_BALANCER = "LoadBalancer"
DEFAULT_ALLOWED_USES = (WORKLOAD, TUNNEL)
AUTOMATIC = "Automatic"
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}


@dataclass(frozen=True)
class PoolSpec:
    name: str
    cidr: str
    block_size: int | None = None  # None: 26 for IPv4, 122 for IPv6
    disabled: bool = False
    node_selector: str = "all()"
    allowed_uses: tuple[str, ...] = DEFAULT_ALLOWED_USES
    namespace_selector: str | None = None
    assignment_mode: str = AUTOMATIC

    def __post_init__(self) -> None:
        subject = f"IPPool {self.name}"
        try:
            net = ipaddress.ip_network(self.cidr)
        except ValueError as exc:
            raise ValidationError([("spec.cidr", str(exc))], subject=subject) from exc
        size = self.block_size if self.block_size is not None else DEFAULT_BLOCK_SIZE[net.version]
        low, high = BLOCK_SIZE_RANGE[net.version]
        if not low <= size <= high:
            raise ValidationError(
                [("spec.blockSize", f"must be between {low} and {high} for IPv{net.version}")],
                subject=subject,
            )
        if size < net.prefixlen and not self.disabled:  # the model allows it for disabled pools
            raise ValidationError(
                [("spec.blockSize", f"/{size} blocks do not fit in {net}; the pool must hold one block")],
                subject=subject,
            )
        object.__setattr__(self, "cidr", str(net))
        object.__setattr__(self, "block_size", size)
        object.__setattr__(self, "allowed_uses", tuple(self.allowed_uses))

    @functools.cached_property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network(self.cidr)

    @property
    def size(self) -> int:
        return self.network.num_addresses

    @property
    def block_count(self) -> int:
        assert self.block_size is not None
        bits = self.block_size - self.network.prefixlen
        return 1 << bits if bits >= 0 else 0

    def block_cidr(self, index: int) -> str:
        """The ``index``-th block of the pool, computed without enumerating the others."""
        assert self.block_size is not None
        net = self.network
        step = 1 << (net.max_prefixlen - self.block_size)
        return f"{net.network_address + index * step}/{self.block_size}"

    def contains(self, address: str) -> bool:
        return ipaddress.ip_address(address) in self.network

    def block_for(self, address: str) -> str:
        """The CIDR of the block of this pool that holds ``address``."""
        assert self.block_size is not None
        return str(ipaddress.ip_network(f"{address}/{self.block_size}", strict=False))

    def holds_block(self, cidr: str) -> bool:
        block = cached_network(cidr)
        return block.version == self.network.version and block.subnet_of(self.network)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=4096)
def cached_network(cidr: str) -> IPNetwork:
    return ipaddress.ip_network(cidr)


def pool_for_address(pools: Iterable[PoolSpec], address: str) -> PoolSpec | None:
    for pool in pools:
        if pool.contains(address):
            return pool
    return None


def pool_for_block(pools: Iterable[PoolSpec], cidr: str) -> PoolSpec | None:
    for pool in pools:
        if pool.holds_block(cidr):
            return pool
    return None


@functools.lru_cache(maxsize=256)
def _compiled_selector(text: str) -> Any:
    from podnet.model.calico_selector import parse_selector  # the model owns selector syntax

    return parse_selector(text)


def _matches(pool: PoolSpec, field: str, text: str, labels: Mapping[str, str]) -> bool:
    try:
        selector = _compiled_selector(text)
    except ValueError as exc:  # the model's SelectorSyntaxError
        raise ValidationError([(field, str(exc))], subject=f"IPPool {pool.name}") from exc
    return bool(selector.matches(dict(labels)))


def node_selector_matches(pool: PoolSpec, node_labels: Mapping[str, str]) -> bool:
    return _matches(pool, "spec.nodeSelector", pool.node_selector or "all()", node_labels)


def namespace_selector_matches(pool: PoolSpec, namespace_labels: Mapping[str, str] | None) -> bool:
    if not pool.namespace_selector or namespace_labels is None:
        return True
    return _matches(pool, "spec.namespaceSelector", pool.namespace_selector, namespace_labels)


def _same_pool(pool: PoolSpec, wanted: str) -> bool:
    if pool.name == wanted:
        return True
    try:
        return str(ipaddress.ip_network(wanted)) == pool.cidr
    except ValueError:
        return False


def select_pools(
    pools: Sequence[PoolSpec],
    node_labels: Mapping[str, str],
    requested: Sequence[str] | None = None,
    use: str = WORKLOAD,
    namespace_labels: Mapping[str, str] | None = None,
) -> list[PoolSpec]:
    """The pools a pod on this node may auto-assign from, in order (see the module docstring)."""
    if requested:
        chosen: list[PoolSpec] = []
        for wanted in requested:
            match = next((p for p in pools if _same_pool(p, wanted)), None)
            problem = None
            if match is None:
                problem = f"IP pool {wanted!r} does not exist"
            elif match.disabled:
                problem = f"IP pool {match.name!r} ({match.cidr}) is disabled"
            elif use not in match.allowed_uses:
                allowed = list(match.allowed_uses)
                problem = f"IP pool {match.name!r} does not allow use {use} (allows {allowed})"
            if problem:
                known = ", ".join(f"{p.name} ({p.cidr})" for p in pools) or "none"
                raise ValidationError(
                    [(IPV4_POOLS_ANNOTATION, problem)],
                    hint=f"known pools: {known}",
                    subject="requested IP pools",
                )
            assert match is not None
            if match not in chosen:
                chosen.append(match)
        return chosen
    return [
        p
        for p in pools
        if not p.disabled
        and p.assignment_mode == AUTOMATIC
        and use in p.allowed_uses
        and node_selector_matches(p, node_labels)
        and namespace_selector_matches(p, namespace_labels)
    ]


def _json_list(value: str, where: str, annotation: str) -> list[str]:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise ValidationError(
            [(f'metadata.annotations["{annotation}"]', f"not valid JSON ({exc.args[0]}): {value!r}")],
            hint='write a JSON list, e.g. ["pool-a"] or ["10.1.0.0/16"]',
            subject=where,
        ) from exc
    if not isinstance(doc, list) or not all(isinstance(x, str) and x for x in doc):
        raise ValidationError(
            [(f'metadata.annotations["{annotation}"]', f"must be a JSON list of strings, got {value!r}")],
            subject=where,
        )
    return doc


def requested_pools(
    pod_annotations: Mapping[str, str] | None,
    namespace_annotations: Mapping[str, str] | None,
    annotation: str = IPV4_POOLS_ANNOTATION,
) -> list[str] | None:
    """The pools asked for by the pod's annotation, else by its namespace's; None when neither asks."""
    for where, found in (("pod", pod_annotations), ("namespace", namespace_annotations)):
        value = (found or {}).get(annotation)
        if value is not None and value.strip():
            return _json_list(value, where, annotation) or None
    return None


def requested_addresses(pod_annotations: Mapping[str, str] | None) -> list[str] | None:
    """Specific addresses from ``cni.projectcalico.org/ipAddrs`` (still assigned through IPAM)."""
    value = (pod_annotations or {}).get(IP_ADDRS_ANNOTATION)
    if value is None or not value.strip():
        return None
    out = []
    for item in _json_list(value, "pod", IP_ADDRS_ANNOTATION):
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError as exc:
            raise ValidationError(
                [(f'metadata.annotations["{IP_ADDRS_ANNOTATION}"]', f"{item!r} is not an IP address")],
                subject="pod",
            ) from exc
    return out


def pool_from_resource(ippool: IPPool) -> PoolSpec:
    """The IPAM view of a validated :class:`podnet.model.calico.IPPool` (defaults already filled in)."""
    spec = ippool.spec
    return PoolSpec(
        name=ippool.metadata.name or "",
        cidr=str(ipaddress.ip_network(spec.cidr)),
        block_size=spec.block_size,
        disabled=spec.disabled,
        node_selector=spec.node_selector or "all()",
        allowed_uses=tuple(spec.allowed_uses),
        namespace_selector=spec.namespace_selector,
        assignment_mode=spec.assignment_mode,
    )
