"""GenerationMemo: remembers what the last two generations asked, forgets the rest."""

from __future__ import annotations

import pytest

from podnet.calc.memo import GenerationMemo, ObjectMemo


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


def test_object_memo_hits_only_the_same_object_under_an_equal_context() -> None:
    calls: list[str] = []
    memo: ObjectMemo[str] = ObjectMemo()
    first, second = object(), object()

    def compute(tag: str) -> str:
        calls.append(tag)
        return tag

    assert memo.get("p", first, "ctx", lambda: compute("a")) == "a"
    assert memo.get("p", first, "ctx", lambda: compute("b")) == "a"  # same object, same context
    assert memo.get("p", first, "ctx2", lambda: compute("c")) == "c"  # the inputs changed
    assert memo.get("p", second, "ctx2", lambda: compute("d")) == "d"  # the object was replaced
    assert calls == ["a", "c", "d"]


def test_object_memo_retain_forgets_deleted_names_and_a_failure_stores_nothing() -> None:
    memo: ObjectMemo[int] = ObjectMemo()
    obj = object()
    for name in range(10):
        memo.get(name, obj, None, lambda name=name: name)
    memo.retain({3, 4})
    assert len(memo) == 2

    def boom() -> int:
        raise ValueError("no")

    with pytest.raises(ValueError):
        memo.get("x", obj, None, boom)
    assert len(memo) == 2
