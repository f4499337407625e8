"""A real Prometheus in the lab (``podnet lab up --prometheus``): Debian's ``prometheus`` (2.42) in a
namespace of its own on the fabric, scraping every node's agent; the CLI reaches its HTTP API through
the same kind of forwarder as etcd's (:mod:`podnet.lab.etcd_proxy`), so the root namespace gets no
lab address::

      root netns                                     │  lab namespaces (prefix pn-)
                                                     │
    podnet metrics ──▶ 127.0.0.1:P ──▶ prometheus-proxy ══setns══▶ pn-prometheus
                       (meta prometheus_endpoint)    │               prometheus 10.77.0.5:9090
                                                     │               data: <state dir>/prometheus/data
                                                     │                 │ scrape every 5 s
                                                     │                 ▼
                                                     │  pn-node-N  agent 0.0.0.0:9099/metrics
                                                     │             job podnet-agent, node="node-N"

The agents of such a lab serve ``/metrics`` on every address of their node (``--metrics
0.0.0.0:9099``; on loopback only otherwise); pods still cannot reach the port: it is part of the node
control plane closed to pods (:class:`podnet.calc.policy.ControlPlane`). The configuration is
rendered by a pure function (:func:`render_config`: one static target per node, labelled
``node=<node name>``, scrape and evaluation every 5 s). The server, its proxy and its data directory
are recorded in the lab state, so ``podnet lab down`` removes them.

:class:`PrometheusAPI` is the small HTTP client of its API (``/api/v1/query``, ``/api/v1/targets``)
that ``podnet metrics`` and the tests use; an error answer is a :class:`~podnet.errors.PodnetError`
carrying Prometheus's own message (a query it cannot parse: a ``ValidationError``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from podnet.cni.agent_api import PROXY_METRICS_PORT
from podnet.errors import PodnetError, ValidationError
from podnet.lab.etcd_proxy import start_etcd_proxy
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import spawn, stop_processes
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.topology import Topology

BINARY = "prometheus"
PORT = 9090
SCRAPE_INTERVAL = 5  # seconds; also the rule evaluation interval
AGENT_METRICS_PORT = 9099  # the agents' --metrics port (lab/cluster.py)
AGENT_JOB = "podnet-agent"
PROXY_JOB = "podnet-l7-proxy"
PROCESS = "prometheus"
PROXY_PROCESS = "prometheus-proxy"
META_ENDPOINT = "prometheus_endpoint"  # in the lab state's meta: the CLI's URL (root loopback)
UP_HINT = "podnet lab up --prometheus (after podnet lab down) starts a lab with Prometheus"


# ------------------------------------------------------------------------------ configuration


def render_config(
    nodes: Sequence[tuple[str, str]],
    *,
    agent_port: int = AGENT_METRICS_PORT,
    proxy_port: int = PROXY_METRICS_PORT,
    interval: int = SCRAPE_INTERVAL,
) -> str:
    """``prometheus.yml`` for a lab whose nodes are ``(name, address)`` (pure): job
    ``podnet-agent`` scrapes every node's agent at ``address:agent_port``, one static target per
    node labelled ``node=<name>``, every ``interval`` seconds (rules evaluated as often); job
    ``podnet-l7-proxy`` the nodes' L7 proxy exporters at ``address:proxy_port`` alike."""
    if not nodes:
        raise ValueError("a lab has at least one node")
    agents = {
        "job_name": AGENT_JOB,
        "metrics_path": "/metrics",
        "static_configs": [
            {"targets": [f"{address}:{agent_port}"], "labels": {"node": node}} for node, address in nodes
        ],
    }
    doc = {
        "global": {
            "scrape_interval": f"{interval}s",
            "scrape_timeout": f"{max(1, interval - 1)}s",
            "evaluation_interval": f"{interval}s",
        },
        "scrape_configs": [
            agents,
            {  # a Cilium node runs the proxy once an L7 rule applies there: down until then
                "job_name": PROXY_JOB,
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [f"{address}:{proxy_port}"], "labels": {"node": node}}
                    for node, address in nodes
                ],
            },
        ],
    }
    header = "# rendered by podnet.lab.prometheus.render_config; podnet lab down removes it\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def command(config: str, data_dir: str, listen: str) -> list[str]:
    """The server's command line (it takes no extra arguments: the lab's marker goes in its
    environment, :data:`podnet.lab.naming.MARKER_ENV`)."""
    return [
        BINARY,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ]


# ------------------------------------------------------------------------------ start and stop


def start(names: LabNames, topo: Topology, state: LabState, timeout: float = 30.0) -> str:
    """Write the configuration, start Prometheus in the lab's Prometheus namespace and the
    forwarder to it on root loopback, record both (and the directory) in ``state``, wait until it
    answers ``/-/ready`` and has scraped every agent; returns the CLI's endpoint
    (``http://127.0.0.1:PORT``), also recorded in the state's meta as ``prometheus_endpoint``."""
    host = topo.prometheus
    if host is None:
        raise LabError("this lab has no Prometheus host", hint="LabSpec(prometheus=True)")
    root = os.path.join(names.state_dir, "prometheus")
    state.record_dir(root)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    os.makedirs(names.log_dir, exist_ok=True)
    config = os.path.join(root, "prometheus.yml")
    with open(config, "w") as f:
        f.write(render_config([(h.name, h.ip) for h in topo.nodes]))
    log = os.path.join(names.log_dir, "prometheus.log")
    server = spawn(
        command(config, os.path.join(root, "data"), f"{host.ip}:{PORT}"),
        netns=host.netns,
        lab_prefix=names.prefix,
        log=log,
    )
    state.record_process(ProcessRecord.of(PROCESS, server))
    proxy, endpoint = start_etcd_proxy(
        upstream=f"{host.ip}:{PORT}",
        netns=host.netns,
        lab_prefix=names.prefix,
        log=os.path.join(names.log_dir, "prometheus-proxy.log"),
    )
    state.record_process(ProcessRecord.of(PROXY_PROCESS, proxy))
    state.set_meta(**{META_ENDPOINT: endpoint, "prometheus_cluster_endpoint": f"http://{host.ip}:{PORT}"})
    wait_ready(endpoint, timeout, server, log)
    wait_scraped(endpoint, [h.name for h in topo.nodes], timeout, log)
    return endpoint


