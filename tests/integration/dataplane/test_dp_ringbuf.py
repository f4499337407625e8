"""RingBuffer (dataplane/ringbuf.py) against a real BPF ring buffer filled by a real program.

A tiny tc program (compiled into a temporary directory, loaded with bpftool, pinned under
``/sys/fs/bpf/pntrb<hex>``, removed at the end, also on failure) is run with BPF_PROG_TEST_RUN,
no device involved. Each test packet is ``[command byte][13 ignored bytes][sample]``: the program
reserves a record of exactly ``len(sample)`` bytes (``bpf_ringbuf_reserve_dynptr``: plain
``bpf_ringbuf_reserve`` only takes a size the verifier knows as a constant), copies the sample in,
and submits it, or discards it when the command byte is 1. A failed reservation (ring full) adds
one to slot 0 of the array ``stats``.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from podnet.dataplane import bpf
from podnet.dataplane.ringbuf import RingBuffer

pytestmark = [pytest.mark.root]

RING_SIZE = 4 * 4096
HDR = 14  # the program's header: command byte + 13 bytes, as long as an Ethernet header
SUBMIT, DISCARD = 0, 1
BPF_PROG_TEST_RUN = 10

PROGRAM = f"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#define HDR {HDR}
#define MAX_SAMPLE 4096

struct {{
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, {RING_SIZE});
}} rb SEC(".maps");

struct {{
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
}} stats SEC(".maps");

struct scratch {{ __u8 buf[MAX_SAMPLE]; }};
struct {{
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
}} scratch SEC(".maps");

SEC("tc")
int produce(struct __sk_buff *skb)
{{
    __u32 zero = 0;
    __u64 len = skb->len;
    __u8 cmd;
    struct bpf_dynptr rec;

    if (len < HDR)
        return TC_ACT_SHOT;
    len -= HDR;
    asm volatile("" : "+r"(len));  /* keep clang from folding the bound below into the one above */
    if (len >= MAX_SAMPLE)
        return TC_ACT_SHOT;
    if (bpf_skb_load_bytes(skb, 0, &cmd, 1))
        return TC_ACT_SHOT;
    struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
    if (!s)
        return TC_ACT_SHOT;
    if (len > 0 && bpf_skb_load_bytes(skb, HDR, s->buf, len))
        return TC_ACT_SHOT;
    if (bpf_ringbuf_reserve_dynptr(&rb, len, 0, &rec)) {{
        __u64 *failed = bpf_map_lookup_elem(&stats, &zero);
        if (failed)
            __sync_fetch_and_add(failed, 1);
        bpf_ringbuf_discard_dynptr(&rec, 0);  /* required even when the reservation failed */
        return TC_ACT_OK;
    }}
    if (len)
        bpf_dynptr_write(&rec, 0, s->buf, len, 0);
    if (cmd == {DISCARD})
        bpf_ringbuf_discard_dynptr(&rec, 0);
    else
        bpf_ringbuf_submit_dynptr(&rec, 0);
    return TC_ACT_OK;
}}

char LICENSE[] SEC("license") = "GPL";
"""


