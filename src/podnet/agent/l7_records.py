"""The L7 proxy's records: one JSON datagram per HTTP request from HAProxy
(:data:`podnet.calc.haproxy.LOG_FORMAT`), read on the proxy's records socket and added to the
agent's event ring (:mod:`podnet.agent.drops`) as ``type: "l7"`` records, which
``podnet monitor --type l7`` prints (Cilium's ``cilium monitor -t l7``)::

    HAProxy ──syslog (raw JSON)──▶ records.sock ──▶ L7Records thread ──annotate──▶ event ring

A record: time, node, ``protocol`` http, ``direction`` (the frontend: ingress or egress), source
and destination addresses, ports and pods, ``method``, ``url``, ``status``, ``latencyMs`` (the
whole request, HAProxy's ``%Ta``), ``verdict`` (``DENIED`` when no rule allowed it: the proxy
answered 403 itself; else ``FORWARDED``), ``rule`` (the HTTP rule that allowed it, or
``default-deny``), ``peerIdentity``. A datagram that is not such an object is counted in ``bad``
and skipped.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from podnet.agent.log import kv
from podnet.calc.haproxy import DEFAULT_DENY
from podnet.calc.policy import PodInfo

log = logging.getLogger("podnet.agent.l7")
BATCH = 256


def _split(address: str) -> tuple[str, int | None]:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if port.isdigit() else (address, None)


def record_from(raw: bytes, node: str, pod_of: Callable[[str], str | None]) -> dict[str, Any] | None:
    """The event-ring record of one HAProxy datagram, or None if it is not one."""
    try:
        doc = json.loads(raw.decode("utf-8", "replace").strip())
        src, sport = _split(str(doc["client"]))
        dst, dport = _split(str(doc["server"]))
        status = int(doc["status"])
        rule = str(doc.get("rule") or DEFAULT_DENY)
        return {
            "type": "l7",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "node": node,
            "protocol": "http",
            "direction": str(doc.get("frontend", "")),
            "src": src,
            "sport": sport,
            "dst": dst,
            "dport": dport,
            "srcPod": pod_of(src),
            "dstPod": pod_of(dst),
            "method": str(doc.get("method", "")),
            "url": str(doc.get("uri", "")),
            "status": status,
            "latencyMs": float(doc.get("time_ms", 0)),
            "verdict": "DENIED" if rule == DEFAULT_DENY else "FORWARDED",
            "rule": rule,
            "peerIdentity": doc.get("peer"),
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class L7Records:
    """Reads ``path`` (a UNIX datagram socket it binds) into ``sink`` (the event ring's
    ``add_records``), the addresses named by ``pods()``."""

    def __init__(
        self,
        path: str,
        node: str,
        pods: Callable[[], Iterable[PodInfo]],
        sink: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.path, self.node, self._pods, self._sink = path, node, pods, sink
        self.read = 0
        self.bad = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the socket (before the proxy starts: it sends there) and start reading."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="l7-records", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                raws = [self._sock.recv(65536)]
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    kv(log, logging.WARNING, "L7 records not readable", error=str(exc))
                return
            self._sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while len(raws) < BATCH:
                    raws.append(self._sock.recv(65536))
            self._sock.settimeout(0.5)
            by_ip = {ip: pod.key for pod in self._pods() for ip in pod.ips}
            records = [record_from(raw, self.node, by_ip.get) for raw in raws]
            good = [r for r in records if r is not None]
            self.read += len(good)
            self.bad += len(records) - len(good)
            if good:
                self._sink(good)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