def wait_ready(endpoint: str, timeout: float, server: Any = None, log: str | None = None) -> None:
    """Until Prometheus answers ``GET /-/ready`` with 200 (its storage is open, it serves queries)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        popen = getattr(server, "popen", None)
        if popen is not None and popen.poll() is not None:
            raise LabError(f"prometheus exited with code {popen.returncode}", hint=f"see {log}")
        if time.monotonic() > deadline:
            raise LabError(f"prometheus not ready after {timeout:g}s", hint=f"see {log}")
        time.sleep(0.1)


def wait_scraped(endpoint: str, nodes: Sequence[str], timeout: float, log: str | None = None) -> None:
    """Until Prometheus has scraped every node's agent successfully (its target ``up``), so that
    the first query after ``lab up`` has every node (the first scrape comes within one interval)."""
    api = PrometheusAPI(endpoint, timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        health = {
            t["labels"].get("node"): t["health"] for t in api.targets() if t["labels"].get("job") == AGENT_JOB
        }
        if set(nodes) <= set(health) and all(health[n] == "up" for n in nodes):
            return
        if time.monotonic() > deadline:
            missing = sorted(n for n in nodes if health.get(n) != "up")
            raise LabError(
                f"prometheus did not scrape the agents of {', '.join(missing)} in {timeout:g}s",
                hint=f"see {log} and its /api/v1/targets",
            )
        time.sleep(0.2)


def stop(names: LabNames) -> list[str]:
    """Stop the lab's Prometheus and its forwarder (what :func:`start` recorded) and forget them;
    the data stays until ``lab down``. Returns the names of the processes stopped."""
    state = LabState(names.state_dir)
    records = [p for p in state.processes() if p.name in (PROXY_PROCESS, PROCESS)]
    stop_processes([(p.pid, p.start_time) for p in records], 10.0)
    for record in records:
        state.forget_process(record.name)
    state.set_meta(**{META_ENDPOINT: None})
    return [p.name for p in records]


def endpoint_of(names: LabNames) -> str:
    """The CLI's URL of the lab's Prometheus; a :class:`LabError` with the way to get one."""
    state = LabState(names.state_dir)
    if not state.exists():
        raise LabError(f"no lab with prefix {names.prefix} is up", hint=UP_HINT)
    endpoint = state.meta().get(META_ENDPOINT)
    if not endpoint:
        raise LabError(f"the lab with prefix {names.prefix} runs no Prometheus", hint=UP_HINT)
    return str(endpoint)


# ------------------------------------------------------------------------------ HTTP API


class PrometheusAPI:
    """Prometheus's HTTP API at ``endpoint`` (``http://HOST:PORT``). Every call returns the
    answer's ``data``; an ``error`` answer raises with Prometheus's ``error`` text."""

    def __init__(self, endpoint: str, timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.endpoint}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as answer:
                body = answer.read()
        except urllib.error.HTTPError as exc:  # 400 bad_data, 422 execution, 503 timeout/unavailable
            body = exc.read()
            if not body.strip().startswith(b"{"):
                text = body[:200].decode(errors="replace")
                raise PodnetError(f"prometheus at {self.endpoint} answered HTTP {exc.code}: {text}") from None
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PodnetError(
                f"prometheus at {self.endpoint} is unreachable: {reason}",
                hint="podnet lab status shows the lab's prometheus and prometheus-proxy",
            ) from None
        return decode(body, self.endpoint)

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """An instant query: ``{"resultType": ..., "result": [...]}``."""
        return self.get("/api/v1/query", {"query": promql, "time": None if at is None else f"{at:.3f}"})

    def targets(self, state: str = "active") -> list[dict[str, Any]]:
        """The scrape targets (``state``: active, dropped, any), each with ``labels``, ``health``
        (up, down, unknown), ``lastScrape``, ``lastError``."""
        data = self.get("/api/v1/targets", {"state": state})
        return list(data.get("activeTargets") or [])


def decode(body: bytes, endpoint: str = "prometheus") -> Any:
    """The ``data`` of an API answer (pure); its error as a PodnetError (``bad_data``: the input
    was wrong, a ValidationError), with Prometheus's message."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise PodnetError(f"{endpoint} answered something that is not JSON: {body[:200]!r}") from None
    if doc.get("status") == "success":
        return doc.get("data")
    kind, message = doc.get("errorType") or "error", doc.get("error") or "no message"
    if kind == "bad_data":
        raise ValidationError(
            [("", message)],
            hint="PromQL: https://prometheus.io/docs/prometheus/2.42/querying/basics/",
            subject="prometheus",
        )
    raise PodnetError(f"prometheus: {kind}: {message}")
