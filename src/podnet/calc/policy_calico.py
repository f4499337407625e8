"""Calico NetworkPolicy and GlobalNetworkPolicy (``projectcalico.org/v3``) in the ordered form (pure).

**Placement.** A policy sits in ``spec.tier`` at ``spec.order``. An unset order comes last, and
ties go by name.

**What a policy applies to.** Its ``selector`` matches endpoints, with the labels Calico gives them
(:meth:`SetBuilder.calico_labels`):

- a NetworkPolicy selects in its own namespace;
- a GlobalNetworkPolicy selects in the namespaces its ``namespaceSelector`` matches (all without
  one);
- ``serviceAccountSelector`` further requires the pod's ServiceAccount to match.

It applies in the directions of ``types``, which the model defaults as Calico does.

**Rules.** Every field of a rule is ANDed, in Calico's terms:

- ``protocol``/``notProtocol``, ``icmp``/``notICMP`` (type, code) and ``ipVersion``.
- ``nets``: any of them; ``notNets``: none of them.
- ``selector``: the endpoints it matches. Its namespace scope is the rule's ``namespaceSelector``;
  without one, the policy's own namespace in a NetworkPolicy (as soon as ``selector``,
  ``notSelector`` or ``serviceAccounts`` is given), and everything in a GlobalNetworkPolicy.
- ``notSelector``: not an endpoint it matches. Anywhere, so from outside the cluster too.
- ``namespaceSelector``: ``global()`` means the non-namespaced endpoints, i.e. HostEndpoints with
  their ``expectedIPs``.
- ``serviceAccounts``: ``names`` or a ``selector`` on the ServiceAccount's labels plus
  ``projectcalico.org/name``.
- ``ports``/``notPorts``: numbers, ``a:b`` ranges and named ports. A named port resolves on the
  endpoints of that side (or on every pod) with the rule's protocol.
- ``services``: a Service's endpoints, with their target ports as a destination.

**Host endpoints.** A GlobalNetworkPolicy also applies to the host endpoint interfaces whose
HostEndpoint labels its ``selector`` matches (Calico gives host endpoints no automatic labels; a
policy with a ``namespaceSelector`` or ``serviceAccountSelector`` selects no host endpoint, they
have neither). It covers the host's own traffic through the interface; with ``applyOnForward``
also traffic forwarded through it (:mod:`podnet.calc.host_policy`).

**Refused.** A rule with ``http`` needs Calico's application layer policy, which podnet does not
run. A ``preDNAT`` or ``doNotTrack`` policy needs a raw/pre-NAT stage podnet's host table does not
have. Such a policy fails closed (on the host endpoints it selects; those kinds never select pods)
and says why. It is never a silent allow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from podnet.calc.policy import (
    EGRESS,
    INGRESS,
    CompileContext,
    CompiledPolicy,
    HostSelection,
    HostSubject,
    Match,
    OrderedRule,
    PodInfo,
    PortMatch,
    Provenance,
    Selection,
    Side,
    failed,
    policy_key,
    protocol_name,
)
from podnet.calc.policy_sets import PolicyCompileError, SetBuilder, host_cidr
from podnet.model.calico import CalicoNetworkPolicy, EntityRule, GlobalNetworkPolicy, Rule
from podnet.model.calico_selector import Global, Selector, parse_selector

CALICO_KIND = "CalicoNetworkPolicy"
GLOBAL_KIND = "GlobalNetworkPolicy"
DEFAULT_SERVICE_ACCOUNT = "default"
_RANGE = re.compile(r"(\d+):(\d+)")


class _Rules:
    """Turns one policy's rules into ordered rules (``namespace`` None: a GlobalNetworkPolicy)."""

    def __init__(self, builder: SetBuilder, context: CompileContext, namespace: str | None) -> None:
        self.builder = builder
        self.context = context
        self.namespace = namespace

    # endpoint sets

    def _pods(self, namespaces: list[str] | None, selector: Selector, accounts: Any) -> list[PodInfo]:
        builder = self.builder

        def wanted(pod: PodInfo) -> bool:
            if not selector.matches(builder.calico_labels(pod)):
                return False
            return accounts is None or _account_matches(builder, pod, accounts)

        return builder.pods_where(namespaces, wanted)

    def _everyone(self) -> list[PodInfo]:
        return self.builder.pods

    def _namespaces(self, text: str) -> list[str]:
        selector = parse_selector(text)
        return self.builder.namespaces_where(
            lambda ns: selector.matches(self.builder.namespace_labels(ns, calico=True))
        )

    def _global_set(self, selector_text: str | None) -> str:
        selector = parse_selector(selector_text or "all()")
        meaning = {"global": True, "selector": str(selector)}
        members = [
            host_cidr(ip)
            for labels, ips in self.context.host_endpoints
            for ip in ips
            if selector.matches(labels)
        ]
        return self.builder.address_set(meaning, lambda: members)

    def endpoint_scope(self, entity: EntityRule) -> tuple[Any, Callable[[], list[PodInfo]] | None]:
        """(meaning, pods) of the positive endpoint match of a side, the pods asked only when the
        meaning's set is new; (None, None) when the side has none. A ``global()`` namespaceSelector
        is answered by :meth:`_global_set` instead."""
        scoped = bool(entity.selector or entity.not_selector or entity.service_accounts)
        namespaces: list[str] | None = None
        if entity.namespace_selector:
            namespaces = self._namespaces(entity.namespace_selector)
        elif self.namespace is not None and scoped:
            namespaces = [self.namespace]  # a NetworkPolicy's rule: its own namespace
        elif not (entity.selector or entity.service_accounts):
            return None, None  # no positive endpoint match (a notSelector alone matches outside too)
        selector = parse_selector(entity.selector or "all()")
        accounts = entity.service_accounts
        meaning = {
            "namespaces": namespaces,
            "selector": str(selector),
            "serviceAccounts": None
            if accounts is None
            else {"names": sorted(accounts.names or []), "selector": accounts.selector},
        }
        return meaning, lambda: self._pods(namespaces, selector, accounts)

    # one side

    def side(self, entity: EntityRule | None, protocol: str | None, role: str) -> Side:
        if entity is None:
            return Side()
        builder = self.builder
        sets: list[str] = []
        not_sets: list[str] = []
        if entity.nets:
            sets.append(builder.cidr_set(entity.nets))
        if entity.not_nets:
            not_sets.append(builder.cidr_set(entity.not_nets))
        port_scope: tuple[Any, Callable[[], list[PodInfo]] | None] = (None, None)
        if entity.namespace_selector and isinstance(parse_selector(entity.namespace_selector), Global):
            sets.append(self._global_set(entity.selector))
        else:
            meaning, pods = self.endpoint_scope(entity)
            if meaning is not None and pods is not None:
                sets.append(builder.pod_set(meaning, pods))
                port_scope = (meaning, pods)
        if entity.not_selector:
            selector = parse_selector(entity.not_selector)
            not_sets.append(
                builder.pod_set(
                    {"anyNamespace": True, "selector": str(selector)},
                    lambda: builder.pods_where(None, lambda p: selector.matches(builder.calico_labels(p))),
                )
            )
        ports, port_sets = self._ports(entity.ports, protocol, port_scope)
        not_ports, not_port_sets = self._ports(entity.not_ports, protocol, port_scope)
        side = Side(tuple(sets), tuple(not_sets), ports, port_sets, not_ports, not_port_sets)
        if entity.services is not None:
            return self._service_side(entity, side, role)
        return side

    def _ports(
        self,
        values: list[Any] | None,
        protocol: str | None,
        scope: tuple[Any, Callable[[], list[PodInfo]] | None],
    ) -> tuple[tuple[PortMatch, ...], tuple[str, ...]]:
        numeric: list[PortMatch] = []
        named: list[str] = []
        for value in values or []:
            if protocol is None:  # the model refuses ports without TCP/UDP/SCTP
                raise PolicyCompileError("ports need protocol TCP, UDP or SCTP on the rule")
            if isinstance(value, int):
                numeric.append(PortMatch(protocol, value, value))
            elif (found := _RANGE.fullmatch(str(value))) is not None:
                numeric.append(PortMatch(protocol, int(found.group(1)), int(found.group(2))))
            else:
                meaning, pods = scope
                named.append(
                    self.builder.named_port_set(
                        meaning or {"any": True}, pods or self._everyone, str(value), protocol
                    )
                )
        return tuple(dict.fromkeys(numeric)), tuple(dict.fromkeys(named))

    def _service_side(self, entity: EntityRule, side: Side, role: str) -> Side:
        service = entity.services
        assert service is not None
        ref = service_ref(service, self.namespace)
        backends = self.context.service_backends.get(ref)
        if backends is None:
            return Side(never=True)  # no such Service (yet): it stands for no endpoint
        meaning = {"service": ref}
        if role == "destination":
            port_set = self.builder.port_set(meaning, lambda: backends)
            return Side(side.sets, side.not_sets, (), (port_set,), side.not_ports, side.not_port_sets)
        address_set = self.builder.address_set(meaning, lambda: {host_cidr(ip) for ip, _, _ in backends})
        return Side((*side.sets, address_set), side.not_sets, side.ports, side.port_sets)

    # one rule

    def rule(self, rule: Rule, provenance: Provenance) -> OrderedRule:
        if rule.http is not None:
            raise PolicyCompileError(
                f"{provenance.direction}[{provenance.rule}].http needs application layer policy, "
                "which podnet does not run"
            )
        protocol = None if rule.protocol is None else protocol_name(rule.protocol)
        match = Match(
            protocol=protocol,
            not_protocol=None if rule.not_protocol is None else protocol_name(rule.not_protocol),
            icmp=_icmp(rule.icmp),
            not_icmp=_icmp(rule.not_icmp),
            ip_version=rule.ip_version,
            src=self.side(rule.source, protocol, "source"),
            dst=self.side(rule.destination, protocol, "destination"),
        )
        return OrderedRule(rule.action, match, provenance)


