"""The lab's Prometheus without root: its configuration (pure), its command line, its host in the
topology, and the HTTP API client against a fake server (answers as Prometheus 2.42 gives them)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from podnet.errors import PodnetError, ValidationError
from podnet.lab import prometheus
from podnet.lab.naming import LabError, LabNames
from podnet.lab.state import NETNS_ORDER, LabState
from podnet.lab.topology import LabSpec, build_topology

NODES = [("node-1", "10.77.0.11"), ("node-2", "10.77.0.12"), ("node-3", "10.77.1.13")]


def test_config_scrapes_every_agent_and_l7_proxy_labelled_by_node_every_5s() -> None:
    doc = yaml.safe_load(prometheus.render_config(NODES))
    assert doc["global"] == {"scrape_interval": "5s", "scrape_timeout": "4s", "evaluation_interval": "5s"}
    job, proxy = doc["scrape_configs"]
    assert job["job_name"] == "podnet-agent" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [
        {"targets": [f"{ip}:9099"], "labels": {"node": name}} for name, ip in NODES
    ]
    assert proxy["job_name"] == "podnet-l7-proxy"
    assert proxy["static_configs"] == [
        {"targets": [f"{ip}:8405"], "labels": {"node": name}} for name, ip in NODES
    ]


def test_config_is_a_pure_function_of_its_input() -> None:
    assert prometheus.render_config(NODES) == prometheus.render_config(list(NODES))
    other = yaml.safe_load(prometheus.render_config(NODES[:1], agent_port=9100, interval=10))
    assert other["global"]["scrape_interval"] == "10s" and other["global"]["scrape_timeout"] == "9s"
    assert other["scrape_configs"][0]["static_configs"][0]["targets"] == ["10.77.0.11:9100"]
    with pytest.raises(ValueError):
        prometheus.render_config([])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="Debian's prometheus (promtool) not installed")
def test_promtool_accepts_the_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus.render_config(NODES))
    out = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_command_line_carries_no_marker_argument() -> None:
    cmd = prometheus.command("/s/prometheus.yml", "/s/data", "10.77.0.5:9090")
    assert cmd[0] == "prometheus"
    assert "--config.file=/s/prometheus.yml" in cmd and "--storage.tsdb.path=/s/data" in cmd
    assert "--web.listen-address=10.77.0.5:9090" in cmd
    assert not any(a.startswith("--lab-prefix") for a in cmd)  # prometheus refuses unknown flags


def test_topology_has_a_prometheus_host_only_when_asked() -> None:
    plain = build_topology(LabSpec())
    assert plain.prometheus is None and "pn-prometheus" not in [ns for ns, _ in plain.namespaces]
    topo = build_topology(LabSpec(nodes=4, subnets=2, prometheus=True))
    host = topo.prometheus
    assert host is not None
    assert (host.netns, host.ip, host.subnet, host.gateway) == ("pn-prometheus", "10.77.0.5", 0, "10.77.0.1")
    assert host in topo.hosts and (host.netns, host.kind) in topo.namespaces
    assert host.kind in NETNS_ORDER  # the state records its namespace
    assert len({h.ip for h in topo.hosts}) == len(topo.hosts)
    assert topo.to_dict()["prometheus"]["ip"] == "10.77.0.5"
    assert LabSpec.from_dict(topo.spec.to_dict()).prometheus is True
    assert LabNames().netns_kind("pn-prometheus") == "other"


def test_endpoint_of_a_lab(tmp_path) -> None:  # type: ignore[no-untyped-def]
    names = LabNames("pnu1-", run_root=str(tmp_path))
    with pytest.raises(LabError) as exc:
        prometheus.endpoint_of(names)
    assert "no lab with prefix pnu1-" in exc.value.message and "--prometheus" in str(exc.value.hint)
    state = LabState.create(names.state_dir, names.prefix)
    with pytest.raises(LabError) as exc:
        prometheus.endpoint_of(names)
    assert "runs no Prometheus" in exc.value.message and "podnet lab up --prometheus" in str(exc.value.hint)
    state.set_meta(prometheus_endpoint="http://127.0.0.1:4321")
    assert prometheus.endpoint_of(names) == "http://127.0.0.1:4321"


# ------------------------------------------------------------------------------ the API client

SUCCESS = {"status": "success", "data": {"resultType": "vector", "result": []}}
BAD_DATA = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:32: parse error: unexpected end of input',
}
TIMEOUT = {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}


class FakePrometheus:
    """Answers every GET with the next queued (status, body) and records the requests."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append((url.path, {k: v[0] for k, v in parse_qs(url.query).items()}))
                code, body = fake.answers.pop(0) if fake.answers else (200, json.dumps(SUCCESS).encode())
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, code: int, doc: dict | str) -> None:
        self.answers.append((code, (json.dumps(doc) if isinstance(doc, dict) else doc).encode()))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.close()


