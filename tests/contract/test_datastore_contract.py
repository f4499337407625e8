"""One contract, two backends: the in-memory store must behave exactly like real etcd."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from podnet.datastore.base import EventType, Write
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.sync import PrefixSync, Snapshot
from podnet.errors import AlreadyExistsError, CompactedError, ConflictError, NotFoundError


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def store(request: pytest.FixtureRequest) -> Iterator:
    if request.param == "memory":
        ds = MemoryDatastore()
    else:
        server = request.getfixturevalue("etcd_server")
        ds = EtcdDatastore([server.endpoint], retry_deadline=2.0, watch_idle_check=0.5)
    yield ds
    ds.close()


@pytest.fixture
def prefix() -> str:
    return f"/contract/{uuid.uuid4().hex[:8]}/"


def collect(watch, n: int, timeout: float = 5.0) -> list:
    out: list = []

    def run() -> None:
        for ev in watch:
            out.append(ev)
            if len(out) >= n:
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    watch.close()
    t.join(2)
    return out


def test_create_get_and_revisions(store, prefix):
    rev = store.create(prefix + "a", b"1")
    kv = store.get(prefix + "a")
    assert kv.value == b"1" and kv.mod_revision == rev and kv.create_revision == rev
    assert store.get(prefix + "missing") is None
    assert store.revision() >= rev


def test_create_existing_fails(store, prefix):
    store.create(prefix + "a", b"1")
    with pytest.raises(AlreadyExistsError):
        store.create(prefix + "a", b"2")
    assert store.get(prefix + "a").value == b"1"


def test_update_is_compare_and_swap(store, prefix):
    rev = store.create(prefix + "a", b"1")
    rev2 = store.update(prefix + "a", b"2", rev)
    assert rev2 > rev
    with pytest.raises(ConflictError):
        store.update(prefix + "a", b"3", rev)
    kv = store.get(prefix + "a")
    assert kv.value == b"2" and kv.create_revision == rev
    with pytest.raises(NotFoundError):
        store.update(prefix + "nope", b"x", rev)


def test_delete_plain_and_conditional(store, prefix):
    rev = store.create(prefix + "a", b"1")
    store.put(prefix + "a", b"2")
    with pytest.raises(ConflictError):
        store.delete(prefix + "a", rev)
    store.delete(prefix + "a")
    assert store.get(prefix + "a") is None
    with pytest.raises(NotFoundError):
        store.delete(prefix + "a")


def test_list_by_prefix_sorted_and_bounded(store, prefix):
    for name in ["b", "a", "c/d"]:
        store.put(prefix + name, name.encode())
    store.put(prefix[:-1] + "x", b"outside")  # shares the text but not the "/" boundary
    items, rev = store.list(prefix)
    assert [kv.key.removeprefix(prefix) for kv in items] == ["a", "b", "c/d"]
    assert rev >= max(kv.mod_revision for kv in items)


def test_list_many_keys_pages(store, prefix):
    store.commit([Write(f"{prefix}{i:05d}", b"v") for i in range(120)])
    for i in range(120, 1100, 100):
        store.commit([Write(f"{prefix}{j:05d}", b"v") for j in range(i, min(i + 100, 1100))])
    items, _ = store.list(prefix)
    assert len(items) == 1100 and items[0].key.endswith("00000") and items[-1].key.endswith("01099")


def test_commit_is_all_or_nothing(store, prefix):
    rev = store.create(prefix + "a", b"1")
    store.create(prefix + "b", b"1")
    with pytest.raises(ConflictError):
        store.commit([Write(prefix + "a", b"2", rev), Write(prefix + "b", b"2", 0)])
    assert store.get(prefix + "a").value == b"1"
    rev2 = store.commit(
        [Write(prefix + "a", b"3", rev), Write(prefix + "b", None), Write(prefix + "c", b"c", 0)]
    )
    assert store.get(prefix + "a").mod_revision == rev2
    assert store.get(prefix + "b") is None
    assert store.get(prefix + "c").value == b"c"
    with pytest.raises(NotFoundError):
        store.commit([Write(prefix + "zz", b"x", rev)])
    with pytest.raises(ValueError):
        store.commit([Write(prefix + "d", b"1"), Write(prefix + "d", b"2")])


def test_watch_from_revision_sees_history_then_live(store, prefix):
    rev1 = store.put(prefix + "a", b"1")
    store.put(prefix + "b", b"1")
    watch = store.watch(prefix, rev1)
    threading.Timer(0.3, lambda: store.delete(prefix + "a")).start()
    events = collect(watch, 3)
    assert [(e.type, e.key.removeprefix(prefix)) for e in events] == [
        (EventType.PUT, "a"),
        (EventType.PUT, "b"),
        (EventType.DELETE, "a"),
    ]
    assert events[0].revision == rev1 and events[2].value is None
    assert events[0].revision < events[1].revision < events[2].revision


def test_watch_only_sees_its_prefix(store, prefix):
    rev = store.revision()
    store.put("/other" + prefix + "x", b"1")
    store.put(prefix + "y", b"1")
    events = collect(store.watch(prefix, rev + 1), 1)
    assert [e.key for e in events] == [prefix + "y"]


def test_watch_of_compacted_revision_fails_clearly(store, prefix):
    first = store.put(prefix + "a", b"1")
    store.put(prefix + "a", b"2")
    last = store.put(prefix + "a", b"3")
    store.compact(last)
    with pytest.raises(CompactedError):
        for _ in store.watch(prefix, first):
            break


def test_prefix_sync_resyncs_after_compaction(store, prefix):
    store.put(prefix + "a", b"1")
    sync = PrefixSync(store, prefix)
    it = iter(sync)
    snap = next(it)
    assert isinstance(snap, Snapshot) and [kv.value for kv in snap.items] == [b"1"]
    # Fall behind: history the watch would need is compacted before it starts.
    store.put(prefix + "a", b"2")
    store.put(prefix + "b", b"1")
    store.compact(store.revision())
    got = []
    deadline = time.monotonic() + 5
    for item in it:
        got.append(item)
        if isinstance(item, Snapshot) or time.monotonic() > deadline:
            break
    sync.close()
    resync = got[-1]
    assert isinstance(resync, Snapshot)
    assert {kv.key.removeprefix(prefix): kv.value for kv in resync.items} == {"a": b"2", "b": b"1"}


def test_close_ends_a_blocked_watch(store, prefix):
    watch = store.watch(prefix, store.revision() + 1)
    done = threading.Event()
    threading.Thread(target=lambda: (list(watch), done.set()), daemon=True).start()
    time.sleep(0.2)
    watch.close()
    assert done.wait(3)


def test_watch_marks_the_last_event_of_each_transaction(store, prefix):
    """A consumer acting on its state waits for ``last_of_revision`` (never half a transaction)."""
    rev = store.revision()
    batch = store.commit([Write(prefix + f"p{i}", b"1") for i in range(5)])
    single = store.put(prefix + "q", b"1")
    events = collect(store.watch(prefix, rev + 1), 6)
    assert [(e.revision, e.last_of_revision) for e in events] == [(batch, False)] * 4 + [
        (batch, True),
        (single, True),
    ]


class _BreaksMidRevision:
    """A datastore whose first watch fails after the first event of a multi-event revision."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store, self.broken = store, False

    def list(self, prefix: str):  # type: ignore[no-untyped-def]
        return self.store.list(prefix)

    def watch(self, prefix: str, start_revision: int):  # type: ignore[no-untyped-def]
        from podnet.errors import DatastoreError

        inner = self.store.watch(prefix, start_revision)

        class Watch:
            def __iter__(w):  # type: ignore[no-untyped-def]
                for event in inner:
                    yield event
                    if not self.broken and not event.last_of_revision:
                        self.broken = True
                        inner.close()
                        raise DatastoreError("connection reset mid-revision")

            def close(w) -> None:  # type: ignore[no-untyped-def]
                inner.close()

        return Watch()


def test_prefix_sync_resumed_mid_revision_replays_the_whole_revision(store, prefix):
    sync = PrefixSync(_BreaksMidRevision(store), prefix, min_backoff=0.01)
    it = iter(sync)
    assert isinstance(next(it), Snapshot)
    store.commit([Write(prefix + f"p{i}", b"1") for i in range(3)])
    seen: list = []
    for item in it:
        seen.append((item.key.removeprefix(prefix), item.last_of_revision))
        if item.last_of_revision:
            break
    sync.close()
    # the first event, then the whole revision again after the reset
    assert seen == [("p0", False), ("p0", False), ("p1", False), ("p2", True)]
