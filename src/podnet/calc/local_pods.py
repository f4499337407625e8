"""Which pods a node's agent enforces policy for: every endpoint it wired, whatever the Pod says.

The Pod object is user input (``podnet apply`` of a manifest, an edit, a delete racing a CNI DEL);
the endpoint records are what this node's agent wired at CNI ADD and removes at CNI DEL. Policy
follows the endpoint: an endpoint stays under policy until CNI DEL, and never fails open because
its Pod object claims another node, no node, or is gone.

- A Pod bound to this node with an endpoint here: enforced as the Pod says (labels, ports).
- An endpoint whose Pod claims another node or none: still enforced here, with the Pod's labels
  (they are still the user's intent), and reported as a conflict.
- An endpoint whose Pod object is gone: enforced with the last labels this agent saw for it (its
  last policy), else the labels recorded at CNI ADD; reported as a conflict.
- A Pod bound here without an endpoint yet: compiled as before (its chain binds once wired).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from podnet.calc.endpoints import EndpointRecord
from podnet.calc.policy import PodInfo


@dataclass(frozen=True)
class LocalPods:
    pods: list[PodInfo]  # what this node compiles policy for, sorted by key
    conflicts: dict[str, str] = field(default_factory=dict)  # "ns/name" -> why (sorted)


def local_pods(
    node: str,
    pods: Iterable[PodInfo],
    records: Iterable[EndpointRecord],
    last_known: Mapping[str, PodInfo],
) -> LocalPods:
    """The pods ``node`` enforces policy for (see the module docstring).

    ``records`` are this node's endpoint records; ``last_known`` is the previous result's pods by
    key (the caller keeps it between syncs)."""
    by_key = {p.key: p for p in pods}
    wired: dict[str, list[str]] = {}
    for record in records:
        if record.node == node:
            wired.setdefault(record.pod_key, []).extend(record.addresses)
    record_labels = {r.pod_key: dict(r.labels) for r in records if r.node == node}
    out: dict[str, PodInfo] = {p.key: p for p in by_key.values() if p.node == node}
    conflicts: dict[str, str] = {}
    gone = "the Pod object is gone while its endpoint is wired here"
    for key, addresses in wired.items():
        pod = by_key.get(key)
        ips = tuple(sorted(set(addresses)))
        if pod is not None and pod.node == node:
            continue
        if pod is not None:
            claim = f"node {pod.node!r}" if pod.node else "no node"
            conflicts[key] = f"the Pod claims {claim} while its endpoint is wired here; still enforced here"
            out[key] = replace(pod, node=node, ips=pod.ips or ips)
        elif key in last_known:
            conflicts[key] = f"{gone}; kept under its last policy"
            out[key] = replace(last_known[key], node=node, ips=ips)
        else:
            conflicts[key] = f"{gone}; enforced with its labels at CNI ADD"
            namespace, name = key.split("/", 1)
            out[key] = PodInfo(namespace, name, record_labels.get(key, {}), ips, node)
    return LocalPods(sorted(out.values(), key=lambda p: p.key), dict(sorted(conflicts.items())))
