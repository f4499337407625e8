"""ctnetlink, the kernel's conntrack table over netlink: the constants and the little codec podnet shares.

Two users: :mod:`podnet.dataplane.services_nft` dumps the table and deletes stale UDP entries,
:mod:`podnet.dataplane.ct_events` reads the NEW/DESTROY events and dumps the table with counters
(flow records). Both speak ``NETLINK_NETFILTER``, subsystem ``NFNL_SUBSYS_CTNETLINK``; every
message is a ``struct nlmsghdr`` (16 bytes, host order), a ``struct nfgenmsg`` (4 bytes: family,
version, resource id in network order) and attributes. Attribute *headers* are host order, conntrack
attribute *values* are network order (big endian): ports u16, CTA_STATUS/CTA_MARK/CTA_ID u32,
CTA_ZONE u16, counters and timestamps u64.

The numbers are those of ``include/uapi/linux/netfilter/nfnetlink_conntrack.h``,
``nfnetlink.h`` and ``linux/netlink.h`` (checked against the installed headers by compiling a
program that prints them); the uapi enums only ever grow, so they hold for newer kernels too.

Pure functions and one dump loop; no netns handling (callers open the socket where they need it,
``netns.run_in_netns``).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1

# enum cntl_msg_types (the low byte of nlmsg_type; the high byte is the subsystem)
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2

# enum nfnetlink_groups: multicast groups (bind() takes a bitmask of 1 << (group - 1))
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3

# enum ctattr_type
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS = 1, 2, 3
CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 8, 9, 10
CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 12, 18, 20
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
# enum ctattr_counters, ctattr_tstamp (64-bit values)
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2

# linux/netlink.h
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x2, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400  # "new request" flags: on a conntrack event, a new entry
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
SOL_NETLINK = 270  # not in Python's socket module
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4


class CtTuple(NamedTuple):
    """One direction of a conntrack entry (``CTA_TUPLE_ORIG`` or ``CTA_TUPLE_REPLY``), IPv4.
    ``sport``/``dport`` are 0 for protocols without ports (ICMP: see :func:`parse_icmp`)."""

    src: str
    dst: str
    protocol: int
    sport: int
    dport: int


def attrs(data: bytes) -> dict[int, bytes]:
    """The attributes of ``data`` by type (flags masked off; the last of a repeated type wins).
    Stops at the first malformed header; a length past the end yields what is there."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def nla(kind: int, payload: bytes) -> bytes:
    """One attribute: header, payload, padding to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def be_uint(raw: bytes | None) -> int:
    """A big-endian unsigned integer attribute value (u8..u64); 0 when absent."""
    return int.from_bytes(raw, "big") if raw else 0


#: the layout the kernel writes for an IPv4 TCP/UDP/SCTP tuple (ctnetlink_dump_tuples): IP
#: (src, dst), then protocol (number, source port, destination port), each attribute padded to 4
_FAST_TUPLE = struct.Struct("=HHHH4sHH4sHHHHB3xHH2s2xHH2s2x")
_FAST_HEADERS = (
    *(20, 0x8000 | CTA_TUPLE_IP, 8, CTA_IP_V4_SRC, 8, CTA_IP_V4_DST),
    *(28, 0x8000 | CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT, 6, CTA_PROTO_DST_PORT),
)


def parse_tuple(raw: bytes) -> CtTuple | None:
    """(src, dst, protocol, sport, dport) of a ``CTA_TUPLE_*`` attribute; None if it is not IPv4.
    The kernel's usual layout is read with one unpack (a NEW or DESTROY event per connection makes
    this hot); anything else goes through the attribute walk."""
    if len(raw) >= _FAST_TUPLE.size:
        (l1, t1, l2, t2, src, l3, t3, dst, l4, t4, l5, t5, number, l6, t6, sport, l7, t7, dport) = (
            _FAST_TUPLE.unpack_from(raw)
        )
        if (l1, t1, l2, t2, l3, t3, l4, t4, l5, t5, l6, t6, l7, t7) == _FAST_HEADERS:
            return CtTuple(
                socket.inet_ntoa(src),
                socket.inet_ntoa(dst),
                number,
                int.from_bytes(sport, "big"),
                int.from_bytes(dport, "big"),
            )
    tup = attrs(raw)
    ip, proto = attrs(tup.get(CTA_TUPLE_IP, b"")), attrs(tup.get(CTA_TUPLE_PROTO, b""))
    if len(ip.get(CTA_IP_V4_SRC, b"")) != 4 or len(ip.get(CTA_IP_V4_DST, b"")) != 4:
        return None
    if not proto.get(CTA_PROTO_NUM):
        return None
    return CtTuple(
        socket.inet_ntoa(ip[CTA_IP_V4_SRC]),
        socket.inet_ntoa(ip[CTA_IP_V4_DST]),
        proto[CTA_PROTO_NUM][0],
        be_uint(proto.get(CTA_PROTO_SRC_PORT)),
        be_uint(proto.get(CTA_PROTO_DST_PORT)),
    )


def parse_icmp(raw: bytes) -> tuple[int, int, int] | None:
    """(type, code, id) of an ICMP ``CTA_TUPLE_*`` attribute (None when it carries no ICMP type)."""
    proto = attrs(attrs(raw).get(CTA_TUPLE_PROTO, b""))
    if CTA_PROTO_ICMP_TYPE not in proto:
        return None
    return (
        be_uint(proto.get(CTA_PROTO_ICMP_TYPE)),
        be_uint(proto.get(CTA_PROTO_ICMP_CODE)),
        be_uint(proto.get(CTA_PROTO_ICMP_ID)),
    )


def ct_message_type(msg: int) -> int:
    """The ``nlmsg_type`` of ctnetlink message ``msg`` (subsystem in the high byte)."""
    return (NFNL_SUBSYS_CTNETLINK << 8) | msg


def request(msg: int, flags: int, seq: int, body: bytes) -> bytes:
    """A ctnetlink request: netlink header for ``msg`` and ``body`` (nfgenmsg and attributes)."""
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), ct_message_type(msg), flags, seq, 0) + body


def nfgenmsg(family: int = socket.AF_INET) -> bytes:
    """``struct nfgenmsg``: the family, NFNETLINK_V0, resource id 0."""
    return struct.pack("!BBH", family, 0, 0)


def split_messages(data: bytes) -> tuple[list[tuple[int, int, bytes]], bool]:
    """``(nlmsg_type, nlmsg_flags, payload)`` of each netlink message of one ``recv()``, and whether
    the buffer was intact: the walk stops at a header that cannot be right (a length below 16 or
    past the end of the buffer), keeping the messages before it."""
    out: list[tuple[int, int, bytes]] = []
    offset = 0
    while offset + NLMSG_HDRLEN <= len(data):
        length, msg_type, flags = struct.unpack_from("=IHH", data, offset)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            return out, False
        out.append((msg_type, flags, data[offset + NLMSG_HDRLEN : offset + length]))
        offset += (length + 3) & ~3
    return out, offset >= len(data)


def dump_table(sock: socket.socket, family: int = socket.AF_INET, seq: int = 1) -> Iterator[bytes]:
    """Dump the conntrack table of ``sock``'s namespace (entries of ``family``): yields each entry's
    payload (nfgenmsg and attributes: ``attrs(payload[4:])``). Ends at NLMSG_DONE or at a buffer
    that is not intact; raises OSError with the kernel's errno if it answers with an error."""
    sock.send(request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, nfgenmsg(family)))
    while True:
        data = sock.recv(1 << 20)
        found, intact = split_messages(data)
        for msg_type, _flags, payload in found:
            if msg_type == NLMSG_DONE:
                return
            if msg_type == NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                if err:
                    raise OSError(err, f"conntrack dump: {os.strerror(err)}")
                return
            yield payload
        if not intact or not data:
            return
