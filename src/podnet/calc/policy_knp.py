"""Kubernetes NetworkPolicy (``networking.k8s.io/v1``) in the ordered form (pure).

A policy is what Calico makes of it: order 1000 in tier ``default``, each rule Allow. Its selection
(``podSelector`` in its own namespace, for the directions of its effective ``policyTypes``) brings
the end-of-tier deny, and any rule of any selecting policy allows: Kubernetes' union.

Each ``from``/``to`` peer of a rule becomes one ordered rule. It carries the rule's index as
provenance, and its Side sets stand for the peer:

- a ``podSelector`` applies in the policy's namespace unless a ``namespaceSelector`` is given
  (both together mean AND);
- an ``ipBlock`` is its ``cidr`` minus its ``except``s.

A missing ``from``/``to`` means any address, and missing ``ports`` means every port. A named port
resolves on the destination pod through a port set of ``(address, protocol, number)``:

- for ingress, over the pods the policy selects;
- for egress, over the pods inside the peer.

A name that resolves nowhere matches nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from podnet.calc.policy import (
    EGRESS,
    INGRESS,
    KIND,
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
from podnet.calc.policy_sets import PolicyCompileError, SetBuilder, canonical_selector
from podnet.model.k8s_policy import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort
from podnet.model.tier import DEFAULT_TIER

ORDER = 1000.0


class _Peers:
    """The sets a policy's peers stand for."""

    def __init__(self, builder: SetBuilder, namespace: str) -> None:
        self.builder = builder
        self.namespace = namespace

    def meaning(self, peer: NetworkPolicyPeer) -> dict[str, Any]:
        if peer.ip_block is not None:
            return {
                "cidr": str(ipaddress.ip_network(peer.ip_block.cidr, strict=False)),
                "except": sorted(peer.ip_block.except_ or []),
            }
        return {
            "namespace": self.namespace if peer.namespace_selector is None else None,
            "namespaceSelector": canonical_selector(peer.namespace_selector),
            "podSelector": canonical_selector(peer.pod_selector),
        }

    def pods(self, peer: NetworkPolicyPeer) -> list[PodInfo]:
        builder = self.builder
        if peer.namespace_selector is None:
            namespaces = [self.namespace]
        else:
            selector = peer.namespace_selector
            namespaces = builder.namespaces_where(lambda ns: selector.matches(builder.namespace_labels(ns)))
        pod_selector = peer.pod_selector
        return builder.pods_where(
            namespaces, lambda p: pod_selector is None or pod_selector.matches(p.labels)
        )

    def address_set(self, peer: NetworkPolicyPeer) -> str:
        if peer.ip_block is not None:
            return self.builder.cidr_set([peer.ip_block.cidr], peer.ip_block.except_ or [])
        return self.builder.pod_set(self.meaning(peer), lambda: self.pods(peer))

    def named_port_set(self, peer: NetworkPolicyPeer | None, name: str, protocol: str) -> str:
        """Pods inside ``peer`` (None: every pod) with a port ``name`` of ``protocol``."""
        builder = self.builder
        if peer is None:
            return builder.named_port_set({"any": True}, lambda: builder.pods, name, protocol)
        if peer.ip_block is not None:
            inside = [ipaddress.ip_network(c) for c in builder.sets[self.address_set(peer)]]

            def within() -> list[PodInfo]:
                return [
                    PodInfo(p.namespace, p.name, p.labels, ips, p.node, p.ports)
                    for p in builder.pods
                    if (
                        ips := tuple(ip for ip in p.ips if any(ipaddress.ip_address(ip) in n for n in inside))
                    )
                ]

            return builder.named_port_set(self.meaning(peer), within, name, protocol)
        return builder.named_port_set(self.meaning(peer), lambda: self.pods(peer), name, protocol)


def _ports(ports: list[NetworkPolicyPort] | None) -> tuple[list[PortMatch], list[tuple[str, str]]]:
    """(numeric matches, named (name, protocol)) of a rule's ports."""
    numeric: list[PortMatch] = []
    named: list[tuple[str, str]] = []
    for port in ports or []:
        if port.port is None:
            match = PortMatch(port.protocol, 1, 65535)
        elif isinstance(port.port, int):
            match = PortMatch(port.protocol, port.port, port.end_port or port.port)
        else:
            if (str(port.port), port.protocol) not in named:
                named.append((str(port.port), port.protocol))
            continue
        if match not in numeric:
            numeric.append(match)
    return numeric, named


def compile_network_policy(
    policy: NetworkPolicy, builder: SetBuilder, context: CompileContext
) -> tuple[CompiledPolicy, Selection]:
    namespace = policy.namespace or "default"
    types = policy.effective_policy_types()
    selector = policy.spec.pod_selector

    def selects(pod: PodInfo) -> bool:
        return pod.namespace == namespace and selector.matches(pod.labels)

    peers = _Peers(builder, namespace)
    shell = CompiledPolicy(
        policy_key(KIND, namespace, policy.name),
        KIND,
        namespace,
        policy.name,
        DEFAULT_TIER,
        ORDER,
        () if "Ingress" in types else None,
        () if "Egress" in types else None,
    )
    try:
        ingress = _ingress(policy, peers, namespace, selects) if "Ingress" in types else None
        egress = _egress(policy, peers, namespace) if "Egress" in types else None
    except (PolicyCompileError, ValueError) as exc:
        return failed(shell, str(exc)), selects
    return CompiledPolicy(
        shell.key, KIND, namespace, policy.name, DEFAULT_TIER, ORDER, ingress, egress
    ), selects


def _ingress(
    policy: NetworkPolicy, peers: _Peers, namespace: str, selects: Selection
) -> tuple[OrderedRule, ...]:
    rules: list[OrderedRule] = []
    meaning = {"namespace": namespace, "podSelector": canonical_selector(policy.spec.pod_selector)}
    for index, rule in enumerate(policy.spec.ingress or []):
        provenance = Provenance(KIND, namespace, policy.name, INGRESS, index, DEFAULT_TIER)
        numeric, named = _ports(rule.ports)
        named_sets = tuple(
            peers.builder.named_port_set(
                meaning, lambda: peers.builder.pods_where([namespace], selects), name, protocol
            )
            for name, protocol in named
        )
        dst = Side(ports=tuple(numeric), port_sets=named_sets)
        sources = [Side(sets=(peers.address_set(peer),)) for peer in rule.from_] if rule.from_ else [Side()]
        for src in dict.fromkeys(sources):
            rules.append(OrderedRule("Allow", Match(src=src, dst=dst), provenance))
    return tuple(rules)


def _egress(policy: NetworkPolicy, peers: _Peers, namespace: str) -> tuple[OrderedRule, ...]:
    rules: list[OrderedRule] = []
    for index, rule in enumerate(policy.spec.egress or []):
        provenance = Provenance(KIND, namespace, policy.name, EGRESS, index, DEFAULT_TIER)
        numeric, named = _ports(rule.ports)
        targets: list[NetworkPolicyPeer | None] = list(rule.to) if rule.to else [None]
        emitted: list[Side] = []
        for peer in targets:
            sets = () if peer is None else (peers.address_set(peer),)
            named_sets = tuple(peers.named_port_set(peer, name, protocol) for name, protocol in named)
            emitted.append(Side(sets=sets, ports=tuple(numeric), port_sets=named_sets))
        for dst in dict.fromkeys(emitted):
            rules.append(OrderedRule("Allow", Match(dst=dst), provenance))
    return tuple(rules)
