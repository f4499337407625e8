"""Watches the kernel state podnet owns on lab nodes while a fault happens.

A restart that "changes nothing" must not even rewrite: :class:`KernelWatch` runs the kernel's own
change monitors in every node namespace and keeps the events about podnet's state —

- routes of podnet's protocol (112) and BIRD's (``ip monitor route``),
- permanent neighbour entries (VXLAN peers) and static/permanent FDB entries (``ip monitor neigh``,
  ``bridge monitor fdb``),
- anything in podnet's nftables tables (``nft monitor``: rules, sets, elements, chains),

and :func:`bpf_maps` snapshots the contents of every map pinned under the lab's bpffs (IPIP, socket
load balancing), to compare before and after. An empty event list and equal snapshots mean the
fault left the data path exactly as it was — provided every monitor listened the whole time, so:

- **readiness**: after starting the monitors, the watch makes a marker change of each kind in each
  namespace (a proto-112 blackhole route in routing table :data:`MARKER_TABLE`, a permanent
  neighbour and a permanent FDB entry on a veth of its own, kept down, a ``podnet_kwatch_*`` nft
  table added and deleted in one transaction) and waits until every monitor reported it, made
  again every :data:`ROUND` seconds since a monitor may subscribe late. No fixed sleep.
- **closing control**: :meth:`KernelWatch.stop` does the same again; a monitor that does not report
  a change made on purpose after the fault was deaf. A monitor reports its events in order, so once
  it reported the closing marker, everything the fault did before it has been read.
- **liveness**: a monitor that exited, or wrote anything to stderr (``ip monitor`` prints a netlink
  receive error when it lost events, and goes on), fails the watch, named.

Marker changes pass :func:`relevant` (they look like podnet's own state, so they prove the whole
path) and are then recognised by their table, device or name, and never counted.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from podnet.lab.naming import LabError

MONITORS = {
    "route": ["ip", "monitor", "route"],
    "neigh": ["ip", "monitor", "neigh"],
    "fdb": ["bridge", "monitor", "fdb"],
    "nft": ["nft", "monitor"],
}
MARKER_TABLE = 28782  # "pn": a routing table nothing else uses (podnet's routes live in main)
MARKER_NET = ipaddress.IPv4Network("198.18.0.0/15")  # benchmarking range (RFC 2544): no lab address
MARKER_DEVICE = "pnkw"  # + the watch's token: a veth pair, down, that holds the neighbour/FDB markers
MARKER_NFT = "podnet_kwatch_"
READY_TIMEOUT = 5.0  # seconds for every monitor to report a marker change
ROUND = 0.25  # a marker change not yet reported is made again after this


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


@dataclass(frozen=True)
class Markers:
    """The harmless changes one watch makes on purpose in a node namespace, and how to recognise
    them in the monitors' output. Round ``n`` has identifiers of its own (address, MAC, table)."""

    token: str  # 6 hex digits, this watch's own

    @property
    def device(self) -> str:
        return f"{MARKER_DEVICE}{self.token}"

    def ident(self, kind: str, n: int) -> str:
        """What a monitor of ``kind`` prints (as one word) for the marker change of round ``n``."""
        serial = int(self.token, 16) + n
        if kind in ("route", "neigh"):
            return str(MARKER_NET[serial % MARKER_NET.num_addresses])
        if kind == "fdb":
            low = serial % (1 << 24)
            return "02:70:6e:" + ":".join(f"{(low >> s) & 0xFF:02x}" for s in (16, 8, 0))
        return f"{MARKER_NFT}{self.token}_{n}"

    @staticmethod
    def is_marker(kind: str, line: str) -> bool:
        """Is this line about a marker change (of any watch)? Those are never counted."""
        words = line.split()
        pairs = list(itertools.pairwise(words))
        if kind == "route":
            return ("table", str(MARKER_TABLE)) in pairs
        if kind in ("neigh", "fdb"):
            return any(a == "dev" and b.startswith(MARKER_DEVICE) for a, b in pairs)
        return any(MARKER_NFT in w for w in words)

    def commands(self, ns: str, n: int, kinds: Iterable[str]) -> list[tuple[list[str], str]]:
        """The commands (argv, stdin) that make and undo round ``n``'s markers of ``kinds`` in ``ns``."""
        kinds = set(kinds)
        addr, mac, dev = self.ident("route", n), self.ident("fdb", n), self.device
        ip_batch = ""
        if "route" in kinds:
            route = f"blackhole {addr}/32 table {MARKER_TABLE} proto 112"
            ip_batch += f"route add {route}\nroute del {route}\n"
        if "neigh" in kinds:
            ip_batch += f"neigh add {addr} lladdr {mac} dev {dev} nud permanent\nneigh del {addr} dev {dev}\n"
        out = [(["ip", "-n", ns, "-batch", "-"], ip_batch)] if ip_batch else []
        if "fdb" in kinds:
            fdb = f"{mac} dev {dev} permanent"
            out.append((["bridge", "-n", ns, "-batch", "-"], f"fdb add {fdb}\nfdb del {fdb}\n"))
        if "nft" in kinds:
            table = f"table inet {self.ident('nft', n)}"
            out.append((["ip", "netns", "exec", ns, "nft", "-f", "-"], f"add {table}\ndelete {table}\n"))
        return out


