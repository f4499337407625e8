"""Datastore → calculation → kernel, for one node.

    PrefixSync(root) ──events──▶ ClusterCache ──(coalesced trigger)──▶ calc.node_routes
                                                                          │
                                           local endpoints (CNI service) ─┤
                                                                          ▼
                                                            RouteManager.apply (diff vs kernel)

Nothing is applied before the first snapshot is loaded (Felix's rule): an agent restarting with
etcd down keeps every route it had. Each event marks what it touched (the kind ``ClusterCache.update``
returns); a burst that touched only pods, namespaces, policies, services or identities runs ``apply_partial``
(policy and services, no route work) instead of the whole apply — a policy change does not pay for
a dump of every link and route. A snapshot, a CNI request, the periodic resync and a retry after a
failure run everything. Triggers are coalesced (a burst of events is one apply) and never fire in
the middle of a transaction: the events of one revision are applied together or not at all, so the
kernel never holds a state the datastore never had (half a batch of policies). A
failed apply is retried with back-off, and a periodic resync (``refresh_seconds``) repairs
out-of-band changes. Each apply diffs against the kernel, so a restart with an unchanged desired
state changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from podnet.agent.log import kv
from podnet.agent.metrics import AgentMetrics
from podnet.calc.cluster import ClusterCache
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.routes import RoutePlan, encap_policy, node_routes
from podnet.datastore.base import Datastore
from podnet.datastore.sync import PrefixSync, Snapshot

log = logging.getLogger("podnet.agent.sync")

FULL = "all"  # a dirty mark that means: apply everything
# no route work needed ("identities": Cilium identity numbers, read by policy only; "endpoints":
# the endpoint records, read by policy: the routes of this node's pods come from the CNI service's
# own table, and a CNI ADD writes its pod's route itself, a DEL's veth takes its route with it)
PARTIAL_KINDS = frozenset({"pods", "namespaces", "policy", "services", "identities", "endpoints"})


class Syncer:
    def __init__(
        self,
        node: str,
        store: Datastore,
        cache: ClusterCache,
        endpoints: dict[str, EndpointRecord],
        apply_routes: Callable[[RoutePlan], dict],
        metrics: AgentMetrics,
        uplink: str = "eth0",
        refresh_seconds: float = 60.0,
        coalesce_seconds: float = 0.01,
        apply_partial: Callable[[set[str]], dict] | None = None,
    ) -> None:
        self.node = node
        self.store = store
        self.cache = cache
        self.endpoints = endpoints
        self.apply_routes = apply_routes
        self.apply_partial = apply_partial
        self._dirty: set[str] = {FULL}  # what changed since the last apply (guarded by lock)
        self._mid_revision = False  # the cache holds part of a transaction's events (guarded by lock)
        self.metrics = metrics
        self.uplink = uplink
        self.refresh_seconds = refresh_seconds
        self.coalesce_seconds = coalesce_seconds
        self.lock = threading.RLock()  # guards cache + endpoints against the apply thread
        self.in_sync = threading.Event()
        self._trigger = threading.Event()
        self._stop = threading.Event()
        self._backoff = 0.1  # the wait before retrying a failed apply (doubles up to 5 s)
        self._applying = False
        self._idle_since = time.monotonic()
        self._applies = threading.Condition()
        self._started = 0  # applies begun
        self._succeeded = 0  # the number of the last apply that succeeded
        self._sync = PrefixSync(store, cache.layout.root, on_error=self._datastore_error)
        self._status_prefix = cache.layout.status_prefix()
        self.last_error: str | None = None
        self.last_plan: RoutePlan | None = None
        self.on_synced: list[Callable[[], None]] = []
        self.bgp: Callable[[], bool] = lambda: False  # set by the agent when BIRD routes for it
        # While this says so (CNI requests in flight: a burst of pods starting), a triggered apply
        # waits for it to stop, up to hold_seconds: one apply for the burst, not one per pod.
        self.hold: Callable[[], bool] = lambda: False
        self.hold_seconds = 0.1

    def _datastore_error(self, exc: Exception) -> None:
        self.metrics.datastore_errors.inc()
        kv(log, logging.WARNING, "datastore", error=str(exc))

    def start(self) -> None:
        threading.Thread(target=self._watch_loop, name="watch", daemon=True).start()
        threading.Thread(target=self._apply_loop, name="apply", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._sync.close()
        self._trigger.set()

    def trigger(self, kind: str = FULL) -> None:
        """Something outside the datastore changed: apply ``kind`` (default: everything; a pod
        wired or unwired: ``endpoints``)."""
        with self.lock:
            self._dirty.add(kind)
        self._trigger.set()

    def apply_and_wait(self, kind: str, timeout: float) -> bool:
        """Ask for an apply of ``kind`` (e.g. ``policy``) and wait until one that began after the
        call has succeeded (False: not within ``timeout``). What the DNS proxy waits for before it
        answers a lookup whose addresses a toFQDNs rule now allows (Cilium holds the answer too)."""
        with self._applies:
            target = self._started + 1
        with self.lock:
            self._dirty.add(kind)
        self._trigger.set()
        with self._applies:
            return self._applies.wait_for(lambda: self._succeeded >= target, timeout)

    def _watch_loop(self) -> None:
        for item in self._sync:
            with self.lock:
                if isinstance(item, Snapshot):
                    self.cache.reset(item.items, item.revision)
                    self._mid_revision = False
                    self._dirty.add(FULL)
                    for key, record in self.cache.endpoints.items():
                        if record.node == self.node:
                            self.endpoints.setdefault(key, record)
                    first = not self.in_sync.is_set()
                    self.in_sync.set()
                    self.metrics.in_sync.set(1)
                    kv(log, logging.INFO, "snapshot", revision=item.revision, keys=len(item.items))
                    if first:
                        for callback in self.on_synced:
                            callback()
                elif item.key.startswith(self._status_prefix):
                    continue  # agents' own reports: not an input of calculation
                else:
                    self._mid_revision = not item.last_of_revision
                    kind = self.cache.update(item.key, item.value, item.revision)
                    if kind is not None:
                        self._dirty.add(kind)
                    elif item.key in self.cache.errors:
                        self._dirty.add("policy")  # refused values are reported with policy status
                    if self._mid_revision or not self._dirty:
                        # the rest of this transaction follows (never apply half of it), or nothing
                        # the dataplane depends on changed (IPAM handles, affinities, ...)
                        continue
                self.metrics.revision.set(self.cache.revision)
            self._trigger.set()

    def _apply_loop(self) -> None:
        while not self._stop.is_set():
            fired = self._trigger.wait(self.refresh_seconds)
            if self._stop.is_set():
                return
            if not self.in_sync.is_set():
                self._trigger.clear()
                continue
            if fired:
                time.sleep(self.coalesce_seconds)  # let a burst of events land: one apply
                until = time.monotonic() + self.hold_seconds
                while self.hold() and time.monotonic() < until and not self._stop.is_set():
                    time.sleep(self.coalesce_seconds)
            self._trigger.clear()
            with self.lock:
                if self._mid_revision:
                    continue  # the watch thread triggers again at the transaction's last event
                dirty, self._dirty = (self._dirty if fired else {FULL}), set()
            if not dirty:
                continue
            self._applying = True
            with self._applies:
                self._started += 1
                number = self._started
            try:
                if self._apply(dirty):
                    with self._applies:
                        self._succeeded = number
                        self._applies.notify_all()
            finally:
                self._applying = False
                self._idle_since = time.monotonic()

    def idle_seconds(self) -> float:
        """How long no apply has run or been asked for (0 while one runs or is pending)."""
        if self._applying or self._trigger.is_set():
            return 0.0
        return time.monotonic() - self._idle_since

    def _apply(self, dirty: set[str]) -> bool:
        """One apply of what ``dirty`` names (True if it succeeded); a failure is retried with
        back-off (a full resync)."""
        started = time.monotonic()
        try:
            if self.apply_partial is not None and dirty <= PARTIAL_KINDS:
                self.apply_partial(dirty)
                self.metrics.syncs.labels("ok").inc()
                self.metrics.sync_seconds.observe(time.monotonic() - started)
                self._backoff = 0.1
                return True
            with self.lock:
                policy = encap_policy(self.cache.pools.values(), self.cache.config, self.bgp())
                plan = node_routes(
                    self.node,
                    self.cache.nodes,
                    list(self.cache.blocks.values()),
                    list(self.endpoints.values()),
                    self.uplink,
                    policy,
                )
            done = self.apply_routes(plan)
            self.last_plan, self.last_error = plan, None
            self.metrics.syncs.labels("ok").inc()
            self.metrics.sync_seconds.observe(time.monotonic() - started)
            self.metrics.routes.set(len(plan.routes))
            self.metrics.endpoints.set(len(self.endpoints))
            if any(done.values()):
                kv(
                    log,
                    logging.INFO,
                    "routes applied",
                    **done,
                    ms=round((time.monotonic() - started) * 1e3, 1),
                )
            self._backoff = 0.1
            return True
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.metrics.syncs.labels("error").inc()
            kv(log, logging.ERROR, "apply failed; will retry with a full resync", error=self.last_error)
            self._stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, 5.0)
            self.trigger()
            return False
