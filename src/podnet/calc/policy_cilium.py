"""Policy the Cilium way (pure): Kubernetes NetworkPolicy compiled into each local endpoint's policy
map (:mod:`podnet.calc.policymap`), by identity.

A policy selects endpoints of its namespace by their pod labels, for the directions of its
effective ``policyTypes``; such an endpoint's direction is *enforced* (no entry: denied). Each rule
allows its peers on its ports, an entry per (peer identity, protocol, port prefix):

- a ``podSelector`` / ``namespaceSelector`` peer: every identity whose labels match — the pod
  selector against the identity's labels (in the policy's namespace unless a namespace selector is
  given), the namespace selector against its ``io.cilium.k8s.namespace.labels.*``; reserved
  identities (host, world, …) are no pods and match neither;
- an ``ipBlock``: every node-local CIDR identity (:func:`podnet.calc.ipcache.cidr_identities`) whose
  prefix lies inside the block and outside its ``except``s, and, for Kubernetes' semantics (an
  ipBlock selects pods and nodes by address, as the Calico profile does; Cilium's does not), every
  pod or node identity all of whose member addresses (:attr:`IdentityUniverse.addresses`: its pods'
  IPs; a node's primary IP) lie inside and outside the ``except``s. An identity whose members
  straddle the block is not allowed (fail closed: one identity, one verdict);
- no ``from``/``to``: any identity (0); no ``ports``: any protocol; a port range: port prefixes;
- a named port: on ingress, the endpoint's own container port of that name; on egress, the ports of
  that name of the pods behind each peer identity (pods of one identity with different numbers for
  one name get every number, as in Cilium); a name found nowhere adds nothing.

Every entry keeps its provenance, ``knp:<ns>/<name>:<direction>:<rule index>`` (the nftables
rules' comment format, which ``podnet monitor`` reads).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from podnet.calc.identity import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX
from podnet.calc.l7_dns import DnsPart
from podnet.calc.l7_http import L7Part
from podnet.calc.memo import ObjectMemo
from podnet.calc.policy import PodInfo
from podnet.calc.policymap import (
    ANY_IDENTITY,
    ANY_PROTOCOL,
    EGRESS,
    INGRESS,
    PolicyEntry,
    PolicyKey,
    PolicyMap,
    add_entry,
    materialize,
    port_prefixes,
)
from podnet.model.identity import RESERVED
from podnet.model.k8s_policy import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True)
class ServiceTarget:
    """What a ``toServices`` rule matches a Service by: its name, namespace and labels, and the pod
    selector its endpoints come from (None: a Service without a selector)."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    selector: Mapping[str, str] | None


