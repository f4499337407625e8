"""NFLOG: the packets the policy tables log (drops, and Calico's Log action), read in a netns.

:class:`NflogReader` binds a netlink socket to group :data:`NFLOG_GROUP` (in a given netns) and
parses each logged packet into :class:`Drop`: its prefix and the IPv4 source, destination,
protocol and destination port. The prefix tells which rule logged it (see
:mod:`podnet.dataplane.policy`). Only one socket per network namespace can bind a group.

The kernel queues logged packets per group and sends them when :data:`QUEUE_THRESHOLD` packets
wait or :data:`FLUSH_TIMEOUT_CS` has passed (its defaults, 100 packets or one second, made the agent
see a drop up to a second late and explain it by a plan that may no longer be the one that dropped
it). The reader asks for every packet at once.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import run_in_netns

NFLOG_GROUP = 7
QUEUE_THRESHOLD = 1  # packets the kernel queues before it sends them (its default: 100)
FLUSH_TIMEOUT_CS = 1  # hundredths of a second before it sends fewer (its default: 100)


_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_ULOG = 4
_NFULNL_MSG_PACKET, _NFULNL_MSG_CONFIG = 0, 1
_NFULA_CFG_CMD, _NFULA_CFG_MODE, _NFULA_CFG_TIMEOUT, _NFULA_CFG_QTHRESH = 1, 2, 4, 5
_NFULNL_CFG_CMD_BIND = 1
_NFULNL_COPY_PACKET = 2
_NFULA_PAYLOAD, _NFULA_PREFIX = 9, 10
_NLMSG_ERROR = 2
_IP_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True)
class Drop:
    prefix: str
    src: str
    dst: str
    protocol: str
    dport: int | None
    length: int = 0  # the IP packet's total length (bytes)
    sport: int | None = None


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def parse_nflog_packet(body: bytes) -> Drop | None:
    """A NFULNL_MSG_PACKET body (after the netlink header): prefix and the IPv4 header's addresses."""
    prefix, payload = "", b""
    offset = 4  # struct nfgenmsg
    while offset + 4 <= len(body):
        length, kind = struct.unpack_from("=HH", body, offset)
        if length < 4:
            break
        value = body[offset + 4 : offset + length]
        kind &= 0x7FFF
        if kind == _NFULA_PREFIX:
            prefix = value.split(b"\0", 1)[0].decode(errors="replace")
        elif kind == _NFULA_PAYLOAD:
            payload = value
        offset += (length + 3) & ~3
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    sport = dport = None
    if proto in (6, 17, 132) and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", payload, ihl)
    return Drop(
        prefix=prefix,
        src=str(ipaddress.IPv4Address(payload[12:16])),
        dst=str(ipaddress.IPv4Address(payload[16:20])),
        protocol=_IP_PROTOCOLS.get(proto, str(proto)),
        dport=dport,
        length=struct.unpack_from("!H", payload, 2)[0],
        sport=sport,
    )


class NflogReader:
    """Reads the drops logged to NFLOG ``group`` (in ``netns``): ``for drop in reader.read(timeout)``."""

    def __init__(self, group: int = NFLOG_GROUP, netns: str | None = None) -> None:
        self.group = group
        self.sock = run_in_netns(netns, self._open)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            self._config(sock, _nlattr(_NFULA_CFG_CMD, struct.pack("B", _NFULNL_CFG_CMD_BIND)))
            mode = struct.pack("!IBB", 256, _NFULNL_COPY_PACKET, 0)
            self._config(sock, _nlattr(_NFULA_CFG_MODE, mode))
            self._config(sock, _nlattr(_NFULA_CFG_QTHRESH, struct.pack("!I", QUEUE_THRESHOLD)))
            self._config(sock, _nlattr(_NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TIMEOUT_CS)))
        except BaseException:
            sock.close()
            raise
        return sock

    def _config(self, sock: socket.socket, attr: bytes) -> None:
        nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.group)
        kind = (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_CONFIG
        body = nfgen + attr
        sock.send(struct.pack("=IHHII", 16 + len(body), kind, 0x1 | 0x4, 1, 0) + body)  # REQUEST|ACK
        data = sock.recv(65536)
        _, msg_type, _, _, _ = struct.unpack_from("=IHHII", data)
        if msg_type == _NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, 16)[0]
            if err:
                raise DataplaneError(f"NFLOG group {self.group}: {os.strerror(err)}")

    def read(self, timeout: float = 1.0) -> list[Drop]:
        """The drops that arrive within ``timeout`` (returns early after the first batch)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        drops = []
        offset = 0
        while offset + 16 <= len(data):
            length, msg_type = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if msg_type == (_NFNL_SUBSYS_ULOG << 8) | _NFULNL_MSG_PACKET:
                drop = parse_nflog_packet(data[offset + 16 : offset + length])
                if drop is not None:
                    drops.append(drop)
            offset += (length + 3) & ~3
        return drops

    def close(self) -> None:
        self.sock.close()
