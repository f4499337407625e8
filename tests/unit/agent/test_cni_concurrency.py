"""The CNI service's concurrency primitives under real threads."""

from __future__ import annotations

import threading
import time

import pytest

from podnet.agent.cni_concurrency import Gate, GroupCommit, KeyedLocks


def test_group_commit_batches_what_arrives_while_a_batch_runs() -> None:
    lock = threading.Lock()
    batches: list[list[int]] = []
    release = threading.Event()

    def run(items):  # type: ignore[no-untyped-def]
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(5)  # the first batch holds the lock while the others queue
        return [i * 10 if i != 7 else ValueError("seven") for i in items]

    group: GroupCommit[int, int] = GroupCommit(lock, run)
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            results[i] = group.submit(i)
        except ValueError as exc:
            results[i] = exc

    first = threading.Thread(target=submit, args=(0,))
    first.start()
    while not batches:
        time.sleep(0.001)
    others = [threading.Thread(target=submit, args=(i,)) for i in range(1, 10)]
    for t in others:
        t.start()
    while len(group._pending) < 9:  # every other request queued behind the running batch
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert batches[0] == [0] and sorted(batches[1]) == list(range(1, 10)) and len(batches) == 2
    assert {i: r for i, r in results.items() if i != 7} == {i: i * 10 for i in range(10) if i != 7}
    assert isinstance(results[7], ValueError)  # an item's exception is raised to its submitter only


def test_group_commit_run_failing_as_a_whole_fails_each_item() -> None:
    def run(items):  # type: ignore[no-untyped-def]
        raise RuntimeError("datastore gone")

    group: GroupCommit[int, int] = GroupCommit(threading.Lock(), run)
    with pytest.raises(RuntimeError, match="datastore gone"):
        group.submit(1)


def test_keyed_locks_serialise_one_key_only() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    with locks.hold("a"):
        t = threading.Thread(target=lambda: inside.append("b") or None)
        with locks.hold("b"):  # another key: not blocked
            t.start()
            t.join(1)
        blocked = threading.Thread(target=lambda: locks.hold("a").__enter__() and None)
        blocked.daemon = True
        blocked.start()
        blocked.join(0.05)
        assert blocked.is_alive()  # waits for "a"
    blocked.join(1)
    assert not blocked.is_alive() and inside == ["b"]


def test_gate_alone_waits_for_shared_holders_and_holds_new_ones_back() -> None:
    gate = Gate()
    order: list[str] = []
    with gate.shared():
        alone = threading.Thread(target=lambda: _hold(gate.alone(), order, "alone"))
        alone.start()
        while gate._waiting != 1:  # alone is waiting for us
            time.sleep(0.001)
        late = threading.Thread(target=lambda: _hold(gate.shared(), order, "late shared"))
        late.start()
        time.sleep(0.05)
        assert order == []  # alone waits for us; the late one waits behind alone
    alone.join(2)
    late.join(2)
    assert order == ["alone", "late shared"]


def _hold(ctx, order: list[str], name: str) -> None:  # type: ignore[no-untyped-def]
    with ctx:
        order.append(name)
