"""The server every lab pod runs: answers on each declared port with the pod's name.

Like ``agnhost serve-hostname``, standard library only, one process and one thread per pod::

    python -m podnet.lab.podserver --name default/web-1 --port 80/TCP --port 53/UDP --lab-prefix=pn-

- TCP: a client that says nothing gets ``<name>\\n`` after ``TCP_GRACE`` (50 ms) and the connection
  closes; a client that speaks HTTP (any method and path) gets ``200 OK`` with a small JSON body,
  ``{"pod": <name>, "method": ..., "path": ..., "client": <the address it came from>}`` (like
  Cilium's json-mock echo server), with
  keep-alive and pipelining, so curl and wrk work; any other bytes get the name and close.
  The grace period is what lets one port serve both kinds of client.
- UDP: every datagram is answered with ``<name>\\n``.
- SCTP: not served (this kernel cannot open SCTP sockets): a warning on stderr, the rest still runs.

All ports are bound before anything is served; ``--ready-file`` then receives the served ports.
``selectors`` drive every socket: no thread per connection, idle HTTP connections time out.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time

TCP_GRACE = 0.05
HTTP_IDLE = 30.0
MAX_REQUEST = 16 * 1024
PROTOCOLS = ("TCP", "UDP", "SCTP")
HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def parse_port(text: str) -> tuple[int, str]:
    """``"80/TCP"`` → ``(80, "TCP")``; the protocol defaults to TCP and is case-insensitive."""
    number, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        raise ValueError(f"bad port {text!r}: expected PORT[/TCP|UDP|SCTP] with PORT in 1..65535")
    if proto not in PROTOCOLS:
        raise ValueError(f"bad protocol in {text!r}: one of {', '.join(PROTOCOLS)}")
    return int(number), proto


class _Tcp:
    __slots__ = ("closing", "deadline", "http", "inbuf", "outbuf", "peer", "sock")

    def __init__(self, sock: socket.socket, deadline: float, peer: str = "") -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.deadline = deadline
        self.http = False
        self.closing = False  # close once outbuf is flushed


class PodServer:
    def __init__(self, name: str, ports: list[tuple[int, str]], host: str = "0.0.0.0") -> None:
        self.name = name
        self.answer = name.encode() + b"\n"
        self.sel = selectors.DefaultSelector()
        self.listeners: list[tuple[int, str]] = []
        self.skipped: list[tuple[int, str]] = []
        self.timers: list[tuple[float, int, _Tcp]] = []
        self._stopping = False
        for port, proto in ports:
            if proto == "SCTP":
                self.skipped.append((port, proto))
                continue
            kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if proto == "TCP":
                sock.listen(1024)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ, proto)
            self.listeners.append((sock.getsockname()[1], proto))

    def stop(self) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        while not self._stopping:
            timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers else 1.0
            for key, mask in self.sel.select(min(timeout, 1.0)):
                if key.data == "TCP":
                    self._accept(key.fileobj)
                elif key.data == "UDP":
                    self._udp(key.fileobj)
                else:
                    self._tcp(key.data, mask)
            self._expire()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()

    # -- UDP -------------------------------------------------------------------------------
    def _udp(self, sock: socket.socket) -> None:
        for _ in range(256):
            try:
                _data, peer = sock.recvfrom(65535)
                sock.sendto(self.answer, peer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. an ICMP error queued by an earlier reply

    # -- TCP -------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(256):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: retried on the next readiness
            sock.setblocking(False)
            conn = _Tcp(sock, time.monotonic() + TCP_GRACE, str(address[0]))
            self.sel.register(sock, selectors.EVENT_READ, conn)
            heapq.heappush(self.timers, (conn.deadline, id(conn), conn))

    def _expire(self) -> None:
        # One heap entry per connection: activity only moves ``conn.deadline``; an entry that pops
        # early is pushed again at the new deadline (no entry per HTTP request).
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, conn = heapq.heappop(self.timers)
            if conn.sock.fileno() < 0:
                continue
            if conn.deadline > now:
                heapq.heappush(self.timers, (conn.deadline, id(conn), conn))
            elif conn.http:
                self._close(conn)  # idle keep-alive connection
            elif not conn.closing:
                self._reply_and_close(conn)  # said nothing during the grace period

    def _reply_and_close(self, conn: _Tcp) -> None:
        conn.outbuf += self.answer
        conn.closing = True
        self._flush(conn)

    def _tcp(self, conn: _Tcp, mask: int) -> None:
        if conn.sock.fileno() < 0:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(conn)
                return
            if data == b"":  # the peer closed its side: finish what we owe it, then close
                if conn.http or conn.closing:
                    conn.closing = True
                    self._flush(conn)
                else:
                    self._reply_and_close(conn)
                return
            if data:
                conn.inbuf += data
                if not conn.http and not conn.closing:
                    if any(conn.inbuf.startswith(m) for m in HTTP_METHODS):
                        conn.http = True
                        conn.deadline = time.monotonic() + HTTP_IDLE
                    elif not any(m.startswith(bytes(conn.inbuf[:8])) for m in HTTP_METHODS):
                        conn.inbuf.clear()
                        self._reply_and_close(conn)
                        return
                if conn.http:
                    self._http(conn)
        self._flush(conn)

    def _http(self, conn: _Tcp) -> None:
        while True:
            head_end = conn.inbuf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(conn.inbuf) > MAX_REQUEST:
                    conn.outbuf += _http_response(431, b"request too large\n", keep_alive=False)
                    conn.closing = True
                return
            head = bytes(conn.inbuf[:head_end]).decode("latin-1").split("\r\n")
            method, _, rest = head[0].partition(" ")
            version = rest.rpartition(" ")[2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            body_len = int(headers.get("content-length", "0") or 0)
            if len(conn.inbuf) < head_end + 4 + body_len:
                return
            del conn.inbuf[: head_end + 4 + body_len]
            connection = headers.get("connection", "").lower()
            keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            target = rest.rpartition(" ")[0]
            echo = {"pod": self.name, "method": method, "path": target, "client": conn.peer}
            answer = json.dumps(echo).encode() + b"\n"
            body = b"" if method == "HEAD" else answer
            conn.outbuf += _http_response(200, body, keep_alive=keep, length=len(answer))
            if not keep:
                conn.closing = True
                return
            conn.deadline = time.monotonic() + HTTP_IDLE

    def _flush(self, conn: _Tcp) -> None:
        try:
            while conn.outbuf:
                del conn.outbuf[: conn.sock.send(conn.outbuf)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        if conn.closing and not conn.outbuf:
            self._close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        self.sel.modify(conn.sock, events, conn)

    def _close(self, conn: _Tcp) -> None:
        if conn.sock.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn.sock)
            conn.sock.close()


def _http_response(status: int, body: bytes, *, keep_alive: bool, length: int | None = None) -> bytes:
    reason = {200: "OK", 431: "Request Header Fields Too Large"}[status]
    kind = "application/json" if status == 200 else "text/plain"
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode() + body


def podserver_command(
    name: str, ports: list[str], lab_prefix: str, ready_file: str | None = None
) -> list[str]:
    """The command line that runs a pod's server (for :func:`podnet.lab.netns.spawn`)."""
    cmd = [sys.executable, "-m", "podnet.lab.podserver", "--name", name]
    for port in ports:
        cmd += ["--port", port]
    if ready_file:
        cmd += ["--ready-file", ready_file]
    return [*cmd, f"--lab-prefix={lab_prefix}"]


