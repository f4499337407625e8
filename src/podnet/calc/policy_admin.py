"""AdminNetworkPolicy, BaselineAdminNetworkPolicy and ClusterNetworkPolicy in the ordered form (pure).

These are the cluster administrator's kinds from kubernetes-sigs/network-policy-api. They are placed
in Calico's tiers, as Calico 3.29+ places them:

    AdminNetworkPolicy              tier kube-admin (Pass at its end)      order = priority
    ClusterNetworkPolicy Admin      tier kube-admin                        order = priority
    BaselineAdminNetworkPolicy      tier kube-baseline (Pass at its end)   the singleton "default"
    ClusterNetworkPolicy Baseline   tier kube-baseline                     order = priority

Lower priority applies first, ties go by name. Actions map as follows:

- Allow (ClusterNetworkPolicy: Accept) is final;
- Deny is final, and a denied connection times out (a silent drop, no reset);
- Pass leaves the tier: the namespace's NetworkPolicies decide next, then the baseline.

**Subject and peers.** ``namespaces`` means every pod of the namespaces whose labels match;
``pods`` means the pods whose labels match in the namespaces that match. Egress has two more peers:
``nodes`` stands for the matching nodes' addresses, and ``networks`` for CIDRs. ``domainNames``
would need a DNS proxy, which is the L7 issue's. It can only appear in Allow rules, so such a peer
matches nothing here; that never fails open.

**Ports.** ``portNumber``, ``portRange`` and a named port. A named port resolves on the destination
pod, whatever the port's protocol: for ingress on the subject's pods, for egress on the pods inside
the peer. ClusterNetworkPolicy's ``protocols`` (``tcp``/``udp``/``sctp`` with ``destinationPort``,
or ``destinationNamedPort``) means the same. No ports means every port of every protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from podnet.calc.policy import (
    EGRESS,
    INGRESS,
    CompileContext,
    CompiledPolicy,
    Match,
    OrderedRule,
    PodInfo,
    PortMatch,
    Provenance,
    Selection,
    Side,
    failed,
    policy_key,
)
from podnet.calc.policy_sets import PolicyCompileError, SetBuilder, canonical_selector, host_cidr
from podnet.model.admin_policy import AdminNetworkPolicy, BaselineAdminNetworkPolicy
from podnet.model.cluster_network_policy import ClusterNetworkPolicy
from podnet.model.selectors import LabelSelector
from podnet.model.tier import KUBE_ADMIN_TIER, KUBE_BASELINE_TIER

ANP_KIND = "AdminNetworkPolicy"
BANP_KIND = "BaselineAdminNetworkPolicy"
CNP_KIND = "ClusterNetworkPolicy"
_ACTIONS = {"Allow": "Allow", "Accept": "Allow", "Deny": "Deny", "Pass": "Pass"}


class _Peers:
    """The pods, nodes and networks an admin policy's peers and subject stand for."""

    def __init__(self, builder: SetBuilder, context: CompileContext) -> None:
        self.builder = builder
        self.context = context

    def _namespaces(self, selector: LabelSelector) -> list[str]:
        return self.builder.namespaces_where(lambda ns: selector.matches(self.builder.namespace_labels(ns)))

    def pods(self, peer: Any) -> list[PodInfo]:
        """Pods of a ``namespaces`` or ``pods`` peer (or subject)."""
        if peer.namespaces is not None:
            return self.builder.pods_where(self._namespaces(peer.namespaces), lambda p: True)
        pods = peer.pods
        return self.builder.pods_where(
            self._namespaces(pods.namespace_selector), lambda p: pods.pod_selector.matches(p.labels)
        )

    @staticmethod
    def meaning(peer: Any) -> dict[str, Any]:
        if peer.namespaces is not None:
            return {"adminNamespaces": canonical_selector(peer.namespaces)}
        return {
            "adminPods": {
                "namespaceSelector": canonical_selector(peer.pods.namespace_selector),
                "podSelector": canonical_selector(peer.pods.pod_selector),
            }
        }

    def address_set(self, peer: Any) -> str | None:
        """The set a peer stands for; None: it matches nothing here (``domainNames``)."""
        if getattr(peer, "networks", None) is not None:
            return self.builder.cidr_set(peer.networks)
        if getattr(peer, "nodes", None) is not None:
            selector = peer.nodes
            members = [
                host_cidr(ip)
                for labels, ips in self.context.nodes.values()
                if selector.matches(labels)
                for ip in ips
            ]
            return self.builder.address_set({"adminNodes": canonical_selector(selector)}, lambda: members)
        if getattr(peer, "domain_names", None) is not None:
            return None
        return self.builder.pod_set(self.meaning(peer), lambda: self.pods(peer))

    def named_port_set(self, scope: Any, pods: Callable[[], list[PodInfo]], name: str) -> str:
        return self.builder.named_port_set(scope, pods, name, None)


