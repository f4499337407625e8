"""The agent's sync loop on the in-memory datastore: nothing before sync, coalescing, retry."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

from podnet.agent import syncer as syncer_module
from podnet.agent.metrics import AgentMetrics
from podnet.agent.syncer import Syncer
from podnet.calc.cluster import ClusterCache
from podnet.calc.routes import RoutePlan
from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.ipam.block import Block

LAYOUT = KeyLayout("/t/")


def node_doc(name: str, ip: str) -> bytes:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": {"projectcalico.org/IPv4Address": ip}},
        }
    ).encode()


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.plans: list[RoutePlan] = []
        self.fail_first = fail_first
        self.calls = 0
        self.event = threading.Event()

    def __call__(self, plan: RoutePlan) -> dict:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise OSError("netlink said no")
        self.plans.append(plan)
        self.event.set()
        return {"added": len(plan.routes)}

    def wait(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.plans) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.plans) >= n, f"only {len(self.plans)} applies"


def make(store, recorder, **kw) -> Syncer:
    return Syncer("n1", store, ClusterCache(LAYOUT), {}, recorder, AgentMetrics(), **kw)


def test_routes_follow_blocks_and_nodes():
    store = MemoryDatastore()
    store.put(LAYOUT.resource("nodes", "n1"), node_doc("n1", "10.77.0.11/24"))
    store.put(LAYOUT.resource("nodes", "n2"), node_doc("n2", "10.77.0.12/24"))
    rec = Recorder()
    syncer = make(store, rec)
    syncer.start()
    try:
        rec.wait(1)
        assert rec.plans[-1].routes == []
        store.put(LAYOUT.block("10.244.0.64/26"), Block.empty("10.244.0.64/26", "host:n2").to_json())
        deadline = time.monotonic() + 5
        while (
            not any(r.dst == "10.244.0.64/26" for r in rec.plans[-1].routes) and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        [route] = rec.plans[-1].routes
        assert (route.dst, route.gateway, route.dev) == ("10.244.0.64/26", "10.77.0.12", "eth0")
        store.delete(LAYOUT.resource("nodes", "n2"))
        deadline = time.monotonic() + 5
        while rec.plans[-1].routes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.plans[-1].routes == [] and "n2" in rec.plans[-1].unreachable
    finally:
        syncer.stop()


def test_a_burst_of_events_is_one_apply(monkeypatch):
    """Every event that lands while the coalescing window is open is in one apply. The window is
    held open by the test (its sleep waits on ``window``) until the watch thread has taken in the
    whole burst, so the count does not depend on how fast this machine is."""
    window = threading.Event()
    window.set()
    monkeypatch.setattr(
        syncer_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=lambda _: window.wait())
    )
    store = MemoryDatastore()
    store.put(LAYOUT.resource("nodes", "n1"), node_doc("n1", "10.77.0.11/24"))
    rec = Recorder()
    syncer = make(store, rec, coalesce_seconds=0.3)
    syncer.start()
    try:
        rec.wait(1)
        before = len(rec.plans)
        window.clear()
        for i in range(20):
            store.put(LAYOUT.resource("nodes", f"x{i}"), node_doc(f"x{i}", f"10.77.0.{100 + i}/24"))
            store.put(
                LAYOUT.block(f"10.244.{i}.0/26"), Block.empty(f"10.244.{i}.0/26", f"host:x{i}").to_json()
            )
        deadline = time.monotonic() + 5
        while len(syncer.cache.blocks) < 20:  # the watch thread has every event of the burst
            assert time.monotonic() < deadline, f"{len(syncer.cache.blocks)} blocks seen"
            time.sleep(0.01)
        assert len(rec.plans) == before  # nothing applied while the window is open
        window.set()
        rec.wait(before + 1)
        # all 40 events were in before the window closed: nothing is left to trigger another apply
        assert len(rec.plans) == before + 1 and not syncer._trigger.is_set()
        assert len(rec.plans[-1].routes) == 20
    finally:
        syncer.stop()


def test_nothing_is_applied_before_the_datastore_is_synced():
    class Down(MemoryDatastore):
        def list(self, prefix):
            from podnet.errors import DatastoreUnavailable

            raise DatastoreUnavailable("etcd down")

    rec = Recorder()
    syncer = make(Down(), rec, refresh_seconds=0.05)
    syncer.start()
    try:
        time.sleep(0.5)
        assert rec.calls == 0 and not syncer.in_sync.is_set()
    finally:
        syncer.stop()


def test_failed_apply_is_retried():
    store = MemoryDatastore()
    rec = Recorder(fail_first=2)
    syncer = make(store, rec)
    syncer.start()
    try:
        rec.wait(1)
        assert rec.calls == 3 and syncer.last_error is None
        assert syncer.metrics.syncs.labels("error")._value.get() == 2
    finally:
        syncer.stop()


def partial_syncer(store: MemoryDatastore) -> tuple[Syncer, Recorder, list[set[str]]]:
    """A started syncer of node n1 recording its full applies and its partial ones (the kinds)."""
    store.put(LAYOUT.resource("nodes", "n1"), node_doc("n1", "10.77.0.11/24"))
    rec = Recorder()
    partial: list[set[str]] = []
    syncer = Syncer("n1", store, ClusterCache(LAYOUT), {}, rec, AgentMetrics(), apply_partial=partial.append)
    syncer.start()
    return syncer, rec, partial


def test_policy_only_changes_skip_the_route_work():
    store = MemoryDatastore()
    syncer, rec, partial = partial_syncer(store)
    try:
        rec.wait(1)
        full = rec.calls
        netpol = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop"},
            "spec": {"podSelector": {}},
        }
        key = LAYOUT.resource("networkpolicies.networking.k8s.io", "deny", "shop")
        store.put(key, json.dumps(netpol).encode())
        deadline = time.monotonic() + 5
        while not partial and time.monotonic() < deadline:
            time.sleep(0.01)
        assert partial == [{"policy"}] and rec.calls == full
        # an IPAM handle is nothing the dataplane reads: no apply at all
        store.put(LAYOUT.handle("h1"), b"{}")
        time.sleep(0.2)
        assert len(partial) == 1 and rec.calls == full
        # an identity written by some agent's allocation: policy input only, no route work
        store.put(LAYOUT.identity_labels("d" * 32), b'{"id":300}')
        deadline = time.monotonic() + 5
        while len(partial) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert partial[1] == {"identities"} and rec.calls == full
        # a node change (or a CNI request) is a full apply
        store.put(LAYOUT.resource("nodes", "n2"), node_doc("n2", "10.77.0.12/24"))
        rec.wait(full + 1)
        syncer.trigger()
        rec.wait(full + 2)
    finally:
        syncer.stop()


class SlowWatchStore:
    """The memory store with a watch that hands over one event every few milliseconds, as a
    stream from a loaded etcd does: an apply can start between two events of one transaction."""

    def __init__(self, store: MemoryDatastore, gap: float = 0.01) -> None:
        self.store, self.gap = store, gap

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)

    def watch(self, prefix: str, start_revision: int):  # type: ignore[no-untyped-def]
        inner, gap = self.store.watch(prefix, start_revision), self.gap

        class Watch:
            def __iter__(self):  # type: ignore[no-untyped-def]
                for event in inner:
                    time.sleep(gap)
                    yield event

            def close(self) -> None:
                inner.close()

        return Watch()


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def policy_doc(name: str) -> bytes:
    meta = {"name": name, "namespace": "ns"}
    doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": {}},
    }
    return json.dumps(doc).encode()


def test_an_apply_never_sees_half_a_transaction():
    """A batch of policies written in one transaction reaches the dataplane whole: every apply
    sees 0 or all 30 of them (the kill-agent-mid-policy-sync fault found partial states)."""
    from podnet.datastore.base import Write

    store = MemoryDatastore()
    seen: list[int] = []
    syncer = make(
        SlowWatchStore(store),
        Recorder(),
        apply_partial=lambda kinds: seen.append(len(syncer.cache.netpols)) or {},
    )
    syncer.start()
    try:
        assert syncer.in_sync.wait(5)
        keys = [LAYOUT.resource("networkpolicies.networking.k8s.io", f"p{i}", "ns") for i in range(30)]
        store.commit([Write(k, policy_doc(f"p{i}")) for i, k in enumerate(keys)])
        wait_until(lambda: 30 in seen)
        store.commit([Write(k, None) for k in keys])
        wait_until(lambda: seen[-1] == 0)
    finally:
        syncer.stop()
    assert 30 in seen and seen[-1] == 0, seen
    assert set(seen) <= {0, 30}, f"an apply saw part of a transaction: {seen}"


def test_tiers_admin_policies_and_service_accounts_are_policy_changes():
    """Issue 16's kinds reach the agent as policy changes: a partial (policy-only) apply each."""
    store = MemoryDatastore()
    syncer, rec, partial = partial_syncer(store)
    try:
        rec.wait(1)
        full = rec.calls
        changes = [
            (
                LAYOUT.resource("tiers.projectcalico.org", "security"),
                {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "security"}},
            ),
            (
                LAYOUT.resource("serviceaccounts", "api", "shop"),
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": "api", "namespace": "shop"},
                },
            ),
        ]
        for n, (key, doc) in enumerate(changes, start=1):
            store.put(key, json.dumps(doc).encode())
            deadline = time.monotonic() + 5
            while len(partial) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert partial == [{"policy"}] * n and rec.calls == full
        assert "security" in syncer.cache.tiers and "shop/api" in syncer.cache.service_accounts
    finally:
        syncer.stop()