def _raise_nofile() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnet.lab.podserver", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--name", required=True, help="the answer: NS/POD")
    parser.add_argument("--port", action="append", default=[], help="PORT[/TCP|UDP|SCTP], repeatable")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default: all)")
    parser.add_argument("--ready-file", help="write the served ports here once bound")
    parser.add_argument("--lab-prefix", help="marker of the lab this process belongs to (for cleanup)")
    args = parser.parse_args(argv)
    try:
        ports = [parse_port(p) for p in args.port]
    except ValueError as exc:
        parser.error(str(exc))
    _raise_nofile()
    try:
        server = PodServer(args.name, ports, args.host)
    except OSError as exc:
        print(f"podserver {args.name}: cannot bind: {exc}", file=sys.stderr, flush=True)
        return 1
    for port, proto in server.skipped:
        print(
            f"podserver {args.name}: warning: {port}/{proto} not served "
            "(this kernel cannot open SCTP sockets)",
            file=sys.stderr,
            flush=True,
        )
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # nothing to save: SIGTERM ends it at once
    served = " ".join(f"{port}/{proto}" for port, proto in server.listeners)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write(served + "\n")
        os.replace(args.ready_file + ".tmp", args.ready_file)
    print(f"podserver {args.name}: serving {served or 'nothing'}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
