"""TCP reachability helpers of the lab tests: one connect's outcome, waiting for one, a server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from podnet.dataplane.netns import in_netns


def connect(netns: str, ip: str, port: int, timeout: float = 1.0) -> str:
    """``ok`` | ``refused`` | ``timeout`` | another error, for one TCP connect from ``netns``."""
    with in_netns(netns):
        sock = socket.socket()
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            return "ok"
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return exc.strerror or str(exc)


def wait_connect(netns: str, ip: str, port: int, want: str, timeout: float = 15.0) -> None:
    """Connect every 0.2 s until the outcome is ``want`` (assert within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while (got := connect(netns, ip, port)) != want:
        assert time.monotonic() < deadline, f"{netns} -> {ip}:{port}: {got}, want {want}"
        time.sleep(0.2)


class TcpServer:
    """Accepts (and closes) connections on ``ip:port`` in ``netns`` until closed."""

    def __init__(self, netns: str, ip: str, port: int) -> None:
        with in_netns(netns):
            self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(64)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
