"""Where an agent's memory goes, on demand: tracemalloc snapshots written on SIGUSR2.

    podnet-agent --tracemalloc FILE ...   (or PODNET_TRACEMALLOC=FILE)   then   kill -USR2 <pid>

Asked for, :func:`install` starts tracemalloc (before the agent's heavy imports, so
they are traced too) and makes SIGUSR2 write ``FILE`` (``{pid}`` in it is replaced): the process's
RSS, tracemalloc's traced total and peak, and the top allocation sites by line, as JSON. Tracing
costs memory and CPU of its own (about twice the traced size), so it is off unless asked for;
``podnet.bench.scale_memory`` turns it on for a separate run from the one whose RSS it reports.
"""

from __future__ import annotations

import json
import os
import signal
import tracemalloc
from typing import Any

ENV = "PODNET_TRACEMALLOC"
TOP = 25


def rss_mib() -> float:
    """This process's VmRSS in MiB (0 where /proc has no such line)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 2)
    return 0.0


def top_sites(snapshot: tracemalloc.Snapshot, top: int = TOP) -> list[dict[str, Any]]:
    """The ``top`` allocation sites of ``snapshot`` by size: ``file:line``, KiB and blocks."""
    ignore = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>"))
    stats = snapshot.filter_traces(ignore).statistics("lineno")
    return [
        {
            "site": f"{_short(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            "kib": round(s.size / 1024, 1),
            "blocks": s.count,
        }
        for s in stats[:top]
    ]


def _short(path: str) -> str:
    """A path from its package on (``podnet/calc/cluster.py``, ``pydantic/main.py``)."""
    for marker in ("/site-packages/", "/src/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return path


def report() -> dict[str, Any]:
    import sys
    from collections import Counter

    current, peak = tracemalloc.get_traced_memory()
    packages = Counter(name.split(".")[0] for name in list(sys.modules))
    return {
        "rss_mib": rss_mib(),
        "modules": len(sys.modules),
        "top_packages": dict(packages.most_common(12)),  # by modules imported
        "traced_mib": round(current / 2**20, 2),
        "traced_peak_mib": round(peak / 2**20, 2),
        "top": top_sites(tracemalloc.take_snapshot()),
    }


def install(target: str | None = None) -> str | None:
    """Start tracing and the SIGUSR2 dump when ``target`` (else ``$PODNET_TRACEMALLOC``) names a
    file; returns the file's path, or None when nothing was asked for."""
    target = target or os.environ.get(ENV)
    if not target:
        return None
    path = target.replace("{pid}", str(os.getpid()))
    tracemalloc.start(1)

    def dump(*_: object) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(report(), f, indent=1)
        os.replace(tmp, path)  # a reader never sees half a file

    signal.signal(signal.SIGUSR2, dump)
    return path
