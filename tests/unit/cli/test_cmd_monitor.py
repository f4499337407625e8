"""``podnet monitor --type drop``: formatting, arguments, errors, and the polling against a real
API socket served by a DropMonitor fed with hand-made drops (no kernel, no lab)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading

import pytest

from podnet.agent import api_server
from podnet.agent.drops import DropMonitor
from podnet.calc.policy import CompiledPolicy, EndpointPolicy, EndpointTier, PodInfo, PolicyPlan
from podnet.cli import cmd_monitor
from podnet.cli.main import build_parser, main
from podnet.dataplane.nflog import Drop
from podnet.dataplane.policy import deny_prefix, spoof_prefix

RECORD = {
    "seq": 3,
    "time": "2024-05-01T17:20:01.123456Z",
    "node": "node-1",
    "protocol": "TCP",
    "src": "10.244.3.4",
    "srcPod": "np/far",
    "dst": "10.244.1.2",
    "dstPod": "np/api",
    "dport": 8080,
    "direction": "ingress",
    "reason": "default deny of NetworkPolicy np/api-from-friends",
    "policies": [{"kind": "NetworkPolicy", "namespace": "np", "name": "api-from-friends"}],
    "prefix": "pnd:0123456789ab:in:np/api",
}
PODS = [PodInfo("np", "api", {}, ("10.244.1.2",), "node-1"), PodInfo("np", "far", {}, ("10.244.3.4",), "n3")]


def test_text_line():
    assert cmd_monitor.format_text(RECORD) == (
        "17:20:01.123 node-1 DROP TCP np/far 10.244.3.4 -> np/api 10.244.1.2:8080 "
        "ingress: default deny of NetworkPolicy np/api-from-friends"
    )


def test_text_line_unknown_pods_no_port_and_spoof():
    record = {
        **RECORD,
        "srcPod": None,
        "dstPod": None,
        "dport": None,
        "protocol": "ICMP",
        "direction": "egress",
        "reason": "anti-spoofing: source address is not the pod's",
    }
    assert cmd_monitor.format_text(record) == (
        "17:20:01.123 node-1 DROP ICMP 10.244.3.4 -> 10.244.1.2 "
        "egress: anti-spoofing: source address is not the pod's"
    )


def test_json_line_is_the_record():
    line = cmd_monitor.format_drop(RECORD, "json")
    assert "\n" not in line and json.loads(line) == RECORD


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor"],  # --type is required
        ["monitor", "--type", "trace"],
        ["monitor", "--type", "drop", "-o", "yaml"],
        ["monitor", "--type", "drop", "--node"],
    ],
)
def test_argument_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_arguments():
    args = build_parser().parse_args(["monitor", "-t", "drop", "--node", "node-2", "-f", "-o", "json"])
    assert (args.type, args.node, args.follow, args.output) == ("drop", "node-2", True, "json")
    args = build_parser().parse_args(["monitor", "--type", "drop", "--lab-prefix", "pnt1a2b-"])
    assert (args.node, args.follow, args.output, args.lab_prefix) == (None, False, "text", "pnt1a2b-")


def test_no_lab_is_a_clear_error(capsys):
    prefix = f"pnq{secrets.token_hex(2)}-"
    assert main(["monitor", "--type", "drop", "--lab-prefix", prefix]) == 8
    err = capsys.readouterr().err
    assert f"error: no lab with prefix {prefix} is up" in err and "Traceback" not in err


def _plan() -> PolicyPlan:
    policy = CompiledPolicy(
        "np/api-from-friends", "NetworkPolicy", "np", "api-from-friends", "default", 1000.0, (), None
    )
    endpoint = EndpointPolicy("np/api", ("10.244.1.2",), (EndpointTier("default", (policy.key,), "Deny"),))
    return PolicyPlan(sets={}, endpoints={"np/api": endpoint}, errors={}, policies={policy.key: policy})


@pytest.fixture
def agents(tmp_path, monkeypatch):
    """Two fake agents (node-1 with a monitor, node-2 with none yet); ``agents[node]`` is its monitor."""
    monitors: dict[str, DropMonitor] = {}
    servers = []
    sockets = {}
    for node in ("node-1", "node-2"):
        stamp = dt.datetime(2024, 5, 1, 17, 20, int(node[-1]), tzinfo=dt.UTC)
        monitors[node] = DropMonitor(node, lambda: PODS, _plan, clock=lambda s=stamp: s)
        sockets[node] = str(tmp_path / f"{node}.sock")
        servers.append(api_server.serve(sockets[node], monitors[node].handle))

    def fake_sockets(prefix, node):
        return {node: sockets[node]} if node else dict(sockets)

    monkeypatch.setattr(cmd_monitor, "agent_sockets", fake_sockets)
    monitors["sockets"] = sockets  # type: ignore[assignment]
    yield monitors
    for m in list(monitors.values())[:2]:
        m.stop()
    for server in servers:
        server.shutdown()
        server.server_close()


def drop(port: int = 8080) -> Drop:
    return Drop(deny_prefix("np/api", "ingress"), "10.244.3.4", "10.244.1.2", "TCP", port)


def test_run_prints_every_node_merged_by_time(agents, capsys):
    agents["node-2"].add([Drop(spoof_prefix("np/api"), "10.9.9.9", "10.244.3.4", "UDP", 53)])
    agents["node-1"].add([drop()])
    assert main(["monitor", "--type", "drop"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "17:20:01.000 node-1 DROP TCP np/far 10.244.3.4 -> np/api 10.244.1.2:8080 "
        "ingress: default deny of NetworkPolicy np/api-from-friends",
        "17:20:02.000 node-2 DROP UDP np/api 10.9.9.9 -> np/far 10.244.3.4:53 "
        "egress: anti-spoofing: source address is not the pod's",
    ]
    assert main(["monitor", "--type", "drop", "--node", "node-1", "-o", "json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert (record["dport"], record["srcPod"]) == (8080, "np/far")
    assert record["policies"][0]["name"] == "api-from-friends"


def test_run_pages_through_more_than_one_answer(agents, capsys, monkeypatch):
    monkeypatch.setattr(cmd_monitor, "LIMIT", 2)
    agents["node-1"].add([drop(p) for p in range(1, 6)])
    assert main(["monitor", "--type", "drop", "--node", "node-1", "-o", "json"]) == 0
    assert [json.loads(line)["dport"] for line in capsys.readouterr().out.splitlines()] == [1, 2, 3, 4, 5]


def test_unreachable_agent_names_node_and_socket(agents, capsys, tmp_path, monkeypatch):
    missing = str(tmp_path / "gone.sock")
    monkeypatch.setattr(cmd_monitor, "agent_sockets", lambda prefix, node: {"node-3": missing})
    assert main(["monitor", "--type", "drop", "--node", "node-3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: node-3: podnet agent not reachable at {missing}")
    assert "Traceback" not in err and "hint:" in err


def test_one_unreachable_node_of_several(agents, capsys, tmp_path, monkeypatch):
    sockets = {**agents["sockets"], "node-3": str(tmp_path / "gone.sock")}  # type: ignore[dict-item]
    monkeypatch.setattr(cmd_monitor, "agent_sockets", lambda prefix, node: sockets)
    agents["node-1"].add([drop()])
    assert main(["monitor", "--type", "drop"]) == 1
    out, err = capsys.readouterr()
    assert "node-1 DROP TCP" in out and "error: node-3: podnet agent not reachable" in err


def test_follow_yields_new_drops_as_they_come(agents):
    sockets = agents["sockets"]  # type: ignore[assignment]
    events = cmd_monitor.follow(sockets, {"node-1": 0, "node-2": 0}, wait=0.1)
    threading.Timer(0.3, lambda: agents["node-2"].add([drop(9090)])).start()
    try:
        kind, record = next(events)
        assert (kind, record["node"], record["dport"]) == ("drop", "node-2", 9090)
    finally:
        events.close()


def test_type_log_shows_log_rule_entries_and_drop_does_not(agents, capsys):
    agents["node-1"].add([drop(), Drop("pnl:0123456789ab", "10.244.3.4", "10.244.1.2", "TCP", 80)])
    assert main(["monitor", "--type", "log"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert " node-1 LOG TCP np/far 10.244.3.4 -> np/api 10.244.1.2:80 " in line
    assert main(["monitor", "--type", "drop"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert " DROP TCP " in line and ":8080 " in line