def _icmp(value: Any) -> tuple[int, int | None] | None:
    if value is None or value.type is None:
        return None
    return (value.type, value.code)


def _account_matches(builder: SetBuilder, pod: PodInfo, accounts: Any) -> bool:
    name = pod.service_account or DEFAULT_SERVICE_ACCOUNT
    if accounts.names and name not in accounts.names:
        return False
    if accounts.selector:
        labels = builder.service_account_labels(pod.namespace, name)
        return parse_selector(accounts.selector).matches(labels)
    return True


def _selection(
    builder: SetBuilder, namespace: str | None, spec: Any, namespace_selector: str | None
) -> Selection:
    selector = parse_selector(spec.selector or "all()")
    by_namespace = parse_selector(namespace_selector) if namespace_selector else None
    accounts = parse_selector(spec.service_account_selector) if spec.service_account_selector else None

    def selects(pod: PodInfo) -> bool:
        if namespace is not None and pod.namespace != namespace:
            return False
        if by_namespace is not None and not by_namespace.matches(
            builder.namespace_labels(pod.namespace, True)
        ):
            return False
        if not selector.matches(builder.calico_labels(pod)):
            return False
        if accounts is not None:
            labels = builder.service_account_labels(
                pod.namespace, pod.service_account or DEFAULT_SERVICE_ACCOUNT
            )
            return accounts.matches(labels)
        return True

    return selects


