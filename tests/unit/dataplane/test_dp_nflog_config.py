"""The NFLOG reader's configuration of its group: bound, whole packets, and every packet sent at once."""

from __future__ import annotations

import socket
import struct

import pytest

from podnet.dataplane import nflog


class FakeNetlink:
    """Records the config requests and acknowledges each (NLMSG_ERROR with error 0)."""

    sent: list[bytes] = []

    def __init__(self, *args: object) -> None:
        FakeNetlink.sent = []

    def bind(self, address: object) -> None:
        pass

    def send(self, data: bytes) -> int:
        FakeNetlink.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16

    def close(self) -> None:
        pass


def config_attrs(message: bytes) -> tuple[int, bytes]:
    """(attribute type, value) of a one-attribute NFULNL_MSG_CONFIG request."""
    length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", message)
    assert kind == (4 << 8) | 1 and length == len(message)
    group = struct.unpack_from("!H", message, 18)[0]
    assert group == nflog.NFLOG_GROUP
    attr_length, attr_type = struct.unpack_from("=HH", message, 20)
    return attr_type, message[24 : 20 + attr_length]


def test_reader_asks_the_kernel_for_every_logged_packet_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", FakeNetlink)
    reader = nflog.NflogReader()
    attrs = dict(config_attrs(m) for m in FakeNetlink.sent)
    reader.close()
    assert attrs[1] == b"\x01"  # NFULA_CFG_CMD: bind
    assert attrs[2][4] == 2  # NFULA_CFG_MODE: copy the packet
    # NFULA_CFG_QTHRESH 1 and NFULA_CFG_TIMEOUT 1/100 s: not the kernel's 100 packets or 1 s
    assert struct.unpack("!I", attrs[5]) == (nflog.QUEUE_THRESHOLD,) == (1,)
    assert struct.unpack("!I", attrs[4]) == (nflog.FLUSH_TIMEOUT_CS,) == (1,)
