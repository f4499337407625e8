"""The lab's DNS servers on loopback (lab.dns_server): the cluster DNS answers its zone from the
Services and Pods and forwards the rest to the test zone's server, over UDP and TCP; a dead
upstream is SERVFAIL; what is not DNS gets no answer."""

from __future__ import annotations

import errno
import socket

import dns.message
import dns.query
import dns.rcode
import pytest
from test_cluster_dns import PODS, SERVICES

from podnet.lab.dns_server import DnsServer, cluster_resolver, zone_resolver

ZONE = {"api.example.test": (("192.0.2.10", "192.0.2.11"), 3), "db.example.test": (("192.0.2.20",), 30)}


@pytest.fixture
def servers():
    upstream = DnsServer(zone_resolver(ZONE), "127.0.0.1", 0).start()
    resolver = cluster_resolver(lambda: (SERVICES, PODS), ("127.0.0.1", upstream.port), timeout=1.0)
    cluster = DnsServer(resolver, "127.0.0.1", 0).start()
    yield cluster, upstream
    cluster.stop()
    upstream.stop()


def ask(server: DnsServer, name: str, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", timeout=5, port=server.port)  # longer than the forward's 1 s


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in response.answer for r in rrset)


def test_cluster_names_forwarded_names_and_failures(servers):
    cluster, upstream = servers
    for tcp in (False, True):
        web = ask(cluster, "web.shop.svc.cluster.local", tcp)
        assert web.rcode() == dns.rcode.NOERROR and addresses(web) == ["10.96.0.10"]
        assert addresses(ask(cluster, "10-244-2-3.shop.pod.cluster.local", tcp)) == ["10.244.2.3"]
        assert ask(cluster, "nope.shop.svc.cluster.local", tcp).rcode() == dns.rcode.NXDOMAIN
        forwarded = ask(cluster, "api.example.test", tcp)
        assert addresses(forwarded) == ["192.0.2.10", "192.0.2.11"] and forwarded.answer[0].ttl == 3
        assert ask(cluster, "other.example.test", tcp).rcode() == dns.rcode.NXDOMAIN
    assert upstream.answered == 4  # the forwarded questions only
    upstream.stop()
    assert ask(cluster, "db.example.test").rcode() == dns.rcode.SERVFAIL
    assert addresses(ask(cluster, "web.shop.svc.cluster.local")) == ["10.96.0.10"]  # still answers its zone


def test_what_is_not_dns_gets_no_answer(servers):
    cluster, _ = servers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(b"not dns", ("127.0.0.1", cluster.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(512)
    assert addresses(ask(cluster, "web.shop.svc.cluster.local")) == ["10.96.0.10"]  # and it lives on


def test_zone_records_from_the_command_line() -> None:
    from podnet.lab.dns_server import parse_record

    assert parse_record("web.example.test=10.0.0.3,10.0.0.4/3") == (
        "web.example.test",
        (("10.0.0.3", "10.0.0.4"), 3),
    )
    assert parse_record("a.example.test=10.0.0.3") == ("a.example.test", (("10.0.0.3",), 30))


def test_a_picked_port_taken_for_tcp_is_picked_again(monkeypatch) -> None:
    """Port 0: the UDP port the kernel picks may be in use for TCP (CI saw EADDRINUSE): the pair is
    picked again; an explicit port in use is an error at once."""
    from podnet.lab import dns_server

    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    taken = held.getsockname()[1]
    real, first = socket.socket, []

    class PicksTheTakenPortFirst(real):  # type: ignore[misc, valid-type]
        def bind(self, address):  # type: ignore[no-untyped-def]
            if self.type == socket.SOCK_DGRAM and address[1] == 0 and not first:
                first.append(True)
                address = (address[0], taken)
            return super().bind(address)

    monkeypatch.setattr(dns_server.socket, "socket", PicksTheTakenPortFirst)
    try:
        udp, tcp = dns_server._bind_pair("127.0.0.1", 0)
        assert first and udp.getsockname()[1] == tcp.getsockname()[1] != taken
        udp.close()
        tcp.close()
        with pytest.raises(OSError) as info:
            dns_server._bind_pair("127.0.0.1", taken)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        held.close()
