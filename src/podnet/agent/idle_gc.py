"""Python's cyclic garbage collector, run while the agent is idle rather than in a policy sync.

A full (generation 2) collection walks every object the collector tracks. An agent holding a large
cluster's policy tracks hundreds of thousands (the Cilium scale bench: ~300,000 on a node, a walk
of ~120 ms), and Python starts one by itself whenever enough objects have survived since the last,
whatever the agent is doing: it was the slowest change in ``podnet.bench.cilium_scale``. The
keeper moves the long-lived objects out of the way: once the syncer has been quiet for ``quiet``
seconds (at most every ``every`` seconds), it runs the full collection itself and ``gc.freeze()``s
what survived, so the automatic collections that follow walk only what was made since. A frozen
object that dies is still freed by reference counting; only a reference cycle among frozen
objects waits for the next idle collection, which unfreezes everything first.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from podnet.agent.log import kv

log = logging.getLogger(__name__)


class IdleCollector:
    """Full collections while ``idle()`` (seconds the agent has had nothing to apply) ≥ ``quiet``."""

    def __init__(
        self,
        idle: Callable[[], float],
        quiet: float = 2.0,
        every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle, self.quiet, self.every, self.clock = idle, quiet, every, clock
        self._last = clock() - every  # the first quiet moment collects
        self.collections = 0
        self.last_ms = 0.0
        self.frozen = 0  # objects frozen by the last collection
        self._stop = threading.Event()

    def step(self) -> bool:
        """Collect and freeze if it is time and the agent is quiet; whether it did."""
        if self.clock() - self._last < self.every or self.idle() < self.quiet:
            return False
        started = time.perf_counter()
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.last_ms = (time.perf_counter() - started) * 1e3
        self.frozen = gc.get_freeze_count()
        self.collections += 1
        self._last = self.clock()
        kv(log, logging.DEBUG, "idle gc", ms=round(self.last_ms, 1), frozen=self.frozen)
        return True

    def start(self, poll: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.wait(poll):
                self.step()

        threading.Thread(target=run, name="idle-gc", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
