"""The lab's HTTP probe (lab.probe.http_request) against small loopback servers: a 2xx is ok, any
other status is not ok but reported, no answer is a timeout, and an answer that is no HTTP (the
pod server's name for a client it took as silent) is retried once on a new connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from podnet.lab.probe import HttpProbe, http_request


def server(*answers: bytes | None) -> int:
    """A loopback server answering its n-th connection with ``answers[n]`` (None: never)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    done = threading.Event()
    DONE.append(done)

    def run() -> None:
        held = []
        for answer in answers:
            conn, _ = listener.accept()
            if answer is None:
                held.append(conn)
                continue
            if answer.startswith(b"HTTP/"):
                conn.recv(4096)
            conn.sendall(answer)
            conn.close()
        done.wait(5.0)  # the silent connections stay open until the test is over
        for conn in held:
            conn.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


DONE: list[threading.Event] = []


def teardown_function() -> None:
    for done in DONE:
        done.set()
    DONE.clear()


def get(port: int, timeout: float = 1.0) -> Callable[[], object]:
    return http_request("127.0.0.1", port, HttpProbe("PUT", "/api/v1", (("X-Env", "prod"),)), timeout)


def test_statuses_and_a_timeout():
    ok = get(server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
    assert (ok.ok, ok.http_status, ok.answer, ok.detail) == (True, 200, "hi", "HTTP 200 OK")
    denied = get(server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\n\r\nAccess denied"))
    assert (denied.ok, denied.http_status, denied.answer) == (False, 403, "Access denied")
    silent = get(server(None), timeout=0.3)
    assert not silent.ok and silent.http_status is None and silent.detail.startswith("timeout")


def test_a_non_http_answer_is_retried_once():
    retried = get(server(b"shop/api\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert retried.ok and retried.http_status == 200
    twice = get(server(b"shop/api\n", b"shop/api\n"))
    assert not twice.ok and twice.http_status is None and twice.detail.startswith("not an HTTP answer")
