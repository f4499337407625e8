"""Watches the kernel state podnet owns on lab nodes while a fault happens.

A restart that "changes nothing" must not even rewrite: :class:`KernelWatch` runs the kernel's own
change monitors in every node namespace and keeps the events about podnet's state —

- routes of podnet's protocol (112) and BIRD's (``ip monitor route``),
- permanent neighbour entries (VXLAN peers) and static/permanent FDB entries (``ip monitor neigh``,
  ``bridge monitor fdb``),
- anything in podnet's nftables tables (``nft monitor``: rules, sets, elements, chains),

and :func:`bpf_maps` snapshots the contents of every map pinned under the lab's bpffs (IPIP, socket
load balancing), to compare before and after. An empty event list and equal snapshots mean the
fault left the data path exactly as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterable

_MONITORS = {
    "route": ["ip", "monitor", "route"],
    "neigh": ["ip", "monitor", "neigh"],
    "fdb": ["bridge", "monitor", "fdb"],
    "nft": ["nft", "monitor"],
}


def relevant(kind: str, line: str) -> bool:
    """Is this monitor line about state podnet owns (not traffic noise like ARP refreshes)?"""
    if kind == "route":
        return "proto 112" in line or "proto bird" in line
    if kind == "neigh":
        return "PERMANENT" in line
    if kind == "fdb":
        return "permanent" in line or "static" in line
    if kind == "nft":
        return "podnet_" in line
    return False


class KernelWatch:
    def __init__(self, netns: Iterable[str]) -> None:
        self.netns = list(netns)
        self.events: dict[str, list[str]] = {ns: [] for ns in self.netns}
        self._procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> KernelWatch:
        for ns in self.netns:
            for kind, cmd in _MONITORS.items():
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, *cmd],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                self._procs.append(proc)
                thread = threading.Thread(target=self._read, args=(ns, kind, proc), daemon=True)
                thread.start()
                self._threads.append(thread)
        time.sleep(0.3)  # the monitors subscribe before anything happens
        return self

    def _read(self, ns: str, kind: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if relevant(kind, line):
                with self._lock:
                    self.events[ns].append(f"{kind}: {line.strip()}")

    def stop(self) -> dict[str, list[str]]:
        time.sleep(0.3)  # late events of the last change
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(timeout=2)
        return {ns: list(lines) for ns, lines in self.events.items()}


def bpf_maps(pin_root: str) -> dict[str, object]:
    """Every map pinned under ``pin_root`` (recursively) → its contents (``bpftool map dump``)."""
    out: dict[str, object] = {}
    if not os.path.isdir(pin_root):
        return out
    for directory, _, files in os.walk(pin_root):
        for name in sorted(files):
            path = os.path.join(directory, name)
            info = subprocess.run(
                ["bpftool", "-j", "map", "show", "pinned", path], capture_output=True, text=True
            )
            if info.returncode != 0:
                continue  # a program pin, not a map
            kind = json.loads(info.stdout).get("type", "")
            if "lru" in kind or "percpu" in kind:
                continue  # affinity, reverse NAT, counters: traffic state, not configuration
            dump = subprocess.run(
                ["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True, text=True
            )
            out[os.path.relpath(path, pin_root)] = json.loads(dump.stdout) if dump.returncode == 0 else None
    return out
