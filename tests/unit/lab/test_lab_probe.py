"""Probes: pure helpers, and real probes on loopback (the caller's namespace, no root)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from podnet.lab.probe import (
    Probe,
    ProbeResult,
    icmp_checksum,
    icmp_echo,
    parse_icmp_reply,
    probe,
    probe_all,
    probe_matrix,
    render_matrix,
    run_probes,
    truth_table,
)


def test_icmp_packets():
    pkt = icmp_echo(0x1234, 7)
    assert pkt[0] == 8 and struct.unpack("!HH", pkt[4:8]) == (0x1234, 7)
    assert icmp_checksum(pkt) == 0  # a correct checksum sums to zero
    ip = bytes([0x45]) + bytes(19)
    reply = bytearray(pkt)
    reply[0] = 0
    assert parse_icmp_reply(ip + bytes(reply), 0x1234) == "reply"
    assert parse_icmp_reply(ip + bytes(reply), 0x4321) is None
    unreach = bytes([3, 1, 0, 0, 0, 0, 0, 0]) + ip + pkt[:8]
    assert parse_icmp_reply(ip + unreach, 0x1234) == "unreachable"
    assert parse_icmp_reply(b"short", 1) is None


def test_probe_normalises_protocol():
    assert Probe(None, "127.0.0.1", 1, "udp").proto == "UDP"
    assert run_probes([Probe(None, "127.0.0.1", 1, "sctp")])[0].ok is False


def test_render_and_truth_table():
    r_ok, r_no = ProbeResult(True, "", 0.0, "a"), ProbeResult(False, "refused", 0.0)
    table = {"a": {"a": r_ok, "b": r_no}, "b": {"a": r_no, "b": r_ok}}
    assert truth_table(table) == {"a": {"a": True, "b": False}, "b": {"a": False, "b": True}}
    text = render_matrix(table)
    assert "✓" in text and "✗" in text and "1 = a" in text


def test_tcp_and_udp_probes_on_loopback(podserver, free_port):
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    podserver("ns/a", f"{tcp}/TCP", f"{udp}/UDP")
    r = probe(None, "127.0.0.1", tcp, "TCP", 1.0)
    assert r.ok and r.answer == "ns/a" and r.elapsed < 0.5
    assert probe(None, "127.0.0.1", udp, "udp", 1.0).answer == "ns/a"
    assert probe(None, "127.0.0.1", tcp, "TCP", 1.0, expect="ns/b").ok is False
    refused = probe(None, "127.0.0.1", free_port(), "TCP", 1.0)
    assert (refused.ok, refused.detail) == (False, "refused")
    assert probe(None, "127.0.0.1", free_port(socket.SOCK_DGRAM), "UDP", 1.0).detail == "refused"


def test_silent_servers_time_out_concurrently():
    # A listener that never accepts still completes handshakes (backlog): connected, no answer.
    silent_tcp = socket.socket()
    silent_tcp.bind(("127.0.0.1", 0))
    silent_tcp.listen(64)
    silent_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent_udp.bind(("127.0.0.1", 0))
    try:
        pairs = [(None, "127.0.0.1")] * 20
        t0 = time.perf_counter()
        tcp = probe_matrix(pairs, silent_tcp.getsockname()[1], "TCP", 0.5)
        udp = probe_matrix(pairs, silent_udp.getsockname()[1], "UDP", 0.5)
        elapsed = time.perf_counter() - t0
    finally:
        silent_tcp.close()
        silent_udp.close()
    assert all(not r.ok and "timeout" in r.detail and "no answer" in r.detail for r in tcp + udp)
    assert elapsed < 1.5  # two rounds of 0.5 s, not 40


def test_probe_all_expects_target_labels(podserver, free_port):
    a = free_port()
    podserver("A", f"{a}/TCP")
    # Both targets are the same server, so only the target labelled "A" matches its answer.
    table = probe_all({"src": None}, {"A": "127.0.0.1", "B": "127.0.0.1"}, a, "TCP", 1.0, expect_names=True)
    assert truth_table(table) == {"src": {"A": True, "B": False}}
    assert "expected 'B'" in table["src"]["B"].detail


def test_missing_source_namespace_fails_cleanly():
    r = probe("pnt0000-does-not-exist", "127.0.0.1", 1, "TCP", 0.2)
    assert not r.ok and "does not exist" in r.detail


@pytest.mark.parametrize("n", [300])
def test_many_probes_at_once(podserver, n, free_port):
    port = free_port()
    podserver("many", f"{port}/TCP")
    t0 = time.perf_counter()
    results = probe_matrix([(None, "127.0.0.1")] * n, port, "TCP", 3.0)
    assert all(r.ok for r in results), {r.detail for r in results if not r.ok}
    assert time.perf_counter() - t0 < 3.0
