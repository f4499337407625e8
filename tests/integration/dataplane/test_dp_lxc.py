"""The Cilium profile's tc programs (bpf/lxc.c) run on crafted packets with BPF_PROG_TEST_RUN, their
maps written by :class:`podnet.dataplane.lxc.LxcDatapath` as the agent writes them.

Nothing is sent: a test run only returns the program's verdict (TC_ACT_OK 0, TC_ACT_SHOT 2,
TC_ACT_REDIRECT 7). The endpoint under test is keyed by the loopback's ifindex (1), the device a
test run's packet arrives on. The policy verdicts are compared with the model the maps are compiled
from (:func:`podnet.calc.policymap.datapath_verdict`), over random maps: the kernel's LPM lookups,
deny precedence and default deny are what calc says they are.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import random
import secrets
import struct
from collections.abc import Iterator

import pytest

from podnet.calc.ipcache import IpcacheEntry
from podnet.calc.policy import ControlPlane
from podnet.calc.policy_cilium import EndpointMap
from podnet.calc.policymap import (
    EGRESS,
    INGRESS,
    PolicyEntry,
    PolicyKey,
    add_entry,
    datapath_verdict,
    materialize,
    port_prefixes,
)
from podnet.dataplane import bpf
from podnet.dataplane import cilium_maps as cm
from podnet.dataplane.lxc import (
    CONFIG,
    CONTROL,
    CT,
    ENDPOINTS,
    ENTRY_STATS,
    EP_STATS,
    FROM_CONTAINER,
    FROM_NETDEV,
    IPCACHE,
    LOCAL_IPS,
    POLICY,
    TO_CONTAINER,
    LxcDatapath,
    LxcEndpoint,
)
from podnet.dataplane.ringbuf import RingBuffer

pytestmark = [pytest.mark.root, pytest.mark.lab]

if os.geteuid() != 0:
    pytest.skip("BPF test runs need root", allow_module_level=True)

OK, SHOT, REDIRECT = 0, 2, 7
LO = 1
POD_IP, POD_MAC, HOST_MAC = "10.99.0.5", "02:00:00:00:00:05", "ee:ee:ee:ee:ee:05"
PEERS = {"10.99.1.1": 300, "10.99.1.2": 301, "10.99.1.3": 302, "10.99.2.1": 1, "10.99.3.1": 6}
WORLD_IP = "198.51.100.7"  # in no ipcache entry: world (2)
TCP, UDP, ICMP, SCTP = 6, 17, 1, 132
SYN, ACK, SYNACK = 0x02, 0x10, 0x12


def ipv4(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64, frag: int = 0, ident: int = 1) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        ident,
        frag,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + l4


def frame(src_mac: str, dst_mac: str, ip_packet: bytes) -> bytes:
    return cm.mac_bytes(dst_mac) + cm.mac_bytes(src_mac) + b"\x08\x00" + ip_packet


def tcp(sport: int, dport: int, flags: int = SYN) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0) + b"x"


def icmp(kind: int, code: int = 0, rest: bytes = b"\0\0\0\0", quoted: bytes = b"") -> bytes:
    return struct.pack("!BBH", kind, code, 0) + rest + quoted


def l4(proto: int, sport: int, dport: int, flags: int = SYN) -> bytes:
    if proto in (TCP,):
        return tcp(sport, dport, flags)
    if proto == ICMP:
        return icmp(dport, 0, struct.pack("!HH", sport, 1))  # type = the key's "port"; echo id = sport
    return udp(sport, dport)  # UDP, SCTP (the ports are the first four bytes of both)


@dataclasses.dataclass
class Bed:
    lxc: LxcDatapath
    pins: str
    ports: Iterator[int]

    def run(self, prog: str, packet: bytes) -> int:
        return bpf.prog_test_run(os.path.join(self.lxc.progs[prog]), packet)[0]

    def send(
        self, prog: str, src: str, dst: str, proto: int, payload: bytes, src_mac: str = "02:00:00:00:00:99"
    ) -> int:
        """Any IPv4 packet through ``prog``."""
        return self.run(prog, frame(src_mac, POD_MAC, ipv4(src, dst, proto, payload)))

    def inbound(self, src: str, proto: int, dport: int, flags: int = SYN, sport: int | None = None) -> int:
        """A packet from ``src`` to the pod, as the stack hands it to the pod's veth."""
        sport = next(self.ports) if sport is None else sport
        return self.run(
            TO_CONTAINER,
            frame("02:00:00:00:00:99", POD_MAC, ipv4(src, POD_IP, proto, l4(proto, sport, dport, flags))),
        )

    def outbound(
        self, dst: str, proto: int, dport: int, flags: int = SYN, sport: int | None = None, **kw: object
    ) -> int:
        """A packet the pod sends to ``dst``."""
        sport = next(self.ports) if sport is None else sport
        src_ip = str(kw.get("src_ip", POD_IP))
        src_mac = str(kw.get("src_mac", POD_MAC))
        return self.run(
            FROM_CONTAINER, frame(src_mac, HOST_MAC, ipv4(src_ip, dst, proto, l4(proto, sport, dport, flags)))
        )

    def sync(self, policy: EndpointMap | None, **kw: object) -> dict[str, int]:
        endpoint = LxcEndpoint("t/pod", LO, POD_IP, POD_MAC, HOST_MAC, 500, policy)
        cache = {
            f"{ip}/32": IpcacheEntry(f"{ip}/32", n, "node x" if n in (1, 6) else "cidr")
            for ip, n in PEERS.items()
        }
        endpoints = [endpoint, *kw.get("more", [])]  # type: ignore[misc]
        return self.lxc.sync(endpoints, cache, kw.get("control"))  # type: ignore[arg-type]

    def events(self) -> list[cm.Event]:
        with RingBuffer(os.path.join(self.pins, "pn_events")) as ring:
            return [cm.decode_event(r) for r in ring.read()]


