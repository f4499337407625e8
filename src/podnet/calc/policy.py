"""Every policy kind compiled to one ordered form per local endpoint, with provenance.

Pure calculation. Input is the watch cache's view: pods, namespace labels, and every policy
object. Output is what one node must enforce for its LOCAL endpoints::

    compile_policies(local_pods, all_pods, namespaces, policies, tiers=..., ...) -> PolicyPlan

**The ordered form** is Calico's model, and every kind maps onto it:

    tier (by order, then name)        kube-admin 1000 │ default 1e6 │ kube-baseline 1e7 │ user tiers
      policy (by order, then name)    AdminNetworkPolicy / ClusterNetworkPolicy(Admin): priority
                                      NetworkPolicy (Kubernetes): order 1000 in tier default
                                      Calico NetworkPolicy / GlobalNetworkPolicy: spec.order
                                      BaselineAdminNetworkPolicy / ClusterNetworkPolicy(Baseline)
        rule (in order)               action Allow | Deny | Pass | Log, a Match, its Provenance

For each direction, a packet of a new connection walks the tiers that have a policy selecting the
endpoint. In each tier it meets the rules of those policies in order:

- **Allow** and **Deny** are final.
- **Log** records the packet and goes on.
- **Pass** skips the rest of the tier.

A packet that reaches the end of a tier gets the tier's ``defaultAction``: Deny (the end-of-tier
deny), or Pass for kube-admin and kube-baseline. Tiers that select nothing for the endpoint are
skipped. After the last tier comes the namespace profile, which allows (Calico's ``kns.<ns>``).
So an endpoint that no policy selects is open. This reproduces Kubernetes NetworkPolicy exactly:
its Allow rules sit in tier ``default``, and any policy selecting a pod isolates it there.

A connection is allowed when the source's egress walk AND the destination's ingress walk allow it.
Replies (conntrack) and node-to-local-pod traffic are the dataplane's concern.

**Sets.** Rules name sets (:mod:`podnet.calc.policy_sets`); they never list addresses themselves.
Rules do not depend on the endpoint they apply to, so a policy compiles once per node, and the
nftables layer makes one chain of it that every selected endpoint jumps to.

**Failing closed.** A policy that cannot be compiled is reported in ``errors`` and still applies to
what it selects:

- a Kubernetes NetworkPolicy allows nothing (it only ever allows);
- any other kind denies everything (its Deny rules must not be lost).

A policy whose tier does not exist is treated the same way.

:func:`podnet.calc.policy_explain.explain` walks a connection through the compiled form.
:func:`control_plane` computes what NO pod may reach whatever a policy says (BGP, the agent's port,
the datastore).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any
from urllib.parse import urlsplit

from podnet.calc.memo import ObjectMemo
from podnet.calc.policy_sets import (
    CIDR_MINUS,
    NAMESPACE_NAME_LABEL,
    PolicyCompileError,
    PortTriple,
    SetBuilder,
    cidr_minus,
)
from podnet.model.tier import TierInfo, tier_table

__all__ = [
    "CIDR_MINUS",
    "NAMESPACE_NAME_LABEL",
    "PolicyCompileError",
    "cidr_minus",
    "compile_policies",
]

KIND = "NetworkPolicy"
BGP_PORT = 179
ETCD_CLIENT_PORT = 2379
INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
ACTIONS = ("Allow", "Deny", "Pass", "Log")
#: IANA numbers of the protocols policies name (Calico's names; ICMPv6 is 58).
PROTOCOL_NUMBERS = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}


def protocol_name(value: int | str) -> str:
    """``6`` / ``"6"`` / ``"TCP"`` → ``"TCP"``; numbers without a name stay digits."""
    if isinstance(value, int) or str(value).isdigit():
        return PROTOCOL_NAMES.get(int(value), str(int(value)))
    return str(value)


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
    service_account: str = ""  # spec.serviceAccountName ("" when unset)

    @cached_property
    def key(self) -> str:
        """``namespace/name`` (made once: every sync reads it for every pod)."""
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
    """Where a compiled rule comes from: ``rule`` is the index in the policy's ingress/egress list,
    -1 for the end-of-tier deny that a policy's selection brings (Kubernetes' "default deny")."""

    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str
    direction: str  # "ingress" | "egress"
    rule: int
    tier: str = "default"

    @property
    def policy(self) -> str:
        """``NetworkPolicy ns/name`` or ``GlobalNetworkPolicy name``."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def __str__(self) -> str:
        what = "default deny" if self.rule < 0 else f"{self.direction} rule {self.rule}"
        return f"{self.policy} {what}"


