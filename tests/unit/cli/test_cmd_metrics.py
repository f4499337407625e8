"""``podnet metrics query`` and ``compare`` without a lab: times, the query's lines, the compared
rows and their table, and the whole command against a fake Prometheus (canned API answers)."""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from podnet.cli import cmd_metrics
from podnet.cli.main import build_parser, main
from podnet.errors import ValidationError
from podnet.lab.naming import LabNames
from podnet.lab.state import LabState

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("now", NOW),
        ("-10m", NOW - 600),
        ("-1h30m", NOW - 5400),
        ("-90s", NOW - 90),
        ("-1.5m", NOW - 90),
        ("-500ms", NOW - 0.5),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
        ("2027-01-15T08:00:00.250Z", 1_800_000_000.25),
        ("2027-01-15T08:00:00", 1_800_000_000.0),  # no zone: UTC
        ("1800000000.5", 1_800_000_000.5),
    ],
)
def test_times(text: str, want: float) -> None:
    assert cmd_metrics.parse_time(text, NOW) == pytest.approx(want)


@pytest.mark.parametrize("text", ["yesterday", "10m", "-10x", "2027-13-01T00:00:00Z", "", "nan", "inf"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValidationError) as exc:
        cmd_metrics.parse_time(text, NOW)
    assert "-10m" in str(exc.value.hint)


def test_windows() -> None:
    assert cmd_metrics.check_window("1m") == "1m" and cmd_metrics.check_window("1h30m") == "1h30m"
    for bad in ("1", "1 m", "1m)", "-1m", "m"):
        with pytest.raises(ValidationError):
            cmd_metrics.check_window(bad)


def test_relative_times_parse_as_values_not_options() -> None:
    args = build_parser().parse_args(["metrics", "compare", "--before", "-10m", "--after", "now"])
    assert (args.before, args.after, args.window, args.output) == ("-10m", "now", "1m", "table")
    args = build_parser().parse_args(["metrics", "query", "up", "--time", "-1h30m", "-o", "json"])
    assert (args.promql, args.time, args.output) == ("up", "-1h30m", "json")


# ------------------------------------------------------------------------------------ query

VECTOR = {
    "resultType": "vector",
    "result": [
        {
            "metric": {
                "__name__": "up",
                "job": "podnet-agent",
                "node": "node-2",
                "instance": "10.0.0.12:9099",
            },
            "value": [NOW, "1"],
        },
        {
            "metric": {
                "__name__": "up",
                "job": "podnet-agent",
                "node": "node-1",
                "instance": "10.0.0.11:9099",
            },
            "value": [NOW, "1"],
        },
    ],
}


def test_one_line_per_series_sorted() -> None:
    assert cmd_metrics.render_query(VECTOR) == [
        'up{instance="10.0.0.11:9099", job="podnet-agent", node="node-1"}  1',
        'up{instance="10.0.0.12:9099", job="podnet-agent", node="node-2"}  1',
    ]


def test_values_labels_matrices_and_scalars() -> None:
    rate = {"resultType": "vector", "result": [{"metric": {"node": 'a"b'}, "value": [NOW, "1234.56789"]}]}
    assert cmd_metrics.render_query(rate) == ['{node="a\\"b"}  1234.57']
    matrix = {
        "resultType": "matrix",
        "result": [{"metric": {"__name__": "x"}, "values": [[1.5, "1"], [6.5, "3"]]}],
    }
    assert cmd_metrics.render_query(matrix) == ["x  1 @1.5, 3 @6.5"]
    assert cmd_metrics.render_query({"resultType": "scalar", "result": [NOW, "2"]}) == [f"scalar  2 @{NOW}"]
    assert cmd_metrics.render_query({"resultType": "vector", "result": []}) == []
    assert cmd_metrics.format_number("NaN") == "NaN" and cmd_metrics.format_number("+Inf") == "+Inf"
    assert cmd_metrics.format_number("1e20") == "1e+20"


# ------------------------------------------------------------------------------------ compare

T1, T2 = NOW - 600, NOW


def _series(value: float, **labels: str) -> dict:
    return {"metric": labels, "value": [0, str(value)]}


ANSWERS = {
    (cmd_metrics.NODES_QUERY, T1): [_series(1, node="node-1"), _series(1, node="node-2")],
    (cmd_metrics.NODES_QUERY, T2): [_series(1, node="node-1"), _series(1, node="node-2")],
    ("forwarded bytes/s", T1): [
        _series(1e9, node="node-1", direction="egress"),
        _series(0, node="node-1", direction="ingress"),
        _series(2e9, node="node-2", direction="ingress"),
    ],
    ("forwarded bytes/s", T2): [
        _series(5e8, node="node-1", direction="egress"),
        _series(10, node="node-1", direction="ingress"),
        _series(1e9, node="node-2", direction="ingress"),
    ],
    ("drops/s", T1): [],
    ("drops/s", T2): [_series(0.5, node="node-2", reason="POLICY_DENIED")],
    ("http p50 seconds", T1): [_series(0.002, node="node-2")],
    ("http p50 seconds", T2): [_series(0.003, node="node-2")],
    ("http p99 seconds", T1): [_series(math.nan, node="node-2")],
    ("http p99 seconds", T2): [_series(0.01, node="node-2")],
}


def fake_query(promql: str, at: float) -> list[dict]:
    if promql == cmd_metrics.NODES_QUERY:
        return ANSWERS[(promql, at)]
    (metric,) = [m for m, _, q in cmd_metrics.COMPARED if q.format(w="30s") == promql]
    return ANSWERS[(metric, at)]


def test_compare_rows() -> None:
    rows = cmd_metrics.compare(fake_query, T1, T2, "30s")
    got = [(r["node"], r["metric"], r["labels"], r["before"], r["after"], r["ratio"]) for r in rows]
    assert got == [
        ("node-1", "forwarded bytes/s", {"direction": "egress"}, 1e9, 5e8, 0.5),
        ("node-1", "forwarded bytes/s", {"direction": "ingress"}, 0.0, 10.0, None),  # from 0: no ratio
        ("node-1", "drops/s", None, None, None, None),  # a node without a series still has its row
        ("node-1", "http p50 seconds", None, None, None, None),
        ("node-1", "http p99 seconds", None, None, None, None),
        ("node-2", "forwarded bytes/s", {"direction": "ingress"}, 2e9, 1e9, 0.5),
        ("node-2", "drops/s", {"reason": "POLICY_DENIED"}, None, 0.5, None),
        ("node-2", "http p50 seconds", {}, 0.002, 0.003, pytest.approx(1.5)),
        ("node-2", "http p99 seconds", {}, None, 0.01, None),  # NaN: no requests then
    ]


def test_compare_queries_are_the_ones_the_migration_uses() -> None:
    queries = [q.format(w="1m") for _, _, q in cmd_metrics.COMPARED]
    assert queries == [
        "sum by (node, direction) (rate(podnet_forward_bytes_total[1m]))",
        "sum by (node, reason) (rate(podnet_drop_count_total[1m]))",
        "histogram_quantile(0.5, sum by (node, le) (rate(podnet_http_request_duration_seconds_bucket[1m])))",
        "histogram_quantile(0.99, sum by (node, le) (rate(podnet_http_request_duration_seconds_bucket[1m])))",
    ]


def test_compare_table() -> None:
    rows = cmd_metrics.compare(fake_query, T1, T2, "30s")
    lines = cmd_metrics.render_compare(rows, T1, T2, "30s").splitlines()
    assert lines[0] == "before 2027-01-15T07:50:00.000Z, after 2027-01-15T08:00:00.000Z, rates over 30s"
    assert lines[1].split() == ["NODE", "METRIC", "SERIES", "BEFORE", "AFTER", "AFTER/BEFORE"]
    assert lines[2].split() == [
        "node-1",
        "forwarded",
        "bytes/s",
        "direction=egress",
        "1",
        "GB/s",
        "500",
        "MB/s",
        "0.5",
    ]
    assert "(no series)" in lines[4]
    assert lines[-2].split() == ["node-2", "http", "p50", "seconds", "-", "2", "ms", "3", "ms", "1.5"]
    assert lines[-1].split() == ["node-2", "http", "p99", "seconds", "-", "-", "10", "ms", "-"]


# ------------------------------------------------------------------------------------ the command


class FakePrometheus:
    """Answers /api/v1/query from ``answers[query]`` (a 400 bad_data for ``bad``)."""

    def __init__(self, answers: dict[str, dict]) -> None:
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                fake.requests.append(params)
                if params["query"] in answers:
                    code, doc = 200, {"status": "success", "data": answers[params["query"]]}
                else:
                    error = f"1:{len(params['query'])}: parse error: unexpected end of input"
                    code, doc = 400, {"status": "error", "errorType": "bad_data", "error": error}
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    answers = {'up{job="podnet-agent"}': VECTOR}
    for metric, _, promql in cmd_metrics.COMPARED:
        answers[promql.format(w="1m")] = {"resultType": "vector", "result": ANSWERS[(metric, T2)]}
    answers[cmd_metrics.NODES_QUERY] = VECTOR
    server = FakePrometheus(answers)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_query_command(fake: FakePrometheus, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["metrics", "query", 'up{job="podnet-agent"}', "--prometheus", fake.url]) == 0
    assert capsys.readouterr().out.splitlines() == cmd_metrics.render_query(VECTOR)
    at = "2027-01-15T08:00:00Z"
    assert (
        main(
            [
                "metrics",
                "query",
                'up{job="podnet-agent"}',
                "--time",
                at,
                "-o",
                "json",
                "--prometheus",
                fake.url,
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == VECTOR
    assert fake.requests[-1] == {"query": 'up{job="podnet-agent"}', "time": "1800000000.000"}


def test_a_query_prometheus_refuses(fake: FakePrometheus, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["metrics", "query", "rate(x[", "--prometheus", fake.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prometheus: 1:7: parse error: unexpected end of input\n"), err


def test_compare_command(fake: FakePrometheus, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PODNET_PROMETHEUS_URL", fake.url)
    assert main(["metrics", "compare", "--before", "-10m", "--after", "now", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["window"] == "1m" and {r["node"] for r in doc["rows"]} == {"node-1", "node-2"}
    stamps = [float(r["time"]) for r in fake.requests]
    assert max(stamps) - min(stamps) == pytest.approx(600, abs=1)  # -10m and now
    before = dt.datetime.fromisoformat(doc["before"].replace("Z", "+00:00")).timestamp()
    assert before == pytest.approx(min(stamps), abs=0.001)
    assert main(["metrics", "compare", "--before", "-10m", "--after", "now", "--window", "1m"]) == 0
    assert "node-2  forwarded bytes/s" in capsys.readouterr().out


def test_no_prometheus_in_the_lab(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PODNET_PROMETHEUS_URL", raising=False)
    names = LabNames("pnu2-", run_root=str(tmp_path))
    monkeypatch.setattr("podnet.lab.cluster.lab_names", lambda prefix=None: names)
    assert main(["metrics", "query", "up"]) == 8
    assert "no lab with prefix pnu2- is up" in capsys.readouterr().err
    LabState.create(names.state_dir, names.prefix)  # a lab up without --prometheus
    assert main(["metrics", "compare", "--before", "-5m", "--after", "now"]) == 8
    err = capsys.readouterr().err
    assert "runs no Prometheus" in err and "hint: podnet lab up --prometheus" in err