def host_only(spec: Any) -> str | None:
    """``preDNAT``/``doNotTrack`` when ``spec`` sets one (Calico applies those to host endpoints only)."""
    if getattr(spec, "pre_dnat", False):
        return "preDNAT"
    if getattr(spec, "do_not_track", False):
        return "doNotTrack"
    return None


def _never(pod: PodInfo) -> bool:
    return False


def calico_host_selection(policy: GlobalNetworkPolicy) -> HostSelection:
    """The host endpoint interfaces ``policy`` applies to: its ``selector`` on the HostEndpoint's
    labels; forwarded traffic only with ``applyOnForward``; never with a namespace or
    ServiceAccount selector (host endpoints have neither)."""
    spec = policy.spec
    selector = parse_selector(spec.selector or "all()")
    scoped = bool(spec.namespace_selector or spec.service_account_selector)

    def selects(subject: HostSubject) -> bool:
        if scoped or (subject.forwarded and not spec.apply_on_forward):
            return False
        return selector.matches(subject.labels)

    return selects


def service_ref(service: Any, namespace: str | None) -> str:
    """``ns/name`` of the Service a rule's ``services`` names, in a policy of ``namespace`` (None:
    a GlobalNetworkPolicy, whose rules must name one); the one place this is resolved."""
    return f"{service.namespace or namespace or 'default'}/{service.name}"


def compile_calico_policy(
    policy: CalicoNetworkPolicy | GlobalNetworkPolicy, builder: SetBuilder, context: CompileContext
) -> tuple[CompiledPolicy, Selection]:
    spec = policy.spec
    is_global = isinstance(policy, GlobalNetworkPolicy)
    kind = GLOBAL_KIND if is_global else CALICO_KIND
    namespace = None if is_global else (policy.namespace or "default")
    selects = _selection(builder, namespace, spec, getattr(spec, "namespace_selector", None))
    types = spec.effective_types()
    order = math.inf if spec.order is None else float(spec.order)
    shell = CompiledPolicy(
        policy_key(kind, namespace or "", policy.name),
        kind,
        namespace or "",
        policy.name,
        spec.tier,
        order,
        () if "Ingress" in types else None,
        () if "Egress" in types else None,
    )
    if (what := host_only(spec)) is not None:
        why = f"podnet does not run {what} host policy yet; it denies what it selects (fails closed)"
        return failed(shell, why), _never
    rules = _Rules(builder, context, namespace)
    compiled: dict[str, tuple[OrderedRule, ...] | None] = {}
    try:
        for direction, kind_type, items in (
            (INGRESS, "Ingress", spec.ingress),
            (EGRESS, "Egress", spec.egress),
        ):
            if kind_type not in types:
                compiled[direction] = None
                continue
            compiled[direction] = tuple(
                rules.rule(rule, Provenance(kind, namespace or "", policy.name, direction, index, spec.tier))
                for index, rule in enumerate(items or [])
            )
    except (PolicyCompileError, ValueError) as exc:
        return failed(shell, str(exc)), selects
    return (
        CompiledPolicy(
            shell.key,
            kind,
            shell.namespace,
            policy.name,
            spec.tier,
            order,
            compiled[INGRESS],
            compiled[EGRESS],
        ),
        selects,
    )