@dataclass(frozen=True)
class PortMatch:
    """``first``-``last`` (inclusive) of ``protocol`` (a :func:`protocol_name`)."""

    protocol: str
    first: int
    last: int

    def matches(self, port: int | None, protocol: str) -> bool:
        return port is not None and protocol == self.protocol and self.first <= port <= self.last


@dataclass(frozen=True)
class Side:
    """What a rule asks of one end of the packet (source or destination). Every field is ANDed:
    the address is in every set of ``sets`` and in none of ``not_sets``; the port is in ``ports``
    or, with the address and protocol, in one of ``port_sets`` (when either is given), and in none
    of ``not_ports``/``not_port_sets``. ``never``: nothing matches (e.g. a Service that is gone)."""

    sets: tuple[str, ...] = ()
    not_sets: tuple[str, ...] = ()
    ports: tuple[PortMatch, ...] = ()
    port_sets: tuple[str, ...] = ()
    not_ports: tuple[PortMatch, ...] = ()
    not_port_sets: tuple[str, ...] = ()
    never: bool = False

    @property
    def has_ports(self) -> bool:
        return bool(self.ports or self.port_sets)


@dataclass(frozen=True)
class Match:
    """What a rule matches: protocol, ICMP type/code, IP version and both ends."""

    protocol: str | None = None  # a protocol_name
    not_protocol: str | None = None
    icmp: tuple[int, int | None] | None = None  # (type, code | None)
    not_icmp: tuple[int, int | None] | None = None
    ip_version: int | None = None
    src: Side = field(default_factory=Side)
    dst: Side = field(default_factory=Side)


@dataclass(frozen=True)
class OrderedRule:
    action: str  # Allow | Deny | Pass | Log
    match: Match
    provenance: Provenance


@dataclass(frozen=True)
class CompiledPolicy:
    """One policy as the dataplane enforces it. ``ingress``/``egress`` is None when the policy does
    not apply in that direction (its ``types``); ``error`` set: it cannot be compiled and fails
    closed (``fail_closed``: denies everything it selects; otherwise it only has no rules)."""

    key: str
    kind: str
    namespace: str
    name: str
    tier: str
    order: float
    ingress: tuple[OrderedRule, ...] | None
    egress: tuple[OrderedRule, ...] | None
    error: str | None = None
    fail_closed: bool = False

    def rules(self, direction: str) -> tuple[OrderedRule, ...]:
        return (self.ingress if direction == INGRESS else self.egress) or ()

    @property
    def rules_apply(self) -> bool:
        """Whether the policy applies in some direction (an endpoint then meets it)."""
        return self.ingress is not None or self.egress is not None

    def has_pass(self, direction: str) -> bool:
        return self._passes[direction]

    @cached_property
    def _passes(self) -> dict[str, bool]:
        """Per direction: does a rule Pass (asked per endpoint and tier at every render)."""
        return {d: any(rule.action == "Pass" for rule in self.rules(d)) for d in DIRECTIONS}

    def deny_provenance(self, direction: str) -> Provenance:
        return Provenance(self.kind, self.namespace, self.name, direction, -1, self.tier)


@dataclass(frozen=True)
class EndpointTier:
    """One tier as an endpoint meets it: its selecting policies (keys, in order), then
    ``default_action`` (Deny or Pass) for what none of them decided."""

    tier: str
    policies: tuple[str, ...]
    default_action: str


@dataclass(frozen=True)
class EndpointPolicy:
    key: str
    addresses: tuple[str, ...]
    ingress: tuple[EndpointTier, ...] = ()
    egress: tuple[EndpointTier, ...] = ()

    def tiers(self, direction: str) -> tuple[EndpointTier, ...]:
        return self.ingress if direction == INGRESS else self.egress

    @property
    def ingress_isolated(self) -> bool:
        return bool(self.ingress)

    @property
    def egress_isolated(self) -> bool:
        return bool(self.egress)


