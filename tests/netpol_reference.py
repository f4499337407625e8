"""A reference evaluator of Kubernetes NetworkPolicy semantics, shared by the tests.

It reads the ``networking.k8s.io/v1`` NetworkPolicy model objects directly, following the Kubernetes
API text (NetworkPolicySpec / NetworkPolicyPeer / NetworkPolicyPort docs), and shares nothing with
podnet's compiler (:mod:`podnet.calc.policy`): it has its own label-selector matching, its own
``policyTypes`` defaulting and its own named-port resolution. Pods are given as
:class:`podnet.calc.policy.PodInfo` (a plain data record), namespaces as ``{name: labels}``.

The rules it encodes:

- a pod is isolated for a direction when a policy of its namespace selects it (``podSelector``) and
  has that direction in ``policyTypes`` (unset: ``Ingress``, plus ``Egress`` when there are egress
  rules); an isolated pod admits a connection when ANY rule of ANY such policy matches (union);
- a connection needs the source's egress AND the destination's ingress to admit it;
- a peer: ``ipBlock`` (cidr minus excepts) alone, or ``podSelector`` and/or ``namespaceSelector``
  (both = AND; ``podSelector`` alone = the policy's own namespace; an empty selector = all);
  namespaces carry the ``kubernetes.io/metadata.name`` label; a missing or empty ``from``/``to``
  means every address;
- ports: missing or empty = every port and protocol; ``port`` unset = every port of ``protocol``;
  ``port``..``endPort``; a named port resolves against the DESTINATION pod's containerPorts (name and
  protocol); it matches nothing for a destination that is not a pod;
- traffic from a node to the pods on that node is always allowed (kubelet health probes):
  ``src_node=`` names the node a non-pod source address belongs to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from podnet.calc.policy import PodInfo
from podnet.model.k8s_policy import NetworkPolicy

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (``matchLabels`` AND every ``matchExpressions`` entry); ``{}`` matches all."""
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.match_expressions or []:
        present = expr.key in labels
        value = labels.get(expr.key)
        values = set(expr.values or [])
        ok = {
            "In": present and value in values,
            "NotIn": not present or value not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[expr.operator]
        if not ok:
            return False
    return True


def policy_types(policy: NetworkPolicy) -> list[str]:
    if policy.spec.policy_types:
        return list(policy.spec.policy_types)
    return ["Ingress", "Egress"] if policy.spec.egress else ["Ingress"]


def _ns_labels(namespaces: Mapping[str, Mapping[str, str]], name: str) -> dict[str, str]:
    return {**namespaces.get(name, {}), NAMESPACE_NAME_LABEL: name}


def _pod_at(pods: Sequence[PodInfo], address: str) -> PodInfo | None:
    return next((p for p in pods if address in p.ips), None)


def _peer_matches(peer: Any, policy_ns: str, address: str, pods, namespaces) -> bool:  # type: ignore[no-untyped-def]
    if peer.ip_block is not None:
        ip = ipaddress.ip_address(address)
        if ip not in ipaddress.ip_network(peer.ip_block.cidr, strict=False):
            return False
        return not any(ip in ipaddress.ip_network(e, strict=False) for e in peer.ip_block.except_ or [])
    pod = _pod_at(pods, address)
    if pod is None:
        return False
    if peer.namespace_selector is None:
        namespace_ok = pod.namespace == policy_ns
    else:
        namespace_ok = selector_matches(peer.namespace_selector, _ns_labels(namespaces, pod.namespace))
    pod_ok = peer.pod_selector is None or selector_matches(peer.pod_selector, pod.labels)
    return namespace_ok and pod_ok


def _port_matches(ports, port: int, protocol: str, destination: PodInfo | None) -> bool:  # type: ignore[no-untyped-def]
    if not ports:
        return True
    for p in ports:
        if p.protocol != protocol:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, int):
            if p.port <= port <= (p.end_port or p.port):
                return True
            continue
        if destination is not None:
            for name, number, proto in destination.ports:
                if name == p.port and proto == protocol and number == port:
                    return True
    return False


def reference_allowed(  # type: ignore[no-untyped-def]
    src, dst, port, protocol, pods, namespaces, policies, *, src_node: str | None = None
) -> bool:
    """May ``src`` open a connection to ``dst`` on ``port/protocol``? (PodInfo or address each.)"""
    src_pod = src if isinstance(src, PodInfo) else _pod_at(pods, src)
    dst_pod = dst if isinstance(dst, PodInfo) else _pod_at(pods, dst)
    src_addr = src if isinstance(src, str) else src.ips[0]
    dst_addr = dst if isinstance(dst, str) else dst.ips[0]
    if src_node is not None and src_pod is None and dst_pod is not None and dst_pod.node == src_node:
        return True  # a node reaches its own pods whatever the policies say

    def selecting(pod: PodInfo, kind: str) -> list[NetworkPolicy]:
        return [
            pol
            for pol in policies
            if pol.namespace == pod.namespace
            and selector_matches(pol.spec.pod_selector, pod.labels)
            and kind in policy_types(pol)
        ]

    if src_pod is not None:
        egress = selecting(src_pod, "Egress")
        if egress and not any(
            (
                not rule.to
                or any(_peer_matches(pe, pol.namespace, dst_addr, pods, namespaces) for pe in rule.to)
            )
            and _port_matches(rule.ports, port, protocol, dst_pod)
            for pol in egress
            for rule in pol.spec.egress or []
        ):
            return False
    if dst_pod is not None:
        ingress = selecting(dst_pod, "Ingress")
        if ingress and not any(
            (
                not rule.from_
                or any(_peer_matches(pe, pol.namespace, src_addr, pods, namespaces) for pe in rule.from_)
            )
            and _port_matches(rule.ports, port, protocol, dst_pod)
            for pol in ingress
            for rule in pol.spec.ingress or []
        ):
            return False
    return True