@pytest.fixture()
def bed(tmp_path) -> Iterator[Bed]:  # type: ignore[no-untyped-def]
    pins = f"{bpf.BPFFS}/pntlxc{secrets.token_hex(3)}"
    lxc = LxcDatapath(pins, str(tmp_path / "cache"))
    try:
        lxc.ensure()
        b = Bed(lxc, pins, itertools.count(20000))
        b.events()  # drain
        yield b
    finally:
        lxc.close()
        bpf.unpin_tree(pins)
    assert not os.path.exists(pins)


def policy(entries: dict[PolicyKey, PolicyEntry], ingress: bool = True, egress: bool = False) -> EndpointMap:
    return EndpointMap("t/pod", ingress, egress, materialize(entries))


def test_map_layouts_match_the_c_program(bed: Bed) -> None:
    """The loader's layout check rests on these sizes: Python's encodings and the C structs agree."""
    sizes = {
        IPCACHE: (len(cm.ipcache_key("10.0.0.0/8")), len(cm.ipcache_value(1))),
        POLICY: (len(cm.policy_key(1, PolicyKey(INGRESS, 1))), len(cm.policy_value(PolicyEntry(), 1))),
        ENDPOINTS: (4, len(cm.endpoint_value(1, 1, POD_IP, POD_MAC, True, True, HOST_MAC))),
        LOCAL_IPS: (4, 4),
        CT: (16, 56),
        CONTROL: (len(cm.control_key(None, "tcp", 1)), 4),
        CONFIG: (4, len(cm.config_value(0))),
        ENTRY_STATS: (4, 16),
        EP_STATS: (4, 64),
    }
    for name, (key, value) in sizes.items():
        with bpf.BpfMap(os.path.join(bed.pins, name)) as m:
            assert (m.info.key_size, m.info.value_size) == (key, value), name


def random_entries(rng: random.Random) -> dict[PolicyKey, PolicyEntry]:
    entries: dict[PolicyKey, PolicyEntry] = {}
    for _ in range(rng.randint(0, 7)):
        identity = rng.choice([0, 300, 301, 302, 1, 6, 2])
        direction = rng.choice([INGRESS, EGRESS])
        shape = rng.random()
        deny = rng.random() < 0.3
        entry = PolicyEntry(deny, 0, (f"knp:t/p{rng.randint(0, 3)}:{direction}:0",))
        if shape < 0.2:
            add_entry(entries, PolicyKey(direction, identity), entry)
            continue
        proto = rng.choice([TCP, UDP, SCTP, ICMP])
        if proto == ICMP:
            add_entry(entries, PolicyKey(direction, identity, ICMP, rng.choice([0, 8, 3]), 16), entry)
            continue
        first = rng.choice([53, 80, 443, 8080, 9000])
        last = first + rng.choice([0, 0, 1, 3, 100])
        for port, prefix in port_prefixes(first, last) if rng.random() < 0.9 else [(0, 0)]:
            add_entry(entries, PolicyKey(direction, identity, proto, port, prefix), entry)
    return entries


