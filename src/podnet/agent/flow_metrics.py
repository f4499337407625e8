"""Forwarding, drop, policy and L7 metrics of one node, in Prometheus' text format (the agent's
``/metrics``), for both profiles, with the real tools' names beside podnet's on Cilium nodes::

    kernel counters (read at each scrape)                 records of the event ring (as they come)
      Cilium: pn_metrics (reason, direction)                trace / drop / policy-verdict / l7
      Calico: table inet podnet_counters                      │
        │                                                    ▼
        ▼                                     podnet_policy_verdict_total{direction,match,action}
    podnet_forward_count_total{direction}    podnet_policy_l7_total{rule=received|forwarded|denied|
    podnet_forward_bytes_total{direction}                         parse_errors}
    podnet_drop_count_total{reason,direction}   podnet_http_requests_total{method,status}
    podnet_drop_bytes_total{reason,direction}   podnet_http_request_duration_seconds{method}
    (Calico drops: counted from NFLOG records)  podnet_flows_processed_total{type,verdict}
                                               podnet_flows_lost_total (events the kernel could not
                                                                        hand over)

Directions are the endpoint's: ``egress`` is what local pods sent (to anywhere, their node
included), ``ingress`` what local pods received. Drop reasons are Hubble's names
(``POLICY_DENIED``). On Cilium nodes the same figures are also exposed as ``cilium_forward_count_total``,
``cilium_forward_bytes_total``, ``cilium_drop_count_total``, ``cilium_drop_bytes_total`` (Cilium's
reason texts, ``INGRESS``/``EGRESS``), ``cilium_policy_verdict_total`` and ``cilium_policy_l7_total``,
so a query written for Cilium runs here.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from podnet.calc.flows import DROP_REASON_NAMES, drop_reason_of, verdict_of

#: Cilium's reason texts (pkg/monitor/api/drop.go) for the aliases
CILIUM_REASON_TEXTS = {
    130: "Invalid source mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    139: "Unsupported L3 protocol",
    155: "CT: Map insertion failed",
    175: "Fragmented packet entry not found",
    181: "Policy denied by denylist",
    203: "Endpoint not ready",
    230: "Node control plane closed to pods",
    231: "No path to the L7 proxy",
}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
Forwarded = Callable[[], dict[str, tuple[int, int]]]  # direction -> (packets, bytes)
Dropped = Callable[[], dict[tuple[int, str], tuple[int, int]]]  # (reason, direction) -> (packets, bytes)


def reason_name(reason: int) -> str:
    return DROP_REASON_NAMES.get(reason, f"REASON_{reason}")


class FlowMetrics:
    """The collectors and counters above, registered in ``registry``. :meth:`observe` takes each
    batch of records (the event ring's observer); :meth:`use_kernel` says where the kernel counts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._forwarded: Forwarded | None = None
        self._dropped: Dropped | None = None
        self._cilium = False
        self._lost: Callable[[], int | None] = lambda: None
        self._parse_errors: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()
        self._record_drops: Tally[tuple[int, str]] = Tally()  # Calico: from NFLOG records
        self._record_drop_bytes: Tally[tuple[int, str]] = Tally()
        self._l7_rules: Tally[str] = Tally()  # received, forwarded, denied
        # a record per new connection: plain tallies, exported at the scrape (a labelled
        # prometheus_client Counter costs ~7 us an increment, the tally a tenth of that)
        self._verdicts: Tally[tuple[str, str, str]] = Tally()  # (direction, match, action)
        self._processed: Tally[tuple[str, str]] = Tally()  # (type, verdict)
        r = registry
        self.http = Counter(
            "podnet_http_requests", "HTTP requests through the L7 proxy", ["method", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "podnet_http_request_duration_seconds",
            "HTTP request latency through the L7 proxy (the whole request, as the proxy measured it)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        registry.register(_KernelCollector(self))

    def use_kernel(
        self,
        forwarded: Forwarded,
        dropped: Dropped | None,
        cilium: bool,
        lost: Callable[[], int | None] = lambda: None,
        parse_errors: Callable[[], int] = lambda: 0,
    ) -> None:
        """Where this node's forwarding (and drop) counters are; ``dropped`` None: drops are
        counted from the records (the Calico profile's NFLOG)."""
        self._forwarded, self._dropped, self._cilium = forwarded, dropped, cilium
        self._lost, self._parse_errors = lost, parse_errors

    def observe(self, records: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for record in records:
                self._observe(record)

    def _observe(self, record: dict[str, Any]) -> None:
        kind = str(record.get("type", "drop"))
        verdict = verdict_of(record)
        self._processed[(kind, verdict)] += 1
        direction = str(record.get("direction") or "unknown")
        if kind == "trace" and record.get("match") not in (None, "not enforced"):
            action = "redirected" if verdict == "REDIRECTED" else "allowed"
            self._verdict(direction, str(record["match"]), action)
        elif kind == "drop":
            reason = drop_reason_of(record)
            if reason in (133, 181):
                self._verdict(direction, "none" if reason == 133 else "deny rule", "denied")
            if self._dropped is None and reason is not None:
                self._record_drops[(reason, direction)] += 1
                self._record_drop_bytes[(reason, direction)] += int(record.get("length") or 0)
        elif kind == "l7":
            self._l7(record, verdict)

    def _verdict(self, direction: str, match: str, action: str) -> None:
        self._verdicts[(direction, match, action)] += 1

    def _l7(self, record: dict[str, Any], verdict: str) -> None:
        self._l7_rules["received"] += 1
        self._l7_rules["denied" if verdict == "DROPPED" else "forwarded"] += 1
        if record.get("protocol") == "http":
            method = str(record.get("method") or "")
            self.http.labels(method, str(record.get("status", ""))).inc()
            self.http_seconds.labels(method).observe(float(record.get("latencyMs") or 0) / 1000.0)

    def drops(self) -> dict[tuple[int, str], tuple[int, int]]:
        if self._dropped is not None:
            return self._dropped()
        with self._lock:
            return {key: (n, self._record_drop_bytes[key]) for key, n in self._record_drops.items()}


class _KernelCollector:
    """Read at each scrape: a failing read leaves those families empty, never fails the scrape."""

    def __init__(self, metrics: FlowMetrics) -> None:
        self.m = metrics

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily

        m = self.m
        fwd_count = CounterMetricFamily(
            "podnet_forward_count", "packets forwarded, by direction", labels=["direction"]
        )
        fwd_bytes = CounterMetricFamily(
            "podnet_forward_bytes", "bytes forwarded, by direction", labels=["direction"]
        )
        drop_count = CounterMetricFamily(
            "podnet_drop_count", "packets dropped, by reason and direction", labels=["reason", "direction"]
        )
        drop_bytes = CounterMetricFamily(
            "podnet_drop_bytes", "bytes dropped, by reason and direction", labels=["reason", "direction"]
        )
        lost = CounterMetricFamily(
            "podnet_flows_lost", "datapath events the kernel could not hand to the agent"
        )
        l7 = CounterMetricFamily(
            "podnet_policy_l7",
            "L7 requests the proxies received, forwarded, denied; records unreadable",
            labels=["rule"],
        )
        aliases = [
            CounterMetricFamily(
                "cilium_forward_count", "alias of podnet_forward_count", labels=["direction"]
            ),
            CounterMetricFamily(
                "cilium_forward_bytes", "alias of podnet_forward_bytes", labels=["direction"]
            ),
            CounterMetricFamily(
                "cilium_drop_count", "alias of podnet_drop_count", labels=["reason", "direction"]
            ),
            CounterMetricFamily(
                "cilium_drop_bytes", "alias of podnet_drop_bytes", labels=["reason", "direction"]
            ),
            CounterMetricFamily("cilium_policy_l7", "alias of podnet_policy_l7", labels=["rule"]),
            CounterMetricFamily(
                "cilium_policy_verdict",
                "alias of podnet_policy_verdict",
                labels=["direction", "match", "action"],
            ),
        ]
        labels = ["direction", "match", "action"]
        verdicts = CounterMetricFamily(
            "podnet_policy_verdict",
            "new connections policy judged: direction, how the rule matched, action",
            labels=labels,
        )
        processed = CounterMetricFamily(
            "podnet_flows_processed",
            "flow records the agent received, by type and verdict",
            labels=["type", "verdict"],
        )
        with m._lock:
            for key, value in sorted(m._verdicts.items()):
                verdicts.add_metric(list(key), value)
                aliases[5].add_metric(list(key), value)
            for key, value in sorted(m._processed.items()):
                processed.add_metric(list(key), value)
        try:
            forwarded = m._forwarded() if m._forwarded else {}
        except Exception:
            forwarded = {}
        for direction, (packets, octets) in sorted(forwarded.items()):
            fwd_count.add_metric([direction], packets)
            fwd_bytes.add_metric([direction], octets)
            aliases[0].add_metric([direction.upper()], packets)
            aliases[1].add_metric([direction.upper()], octets)
        try:
            dropped = m.drops()
        except Exception:
            dropped = {}
        for (reason, direction), (packets, octets) in sorted(dropped.items()):
            drop_count.add_metric([reason_name(reason), direction], packets)
            drop_bytes.add_metric([reason_name(reason), direction], octets)
            text = CILIUM_REASON_TEXTS.get(reason, f"reason {reason}")
            aliases[2].add_metric([text, direction.upper()], packets)
            aliases[3].add_metric([text, direction.upper()], octets)
        try:
            lost_value = m._lost()
        except Exception:
            lost_value = None
        if lost_value is not None:
            lost.add_metric([], lost_value)
        with m._lock:
            rules = {rule: m._l7_rules[rule] for rule in ("received", "forwarded", "denied")}
        try:
            rules["parse_errors"] = m._parse_errors()
        except Exception:
            rules["parse_errors"] = 0
        for rule, value in rules.items():
            l7.add_metric([rule], value)
            aliases[4].add_metric([rule], value)
        yield from (fwd_count, fwd_bytes, drop_count, drop_bytes, lost, l7, verdicts, processed)
        if m._cilium:
            yield from aliases