@dataclass
class Env:
    prog_fd: int
    ring: str
    stats: str

    def run(self, sample: bytes, command: int = SUBMIT, repeat: int = 1) -> None:
        """BPF_PROG_TEST_RUN the program ``repeat`` times on one packet carrying ``sample``."""
        data = ctypes.create_string_buffer(bytes([command]) + bytes(HDR - 1) + sample)
        attr = bpf._attr(
            (0, "I", self.prog_fd),
            (8, "I", len(data) - 1),  # without the terminating NUL create_string_buffer adds
            (16, "Q", ctypes.addressof(data)),
            (32, "I", repeat),
        )
        bpf._sys_bpf(BPF_PROG_TEST_RUN, attr)
        (retval,) = struct.unpack_from("=I", attr, 4)
        assert retval == 0, f"program returned {retval} (TC_ACT_OK is 0)"

    def failed(self) -> int:
        with bpf.BpfMap(self.stats) as stats:
            return struct.unpack("=Q", stats.lookup(struct.pack("=I", 0)) or b"")[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("needs root: loads BPF programs and pins them on bpffs")
    missing = [t for t in ("bpftool", "clang") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")
    src_dir = tmp_path_factory.mktemp("ringbuf-src")
    (src_dir / "ringbuf_test.c").write_text(PROGRAM)
    obj = bpf.compile_program(str(src_dir / "ringbuf_test.c"), str(src_dir / "cache"))
    pin_root = f"{bpf.BPFFS}/pntrb{secrets.token_hex(3)}"
    prog_fd = -1
    try:
        bpf.ensure_pin_dir(pin_root)
        bpf.load_object(obj, f"{pin_root}/progs", f"{pin_root}/maps")
        prog_fd = bpf.obj_get(f"{pin_root}/progs/produce")
        yield Env(prog_fd, f"{pin_root}/maps/rb", f"{pin_root}/maps/stats")
    finally:
        if prog_fd >= 0:
            os.close(prog_fd)
        bpf.unpin_tree(pin_root)
    assert not os.path.exists(pin_root)


@pytest.fixture
def ring(env: Env) -> Iterator[RingBuffer]:
    with RingBuffer(env.ring) as rb:
        rb.read()  # whatever an earlier test left
        yield rb


def test_records_come_back_in_order_with_exact_contents(env: Env, ring: RingBuffer) -> None:
    assert ring.size == RING_SIZE
    samples = [bytes([n % 251 + 1]) * n for n in (1, 7, 8, 9, 13, 64, 100, 1001)] + [b"", b"tail"]
    for sample in samples:
        env.run(sample)
    assert ring.read() == samples
    assert ring.read() == []  # consumed: the consumer position was written back


def test_max_records_leaves_the_rest_for_the_next_read(env: Env, ring: RingBuffer) -> None:
    samples = [f"record {i}".encode() for i in range(5)]
    for sample in samples:
        env.run(sample)
    assert ring.read(max_records=2) == samples[:2]
    assert ring.read(max_records=0) == []
    assert ring.read() == samples[2:]


def test_a_record_across_the_end_of_the_ring_reads_as_one_piece(env: Env, ring: RingBuffer) -> None:
    # fillers move the next record's header to 16 bytes before the end of the data area
    while (gap := (RING_SIZE - 16 - ring.consumer_pos) % RING_SIZE) != 0:
        filler = b"f" * (min(gap, 2048) - 8)
        env.run(filler)
        assert ring.read() == [filler]
    start = ring.consumer_pos
    sample = bytes(range(100)) * 3  # 8 bytes before the end, 292 after it
    env.run(sample)
    assert ring.producer_pos - start == 8 + 304
    assert ring.read() == [sample]
    assert ring.consumer_pos == ring.producer_pos == start + 8 + 304


def test_discarded_records_are_skipped(env: Env, ring: RingBuffer) -> None:
    env.run(b"kept 1")
    env.run(b"dropped 1", DISCARD)
    env.run(b"dropped 2", DISCARD)
    env.run(b"kept 2")
    env.run(b"dropped 3", DISCARD)
    assert ring.read() == [b"kept 1", b"kept 2"]
    env.run(b"dropped 4", DISCARD)  # only discarded records: readable, yet no sample
    assert ring.wait(0)
    assert ring.read() == []
    assert not ring.wait(0)  # passing them freed the ring


def test_a_full_ring_keeps_what_fits_and_draining_frees_it(env: Env, ring: RingBuffer) -> None:
    sample = b"x" * (1024 - 8)  # one record: 8-byte header + 1016 bytes = 1024 bytes
    failed = env.failed()
    env.run(sample, repeat=20)
    # 16 such records would fill the 16 KiB exactly, but the kernel keeps the producer less than
    # the ring's size ahead of the consumer: 15 fit, 5 reservations fail
    assert env.failed() - failed == 5
    assert ring.read() == [sample] * 15
    env.run(sample, repeat=15)  # positive control: the space came back
    assert env.failed() - failed == 5
    assert ring.read() == [sample] * 15
    # discarded records hold their space until the reader passes them
    env.run(sample, DISCARD, repeat=15)
    env.run(sample)
    assert env.failed() - failed == 6
    assert ring.read() == []
    env.run(b"after")
    assert ring.read() == [b"after"]


def test_wait_wakes_on_a_record_and_times_out_without_one(env: Env, ring: RingBuffer) -> None:
    start = time.monotonic()
    assert ring.wait(0.2) is False  # negative control: nothing produced
    assert time.monotonic() - start >= 0.15
    assert ring.poll(0.05) == []
    # liveness: a waiter blocked before the record exists is woken by the kernel's notification
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(ring.wait(10.0)))
    waiter.start()
    time.sleep(0.1)
    start = time.monotonic()
    env.run(b"wake up")
    waiter.join(5.0)
    assert woke == [True] and time.monotonic() - start < 2.0
    assert ring.wait(0) is True  # level-triggered: still readable until consumed
    assert ring.poll(1.0) == [b"wake up"]
    assert ring.wait(0) is False
    # poll blocks until a record arrives, then returns it
    timer = threading.Timer(0.1, env.run, args=(b"later",))
    timer.start()
    try:
        assert ring.poll(5.0) == [b"later"]
    finally:
        timer.join()


def test_a_map_that_is_not_a_ring_buffer_is_refused(env: Env) -> None:
    with pytest.raises(bpf.BpfError, match=r"not a ring buffer.*type 2|type 2.*not a ring buffer"):
        RingBuffer(env.stats)
    with pytest.raises(bpf.BpfError, match="open pinned BPF object"):
        RingBuffer(env.stats + "-missing")


def test_a_closed_ring_refuses_to_read(env: Env) -> None:
    rb = RingBuffer(env.ring)
    rb.close()
    rb.close()  # idempotent
    with pytest.raises(bpf.BpfError, match="closed"):
        rb.read()
    with pytest.raises(bpf.BpfError, match="closed"):
        rb.wait(0)
