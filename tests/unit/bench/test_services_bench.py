"""podnet.bench.services without root: wrk output parsing, the figures and the table, nginx config."""

from __future__ import annotations

import math

import pytest

from podnet.bench.services import (
    TARGETS,
    WrkResult,
    duration_ms,
    main,
    mode_figures,
    nginx_command,
    nginx_config,
    parse_netstat,
    parse_wrk,
    render,
    round_order,
    summarize,
    workload_docs,
    wrk_command,
)
from podnet.bench.stats import ratio
from podnet.model import parse_resource

WRK_CLOSE = """Running 2s test @ http://10.96.0.10:80/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   593.59us  347.50us   7.06ms   88.15%
    Req/Sec    16.75k   616.70    17.36k    90.00%
  Latency Distribution
     50%  593.00us
     75%  716.00us
     90%  817.00us
     99%    1.35ms
  33371 requests in 2.00s, 4.61MB read
Requests/sec:  16674.10
Transfer/sec:      2.31MB
"""

WRK_ERRORS = """Running 1m test @ http://10.244.1.5:8081/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s   300.00ms   2.00s    70.00%
    Req/Sec     9.00     3.00    20.00     60.00%
  Latency Distribution
     50%    1.10s
     75%    1.50s
     90%    1.80s
     99%    2.00s
  540 requests in 1.00m, 80.00KB read
  Socket errors: connect 3, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 4
Requests/sec:      9.00
Transfer/sec:      1.33KB
"""


def test_parse_wrk_with_latency_distribution():
    r = parse_wrk(WRK_CLOSE)
    assert r.requests_per_s == 16674.10 and r.requests == 33371 and r.seconds == 2.0
    assert r.latency_ms == {"p50": 0.593, "p75": 0.716, "p90": 0.817, "p99": 1.35}
    assert r.errors == {} and r.non_2xx == 0 and r.error_count == 0


def test_parse_wrk_errors_and_long_units():
    r = parse_wrk(WRK_ERRORS)
    assert r.requests_per_s == 9.0 and r.requests == 540 and r.seconds == 60.0
    assert r.latency_ms["p50"] == 1100.0 and r.latency_ms["p99"] == 2000.0
    assert r.errors == {"connect": 3, "read": 2, "write": 0, "timeout": 7} and r.non_2xx == 4
    assert r.error_count == 16


def test_parse_wrk_without_latency_flag():
    text = "\n".join(line for line in WRK_CLOSE.splitlines() if "%" not in line or "Stdev" in line)
    assert parse_wrk(text).latency_ms == {}


@pytest.mark.parametrize("bad", ["", "unable to connect to 10.0.0.1:80 Connection refused\n"])
def test_parse_wrk_rejects_other_output(bad):
    with pytest.raises(ValueError, match="not wrk output"):
        parse_wrk(bad)


@pytest.mark.parametrize(
    ("text", "ms"), [("593.00us", 0.593), ("1.35ms", 1.35), ("2.00s", 2000.0), ("1.00m", 60000.0)]
)
def test_duration_units(text, ms):
    assert math.isclose(duration_ms(text), ms)


def test_duration_rejects_garbage():
    with pytest.raises(ValueError):
        duration_ms("12 parsecs")


def test_parse_netstat_pairs():
    text = "TcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 42\nIpExt: InNoRoutes InOctets\nIpExt: 1 900\n"
    got = parse_netstat(text)
    assert got["TcpExt.TCPSynRetrans"] == 42 and got["IpExt.InOctets"] == 900
    with pytest.raises(ValueError):
        parse_netstat("TcpExt: A B\nIpExt: 1 2\n")


def _result(rps: float, p50: float = 0.5, errors: int = 0) -> WrkResult:
    return WrkResult(rps, int(rps * 2), 2.0, {"p50": p50, "p99": p50 * 4}, {"connect": errors}, 0, 0)