def test_query_sends_the_promql_and_the_time(fake: FakePrometheus) -> None:
    api = prometheus.PrometheusAPI(fake.url)
    assert api.query("up") == SUCCESS["data"]
    assert api.query('rate(x{a="b"}[1m])', at=1700000000.5) == SUCCESS["data"]
    assert fake.requests == [
        ("/api/v1/query", {"query": "up"}),
        ("/api/v1/query", {"query": 'rate(x{a="b"}[1m])', "time": "1700000000.500"}),
    ]


def test_errors_carry_prometheus_message(fake: FakePrometheus) -> None:
    api = prometheus.PrometheusAPI(fake.url)
    fake.answer(400, BAD_DATA)
    with pytest.raises(ValidationError) as exc:
        api.query("rate(x[")
    assert exc.value.exit_code == 2
    assert exc.value.message == f"prometheus: {BAD_DATA['error']}"
    fake.answer(503, TIMEOUT)
    with pytest.raises(PodnetError) as err:
        api.query("x")
    assert not isinstance(err.value, ValidationError)
    assert err.value.message == "prometheus: timeout: query timed out in expression evaluation"
    fake.answer(502, "Bad Gateway")
    with pytest.raises(PodnetError, match="answered HTTP 502: Bad Gateway"):
        api.query("x")


def test_targets(fake: FakePrometheus) -> None:
    target = {"labels": {"job": "podnet-agent", "node": "node-1"}, "health": "up", "lastError": ""}
    fake.answer(200, {"status": "success", "data": {"activeTargets": [target], "droppedTargets": []}})
    assert prometheus.PrometheusAPI(fake.url).targets() == [target]
    assert fake.requests == [("/api/v1/targets", {"state": "active"})]


def test_unreachable_names_the_endpoint(free_port) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PodnetError) as exc:
        prometheus.PrometheusAPI(url, timeout=2).query("up")
    assert exc.value.message.startswith(f"prometheus at {url} is unreachable")
    assert "podnet lab status" in str(exc.value.hint)


def test_decode_refuses_what_is_not_json() -> None:
    with pytest.raises(PodnetError, match="not JSON"):
        prometheus.decode(b"<html>", "http://x")


def test_stop_ends_and_forgets_what_start_recorded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from podnet.lab.netns import proc_alive, spawn
    from podnet.lab.state import ProcessRecord

    names = LabNames("pnu3-", run_root=str(tmp_path))
    state = LabState.create(names.state_dir, names.prefix)
    state.set_meta(prometheus_endpoint="http://127.0.0.1:4321")
    made = {name: spawn(["sleep", "60"]) for name in (prometheus.PROCESS, prometheus.PROXY_PROCESS, "other")}
    try:
        for name, process in made.items():
            state.record_process(ProcessRecord.of(name, process))
        assert sorted(prometheus.stop(names)) == ["prometheus", "prometheus-proxy"]
        assert [p.name for p in state.processes()] == ["other"]
        assert not proc_alive(made["prometheus"].pid, made["prometheus"].start_time)
        assert not proc_alive(made["prometheus-proxy"].pid, made["prometheus-proxy"].start_time)
        assert proc_alive(made["other"].pid, made["other"].start_time)
        with pytest.raises(LabError, match="runs no Prometheus"):
            prometheus.endpoint_of(names)
    finally:
        for process in made.values():
            process.stop()
