"""bench.monitor.LineMonitor: lines time-stamped as read, waiters woken, a dead monitor noticed."""

from __future__ import annotations

import time

from podnet.bench.monitor import LineMonitor


class Words(LineMonitor):
    def __init__(self, script: str) -> None:
        self.seen: dict[str, float] = {}
        super().__init__(None, ["sh", "-c", script])

    def parse(self, line: str) -> str | None:
        return line.split()[1] if line.startswith("word ") else None

    def record(self, item: str, at: float) -> None:
        self.seen.setdefault(item, at)


def test_a_line_printed_later_wakes_the_waiter_with_its_read_time() -> None:
    mon = Words("echo noise; echo word a; sleep 0.2; echo word b; sleep 30")
    try:
        started = time.perf_counter()
        at_b = mon.wait_until(lambda: mon.seen.get("b"), timeout=10)
        assert at_b is not None and started < at_b <= time.perf_counter()
        assert mon.seen["a"] < at_b and "noise" not in mon.seen
        assert mon.wait_until(lambda: mon.seen.get("never"), timeout=0.1) is None
    finally:
        mon.close()
    assert mon.proc.poll() is not None


def test_a_monitor_that_exits_ends_the_wait_before_the_timeout() -> None:
    mon = Words("echo word a")
    try:
        started = time.monotonic()
        assert mon.wait_until(lambda: mon.seen.get("b"), timeout=30) is None
        assert time.monotonic() - started < 5
    finally:
        mon.close()