@dataclass(frozen=True)
class PolicyPlan:
    sets: dict[str, frozenset[str]]  # name -> CIDRs
    endpoints: dict[str, EndpointPolicy]
    errors: dict[str, str]  # policy key -> why it fails closed
    policies: dict[str, CompiledPolicy] = field(default_factory=dict)  # those some local endpoint meets
    port_sets: dict[str, frozenset[tuple[str, str, int]]] = field(default_factory=dict)
    tiers: dict[str, TierInfo] = field(default_factory=dict)

    def endpoint_rules(self, key: str, direction: str) -> tuple[OrderedRule, ...]:
        """Every rule endpoint ``key`` meets in ``direction``, tier by tier, policy by policy."""
        endpoint = self.endpoints.get(key)
        if endpoint is None:
            return ()
        return tuple(
            rule
            for tier in endpoint.tiers(direction)
            for policy in tier.policies
            if policy in self.policies
            for rule in self.policies[policy].rules(direction)
        )

    def deniers(self, endpoint: EndpointPolicy, tier: EndpointTier, direction: str) -> tuple[Provenance, ...]:
        """The end-of-tier deny of ``tier`` for ``endpoint``, as the policies whose selection brings it."""
        return tuple(
            self.policies[key].deny_provenance(direction) for key in tier.policies if key in self.policies
        )


def policy_key(kind: str, namespace: str, name: str) -> str:
    """``ns/name`` for a Kubernetes NetworkPolicy (as status reports name it), else ``Kind:ns/name``
    or ``Kind:name``."""
    if kind == KIND:
        return f"{namespace}/{name}"
    return f"{kind}:{namespace}/{name}" if namespace else f"{kind}:{name}"


# -------------------------------------------------------------------------------------------- compiler

#: Does a compiled policy apply to this pod?
Selection = Callable[[PodInfo], bool]


@dataclass(frozen=True)
class HostSubject:
    """A host endpoint's interface as policies select it (:mod:`podnet.calc.host_policy`): its
    HostEndpoint's labels, and whether the walk is for forwarded traffic (only ``applyOnForward``
    policies) or the host's own."""

    labels: Mapping[str, str]
    forwarded: bool = False


#: Does a compiled policy apply to this host endpoint interface?
HostSelection = Callable[[HostSubject], bool]


@dataclass
class CompileContext:
    """What kind compilers need besides the pods:

    - ``service_backends``: ``ns/name`` -> (address, protocol, target port) of each ready endpoint
      (Calico ``services`` matches);
    - ``nodes``: name -> (labels, addresses) (``nodes`` peers);
    - ``host_endpoints``: (labels, expected IPs) of each HostEndpoint (``namespaceSelector: global()``).
    """

    tiers: dict[str, TierInfo]  # in evaluation order
    service_backends: Mapping[str, tuple[tuple[str, str, int], ...]] = field(default_factory=dict)
    nodes: Mapping[str, tuple[Mapping[str, str], tuple[str, ...]]] = field(default_factory=dict)
    host_endpoints: Sequence[tuple[Mapping[str, str], tuple[str, ...]]] = ()


def failed(compiled: CompiledPolicy, error: str) -> CompiledPolicy:
    """``compiled`` failing closed: no rules; every kind but Kubernetes' denies what it selects."""
    empty: tuple[OrderedRule, ...] = ()
    return CompiledPolicy(
        compiled.key,
        compiled.kind,
        compiled.namespace,
        compiled.name,
        compiled.tier,
        compiled.order,
        None if compiled.ingress is None else empty,
        None if compiled.egress is None else empty,
        error=error,
        fail_closed=compiled.kind != KIND,
    )


