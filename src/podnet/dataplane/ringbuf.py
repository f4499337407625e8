"""Read a pinned eBPF ring buffer (``BPF_MAP_TYPE_RINGBUF``) from Python, the way libbpf's ringbuf.c does.

The map's fd is mmap-ed twice (``S`` = ``max_entries``, a power of two, page multiple)::

    offset 0, 1 page, read-write      consumer page: u64 consumer_pos at 0 (ours to advance)
    offset PAGE, PAGE + 2*S, read     producer page: u64 producer_pos at 0 (the kernel's)
                                      data at PAGE: the S bytes mapped twice in a row, so a
                                      record that wraps around the end reads as one piece

Positions only grow; a record starts at ``pos & (S - 1)`` with an 8-byte header, ``u32 len``
(bit 31 BUSY: reserved, not yet committed; bit 30 DISCARD: the program dropped it) and ``u32``
page offset (kernel bookkeeping), then ``len`` bytes of sample; it occupies
``round_up(len + 8, 8)`` bytes. ``read`` walks from consumer_pos to producer_pos, stops at the
first BUSY record (records commit out of order, but are consumed in order), skips discarded ones
and writes consumer_pos back after every record, so the kernel can reuse the space at once.
A ring of ``S`` bytes holds at most ``S - 8`` bytes of records (the kernel keeps producer_pos less
than ``S`` ahead of consumer_pos), and discarded records take space until the reader passes them.

``wait`` is epoll on the map fd: it is readable while producer_pos != consumer_pos (discarded
records included), so ``True`` means "data may be there", not "a sample is there".
"""

from __future__ import annotations

import mmap
import os
import select
import struct

from podnet.dataplane.bpf import BpfError, map_info_fd, obj_get

BPF_MAP_TYPE_RINGBUF = 27
BPF_F_NUMA_NODE = 1 << 2  # the only creation flag that leaves the layout as described above
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SZ = 8


class RingBuffer:
    """A pinned ``BPF_MAP_TYPE_RINGBUF`` opened for consuming; one consumer at a time per map."""

    def __init__(self, pin_path: str) -> None:
        self.path = pin_path
        self.fd = obj_get(pin_path)
        self._consumer: mmap.mmap | None = None
        self._producer: mmap.mmap | None = None
        self._epoll: select.epoll | None = None
        try:
            info = map_info_fd(self.fd)
            if info.type != BPF_MAP_TYPE_RINGBUF:
                raise BpfError(
                    f"{pin_path} is map {info.name!r} of type {info.type}, not a ring buffer "
                    f"(BPF_MAP_TYPE_RINGBUF = {BPF_MAP_TYPE_RINGBUF})"
                )
            if info.flags & ~BPF_F_NUMA_NODE:
                raise BpfError(
                    f"ring buffer {pin_path} has map flags {info.flags:#x} this reader does not know"
                )
            self.size = info.max_entries
            self._mask = self.size - 1
            page = mmap.PAGESIZE
            self._data = page
            self._consumer = mmap.mmap(
                self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
            self._producer = mmap.mmap(
                self.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        except OSError as exc:
            self.close()
            raise BpfError(f"map ring buffer {pin_path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for res in (self._epoll, self._producer, self._consumer):
            if res is not None:
                res.close()
        self._epoll = self._producer = self._consumer = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _maps(self) -> tuple[mmap.mmap, mmap.mmap]:
        if self._consumer is None or self._producer is None:
            raise BpfError(f"ring buffer {self.path} is closed")
        return self._consumer, self._producer

    @property
    def consumer_pos(self) -> int:
        """Bytes consumed since the map was created (the record being read next starts here)."""
        return int(struct.unpack_from("=Q", self._maps()[0], 0)[0])

    @property
    def producer_pos(self) -> int:
        """Bytes reserved since the map was created; ``producer_pos - consumer_pos`` is the backlog."""
        return int(struct.unpack_from("=Q", self._maps()[1], 0)[0])

    def read(self, max_records: int | None = None) -> list[bytes]:
        """Drain without blocking: the committed samples in order (copies), at most ``max_records``."""
        consumer, producer = self._maps()
        out: list[bytes] = []
        (cons,) = struct.unpack_from("=Q", consumer, 0)
        while max_records is None or len(out) < max_records:
            (prod,) = struct.unpack_from("=Q", producer, 0)
            if cons >= prod:
                break
            while cons < prod and (max_records is None or len(out) < max_records):
                at = self._data + (cons & self._mask)
                (length,) = struct.unpack_from("=I", producer, at)
                if length & BUSY_BIT:
                    return out  # not committed yet: the next read takes it
                size = length & ~(BUSY_BIT | DISCARD_BIT)
                if not length & DISCARD_BIT:
                    out.append(producer[at + HDR_SZ : at + HDR_SZ + size])
                cons += (size + HDR_SZ + 7) & ~7
                struct.pack_into("=Q", consumer, 0, cons)
        return out

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until the ring is readable; True when data may be there."""
        if self._epoll is None:
            raise BpfError(f"ring buffer {self.path} is closed")
        return bool(self._epoll.poll(timeout, 1))

    def poll(self, timeout: float, max_records: int | None = None) -> list[bytes]:
        """``read``; when that finds nothing, ``wait`` up to ``timeout`` and ``read`` again."""
        out = self.read(max_records)
        if not out and self.wait(timeout):
            out = self.read(max_records)
        return out
