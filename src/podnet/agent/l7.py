"""The node's L7 proxy as the agent drives it (Cilium profile).

    policy sync ── calc.policy_l7.http_policies(plan) ──▶ apply(): plumbing, HAProxy config (hitless)
                                                        ──▶ then the maps with their redirect entries
    HAProxy exits ──▶ watchdog thread ──▶ started again at once; the gap is measured and kept
    HAProxy's records socket ──▶ agent.l7_records ──▶ the event ring (``podnet monitor --type l7``)
    DNS rules ── calc.policy_l7.dns_policies(plan) ──▶ agent.dns_proxy (in this process) ──▶ records

The proxy starts with the first redirect entry a local endpoint needs and keeps running after (an
empty configuration refuses everything, and nothing is redirected to it). The order inside a sync
is proxy first, maps after: a redirect entry never points at a proxy that has not got its rules.
While the proxy is down, the nftables rules drop what is marked for it (dataplane.l7proxy) and the
tc programs let nothing of a redirected connection reach its server but the proxy's own packets:
redirected ports fail closed for the gap.

The proxy runs in a cgroup of its own below the pods' (``<cgroup>/l7-proxy``), by which its packets
are told apart. When the agent stops, the proxy keeps serving with its last configuration (as the
maps keep theirs); the next agent stops it before starting its own, which would otherwise share
its listeners (``SO_REUSEPORT``) with an old configuration: L7 connections do not survive an
agent restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from podnet.agent.log import kv
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.policy import PodInfo
from podnet.calc.policy_inputs import CiliumPlan
from podnet.errors import PodnetError

log = logging.getLogger("podnet.agent.l7")

CGROUP_NAME = "l7-proxy"


class L7Unavailable(PodnetError):
    """The node cannot run the L7 proxy that its endpoints' HTTP rules need."""


class NodeL7:
    """One node's proxy, its watchdog and its records reader."""

    def __init__(
        self,
        node: str,
        state_dir: str,
        pods_cgroup: str | None,
        pods: Callable[[], Iterable[PodInfo]],
        sink: Callable[[Iterable[dict[str, Any]]], None],
        on_answer: Callable[[str, list[str], int], None] | None = None,
        exporter: str | None = None,
    ) -> None:
        self.node, self.state_dir, self.pods_cgroup = node, state_dir, pods_cgroup
        self.exporter = exporter  # where the proxy serves its Prometheus metrics (None: nowhere)
        self._on_answer = on_answer  # the DNS proxy's allowed answers (toFQDNs learns from them)
        self._pods, self._sink = pods, sink
        self.proxy: Any = None  # dataplane.l7proxy.L7Proxy, from the first redirect entry on
        self.records: Any = None  # agent.l7_records.L7Records
        self.dns: Any = None  # agent.dns_proxy.DnsProxy, started with the HTTP proxy
        self.gaps: list[float] = []  # seconds from the proxy's exit to its listeners being back
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proxy is not None and self.proxy.running() and self.dns is not None

    def apply(self, plan: CiliumPlan, records: Iterable[EndpointRecord]) -> bool:
        """The proxy enforces the HTTP rules of ``plan``'s maps for the endpoints of ``records``
        (started when the first is needed). True when a new configuration went into force. Raises
        (the sync fails, the maps stay as they were) when the proxy cannot run or refuses it."""
        from podnet.calc.policy_l7 import dns_policies, http_policies

        addresses = {r.pod_key: next((a for a in r.addresses if ":" not in a), "") for r in records}
        policies = http_policies(plan.maps, addresses)
        lookups = dns_policies(plan.maps, addresses)
        with self._lock:
            if self.proxy is None and not policies and not lookups:
                return False
            try:
                if self.proxy is None:
                    self._start()
                ipcache = {prefix: entry.identity for prefix, entry in plan.ipcache.items()}
                changed = bool(self.proxy.apply(policies, ipcache))
                changed |= self.dns.update(lookups, ipcache)
            except PodnetError as exc:
                self.last_error = exc.message
                raise
            self.last_error = None
        if changed:
            kv(log, logging.INFO, "L7 proxy configured", policies=len(policies))
        return changed

    def _start(self) -> None:
        from podnet.agent.dns_proxy import DnsProxy
        from podnet.agent.l7_records import L7Records
        from podnet.calc.l7_dns import DNS_PROXY_PORT
        from podnet.dataplane.l7proxy import L7Proxy
        from podnet.dataplane.sock_lb import mount_cgroup2_privately

        if self.pods_cgroup is None:
            raise L7Unavailable(
                "HTTP rules need the L7 proxy, and the proxy needs a cgroup (its packets are told "
                "apart by it)",
                hint="start the agent with --cgroup (the pods' cgroup v2 directory)",
            )
        if not os.path.exists(self.pods_cgroup):
            mount_cgroup2_privately(self.pods_cgroup)  # an agent started by `ip netns exec`
        proxy = L7Proxy(self.state_dir, os.path.join(self.pods_cgroup, CGROUP_NAME), exporter=self.exporter)
        os.makedirs(self.state_dir, exist_ok=True)
        proxy.stop()  # what a previous agent left: it would share the listeners (SO_REUSEPORT)
        proxy.ensure_plumbing()
        if self.records is None:
            self.records = L7Records(proxy.settings.log_socket, self.node, self._pods, self._sink)
            self.records.start()  # bound before HAProxy sends its first record
        if self.dns is None:
            self.dns = DnsProxy(
                self.node, DNS_PROXY_PORT, self._pods, self._sink, on_answer=self._on_answer
            ).start()
        self.proxy = proxy
        self._watchdog = threading.Thread(target=self._watch, name="l7-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Start the proxy again the moment it exits; keep how long it was away."""
        while not self._stop.is_set():
            process = self.proxy._process if self.proxy is not None else None
            if process is None:
                self._stop.wait(0.1)
                continue
            process.wait()
            died = time.monotonic()
            if self._stop.is_set():
                return
            with self._lock:
                try:
                    restarted = self.proxy.restart_if_dead()
                except PodnetError as exc:
                    self.last_error = exc.message
                    kv(log, logging.ERROR, "L7 proxy could not start again", error=exc.message)
                    self._stop.wait(1.0)
                    continue
            if restarted:
                gap = time.monotonic() - died
                self.gaps.append(gap)
                kv(log, logging.WARNING, "L7 proxy exited; started again", gap_ms=round(gap * 1000, 1))

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "restarts": len(self.gaps),
            "lastGapMs": round(self.gaps[-1] * 1000, 1) if self.gaps else None,
            "error": self.last_error,
            "records": {"bad": self.records.bad} if self.records is not None else None,
            "dns": (
                {"answered": self.dns.answered, "refused": self.dns.refused, "failed": self.dns.failed}
                if self.dns is not None
                else None
            ),
        }

    def close(self) -> None:
        """The agent is stopping: the watchdog and the records reader go; the proxy keeps serving
        with its last configuration (as the maps keep theirs) until the next agent replaces it."""
        self._stop.set()
        if self.records is not None:
            self.records.stop()
        if self.dns is not None:
            self.dns.stop()  # lookups fail closed until the next agent listens (nftables drops them)