def classify(kind: str, line: str) -> tuple[str, str]:
    """A monitor's output line → ("event", line): a change to podnet's state; ("marker", line): a
    marker change (it passes :func:`relevant` too: the control proves the path events take); or
    ("noise", line)."""
    line = line.strip()
    if not relevant(kind, line):
        return "noise", line
    return ("marker" if Markers.is_marker(kind, line) else "event"), line


class Monitor:
    """One monitor process in one namespace: its events about podnet's state (markers left out),
    the words of the marker lines it reported, its stderr (in a file: a full pipe would block it)."""

    def __init__(self, ns: str, kind: str) -> None:
        self.ns, self.kind = ns, kind
        self.events: list[str] = []
        self._seen: set[str] = set()
        self._eof = False
        self._cond = threading.Condition()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self._stderr_data: bytes | None = None
        self._ready_at = 0  # stderr bytes written before the monitor was ready (start-up noise)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *MONITORS[kind]],  # ip execs the monitor: same pid
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def name(self) -> str:
        return f"`{' '.join(MONITORS[self.kind])}` in {self.ns} (pid {self.pid})"

    def feed(self, line: str) -> None:
        """One line of the monitor's output: a marker (its words noted), an event, or noise."""
        what, text = classify(self.kind, line)
        with self._cond:
            if what == "marker":
                self._seen.update(text.split())
                self._cond.notify_all()
            elif what == "event":
                self.events.append(f"{self.kind}: {text}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.feed(line)
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def seen(self, idents: Iterable[str]) -> bool:
        with self._cond:
            return not self._seen.isdisjoint(idents)

    def wait(self, idents: list[str], until: float) -> bool:
        """Wait until ``until`` (monotonic) for one of ``idents`` to be reported."""
        with self._cond:
            while self._seen.isdisjoint(idents) and not self._eof:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return not self._seen.isdisjoint(idents)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> None:
        """It reported a marker: what it writes to stderr from now on may mean lost events."""
        self._ready_at = os.fstat(self._stderr.fileno()).st_size

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)  # a stopped monitor acts on SIGTERM once continued
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=2)
        self.stderr()
        self._stderr.close()

    def stderr(self, since_ready: bool = False) -> str:
        """What it wrote to stderr (``since_ready``: after it first reported a marker)."""
        data = self._stderr_data
        if data is None:
            self._stderr.seek(0)
            data = self._stderr.read()
            if self.proc.returncode is not None:
                self._stderr_data = data  # it exited: nothing more will come
        return data[self._ready_at if since_ready else 0 :].decode(errors="replace").strip()

    def verdict(self, dead: bool, deaf: bool, when: str, timeout: float) -> str | None:
        """Why this monitor's silence proves nothing (None: it listened the whole time)."""
        err = self.stderr()
        said = f"; stderr: {err[:300]}" if err else ""
        if dead:
            code = self.proc.returncode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            return f"{self.name} died ({how}){said}"
        if deaf:
            return (
                f"{self.name} is deaf: a {self.kind} change made on purpose {when} was not "
                f"reported within {timeout:g} s{said}"
            )
        late = self.stderr(since_ready=True)
        if late:
            return f"{self.name} wrote to stderr while watching (events may have been lost): {late[:300]}"
        return None


