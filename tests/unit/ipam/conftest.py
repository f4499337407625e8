"""Fixtures for the IPAM unit tests: a datastore wrapper that injects conflicts, races and crashes."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from podnet.datastore.base import Write
from podnet.datastore.memory import MemoryDatastore
from podnet.errors import ConflictError


class Crash(Exception):
    """Stands for the process dying between two datastore writes."""


class FlakyDatastore:
    """Wraps a datastore; ``commit`` can fail with ConflictError, run a racing writer first, or crash.

    - ``conflict_rate``: probability that a commit fails with ConflictError without being applied;
    - ``before_commit(n, writes)``: called before the n-th commit (0-based), e.g. to let another
      client write first, so the CAS fails for real;
    - ``crash_at``: the n-th commit raises :class:`Crash`, after being applied if ``crash_after_apply``
      (the "write happened but the caller never learnt it" case) or before it otherwise.
    """

    def __init__(
        self,
        inner: Any,
        *,
        conflict_rate: float = 0.0,
        seed: int = 0,
        before_commit: Callable[[int, Sequence[Write]], None] | None = None,
        crash_at: int | None = None,
        crash_after_apply: bool = False,
    ) -> None:
        self.inner = inner
        self.conflict_rate = conflict_rate
        self.rng = random.Random(seed)
        self.before_commit = before_commit
        self.crash_at = crash_at
        self.crash_after_apply = crash_after_apply
        self.commits = 0
        self.injected = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, writes: Sequence[Write]) -> int:
        n = self.commits
        self.commits += 1
        if self.before_commit is not None:
            self.before_commit(n, writes)
        if self.crash_at == n:
            if self.crash_after_apply:
                self.inner.commit(writes)
            raise Crash(f"crashed at commit {n}")
        if self.conflict_rate and self.rng.random() < self.conflict_rate:
            self.injected += 1
            raise ConflictError("injected conflict")
        return self.inner.commit(writes)


@pytest.fixture
def store() -> MemoryDatastore:
    return MemoryDatastore()


@pytest.fixture
def flaky() -> type[FlakyDatastore]:
    return FlakyDatastore


@pytest.fixture
def crash_type() -> type[Crash]:
    return Crash
