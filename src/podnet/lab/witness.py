"""The traffic witness: long-lived flows that record every gap and every broken connection.

A flow is one process in a client pod (it joins the pod's cgroup, then its netns, as the pod's own
processes do, so socket load balancing sees it) holding ONE keep-alive HTTP connection to a target
(a pod, or a ClusterIP) and sending a request every ``interval`` (50 ms, like Cilium's upgrade
test). It records, until it is told to stop (SIGTERM):

- ``replies`` and the longest gap between two consecutive replies (``max_gap_ms``), and how many
  gaps were longer than 100 ms;
- ``interrupted``: how many times the connection broke (an error, EOF, or no reply within
  ``timeout`` seconds); the flow then reconnects and goes on, so one fault is one interruption.

Run as ``python -m podnet.lab.witness IP PORT OUT.json [--interval 0.05] [--timeout 5]``; the summary
is written to ``OUT.json`` when the process ends. :class:`Witness` starts flows in a lab and
collects them; :func:`iperf_stream` runs an iperf3 stream alongside and reports its slowest interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podnet.lab.netns import Spawned

GAP_LIMIT_MS = 100.0
REQUEST = b"GET / HTTP/1.1\r\nHost: witness\r\n\r\n"


def _read_response(sock: socket.socket, deadline: float, pending: bytes) -> bytes:
    """One HTTP/1.1 response (Content-Length framed) from ``sock``; returns what is left over."""
    buf = pending
    while True:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            length = 0
            for line in buf[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            end = head_end + 4 + length
            if len(buf) >= end:
                return buf[end:]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply in time")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the peer")
        buf += data


@dataclass
class FlowStats:
    target: str
    replies: int = 0
    interrupted: int = 0
    connect_failures: int = 0
    max_gap_ms: float = 0.0
    gaps_over_limit: int = 0
    started: float = field(default_factory=time.time)
    ended: float = 0.0
    errors: list[str] = field(default_factory=list)

    def reply(self, gap: float | None) -> None:
        self.replies += 1
        if gap is not None:
            self.max_gap_ms = max(self.max_gap_ms, gap * 1000)
            if gap * 1000 > GAP_LIMIT_MS:
                self.gaps_over_limit += 1

    def failure(self, what: str, connected: bool) -> None:
        if connected:
            self.interrupted += 1
        else:
            self.connect_failures += 1
        if len(self.errors) < 20:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")


def run_flow(ip: str, port: int, interval: float, timeout: float, stop: list[bool]) -> FlowStats:
    """The flow loop (see the module docstring); ``stop[0]`` ends it."""
    stats = FlowStats(f"{ip}:{port}")
    sock: socket.socket | None = None
    pending = b""
    last_ok: float | None = None
    next_send = time.monotonic()
    while not stop[0]:
        try:
            if sock is None:
                sock = socket.create_connection((ip, port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending = b""
            sock.sendall(REQUEST)
            pending = _read_response(sock, time.monotonic() + timeout, pending)
            now = time.monotonic()
            stats.reply(None if last_ok is None else now - last_ok)
            last_ok = now
        except (OSError, ValueError) as exc:
            if stop[0]:
                break
            stats.failure(f"{type(exc).__name__}: {exc}", connected=sock is not None)
            if sock is not None:
                sock.close()
            sock = None
            last_ok = None if stats.replies == 0 else last_ok  # the gap spans the outage
        next_send += interval
        delay = next_send - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_send = time.monotonic()  # late (a fault, or the machine was busy): do not burst
    if sock is not None:
        sock.close()
    stats.ended = time.time()
    return stats


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podnet.lab.witness")
    parser.add_argument("ip")
    parser.add_argument("port", type=int)
    parser.add_argument("out")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--lab-prefix", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    stats = run_flow(args.ip, args.port, args.interval, args.timeout, stop)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as f:
        json.dump(stats.__dict__, f)
    os.replace(tmp, args.out)
    return 0


# --------------------------------------------------------------------------------- lab orchestration


@dataclass(frozen=True)
class Flow:
    label: str  # e.g. "pod→pod across nodes"
    netns: str
    cgroup: str | None
    ip: str
    port: int


class Witness:
    """Start flows in a lab, and later stop them and collect what each saw."""

    def __init__(self, directory: str, lab_prefix: str | None = None) -> None:
        self.directory = directory
        self.lab_prefix = lab_prefix
        self._running: list[tuple[Flow, Spawned, str]] = []
        os.makedirs(directory, exist_ok=True)

    def start(self, flows: Sequence[Flow], interval: float = 0.05, timeout: float = 5.0) -> None:
        from podnet.lab.netns import spawn

        for i, flow in enumerate(flows):
            out = os.path.join(self.directory, f"flow-{len(self._running) + i}.json")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            cmd = [
                sys.executable,
                "-m",
                "podnet.lab.witness",
                flow.ip,
                str(flow.port),
                out,
                "--interval",
                str(interval),
                "--timeout",
                str(timeout),
            ]
            if self.lab_prefix:
                cmd.append(f"--lab-prefix={self.lab_prefix}")
            proc = spawn(
                cmd,
                netns=flow.netns,
                cgroup=flow.cgroup,
                lab_prefix=self.lab_prefix,
                log=os.path.join(self.directory, "witness.log"),
            )
            self._running.append((flow, proc, out))

    def settle(self, seconds: float = 1.0) -> None:
        """Let the flows connect and reply for a moment; every flow must still be running."""
        time.sleep(seconds)
        for flow, proc, _ in self._running:
            if not proc.alive():
                log = os.path.join(self.directory, "witness.log")
                raise RuntimeError(f"witness flow {flow.label} exited early (see {log})")

    def stop(self, timeout: float = 10.0) -> dict[str, dict]:
        """SIGTERM every flow; their summaries by label."""
        from podnet.lab.netns import signal_process

        for _, proc, _ in self._running:
            signal_process(proc.pid, proc.start_time, signal.SIGTERM, group=True)
        results: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        for flow, proc, out in self._running:
            while not os.path.exists(out) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.stop()
            try:
                with open(out) as f:
                    results[flow.label] = json.load(f)
            except (OSError, ValueError) as exc:
                results[flow.label] = {"error": f"no summary: {exc}", "interrupted": -1, "max_gap_ms": -1}
        self._running = []
        return results


def summarize(results: dict[str, dict]) -> dict[str, float]:
    """The witness's verdict over all flows: longest gap and interrupted flows."""
    gaps = [r.get("max_gap_ms", -1) for r in results.values()]
    return {
        "flows": len(results),
        "max_gap_ms": round(max(gaps), 1) if gaps else 0.0,
        "interrupted_flows": sum(1 for r in results.values() if r.get("interrupted", 0) != 0),
        "replies": sum(r.get("replies", 0) for r in results.values()),
    }


if __name__ == "__main__":
    sys.exit(_main())
