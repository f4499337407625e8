"""A memo for pure functions asked the same questions sync after sync, bounded by what is in use.

``functools.lru_cache`` bounds entries, not bytes, and keeps every distinct question until it is
evicted: keyed by set contents, it grew an agent by ~3 % a cycle under pod and policy churn
(``podnet.bench.churn``). :class:`GenerationMemo` keeps only what the last two generations (syncs)
asked: an unchanged set still hits, and memory follows the current state, not its history.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GenerationMemo(Generic[K, V]):
    """``memo(key)`` = ``compute(key)``, remembered for this generation and the next;
    ``new_generation()`` once per sync forgets what the one before the last did not ask."""

    def __init__(self, compute: Callable[[K], V]) -> None:
        self._compute = compute
        self._current: dict[K, V] = {}
        self._previous: dict[K, V] = {}
        self._lock = threading.Lock()

    def __call__(self, key: K) -> V:
        with self._lock:
            if key in self._current:
                return self._current[key]
            if key in self._previous:
                value = self._current[key] = self._previous.pop(key)
                return value
        value = self._compute(key)  # outside the lock: may be slow, may raise (nothing stored)
        with self._lock:
            self._current[key] = value
        return value

    def new_generation(self) -> None:
        with self._lock:
            self._previous, self._current = self._current, {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class ObjectMemo(Generic[V]):
    """What a computation made of one object under one context, remembered per name while the
    object is the same one (identity: the watch cache replaces an object when it changes, never
    edits it) and the context is equal. Nothing is hashed but the name and the context, so a
    memo hit costs the same for a policy of one rule or of a thousand. ``retain(names)`` forgets
    every other name (deleted objects); one entry per name bounds the memory."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[object, Hashable, V]] = {}
        self._lock = threading.Lock()

    def get(self, name: Hashable, obj: object, context: Hashable, compute: Callable[[], V]) -> V:
        with self._lock:
            found = self._entries.get(name)
        if found is not None and found[0] is obj and found[1] == context:
            return found[2]
        value = compute()  # outside the lock: may be slow, may raise (nothing stored)
        with self._lock:
            self._entries[name] = (obj, context, value)
        return value

    def peek(self, name: Hashable) -> tuple[object, Hashable, V] | None:
        """What is remembered under ``name``: (object, context, value), or None."""
        with self._lock:
            return self._entries.get(name)

    def retain(self, names: set[Hashable]) -> None:
        with self._lock:
            for name in self._entries.keys() - names:
                del self._entries[name]

    def __len__(self) -> int:
        return len(self._entries)
