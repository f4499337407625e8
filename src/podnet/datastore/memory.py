"""An in-memory datastore with etcd's semantics, for unit tests and simulations.

One global revision, per-key create/mod revisions, an event history for watches from any
revision, and compaction that makes older watch starts fail exactly as etcd does. Thread-safe.
The contract tests in ``tests/contract`` run the same cases against this and the real etcd.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from podnet.datastore.base import (
    MUST_NOT_EXIST,
    EventType,
    KeyValue,
    WatchEvent,
    Write,
    mark_revision_ends,
)
from podnet.errors import AlreadyExistsError, CompactedError, ConflictError, NotFoundError


class MemoryDatastore:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._data: dict[str, KeyValue] = {}
        self._history: list[WatchEvent] = []
        self._revision = 1  # etcd starts at revision 1 with an empty store
        self._compacted = 0
        self._closed = False

    # -- reads -----------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._data.get(key)

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            items = [kv for k, kv in self._data.items() if k.startswith(prefix)]
            return sorted(items, key=lambda kv: kv.key), self._revision

    def revision(self) -> int:
        with self._lock:
            return self._revision

    # -- writes ----------------------------------------------------------------------------
    def create(self, key: str, value: bytes) -> int:
        with self._lock:
            if key in self._data:
                raise AlreadyExistsError(f"{key} already exists")
            return self._apply([Write(key, value)])

    def update(self, key: str, value: bytes, revision: int) -> int:
        with self._lock:
            self._check(key, revision)
            return self._apply([Write(key, value)])

    def put(self, key: str, value: bytes) -> int:
        with self._lock:
            return self._apply([Write(key, value)])

    def delete(self, key: str, revision: int | None = None) -> int:
        with self._lock:
            if revision is None:
                if key not in self._data:
                    raise NotFoundError(f"{key} not found")
            else:
                self._check(key, revision)
            return self._apply([Write(key, None)])

    def commit(self, writes: Sequence[Write]) -> int:
        with self._lock:
            for w in writes:
                if w.expect is not None:
                    self._check(w.key, w.expect)
            return self._apply(list(writes))

    def compact(self, revision: int) -> None:
        with self._lock:
            if revision <= self._compacted:
                raise CompactedError(self._compacted)
            revision = min(revision, self._revision)
            self._history = [e for e in self._history if e.revision >= revision]
            self._compacted = revision

    def watch(self, prefix: str, start_revision: int) -> MemoryWatch:
        with self._lock:
            if start_revision and start_revision < self._compacted:
                raise CompactedError(self._compacted)
            start = start_revision or self._revision + 1
            return MemoryWatch(self, prefix, start)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # -- internals (lock held) -------------------------------------------------------------
    def _check(self, key: str, expect: int) -> None:
        current = self._data.get(key)
        if expect == MUST_NOT_EXIST:
            if current is not None:
                raise ConflictError(f"{key} already exists (revision {current.mod_revision})")
        elif current is None:
            raise NotFoundError(f"{key} not found")
        elif current.mod_revision != expect:
            raise ConflictError(
                f"{key} was modified: expected revision {expect}, found {current.mod_revision}"
            )

    def _apply(self, writes: list[Write]) -> int:
        keys = [w.key for w in writes]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key in one commit")
        # Like etcd: deleting an absent key inside a transaction is a no-op.
        writes = [w for w in writes if w.value is not None or w.key in self._data]
        if not writes:
            return self._revision
        self._revision += 1
        rev = self._revision
        for w in writes:
            if w.value is None:
                del self._data[w.key]
                self._history.append(WatchEvent(EventType.DELETE, w.key, None, rev))
            else:
                old = self._data.get(w.key)
                created = old.create_revision if old else rev
                self._data[w.key] = KeyValue(w.key, bytes(w.value), rev, created)
                self._history.append(WatchEvent(EventType.PUT, w.key, bytes(w.value), rev))
        self._lock.notify_all()
        return rev


class MemoryWatch:
    """Iterates the store's history from a revision, blocking for new events until closed."""

    def __init__(self, store: MemoryDatastore, prefix: str, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next_revision = start_revision
        self._closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        lock = self._store._lock
        while True:
            with lock:
                while True:
                    if self._closed or self._store._closed:
                        return
                    if self._next_revision < self._store._compacted:
                        raise CompactedError(self._store._compacted)
                    pending = [
                        e
                        for e in self._store._history
                        if e.revision >= self._next_revision and e.key.startswith(self._prefix)
                    ]
                    if pending:
                        break
                    if self._store._revision >= self._next_revision:
                        self._next_revision = self._store._revision + 1
                    lock.wait(0.5)
                self._next_revision = pending[-1].revision + 1
            yield from mark_revision_ends(pending)

    def close(self) -> None:
        self._closed = True
        with self._store._lock:
            self._store._lock.notify_all()
