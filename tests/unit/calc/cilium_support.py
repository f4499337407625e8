"""Identities for the Cilium policy tests: numbers for the pods' label sets, as agents would allocate."""

from __future__ import annotations

from podnet.calc.identity import pod_label_sets
from podnet.calc.ipcache import cidr_identities
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import IdentityUniverse
from podnet.model.identity import RESERVED, LabelSet


def universe_of(
    pods: list[PodInfo], namespaces: dict, cidrs: list[str]
) -> tuple[IdentityUniverse, dict[str, int]]:
    """The universe of ``pods`` (numbers from 256 in label-set order; reserved ones too; each
    identity's member addresses, what a NetworkPolicy ipBlock judges), and pod key -> number."""
    sets = pod_label_sets(pods, namespaces)
    numbers = {labels: 256 + i for i, labels in enumerate(sorted(set(sets.values()), key=str))}
    pod_identity = {key: numbers[labels] for key, labels in sets.items()}
    labels = {number: labels.mapping() for labels, number in numbers.items()}
    labels |= {number: LabelSet.reserved(name).mapping() for name, number in RESERVED.items()}
    by_identity: dict[int, list[PodInfo]] = {}
    for pod in pods:
        by_identity.setdefault(pod_identity[pod.key], []).append(pod)
    addresses = {n: tuple(ip for p in members for ip in p.ips) for n, members in by_identity.items()}
    universe = IdentityUniverse(
        labels, {n: tuple(p) for n, p in by_identity.items()}, cidr_identities(cidrs), addresses
    )
    return universe, pod_identity
