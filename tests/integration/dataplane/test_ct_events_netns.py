"""Conntrack events read in a namespace, proven with real TCP traffic between two namespaces.

    client netns (eth0 10.0.0.1)  ──veth──  server netns (eth0 10.0.0.2)
      conntrack on (nft ct rule)              conntrack on (nft ct rule), accounting, timestamps,
      a reader of its own (NEW only)          TIME_WAIT 1 s; CtEventReader(server)

Conntrack only runs in a namespace where something asks for it, so each namespace gets a table
with a ``ct state`` rule (podnet's policy tables do the same on a node). The flow's DESTROY comes
when its entry's timeout runs out (TIME_WAIT after a FIN close), and the kernel's garbage collector
may take up to a minute more to notice; a dump reaps expired entries at once, so the test lowers
TIME_WAIT to 1 s and dumps while it waits. Every wait is a poll with a deadline on the events.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from podnet.dataplane import sysctl
from podnet.dataplane.ct_events import CtEvent, CtEventReader, dump, enable_accounting
from podnet.dataplane.netns import run_in_netns

pytestmark = pytest.mark.root

CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.2"
PAYLOAD = 100_000
DEADLINE = 30.0  # seconds to wait for an event (the destroy comes about 1 s after close here)
CT_TABLE = "table ip pnct_test { chain input { type filter hook input priority 0; ct state new counter; }; }"


@pytest.fixture
def namespaces(two_nodes) -> tuple[str, str]:
    """(client, server) netns paths, both with conntrack running; accounting in the server's."""
    client, server = two_nodes[0].netns, two_nodes[1].netns
    for netns in (client, server):
        done = run_in_netns(netns, ["nft", "-f", "-"], input=CT_TABLE + "\n")
        assert done.returncode == 0, done.stderr
    enable_accounting(server)
    sysctl.write("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 1, server)
    return client, server


@pytest.fixture
def reader(namespaces: tuple[str, str]) -> Iterator[CtEventReader]:
    r = CtEventReader(namespaces[1])
    try:
        yield r
    finally:
        r.close()


def _server(netns: str, ip: str) -> tuple[socket.socket, threading.Thread, list[int]]:
    """A TCP server in ``netns`` that takes one connection, answers b"ok" once it has PAYLOAD
    bytes, and counts what it got until the client closes."""
    listener = run_in_netns(netns, lambda: socket.create_server((ip, 0)))
    received: list[int] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            total, acked = 0, False
            while data := conn.recv(65536):
                total += len(data)
                if total >= PAYLOAD and not acked:
                    conn.sendall(b"ok")
                    acked = True
            received.append(total)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, received


def _wait_for(
    reader: CtEventReader,
    seen: list[CtEvent],
    found: Callable[[list[CtEvent]], bool],
    poke: str | None = None,
) -> None:
    """Collect events into ``seen`` until ``found(seen)`` or DEADLINE; ``poke``: a netns to dump
    on each round (a dump reaps expired entries, which sends their DESTROY at once)."""
    deadline = time.monotonic() + DEADLINE
    while not found(seen):
        assert time.monotonic() < deadline, f"no such event within {DEADLINE} s; got {seen}"
        seen += reader.read(0.2)
        if poke is not None and not found(seen):
            dump(poke)


def _flow(sport: int, dport: int, src: str = CLIENT_IP, dst: str = SERVER_IP) -> Callable[[CtEvent], bool]:
    return lambda e: (e.protocol, e.src, e.sport, e.dst, e.dport) == (6, src, sport, dst, dport)


def test_one_new_and_one_destroy_with_the_bytes_of_both_directions(
    namespaces: tuple[str, str], reader: CtEventReader
) -> None:
    client, server = namespaces
    # Negative control first: a connection inside the client netns, tracked there (its own
    # reader sees it: the positive control of the negative), never reported to the server's.
    with CtEventReader(client, destroy=False) as client_reader:
        local_listener, local_thread, _ = _server(client, CLIENT_IP)
        local_port = local_listener.getsockname()[1]
        local = run_in_netns(client, lambda: socket.create_connection((CLIENT_IP, local_port), timeout=5))
        local.sendall(b"x" * PAYLOAD)
        assert local.recv(2) == b"ok"
        is_local = _flow(local.getsockname()[1], local_port, CLIENT_IP, CLIENT_IP)
        client_seen: list[CtEvent] = []
        _wait_for(client_reader, client_seen, lambda seen: any(is_local(e) for e in seen))
        assert any(is_local(e) for e in dump(client))
        local.close()
        local_thread.join(5)
        local_listener.close()

    # The flow the server's reader watches: PAYLOAD bytes from the client, b"ok" back.
    listener, thread, received = _server(server, SERVER_IP)
    port = listener.getsockname()[1]
    conn = run_in_netns(client, lambda: socket.create_connection((SERVER_IP, port), timeout=5))
    sport = conn.getsockname()[1]
    is_ours = _flow(sport, port)
    seen: list[CtEvent] = []
    _wait_for(reader, seen, lambda seen: any(is_ours(e) and e.kind == "new" for e in seen))
    conn.sendall(b"x" * PAYLOAD)
    assert conn.recv(2) == b"ok"

    # While it is open, a dump shows it with its counters so far.
    (open_flow,) = [e for e in dump(server) if is_ours(e)]
    assert open_flow.kind == "dump" and open_flow.bytes_orig >= PAYLOAD
    assert open_flow.timestamp_start_ns and open_flow.timestamp_stop_ns is None

    conn.close()
    closed = time.monotonic()
    thread.join(5)
    listener.close()
    assert received == [PAYLOAD]
    _wait_for(reader, seen, lambda seen: any(is_ours(e) and e.kind == "destroy" for e in seen), poke=server)
    after_close = time.monotonic() - closed

    (new,) = [e for e in seen if is_ours(e) and e.kind == "new"]
    (gone,) = [e for e in seen if is_ours(e) and e.kind == "destroy"]
    assert new.id == gone.id != 0
    reply = (gone.reply_src, gone.reply_sport, gone.reply_dst, gone.reply_dport)
    assert reply == (SERVER_IP, port, CLIENT_IP, sport)
    # 100,000 bytes of payload plus the IP and TCP headers of about 10 segments (64 KiB TSO on a veth)
    assert PAYLOAD <= gone.bytes_orig <= PAYLOAD * 1.03, gone
    assert gone.packets_orig > 0 and gone.packets_reply > 0 and gone.bytes_reply > 2
    assert new.bytes_orig == 0 and new.timestamp_start_ns is None  # NEW carries no counters
    assert gone.timestamp_start_ns == open_flow.timestamp_start_ns
    assert gone.timestamp_stop_ns and gone.timestamp_stop_ns > gone.timestamp_start_ns
    assert gone.status & 0x8 and gone.status & 0x4  # IPS_CONFIRMED, IPS_ASSURED
    # The negative control: nothing of the client-local connection reached the server's reader.
    assert not [e for e in seen if is_local(e) or e.src == e.dst == CLIENT_IP]
    assert not [e for e in seen if not is_ours(e)]  # nothing else at all happened in the server netns
    assert reader.lost_overruns == 0
    assert after_close < 10, f"destroy {after_close:.1f} s after close with TIME_WAIT 1 s"


def test_icmp_entries_carry_type_code_and_id_not_ports(
    namespaces: tuple[str, str], reader: CtEventReader, ping: Callable[..., bool]
) -> None:
    client, _ = namespaces
    assert ping(client, SERVER_IP)
    seen: list[CtEvent] = []
    is_echo = lambda e: e.protocol == 1 and (e.src, e.dst) == (CLIENT_IP, SERVER_IP)  # noqa: E731
    _wait_for(reader, seen, lambda seen: any(is_echo(e) for e in seen))
    (echo,) = [e for e in seen if is_echo(e)]
    assert echo.kind == "new" and (echo.sport, echo.dport) == (0, 0)
    assert (echo.icmp_type, echo.icmp_code) == (8, 0) and echo.icmp_id is not None


def test_a_full_socket_buffer_is_counted_as_an_overrun_not_raised(namespaces: tuple[str, str]) -> None:
    client, server = namespaces
    listener = run_in_netns(server, lambda: socket.create_server((SERVER_IP, 0), backlog=128))
    port = listener.getsockname()[1]

    def connect() -> socket.socket:
        return socket.create_connection((SERVER_IP, port), timeout=5)

    with CtEventReader(server, destroy=False, rcvbuf=4096) as small:  # room for a few events only
        conns = [run_in_netns(client, connect) for _ in range(64)]
        seen: list[CtEvent] = []
        deadline = time.monotonic() + DEADLINE
        while small.lost_overruns == 0:  # the kernel reports the drop on the next recv()
            assert time.monotonic() < deadline, f"no overrun reported; {len(seen)} events read"
            seen += small.read(0.2)
        seen += small.read(0.2)
        assert 0 < len([e for e in seen if e.dport == port]) < len(conns)  # some came, some were lost
        for conn in conns:
            conn.close()
    listener.close()