@dataclass
class Watched:
    """What a watch saw: podnet's kernel changes per namespace, and why they may not be the whole
    truth (``failures``: each dead, deaf or erring monitor, named)."""

    events: dict[str, list[str]]
    failures: list[str]
    monitors: int
    ready_seconds: float
    closing_seconds: float
    stderr: dict[str, str] = field(default_factory=dict)


class KernelWatch:
    """``start()`` before the fault, ``stop()`` after it; ``close()`` when the run failed.
    ``monitors`` are exposed (kind, namespace, pid) for tests that break one on purpose."""

    def __init__(self, netns: Iterable[str], timeout: float = READY_TIMEOUT) -> None:
        self.netns = list(netns)
        self.timeout = timeout
        self.markers = Markers(secrets.token_hex(3))
        self.monitors: list[Monitor] = []
        self.ready_seconds = 0.0
        self._round = 0
        self._closed = False

    def start(self) -> KernelWatch:
        """Start every monitor; return once each reported a marker change (else LabError)."""
        try:
            dev = self.markers.device
            for ns in self.netns:
                _run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p"])
            self.monitors = [Monitor(ns, kind) for ns in self.netns for kind in MONITORS]
            started = time.monotonic()
            unready = self._control(self.monitors)
            self.ready_seconds = time.monotonic() - started
            for m in self.monitors:
                m.ready()
            if unready:
                reasons = [m.verdict(not m.alive(), True, "at the start", self.timeout) for m in unready]
                raise LabError(
                    "kernel monitor(s) not ready: " + "; ".join(r for r in reasons if r),
                    hint="ip, bridge and nft must be able to monitor the node namespaces",
                )
        except BaseException:
            self.close()
            raise
        return self

    def _control(self, monitors: list[Monitor]) -> list[Monitor]:
        """Make marker changes for ``monitors`` until each reported one (made again every ROUND
        seconds); return those that did not within the timeout (or exited)."""
        pending = [m for m in monitors if m.alive()]
        idents: dict[str, list[str]] = {kind: [] for kind in MONITORS}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            self._round += 1
            for kind in MONITORS:
                idents[kind].append(self.markers.ident(kind, self._round))
            for ns in dict.fromkeys(m.ns for m in pending):
                kinds = [m.kind for m in pending if m.ns == ns]
                for argv, script in self.markers.commands(ns, self._round, kinds):
                    _run(argv, script)
            until = min(deadline, time.monotonic() + ROUND)
            pending = [m for m in pending if not m.wait(idents[m.kind], until) and m.alive()]
        return [m for m in monitors if not m.seen(idents[m.kind])]

    def stop(self) -> Watched:
        """The closing control and the liveness check, then stop the monitors: what they saw."""
        started = time.monotonic()
        deaf = {id(m) for m in self._control(self.monitors)}
        closing = time.monotonic() - started
        dead = {id(m) for m in self.monitors if not m.alive()}
        self.close()
        failures = [
            reason
            for m in self.monitors
            if (reason := m.verdict(id(m) in dead, id(m) in deaf, "after the fault", self.timeout))
        ]
        events: dict[str, list[str]] = {ns: [] for ns in self.netns}
        for m in self.monitors:
            events[m.ns].extend(m.events)
        return Watched(
            events=events,
            failures=failures,
            monitors=len(self.monitors),
            ready_seconds=round(self.ready_seconds, 3),
            closing_seconds=round(closing, 3),
            stderr={m.name: err for m in self.monitors if (err := m.stderr())},
        )

    def close(self) -> None:
        """Stop every monitor and remove the marker devices (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for m in self.monitors:
            m.close()
        for ns in self.netns:
            subprocess.run(["ip", "-n", ns, "link", "del", self.markers.device], capture_output=True)


def _run(argv: list[str], stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip()}", hint="a kernel watch marker change failed")


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
