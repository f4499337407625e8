"""Conntrack events parsed from hand-built ctnetlink messages, and the reader's socket handling.

The messages are encoded here with ``struct`` alone (not with the codec under test), in the layout
``ctnetlink_conntrack_event`` sends: netlink header (host order), ``struct nfgenmsg``, then nested
attributes whose values are big endian. Numbers from ``linux/netfilter/nfnetlink_conntrack.h``.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.dataplane import ct_events
from podnet.dataplane.ct_events import CtEvent, CtEventReader, parse_entry, parse_event, parse_events

NEW_MSG, DELETE_MSG = (1 << 8) | 0, (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*
CREATE_EXCL = 0x400 | 0x200
NESTED = 0x8000


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def tuple_attr(kind: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    ip = attr(1, socket.inet_aton(src)) + attr(2, socket.inet_aton(dst))  # CTA_IP_V4_SRC/DST
    l4 = attr(1, bytes([proto]))  # CTA_PROTO_NUM
    if proto == socket.IPPROTO_ICMP:  # CTA_PROTO_ICMP_ID (be16), _TYPE (u8: echo request), _CODE (u8)
        l4 += attr(4, struct.pack("!H", sport)) + attr(5, bytes([8])) + attr(6, b"\0")
    else:  # CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT
        l4 += attr(2, struct.pack("!H", sport)) + attr(3, struct.pack("!H", dport))
    return attr(kind | NESTED, attr(1 | NESTED, ip) + attr(2 | NESTED, l4))  # CTA_TUPLE_IP, _PROTO


def counters(kind: int, packets: int, nbytes: int) -> bytes:  # CTA_COUNTERS_PACKETS/BYTES, be64
    return attr(kind | NESTED, attr(1, struct.pack("!Q", packets)) + attr(2, struct.pack("!Q", nbytes)))


def message(msg_type: int, flags: int, body: bytes, family: int = socket.AF_INET) -> bytes:
    payload = struct.pack("!BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), msg_type, flags, 0, 0) + payload


CLIENT, SERVICE, BACKEND = "10.244.1.50", "10.96.0.10", "10.244.2.7"
ORIG = tuple_attr(1, CLIENT, SERVICE, 6, 40000, 80)  # CTA_TUPLE_ORIG
REPLY = tuple_attr(2, BACKEND, CLIENT, 6, 8080, 40000)  # CTA_TUPLE_REPLY: DNAT to the backend
ID = attr(12, struct.pack("!I", 0xDEADBEEF))  # CTA_ID
STATUS_NEW = attr(3, struct.pack("!I", 0x8 | 0x20))  # CTA_STATUS: CONFIRMED|DST_NAT
STATUS_GONE = attr(3, struct.pack("!I", 0x20E))  # SEEN_REPLY|ASSURED|CONFIRMED|DYING
MARK = attr(8, struct.pack("!I", 0x4000))  # CTA_MARK
START_NS, STOP_NS = 1_700_000_000_123_456_789, 1_700_000_002_987_654_321
TIMESTAMP = attr(20 | NESTED, attr(1, struct.pack("!Q", START_NS)) + attr(2, struct.pack("!Q", STOP_NS)))
BIG = 5 * 2**32 + 17  # needs all 64 bits

NEW_EVENT = message(NEW_MSG, CREATE_EXCL, ORIG + REPLY + ID + STATUS_NEW + attr(7, struct.pack("!I", 120)))
DESTROY_EVENT = message(
    DELETE_MSG,
    0,
    ORIG
    + REPLY
    + ID
    + STATUS_GONE
    + counters(9, 70, BIG)  # CTA_COUNTERS_ORIG
    + counters(10, 50, 4321)  # CTA_COUNTERS_REPLY
    + TIMESTAMP
    + MARK,
)


def test_a_new_entry_is_a_new_event_with_both_tuples_and_no_counters() -> None:
    (event,), intact = parse_events(NEW_EVENT)
    assert intact
    assert event == CtEvent(
        kind="new",
        protocol=6,
        src=CLIENT,
        dst=SERVICE,
        sport=40000,
        dport=80,
        reply_src=BACKEND,
        reply_dst=CLIENT,
        reply_sport=8080,
        reply_dport=40000,
        status=0x28,
        id=0xDEADBEEF,
    )
    assert (event.bytes_orig, event.packets_reply, event.timestamp_start_ns, event.zone) == (0, 0, None, 0)


def test_an_update_is_skipped() -> None:
    update = message(NEW_MSG, 0, ORIG + REPLY + ID + STATUS_GONE)
    only_create = message(NEW_MSG, 0x400, ORIG + REPLY + ID + STATUS_GONE)
    assert parse_event(NEW_MSG, 0, update[16:]) is None
    assert parse_events(update + only_create) == ([], True)
    # positive control: the same body with CREATE|EXCL is an event
    assert parse_event(NEW_MSG, CREATE_EXCL, update[16:]) is not None


def test_a_destroy_carries_64_bit_counters_of_both_directions_and_timestamps() -> None:
    (event,), intact = parse_events(DESTROY_EVENT)
    assert intact and event.kind == "destroy"
    assert (event.packets_orig, event.bytes_orig) == (70, BIG)
    assert (event.packets_reply, event.bytes_reply) == (50, 4321)
    assert (event.timestamp_start_ns, event.timestamp_stop_ns) == (START_NS, STOP_NS)
    assert (event.mark, event.status, event.id) == (0x4000, 0x20E, 0xDEADBEEF)
    assert (event.dst, event.dport, event.reply_src, event.reply_sport) == (SERVICE, 80, BACKEND, 8080)


def test_one_buffer_holds_several_events_in_order() -> None:
    events, intact = parse_events(NEW_EVENT + DESTROY_EVENT)
    assert intact and [e.kind for e in events] == ["new", "destroy"]
    assert events[0].id == events[1].id


def test_zone_and_icmp() -> None:
    icmp = tuple_attr(1, "10.0.0.1", "10.0.0.2", 1, 0x1234, 0)
    icmp_reply = tuple_attr(2, "10.0.0.2", "10.0.0.1", 1, 0x1234, 0)
    zone = attr(18, struct.pack("!H", 7))  # CTA_ZONE
    (event,), _ = parse_events(message(NEW_MSG, CREATE_EXCL, icmp + icmp_reply + zone))
    assert (event.protocol, event.sport, event.dport) == (1, 0, 0)
    assert (event.icmp_type, event.icmp_code, event.icmp_id, event.zone) == (8, 0, 0x1234, 7)


def test_truncated_and_garbage_messages_are_skipped_without_raising() -> None:
    # a NEW whose header claims more bytes than the buffer has: the NEW before it is kept
    truncated = NEW_EVENT[:-10]
    events, intact = parse_events(NEW_EVENT + truncated)
    assert not intact and len(events) == 1
    # a header length below 16, and plain garbage
    assert parse_events(struct.pack("=IHHII", 8, NEW_MSG, CREATE_EXCL, 0, 0)) == ([], False)
    assert parse_events(b"\xff" * 7) == ([], False)
    assert parse_events(b"") == ([], True)
    # a message of the right length whose tuple attribute is cut short: no event, no exception
    cut = message(NEW_MSG, CREATE_EXCL, ORIG[:20] + b"\x00\x00")
    assert parse_events(cut) == ([], True)
    # a tuple without its reply direction, an address of the wrong length
    assert parse_events(message(NEW_MSG, CREATE_EXCL, ORIG)) == ([], True)
    bad_ip = attr(1 | NESTED, attr(1 | NESTED, attr(1, b"\x0a\x00") + attr(2, b"\x0a\x00\x00\x01")))
    assert parse_events(message(NEW_MSG, CREATE_EXCL, bad_ip + REPLY)) == ([], True)


def test_other_families_subsystems_and_messages_are_skipped() -> None:
    v6 = attr(3, b"\x20\x01" + b"\0" * 14) + attr(4, b"\x20\x01" + b"\0" * 13 + b"\x01")  # CTA_IP_V6_*
    l4 = attr(1, b"\x06") + attr(2, b"\x9c\x40") + attr(3, b"\x00\x50")
    tup6 = attr(1 | NESTED, v6) + attr(2 | NESTED, l4)
    ipv6 = message(NEW_MSG, CREATE_EXCL, attr(1 | NESTED, tup6) + attr(2 | NESTED, tup6), socket.AF_INET6)
    expectation = message((2 << 8) | 0, CREATE_EXCL, ORIG + REPLY)  # NFNL_SUBSYS_CTNETLINK_EXP
    get = message((1 << 8) | 1, 0, ORIG + REPLY)  # IPCTNL_MSG_CT_GET
    done = struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4  # NLMSG_DONE
    assert parse_events(ipv6 + expectation + get + done) == ([], True)
    # positive control: the IPv4 twin of the first one is an event
    assert len(parse_events(ipv6 + NEW_EVENT)[0]) == 1


def test_a_dump_entry_is_parsed_by_the_same_code() -> None:
    event = parse_entry("dump", DESTROY_EVENT[16:])
    assert event is not None and event.kind == "dump" and event.bytes_orig == BIG


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(0, 400))
def test_arbitrary_bytes_never_raise(noise: bytes, cut: int) -> None:
    parse_events(noise)
    parse_events(NEW_EVENT[:cut] + noise)
    parse_events(DESTROY_EVENT[:16] + noise)


# ------------------------------------------------------------------------------ the reader's socket


class FakeSocket:
    """A netlink socket that hands out queued datagrams or errors; records options and bind."""

    def __init__(self, queue: list[bytes | OSError], *, force_allowed: bool = True) -> None:
        self.queue = queue
        self.force_allowed = force_allowed
        self.options: dict[tuple[int, int], int] = {}
        self.bound: object = None
        self.blocking_calls: list[float | None] = []
        self.closed = False

    def setsockopt(self, level: int, name: int, value: int) -> None:
        if name == 33 and not self.force_allowed:  # SO_RCVBUFFORCE without CAP_NET_ADMIN
            raise PermissionError(errno.EPERM, "Operation not permitted")
        self.options[(level, name)] = value

    def getsockopt(self, level: int, name: int) -> int:
        return 2 * self.options.get((level, name), 212992)

    def bind(self, address: object) -> None:
        self.bound = address

    def settimeout(self, timeout: float | None) -> None:
        self.blocking_calls.append(timeout)

    def setblocking(self, flag: bool) -> None:
        self.blocking_calls.append(None if flag else 0.0)

    def recv(self, size: int) -> bytes:
        if not self.queue:
            if self.blocking_calls[-1] == 0.0:
                raise BlockingIOError(errno.EAGAIN, "no data")
            raise TimeoutError
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self) -> int:
        return -1 if self.closed else 3

    def close(self) -> None:
        self.closed = True


def reader_with(monkeypatch: pytest.MonkeyPatch, sock: FakeSocket, **kwargs: bool) -> CtEventReader:
    monkeypatch.setattr(ct_events.socket, "socket", lambda *args: sock)
    return CtEventReader(**kwargs)


def test_reader_joins_the_new_and_destroy_groups_with_a_forced_big_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = FakeSocket([])
    reader_with(monkeypatch, sock)
    assert sock.bound == (0, 0b101)  # NFNLGRP_CONNTRACK_NEW (1) and _DESTROY (3); not _UPDATE (2)
    assert sock.options[(socket.SOL_SOCKET, 33)] == ct_events.RCVBUF_BYTES
    only_destroy = FakeSocket([])
    reader_with(monkeypatch, only_destroy, new=False)
    assert only_destroy.bound == (0, 0b100)
    unprivileged = FakeSocket([], force_allowed=False)
    reader_with(monkeypatch, unprivileged)
    assert unprivileged.options == {(socket.SOL_SOCKET, socket.SO_RCVBUF): ct_events.RCVBUF_BYTES}
    with pytest.raises(ValueError):
        CtEventReader(new=False, destroy=False)


def test_read_drains_every_queued_datagram_and_counts_overruns(monkeypatch: pytest.MonkeyPatch) -> None:
    enobufs = OSError(errno.ENOBUFS, "No buffer space available")
    sock = FakeSocket([NEW_EVENT, enobufs, DESTROY_EVENT, b"\xff" * 40, enobufs])
    reader = reader_with(monkeypatch, sock)
    events = reader.read(0.5)
    assert [e.kind for e in events] == ["new", "destroy"]
    assert (reader.lost_overruns, reader.malformed) == (2, 1)
    assert sock.blocking_calls[0] == 0.5  # waits for the first, then only takes what is queued
    assert reader.read(0.01) == []  # nothing queued: an empty list after the timeout
    # an overrun alone: counted, no events, no exception
    sock.queue = [enobufs]
    assert reader.read(0.01) == [] and reader.lost_overruns == 3


def test_read_raises_other_errors_as_dataplane_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = FakeSocket([OSError(errno.EBADF, "Bad file descriptor")])
    reader = reader_with(monkeypatch, sock)
    with pytest.raises(ct_events.DataplaneError, match="read conntrack events"):
        reader.read(0.1)
    reader.close()
    with pytest.raises(ct_events.DataplaneError, match="closed"):
        reader.read(0.1)
