"""BIRD's status text: ``show protocols all`` parsed (calc), the control-socket reply reader
(dataplane) and ``podnet node status``'s table (cli)."""

from __future__ import annotations

import datetime as dt
import io

from podnet.calc.bird import parse_protocols
from podnet.cli.cmd_node import format_since, format_status, peer_rows, render_table
from podnet.dataplane.bird import BirdControl, BirdReply

# Captured from a lab node (trimmed), as birdc prints it.
SHOW_PROTOCOLS_ALL = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     2026-11-25 16:28:02

kernel4    Kernel     master4    up     2026-11-25 16:28:02
  Channel ipv4
    State:          UP
    Table:          master4
    Routes:         0 imported, 2 exported, 0 preferred

Global_10_77_0_250 BGP        ---        start  2026-11-25 16:28:02  Active   Socket: Network is unreachable
  BGP state:          Active
    Neighbor address: 10.77.0.250
    Neighbor AS:      64567
    Local AS:         64512
    Connect delay:    0.192/1
    Last error:       Socket: Network is unreachable
  Channel ipv4
    State:          DOWN

Mesh_10_77_0_11 BGP        ---        up     2026-11-25 16:28:03  Established
  BGP state:          Established
    Neighbor address: 10.77.0.11
    Neighbor port:    1179
    Neighbor AS:      64512
    Local AS:         64512
    Neighbor ID:      10.77.0.11
    Local capabilities
      Graceful restart
        Restart time: 120
    Session:          internal multihop AS4
  Channel ipv4
    State:          UP
    Routes:         1 imported, 1 exported, 1 preferred

Node_10_77_0_9_port_1179 BGP        ---        up     2026-11-24 09:00:00  Established
  BGP state:          Established
    Neighbor address: 10.77.0.9
    Neighbor AS:      64512
    Local AS:         64512
"""


def test_parse_protocols_all() -> None:
    got = {p["name"]: p for p in parse_protocols(SHOW_PROTOCOLS_ALL)}
    assert list(got) == [
        "device1",
        "kernel4",
        "Global_10_77_0_250",
        "Mesh_10_77_0_11",
        "Node_10_77_0_9_port_1179",
    ]
    assert got["device1"] == {
        "name": "device1",
        "proto": "Device",
        "table": "---",
        "state": "up",
        "since": "2026-11-25 16:28:02",
        "info": "",
    }
    assert got["kernel4"]["routes"] == "0 imported, 2 exported, 0 preferred"
    assert got["Global_10_77_0_250"] == {
        "name": "Global_10_77_0_250",
        "proto": "BGP",
        "table": "---",
        "state": "start",
        "since": "2026-11-25 16:28:02",
        "info": "Active Socket: Network is unreachable",
        "bgp_state": "Active",
        "neighbor_address": "10.77.0.250",
        "neighbor_as": 64567,
        "local_as": 64512,
        "last_error": "Socket: Network is unreachable",
    }
    mesh = got["Mesh_10_77_0_11"]
    assert (mesh["state"], mesh["info"], mesh["bgp_state"], mesh["neighbor_id"]) == (
        "up",
        "Established",
        "Established",
        "10.77.0.11",
    )
    assert mesh["routes"] == "1 imported, 1 exported, 1 preferred" and mesh["neighbor_port"] == 1179


def test_parse_protocols_short_and_bird_default_timeformat() -> None:
    text = "Name Proto Table State Since Info\nMesh_10_0_0_2 BGP --- up 16:20:46.854 Established\nx y\n"
    (p,) = parse_protocols(text)
    assert (p["since"], p["info"]) == ("16:20:46.854", "Established")


def test_node_status_table() -> None:
    today = dt.date(2026, 11, 25)
    rows = peer_rows(parse_protocols(SHOW_PROTOCOLS_ALL), today)
    assert rows == [
        ("10.77.0.9:1179", "node specific", "up", "2026-11-24", "Established"),
        ("10.77.0.11", "node-to-node mesh", "up", "16:28:03", "Established"),
        ("10.77.0.250", "global", "start", "16:28:02", "Active Socket: Network is unreachable"),
    ]
    assert format_status(parse_protocols(SHOW_PROTOCOLS_ALL), today) == (
        "Calico process is running.\n"
        "\n"
        "IPv4 BGP status\n"
        "+----------------+-------------------+-------+------------+---------------------------------------+\n"
        "|  PEER ADDRESS  |     PEER TYPE     | STATE |   SINCE    |                 INFO                  |\n"  # noqa: E501
        "+----------------+-------------------+-------+------------+---------------------------------------+\n"
        "| 10.77.0.9:1179 | node specific     | up    | 2026-11-24 | Established                           |\n"  # noqa: E501
        "| 10.77.0.11     | node-to-node mesh | up    | 16:28:03   | Established                           |\n"  # noqa: E501
        "| 10.77.0.250    | global            | start | 16:28:02   | Active Socket: Network is unreachable |\n"  # noqa: E501
        "+----------------+-------------------+-------+------------+---------------------------------------+\n"
        "\n"
        "IPv6 BGP status\n"
        "No IPv6 peers found.\n"
    )
    assert "No IPv4 peers found." in format_status([], today)


def test_table_matches_calicoctl_sample() -> None:
    # D:calico/reference/calicoctl/node/status
    assert render_table(
        ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"),
        [("172.17.8.102", "node-to-node mesh", "up", "23:30:04", "Established")],
    ) == (
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |\n"
        "+--------------+-------------------+-------+----------+-------------+\n"
        "| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |\n"
        "+--------------+-------------------+-------+----------+-------------+"
    )


def test_format_since() -> None:
    today = dt.date(2026, 11, 25)
    assert format_since("2026-11-25 16:28:02", today) == "16:28:02"
    assert format_since("2026-11-20 16:28:02", today) == "2026-11-20"
    assert format_since("16:28:02.123", today) == "16:28:02.123"


def test_control_socket_reply_reader() -> None:
    raw = (
        b"2002-Name       Proto      Table      State  Since         Info\n"
        b"1002-device1    Device     ---        up     2026-11-25 16:20:46  \n"
        b" kernel4    Kernel     master4    up     2026-11-25 16:20:46  \n"
        b"1006-  BGP state:          Passive\n"
        b"     Neighbor address: 10.77.0.12\n"
        b"0000 \n"
        b"ignored: the next reply\n"
    )
    reply = BirdReply(BirdControl._read_reply(io.BytesIO(raw)))
    assert reply.ok and reply.code == 0
    assert reply.lines[2] == (1002, "kernel4    Kernel     master4    up     2026-11-25 16:20:46  ")
    assert reply.text.splitlines()[3:5] == [
        "  BGP state:          Passive",
        "    Neighbor address: 10.77.0.12",
    ]
    assert [p["name"] for p in parse_protocols(reply.text)] == ["device1", "kernel4"]
    bad = BirdReply(
        BirdControl._read_reply(io.BytesIO(b"0002-Reading configuration from /x\n8002 /x: No such file\n"))
    )
    assert not bad.ok and bad.code == 8002 and "No such file" in bad.text
