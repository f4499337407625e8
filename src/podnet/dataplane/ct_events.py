"""Conntrack events over ctnetlink, read in a netns: the raw material of the Calico profile's flow logs.

Calico's flow logs come from conntrack: one record per connection, with the bytes and packets of
both directions when it ends. :class:`CtEventReader` subscribes a ``NETLINK_NETFILTER`` socket (in a
given netns) to the conntrack multicast groups and parses each message into a :class:`CtEvent`:

    kernel conntrack (per netns)                         CtEventReader(netns).read(timeout)
      entry confirmed ── IPCTNL_MSG_CT_NEW, NLM_F_CREATE|NLM_F_EXCL ─ group 1 (NEW) ──▶ kind "new"
      entry changed  ── IPCTNL_MSG_CT_NEW, no flags ──────────────── group 2 (UPDATE)   (not joined)
      entry gone     ── IPCTNL_MSG_CT_DELETE + counters, timestamps ─ group 3 (DESTROY) ▶ kind "destroy"
    dump(netns): IPCTNL_MSG_CT_GET|NLM_F_DUMP ──▶ every entry now, with its counters ──▶ kind "dump"

What the kernel sends (``ctnetlink_conntrack_event`` in ``net/netfilter/nf_conntrack_netlink.c``):
both tuples, CTA_ID and CTA_STATUS always (CTA_ZONE outside the default zone); on NEW also the
timeout, the protocol info and the mark; on DESTROY the counters (``CTA_COUNTERS_ORIG``/``_REPLY``)
and ``CTA_TIMESTAMP``, and the mark if set. Updates go to their own group, which the reader does
not join; should one arrive anyway it is skipped. The reply tuple shows a DNAT: a connection to a
ClusterIP has the backend as ``reply_src``.

**Per-netns switches** (sysctls of the namespace, which need the ``nf_conntrack`` module loaded),
set by :func:`enable_accounting`:

- ``nf_conntrack_acct``: without it there are no counters at all (DESTROY carries zeros);
- ``nf_conntrack_timestamp``: start/stop times (``CLOCK_REALTIME`` ns) on DESTROY;
- ``nf_conntrack_events``: its default ``2`` gives an entry its event slot only if a listener
  existed when the entry was created, so a connection opened while no reader was subscribed (an
  agent restart) never reports its end; ``1`` gives every entry the slot (checked here: with 2,
  a connection opened before the reader subscribed ended without a DESTROY; with 1 it came).

All three are read when an entry is *created*: entries that existed before have no counters, no
timestamps and possibly no DESTROY event. And conntrack only runs in a namespace where something
asked for it (a ruleset with ``ct`` expressions, NAT, ...): podnet's policy and service tables do.

**When DESTROY arrives.** When the entry's timeout runs out, not when the sockets close: a TCP
connection closed by FIN stays ``nf_conntrack_tcp_timeout_time_wait`` (120 s by default) in
TIME_WAIT, one reset by RST ``nf_conntrack_tcp_timeout_close`` (10 s); UDP entries live
``nf_conntrack_udp_timeout`` (30 s; 120 s once both sides spoke). Then the kernel's garbage
collector, one worker for all namespaces that rescans every 1 to 60 s, has to notice the expired
entry; a ctnetlink dump of the namespace reaps its expired entries on the spot (and so sends their
DESTROY at once). Measured on this machine (kernel 6.18, FIN close, 100 kB): TIME_WAIT 120 s ->
DESTROY 120.0 s after ``close()``; TIME_WAIT 1 s -> 22.6 s without dumps (collector lag), 1.1 s with
a :func:`dump` every 0.2 s; RST -> 10.1 s. The stop timestamp is the moment the timeout ran out
(the kernel backdates it when it reaps late), so a record's end time is right even when it comes
late. A flow log that wants records soon after connections end therefore dumps periodically (which
also reports the flows still open) and/or lowers TIME_WAIT in the namespace.

**Losing events.** Events are multicast datagrams queued on the socket; when its receive buffer is
full the kernel drops them and the next ``recv()`` fails with ENOBUFS. The reader asks for a large
buffer (``SO_RCVBUFFORCE``, root; else ``SO_RCVBUF``, capped by ``net.core.rmem_max``), counts each
ENOBUFS in :attr:`CtEventReader.lost_overruns` and carries on: what was lost is lost (a dump can
resynchronise the open flows).

IPv4 only: entries of other families are skipped. For ICMP the tuple has no ports: ``sport`` and
``dport`` are 0 and ``icmp_type``/``icmp_code``/``icmp_id`` carry the original direction's
type, code and identifier (None for other protocols).
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

from podnet.dataplane import sysctl
from podnet.dataplane.ctnetlink import (
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_PACKETS,
    CTA_COUNTERS_REPLY,
    CTA_ID,
    CTA_MARK,
    CTA_STATUS,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_START,
    CTA_TIMESTAMP_STOP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    CTA_ZONE,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    NETLINK_NETFILTER,
    NFGENMSG_LEN,
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NLM_F_CREATE,
    NLM_F_EXCL,
    attrs,
    be_uint,
    dump_table,
    parse_icmp,
    parse_tuple,
    split_messages,
)
from podnet.dataplane.errors import DataplaneError, kernel_error
from podnet.dataplane.netns import run_in_netns

RCVBUF_BYTES = 8 << 20  # asked of the kernel for the event socket (it doubles it for overhead)
RECV_BYTES = 1 << 20  # one recv(): a multicast datagram holds one event (a few hundred bytes)
MAX_RECVS_PER_READ = 256  # read() drains at most this many queued datagrams after the first

#: What :func:`enable_accounting` writes (``timestamps``/``events`` False leave theirs alone).
ACCOUNTING_SYSCTLS = {
    "net.netfilter.nf_conntrack_acct": "1",
    "net.netfilter.nf_conntrack_timestamp": "1",
    "net.netfilter.nf_conntrack_events": "1",
}

NEW, DESTROY, DUMP = "new", "destroy", "dump"
_NEW_ENTRY = NLM_F_CREATE | NLM_F_EXCL


class CtEvent(NamedTuple):
    """One conntrack entry as an event reported it (``kind`` "new" or "destroy") or a dump saw it
    ("dump"). ``src``/``dst``/``sport``/``dport`` are the original direction (the client's view),
    ``reply_*`` the reply direction (after DNAT ``reply_src`` is the backend). Counters are 0 when
    the kernel did not report them (NEW events; accounting off when the entry was created);
    timestamps are ``CLOCK_REALTIME`` nanoseconds, None when not reported. ``zone`` is 0 for the
    default zone; ``id`` is the kernel's ``CTA_ID`` (the same on an entry's NEW and DESTROY)."""

    kind: str
    protocol: int
    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    packets_orig: int = 0
    bytes_orig: int = 0
    packets_reply: int = 0
    bytes_reply: int = 0
    mark: int = 0
    status: int = 0
    id: int = 0
    zone: int = 0
    timestamp_start_ns: int | None = None
    timestamp_stop_ns: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_id: int | None = None


def _counters(raw: bytes | None) -> tuple[int, int]:
    if not raw:  # NEW events carry none
        return 0, 0
    nested = attrs(raw)
    return be_uint(nested.get(CTA_COUNTERS_PACKETS)), be_uint(nested.get(CTA_COUNTERS_BYTES))


def parse_entry(kind: str, payload: bytes) -> CtEvent | None:
    """A ctnetlink conntrack message's payload (nfgenmsg and attributes) as a :class:`CtEvent` of
    ``kind``; None when it is not IPv4 or lacks a tuple."""
    if len(payload) < NFGENMSG_LEN or payload[0] != socket.AF_INET:
        return None
    top = attrs(payload[NFGENMSG_LEN:])
    orig_raw, reply_raw = top.get(CTA_TUPLE_ORIG), top.get(CTA_TUPLE_REPLY)
    orig = parse_tuple(orig_raw) if orig_raw else None
    reply = parse_tuple(reply_raw) if reply_raw else None
    if orig is None or reply is None:
        return None
    packets_orig, bytes_orig = _counters(top.get(CTA_COUNTERS_ORIG))
    packets_reply, bytes_reply = _counters(top.get(CTA_COUNTERS_REPLY))
    stamps = attrs(top[CTA_TIMESTAMP]) if CTA_TIMESTAMP in top else {}
    icmp = parse_icmp(orig_raw) if orig_raw and orig.protocol == socket.IPPROTO_ICMP else None
    return CtEvent(
        kind=kind,
        protocol=orig.protocol,
        src=orig.src,
        dst=orig.dst,
        sport=orig.sport,
        dport=orig.dport,
        reply_src=reply.src,
        reply_dst=reply.dst,
        reply_sport=reply.sport,
        reply_dport=reply.dport,
        packets_orig=packets_orig,
        bytes_orig=bytes_orig,
        packets_reply=packets_reply,
        bytes_reply=bytes_reply,
        mark=be_uint(top.get(CTA_MARK)),
        status=be_uint(top.get(CTA_STATUS)),
        id=be_uint(top.get(CTA_ID)),
        zone=be_uint(top.get(CTA_ZONE)),
        timestamp_start_ns=be_uint(stamps[CTA_TIMESTAMP_START]) if CTA_TIMESTAMP_START in stamps else None,
        timestamp_stop_ns=be_uint(stamps[CTA_TIMESTAMP_STOP]) if CTA_TIMESTAMP_STOP in stamps else None,
        icmp_type=icmp[0] if icmp else None,
        icmp_code=icmp[1] if icmp else None,
        icmp_id=icmp[2] if icmp else None,
    )


def parse_event(msg_type: int, flags: int, payload: bytes) -> CtEvent | None:
    """One netlink message of the event socket: a NEW (``IPCTNL_MSG_CT_NEW`` with
    ``NLM_F_CREATE|NLM_F_EXCL``) or DESTROY (``IPCTNL_MSG_CT_DELETE``) event, else None (updates:
    ``IPCTNL_MSG_CT_NEW`` without those flags; other subsystems and messages; non-IPv4)."""
    if msg_type >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    msg = msg_type & 0xFF
    if msg == IPCTNL_MSG_CT_DELETE:
        return parse_entry(DESTROY, payload)
    if msg == IPCTNL_MSG_CT_NEW and flags & _NEW_ENTRY == _NEW_ENTRY:
        return parse_entry(NEW, payload)
    return None


def parse_events(data: bytes) -> tuple[list[CtEvent], bool]:
    """The events of one ``recv()`` buffer, and whether the buffer was intact (a malformed message
    ends the walk; the events before it are kept)."""
    found, intact = split_messages(data)
    events = [ev for msg_type, flags, payload in found if (ev := parse_event(msg_type, flags, payload))]
    return events, intact


class CtEventReader:
    """Reads the conntrack events of ``netns`` (None: the caller's): ``for ev in reader.read(1.0)``.

    ``new``/``destroy`` choose the groups joined (NEW: one event per connection as it is confirmed;
    DESTROY: one when its entry goes, with the counters). :attr:`lost_overruns` counts the times
    the kernel reported dropped events (ENOBUFS), :attr:`malformed` the buffers that did not parse
    whole. Several readers may join the same groups (each gets every event)."""

    def __init__(
        self,
        netns: str | None = None,
        new: bool = True,
        destroy: bool = True,
        *,
        rcvbuf: int = RCVBUF_BYTES,
    ) -> None:
        if not (new or destroy):
            raise ValueError("CtEventReader: subscribe to new or destroy events (or both)")
        self.netns = netns
        wanted = ((NFNLGRP_CONNTRACK_NEW, new), (NFNLGRP_CONNTRACK_DESTROY, destroy))
        self.groups = [group for group, on in wanted if on]
        self.rcvbuf = rcvbuf
        self.lost_overruns = 0
        self.malformed = 0
        self.sock = run_in_netns(netns, self._open)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, self.rcvbuf)  # SO_RCVBUFFORCE: beyond rmem_max
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            mask = 0
            for group in self.groups:
                mask |= 1 << (group - 1)
            sock.bind((0, mask))
        except OSError as exc:
            sock.close()
            raise kernel_error(
                "subscribe to conntrack events", exc.errno or errno.EIO, netns=self.netns
            ) from exc
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def receive_buffer(self) -> int:
        """The receive buffer the kernel granted (bytes, as ``SO_RCVBUF`` reports it)."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def fileno(self) -> int:
        """The socket's descriptor, for ``select``/``epoll`` (readable: ``read`` will not wait)."""
        return self.sock.fileno()

    def _recv(self) -> bytes | None:
        """One datagram; None when none is queued (or the wait timed out). ENOBUFS is counted."""
        while True:
            try:
                return self.sock.recv(RECV_BYTES)
            except (TimeoutError, BlockingIOError):
                return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    err = exc.errno or errno.EIO
                    raise kernel_error("read conntrack events", err, netns=self.netns) from exc
                self.lost_overruns += 1  # the kernel dropped events; what is still queued follows

    def read(self, timeout: float | None = 1.0) -> list[CtEvent]:
        """The events that arrive within ``timeout`` seconds (None: wait for the first), returned
        as soon as the first datagram came, together with every one already queued behind it."""
        if self.sock.fileno() < 0:
            raise DataplaneError("CtEventReader.read: the reader is closed")
        self.sock.settimeout(timeout)
        data = self._recv()
        if data is None:
            return []
        self.sock.setblocking(False)
        buffers = [data]
        while len(buffers) <= MAX_RECVS_PER_READ and (more := self._recv()) is not None:
            buffers.append(more)
        events: list[CtEvent] = []
        for data in buffers:
            found, intact = parse_events(data)
            events += found
            self.malformed += not intact
        return events

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtEventReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dump(netns: str | None = None) -> list[CtEvent]:
    """Every IPv4 conntrack entry of ``netns`` (None: the caller's) now, as kind "dump" events with
    their counters so far (zero unless accounting was on when the entry was created). The kernel
    drops expired entries it meets during the dump: their DESTROY events go out at once."""

    def body() -> list[CtEvent]:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
            sock.bind((0, 0))
            return [ev for payload in dump_table(sock) if (ev := parse_entry(DUMP, payload))]

    try:
        return run_in_netns(netns, body)
    except OSError as exc:
        raise kernel_error("dump conntrack table", exc.errno or errno.EIO, netns=netns) from exc


def enable_accounting(netns: str | None = None, *, timestamps: bool = True, events: bool = True) -> None:
    """Turn on conntrack accounting (``nf_conntrack_acct``) in ``netns``, and by default timestamps
    and an event slot on every entry (see the module notes). Per-netns sysctls: they need the
    ``nf_conntrack`` module loaded (KernelNotFound otherwise). Entries created before keep what
    they had: no counters, no timestamps."""
    values = dict(ACCOUNTING_SYSCTLS)
    if not timestamps:
        del values["net.netfilter.nf_conntrack_timestamp"]
    if not events:
        del values["net.netfilter.nf_conntrack_events"]
    sysctl.write_many(values, netns)


__all__ = [
    "DESTROY",
    "DUMP",
    "NEW",
    "CtEvent",
    "CtEventReader",
    "dump",
    "enable_accounting",
    "parse_entry",
    "parse_event",
    "parse_events",
]