def compile_policies(
    local_pods: Iterable[PodInfo],
    all_pods: Iterable[PodInfo],
    namespaces: Mapping[str, Mapping[str, str]],
    policies: Iterable[Any],
    *,
    tiers: Iterable[Any] = (),
    service_accounts: Mapping[str, Mapping[str, str]] | None = None,
    service_backends: Mapping[str, tuple[tuple[str, str, int], ...]] | None = None,
    nodes: Mapping[str, tuple[Mapping[str, str], tuple[str, ...]]] | None = None,
    host_endpoints: Sequence[tuple[Mapping[str, str], tuple[str, ...]]] = (),
    hosts: Mapping[str, HostSubject] | None = None,
    memo: ObjectMemo[Any] | None = None,
) -> PolicyPlan:
    """Compile every policy for ``local_pods`` (see the module docstring). ``policies`` may mix
    every supported kind; ``tiers`` are Calico Tier objects (the built-in tiers need none).
    ``hosts``: endpoint key -> :class:`HostSubject`, host endpoint interfaces of this node that get
    an :class:`EndpointPolicy` too (no addresses; only GlobalNetworkPolicies select them).

    ``memo`` (one per caller, kept across calls): a policy object compiled before under equal
    inputs (:func:`inputs_fingerprint`) is not compiled again; with 5,000 rules a sync after one
    policy changed compiles one policy, not 600."""
    CIDR_MINUS.new_generation()
    all_pods = list(all_pods)
    builder = SetBuilder(all_pods, namespaces, service_accounts)
    table = tier_table(tiers)
    ordered_tiers = {info.name: info for info in sorted(table.values(), key=lambda t: t.sort_key)}
    context = CompileContext(ordered_tiers, service_backends or {}, nodes or {}, host_endpoints)
    local = sorted(local_pods, key=lambda p: p.key)
    compiled: dict[str, CompiledPolicy] = {}
    selections: list[tuple[CompiledPolicy, Compiled, HostSelection]] = []
    errors: dict[str, str] = {}
    sets_of: dict[str, Compiled] = {}
    from podnet.calc.policy_kinds import compile_kind, host_selection  # kinds build on these types

    def compile_one(policy: Any) -> Compiled:
        result, selects = compile_kind(policy, builder, context)
        sets, port_sets = _sets_used((result,))
        return Compiled(
            result,
            frozenset(pod.key for pod in local if selects(pod)),
            {name: builder.sets[name] for name in sets},
            {name: builder.port_sets[name] for name in port_sets},
        )

    fingerprint = ""
    if memo is not None:
        # Hashing every input costs ~5 ms a sync; comparing them with the last sync's (the same
        # PodInfo objects while pods are unchanged: tuple equality checks identity first) does not.
        inputs = (
            tuple(local),
            tuple(all_pods),
            {name: dict(labels) for name, labels in namespaces.items()},
            {name: dict(labels) for name, labels in (service_accounts or {}).items()},
            table,
            context,
        )
        fingerprint = memo.get(("inputs",), None, inputs, lambda: inputs_fingerprint(*inputs))
    names: set[Any] = set()
    for policy in policies:
        if memo is None:
            done = compile_one(policy)
        else:
            name = (type(policy).__name__, policy.metadata.namespace, policy.metadata.name)
            names.add(name)
            done = memo.get(name, policy, fingerprint, partial(compile_one, policy))
        result = done.policy
        if result.tier not in context.tiers and result.error is None:
            result = failed(result, f"tier {result.tier!r} does not exist")
        if result.error is not None:
            errors[result.key] = result.error
        sets_of[result.key] = done
        selections.append((result, done, host_selection(policy)))
    tier_rank = {name: rank for rank, name in enumerate(context.tiers)}
    # Equal orders go by name (Calico's tie-break), whatever the kind; kind and namespace only
    # keep the order total.
    selections.sort(
        key=lambda item: (
            tier_rank.get(item[0].tier, len(tier_rank)),
            item[0].order,
            item[0].name,
            item[0].kind,
            item[0].namespace,
        )
    )
    # each policy's selected local pods, in policy order (not every pod asked of every policy)
    chosen_by_pod: dict[str, list[CompiledPolicy]] = {pod.key: [] for pod in local}
    for policy, done, _ in selections:
        for key in done.local_selected:
            chosen_by_pod[key].append(policy)
    endpoints: dict[str, EndpointPolicy] = {}
    for pod in local:
        chosen = tuple(chosen_by_pod[pod.key])
        if memo is None:
            endpoints[pod.key] = _endpoint_policy(context, pod.key, tuple(pod.ips), chosen)
        else:
            names.add(("endpoint", pod.key))
            endpoints[pod.key] = memo.get(
                ("endpoint", pod.key),
                None,
                (tuple(pod.ips), chosen, context.tiers),
                partial(_endpoint_policy, context, pod.key, tuple(pod.ips), chosen),
            )
        compiled.update((policy.key, policy) for policy in chosen if policy.rules_apply)
    if memo is not None:
        memo.retain(names | {("inputs",)})
    for key, subject in sorted((hosts or {}).items()):
        chosen = [policy for policy, _, selects_host in selections if selects_host(subject)]
        endpoints[key] = _endpoint_policy(context, key, (), tuple(chosen))
        compiled.update((policy.key, policy) for policy in chosen if policy.rules_apply)
    sets: dict[str, frozenset[str]] = {}
    port_sets: dict[str, frozenset[PortTriple]] = {}
    for key in compiled:
        sets.update(sets_of[key].sets)
        port_sets.update(sets_of[key].port_sets)
    return PolicyPlan(
        sets=dict(sorted(sets.items())),
        endpoints=endpoints,
        errors=dict(sorted(errors.items())),
        policies=dict(sorted(compiled.items())),
        port_sets=dict(sorted(port_sets.items())),
        tiers=context.tiers,
    )


