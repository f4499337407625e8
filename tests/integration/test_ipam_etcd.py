"""IPAM against a real etcd with several processes racing: no duplicates, no leaks, leaks found.

Four spawned processes share three node names and churn through thousands of allocate/release
operations in a 64-address pool split into eight /29 blocks, so blocks fill up, nodes borrow from
each other and compare-and-swap writes collide. Every process logs, per allocation, when the
``auto_assign`` call started and returned and when the release started and returned (monotonic
clock, shared by all processes on Linux). The allocation committed inside the first window and the
release inside the second, so the address was certainly held from "assign returned" to "release
started"; two such intervals of the same address overlapping would be a double allocation.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.etcd_server import EtcdServer
from podnet.datastore.keys import KeyLayout
from podnet.errors import PoolExhausted
from podnet.ipam import IPAM, PoolSpec, handle_id
from podnet.ipam.check import ISSUE_LEAKED

pytestmark = pytest.mark.etcd

POOL = PoolSpec("race", "10.200.0.0/26", block_size=29)  # 8 blocks of 8 addresses
NODES = ["node-a", "node-b", "node-c"]
PROCESSES = 4
ALLOCATIONS_PER_PROCESS = 600
MAX_HELD_PER_PROCESS = 12

# (address, handle, assign started, assign returned, release started, release returned)
Hold = tuple[str, str, float, float, float, float]


def churn(endpoint: str, root: str, worker: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    """One process: allocate and release at random until ALLOCATIONS_PER_PROCESS were made."""
    try:
        store = EtcdDatastore([endpoint])
        ipam = IPAM(store, KeyLayout(root))
        rng = random.Random(worker)
        held: dict[str, tuple[list[str], float, float]] = {}
        log: list[Hold] = []
        made = exhausted = 0
        barrier.wait(30)

        def release(handle: str) -> None:
            ips, t0, t1 = held.pop(handle)
            t2 = time.monotonic()
            released = ipam.release_handle(handle)
            t3 = time.monotonic()
            assert sorted(released) == sorted(ips), (handle, released, ips)
            log.extend((ip, handle, t0, t1, t2, t3) for ip in ips)

        while made < ALLOCATIONS_PER_PROCESS:
            if held and (len(held) >= MAX_HELD_PER_PROCESS or rng.random() < 0.45):
                release(rng.choice(sorted(held)))
                continue
            handle = handle_id("k8s-pod-network", f"w{worker}-{made}", "eth0")
            node = rng.choice(NODES)
            t0 = time.monotonic()
            try:
                ips = ipam.auto_assign(handle, node, [POOL], {"pod": f"pod-{worker}-{made}"})
            except PoolExhausted:
                exhausted += 1
                continue
            held[handle] = (ips, t0, time.monotonic())
            made += 1
        for handle in sorted(held):
            release(handle)
        results.put((worker, log, dict(ipam.stats), exhausted, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((worker, [], {}, 0, repr(exc)))


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.skip("the etcd binary is not installed (apt-get install etcd-server)")
    with EtcdServer() as server:
        yield server


def run_workers(endpoint: str, root: str) -> list[tuple[int, list[Hold], dict, int, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=churn, args=(endpoint, root, w, barrier, results), daemon=True)
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=150) for _ in procs]
        for p in procs:
            p.join(10)
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def double_holds(log: list[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs of certain-hold intervals [assign returned, release started] of one address that overlap."""
    by_address: dict[str, list[Hold]] = defaultdict(list)
    for hold in log:
        by_address[hold[0]].append(hold)
    clashes = []
    for holds in by_address.values():
        holds.sort(key=lambda h: h[3])
        latest: Hold | None = None
        for hold in holds:
            if latest is not None and hold[3] < latest[4]:
                clashes.append((latest, hold))
            if latest is None or hold[4] > latest[4]:
                latest = hold
    return clashes


@pytest.mark.slow  # many processes racing on one etcd, ~15 s
def test_concurrent_processes_never_share_an_address_and_leak_nothing(etcd: EtcdServer) -> None:
    root = f"/podnet-ipam-test-{uuid.uuid4().hex[:8]}/"
    layout = KeyLayout(root)
    started = time.monotonic()
    out = run_workers(etcd.endpoint, root)
    elapsed = time.monotonic() - started
    errors = [f"worker {w}: {err}" for w, _, _, _, err in out if err]
    assert not errors, errors

    log = [hold for _, worker_log, _, _, _ in out for hold in worker_log]
    stats: dict[str, int] = defaultdict(int)
    for _, _, worker_stats, exhausted, _ in out:
        for k, v in worker_stats.items():
            stats[k] += v
        stats["exhausted"] += exhausted
    print(f"\n{len(log)} allocations by {PROCESSES} processes in {elapsed:.1f}s; stats {dict(stats)}")

    assert len(log) == PROCESSES * ALLOCATIONS_PER_PROCESS
    assert double_holds(log) == []
    # the run really exercised the hard paths
    assert stats["conflicts"] > 0, "no CAS conflict happened: the test did not race"
    assert stats["borrowed"] > 0, "no address was borrowed: blocks never filled up"
    assert stats["blocks_claimed"] == 8

    store = EtcdDatastore([etcd.endpoint])
    try:
        ipam = IPAM(store, layout)
        # zero leaks: everything was released, nothing allocated remains, check is clean
        assert sum(b.allocated_count() for b in ipam.blocks()) == 0
        assert store.list(layout.handles_prefix())[0] == []
        report = ipam.check(set(), set(NODES), pools=[POOL])
        assert report.ok, report.summary()

        # a deliberate leak: allocate, then forget the handle
        [leaked] = ipam.auto_assign("k8s-pod-network.forgotten.eth0", "node-a", [POOL])
        report = ipam.check(set(), set(NODES))
        [issue] = report.issues
        assert issue.kind == ISSUE_LEAKED and issue.address == leaked
        assert issue.handle == "k8s-pod-network.forgotten.eth0" and issue.node == "node-a"
        assert ipam.gc(set(), set(NODES), grace_seconds=0).released_addresses == []
        assert ipam.gc(set(), set(NODES), grace_seconds=0).released_addresses == [leaked]
        assert ipam.check(set(), set(NODES)).ok
    finally:
        for kv in store.list(root)[0]:
            store.delete(kv.key)
        store.close()


def test_double_hold_detector_can_fail() -> None:
    """The detector above must see an overlap when one exists (so a green run means something)."""
    a = ("10.0.0.1", "h1", 0.0, 1.0, 5.0, 6.0)
    b = ("10.0.0.1", "h2", 2.0, 3.0, 7.0, 8.0)  # assigned while h1 still held it
    c = ("10.0.0.1", "h3", 5.5, 6.5, 9.0, 9.5)  # after h1's release started: fine
    assert double_holds([a, b]) == [(a, b)]
    assert double_holds([a, c]) == []


def test_rate_benchmark_runs_against_real_etcd(etcd: EtcdServer, capsys: pytest.CaptureFixture[str]) -> None:
    from podnet.bench.ipam_rate import main

    assert main(["--etcd-endpoints", etcd.endpoint, "-n", "200", "--concurrency", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 200 and result["allocations_per_s"] > 0 and result["assign_p99_ms"] > 0
    store = EtcdDatastore([etcd.endpoint])
    try:
        assert [kv.key for kv in store.list("/podnet-bench-")[0]] == []
    finally:
        store.close()
