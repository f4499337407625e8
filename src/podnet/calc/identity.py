"""Security identities the Cilium way (pure): which labels make a pod's identity, and the numbers.

Cilium enforces policy by *identity*, a number standing for one set of security-relevant labels;
every pod with the same set shares it, cluster-wide. A pod's identity labels are (all with the
source ``k8s:``, as ``cilium-dbg identity list`` prints them):

- its own labels, minus Cilium's default exclusions (:data:`EXCLUDED`: ``io.kubernetes*``,
  ``kubernetes.io*``, ``pod-template-hash``, … — labels that are per-pod or per-rollout and would
  give every pod its own identity);
- ``io.kubernetes.pod.namespace=<namespace>``;
- its namespace's labels as ``io.cilium.k8s.namespace.labels.<key>=<value>`` (every one: a
  NetworkPolicy's namespaceSelector on ``kubernetes.io/metadata.name`` must match);
- ``io.cilium.k8s.policy.serviceaccount=<serviceAccountName or default>``;
- ``io.cilium.k8s.policy.cluster=<cluster name>``: every pod has it, so a selector on it (Exists)
  selects the whole cluster, as cilium-cli's connectivity tests use it.

Numbers (``pkg/identity/numericidentity.go``): 0 is unknown (the policy map's wildcard); reserved
1 host, 2 world, 3 unmanaged, 4 health, 5 init, 6 remote-node, 7 kube-apiserver, 8 ingress;
cluster identities are allocated from 256-65535 (:mod:`podnet.datastore.identity_alloc`); CIDR
identities are node-local, from 2^24 + 1, never stored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SOURCE = "k8s"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
DEFAULT_CLUSTER = "default"

#: Cilium's reserved identities, by name (``reserved:<name>`` labels).
RESERVED: dict[str, int] = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
}
RESERVED_NAMES: dict[int, str] = {number: name for name, number in RESERVED.items()}
MIN_CLUSTER_IDENTITY = 256
MAX_CLUSTER_IDENTITY = 65535
LOCAL_CIDR_BASE = 1 << 24  # node-local CIDR identities are LOCAL_CIDR_BASE + n, n >= 1

#: Label keys that do not count towards identity (Cilium's defaults, ``identity-relevant-labels``):
#: anchored at the start of the key.
EXCLUDED = tuple(
    re.compile(pattern)
    for pattern in (
        r"io\.kubernetes",
        r"kubernetes\.io",
        r".*beta\.kubernetes\.io",
        r"k8s\.io",
        r"pod-template-generation",
        r"pod-template-hash",
        r"controller-revision-hash",
        r"annotation.*",
        r"etcd_node",
    )
)


def relevant(key: str) -> bool:
    """Whether a pod's own label ``key`` counts towards its identity."""
    return not any(pattern.match(key) for pattern in EXCLUDED)


def identity_labels(
    pod_labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    service_account: str = "",
    cluster: str = DEFAULT_CLUSTER,
) -> dict[str, str]:
    """The security-relevant labels of a pod, as selectors see them (keys without the source).
    The derived labels win over a pod label of the same key (a pod cannot claim a namespace)."""
    labels = {key: value for key, value in pod_labels.items() if relevant(key)}
    labels.update({f"{NAMESPACE_LABELS_PREFIX}{k}": v for k, v in namespace_labels.items()})
    labels[NAMESPACE_LABEL] = namespace
    labels[SERVICE_ACCOUNT_LABEL] = service_account or "default"
    labels[CLUSTER_LABEL] = cluster
    return dict(sorted(labels.items()))


@dataclass(frozen=True)
class LabelSet:
    """One identity's labels in canonical form: ``source:key=value`` strings, sorted."""

    labels: tuple[str, ...]

    @classmethod
    def of(cls, labels: Mapping[str, str], source: str = SOURCE) -> LabelSet:
        return cls(tuple(sorted(f"{source}:{key}={value}" for key, value in labels.items())))

    @classmethod
    def reserved(cls, name: str) -> LabelSet:
        if name not in RESERVED:
            raise ValueError(f"unknown reserved identity {name!r} (known: {', '.join(RESERVED)})")
        return cls((f"reserved:{name}",))

    def mapping(self) -> dict[str, str]:
        """``key -> value`` without the sources (what selectors match)."""
        out = {}
        for label in self.labels:
            _source, _, rest = label.partition(":")
            key, _, value = rest.partition("=")
            out[key] = value
        return out

    @property
    def digest(self) -> str:
        """A stable name for the set (datastore keys): sha256 of the canonical text, 32 hex digits."""
        return hashlib.sha256("\n".join(self.labels).encode()).hexdigest()[:32]

    def __str__(self) -> str:
        return ",".join(self.labels)


def parse_label_set(labels: Iterable[str]) -> LabelSet:
    """A :class:`LabelSet` from stored ``source:key=value`` strings (sorted again; checked)."""
    out = []
    for label in labels:
        source, colon, rest = str(label).partition(":")
        if not colon or not source or not rest.partition("=")[0]:
            raise ValueError(f"label {label!r} is not source:key=value")
        out.append(f"{source}:{rest}")
    return LabelSet(tuple(sorted(out)))


def is_cluster_identity(number: int) -> bool:
    return MIN_CLUSTER_IDENTITY <= number <= MAX_CLUSTER_IDENTITY


def describe(number: int) -> str:
    """``reserved:host`` for a reserved number, ``cidr`` for a local CIDR one, else ``cluster``."""
    if number in RESERVED_NAMES:
        return f"reserved:{RESERVED_NAMES[number]}"
    if number > LOCAL_CIDR_BASE:
        return "cidr"
    return "cluster" if is_cluster_identity(number) else "unknown"
