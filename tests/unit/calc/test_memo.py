"""GenerationMemo: remembers what the last two generations asked, forgets the rest."""

from __future__ import annotations

import pytest

from podnet.calc.memo import GenerationMemo


def test_hits_within_and_across_one_generation_then_forgets() -> None:
    calls: list[int] = []
    memo = GenerationMemo(lambda k: calls.append(k) or k * 2)
    assert memo(1) == 2 and memo(1) == 2 and calls == [1]
    memo.new_generation()
    assert memo(1) == 2 and calls == [1]  # asked last generation: still remembered (and kept)
    memo(2)
    memo.new_generation()
    memo.new_generation()  # two generations in which nobody asked
    assert len(memo) == 0
    memo(1)
    assert calls == [1, 2, 1]


def test_memory_follows_what_is_in_use_not_history() -> None:
    memo = GenerationMemo(lambda k: k)
    for generation in range(100):
        memo.new_generation()
        for k in range(generation * 10, generation * 10 + 10):  # a churn: new keys every sync
            memo(k)
    assert len(memo) == 20


def test_errors_are_not_remembered() -> None:
    calls: list[int] = []

    def compute(k: int) -> int:
        calls.append(k)
        raise ValueError(k)

    memo = GenerationMemo(compute)
    for _ in range(2):
        with pytest.raises(ValueError):
            memo(3)
    assert calls == [3, 3] and len(memo) == 0