@dataclass(frozen=True)
class Compiled:
    """One policy compiled for one node: the ordered form, which local pods it selects, and the
    contents of the sets its rules name."""

    policy: CompiledPolicy
    local_selected: frozenset[str]
    sets: Mapping[str, frozenset[str]]
    port_sets: Mapping[str, frozenset[PortTriple]]


def _sets_used(policies: Iterable[CompiledPolicy]) -> tuple[set[str], set[str]]:
    """The address sets and port sets the rules of ``policies`` name."""
    used: set[str] = set()
    used_ports: set[str] = set()
    for policy in policies:
        for direction in DIRECTIONS:
            for rule in policy.rules(direction):
                for side in (rule.match.src, rule.match.dst):
                    used.update(side.sets, side.not_sets)
                    used_ports.update(side.port_sets, side.not_port_sets)
    return used, used_ports


def inputs_fingerprint(*inputs: Any) -> str:
    """A digest of everything but the policy that a policy's compiled form depends on (pure;
    mappings are sorted, so the order the cache filled them in does not matter)."""

    def canonical(value: Any) -> Any:
        if isinstance(value, Mapping):
            return sorted((repr(k), canonical(v)) for k, v in value.items())
        if isinstance(value, list | tuple):
            return [canonical(v) for v in value]
        return repr(value)

    return hashlib.sha256(repr(canonical(list(inputs))).encode()).hexdigest()


def _endpoint_policy(
    context: CompileContext, key: str, addresses: tuple[str, ...], chosen: tuple[CompiledPolicy, ...]
) -> EndpointPolicy:
    """The tiers endpoint ``key`` meets, per direction, from the policies selecting it (in tier
    order, then policy order)."""
    per_direction: dict[str, list[EndpointTier]] = {INGRESS: [], EGRESS: []}
    for direction in DIRECTIONS:
        current: list[str] = []
        current_tier: str | None = None
        for policy in chosen:
            if (policy.ingress if direction == INGRESS else policy.egress) is None:
                continue
            if policy.tier != current_tier:
                if current_tier is not None:
                    per_direction[direction].append(_endpoint_tier(context, current_tier, current))
                current_tier, current = policy.tier, []
            current.append(policy.key)
        if current_tier is not None:
            per_direction[direction].append(_endpoint_tier(context, current_tier, current))
    return EndpointPolicy(key, addresses, tuple(per_direction[INGRESS]), tuple(per_direction[EGRESS]))


def _endpoint_tier(context: CompileContext, tier: str, policies: list[str]) -> EndpointTier:
    info = context.tiers.get(tier)
    return EndpointTier(tier, tuple(policies), info.default_action if info else "Deny")


# --------------------------------------------------------------------------------------- control plane


@dataclass(frozen=True)
class ControlPlane:
    """Node control-plane services closed to every pod, before (and whatever) any policy says.

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
    proxy_metrics_port: int | None = None,
) -> ControlPlane:
    """The control plane of a cluster whose nodes have ``node_addresses`` (underlay IPs, VTEPs;
    Nones and IPv6 are ignored), whose BIRD listens on ``bgp_port``, whose agents serve metrics
    and health on ``metrics_port`` (the same flag on every node; their L7 proxies' exporter on
    ``proxy_metrics_port``) and whose datastore is at
    ``datastore_endpoints`` (pure)."""
    ports = sorted(
        {("tcp", bgp_port)}
        | ({("tcp", metrics_port)} if metrics_port else set())
        | ({("tcp", proxy_metrics_port)} if proxy_metrics_port else set())
    )
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
