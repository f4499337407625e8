"""The idle collector: a full collection and a freeze only when the agent has been quiet long
enough and not more often than asked; a reference cycle that died before it is freed by it, and
the frozen objects are out of the automatic collections' way."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from podnet.agent.idle_gc import IdleCollector
from podnet.agent.syncer import Syncer


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the test session's objects stay collectable


def test_collects_and_freezes_only_when_quiet_and_due():
    now, idle = [100.0], [0.0]
    keeper = IdleCollector(lambda: idle[0], quiet=2.0, every=30.0, clock=lambda: now[0])
    assert not keeper.step()  # busy (an apply runs or is pending)
    idle[0] = 1.9
    assert not keeper.step()  # not quiet long enough
    garbage = Cycle()
    dead = weakref.ref(garbage)
    del garbage
    gc.disable()  # no automatic collection may free the cycle: the keeper must (positive control)
    try:
        assert dead() is not None
        idle[0] = 2.0
        assert keeper.step()
        assert dead() is None  # the cycle was collected
        assert keeper.collections == 1 and keeper.frozen > 0 and gc.get_freeze_count() > 0
        survivor = Cycle()
        assert not keeper.step()  # quiet, but collected 0 s ago
        now[0] += 29.9
        assert not keeper.step()
        now[0] += 0.1
        assert keeper.step() and keeper.collections == 2
        assert gc.get_freeze_count() > 10 * len(gc.get_objects())  # frozen: not walked any more
        assert survivor.me is survivor
    finally:
        gc.enable()


def test_the_syncer_reports_idle_time_only_between_applies():
    syncer = Syncer.__new__(Syncer)
    syncer._applying, syncer._idle_since = True, 0.0
    syncer._trigger = threading.Event()
    assert syncer.idle_seconds() == 0.0  # an apply runs
    syncer._applying, syncer._idle_since = False, time.monotonic() - 5
    assert syncer.idle_seconds() >= 5
    syncer._trigger.set()
    assert syncer.idle_seconds() == 0.0  # one is pending
