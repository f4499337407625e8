"""Security identities as data (Cilium's model): a label set in canonical form, and the numbers.

Numbers (``pkg/identity/numericidentity.go``): 0 is unknown (the policy map's wildcard); reserved
1 host, 2 world, 3 unmanaged, 4 health, 5 init, 6 remote-node, 7 kube-apiserver, 8 ingress;
cluster identities are allocated from 256-65535 (:mod:`podnet.datastore.identity_alloc`); CIDR
identities are node-local, from 2^24 + 1, never stored. Which labels a pod's set holds is
:mod:`podnet.calc.identity`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

SOURCE = "k8s"

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
        """What selectors match: ``k8s:`` labels by their plain key, other sources (``reserved:host``)
        under the full prefixed key (an ``EndpointSelector`` reads both). A new dict each call."""
        return dict(self._mapping)

    @cached_property
    def _mapping(self) -> dict[str, str]:
        out = {}
        for label in self.labels:
            source, _, rest = label.partition(":")
            key, _, value = rest.partition("=")
            out[key if source == SOURCE else f"{source}:{key}"] = value
        return out

    @cached_property
    def digest(self) -> str:
        """A stable name for the set (datastore keys): sha256 of the canonical text, 32 hex digits
        (computed once per set: every sync reads it for every pod)."""
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
