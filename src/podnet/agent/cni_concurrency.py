"""The CNI service's concurrency primitives: a shared/alone gate, per-key locks, a group commit."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Gate:
    """Many holders at once (:meth:`shared`) or one alone (:meth:`alone`, which waits for the shared
    holders to leave and holds new ones back while it waits)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._alone and not self._shared)
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


class KeyedLocks:
    """One holder per key at a time; a key's lock exists while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                _, users = self._locks[key]
                if users <= 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class GroupCommit(Generic[T, R]):
    """Requests that arrive while one batch runs under ``lock`` go together in the next one.

    :meth:`submit` queues its item, then takes ``lock``; whoever gets it first runs every item
    queued so far in one call of ``run`` (which returns one result per item, an exception being a
    result), and the others find theirs done. With one request at a time, a batch is one item."""

    def __init__(
        self, lock: threading.Lock, run: Callable[[Sequence[T]], Sequence[R | BaseException]]
    ) -> None:
        self._lock = lock
        self._run = run
        self._guard = threading.Lock()
        self._pending: list[_Slot[T, R]] = []

    def submit(self, item: T) -> R:
        slot: _Slot[T, R] = _Slot(item)
        with self._guard:
            self._pending.append(slot)
        with self._lock:
            if not slot.done:
                with self._guard:
                    batch, self._pending = self._pending, []
                try:
                    results = list(self._run([s.item for s in batch]))
                except BaseException as exc:  # run failed as a whole: every item gets its error
                    results = [exc] * len(batch)
                for waiting, result in zip(batch, results, strict=True):
                    waiting.result, waiting.done = result, True
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result  # type: ignore[return-value]


class _Slot(Generic[T, R]):
    __slots__ = ("done", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.result: R | BaseException | None = None