@dataclass(frozen=True)
class IdentityUniverse:
    """What peers are resolved against: every known identity's labels (reserved ones included or
    not: they match no selector), the cluster's pods per identity (egress named ports), and the
    node-local CIDR identities of the policies' CIDRs."""

    labels: Mapping[int, Mapping[str, str]]
    pods: Mapping[int, tuple[PodInfo, ...]] = field(default_factory=dict)
    cidrs: Mapping[str, int] = field(default_factory=dict)
    #: identity -> the addresses a NetworkPolicy ipBlock judges it by (pods' IPs; host and
    #: remote-node: the nodes' primary IPs)
    addresses: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    #: the cluster's Services, for ``toServices`` (empty when no policy has such a rule)
    services: tuple[ServiceTarget, ...] = ()
    #: what this node's DNS proxy learnt (normalised name -> addresses), for ``toFQDNs``; each
    #: address has a CIDR identity (a /32 in ``cidrs``)
    fqdns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: what peers resolved to, while this universe lives: (id of the peer or section, direction,
    #: namespace) -> (that object, identities); the object kept so that its id is not reused
    resolved: dict[tuple[int, str, str | None], tuple[object, frozenset[int] | None]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def memo(
        self, part: object, direction: str, namespace: str | None, compute: Callable[[], set[int] | None]
    ) -> set[int] | None:
        """``compute()`` for ``part`` (a policy peer or section), once per universe."""
        key = (id(part), direction, namespace)
        found = self.resolved.get(key)
        if found is not None and found[0] is part:
            return None if found[1] is None else set(found[1])
        value = compute()
        self.resolved[key] = (part, None if value is None else frozenset(value))
        return value


@dataclass(frozen=True)
class EndpointMap:
    """One local endpoint's policy: which directions are enforced, and its map's entries."""

    key: str
    ingress_enforced: bool
    egress_enforced: bool
    entries: PolicyMap
    #: direction -> what enforces it: ``knp:<ns>/<name>``, ``cnp:<ns>/<name>``, ``ccnp:<name>``, or
    #: ``enforcement:always`` (the default deny a drop names)
    enforced_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: the HTTP rules its redirect entries send to the proxy (with the L7 proxy on)
    l7: tuple[L7Part, ...] = ()
    #: the DNS rules its redirect entries send to the DNS proxy (with the L7 proxy on)
    dns: tuple[DnsPart, ...] = ()
    #: the policies whose toFQDNs apply to it (``cnp:<ns>/<name>``, ``ccnp:<name>``)
    fqdn_policies: tuple[str, ...] = ()

    def enforced(self, direction: str) -> bool:
        return self.ingress_enforced if direction == INGRESS else self.egress_enforced


def policy_cidrs(policies: Iterable[NetworkPolicy]) -> list[str]:
    """Every CIDR the policies' ipBlocks name, ``except``s included (each needs an identity)."""
    out: set[str] = set()
    for policy in policies:
        rules = [
            *(r.from_ or [] for r in policy.spec.ingress or []),
            *(r.to or [] for r in policy.spec.egress or []),
        ]
        for peers in rules:
            for peer in peers:
                if peer.ip_block is not None:
                    out.add(str(ipaddress.ip_network(peer.ip_block.cidr, strict=False)))
                    out.update(
                        str(ipaddress.ip_network(e, strict=False)) for e in peer.ip_block.except_ or []
                    )
    return sorted(out)


@lru_cache(maxsize=65536)
def _network(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A parsed prefix (parsed once: every CIDR rule is compared with every CIDR identity)."""
    return ipaddress.ip_network(prefix, strict=False)


def cidr_identities_within(cidr: str, excepts: Iterable[str], universe: IdentityUniverse) -> set[int]:
    """The node-local CIDR identities inside ``cidr`` and outside ``excepts`` (and ``world`` for a
    /0, Cilium's world = 0.0.0.0/0): what an ipBlock or a CNP CIDR rule stands for."""
    block = _network(cidr)
    holes = [_network(e) for e in excepts]
    out = {RESERVED["world"]} if block.prefixlen == 0 else set()
    for prefix, number in universe.cidrs.items():
        net = _network(prefix)
        if net.version != block.version or not net.subnet_of(block):  # type: ignore[arg-type]
            continue
        if any(net.version == h.version and net.subnet_of(h) for h in holes):  # type: ignore[arg-type]
            continue
        out.add(number)
    return out


def members_within(cidr: str, excepts: Iterable[str], universe: IdentityUniverse) -> set[int]:
    """The identities every member address of which is inside ``cidr`` and outside ``excepts``."""
    block = ipaddress.ip_network(cidr, strict=False)
    holes = [ipaddress.ip_network(e, strict=False) for e in excepts]

    def inside(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip in block and not any(ip in h for h in holes)

    return {n for n, members in universe.addresses.items() if members and all(map(inside, members))}


def peer_identities(peer: NetworkPolicyPeer, namespace: str, universe: IdentityUniverse) -> set[int]:
    """The identities a ``from``/``to`` peer of a policy in ``namespace`` stands for."""
    return universe.memo(peer, "", namespace, lambda: _peer_identities(peer, namespace, universe)) or set()


def _peer_identities(peer: NetworkPolicyPeer, namespace: str, universe: IdentityUniverse) -> set[int]:
    if peer.ip_block is not None:
        excepts = peer.ip_block.except_ or ()
        return cidr_identities_within(peer.ip_block.cidr, excepts, universe) | members_within(
            peer.ip_block.cidr, excepts, universe
        )
    out = set()
    for number, labels in universe.labels.items():
        pod_namespace = labels.get(NAMESPACE_LABEL)
        if pod_namespace is None:
            continue  # a reserved identity: no pod
        if peer.namespace_selector is None:
            if pod_namespace != namespace:
                continue
        else:
            namespace_labels = {
                k.removeprefix(NAMESPACE_LABELS_PREFIX): v
                for k, v in labels.items()
                if k.startswith(NAMESPACE_LABELS_PREFIX)
            }
            if not peer.namespace_selector.matches(namespace_labels):
                continue
        if peer.pod_selector is not None and not peer.pod_selector.matches(labels):
            continue
        out.add(number)
    return out


def _port_keys(
    ports: list[NetworkPolicyPort] | None, named: Callable[[str, str], set[int]]
) -> list[tuple[int, int, int]]:
    """(protocol, port, prefix) triples of a rule's ports; ``named(name, protocol)`` resolves a
    name to its numbers."""
    if not ports:
        return [(ANY_PROTOCOL, 0, 0)]
    out: list[tuple[int, int, int]] = []
    for port in ports:
        protocol = PROTOCOL_NUMBERS[port.protocol]
        if port.port is None:
            out.append((protocol, 0, 0))
        elif isinstance(port.port, int):
            out += [
                (protocol, p, prefix) for p, prefix in port_prefixes(port.port, port.end_port or port.port)
            ]
        else:
            out += [(protocol, number, 16) for number in sorted(named(str(port.port), port.protocol))]
    return list(dict.fromkeys(out))


def compile_endpoint_maps(
    local_pods: Iterable[PodInfo],
    policies: Iterable[NetworkPolicy],
    universe: IdentityUniverse,
    enforcement: str = "default",
    cilium_policies: Iterable[Any] = (),
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    memo: ObjectMemo[Any] | None = None,
    selection: ObjectMemo[Any] | None = None,
    l7_proxy: bool = False,
) -> dict[str, EndpointMap]:
    """Each local pod's map under Kubernetes ``policies`` and ``cilium_policies`` (CNP/CCNP,
    :mod:`podnet.calc.policy_cnp`; they select by identity labels, ``pod_labels``: pod key -> the
    labels of its identity). ``enforcement`` is Cilium's policy enforcement mode: ``default``
    enforces a direction once a policy enforces it on the endpoint, ``always`` every direction,
    ``never`` none (and no entries). ``memo`` (kept by the caller between syncs) keeps each pod's
    map while the pod, its labels, the universe and the policies selecting it are the same
    objects; only the policies of the pod's namespace and the clusterwide ones are tried, and
    ``selection`` keeps which of them select each pod while the pod, its labels and the candidates
    are the same. ``l7_proxy``: the node runs the L7 proxy, so ports with HTTP rules become
    redirect entries (:func:`podnet.calc.policy_cnp.add_policy`) and each map lists its L7 parts."""
    from podnet.calc.policy_cnp import _namespace, selects  # CNPs build on this module

    policies = list(policies)
    cilium_policies = list(cilium_policies)
    by_namespace: dict[str | None, list[NetworkPolicy]] = {}
    for policy in policies:
        by_namespace.setdefault(policy.namespace or "default", []).append(policy)
    cilium_by_namespace: dict[str | None, list[Any]] = {}
    for cilium_policy in cilium_policies:
        cilium_by_namespace.setdefault(_namespace(cilium_policy), []).append(cilium_policy)
    out: dict[str, EndpointMap] = {}
    for pod in sorted(local_pods, key=lambda p: p.key):
        labels = dict((pod_labels or {}).get(pod.key, {}))
        # only a policy of the pod's namespace (or a clusterwide one) can select it
        candidates = by_namespace.get(pod.namespace, [])
        cilium_candidates = [*cilium_by_namespace.get(pod.namespace, ()), *cilium_by_namespace.get(None, ())]

        label_items = tuple(sorted(labels.items()))
        # a candidate judged for this pod and these labels last time keeps its verdict (a policy
        # changed: only it is matched again, not every policy of the namespace)
        before = selection.peek(pod.key) if selection is not None else None
        known = before[2][2] if before and before[0] is pod and before[1][0] == label_items else {}

        def select(
            pod=pod, labels=labels, candidates=candidates, cilium_candidates=cilium_candidates, known=known
        ):  # type: ignore[no-untyped-def]
            verdicts: dict[int, tuple[object, bool]] = {}

            def judged(policy: Any, test: Callable[[], bool]) -> bool:
                found = known.get(id(policy))
                verdict = found[1] if found is not None and found[0] is policy else test()
                verdicts[id(policy)] = (policy, verdict)  # the policy kept: its id is the key
                return verdict

            knps = [p for p in candidates if judged(p, lambda p=p: p.spec.pod_selector.matches(pod.labels))]
            cnps = [
                c
                for c in cilium_candidates
                if judged(c, lambda c=c: any(selects(c, rule, labels) for rule in c.rules()))
            ]
            return knps, cnps, verdicts

        if selection is None:
            knps, cnps = select()[:2]
        else:
            context = (label_items, tuple(map(id, candidates)), tuple(map(id, cilium_candidates)))
            knps, cnps = selection.get(pod.key, pod, context, select)[:2]
        if memo is not None:
            context = (
                id(universe),
                enforcement,
                l7_proxy,
                label_items,
                tuple(map(id, knps)),
                tuple(map(id, cnps)),
            )
            found = memo.get(
                pod.key,
                pod,
                context,
                lambda pod=pod, labels=labels, knps=knps, cnps=cnps: (
                    _endpoint_map(pod, knps, cnps, universe, enforcement, labels, l7_proxy),
                    knps,
                    cnps,
                    universe,
                ),
            )
            out[pod.key] = found[0]
            continue
        out[pod.key] = _endpoint_map(pod, knps, cnps, universe, enforcement, labels, l7_proxy)
    if memo is not None:
        memo.retain(set(out))
    if selection is not None:
        selection.retain(set(out))
    return out


def _endpoint_map(
    pod: PodInfo,
    policies: list[NetworkPolicy],
    cilium_policies: list[Any],
    universe: IdentityUniverse,
    enforcement: str,
    labels: dict[str, str],
    l7_proxy: bool = False,
) -> EndpointMap:
    """One pod's map under the policies that select it."""
    from podnet.calc.policy_cnp import add_policy, apply_requires, policy_name, requirements, uses_fqdns

    entries: PolicyMap = {}
    l7: list[L7Part | DnsPart] | None = [] if l7_proxy else None
    fqdn: list[str] = []
    enforced = {INGRESS: enforcement == "always", EGRESS: enforcement == "always"}
    by: dict[str, list[str]] = {
        d: ["enforcement:always"] if enforcement == "always" else [] for d in (INGRESS, EGRESS)
    }
    if enforcement != "never":
        for policy in policies:
            namespace = policy.namespace or "default"
            types = policy.effective_policy_types()
            if "Ingress" in types:
                enforced[INGRESS] = True
                by[INGRESS].append(f"knp:{namespace}/{policy.name}")
                _ingress(policy, namespace, pod, universe, entries)
            if "Egress" in types:
                enforced[EGRESS] = True
                by[EGRESS].append(f"knp:{namespace}/{policy.name}")
                _egress(policy, namespace, universe, entries)
        for cilium_policy in cilium_policies:
            if uses_fqdns(cilium_policy, labels):
                fqdn.append(policy_name(cilium_policy))
            directions = add_policy(cilium_policy, pod, labels, universe, entries, l7)
            for direction in (INGRESS, EGRESS):
                if directions[direction]:
                    enforced[direction] = True
                    by[direction].append(policy_name(cilium_policy))
        entries = apply_requires(entries, requirements(cilium_policies, labels), universe)
    return EndpointMap(
        pod.key,
        enforced[INGRESS],
        enforced[EGRESS],
        materialize(entries),
        {d: tuple(sorted(set(names))) for d, names in by.items() if names},
        tuple(p for p in l7 or () if isinstance(p, L7Part)),
        tuple(p for p in l7 or () if isinstance(p, DnsPart)),
        tuple(sorted(set(fqdn))),
    )


def _provenance(policy: NetworkPolicy, namespace: str, direction: str, index: int) -> str:
    return f"knp:{namespace}/{policy.name}:{direction}:{index}"


def _ingress(
    policy: NetworkPolicy, namespace: str, pod: PodInfo, universe: IdentityUniverse, entries: PolicyMap
) -> None:
    def named(name: str, protocol: str) -> set[int]:
        number = pod.named_port(name, protocol)
        return set() if number is None else {number}

    for index, rule in enumerate(policy.spec.ingress or []):
        entry = PolicyEntry(provenance=(_provenance(policy, namespace, INGRESS, index),))
        peers = (
            set().union(*(peer_identities(p, namespace, universe) for p in rule.from_))
            if rule.from_
            else {ANY_IDENTITY}
        )
        for identity in sorted(peers):
            for protocol, port, prefix in _port_keys(rule.ports, named):
                add_entry(entries, PolicyKey(INGRESS, identity, protocol, port, prefix), entry)


def _egress(policy: NetworkPolicy, namespace: str, universe: IdentityUniverse, entries: PolicyMap) -> None:
    for index, rule in enumerate(policy.spec.egress or []):
        entry = PolicyEntry(provenance=(_provenance(policy, namespace, EGRESS, index),))
        if rule.to:
            peers = set().union(*(peer_identities(p, namespace, universe) for p in rule.to))
        else:
            peers = {ANY_IDENTITY}
        for identity in sorted(peers):
            if identity == ANY_IDENTITY and any(isinstance(p.port, str) for p in rule.ports or []):
                # a named port to any peer: resolved per identity that has pods
                numbered = [p for p in rule.ports or [] if not isinstance(p.port, str)]
                if numbered:
                    for protocol, port, prefix in _port_keys(numbered, lambda _n, _p: set()):
                        add_entry(entries, PolicyKey(EGRESS, identity, protocol, port, prefix), entry)
                named_only = [p for p in rule.ports or [] if isinstance(p.port, str)]
                for other in sorted(universe.pods):
                    _egress_named(other, named_only, universe, entry, entries)
                continue

            def named(name: str, protocol: str, identity: int = identity) -> set[int]:
                return _numbers(universe.pods.get(identity, ()), name, protocol)

            for protocol, port, prefix in _port_keys(rule.ports, named):
                add_entry(entries, PolicyKey(EGRESS, identity, protocol, port, prefix), entry)


def _numbers(pods: Iterable[PodInfo], name: str, protocol: str) -> set[int]:
    return {n for pod in pods if (n := pod.named_port(name, protocol)) is not None}


def _egress_named(
    identity: int,
    ports: list[NetworkPolicyPort],
    universe: IdentityUniverse,
    entry: PolicyEntry,
    entries: PolicyMap,
) -> None:
    pods = universe.pods.get(identity, ())
    for protocol, port, prefix in _port_keys(ports, lambda name, proto: _numbers(pods, name, proto)):
        add_entry(entries, PolicyKey(EGRESS, identity, protocol, port, prefix), entry)


def endpoint_allows(
    maps: Mapping[str, EndpointMap], key: str, direction: str, peer: int, protocol: int, port: int
) -> bool:
    """What the datapath decides for one new connection at endpoint ``key`` (a pod without a map
    is not an endpoint here: allowed)."""
    from podnet.calc.policymap import datapath_verdict

    endpoint = maps.get(key)
    if endpoint is None or not endpoint.enforced(direction):
        return True
    hit = datapath_verdict(endpoint.entries, direction, peer, protocol, port)
    return hit is not None and not hit.deny
