"""The agent's Prometheus metrics and its ``/healthz`` + ``/metrics`` HTTP endpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cni_requests = Counter(
            "podnet_cni_requests_total", "CNI requests served", ["verb", "result"], registry=r
        )
        self.cni_seconds = Histogram(
            "podnet_cni_request_seconds",
            "CNI request latency",
            ["verb"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.syncs = Counter("podnet_dataplane_syncs_total", "dataplane applies", ["result"], registry=r)
        self.sync_seconds = Histogram(
            "podnet_dataplane_sync_seconds",
            "time to compute and apply",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )
        self.route_ops = Counter("podnet_route_operations_total", "kernel route changes", ["op"], registry=r)
        self.routes = Gauge("podnet_routes", "routes podnet owns on this node", registry=r)
        self.endpoints = Gauge("podnet_local_endpoints", "pod interfaces on this node", registry=r)
        self.endpoint_conflicts = Gauge(
            "podnet_endpoint_conflicts",
            "local endpoints whose Pod object claims another node, none, or is gone (still enforced)",
            registry=r,
        )
        self.in_sync = Gauge(
            "podnet_datastore_in_sync", "1 once the datastore snapshot is loaded", registry=r
        )
        self.datastore_errors = Counter("podnet_datastore_errors_total", "datastore failures", registry=r)
        self.revision = Gauge("podnet_datastore_revision", "last datastore revision applied", registry=r)
        self._datapath: Callable[[], dict[str, int]] | None = None
        from podnet.agent.flow_metrics import FlowMetrics

        self.flows = FlowMetrics(r)  # forwarding, drops, verdicts, L7 (agent.flow_metrics)

    def watch_datapath(self, stats: Callable[[], dict[str, int]]) -> None:
        """The Cilium datapath's own counters (``events_lost``, ``ct_created``, redirects …), read
        at each scrape as ``podnet_bpf_datapath_total{counter=…}``."""
        if self._datapath is None:
            self.registry.register(_DatapathCollector(lambda: self._datapath() if self._datapath else {}))
        self._datapath = stats


class _DatapathCollector:
    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "podnet_bpf_datapath", "Cilium profile tc programs' counters (pn_stats)", labels=["counter"]
        )
        try:
            stats = self._stats()
        except Exception:  # a scrape never fails for it: the counters are missing, not wrong
            stats = {}
        for name, value in sorted(stats.items()):
            family.add_metric([name], value)
        yield family


def serve(address: tuple[str, int], metrics: AgentMetrics, health: Callable[[], tuple[bool, dict]]):
    """Start the HTTP endpoint in a daemon thread; returns the server (``shutdown()`` stops it)."""
    import json

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                ok, detail = health()
                body, ctype, code = json.dumps(detail).encode(), "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
