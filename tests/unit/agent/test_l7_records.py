"""L7 records (agent.l7_records): HAProxy's JSON datagram becomes an event-ring record with pods,
verdict and rule; what is not one is counted and skipped; `podnet monitor --type l7` prints it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from podnet.agent.l7_records import L7Records, record_from
from podnet.calc.policy import PodInfo
from podnet.cli.cmd_monitor import format_text, wanted

LINE = {
    "frontend": "ingress",
    "client": "10.0.0.3:41234",
    "server": "10.0.0.2:80",
    "method": "PUT",
    "uri": "/api/v1",
    "version": "HTTP/1.1",
    "status": 200,
    "time_ms": 3,
    "bytes": 51,
    "rule": "cnp:shop/l7-rule:ingress:0:http:0",
    "peer": 48213,
    "termination": "--",
}
PODS = {"10.0.0.3": "shop/frontend", "10.0.0.2": "shop/api"}


def test_a_record_and_its_line():
    record = record_from(json.dumps(LINE).encode() + b"\n", "node-2", PODS.get)
    assert record is not None and wanted(record, "l7") and not wanted(record, "drop")
    assert (record["srcPod"], record["sport"], record["dstPod"], record["dport"]) == (
        "shop/frontend",
        41234,
        "shop/api",
        80,
    )
    assert (record["verdict"], record["status"], record["peerIdentity"]) == ("FORWARDED", 200, 48213)
    line = format_text(record)
    assert line.endswith(
        "node-2 L7 http shop/frontend 10.0.0.3:41234 -> shop/api 10.0.0.2:80 ingress: PUT /api/v1 => 200 "
        "(3 ms) FORWARDED by cnp:shop/l7-rule:ingress:0:http:0"
    ), line
    denied = record_from(json.dumps({**LINE, "status": 403, "rule": "default-deny"}).encode(), "n", PODS.get)
    assert denied is not None and denied["verdict"] == "DENIED"
    assert record_from(b"not json", "n", PODS.get) is None
    assert record_from(json.dumps({"client": "x"}).encode(), "n", PODS.get) is None


def test_the_reader_counts_what_it_cannot_read(tmp_path: Path):
    got: list[dict] = []
    pods = [PodInfo("shop", "frontend", {}, ("10.0.0.3",))]
    reader = L7Records(str(tmp_path / "records.sock"), "node-1", lambda: pods, got.extend)
    reader.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for raw in (json.dumps(LINE).encode(), b"{broken", json.dumps(LINE).encode()):
                sender.sendto(raw, reader.path)
        deadline = time.monotonic() + 5
        while (reader.read, reader.bad) != (2, 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (reader.read, reader.bad) == (2, 1)
        assert [r["srcPod"] for r in got] == ["shop/frontend", "shop/frontend"]
        assert got[0]["dstPod"] is None  # not a pod this reader knows
    finally:
        reader.stop()
    assert not (tmp_path / "records.sock").exists()
