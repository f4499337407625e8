"""The benches' idle fence: it waits through busy windows and gives up when they never end."""

from __future__ import annotations

import pytest

from podnet.bench.agent_quiet import wait_quiet


class FakeAgents:
    """A CPU total that grows by ``busy[i]`` CPU seconds in window i, then stays (a fake clock)."""

    def __init__(self, busy: list[float]) -> None:
        self.busy, self.total, self.now, self.reads = list(busy), 0.0, 0.0, 0

    def cpu(self) -> float:
        self.reads += 1
        return self.total

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.busy:
            self.total += self.busy.pop(0)

    def clock(self) -> float:
        return self.now


def test_it_returns_after_the_first_quiet_window() -> None:
    agents = FakeAgents([0.4, 0.3, 0.01])  # two busy windows of 0.5 s, then 0.02 CPU s/s
    waited = wait_quiet(agents.cpu, timeout=10, sleep=agents.sleep, clock=agents.clock)
    assert waited == pytest.approx(1.5) and agents.reads == 4


def test_it_gives_up_on_agents_that_stay_busy() -> None:
    agents = FakeAgents([0.5] * 100)  # always one CPU second per second
    with pytest.raises(TimeoutError, match="still busy"):
        wait_quiet(agents.cpu, timeout=5, sleep=agents.sleep, clock=agents.clock)
    assert 5 <= agents.now <= 6


def test_idle_agents_pass_at_once() -> None:
    agents = FakeAgents([])
    assert wait_quiet(agents.cpu, timeout=10, sleep=agents.sleep, clock=agents.clock) == pytest.approx(0.5)
