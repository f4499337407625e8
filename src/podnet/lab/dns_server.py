"""The lab's DNS servers, on dnspython (chosen because the agent's DNS proxy needs the same message
parsing, and a server that reads the datastore is the CoreDNS ``kubernetes`` plugin's design):

- the **cluster DNS** (:func:`cluster_resolver`): names of the cluster zone answered from the
  Services and Pods (:mod:`podnet.lab.cluster_dns`), every other name forwarded to an upstream
  (SERVFAIL when it does not answer);
- a **test zone** (:func:`zone_resolver`): fixed names with several addresses and short TTLs, the
  "outside world" the lab's ``ext`` host serves (``*.example.test``); other names NXDOMAIN.

:class:`DnsServer` serves a resolver on UDP and TCP (two-byte length prefix, RFC 1035 4.2.2), one
thread each, until :meth:`DnsServer.stop`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from podnet.agent.dns_proxy import recv_exactly
from podnet.dataplane.netns import in_netns
from podnet.lab.cluster_dns import FORWARD, NXDOMAIN, ZONE, answer

Resolver = Callable[[dns.message.Message], dns.message.Message]
CLUSTER_TTL = 5  # seconds (CoreDNS's kubernetes plugin default)


def _reply(query: dns.message.Message, rcode: int, addresses: Iterable[str] = (), ttl: int = CLUSTER_TTL):
    """The response to ``query`` with ``rcode`` and, for an A question, ``addresses``."""
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    response.set_rcode(rcode)
    question = query.question[0]
    found = list(addresses)
    if rcode == dns.rcode.NOERROR and found and question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        response.answer.append(dns.rrset.from_text_list(question.name, ttl, "IN", "A", found))
    return response


def cluster_resolver(
    snapshot: Callable[[], tuple[list, list]],  # type: ignore[type-arg]
    upstream: tuple[str, int] | None,
    zone: str = ZONE,
    timeout: float = 2.0,
) -> Resolver:
    """Answers ``zone`` from ``snapshot()`` (the Services and Pods now), forwards the rest."""

    def resolve(query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        services, pods = snapshot()
        found = answer(question.name.to_text(), services, pods, zone)
        if found.rcode == FORWARD:
            return _forward(query, upstream, timeout)
        if found.rcode == NXDOMAIN:
            return _reply(query, dns.rcode.NXDOMAIN)
        return _reply(query, dns.rcode.NOERROR, found.addresses)

    return resolve


def _forward(
    query: dns.message.Message, upstream: tuple[str, int] | None, timeout: float
) -> dns.message.Message:
    if upstream is None:
        return _reply(query, dns.rcode.SERVFAIL)
    try:
        response = dns.query.udp(query, upstream[0], timeout=timeout, port=upstream[1])
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, upstream[0], timeout=timeout, port=upstream[1])
    except (dns.exception.DNSException, OSError):
        return _reply(query, dns.rcode.SERVFAIL)
    response.id = query.id
    return response


def zone_resolver(names: Mapping[str, tuple[tuple[str, ...], int]]) -> Resolver:
    """Answers exactly ``names`` (name -> (addresses, TTL)); every other name is NXDOMAIN."""
    table = {dns.name.from_text(name).canonicalize(): value for name, value in names.items()}

    def resolve(query: dns.message.Message) -> dns.message.Message:
        question = query.question[0]
        found = table.get(question.name.canonicalize())
        if found is None:
            return _reply(query, dns.rcode.NXDOMAIN)
        addresses, ttl = found
        return _reply(query, dns.rcode.NOERROR, addresses, ttl)

    return resolve


PICK_ATTEMPTS = 20  # port 0: the UDP port picked may be taken for TCP by someone else; pick again


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same ``port`` (0: a free one for both)."""
    for attempt in range(PICK_ATTEMPTS if port == 0 else 1):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, udp.getsockname()[1]))
            return udp, tcp
        except OSError as exc:
            udp.close()
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == PICK_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class DnsServer:
    """``resolver`` served on ``host``:``port`` (UDP and TCP); ``port`` 0 picks one (:attr:`port`)."""

    def __init__(
        self, resolver: Resolver, host: str = "0.0.0.0", port: int = 53, netns: str | None = None
    ) -> None:
        self.resolver, self.netns = resolver, netns
        with in_netns(netns):  # the sockets stay in that namespace; so do the threads (forwards)
            self.udp, self.tcp = _bind_pair(host, port)
            self.port = self.udp.getsockname()[1]
            self.tcp.listen(64)
        self.udp.settimeout(0.5)
        self.tcp.settimeout(0.5)
        self.answered = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve_udp, name="dns-udp", daemon=True),
            threading.Thread(target=self._serve_tcp, name="dns-tcp", daemon=True),
        ]

    def start(self) -> DnsServer:
        for thread in self._threads:
            thread.start()
        return self

    def _respond(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not a DNS message: no answer
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
        else:
            response = self.resolver(query)
        self.answered += 1
        return response.to_wire()

    def _serve_udp(self) -> None:
        with in_netns(self.netns):
            self._udp_loop()

    def _udp_loop(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            out = self._respond(wire)
            if out is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        with in_netns(self.netns), conn:
            conn.settimeout(5.0)
            try:
                while not self._stop.is_set():
                    head = recv_exactly(conn, 2)
                    if head is None:
                        return
                    wire = recv_exactly(conn, struct.unpack("!H", head)[0])
                    if wire is None:
                        return
                    out = self._respond(wire)
                    if out is None:
                        return
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        for sock in (self.udp, self.tcp):
            sock.close()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(2.0)


# ---------------------------------------------------------------------------------- the processes


class Snapshot:
    """The cluster's Services and Pods, listed from the datastore every ``interval`` seconds by a
    daemon thread (CoreDNS watches; a lab's few objects are cheaper to list than to watch)."""

    def __init__(self, store, interval: float = 0.5) -> None:  # type: ignore[no-untyped-def]
        self.store, self.interval = store, interval
        self.current: tuple[list, list] = ([], [])  # type: ignore[type-arg]
        self.errors = 0
        self._refresh()
        threading.Thread(target=self._loop, name="dns-snapshot", daemon=True).start()

    def _refresh(self) -> None:
        from podnet.errors import PodnetError
        from podnet.model import lookup

        try:
            self.current = (list(self.store.list(lookup("services"))), list(self.store.list(lookup("pods"))))
        except PodnetError:
            self.errors += 1  # the last good snapshot stays

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            self._refresh()

    def __call__(self) -> tuple[list, list]:  # type: ignore[type-arg]
        return self.current


def parse_record(text: str) -> tuple[str, tuple[tuple[str, ...], int]]:
    """``NAME=IP[,IP...][/TTL]`` -> (name, (addresses, TTL)); TTL 30 when not given."""
    name, _, rest = text.partition("=")
    addresses, _, ttl = rest.partition("/")
    return name, (tuple(a for a in addresses.split(",") if a), int(ttl or 30))


def main(argv: list[str] | None = None) -> int:
    """``python -m podnet.lab.dns_server cluster --etcd EP --netns NS [--upstream IP:PORT]`` (the
    cluster DNS pod: the datastore read from this process's namespace, the queries served in the
    pod's) or ``... zone --listen IP --record NAME=IP[,IP...][/TTL]...`` (the test zone);
    ``--ready-file`` is written once the sockets are bound. Runs until SIGTERM."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m podnet.lab.dns_server")
    parser.add_argument("mode", choices=("cluster", "zone"))
    parser.add_argument("--etcd", default=None)
    parser.add_argument("--netns", default=None, help="serve in this network namespace")
    parser.add_argument("--upstream", default=None, metavar="IP:PORT")
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[])
    parser.add_argument("--ready-file", default=None)
    parser.add_argument("--lab-prefix", default=None)  # marks lab processes
    args = parser.parse_args(argv)
    if args.mode == "cluster":
        from podnet.datastore.etcd import EtcdDatastore
        from podnet.datastore.resources import ResourceStore

        if not args.etcd:
            parser.error("cluster needs --etcd")
        upstream = None
        if args.upstream:
            host, _, port = args.upstream.rpartition(":")
            upstream = (host, int(port))
        snapshot = Snapshot(ResourceStore(EtcdDatastore([args.etcd])))
        resolver = cluster_resolver(snapshot, upstream)
    else:
        resolver = zone_resolver(dict(parse_record(r) for r in args.record))
    server = DnsServer(resolver, args.listen, args.port, args.netns).start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(f"{server.port}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
