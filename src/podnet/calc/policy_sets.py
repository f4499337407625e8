"""The named sets every compiled policy refers to, built once per compile from the cluster's pods.

A compiled rule never lists addresses itself: it names sets, and the sets hold the members.

- **Address sets** (``pn-<hash>``): CIDRs, a pod being its ``/32`` (``/128``). They come from
  selector peers (the pods a selector stands for), from ``ipBlock``/``nets``/``networks``, and from
  nodes.
- **Port sets** (``pp-<hash>``): ``(address, protocol, port)`` triples. A named port resolves per
  destination pod, so a rule with ``http`` matches each pod on its own number.

A set's name is a short hash of what it means, for example ``{"selector": "app == 'web'",
"namespaces": ["shop"]}``. Identical peers in different policies therefore share one set, and
compiling the same inputs twice gives the same names, so the nftables layer can diff sets by name.
The members are computed once per meaning and compile.

Pods are seen through their labels as each policy language sees them:

- :meth:`SetBuilder.calico_labels` adds the labels Calico gives a workload endpoint:
  ``projectcalico.org/namespace``, ``projectcalico.org/orchestrator: k8s`` and
  ``projectcalico.org/serviceaccount``.
- :meth:`SetBuilder.namespace_labels` adds ``kubernetes.io/metadata.name``, and also
  ``projectcalico.org/name`` for Calico's namespace selectors.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from podnet.calc.memo import GenerationMemo

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
CALICO_NAME_LABEL = "projectcalico.org/name"
CALICO_NAMESPACE_LABEL = "projectcalico.org/namespace"
CALICO_ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
CALICO_SERVICE_ACCOUNT_LABEL = "projectcalico.org/serviceaccount"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortTriple = tuple[str, str, int]  # (address, protocol name as in PortMatch, port)


class PolicyCompileError(Exception):
    """Raised when a policy cannot be compiled. It then fails closed on the endpoints it selects."""


def digest(meaning: Any, prefix: str = "pn-") -> str:
    text = json.dumps(meaning, sort_keys=True, separators=(",", ":"), default=str)
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical_selector(selector: Any) -> Any:
    """A LabelSelector as plain data (the part of a set's meaning it stands for); None stays None."""
    return None if selector is None else selector.model_dump(mode="json", by_alias=True, exclude_none=True)


def host_cidr(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return f"{address}/{address.max_prefixlen}"


def _cidr_minus(question: tuple[str, tuple[str, ...]]) -> frozenset[str]:
    cidr, excepts = question
    network = ipaddress.ip_network(cidr, strict=False)
    remaining: list[Network] = [network]
    for text in excepts:
        excluded = ipaddress.ip_network(text, strict=False)
        if excluded.version != network.version or not excluded.subnet_of(network):  # type: ignore[arg-type]
            raise PolicyCompileError(f"except {text} is not inside cidr {cidr}")
        kept: list[Network] = []
        for net in remaining:
            if excluded.subnet_of(net):  # type: ignore[arg-type]
                if excluded != net:
                    kept.extend(net.address_exclude(excluded))  # type: ignore[arg-type]
            elif not net.subnet_of(excluded):  # type: ignore[arg-type]
                kept.append(net)
        remaining = kept
    return frozenset(str(net) for net in ipaddress.collapse_addresses(remaining))  # type: ignore[arg-type]


#: ``cidr`` minus every ``except``, as disjoint CIDRs (exact, via ``address_exclude``); memoised per
#: generation, since the same blocks are asked again on every sync.
CIDR_MINUS: GenerationMemo[tuple[str, tuple[str, ...]], frozenset[str]] = GenerationMemo(_cidr_minus)


def cidr_minus(cidr: str, excepts: Iterable[str] = ()) -> frozenset[str]:
    return CIDR_MINUS((cidr, tuple(sorted(excepts))))


class SetBuilder:
    """Names and fills the sets of one compile. ``pods`` are :class:`~podnet.calc.policy.PodInfo`."""

    def __init__(
        self,
        pods: Sequence[Any],
        namespaces: Mapping[str, Mapping[str, str]],
        service_accounts: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.pods = sorted(pods, key=lambda p: p.key)
        self.namespaces = namespaces
        self.service_accounts = service_accounts or {}
        self.sets: dict[str, frozenset[str]] = {}
        self.port_sets: dict[str, frozenset[PortTriple]] = {}
        self.by_namespace: dict[str, list[Any]] = {}
        for pod in self.pods:
            self.by_namespace.setdefault(pod.namespace, []).append(pod)
        self._calico: dict[str, dict[str, str]] = {}

    # labels

    def namespace_labels(self, namespace: str, calico: bool = False) -> dict[str, str]:
        labels = dict(self.namespaces.get(namespace, {}))
        labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
        if calico:
            labels[CALICO_NAME_LABEL] = namespace
        return labels

    def calico_labels(self, pod: Any) -> dict[str, str]:
        """The pod's labels as Calico's selectors see its workload endpoint."""
        found = self._calico.get(pod.key)
        if found is None:
            found = dict(pod.labels)
            found[CALICO_NAMESPACE_LABEL] = pod.namespace
            found[CALICO_ORCHESTRATOR_LABEL] = "k8s"
            if pod.service_account:
                found[CALICO_SERVICE_ACCOUNT_LABEL] = pod.service_account
            self._calico[pod.key] = found
        return found

    def service_account_labels(self, namespace: str, name: str) -> dict[str, str]:
        labels = dict(self.service_accounts.get(f"{namespace}/{name}", {}))
        labels[CALICO_NAME_LABEL] = name
        return labels

    # selection

    def namespaces_where(self, predicate: Callable[[str], bool]) -> list[str]:
        """Namespaces that have pods, in name order, for which ``predicate(name)`` holds."""
        return [ns for ns in sorted(self.by_namespace) if predicate(ns)]

    def pods_where(self, namespaces: Iterable[str] | None, predicate: Callable[[Any], bool]) -> list[Any]:
        """Pods of ``namespaces`` (None: every namespace), in key order, for which ``predicate`` holds."""
        if namespaces is None:
            return [pod for pod in self.pods if predicate(pod)]
        chosen = [pod for ns in namespaces for pod in self.by_namespace.get(ns, ()) if predicate(pod)]
        return sorted(chosen, key=lambda p: p.key)

    # sets

    def address_set(self, meaning: Any, members: Callable[[], Iterable[str]]) -> str:
        """The set that ``meaning`` names. Its CIDRs come from ``members()``, which is called only
        the first time this meaning is seen."""
        name = digest(meaning)
        if name not in self.sets:
            self.sets[name] = frozenset(members())
        return name

    def pod_set(self, meaning: Any, pods: Callable[[], Iterable[Any]]) -> str:
        """The set of the addresses of ``pods()``."""
        return self.address_set(meaning, lambda: (host_cidr(ip) for pod in pods() for ip in pod.ips))

    def cidr_set(self, cidrs: Iterable[str], excepts: Iterable[str] = ()) -> str:
        """The set of ``cidrs`` minus ``excepts``. Raises :class:`PolicyCompileError` when an except
        lies outside every cidr of its family."""
        cidrs = sorted(str(ipaddress.ip_network(c, strict=False)) for c in cidrs)
        excepts = sorted(str(ipaddress.ip_network(e, strict=False)) for e in excepts)
        meaning = {"cidrs": cidrs, "except": excepts}

        def members() -> Iterable[str]:
            out: set[str] = set()
            for cidr in cidrs:
                net = ipaddress.ip_network(cidr)
                inside = [
                    e
                    for e in excepts
                    if ipaddress.ip_network(e).version == net.version
                    and ipaddress.ip_network(e).subnet_of(net)  # type: ignore[arg-type]
                ]
                out |= cidr_minus(cidr, inside)
            for text in excepts:
                if not any(
                    ipaddress.ip_network(text).version == ipaddress.ip_network(c).version
                    and ipaddress.ip_network(text).subnet_of(ipaddress.ip_network(c))  # type: ignore[arg-type]
                    for c in cidrs
                ):
                    raise PolicyCompileError(f"except {text} is not inside {', '.join(cidrs)}")
            return out

        return self.address_set(meaning, members)

    def port_set(self, meaning: Any, triples: Callable[[], Iterable[PortTriple]]) -> str:
        name = digest(meaning, "pp-")
        if name not in self.port_sets:
            self.port_sets[name] = frozenset(triples())
        return name

    def named_port_set(
        self, meaning: Any, pods: Callable[[], Iterable[Any]], port_name: str, protocol: str | None
    ) -> str:
        """``(address, protocol, number)`` of every pod in ``pods()`` with a container port called
        ``port_name`` (of ``protocol``; None: of any protocol)."""

        def triples() -> Iterable[PortTriple]:
            for pod in pods():
                for name, number, port_protocol in pod.ports:
                    if name == port_name and protocol in (None, port_protocol):
                        yield from ((ip, port_protocol, number) for ip in pod.ips)

        return self.port_set({"peer": meaning, "portName": port_name, "protocol": protocol}, triples)