def test_kernel_verdicts_equal_the_model_over_random_maps(bed: Bed) -> None:
    rng = random.Random(20261206)
    seen = set()
    for _round in range(25):
        entries = materialize(random_entries(rng))
        mapping = policy(entries, ingress=rng.random() < 0.8, egress=rng.random() < 0.8)
        bed.sync(mapping)
        for (ip, identity), proto, port in itertools.product(
            [*PEERS.items(), (WORLD_IP, 2)], [TCP, UDP, SCTP, ICMP], [53, 80, 81, 443, 8080, 8081, 9050, 8]
        ):
            if proto == ICMP and port not in (8, 3):
                continue
            for direction in (INGRESS, EGRESS):
                found = datapath_verdict(entries, direction, identity, proto, port)
                if not mapping.enforced(direction) or (direction == INGRESS and identity == 1):
                    want = OK  # not enforced; the node reaches its own pods
                else:
                    want = OK if found is not None and not found.deny else SHOT
                got = bed.inbound(ip, proto, port) if direction == INGRESS else bed.outbound(ip, proto, port)
                assert got == want, (direction, ip, identity, proto, port, found, sorted(entries))
                seen.add(want)
    assert seen == {OK, SHOT}  # both outcomes were met: the comparison could fail either way


def test_drops_carry_cilium_reasons_and_the_deciding_entry(bed: Bed) -> None:
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(entries, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 0, ("knp:t/web:ingress:0",)))
    add_entry(entries, PolicyKey(INGRESS, 301), PolicyEntry(True, 0, ("cnp:t/deny-301:ingressDeny:0",)))
    bed.sync(policy(entries))
    assert bed.inbound("10.99.1.1", TCP, 80) == OK
    assert bed.inbound("10.99.1.2", TCP, 80) == SHOT  # deny entry
    assert bed.inbound("10.99.1.3", TCP, 80) == SHOT  # default deny
    events = bed.events()
    drops = [e for e in events if e.type == cm.EVENT_DROP]
    assert [(e.reason, e.src_identity, e.direction) for e in drops] == [
        (181, 301, INGRESS),
        (133, 302, INGRESS),
    ]
    meaning = bed.lxc.entry(drops[0].entry_id)
    assert meaning is not None and meaning[2].provenance == ("cnp:t/deny-301:ingressDeny:0",)
    assert drops[1].entry_id == 0
    assert not [e for e in events if e.type == cm.EVENT_VERDICT]  # verdicts only when asked
    bed.lxc.set_events(verdicts=True, traces=False)
    assert bed.inbound("10.99.1.1", TCP, 80) == OK
    verdicts = [e for e in bed.events() if e.type == cm.EVENT_VERDICT]
    assert len(verdicts) == 1 and bed.lxc.entry(verdicts[0].entry_id)[2].provenance == (
        "knp:t/web:ingress:0",
    )  # type: ignore[index]
    packets, _ = bed.lxc.entry_stats(verdicts[0].entry_id)
    assert packets == 2  # two new connections decided by that entry
    counted = bed.lxc.endpoint_stats(1)[INGRESS]  # the endpoint's own counters (id 1: the first)
    assert (counted["packets"], counted["drop_packets"]) == (2, 2) and counted["drop_bytes"] > 0
    # flows: a trace per new connection, carrying the verdict (and no verdict event beside it);
    # none for a packet of a known connection, and drops as before
    bed.lxc.set_events(verdicts=True, traces=True)
    assert bed.inbound("10.99.1.1", TCP, 80, sport=41000) == OK
    assert bed.inbound("10.99.1.1", TCP, 80, flags=ACK, sport=41000) == OK
    assert bed.inbound("10.99.1.3", TCP, 80) == SHOT
    events = bed.events()
    assert [(e.type, e.sport) for e in events if e.type != cm.EVENT_DROP] == [(cm.EVENT_TRACE, 41000)]
    trace = next(e for e in events if e.type == cm.EVENT_TRACE)
    assert (trace.verdict, trace.match, trace.direction) == (cm.VERDICT_ALLOWED, "identity", INGRESS)
    assert bed.lxc.entry(trace.entry_id)[2].provenance == ("knp:t/web:ingress:0",)  # type: ignore[index]
    assert [e.reason for e in events if e.type == cm.EVENT_DROP] == [133]
    # the metrics map counts as the endpoint's counters do, drops by reason (two 133s, one 181)
    metrics, counted = bed.lxc.metrics(), bed.lxc.endpoint_stats(1)[INGRESS]
    assert metrics[(0, INGRESS)] == (counted["packets"], counted["bytes"])
    assert metrics[(133, INGRESS)][0] == 2 and metrics[(181, INGRESS)][0] == 1
    assert metrics[(133, INGRESS)][1] + metrics[(181, INGRESS)][1] == counted["drop_bytes"]


