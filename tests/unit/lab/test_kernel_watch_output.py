"""The kernel watch's reading of monitor output, without root: which lines are podnet's state,
which are the watch's own marker changes (never counted), and the marker changes it makes.
The lines are what ``ip monitor``, ``bridge monitor fdb`` and ``nft monitor`` print (iproute2 6.1,
nftables 1.0.6)."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.lab.kernel_watch import MARKER_NET, MARKER_TABLE, MONITORS, Markers, classify

M = Markers("a1b2c3")

PODNET_LINES = [
    ("route", "10.244.1.0/26 via 10.77.1.12 dev eth0 proto 112 onlink"),
    ("route", "Deleted 10.244.1.0/26 via 10.77.1.12 dev eth0 proto bird metric 32"),
    ("neigh", "10.244.1.0 dev vxlan.calico lladdr 66:1b:28:6c:8a:11 PERMANENT"),
    ("fdb", "66:1b:28:6c:8a:11 dev vxlan.calico dst 10.77.1.12 self permanent"),
    ("nft", "delete rule inet podnet_policy forward handle 10"),
    ("nft", "add element inet podnet_services svc-ips { 10.96.0.10 }"),
]
NOISE = [
    ("route", "10.77.1.0/24 dev eth0 proto kernel scope link src 10.77.1.11"),
    ("neigh", "10.77.1.12 dev eth0 lladdr 8e:5f:8a:f1:22:03 REACHABLE"),
    ("fdb", "33:33:00:00:00:01 dev eth0 self"),
    ("nft", "# new generation 2 by process 28113 (nft)"),
]


def marker_lines(n: int) -> list[tuple[str, str]]:
    """What the monitors print for round ``n`` of the markers (add and delete)."""
    addr, mac, dev, table = M.ident("route", n), M.ident("fdb", n), M.device, M.ident("nft", n)
    return [
        ("route", f"blackhole {addr} table {MARKER_TABLE} proto 112"),
        ("route", f"Deleted blackhole {addr} table {MARKER_TABLE} proto 112"),
        ("neigh", f"{addr} dev {dev} lladdr {mac} PERMANENT"),
        ("neigh", f"dev {dev} lladdr {mac} NOARP PERMANENT"),  # the FDB marker, seen by ip monitor neigh
        ("neigh", f"Deleted dev {dev} lladdr {mac} NOARP PERMANENT"),
        ("fdb", f"{mac} dev {dev} self permanent"),
        ("fdb", f"Deleted {mac} dev {dev} self permanent"),
        ("nft", f"add table inet {table}"),
        ("nft", f"delete table inet {table}"),
    ]


@pytest.mark.parametrize(("kind", "line"), PODNET_LINES)
def test_podnet_state_is_an_event(kind: str, line: str) -> None:
    assert classify(kind, line + " \n") == ("event", line)


@pytest.mark.parametrize(("kind", "line"), NOISE)
def test_traffic_and_kernel_noise_is_not_counted(kind: str, line: str) -> None:
    assert classify(kind, line)[0] == "noise"


@pytest.mark.parametrize(("kind", "line"), marker_lines(7))
def test_markers_look_like_podnet_state_but_are_never_counted(kind: str, line: str) -> None:
    """A marker passes the relevance filter (so a reported marker proves the path real events
    take) and is then recognised as a marker."""
    assert classify(kind, line) == ("marker", line)


def test_each_kind_reports_the_marker_of_its_round() -> None:
    for n in (1, 2):
        reported: dict[str, set[str]] = {kind: set() for kind in MONITORS}
        for kind, line in marker_lines(n):
            if line.split()[0] != "Deleted" and "NOARP" not in line:
                reported[kind].update(line.split())
        for kind in MONITORS:
            assert M.ident(kind, n) in reported[kind]
            assert M.ident(kind, n + 1) not in reported[kind]  # a late marker is no proof for the next round


def test_marker_identifiers_are_unique_words() -> None:
    """Identifiers are compared as whole words: 198.18.0.1 must not match round 10's 198.18.0.10."""
    for kind in MONITORS:
        idents = [M.ident(kind, n) for n in range(1, 300)]
        assert len(set(idents)) == len(idents)
    assert ipaddress.ip_address(M.ident("route", 1)) in MARKER_NET
    assert M.ident("fdb", 1).startswith("02:")  # locally administered, unicast


def test_a_table_number_or_name_that_merely_contains_the_markers_is_podnet_state() -> None:
    assert classify("route", f"10.244.1.0/26 dev eth0 table {MARKER_TABLE}0 proto 112")[0] == "event"
    assert classify("neigh", "10.244.1.0 dev eth0pnkw lladdr 66:1b:28:6c:8a:11 PERMANENT")[0] == "event"


def test_marker_commands_make_and_undo_each_change_in_the_namespace() -> None:
    cmds = M.commands("pnt1-node-1", 3, MONITORS)
    argv = [c[0] for c in cmds]
    assert argv == [
        ["ip", "-n", "pnt1-node-1", "-batch", "-"],
        ["bridge", "-n", "pnt1-node-1", "-batch", "-"],
        ["ip", "netns", "exec", "pnt1-node-1", "nft", "-f", "-"],
    ]
    ip_batch, fdb_batch, nft_script = (c[1].splitlines() for c in cmds)
    addr = M.ident("route", 3)
    assert ip_batch[0] == f"route add blackhole {addr}/32 table {MARKER_TABLE} proto 112"
    assert ip_batch[1].startswith("route del ") and ip_batch[3] == f"neigh del {addr} dev {M.device}"
    assert fdb_batch == [f"fdb add {M.ident('fdb', 3)} dev {M.device} permanent", fdb_batch[1]]
    assert fdb_batch[1].startswith("fdb del ")
    assert nft_script == [f"add table inet {M.ident('nft', 3)}", f"delete table inet {M.ident('nft', 3)}"]


def test_only_the_pending_kinds_are_marked() -> None:
    cmds = M.commands("ns", 1, ["fdb"])
    assert len(cmds) == 1 and cmds[0][0][0] == "bridge"
    cmds = M.commands("ns", 1, ["neigh"])
    assert len(cmds) == 1 and "route" not in cmds[0][1]