def _anp_ports(ports: list[Any] | None) -> list[tuple[PortMatch | None, str | None]]:
    """(numeric match, None) or (None, named port) per entry of an ANP/BANP ``ports`` list."""
    out: list[tuple[PortMatch | None, str | None]] = []
    for port in ports or []:
        if port.port_number is not None:
            out.append(
                (PortMatch(port.port_number.protocol, port.port_number.port, port.port_number.port), None)
            )
        elif port.port_range is not None:
            r = port.port_range
            out.append((PortMatch(r.protocol, r.start, r.end), None))
        else:
            out.append((None, port.named_port))
    return out


def _cnp_ports(protocols: list[Any] | None) -> list[tuple[PortMatch | None, str | None]]:
    out: list[tuple[PortMatch | None, str | None]] = []
    for entry in protocols or []:
        protocol, port = entry.protocol_and_port()
        if protocol is None:
            out.append((None, str(port)))
        elif port.number is not None:
            out.append((PortMatch(protocol, port.number, port.number), None))
        else:
            out.append((PortMatch(protocol, port.range.start, port.range.end), None))
    return out


def _rules(
    kind: str,
    name: str,
    tier: str,
    direction: str,
    items: list[Any],
    peers: _Peers,
    subject_pods: Callable[[], list[PodInfo]],
    subject_meaning: Any,
) -> tuple[OrderedRule, ...]:
    rules: list[OrderedRule] = []
    for index, rule in enumerate(items):
        provenance = Provenance(kind, "", name, direction, index, tier)
        action = _ACTIONS[rule.action]
        entries = _cnp_ports(rule.protocols) if kind == CNP_KIND else _anp_ports(rule.ports)
        numeric = tuple(dict.fromkeys(m for m, _ in entries if m is not None))
        named = [n for _, n in entries if n is not None]
        for peer in rule.from_ if direction == INGRESS else rule.to:
            address_set = peers.address_set(peer)
            if address_set is None:
                continue  # domainNames: matches nothing here
            if direction == INGRESS:
                named_sets = tuple(peers.named_port_set(subject_meaning, subject_pods, n) for n in named)
                match = Match(src=Side(sets=(address_set,)), dst=Side(ports=numeric, port_sets=named_sets))
            else:
                outside = (
                    getattr(peer, "networks", None) is not None or getattr(peer, "nodes", None) is not None
                )
                if named and outside:
                    raise PolicyCompileError(f"egress[{index}]: a named port needs a pod peer")
                named_sets = tuple(
                    peers.named_port_set(peers.meaning(peer), lambda p=peer: peers.pods(p), n) for n in named
                )
                match = Match(dst=Side(sets=(address_set,), ports=numeric, port_sets=named_sets))
            rules.append(OrderedRule(action, match, provenance))
    return tuple(dict.fromkeys(rules))


def compile_admin_policy(
    policy: AdminNetworkPolicy | BaselineAdminNetworkPolicy | ClusterNetworkPolicy,
    builder: SetBuilder,
    context: CompileContext,
) -> tuple[CompiledPolicy, Selection]:
    spec = policy.spec
    if isinstance(policy, ClusterNetworkPolicy):
        kind, tier, order = CNP_KIND, spec.calico_tier, float(spec.priority)
    elif isinstance(policy, AdminNetworkPolicy):
        kind, tier, order = ANP_KIND, KUBE_ADMIN_TIER, float(spec.priority)
    else:
        kind, tier, order = BANP_KIND, KUBE_BASELINE_TIER, 0.0
    peers = _Peers(builder, context)
    subject = spec.subject
    subject_meaning = peers.meaning(subject)

    def selects(pod: PodInfo) -> bool:
        if subject.namespaces is not None:
            return subject.namespaces.matches(builder.namespace_labels(pod.namespace))
        return subject.pods.namespace_selector.matches(
            builder.namespace_labels(pod.namespace)
        ) and subject.pods.pod_selector.matches(pod.labels)

    def subject_pods() -> list[PodInfo]:
        return peers.pods(subject)

    shell = CompiledPolicy(
        policy_key(kind, "", policy.name),
        kind,
        "",
        policy.name,
        tier,
        order,
        () if spec.ingress else None,
        () if spec.egress else None,
    )
    try:
        compiled = {
            direction: _rules(kind, policy.name, tier, direction, items, peers, subject_pods, subject_meaning)
            if items
            else None
            for direction, items in ((INGRESS, spec.ingress), (EGRESS, spec.egress))
        }
    except (PolicyCompileError, ValueError) as exc:
        return failed(shell, str(exc)), selects
    return (
        CompiledPolicy(shell.key, kind, "", policy.name, tier, order, compiled[INGRESS], compiled[EGRESS]),
        selects,
    )