def icmp_error(quoted_packet: bytes) -> bytes:
    """ICMP port unreachable quoting ``quoted_packet``'s IP header and first 8 bytes."""
    return icmp(3, 3, b"\0\0\0\0", quoted_packet[:28])


def test_replies_and_related_icmp_pass_a_default_deny(bed: Bed) -> None:
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(entries, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 0, ("knp:t/a:ingress:0",)))
    add_entry(entries, PolicyKey(EGRESS, 300, UDP, 53, 16), PolicyEntry(False, 0, ("knp:t/a:egress:0",)))
    bed.sync(policy(entries, ingress=True, egress=True))
    # an inbound connection: its replies leave although egress allows no TCP
    assert bed.inbound("10.99.1.1", TCP, 80, SYN, sport=41000) == OK
    assert bed.outbound("10.99.1.1", TCP, 41000, SYNACK, sport=80) == OK
    syn_only = next(e for e in bed.lxc.ct_entries() if e.sport == 41000)
    assert syn_only.expires - syn_only.created <= 60  # the handshake is not done: the SYN timeout
    assert bed.inbound("10.99.1.1", TCP, 80, ACK, sport=41000) == OK
    assert bed.outbound("10.99.1.1", TCP, 41001, SYN, sport=80) == SHOT  # not a reply: new, denied
    # an outbound UDP flow, and the ICMP port unreachable that quotes it
    assert bed.outbound("10.99.1.1", UDP, 53, sport=42000) == OK
    flow = ipv4(POD_IP, "10.99.1.1", UDP, udp(42000, 53))
    never = ipv4(POD_IP, "10.99.1.1", UDP, udp(42001, 53))  # a flow that never was
    assert bed.send(TO_CONTAINER, "10.99.1.1", POD_IP, ICMP, icmp_error(flow)) == OK
    assert bed.send(TO_CONTAINER, "10.99.1.1", POD_IP, ICMP, icmp_error(never)) == SHOT
    ct = bed.lxc.ct_entries()
    assert {(e.direction, e.saddr, e.dport) for e in ct} >= {(INGRESS, "10.99.1.1", 80), (EGRESS, POD_IP, 53)}
    # the expiry follows the TCP state: SYN only, then an established connection after the reply
    inbound = next(e for e in ct if e.direction == INGRESS and e.sport == 41000)
    assert "SEEN_REPLY" in inbound.flags
    assert inbound.expires - inbound.created > 1000  # established (ACK after the reply): hours
    assert bed.lxc.ct_gc(now=inbound.created + 10**6) >= len(ct)  # all expired by then
    assert bed.lxc.ct_entries() == []


def test_later_fragments_follow_their_first(bed: Bed) -> None:
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(entries, PolicyKey(INGRESS, 300, UDP, 53, 16), PolicyEntry(False, 0, ("knp:t/a:ingress:0",)))
    bed.sync(policy(entries))
    first = ipv4("10.99.1.1", POD_IP, UDP, udp(43000, 53), frag=0x2000, ident=77)  # MF, offset 0
    later = ipv4("10.99.1.1", POD_IP, UDP, b"payload!", frag=1, ident=77)  # offset 8 bytes
    orphan = ipv4("10.99.1.1", POD_IP, UDP, b"payload!", frag=1, ident=78)
    assert bed.run(TO_CONTAINER, frame("02:00:00:00:00:99", POD_MAC, first)) == OK
    assert bed.run(TO_CONTAINER, frame("02:00:00:00:00:99", POD_MAC, later)) == OK
    assert bed.run(TO_CONTAINER, frame("02:00:00:00:00:99", POD_MAC, orphan)) == SHOT
    assert [e.reason for e in bed.events() if e.type == cm.EVENT_DROP] == [175]


