"""The datastore protocol: what every backend (etcd, in-memory) offers, with etcd's semantics.

Keys are strings (their layout is owned by :mod:`podnet.datastore.keys`), values are bytes.
Every write bumps one cluster-wide revision; each key remembers the revision of its last write
(``mod_revision``). Compare-and-swap is expressed on that revision:

- ``create(key, value)``                fails with AlreadyExistsError if the key exists;
- ``update(key, value, revision)``       fails with ConflictError unless mod_revision == revision;
- ``delete(key, revision=None)``        conditional when a revision is given;
- ``commit([Write, ...])``              several conditional writes, all or nothing (one etcd txn);
- ``watch(prefix, start_revision)``     events with revision >= start_revision, in order; raises
                                        CompactedError when that history is gone (see
                                        :func:`podnet.datastore.sync.list_and_watch` for the resync).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes | None  # None for DELETE
    revision: int  # the revision of the write that produced the event
    # False while more events of the same revision (one transaction) follow: a consumer that acts
    # on its state should wait for the revision's last event, or it acts on a state that never was.
    last_of_revision: bool = True


def mark_revision_ends(events: Sequence[WatchEvent]) -> list[WatchEvent]:
    """``events`` (whole revisions, in order) with ``last_of_revision`` set on each revision's last."""
    out = list(events)
    for i, event in enumerate(out):
        last = i + 1 == len(out) or out[i + 1].revision != event.revision
        if event.last_of_revision != last:
            out[i] = replace(event, last_of_revision=last)
    return out


# ``expect`` of a Write: None = unconditional, 0 = key must not exist, N = mod_revision must be N.
MUST_NOT_EXIST = 0


@dataclass(frozen=True)
class Write:
    """One write of an atomic :meth:`Datastore.commit`. ``value=None`` deletes the key."""

    key: str
    value: bytes | None
    expect: int | None = None


class Watch(Protocol):
    """An open watch: iterate for events; ``close()`` ends it (also ends the iteration)."""

    def __iter__(self) -> Iterator[WatchEvent]: ...

    def close(self) -> None: ...


@runtime_checkable
class Datastore(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` sorted by key, and the store revision they were read at."""
        ...

    def revision(self) -> int: ...

    def create(self, key: str, value: bytes) -> int: ...

    def update(self, key: str, value: bytes, revision: int) -> int: ...

    def put(self, key: str, value: bytes) -> int: ...

    def delete(self, key: str, revision: int | None = None) -> int: ...

    def commit(self, writes: Sequence[Write]) -> int: ...

    def watch(self, prefix: str, start_revision: int) -> Watch: ...

    def compact(self, revision: int) -> None: ...

    def close(self) -> None: ...
