"""A TCP forwarder from root-namespace loopback to the lab's etcd, without a lab address in root.

The CLI runs in the root namespace; the cluster's etcd listens on 10.77.0.2:2379 inside
``pn-etcd``. This process straddles the two::

      root netns                          │  pn-etcd netns
                                          │
    podnet CLI ──▶ 127.0.0.1:PORT ───────▶│ proxy ──connect──▶ 10.77.0.2:2379 (etcd)
                   (bound while the       │ (setns'd after binding; every upstream socket
                    process was still in  │  it opens is created inside the lab)
                    the root namespace)   │

A socket keeps the namespace it was created in, so the listening socket stays on root loopback
after the ``setns``. One thread drives every connection with ``selectors``: accept, a
non-blocking upstream connect, then both directions spliced through bounded buffers (reading
stops while the other side's buffer is full), half-closes passed on, so long-lived streaming
connections (etcd watch) and many concurrent clients work. SIGTERM/SIGINT end it cleanly.

    python -m podnet.lab.etcd_proxy --listen 127.0.0.1:PORT --netns pn-etcd \\
        --upstream 10.77.0.2:2379 --lab-prefix=pn- [--ready-file PATH]

``--listen 127.0.0.1:0`` picks a free port; ``--ready-file`` receives ``HOST:PORT`` once the
proxy can serve. :func:`start_etcd_proxy` does all that and returns the endpoint.

An etcd cluster: ``--upstream A:2379,B:2379,C:2379 --listeners 3`` opens one listener per member
(the CLI gets every one of them, comma-separated, and fails over between them itself); listener
``i`` connects to member ``i`` first and, when that connect fails or does not complete within
:data:`CONNECT_TIMEOUT` (a killed or cut-off member), to the next member, and so on. It only fails
over before anything was sent upstream; a connection whose member dies later is reset, as a direct
one would be (the client cannot know what the member did with its request).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time

CONNECT_TIMEOUT = 1.0  # seconds for an upstream connect before the next member is tried
BUFFER_LIMIT = 256 * 1024
CHUNK = 65536
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def split_upstreams(text: str) -> list[tuple[str, int]]:
    """``A:P,B:P`` → ``[(A, P), (B, P)]``; at least one."""
    out = [split_hostport(item.strip()) for item in text.split(",") if item.strip()]
    if not out:
        raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
    return out


def failover_order(upstreams: list[tuple[str, int]], first: int) -> list[tuple[str, int]]:
    """The members listener ``first`` tries, in order: its own, then the ones after it."""
    n = len(upstreams)
    return [upstreams[(first + k) % n] for k in range(n)]


class _Conn:
    __slots__ = (
        "c2u",
        "candidates",
        "client",
        "client_eof",
        "connect_deadline",
        "connected",
        "down_shut",
        "u2c",
        "up_shut",
        "upstream",
        "upstream_eof",
    )

    def __init__(self, client: socket.socket, candidates: list[tuple[str, int]]) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.candidates = list(candidates)  # members not tried yet, in order
        self.connect_deadline = 0.0
        self.c2u, self.u2c = bytearray(), bytearray()
        self.client_eof = self.upstream_eof = False
        self.up_shut = self.down_shut = False  # we sent FIN to upstream / to client
        self.connected = False


class Forwarder:
    """Splice every connection accepted on ``listener`` to a new connection to ``upstream``.

    Upstream sockets are created in the namespace of the thread running :meth:`serve_forever`.
    """

    def __init__(
        self,
        listener: socket.socket | list[socket.socket],
        upstream: tuple[str, int] | list[tuple[str, int]],
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """``listener`` ``i`` forwards to ``upstream`` ``i`` first, then fails over in order."""
        self.listeners = listener if isinstance(listener, list) else [listener]
        self.upstreams = upstream if isinstance(upstream, list) else [upstream]
        self.connect_timeout = connect_timeout
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (*self.listeners, self._wake_r, self._wake_w):
            s.setblocking(False)
        for i, s in enumerate(self.listeners):
            self.sel.register(s, READ, i % len(self.upstreams))
        self.sel.register(self._wake_r, READ, None)
        self.conns: set[_Conn] = set()
        self._stopping = False
        self.accepted = 0

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self.sel.select(0.2):
                    if key.fileobj in self.listeners:
                        self._accept(key.fileobj, key.data)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._io(key.data, key.fileobj, mask)
                self._expire_connects()
        finally:
            for conn in list(self.conns):
                self._close(conn)
            self.sel.close()
            for s in (*self.listeners, self._wake_r, self._wake_w):
                s.close()

    # -- connections -----------------------------------------------------------------------
    def _accept(self, listener: socket.socket, first: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave it queued, try again on the next round
                return
            self.accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, failover_order(self.upstreams, first))
            self.conns.add(conn)
            if self._connect_next(conn):
                self._sync(conn)

    def _connect_next(self, conn: _Conn) -> bool:
        """Start connecting to the next candidate member; False (and the client reset) when
        none is left."""
        if conn.upstream is not None:
            if self._registered(conn.upstream):
                self.sel.unregister(conn.upstream)
            conn.upstream.close()
            conn.upstream = None
        while conn.candidates:
            target = conn.candidates.pop(0)
            upstream = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if upstream.connect_ex(target) in (0, errno.EINPROGRESS, errno.EAGAIN):
                conn.upstream = upstream
                conn.connect_deadline = time.monotonic() + self.connect_timeout
                return True
            upstream.close()
        self._close(conn, reset=True)
        return False

    def _expire_connects(self) -> None:
        """Connects that have not completed in time (a member cut off: SYNs dropped) move on."""
        now = time.monotonic()
        for conn in [c for c in self.conns if not c.connected and c.connect_deadline < now]:
            if self._connect_next(conn):
                self._sync(conn)

    def _io(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        if conn not in self.conns:
            return
        try:
            if sock is conn.upstream and not conn.connected:
                if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    if self._connect_next(conn):  # refused/unreachable: the next member
                        self._sync(conn)
                    return
                conn.connected = True
            if mask & READ:
                if sock is conn.client:
                    data = conn.client.recv(CHUNK)
                    conn.c2u += data
                    conn.client_eof = not data
                else:
                    data = conn.upstream.recv(CHUNK)
                    conn.u2c += data
                    conn.upstream_eof = not data
            if conn.connected and conn.c2u:
                del conn.c2u[: conn.upstream.send(conn.c2u)]
            if conn.u2c:
                del conn.u2c[: conn.client.send(conn.u2c)]
            if conn.client_eof and not conn.c2u and conn.connected and not conn.up_shut:
                conn.upstream.shutdown(socket.SHUT_WR)
                conn.up_shut = True
            if conn.upstream_eof and not conn.u2c and not conn.down_shut:
                conn.client.shutdown(socket.SHUT_WR)
                conn.down_shut = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, broken pipe: reset both sides, as a direct connection would see it
            self._close(conn, reset=True)
            return
        if conn.up_shut and conn.down_shut:
            self._close(conn)
        else:
            self._sync(conn)

    def _sync(self, conn: _Conn) -> None:
        """Register interest: read while the other side's buffer has room, write while ours has data."""
        if conn.connected:
            up = (READ if not conn.upstream_eof and len(conn.u2c) < BUFFER_LIMIT else 0) | (
                WRITE if conn.c2u else 0
            )
        else:
            up = WRITE
        down = (READ if not conn.client_eof and len(conn.c2u) < BUFFER_LIMIT else 0) | (
            WRITE if conn.u2c else 0
        )
        for sock, events in ((conn.upstream, up), (conn.client, down)):
            if sock is None:
                continue
            registered = self._registered(sock)
            if events and registered:
                self.sel.modify(sock, events, conn)
            elif events:
                self.sel.register(sock, events, conn)
            elif registered:
                self.sel.unregister(sock)

    def _registered(self, sock: socket.socket) -> bool:
        try:
            self.sel.get_key(sock)
            return True
        except KeyError:
            return False

    def _close(self, conn: _Conn, *, reset: bool = False) -> None:
        self.conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            if self._registered(sock):
                self.sel.unregister(sock)
            if reset:  # linger 0: close sends RST instead of FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()