def test_a_wired_endpoint_is_not_ready_until_its_policy_is_written(bed: Bed) -> None:
    bed.sync(None)  # known, policy not computed yet
    assert bed.inbound("10.99.1.1", TCP, 80) == SHOT
    assert bed.outbound("10.99.1.1", TCP, 80) == SHOT
    assert bed.inbound("10.99.2.1", TCP, 80) == OK  # the node itself
    assert {e.reason for e in bed.events() if e.type == cm.EVENT_DROP} == {203}
    bed.sync(policy({}, ingress=False, egress=False))
    assert bed.inbound("10.99.1.1", TCP, 80) == OK
    # no record at all (attached before its record): nothing passes either way
    bed.lxc.sync([], {})
    assert bed.inbound("10.99.1.1", TCP, 80) == SHOT
    assert bed.outbound("10.99.1.1", TCP, 80) == SHOT


def test_anti_spoofing_and_the_control_plane(bed: Bed) -> None:
    control = ControlPlane(local=(("tcp", 179),), remote=(("10.99.3.1", "tcp", 2379),))
    bed.sync(policy({}, ingress=False, egress=False), control=control)
    assert bed.outbound("10.99.1.1", TCP, 80) == OK
    assert bed.outbound("10.99.1.1", TCP, 80, src_ip="10.99.0.6") == SHOT
    assert bed.outbound("10.99.1.1", TCP, 80, src_mac="02:00:00:00:00:06") == SHOT
    assert bed.outbound("10.99.2.1", TCP, 179) == SHOT  # BGP on any address of this node
    assert bed.outbound("10.99.3.1", TCP, 179) == OK  # another node's: not a local control port
    assert bed.outbound("10.99.3.1", TCP, 2379) == SHOT  # the datastore
    assert bed.outbound("10.99.2.1", TCP, 8080) == OK
    reasons = [e.reason for e in bed.events() if e.type == cm.EVENT_DROP]
    assert reasons == [132, 130, 230, 230]
    bed.sync(policy({}, ingress=False, egress=False))  # the control plane map follows the sync
    assert bed.outbound("10.99.3.1", TCP, 2379) == OK


def test_from_netdev_judges_the_local_destination_before_redirecting(bed: Bed) -> None:
    other = LxcEndpoint("t/other", 4242, "10.99.0.6", "02:00:00:00:00:06", "ee:ee:ee:ee:ee:06", 501, None)
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(entries, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 0, ("knp:t/a:ingress:0",)))
    bed.sync(policy(entries), more=[dataclasses.replace(other, policy=policy({}, False, False))])
    assert bed.send(FROM_NETDEV, "10.99.1.1", POD_IP, TCP, tcp(44000, 80)) == REDIRECT
    assert bed.send(FROM_NETDEV, "10.99.1.2", POD_IP, TCP, tcp(44001, 80)) == SHOT
    assert bed.send(FROM_NETDEV, "10.99.1.2", "10.99.0.6", TCP, tcp(44002, 80)) == REDIRECT  # open
    assert bed.send(FROM_NETDEV, "10.99.1.2", "10.99.1.1", TCP, tcp(44003, 80)) == OK  # not local
    # the pod's replies to what came past the stack go past it too (BYPASS), to any address
    assert "BYPASS" in next(e for e in bed.lxc.ct_entries() if e.sport == 44000).flags
    # ... and a delivered packet left with the destination's MACs and one hop less
    _, out = bpf.prog_test_run(
        bed.lxc.progs[FROM_NETDEV],
        frame(
            "02:00:00:00:00:99",
            "ff:ff:ff:ff:ff:ff",
            ipv4("10.99.1.2", "10.99.0.6", TCP, tcp(44004, 80), ttl=9),
        ),
    )
    assert out[:6] == cm.mac_bytes("02:00:00:00:00:06") and out[6:12] == cm.mac_bytes("ee:ee:ee:ee:ee:06")
    assert out[14 + 8] == 8


