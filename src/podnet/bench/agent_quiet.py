"""A fence for the benches: wait until the lab's agents are idle (their CPU over a short window),
so that the sync a change started does not run into the measurement that follows it."""

from __future__ import annotations

import time
from collections.abc import Callable

from podnet.lab.naming import LabNames

WINDOW = 0.5  # seconds over which the agents' CPU is read
BUSY = 0.05  # CPU seconds per second (all agents) above which they are still working


def agent_cpu(names: LabNames) -> float:
    """CPU seconds the lab's agents have used (their threads, from /proc)."""
    from podnet.lab.state import LabState, cpu_seconds

    return sum(
        cpu_seconds(p.pid) for p in LabState(names.state_dir).processes() if p.name.startswith("agent-")
    )


def wait_quiet(
    cpu: Callable[[], float],
    timeout: float,
    window: float = WINDOW,
    busy: float = BUSY,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """Seconds until ``cpu`` (a running total) grew by less than ``busy`` per second over one
    ``window``; TimeoutError after ``timeout``."""
    started = clock()
    last = cpu()
    while True:
        sleep(window)
        now = cpu()
        if (now - last) / window < busy:
            return clock() - started
        if clock() - started > timeout:
            raise TimeoutError(
                f"the agents were still busy ({(now - last) / window:.2f} CPU s/s) after {timeout:g} s"
            )
        last = now


def wait_agents_quiet(names: LabNames, timeout: float = 120.0) -> float:
    """:func:`wait_quiet` over the agents of lab ``names``."""
    return wait_quiet(lambda: agent_cpu(names), timeout)
