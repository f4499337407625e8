"""``podnet observe``'s parsing and output (cli.cmd_observe): filters in command-line order with
``--not``, ``--since`` times, Hubble's compact line and the table."""

from __future__ import annotations

import datetime as dt

import pytest

from podnet.calc.flows import flow_of
from podnet.cli import cmd_observe
from podnet.cli.main import build_parser
from podnet.errors import PodnetError

TRACE = {
    "type": "trace",
    "time": "2026-12-07T09:05:01.123456Z",
    "node": "node-2",
    "protocol": "TCP",
    "src": "10.244.1.5",
    "srcPod": "demo/frontend",
    "srcIdentity": 4001,
    "dst": "10.244.2.7",
    "dstPod": "demo/api",
    "dstIdentity": 4002,
    "sport": 40312,
    "dport": 8080,
    "tcpFlags": 2,
    "direction": "ingress",
    "verdict": "ALLOWED",
}
DROP = {
    "type": "drop",
    "time": "2026-12-07T09:05:02Z",
    "node": "node-2",
    "protocol": "UDP",
    "src": "192.168.7.1",
    "dst": "10.244.2.7",
    "dstPod": "demo/api",
    "dport": 53,
    "direction": "ingress",
    "prefix": "pnd:x:in",
}


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["observe", *argv])


def test_filters_keep_their_order_and_not_negates_the_next_one_only() -> None:
    args = parse("--verdict", "DROPPED", "--not", "--protocol", "udp", "-n", "demo", "--from-pod", "demo/web")
    assert args.filters == [
        (False, "verdict", "DROPPED"),
        (True, "protocol", "udp"),
        (False, "namespace", "demo"),
        (False, "from-pod", "demo/web"),
    ]
    assert parse("map", "-o", "png").what == "map"


def test_a_dangling_not_and_a_bad_filter_are_refused() -> None:
    with pytest.raises(PodnetError, match="--not must be followed by a filter"):
        cmd_observe.run(parse("--verdict", "DROPPED", "--not"))
    with pytest.raises(PodnetError, match="--http-status 4xx"):
        cmd_observe.run(parse("--http-status", "4xx"))


def test_since_takes_durations_and_times() -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    assert cmd_observe.since_time("5m", now) == "2026-12-07T11:55:00.000000Z"
    assert cmd_observe.since_time("1.5h", now) == "2026-12-07T10:30:00.000000Z"
    assert cmd_observe.since_time("2026-12-07T11:00:00Z", now) == "2026-12-07T11:00:00.000000Z"
    with pytest.raises(PodnetError, match="--since yesterday"):
        cmd_observe.since_time("yesterday", now)


def test_compact_is_hubbles_line() -> None:
    assert cmd_observe.compact(flow_of(TRACE)) == (
        "Dec  7 09:05:01.123: demo/frontend:40312 (ID:4001) -> demo/api:8080 (ID:4002) "
        "to-endpoint FORWARDED (TCP Flags: SYN)"
    )
    assert cmd_observe.compact(flow_of(DROP), node_name=True) == (
        "Dec  7 09:05:02.000 [node-2]: 192.168.7.1 (world) -> demo/api:53 Policy denied DROPPED (UDP)"
    )


def test_the_table_has_hubbles_columns_and_the_node() -> None:
    lines = cmd_observe.table([flow_of(TRACE), flow_of(DROP)]).splitlines()
    assert lines[0].split() == ["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert "to-endpoint" in lines[1] and lines[2].split()[-2:] == ["DROPPED", "UDP"]