def test_a_restarted_agent_adopts_the_pins_and_rewrites_nothing(bed: Bed) -> None:
    entries: dict[PolicyKey, PolicyEntry] = {}
    for port in (80, 81, 82):
        add_entry(
            entries,
            PolicyKey(INGRESS, 300, TCP, port, 16),
            PolicyEntry(False, 0, (f"knp:t/a:ingress:{port}",)),
        )
    bed.sync(policy(entries))
    assert bed.inbound("10.99.1.1", TCP, 80, sport=45000) == OK
    before = {name: bed.lxc.contents(name) for name in (POLICY, ENDPOINTS, IPCACHE)}
    again = LxcDatapath(bed.pins, bed.lxc.cache_dir)
    try:
        again.ensure()
        assert {name: again.contents(name) for name in before} == before
        assert set(
            again.sync(
                [LxcEndpoint("t/pod", LO, POD_IP, POD_MAC, HOST_MAC, 500, policy(entries))],
                {
                    f"{ip}/32": IpcacheEntry(f"{ip}/32", n, "node x" if n in (1, 6) else "cidr")
                    for ip, n in PEERS.items()
                },
            ).values()
        ) == {0}
        assert any(e.sport == 45000 for e in again.ct_entries())  # connections survive
    finally:
        again.close()


def test_a_policy_map_that_would_overflow_keeps_the_previous_entries(bed: Bed) -> None:
    small: dict[PolicyKey, PolicyEntry] = {}
    add_entry(small, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 0, ("knp:t/a:ingress:0",)))
    bed.sync(policy(small))
    m = bed.lxc._maps[POLICY]
    m.info = dataclasses.replace(m.info, max_entries=4)  # the limit the overflow check reads
    big = dict(small)
    for port in range(1000, 1010):
        add_entry(big, PolicyKey(INGRESS, 300, TCP, port, 16), PolicyEntry(False, 0, ("knp:t/b:ingress:0",)))
    bed.sync(policy(big))
    assert bed.lxc.overflow == ("t/pod",)
    assert bed.inbound("10.99.1.1", TCP, 80) == OK  # the previous policy still in force
    assert bed.inbound("10.99.1.1", TCP, 1005) == SHOT  # never truncated to a partial new one
    bed.sync(policy(small))
    assert bed.lxc.overflow == ()


def marked(bed: Bed, prog: str, src: str, dst: str, segment: bytes, mark: int = 0) -> tuple[int, int]:
    """A TCP packet through ``prog`` carrying ``mark``: (verdict, the mark it leaves with)."""
    packet = frame(
        "02:00:00:00:00:99" if prog != FROM_CONTAINER else POD_MAC, POD_MAC, ipv4(src, dst, TCP, segment)
    )
    return bpf.prog_test_run_marked(bed.lxc.progs[prog], packet, mark)


TO_INGRESS_PROXY, TO_EGRESS_PROXY, FROM_PROXY = 0x0A00, 0x0B00, 0x0C00