# -- process entry point ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnet.lab.etcd_proxy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT in the starting namespace")
    parser.add_argument("--netns", help="namespace to enter after binding (upstream connects from there)")
    parser.add_argument(
        "--upstream", required=True, help="HOST:PORT to forward to (a cluster: HOST:PORT,HOST:PORT,...)"
    )
    parser.add_argument(
        "--listeners", type=int, default=1, help="one per member: listener i tries member i first"
    )
    parser.add_argument("--ready-file", help="write the bound HOST:PORT here once serving")
    parser.add_argument("--lab-prefix", help="marker of the lab this process belongs to (for cleanup)")
    args = parser.parse_args(argv)

    listen = split_hostport(args.listen)
    upstreams = split_upstreams(args.upstream)
    if not 1 <= args.listeners <= len(upstreams):
        parser.error(f"--listeners must be 1..{len(upstreams)} (one per upstream at most)")
    listeners = []
    for _ in range(args.listeners):
        listener = socket.socket(socket.AF_INET6 if ":" in listen[0] else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(listen)  # 1. in the namespace we were started in (root)
        listener.listen(1024)
        listeners.append(listener)
    if args.netns:
        from podnet.dataplane.netns import enter_netns

        enter_netns(args.netns)  # 2. the process is single-threaded here: all of it moves
    forwarder = Forwarder(listeners, upstreams)
    signal.signal(signal.SIGTERM, lambda *_: forwarder.stop())
    signal.signal(signal.SIGINT, lambda *_: forwarder.stop())
    bound = ["{}:{}".format(*listener.getsockname()[:2]) for listener in listeners]
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{b}\n" for b in bound))
        os.replace(tmp, args.ready_file)
    print(f"etcd-proxy {','.join(bound)} -> {args.upstream} (netns {args.netns or '-'})", flush=True)
    forwarder.serve_forever()
    return 0


def start_etcd_proxy(
    *,
    upstream: str,
    netns: str | None,
    lab_prefix: str,
    listen: str = "127.0.0.1:0",
    log: str | None = None,
    timeout: float = 5.0,
    listeners: int = 1,
):
    """Spawn the proxy in this (root) namespace; return ``(Spawned, "http://127.0.0.1:PORT")``
    (with ``listeners`` > 1 — ``upstream`` a cluster's members — one URL per listener, comma-separated).

    Record the first item in the lab state: ``state.record_process(ProcessRecord.of("etcd-proxy", sp))``.
    """
    from podnet.lab.naming import LabError
    from podnet.lab.netns import spawn

    workdir = tempfile.mkdtemp(prefix="podnet-etcd-proxy-")
    ready = os.path.join(workdir, "ready")
    cmd = [sys.executable, "-m", "podnet.lab.etcd_proxy", "--listen", listen, "--upstream", upstream]
    cmd += ["--netns", netns] if netns else []
    cmd += ["--listeners", str(listeners)] if listeners > 1 else []
    cmd += ["--ready-file", ready, f"--lab-prefix={lab_prefix}"]
    try:
        spawned = spawn(cmd, log=log, lab_prefix=lab_prefix)
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if spawned.popen is not None and spawned.popen.poll() is not None:
                raise LabError(f"etcd proxy exited with code {spawned.popen.returncode}", hint=f"see {log}")
            if time.monotonic() > deadline:
                spawned.stop()
                raise LabError(f"etcd proxy not ready after {timeout}s", hint=f"see {log}")
            time.sleep(0.005)
        with open(ready) as f:
            return spawned, ",".join("http://" + line.strip() for line in f if line.strip())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
