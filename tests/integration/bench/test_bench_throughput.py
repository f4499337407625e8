"""``podnet.bench.throughput`` on real namespaces: the independent IPIP baseline (the bench's own
``min_ipip.c``) carries TCP as IP-in-IP, stops when either of its programs is taken off (so it is
what carries the traffic), and a quick IPIP run measures podnet, that baseline and the direct path
with iperf3 in rotated order, leaving nothing behind."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from podnet.bench import min_ipip
from podnet.bench.throughput import QUICK, HandBuilt, iperf, render, run, schedule, sides_of
from podnet.dataplane import bpf
from podnet.dataplane.netns import in_netns
from podnet.lab.netns import list_netns

pytestmark = [pytest.mark.root]

PORT = 7411
ETH_P_ALL = 0x0003


@contextlib.contextmanager
def listener(netns: str) -> Iterator[None]:
    """A TCP listener in ``netns``: the kernel completes handshakes into its backlog."""
    with in_netns(netns):
        sock = socket.create_server(("0.0.0.0", PORT), backlog=16)
    try:
        yield
    finally:
        sock.close()


def connects(netns: str, ip: str, payload: bytes = b"") -> bool:
    """Whether a TCP connection from ``netns`` to ``ip`` completes within a second."""
    with in_netns(netns):
        sock = socket.socket()
    sock.settimeout(1.0)
    try:
        sock.connect((ip, PORT))
        sock.sendall(payload)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def ipv4_frames(sock: socket.socket) -> list[tuple]:
    """``(src, dst, proto)`` of the IPv4 frames queued on an AF_PACKET socket, and for IP-in-IP
    the inner ``(src, dst, proto)`` after them."""
    out: list[tuple] = []
    sock.setblocking(False)
    while True:
        try:
            frame = sock.recv(256)
        except BlockingIOError:
            return out
        if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        outer = (socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34]), frame[23])
        inner = (socket.inet_ntoa(frame[46:50]), socket.inet_ntoa(frame[50:54]), frame[43])
        out.append((*outer, *inner) if frame[23] == 4 and len(frame) >= 54 else outer)


def test_min_ipip_carries_tcp_as_ip_in_ip_and_nothing_else_carries_it():
    with HandBuilt("ipip") as hand:
        ns, p2 = hand.ns, hand.pod_ip["p2"]
        hooks = {
            (ns["n1"], "tunl0", "egress"): min_ipip.ENCAP_PROG,
            (ns["n1"], "eth0", "ingress"): min_ipip.DECAP_PROG,
        }
        for (netns, dev, direction), prog in hooks.items():
            assert [f.prog_name for f in bpf.tc_filters(dev, direction, netns)] == [prog]
        with in_netns(ns["fabric"]):  # frames bridged towards node 2
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with cap, listener(ns["p2"]):
            cap.bind(("n2", 0))
            assert connects(ns["p1"], p2, b"x" * 3000)
            frames = ipv4_frames(cap)
            p1, n1, n2 = hand.pod_ip["p1"], "10.251.0.1", "10.251.0.2"
            assert (n1, n2, 4, p1, p2, 6) in frames and (n2, n1, 4, p2, p1, 6) in frames, frames
            assert not [f for f in frames if f[2] != 4 and {f[0], f[1]} & {p1, p2}], "pod traffic in clear"
            assert all({f[0], f[1]} == {n1, n2} for f in frames if f[2] == 4)

            # negative controls: without either program the pods cannot talk (no ipip module)
            encap = f"{hand.tunnels[0].pin_dir}/progs/{min_ipip.ENCAP_PROG}"
            decap = f"{hand.tunnels[1].pin_dir}/progs/{min_ipip.DECAP_PROG}"
            bpf.detach_tc("eth0", "ingress", pref=min_ipip.TC_PREF, netns=ns["n2"])
            assert not connects(ns["p1"], p2)
            bpf.attach_tc("eth0", "ingress", decap, pref=min_ipip.TC_PREF, netns=ns["n2"])
            assert connects(ns["p1"], p2)
            bpf.detach_tc("tunl0", "egress", pref=min_ipip.TC_PREF, netns=ns["n1"])
            assert not connects(ns["p1"], p2)
            bpf.attach_tc("tunl0", "egress", encap, pref=min_ipip.TC_PREF, netns=ns["n1"])
        assert iperf(ns["p1"], ns["p2"], p2, 1.0) > 0.1
        pins = [t.pin_dir for t in hand.tunnels]
    assert not any(os.path.exists(p) for p in pins)
    assert not any(n in list_netns() for n in ns.values())


@pytest.mark.etcd
def test_quick_ipip_run_measures_podnet_the_independent_baseline_and_direct():
    before = set(list_netns("pnhb")) | set(list_netns("pntp"))
    r = run(["ipip"], QUICK["repeats"], QUICK["duration"])
    res = r["ipip"]
    assert res["order"] == schedule(sides_of("ipip"), QUICK["repeats"])
    assert [o[0] for o in res["order"]] == ["podnet", "baseline", "direct"]
    for side in ("podnet", "baseline", "direct"):
        assert len(res["samples"][side]) == QUICK["repeats"] and min(res["samples"][side]) > 0.1, res
        assert res["gbps"][side] > 0.1
    for name in ("podnet/baseline", "baseline/direct"):
        x = res["ratios"][name]
        assert x["value"] > 0 and x["reason"] is None and x["median_of_rounds"] > 0, x
        assert len(x["per_round"]) == QUICK["repeats"]
    assert res["ratio"] == res["ratios"]["podnet/baseline"]["value"]
    table = render(r, QUICK["repeats"], QUICK["duration"])
    print("\n" + table)
    assert table.splitlines()[2].startswith("ipip") and "n/a" not in table
    assert set(list_netns("pnhb")) | set(list_netns("pntp")) <= before