def test_a_redirect_entry_sends_the_connection_to_the_proxy_and_the_answers_to_its_socket(bed: Bed) -> None:
    """Ingress: a redirected connection's packets are marked for the ingress listener and go up the
    stack; the proxy's own connection (same tuple) passes to_container; the server's answers go up
    the stack to the proxy's socket, not past it to the client (as a bypassed reply would)."""
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(
        entries, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 15001, ("cnp:t/a:ingress:0",))
    )
    add_entry(
        entries, PolicyKey(EGRESS, 300, TCP, 8080, 16), PolicyEntry(False, 15002, ("cnp:t/a:egress:0",))
    )
    bed.sync(policy(entries, ingress=True, egress=True))
    bed.lxc.set_events(verdicts=True, traces=False)
    peer, other = "10.99.1.1", "10.99.1.2"
    assert marked(bed, FROM_NETDEV, peer, POD_IP, tcp(46000, 80), 0x4000) == (OK, 0x4000 | TO_INGRESS_PROXY)
    assert marked(bed, FROM_NETDEV, peer, POD_IP, tcp(46000, 80, ACK)) == (OK, TO_INGRESS_PROXY)  # later ones
    assert marked(bed, FROM_NETDEV, other, POD_IP, tcp(46001, 80))[0] == SHOT  # the L3 part still holds
    # the proxy's connection to the server: the client's tuple, from the stack
    assert marked(bed, TO_CONTAINER, peer, POD_IP, tcp(46000, 80), FROM_PROXY) == (OK, FROM_PROXY)
    assert marked(bed, TO_CONTAINER, peer, POD_IP, tcp(46000, 80, ACK))[0] == SHOT  # not via the proxy
    # the server's answer: up the stack (0), where the bypassed reply of a plain allow is redirected (7)
    assert marked(bed, FROM_CONTAINER, POD_IP, peer, tcp(80, 46000, SYNACK)) == (OK, 0)
    # a redirect decision past the routing step: only the proxy's own connection passes
    assert marked(bed, TO_CONTAINER, peer, POD_IP, tcp(46002, 80))[0] == SHOT
    assert marked(bed, TO_CONTAINER, peer, POD_IP, tcp(46003, 80), FROM_PROXY)[0] == OK

    # egress: the pod's connection to the listener for egress, the answers back to the proxy
    assert marked(bed, FROM_CONTAINER, POD_IP, peer, tcp(46010, 8080)) == (OK, TO_EGRESS_PROXY)
    assert marked(bed, FROM_CONTAINER, POD_IP, peer, tcp(46010, 8080, ACK)) == (OK, TO_EGRESS_PROXY)
    assert marked(bed, FROM_NETDEV, peer, POD_IP, tcp(8080, 46010, SYNACK)) == (OK, 0)  # not redirect_peer
    assert marked(bed, TO_CONTAINER, peer, POD_IP, tcp(8080, 46010, SYNACK), FROM_PROXY)[0] == OK
    assert marked(bed, FROM_CONTAINER, POD_IP, other, tcp(46011, 8080))[0] == SHOT

    flows = {e.sport: e for e in bed.lxc.ct_entries()}
    assert "PROXY" in flows[46000].flags and "BYPASS" not in flows[46000].flags
    assert "PROXY" in flows[46010].flags and "PROXY" not in flows[46003].flags
    events = bed.events()
    verdicts = {(e.sport, e.verdict) for e in events if e.type == cm.EVENT_VERDICT}
    assert {
        (46000, cm.VERDICT_REDIRECTED),
        (46010, cm.VERDICT_REDIRECTED),
        (46003, cm.VERDICT_ALLOWED),
    } <= verdicts
    assert [e.sport for e in events if e.reason == cm.DROP_NO_PROXY_PATH] == [46000, 46002]
    assert bed.lxc.stats()["to_proxy"] == 4


def test_a_new_connection_on_the_tuple_of_a_closed_one_is_judged_anew(bed: Bed) -> None:
    """A client reusing its port within the closing entry's lifetime (10 s) opens a new connection:
    policy applied since then must judge it, and a redirect must still send it to the proxy."""
    fin, rst = 0x11, 0x04
    bed.sync(policy({}, ingress=False))  # open: the first connection is not enforced
    for sport in (47000, 47001):
        assert bed.inbound("10.99.1.1", TCP, 80, SYN, sport=sport) == OK
        assert bed.outbound("10.99.1.1", TCP, sport, SYNACK, sport=80) in (OK, REDIRECT)
    assert bed.inbound("10.99.1.1", TCP, 80, fin, sport=47000) == OK
    assert bed.outbound("10.99.1.1", TCP, 47000, fin, sport=80) in (OK, REDIRECT)
    assert bed.inbound("10.99.1.1", TCP, 80, rst, sport=47001) == OK
    entries: dict[PolicyKey, PolicyEntry] = {}
    add_entry(entries, PolicyKey(INGRESS, 301, TCP, 80, 16), PolicyEntry(False, 0, ("cnp:t/a:ingress:0",)))
    bed.sync(policy(entries))  # now only 301 may connect
    assert bed.inbound("10.99.1.1", TCP, 80, SYN, sport=47000) == SHOT  # was let through by the old entry
    assert bed.inbound("10.99.1.1", TCP, 80, SYN, sport=47001) == SHOT
    assert bed.inbound("10.99.1.1", TCP, 80, ACK, sport=47000) == OK  # the closing one's last packets pass
    # a redirect applies to the reopened tuple, not the old plain entry
    add_entry(
        entries, PolicyKey(INGRESS, 300, TCP, 80, 16), PolicyEntry(False, 15001, ("cnp:t/b:ingress:0",))
    )
    bed.sync(policy(entries))
    assert marked(bed, FROM_NETDEV, "10.99.1.1", POD_IP, tcp(47000, 80)) == (OK, TO_INGRESS_PROXY)
