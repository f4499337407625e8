"""The TCP forwarder behind the etcd proxy, on loopback without namespaces (no root)."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from podnet.lab.etcd_proxy import split_hostport, start_etcd_proxy


class _Upstream(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256  # the default 5 overflows, and the upstream then resets connections


class _Handler(socketserver.BaseRequestHandler):
    """``STREAM n`` → n lines, 50 ms apart, then EOF; anything else is echoed until EOF."""

    def handle(self) -> None:
        first = self.request.recv(65536)
        if first.startswith(b"STREAM "):
            for i in range(int(first.split()[1])):
                self.request.sendall(b"event %d\n" % i)
                time.sleep(0.05)
            return
        data = first
        while data:
            self.request.sendall(data)
            data = self.request.recv(65536)


@pytest.fixture
def upstream() -> Iterator[tuple[str, int]]:
    server = _Upstream(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream) -> Iterator[tuple[object, tuple[str, int]]]:
    spawned, endpoint = start_etcd_proxy(
        upstream=f"{upstream[0]}:{upstream[1]}", netns=None, lab_prefix="pnt0000-"
    )
    yield spawned, split_hostport(endpoint.removeprefix("http://"))
    spawned.stop()


def _recv_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_split_hostport():
    assert split_hostport("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert split_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        split_hostport("nope")


def test_echo_large_payload_with_half_close(proxy):
    _, addr = proxy
    payload = os.urandom(4 * 1024 * 1024)  # far beyond the buffer limit: back-pressure both ways
    with socket.create_connection(addr, timeout=10) as s:
        sender = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        sender.start()
        got = _recv_all(s)
        sender.join()
    assert got == payload


def test_many_concurrent_connections(proxy):
    _, addr = proxy
    results = {}

    def client(i: int) -> None:
        with socket.create_connection(addr, timeout=10) as s:
            msg = b"hello %d" % i
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            results[i] = _recv_all(s) == msg

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 100 and all(results.values())


def test_long_lived_stream(proxy):
    _, addr = proxy
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"STREAM 10")
        assert _recv_all(s) == b"".join(b"event %d\n" % i for i in range(10))


def test_upstream_down_resets_client():
    # Point a second proxy at a port where nothing listens.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    sp, endpoint = start_etcd_proxy(upstream=f"127.0.0.1:{dead}", netns=None, lab_prefix="pnt0000-")
    try:
        # reset, as connecting directly would be refused: while reading, or already while the
        # connect completes when the proxy is quicker than this side (a loaded machine)
        with (
            pytest.raises(ConnectionResetError),
            socket.create_connection(split_hostport(endpoint[7:]), timeout=5) as s,
        ):
            _recv_all(s)
    finally:
        sp.stop()


def test_sigterm_ends_it_promptly(upstream):
    spawned, endpoint = start_etcd_proxy(
        upstream=f"{upstream[0]}:{upstream[1]}", netns=None, lab_prefix="pnt0000-"
    )
    conn = socket.create_connection(split_hostport(endpoint[7:]), timeout=5)  # an open connection
    t0 = time.monotonic()
    os.kill(spawned.pid, signal.SIGTERM)
    assert spawned.popen.wait(5) == 0
    assert time.monotonic() - t0 < 2.0
    conn.close()
    assert "--lab-prefix=pnt0000-" in spawned.cmd
