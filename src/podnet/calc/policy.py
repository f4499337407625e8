"""Kubernetes NetworkPolicy compiled to a per-endpoint intermediate form, with provenance.

Pure calculation: from the watch cache's view (pods, namespace labels, ``networking.k8s.io/v1``
NetworkPolicy objects) to what one node must enforce for its LOCAL endpoints::

    compile_policies(local_pods, all_pods, namespaces, policies) -> PolicyPlan

The plan holds named address sets (pod ``/32``/``/128`` for selector peers; ``ipBlock`` cidr minus
its excepts as disjoint CIDRs) and, per local endpoint, the ordered-free union of allow rules per
direction, whether the endpoint is isolated in that direction and by which policies (the "default
deny" provenance). Every rule records which rule of which policy produced it.

Semantics are Kubernetes': a policy selects pods of its own namespace with ``podSelector``; it isolates
them in the directions of its effective ``policyTypes``; an isolated endpoint admits a connection when
ANY rule of ANY selecting policy matches. A peer's ``podSelector`` applies in the policy's namespace
unless ``namespaceSelector`` is given (then: in every namespace it matches; both = AND). A missing or
empty ``from``/``to`` means every address; missing or empty ``ports`` means every port and protocol.
Named ports resolve against the destination: for ingress that is the local pod itself; for egress each
destination pod, so an egress named port becomes one rule per distinct resolution, each with its own
set of the destination pods (inside the peer) that carry that port name. A named port resolving nowhere
matches nothing. Replies (conntrack) and node-to-pod traffic are the dataplane's concern.

A set's name is a short hash of what the set means (peer, plus the resolved named port for egress), so
identical peers share one set and recompiling identical inputs gives an identical plan; the nftables
layer can diff sets by name.

:func:`explain` evaluates a connection on the compiled form: egress of the source endpoint (if it is in
the plan) then ingress of the destination, naming the rules that allowed or the policies whose default
deny dropped it. For endpoints that are not local, compile with ``local_pods=all_pods``.

:func:`control_plane` computes what NO pod may reach whatever NetworkPolicy says (the node control
plane: BGP, the agent's metrics/health port, the datastore): ``local`` ports on any address of the
pod's own node, ``remote`` (address, protocol, port) triples on the other nodes and the datastore.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from podnet.calc.memo import GenerationMemo
from podnet.model.k8s_policy import IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort
from podnet.model.selectors import LabelSelector

KIND = "NetworkPolicy"
BGP_PORT = 179
ETCD_CLIENT_PORT = 2379
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
INGRESS = "ingress"
EGRESS = "egress"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# ----------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class PodInfo:
    """A pod as the agent's watch cache knows it."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ips: tuple[str, ...] = ()
    node: str = ""
    ports: tuple[tuple[str | None, int, str], ...] = ()  # (name | None, containerPort, protocol)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        """The containerPort called ``name`` with ``protocol``, or None."""
        for port_name, number, port_protocol in self.ports:
            if port_name == name and port_protocol == protocol:
                return number
        return None


# ---------------------------------------------------------------------------------------------- output


@dataclass(frozen=True)
class Provenance:
    kind: str
    namespace: str
    name: str
    direction: str  # "ingress" | "egress"
    rule: int  # index in spec.ingress / spec.egress; -1 = the policy's default deny

    def __str__(self) -> str:
        what = "default deny" if self.rule < 0 else f"{self.direction} rule {self.rule}"
        return f"{self.kind} {self.namespace}/{self.name} {what}"


@dataclass(frozen=True)
class PortMatch:
    protocol: str
    first: int
    last: int

    def matches(self, port: int, protocol: str) -> bool:
        return protocol == self.protocol and self.first <= port <= self.last


@dataclass(frozen=True)
class CompiledRule:
    direction: str
    peer_set: str | None  # name of a set in PolicyPlan.sets; None = any address
    ports: tuple[PortMatch, ...]  # () = every port and protocol
    provenance: Provenance


@dataclass(frozen=True)
class EndpointPolicy:
    key: str
    addresses: tuple[str, ...]
    ingress_isolated: bool
    egress_isolated: bool
    ingress: tuple[CompiledRule, ...]
    egress: tuple[CompiledRule, ...]
    ingress_deniers: tuple[Provenance, ...]
    egress_deniers: tuple[Provenance, ...]


