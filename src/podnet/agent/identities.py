"""The Cilium profile's identities on one node: the label set of each local pod allocated
cluster-wide (:mod:`podnet.datastore.identity_alloc`), this node's references kept to the label
sets its pods have now, and unreferenced numbers collected now and then (any agent may: the
collection is safe against a concurrent reference).

The agent hands what it wants to :meth:`IdentityKeeper.request` (the latest request wins) and
goes on: a thread of the keeper talks to the datastore, so an etcd outage never holds up the
agent's apply loop. A failed allocation leaves that pod without an identity and a failed release
keeps its reference; both are retried (every ``RETRY`` seconds while something failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from podnet.agent.log import kv
from podnet.datastore.base import Datastore
from podnet.datastore.identity_alloc import IdentityAllocator, collect_garbage, release_node
from podnet.datastore.keys import KeyLayout
from podnet.errors import PodnetError
from podnet.model.identity import LabelSet

log = logging.getLogger(__name__)
GC_INTERVAL = 900.0  # Cilium operator's identity-gc-interval default (15 minutes)
RETRY = 2.0


class IdentityKeeper:
    """One node's identities: :meth:`request` what its pods need, read ``by_pod``."""

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
        self._pending: Mapping[str, LabelSet] | None = None
        self._wanted: Mapping[str, LabelSet] = {}
        self._failed = False
        self._requested = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="identities", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request(self, wanted: Mapping[str, LabelSet]) -> None:
        """What the local pods need now (pod key -> label set); the keeper's thread syncs it."""
        with self._lock:
            self._pending = dict(wanted)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(RETRY if self._failed else min(self.gc_interval, 10.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if self._pending is not None:
                    self._wanted, self._pending = self._pending, None
                    self._requested = True
            if not self._requested:
                continue  # nothing known yet: a sync now would drop this node's references
            try:
                self.sync(self._wanted)
            except Exception as exc:  # the thread must live: said, and retried
                self._failed = True
                kv(log, logging.WARNING, "identity sync failed", error=str(exc))

    def sync(self, wanted: Mapping[str, LabelSet]) -> dict[str, int]:
        """Allocate what ``wanted`` (pod key -> label set) needs, release what no local pod has
        any more; returns pod key -> identity for the pods that have one."""
        self._failed = False
        sets = set(wanted.values())
        for labels in sorted(sets - self.numbers.keys(), key=str):
            try:
                self.numbers[labels] = self.allocator.allocate(labels)
            except PodnetError as exc:
                self._failed = True
                kv(log, logging.WARNING, "identity not allocated", labels=str(labels), error=str(exc))
        for labels in sorted(self.numbers.keys() - sets, key=str):
            try:
                self.allocator.release(self.numbers[labels])
            except PodnetError as exc:
                self._failed = True
                kv(log, logging.WARNING, "identity not released", labels=str(labels), error=str(exc))
                continue
            del self.numbers[labels]
        if not self._released_stale:
            # references this node left before a restart, for label sets its pods no longer have
            try:
                release_node(self.store, self.layout, self.node, keep=self.numbers.values())
                self._released_stale = True
            except PodnetError as exc:
                self._failed = True
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
