"""The node's DNS proxy (Cilium profile): what ``rules.dns`` allows, lookup by lookup.

    pod ──DNS (UDP/TCP)──▶ tc: redirect entry, mark 0x0E00 ──▶ nftables tproxy :15053 ──▶ DnsProxy
        name allowed (calc.policy_l7.DnsPolicy) ──▶ asked of the original server from the node's
                                                     address; its answer back from the server's
        name refused ──▶ REFUSED, from the server's address

The client's lookup arrives on a transparent socket with its original destination (UDP:
``IP_ORIGDSTADDR``; TCP: the accepted socket's own address), so the answer goes back from the
server's address and port, as the client expects. The proxy asks the server from the node's own
address (Cilium's non-transparent DNS proxy): the server sees the node, not the pod. Each lookup
becomes an L7 record (``protocol: dns``: the name, the type, the answer's code and addresses, the
verdict and the rule), for ``podnet monitor --type l7``. Only DNS passes through Python here; the
pods' other traffic never does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from podnet.agent.log import kv
from podnet.calc.haproxy import DEFAULT_DENY
from podnet.calc.l7_dns import allowed
from podnet.calc.policy import PodInfo
from podnet.calc.policy_l7 import DnsPolicy

log = logging.getLogger("podnet.agent.dns")

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = IP_ORIGDSTADDR = 20
UDP, TCP = 17, 6
WORLD = 2


class DnsProxy:
    """Serves ``port`` (UDP and TCP, transparent) in the agent's namespace until :meth:`stop`."""

    def __init__(
        self,
        node: str,
        port: int,
        pods: Callable[[], Iterable[PodInfo]],
        sink: Callable[[Iterable[dict[str, Any]]], None],
        timeout: float = 2.0,
        on_answer: Callable[[str, list[str], int], None] | None = None,
    ) -> None:
        self.node, self.port, self._pods, self._sink, self.timeout = node, port, pods, sink, timeout
        self.on_answer = on_answer  # (name, addresses, TTL) of an allowed answer, before the client gets it
        self._policies: tuple[DnsPolicy, ...] = ()
        self._ipcache: list[tuple[ipaddress.IPv4Network, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dns-proxy")
        self.udp: socket.socket | None = None
        self.tcp: socket.socket | None = None
        self.answered = self.refused = self.failed = 0

    # ------------------------------------------------------------------ what it enforces

    def update(self, policies: Iterable[DnsPolicy], ipcache: Mapping[str, int]) -> bool:
        """The rules and the ipcache (prefix -> identity) in force from the next lookup on."""
        policies = tuple(policies)
        table = sorted(
            ((ipaddress.IPv4Network(p, strict=False), n) for p, n in ipcache.items() if ":" not in p),
            key=lambda item: -item[0].prefixlen,
        )
        with self._lock:
            changed = policies != self._policies
            self._policies, self._ipcache = policies, table
        return changed

    def identity(self, address: str) -> int:
        ip = ipaddress.IPv4Address(address)
        with self._lock:
            table = self._ipcache
        return next((n for net, n in table if ip in net), WORLD)

    def judge(self, client: str, server: str, port: int, protocol: int, name: str) -> tuple[bool, str]:
        """(allowed, the rule that decided) for a lookup of ``name``."""
        peer = self.identity(server)
        with self._lock:
            policies = self._policies
        for policy in policies:
            if (
                policy.endpoint == client
                and policy.protocol == protocol
                and policy.first <= port <= policy.last
                and (policy.identities is None or peer in policy.identities)
            ) and (policy.selectors is None or allowed(policy.selectors, name)):
                return True, policy.name
        return False, DEFAULT_DENY

    # ------------------------------------------------------------------ serving

    def start(self) -> DnsProxy:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        udp.bind(("0.0.0.0", self.port))
        udp.settimeout(0.5)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        tcp.bind(("0.0.0.0", self.port))
        tcp.listen(128)
        tcp.settimeout(0.5)
        self.udp, self.tcp = udp, tcp
        threading.Thread(target=self._serve_udp, name="dns-proxy-udp", daemon=True).start()
        threading.Thread(target=self._serve_tcp, name="dns-proxy-tcp", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for sock in (self.udp, self.tcp):
            if sock is not None:
                sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _serve_udp(self) -> None:
        assert self.udp is not None
        while not self._stop.is_set():
            try:
                data, ancillary, _, client = self.udp.recvmsg(65535, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            server = _original_destination(ancillary)
            if server is not None:
                self._pool.submit(self._lookup_udp, data, client, server)

    def _lookup_udp(self, data: bytes, client: tuple[str, int], server: tuple[str, int]) -> None:
        answer = self._handle(data, client, server, UDP)
        if answer is None:
            return
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reply:
                reply.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                reply.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                reply.bind(server)  # the server's address and port: what the client asked
                reply.connect(client)
                reply.send(answer)
        except OSError as exc:
            self.failed += 1
            kv(log, logging.DEBUG, "DNS answer not sent", client=f"{client[0]}:{client[1]}", error=str(exc))

    def _serve_tcp(self) -> None:
        assert self.tcp is not None
        while not self._stop.is_set():
            try:
                conn, client = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._pool.submit(self._lookup_tcp, conn, client)

    def _lookup_tcp(self, conn: socket.socket, client: tuple[str, int]) -> None:
        with conn:
            conn.settimeout(self.timeout)
            server = conn.getsockname()  # tproxy: the original destination
            try:
                while True:
                    head = recv_exactly(conn, 2)
                    if head is None:
                        return
                    data = recv_exactly(conn, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    answer = self._handle(data, client, server, TCP)
                    if answer is None:
                        return
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
            except OSError:
                return

    # ------------------------------------------------------------------ one lookup

    def _handle(
        self, data: bytes, client: tuple[str, int], server: tuple[str, int], protocol: int
    ) -> bytes | None:
        started = time.monotonic()
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None  # not DNS: no answer, as a server would give none
        question = query.question[0] if query.question else None
        name = question.name.to_text() if question is not None else ""
        ok, rule = self.judge(client[0], server[0], server[1], protocol, name)
        if ok:
            wire = self._forward(data, server, protocol)
            if wire is None:
                response = dns.message.make_response(query)
                response.set_rcode(dns.rcode.SERVFAIL)
                wire = response.to_wire()
            else:
                self._learn(wire)
            self.answered += 1
        else:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED)
            wire = response.to_wire()
            self.refused += 1
        self._record(client, server, protocol, question, wire, ok, rule, time.monotonic() - started)
        return wire

    def _learn(self, wire: bytes) -> None:
        """Hand an allowed answer's A records to ``on_answer`` (toFQDNs), which may hold the
        answer until the policy allows the addresses."""
        if self.on_answer is None:
            return
        try:
            response = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.A:
                with contextlib.suppress(Exception):  # a failure here must not lose the answer
                    self.on_answer(rrset.name.to_text(), [r.address for r in rrset], int(rrset.ttl))

    def _forward(self, data: bytes, server: tuple[str, int], protocol: int) -> bytes | None:
        """The server's answer, asked from the node's own address (None: no answer in time)."""
        try:
            if protocol == UDP:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(self.timeout)
                    sock.connect(server)
                    sock.send(data)
                    while True:
                        answer = sock.recv(65535)
                        if answer[:2] == data[:2]:  # the same message id
                            return answer
            with socket.create_connection(server, timeout=self.timeout) as sock:
                sock.sendall(struct.pack("!H", len(data)) + data)
                head = recv_exactly(sock, 2)
                return recv_exactly(sock, struct.unpack("!H", head)[0]) if head else None
        except OSError:
            return None

    def _record(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        protocol: int,
        question: Any,
        wire: bytes,
        ok: bool,
        rule: str,
        seconds: float,
    ) -> None:
        try:
            response = dns.message.from_wire(wire)
            rcode = dns.rcode.to_text(response.rcode())
            addresses = sorted(
                r.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for r in rrset
            )
        except dns.exception.DNSException:
            rcode, addresses = "FORMERR", []
        by_ip = {ip: pod.key for pod in self._pods() for ip in pod.ips}
        record = {
            "type": "l7",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "node": self.node,
            "protocol": "dns",
            "transport": "udp" if protocol == UDP else "tcp",
            "direction": "egress",
            "src": client[0],
            "sport": client[1],
            "dst": server[0],
            "dport": server[1],
            "srcPod": by_ip.get(client[0]),
            "dstPod": by_ip.get(server[0]),
            "query": question.name.to_text() if question is not None else "",
            "qtype": dns.rdatatype.to_text(question.rdtype) if question is not None else "",
            "rcode": rcode,
            "addresses": addresses,
            "latencyMs": round(seconds * 1000, 3),
            "verdict": "FORWARDED" if ok else "DENIED",
            "rule": rule,
        }
        with contextlib.suppress(Exception):  # the records are for observers: never fail a lookup
            self._sink([record])


def _original_destination(ancillary: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The ``IP_ORIGDSTADDR`` of a tproxied datagram (a ``struct sockaddr_in``)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            port, raw = struct.unpack_from("!H4s", data, 2)
            return socket.inet_ntoa(raw), port
    return None


def recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from a stream, or None if it ends first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
