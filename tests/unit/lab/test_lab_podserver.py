"""The pod server: silent TCP clients, HTTP clients, UDP, SCTP skipped (loopback, no root)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time

import pytest

from podnet.lab.podserver import parse_port


def test_parse_port():
    assert parse_port("80/TCP") == (80, "TCP")
    assert parse_port("53/udp") == (53, "UDP")
    assert parse_port("8080") == (8080, "TCP")
    assert parse_port("9/SCTP") == (9, "SCTP")
    for bad in ("0/TCP", "70000", "x/TCP", "80/ICMP", ""):
        with pytest.raises(ValueError):
            parse_port(bad)


def test_tcp_silent_client_gets_the_name(podserver, free_port):
    port = free_port()
    podserver("default/web-1", f"{port}/TCP")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        data = b""
        while chunk := s.recv(100):
            data += chunk
    assert data == b"default/web-1\n"


def test_tcp_many_concurrent_clients(podserver, free_port):
    port = free_port()
    podserver("ns/p", f"{port}/TCP")
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        answers = {s.makefile("rb").readline() for s in socks}
    finally:
        for s in socks:
            s.close()
    assert answers == {b"ns/p\n"}


def test_http_get_keep_alive_and_head(podserver, free_port):
    port = free_port()
    podserver("default/web-1", f"{port}/TCP")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    for _ in range(3):  # keep-alive: one connection, three requests
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        assert json.loads(resp.read()) == {
            "pod": "default/web-1",
            "method": "GET",
            "path": "/",
            "client": "127.0.0.1",
        }
    conn.request("HEAD", "/a?b=1")
    resp = conn.getresponse()
    head_of = (
        json.dumps(
            {"pod": "default/web-1", "method": "HEAD", "path": "/a?b=1", "client": "127.0.0.1"}
        ).encode()
        + b"\n"
    )
    assert resp.status == 200 and resp.getheader("Content-Length") == str(len(head_of))
    assert resp.read() == b""
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):  # every method and path: 200
        conn.request(method, "/api/v1/x", body=b"a" * 5000)
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {
            "pod": "default/web-1",
            "method": method,
            "path": "/api/v1/x",
            "client": "127.0.0.1",
        }
    conn.close()


def test_http_pipelined_and_close(podserver, free_port):
    port = free_port()
    podserver("a/b", f"{port}/TCP")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(
        b'{"pod": "a/b", "method": "GET", "path": "/", "client": "127.0.0.1"}\n'
    )


def test_curl_works(podserver, free_port):
    port = free_port()
    podserver("ns/curl", f"{port}/TCP")
    out = subprocess.run(
        ["curl", "-s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=10
    )
    assert json.loads(out.stdout)["pod"] == "ns/curl"


def test_non_http_bytes_get_the_name(podserver, free_port):
    port = free_port()
    podserver("x/y", f"{port}/TCP")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"hello\n")
        assert s.makefile("rb").read() == b"x/y\n"


def test_udp_and_sctp_skipped(podserver, free_port):
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    proc = podserver("default/dns", f"{tcp}/TCP", f"{udp}/UDP", "9999/SCTP", stderr=subprocess.PIPE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(3):  # every datagram is answered
            s.sendto(b"q", ("127.0.0.1", udp))
            assert s.recvfrom(100)[0] == b"default/dns\n"
    proc.terminate()
    _, err = proc.communicate(timeout=5)
    assert "9999/SCTP not served" in err


def test_starts_fast(podserver, free_port):
    port = free_port()
    t0 = time.perf_counter()
    podserver("a/b", f"{port}/TCP")
    assert time.perf_counter() - t0 < 1.0  # stdlib only; typically ~50 ms