def test_summary_ratio_and_mode_figures():
    assert summarize([3.0, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    with pytest.raises(ValueError):
        summarize([])
    assert ratio(9000, 10000).number == 0.9 and math.isnan(ratio(1, 0).number)
    runs = {
        "service": [_result(9000, 0.6), _result(8000, 0.8, errors=2), _result(10000, 0.7)],
        "service1": [_result(9500)],
        "direct": [_result(10000, 0.5), _result(12000, 0.4), _result(11000, 0.6)],
    }
    f = mode_figures(runs)
    assert f["service"]["per_s"] == {"n": 3, "median": 9000.0, "min": 8000.0, "max": 10000.0}
    assert f["direct"]["per_s"]["median"] == 11000.0
    assert f["ratio"] == round(9000 / 11000, 3) and f["ratio_one_backend"] == round(9500 / 11000, 3)
    assert f["service"]["latency_ms"] == {"p50": 0.7, "p99": 2.8}  # medians over the runs
    assert f["service"]["errors"] == 2 and f["direct"]["errors"] == 0
    assert f["service"]["requests"] == 54000 and len(f["service"]["samples"]) == 3


def test_round_order_rotates_every_target_through_first_place():
    firsts = {round_order(i)[0] for i in range(len(TARGETS))}
    assert firsts == set(TARGETS)
    assert all(sorted(round_order(i)) == sorted(TARGETS) for i in range(5))


def _results() -> dict:
    def mode(svc, one, direct):
        return mode_figures(
            {"service": [_result(svc)], "service1": [_result(one)], "direct": [_result(direct)]}
        )

    calico = {"close": mode(8000, 8500, 10000), "keepalive": mode(50000, 52000, 60000)}
    cilium = {"close": mode(9900, 9800, 10000), "keepalive": mode(59000, 58000, 60000)}
    return {
        "params": {"threads": 1, "connections": 16, "repeats": 1, "duration_s": 2},
        "profiles": {"calico": calico, "cilium": cilium},
        "leftovers": [],
        "wall_s": 12.3,
    }


def test_render_table():
    out = render(_results())
    assert "profile  | " in out and "to ClusterIP conn/s" in out and "to pod conn/s" in out
    calico = next(line for line in out.splitlines() if line.startswith("calico   |"))
    assert "8000 (8000-8000)" in calico and "10000 (10000-10000)" in calico and "0.800" in calico
    assert "8500" in calico and "0.850" in calico
    assert "50000 / 52000 / 60000 = 0.833" in out  # keep-alive line
    assert "nothing left behind" in out and "SYN retransmits" not in out


def test_render_flags_errors_and_leftovers():
    r = _results()
    r["profiles"]["calico"]["close"]["service"]["syn_retrans"] = 12
    r["profiles"]["cilium"]["keepalive"]["direct"]["errors"] = 3
    r["leftovers"] = ["123 nginx: master process"]
    out = render(r)
    assert "calico close service 12" in out and "cilium keepalive direct 3" in out
    assert "LEFT BEHIND" in out


def test_nginx_config_is_self_contained(tmp_path):
    d = str(tmp_path / "web-1")
    conf = nginx_config(d, body="bench/web-1")
    assert "worker_processes 1;" in conf and "daemon off;" in conf and "access_log off;" in conf
    assert f"pid {d}/nginx.pid;" in conf and f"error_log {d}/error.log" in conf
    assert "listen 8081 " in conf and 'return 200 "bench/web-1\\n";' in conf
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path {d}/tmp/{kind};" in conf
    assert conf.count("{") == conf.count("}")
    # Nothing outside the directory: every absolute path in the config lies under it.
    paths = [w.rstrip(";") for w in conf.split() if w.startswith("/") and w != "/"]  # not "location /"
    assert paths and all(p.startswith(d + "/") for p in paths)
    cmd = nginx_command(d)
    assert cmd[0] == "nginx" and cmd[cmd.index("-c") + 1] == f"{d}/nginx.conf" and "-e" in cmd


@pytest.mark.parametrize(
    ("directory", "body"), [("relative/dir", "ok"), ("/tmp/a b", "ok"), ("/tmp/x", 'ok"; evil')]
)
def test_nginx_config_rejects_unsafe_input(directory, body):
    with pytest.raises(ValueError):
        nginx_config(directory, body=body)


def test_wrk_command():
    close = wrk_command("http://10.96.0.10:80/", 5, 1, 16, True)
    assert close[:4] == ["wrk", "-t1", "-c16", "-d5s"] and "--latency" in close
    assert close[close.index("-H") + 1] == "Connection: close" and close[-1] == "http://10.96.0.10:80/"
    assert "-H" not in wrk_command("http://10.96.0.10:80/", 5, 1, 16, False)


def test_workload_is_valid_and_places_pods():
    docs = workload_docs()
    models = [parse_resource(d) for d in docs]
    assert len(models) == len(docs)
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Pod"}
    assert {pods[b]["spec"]["nodeName"] for b in ("web-1", "web-2")} == {"node-2"}
    clients = [p for name, p in pods.items() if name.startswith("client")]
    assert len(clients) == 3 and {c["spec"]["nodeName"] for c in clients} == {"node-1"}
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    assert services["web"]["ports"] == [{"name": "nginx", "port": 80, "targetPort": 8081}]
    assert services["web"]["selector"] == {"app": "web"}
    assert services["web-one"]["selector"] == {"pod": "web-1"}
    for pod in pods.values():  # 8081 is not declared: the numeric targetPort reaches it anyway
        ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert 8081 not in ports


@pytest.mark.parametrize("argv", [["--profiles", "flannel"], ["--repeats", "0"], ["--profiles", ""]])
def test_main_rejects_bad_arguments(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