@dataclass(frozen=True)
class PolicyPlan:
    sets: dict[str, frozenset[str]]
    endpoints: dict[str, EndpointPolicy]
    errors: dict[str, str]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    decided_by: str  # "ingress" | "egress" | "not isolated"
    rules: tuple[Provenance, ...]  # allowed: matching rules (egress then ingress); denied: the deniers


class PolicyCompileError(Exception):
    """A policy that cannot be compiled; it still isolates what it selects but allows nothing."""


# -------------------------------------------------------------------------------------------- compiler


def _canonical_selector(selector: LabelSelector | None) -> Any:
    if selector is None:
        return None
    return selector.model_dump(mode="json", by_alias=True, exclude_none=True)


def _set_name(meaning: Any) -> str:
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True, separators=(",", ":")).encode())
    return "pn-" + digest.hexdigest()[:16]


def _host_cidr(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return f"{address}/{address.max_prefixlen}"


def ipblock_cidrs(block: IPBlock) -> frozenset[str]:
    """``cidr`` minus every ``except``, as disjoint CIDRs (exact, via ``address_exclude``)."""
    return CIDR_MINUS((block.cidr, tuple(block.except_ or ())))


def _cidr_minus(question: tuple[str, tuple[str, ...]]) -> frozenset[str]:
    cidr, excepts = question
    block = IPBlock(cidr=cidr, except_=list(excepts) or None)
    network = ipaddress.ip_network(block.cidr, strict=False)
    remaining: list[Network] = [network]
    for text in block.except_ or []:
        excluded = ipaddress.ip_network(text, strict=False)
        if excluded.version != network.version or not excluded.subnet_of(network):  # type: ignore[arg-type]
            raise PolicyCompileError(f"ipBlock except {text} is not inside cidr {block.cidr}")
        kept: list[Network] = []
        for net in remaining:
            if excluded.subnet_of(net):  # type: ignore[arg-type]
                if excluded != net:
                    kept.extend(net.address_exclude(excluded))  # type: ignore[arg-type]
            elif not net.subnet_of(excluded):  # type: ignore[arg-type]
                kept.append(net)
        remaining = kept
    return frozenset(str(net) for net in ipaddress.collapse_addresses(remaining))  # type: ignore[arg-type]


class _Compiler:
    def __init__(
        self,
        all_pods: Sequence[PodInfo],
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.all_pods = sorted(all_pods, key=lambda p: p.key)
        self.namespaces = namespaces
        self.sets: dict[str, frozenset[str]] = {}
        self.by_namespace: dict[str, list[PodInfo]] = {}
        for pod in self.all_pods:
            self.by_namespace.setdefault(pod.namespace, []).append(pod)
        self._namespace_matches: dict[str, list[str]] = {}  # namespaceSelector (canonical) -> names
        self._named: dict[str, list[tuple[str, int]]] = {}  # named_port_sets results by meaning
        self._peer_sets: dict[tuple[int, str], str] = {}  # (id(peer), namespace) -> set name

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        labels = dict(self.namespaces.get(namespace, {}))
        labels.setdefault(NAMESPACE_NAME_LABEL, namespace)
        return labels

    # A peer's meaning and the pods/CIDRs it stands for.

    def peer_meaning(self, peer: NetworkPolicyPeer, policy_ns: str) -> dict[str, Any]:
        if peer.ip_block is not None:
            return {
                "cidr": str(ipaddress.ip_network(peer.ip_block.cidr, strict=False)),
                "except": sorted(peer.ip_block.except_ or []),
            }
        return {
            "namespace": policy_ns if peer.namespace_selector is None else None,
            "namespaceSelector": _canonical_selector(peer.namespace_selector),
            "podSelector": _canonical_selector(peer.pod_selector),
        }

    def matching_namespaces(self, selector: LabelSelector) -> list[str]:
        """Names of the namespaces (that have pods) whose labels ``selector`` matches, memoised."""
        key = json.dumps(_canonical_selector(selector), sort_keys=True)
        if key not in self._namespace_matches:
            self._namespace_matches[key] = [
                ns for ns in self.by_namespace if selector.matches(self.namespace_labels(ns))
            ]
        return self._namespace_matches[key]

    def peer_pods(self, peer: NetworkPolicyPeer, policy_ns: str) -> list[PodInfo]:
        """Pods a selector peer (not ipBlock) stands for, in ``all_pods`` order."""
        if peer.namespace_selector is None:
            namespaces = [policy_ns]
        else:
            namespaces = self.matching_namespaces(peer.namespace_selector)
        chosen = [
            pod
            for ns in namespaces
            for pod in self.by_namespace.get(ns, ())
            if peer.pod_selector is None or peer.pod_selector.matches(pod.labels)
        ]
        return sorted(chosen, key=lambda p: p.key) if len(namespaces) > 1 else chosen

    def add_set(self, meaning: Any, cidrs: Iterable[str]) -> str:
        name = _set_name(meaning)
        self.sets[name] = frozenset(cidrs)
        return name

    def peer_set(self, peer: NetworkPolicyPeer, policy_ns: str) -> str:
        # The same peer object is asked once per selected pod: remember its answer (the peer
        # objects live as long as the compile does, so their ids are stable keys).
        memo = (id(peer), policy_ns)
        if memo in self._peer_sets:
            return self._peer_sets[memo]
        meaning = self.peer_meaning(peer, policy_ns)
        name = _set_name(meaning)
        if name not in self.sets:  # same meaning, same cluster: same members (computed once)
            if peer.ip_block is not None:
                self.add_set(meaning, ipblock_cidrs(peer.ip_block))
            else:
                pods = self.peer_pods(peer, policy_ns)
                self.add_set(meaning, (_host_cidr(ip) for pod in pods for ip in pod.ips))
        self._peer_sets[memo] = name
        return name

    def named_port_sets(
        self, peer: NetworkPolicyPeer | None, policy_ns: str, name: str, protocol: str
    ) -> list[tuple[str, int]]:
        """Egress named port: per resolved number, a set of the destination pods in ``peer`` with it."""
        memo = json.dumps(
            [None if peer is None else self.peer_meaning(peer, policy_ns), name, protocol], sort_keys=True
        )
        if memo not in self._named:
            self._named[memo] = self._named_port_sets(peer, policy_ns, name, protocol)
        return self._named[memo]

    def _named_port_sets(
        self, peer: NetworkPolicyPeer | None, policy_ns: str, name: str, protocol: str
    ) -> list[tuple[str, int]]:
        if peer is None:
            candidates = self.all_pods
            meaning: Any = {"any": True}
            inside = None
        elif peer.ip_block is not None:
            candidates = self.all_pods
            meaning = self.peer_meaning(peer, policy_ns)
            inside = [ipaddress.ip_network(c) for c in ipblock_cidrs(peer.ip_block)]
        else:
            candidates = self.peer_pods(peer, policy_ns)
            meaning = self.peer_meaning(peer, policy_ns)
            inside = None
        by_number: dict[int, set[str]] = {}
        for pod in candidates:
            number = pod.named_port(name, protocol)
            if number is None:
                continue
            for ip in pod.ips:
                if inside is not None and not any(ipaddress.ip_address(ip) in net for net in inside):
                    continue
                by_number.setdefault(number, set()).add(_host_cidr(ip))
        result = []
        for number in sorted(by_number):
            named_meaning = {"peer": meaning, "portName": name, "protocol": protocol, "port": number}
            result.append((self.add_set(named_meaning, by_number[number]), number))
        return result

    # Rules.

    def ingress_rules(self, policy: NetworkPolicy, pod: PodInfo, ns: str) -> list[CompiledRule]:
        rules: list[CompiledRule] = []
        for index, rule in enumerate(policy.spec.ingress or []):
            provenance = Provenance(KIND, ns, policy.name, INGRESS, index)
            ports: tuple[PortMatch, ...] = ()
            if rule.ports:
                resolved = []
                for port in rule.ports:
                    match = _numeric_port(port)
                    if match is None:  # named: resolved on this (destination) pod
                        number = pod.named_port(str(port.port), port.protocol)
                        if number is not None:
                            match = PortMatch(port.protocol, number, number)
                    if match is not None and match not in resolved:
                        resolved.append(match)
                if not resolved:
                    continue  # every port is a name this pod does not have: matches nothing
                ports = tuple(resolved)
            peer_sets: list[str | None] = (
                [self.peer_set(peer, ns) for peer in rule.from_] if rule.from_ else [None]
            )
            for name in dict.fromkeys(peer_sets):
                rules.append(CompiledRule(INGRESS, name, ports, provenance))
        return rules

    def egress_rules(self, policy: NetworkPolicy, ns: str) -> list[CompiledRule]:
        rules: list[CompiledRule] = []
        for index, rule in enumerate(policy.spec.egress or []):
            provenance = Provenance(KIND, ns, policy.name, EGRESS, index)
            peers: list[NetworkPolicyPeer | None] = list(rule.to) if rule.to else [None]
            numeric: list[PortMatch] = []
            named: list[tuple[str, str]] = []
            for port in rule.ports or []:
                match = _numeric_port(port)
                if match is None:
                    if (str(port.port), port.protocol) not in named:
                        named.append((str(port.port), port.protocol))
                elif match not in numeric:
                    numeric.append(match)
            emitted: list[CompiledRule] = []
            for peer in peers:
                if not rule.ports or numeric:
                    peer_set = None if peer is None else self.peer_set(peer, ns)
                    emitted.append(CompiledRule(EGRESS, peer_set, tuple(numeric), provenance))
                for name, protocol in named:
                    for set_name, number in self.named_port_sets(peer, ns, name, protocol):
                        ports = (PortMatch(protocol, number, number),)
                        emitted.append(CompiledRule(EGRESS, set_name, ports, provenance))
            rules.extend(dict.fromkeys(emitted))
        return rules


def _numeric_port(port: NetworkPolicyPort) -> PortMatch | None:
    """A number, a range or "every port of the protocol"; None for a named port."""
    if port.port is None:
        return PortMatch(port.protocol, 1, 65535)
    if isinstance(port.port, int):
        return PortMatch(port.protocol, port.port, port.end_port or port.port)
    return None


def _policy_key(policy: NetworkPolicy) -> str:
    return f"{policy.namespace or 'default'}/{policy.name}"


# Pure and asked again on every sync for the same blocks: memoised for the syncs that ask.
CIDR_MINUS: GenerationMemo[tuple[str, tuple[str, ...]], frozenset[str]] = GenerationMemo(_cidr_minus)


def compile_policies(
    local_pods: Iterable[PodInfo],
    all_pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    policies: Iterable[NetworkPolicy],
) -> PolicyPlan:
    """Compile Kubernetes NetworkPolicies for ``local_pods`` (see the module docstring)."""
    CIDR_MINUS.new_generation()
    compiler = _Compiler(list(all_pods), namespaces)
    ordered = sorted(policies, key=_policy_key)
    errors: dict[str, str] = {}
    # Egress rules do not depend on the selected pod: compile each policy once.
    egress_by_policy: dict[str, list[CompiledRule]] = {}
    for policy in ordered:
        key = _policy_key(policy)
        if "Egress" in policy.effective_policy_types():
            try:
                egress_by_policy[key] = compiler.egress_rules(policy, key.split("/", 1)[0])
            except (PolicyCompileError, ValueError) as exc:
                errors[key] = str(exc)
                egress_by_policy[key] = []

    # Per namespace, its policies in order, each with its key and directions computed once.
    by_namespace: dict[str, list[tuple[NetworkPolicy, str, list[str]]]] = {}
    for policy in ordered:
        key = _policy_key(policy)
        types = policy.effective_policy_types()
        by_namespace.setdefault(key.split("/", 1)[0], []).append((policy, key, types))
    endpoints: dict[str, EndpointPolicy] = {}
    for pod in sorted(local_pods, key=lambda p: p.key):
        ingress: list[CompiledRule] = []
        egress: list[CompiledRule] = []
        ingress_deniers: list[Provenance] = []
        egress_deniers: list[Provenance] = []
        ns = pod.namespace
        for policy, key, types in by_namespace.get(ns, ()):
            if not policy.spec.pod_selector.matches(pod.labels):
                continue
            if "Ingress" in types:
                ingress_deniers.append(Provenance(KIND, ns, policy.name, INGRESS, -1))
                if key not in errors:
                    try:
                        ingress.extend(compiler.ingress_rules(policy, pod, ns))
                    except (PolicyCompileError, ValueError) as exc:
                        errors[key] = str(exc)  # its rules are dropped below
            if "Egress" in types:
                egress_deniers.append(Provenance(KIND, ns, policy.name, EGRESS, -1))
                if key not in errors:
                    egress.extend(egress_by_policy.get(key, []))
        endpoints[pod.key] = EndpointPolicy(
            key=pod.key,
            addresses=tuple(pod.ips),
            ingress_isolated=bool(ingress_deniers),
            egress_isolated=bool(egress_deniers),
            ingress=tuple(ingress),
            egress=tuple(egress),
            ingress_deniers=tuple(ingress_deniers),
            egress_deniers=tuple(egress_deniers),
        )
    # A policy that failed part-way must allow nothing anywhere (fail closed).
    if errors:
        failed = set(errors)
        for pod_key, endpoint in endpoints.items():
            endpoints[pod_key] = EndpointPolicy(
                key=endpoint.key,
                addresses=endpoint.addresses,
                ingress_isolated=endpoint.ingress_isolated,
                egress_isolated=endpoint.egress_isolated,
                ingress=tuple(r for r in endpoint.ingress if _rule_policy(r) not in failed),
                egress=tuple(r for r in endpoint.egress if _rule_policy(r) not in failed),
                ingress_deniers=endpoint.ingress_deniers,
                egress_deniers=endpoint.egress_deniers,
            )
    used = {
        rule.peer_set
        for endpoint in endpoints.values()
        for rule in endpoint.ingress + endpoint.egress
        if rule.peer_set is not None
    }
    sets = {name: compiler.sets[name] for name in sorted(used)}
    return PolicyPlan(sets=sets, endpoints=endpoints, errors=dict(sorted(errors.items())))


def _rule_policy(rule: CompiledRule) -> str:
    return f"{rule.provenance.namespace}/{rule.provenance.name}"


# --------------------------------------------------------------------------------------------- explain


def _address_of(end: PodInfo | str, version: int | None = None) -> str | None:
    if isinstance(end, str):
        return end
    for ip in end.ips:
        if version is None or ipaddress.ip_address(ip).version == version:
            return ip
    return None


def _addresses(src: PodInfo | str, dst: PodInfo | str) -> tuple[str, str]:
    """The source and destination addresses of a connection (the source's of the same family)."""
    dst_address = _address_of(dst)
    if dst_address is None:
        raise ValueError(f"{getattr(dst, 'key', dst)} has no address")
    version = ipaddress.ip_address(dst_address).version
    src_address = _address_of(src, version)
    if src_address is None:
        raise ValueError(f"{getattr(src, 'key', src)} has no IPv{version} address")
    return src_address, dst_address


def _endpoint_for(plan: PolicyPlan, end: PodInfo | str, address: str | None) -> EndpointPolicy | None:
    if isinstance(end, PodInfo):
        return plan.endpoints.get(end.key)
    for endpoint in plan.endpoints.values():
        if address in endpoint.addresses:
            return endpoint
    return None


def _in_set(plan: PolicyPlan, set_name: str | None, address: str) -> bool:
    if set_name is None:
        return True
    ip = ipaddress.ip_address(address)
    for cidr in plan.sets.get(set_name, frozenset()):
        net = ipaddress.ip_network(cidr)
        if net.version == ip.version and ip in net:
            return True
    return False


def _matching(
    plan: PolicyPlan, rules: Iterable[CompiledRule], peer: str, port: int, protocol: str
) -> tuple[Provenance, ...]:
    found: list[Provenance] = []
    for rule in rules:
        if rule.ports and not any(m.matches(port, protocol) for m in rule.ports):
            continue
        if not _in_set(plan, rule.peer_set, peer):
            continue
        if rule.provenance not in found:
            found.append(rule.provenance)
    return tuple(found)


def explain(
    plan: PolicyPlan, src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str = "TCP"
) -> Verdict:
    """Would ``src`` reach ``dst`` on ``port/protocol``? Evaluated on the compiled plan."""
    src_address, dst_address = _addresses(src, dst)

    allowed_by: list[Provenance] = []
    decided_by = "not isolated"
    source = _endpoint_for(plan, src, src_address)
    if source is not None and source.egress_isolated:
        matched = _matching(plan, source.egress, dst_address, port, protocol)
        if not matched:
            return Verdict(False, "egress", source.egress_deniers)
        allowed_by.extend(matched)
        decided_by = "egress"
    destination = _endpoint_for(plan, dst, dst_address)
    if destination is not None and destination.ingress_isolated:
        matched = _matching(plan, destination.ingress, src_address, port, protocol)
        if not matched:
            return Verdict(False, "ingress", destination.ingress_deniers)
        allowed_by.extend(matched)
        decided_by = "ingress"
    return Verdict(True, decided_by, tuple(allowed_by))


@dataclass(frozen=True)
class SideVerdict:
    """One direction of a connection, on its own (``explain`` stops at the first deny)."""

    direction: str  # "egress" (of the source) | "ingress" (of the destination)
    endpoint: str | None  # the endpoint key on that side, None when it is not a pod of the plan
    isolated: bool
    allowed: bool
    rules: tuple[Provenance, ...]  # allowed: the matching rules; denied: the default denies


def explain_sides(
    plan: PolicyPlan, src: PodInfo | str, dst: PodInfo | str, port: int, protocol: str = "TCP"
) -> tuple[SideVerdict, SideVerdict]:
    """Egress of ``src`` and ingress of ``dst``, each evaluated whatever the other says."""
    src_address, dst_address = _addresses(src, dst)
    sides = []
    ends = ((EGRESS, src, src_address, dst_address), (INGRESS, dst, dst_address, src_address))
    for direction, end, own, peer in ends:
        endpoint = _endpoint_for(plan, end, own)
        isolated = endpoint is not None and (
            endpoint.egress_isolated if direction == EGRESS else endpoint.ingress_isolated
        )
        if endpoint is None or not isolated:
            sides.append(SideVerdict(direction, endpoint.key if endpoint else None, False, True, ()))
            continue
        rules = endpoint.egress if direction == EGRESS else endpoint.ingress
        matched = _matching(plan, rules, peer, port, protocol)
        deniers = endpoint.egress_deniers if direction == EGRESS else endpoint.ingress_deniers
        sides.append(SideVerdict(direction, endpoint.key, True, bool(matched), matched or deniers))
    return sides[0], sides[1]


# --------------------------------------------------------------------------------------- control plane


@dataclass(frozen=True)
class ControlPlane:
    """Node control-plane services closed to every pod, before (and whatever) NetworkPolicy says.

    ``local``: (protocol, port) on ANY address of the pod's own node (its IP, VTEP, router IP, …).
    ``remote``: (IPv4 address, protocol, port) anywhere else: other nodes' addresses, the datastore.
    ``skipped``: datastore endpoints whose host is not an IPv4 literal (names are not resolved here).
    """

    local: tuple[tuple[str, int], ...] = ()
    remote: tuple[tuple[str, str, int], ...] = ()
    skipped: tuple[str, ...] = ()


def datastore_address(endpoint: str) -> tuple[str, int] | None:
    """``http://10.77.0.2:2379`` / ``10.77.0.2:2379`` / ``10.77.0.2`` → (IPv4, port); None when the
    host is not an IPv4 literal."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    try:
        address = ipaddress.ip_address(parts.hostname or "")
        port = parts.port or ETCD_CLIENT_PORT
    except ValueError:
        return None
    return (str(address), port) if address.version == 4 else None


def control_plane(
    node_addresses: Iterable[str | None],
    datastore_endpoints: Iterable[str],
    bgp_port: int = BGP_PORT,
    metrics_port: int | None = None,
) -> ControlPlane:
    """The control plane of a cluster whose nodes have ``node_addresses`` (underlay IPs, VTEPs;
    Nones and IPv6 are ignored), whose BIRD listens on ``bgp_port``, whose agents serve metrics
    and health on ``metrics_port`` (the same flag on every node) and whose datastore is at
    ``datastore_endpoints`` (pure)."""
    ports = sorted({("tcp", bgp_port)} | ({("tcp", metrics_port)} if metrics_port else set()))
    remote: set[tuple[str, str, int]] = set()
    for text in node_addresses:
        if text and ipaddress.ip_address(text).version == 4:
            remote.update((text, protocol, port) for protocol, port in ports)
    skipped = []
    for endpoint in datastore_endpoints:
        found = datastore_address(endpoint)
        if found is None:
            skipped.append(endpoint)
        else:
            remote.add((found[0], "tcp", found[1]))
    order = sorted(remote, key=lambda r: (ipaddress.ip_address(r[0]), r[1], r[2]))
    return ControlPlane(local=tuple(ports), remote=tuple(order), skipped=tuple(skipped))
