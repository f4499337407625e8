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

The label sets and numbers themselves are :mod:`podnet.model.identity`; their allocation is
:mod:`podnet.datastore.identity_alloc`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from podnet.calc.policy import PodInfo
from podnet.model.identity import LabelSet

NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
SERVICE_ACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
DEFAULT_CLUSTER = "default"

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


def pod_label_sets(
    pods: Iterable[PodInfo], namespaces: Mapping[str, Mapping[str, str]], cluster: str = DEFAULT_CLUSTER
) -> dict[str, LabelSet]:
    """pod key -> the label set of its identity, for ``pods`` (``namespaces``: name -> labels)."""
    return {
        pod.key: LabelSet.of(
            identity_labels(
                pod.labels, pod.namespace, namespaces.get(pod.namespace, {}), pod.service_account, cluster
            )
        )
        for pod in pods
    }
