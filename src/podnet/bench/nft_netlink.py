"""Read one nftables map's keys straight from the kernel (nf_tables netlink), for benchmark fences.

``nft get element`` and ``nft list map`` load nft's cache of the whole table first: with 10,000
services (30,000 chains) one ``nft get element`` took seconds of CPU (46 s on a busy machine),
so a fence polling it would starve the agents it measures. A ``NFT_MSG_GETSETELEM`` request asks
the kernel for one set's elements (or one element) and nothing else.

Keys of ``ipv4_addr . inet_proto . inet_service`` are 12 bytes: each part in a 4-byte register
(address; protocol number and 3 bytes of padding; port big-endian and 2 bytes of padding).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

from podnet.dataplane.ctnetlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    nfgenmsg,
    nla,
    split_messages,
)

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


def walk(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every attribute of ``data`` in order, repeated types included: ``(type, payload)``."""
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def encode_key(ip: str, proto: str, port: int) -> bytes:
    """The 12-byte key of ``ip . proto . port``."""
    return (
        ipaddress.IPv4Address(ip).packed + struct.pack("=B3x", PROTOCOLS[proto]) + struct.pack("!H2x", port)
    )


def decode_key(raw: bytes) -> tuple[str, str, int]:
    names = {v: k for k, v in PROTOCOLS.items()}
    return (
        str(ipaddress.IPv4Address(raw[:4])),
        names.get(raw[4], str(raw[4])),
        struct.unpack_from("!H", raw, 8)[0],
    )


def element_keys(payload: bytes) -> list[bytes]:
    """The keys of one ``NFT_MSG_NEWSETELEM`` payload (nfgenmsg, then attributes)."""
    keys = []
    for kind, value in walk(payload[4:]):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        for elem_kind, elem in walk(value):
            if elem_kind != NFTA_LIST_ELEM:
                continue
            for attr, body in walk(elem):
                if attr == NFTA_SET_ELEM_KEY:
                    keys += [data for k, data in walk(body) if k == NFTA_DATA_VALUE]
    return keys


def _request(flags: int, body: bytes) -> bytes:
    msg = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), msg, flags, 1, 0) + body


def _names(table: str, set_name: str) -> bytes:
    return (
        nfgenmsg(socket.AF_INET)
        + nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        + nla(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
    )


def _answers(sock: socket.socket) -> Iterator[bytes]:
    """Payloads of NEWSETELEM answers until DONE or an error/ack (ENOENT: nothing)."""
    while True:
        found, _intact = split_messages(sock.recv(1 << 20))
        for msg_type, _flags, payload in found:
            if msg_type == NLMSG_DONE:
                return
            if msg_type == NLMSG_ERROR:
                err = -struct.unpack_from("=i", payload)[0]
                if err and err != 2:  # ENOENT: no such element (or table/set)
                    raise OSError(err, "nf_tables GETSETELEM")
                return
            if msg_type & 0xFF == NFT_MSG_NEWSETELEM:
                yield payload


def set_keys(table: str, set_name: str) -> list[bytes]:
    """Every key of ``table`` (family ip) set/map ``set_name`` in the calling thread's netns."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.send(_request(NLM_F_REQUEST | NLM_F_DUMP, _names(table, set_name)))
        return [key for payload in _answers(sock) for key in element_keys(payload)]


def has_key(table: str, set_name: str, key: bytes) -> bool:
    """Whether ``key`` is an element of ``table`` set/map ``set_name`` (calling thread's netns)."""
    elem = nla(
        NFTA_LIST_ELEM | NLA_F_NESTED, nla(NFTA_SET_ELEM_KEY | NLA_F_NESTED, nla(NFTA_DATA_VALUE, key))
    )
    body = _names(table, set_name) + nla(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, elem)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.send(_request(NLM_F_REQUEST | NLM_F_ACK, body))
        return any(True for _ in _answers(sock))
