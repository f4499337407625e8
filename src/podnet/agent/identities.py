"""The Cilium profile's identities on one node: the label set of each local pod allocated
cluster-wide (:mod:`podnet.datastore.identity_alloc`), this node's references kept to the label
sets its pods have now, and unreferenced numbers collected now and then (any agent may: the
collection is safe against a concurrent reference).

A failed allocation (etcd unreachable) leaves that pod without an identity until a later sync
succeeds; a failed release is retried at the next sync. Nothing here blocks the syncer's lock:
the agent computes what it wants under the lock and calls :meth:`IdentityKeeper.sync` after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from podnet.agent.log import kv
from podnet.datastore.base import Datastore
from podnet.datastore.identity_alloc import IdentityAllocator, collect_garbage, release_node
from podnet.datastore.keys import KeyLayout
from podnet.errors import PodnetError
from podnet.model.identity import LabelSet

log = logging.getLogger(__name__)
GC_INTERVAL = 60.0


class IdentityKeeper:
    def __init__(
        self, store: Datastore, layout: KeyLayout, node: str, gc_interval: float = GC_INTERVAL
    ) -> None:
        self.store, self.layout, self.node = store, layout, node
        self.allocator = IdentityAllocator(store, layout, node)
        self.numbers: dict[LabelSet, int] = {}  # the label sets this node references
        self.by_pod: dict[str, int] = {}
        self.gc_interval = gc_interval
        self._last_gc = time.monotonic()
        self._released_stale = False

    def sync(self, wanted: Mapping[str, LabelSet]) -> dict[str, int]:
        """Allocate what ``wanted`` (pod key -> label set) needs, release what no local pod has
        any more; returns pod key -> identity for the pods that have one."""
        sets = set(wanted.values())
        for labels in sorted(sets - self.numbers.keys(), key=str):
            try:
                self.numbers[labels] = self.allocator.allocate(labels)
            except PodnetError as exc:
                kv(log, logging.WARNING, "identity not allocated", labels=str(labels), error=str(exc))
        for labels in sorted(self.numbers.keys() - sets, key=str):
            try:
                self.allocator.release(self.numbers[labels])
            except PodnetError as exc:
                kv(log, logging.WARNING, "identity not released", labels=str(labels), error=str(exc))
                continue
            del self.numbers[labels]
        if not self._released_stale:
            # references this node left before a restart, for label sets its pods no longer have
            try:
                release_node(self.store, self.layout, self.node, keep=self.numbers.values())
                self._released_stale = True
            except PodnetError as exc:
                kv(log, logging.WARNING, "stale identity references not released", error=str(exc))
        self.by_pod = {pod: self.numbers[labels] for pod, labels in wanted.items() if labels in self.numbers}
        self._maybe_collect()
        return self.by_pod

    def _maybe_collect(self) -> None:
        if time.monotonic() - self._last_gc < self.gc_interval:
            return
        self._last_gc = time.monotonic()
        try:
            deleted = collect_garbage(self.store, self.layout)
        except PodnetError as exc:
            kv(log, logging.WARNING, "identity garbage collection failed", error=str(exc))
            return
        if deleted:
            kv(log, logging.INFO, "identities collected", count=len(deleted), ids=",".join(map(str, deleted)))
