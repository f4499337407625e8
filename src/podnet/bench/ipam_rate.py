"""How fast IPAM allocates and releases: ``python -m podnet.bench.ipam_rate [-n N] [--concurrency C]``.

``measure_allocation_rate`` runs ``n`` ``auto_assign`` calls from ``concurrency`` threads (each thread
is one node by default, as with one CNI plugin per node; ``nodes`` < ``concurrency`` makes threads
share nodes and so race for the same blocks), then releases every handle the same way, and reports
throughput and per-call latency percentiles for both phases plus the CAS conflicts seen. It works
in a private key prefix (``/podnet-bench-<random>/``) of the given datastore and deletes it after.

Threads, not processes: the calls spend most of their time waiting for etcd, and one process keeps
the measurement simple; with a datastore that needs CPU per call the GIL caps the rate, which then
shows as flat throughput when ``--concurrency`` grows.

Without ``--etcd-endpoints`` a private etcd is started (Debian's etcd, data in a temp dir) and
stopped again. The result is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from podnet.datastore.base import Datastore
from podnet.datastore.keys import KeyLayout
from podnet.ipam import IPAM, PoolSpec, handle_id
from podnet.ipam.records import DEFAULT_MAX_BLOCKS_PER_HOST
from podnet.stats import percentile

BENCH_POOL = PoolSpec("bench", "10.128.0.0/14")  # 256k addresses in /26 blocks


def _run_phase(jobs: list[list[Any]], call: Callable[[Any], object]) -> tuple[float, list[float]]:
    """Run each thread's job list; returns (wall seconds, per-call latencies in ms)."""
    latencies: list[list[float]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    start_gate = threading.Barrier(len(jobs) + 1)

    def worker(i: int) -> None:
        start_gate.wait()
        try:
            for item in jobs[i]:
                t0 = time.perf_counter()
                call(item)
                latencies[i].append((time.perf_counter() - t0) * 1000)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, sorted(x for per in latencies for x in per)


def measure_allocation_rate(
    datastore: Datastore,
    n: int = 2000,
    concurrency: int = 4,
    *,
    nodes: int | None = None,
    pool: PoolSpec = BENCH_POOL,
) -> dict[str, Any]:
    """Allocations/s and p50/p99 latency (ms) of ``auto_assign`` and ``release_handle``."""
    if n < 1 or concurrency < 1:
        raise ValueError("n and concurrency must be >= 1")
    node_count = nodes or concurrency
    per_node_cap = DEFAULT_MAX_BLOCKS_PER_HOST * (1 << (32 - (pool.block_size or 26)))
    if math.ceil(n / node_count) > per_node_cap:
        raise ValueError(
            f"{math.ceil(n / node_count)} addresses per node exceed what a node may hold "
            f"({DEFAULT_MAX_BLOCKS_PER_HOST} blocks of /{pool.block_size}, maxBlocksPerHost's default); "
            "use more nodes or a smaller n"
        )
    layout = KeyLayout(f"/podnet-bench-{uuid.uuid4().hex[:10]}/")
    ipams = [IPAM(datastore, layout) for _ in range(concurrency)]
    jobs: list[list[Any]] = [[] for _ in range(concurrency)]
    for i in range(n):
        jobs[i % concurrency].append((i, f"bench-node-{(i % concurrency) % node_count}"))
    try:

        def assign(job: tuple[int, str]) -> None:
            i, node = job
            ipams[i % concurrency].auto_assign(
                handle_id("bench", f"c{i}", "eth0"), node, [pool], {"pod": f"p{i}", "namespace": "bench"}
            )

        def release(job: tuple[int, str]) -> None:
            i, _ = job
            if not ipams[i % concurrency].release_handle(handle_id("bench", f"c{i}", "eth0")):
                raise AssertionError(f"handle {i} released nothing")

        assign_wall, assign_lat = _run_phase(jobs, assign)
        conflicts_assign = sum(ip.stats["conflicts"] for ip in ipams)
        release_wall, release_lat = _run_phase(jobs, release)
        conflicts_total = sum(ip.stats["conflicts"] for ip in ipams)
        blocks = len(ipams[0].blocks())
    finally:
        for kv in datastore.list(layout.root)[0]:
            datastore.delete(kv.key)
    return {
        "n": n,
        "concurrency": concurrency,
        "nodes": node_count,
        "blocks_claimed": blocks,
        "allocations_per_s": round(n / assign_wall, 1),
        "assign_p50_ms": round(percentile(assign_lat, 0.50), 2),
        "assign_p99_ms": round(percentile(assign_lat, 0.99), 2),
        "releases_per_s": round(n / release_wall, 1),
        "release_p50_ms": round(percentile(release_lat, 0.50), 2),
        "release_p99_ms": round(percentile(release_lat, 0.99), 2),
        "assign_conflicts": conflicts_assign,
        "release_conflicts": conflicts_total - conflicts_assign,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m podnet.bench.ipam_rate", description="Measure IPAM allocation and release rates."
    )
    parser.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (default: start a private etcd)")
    parser.add_argument(
        "-n", type=int, default=2000, help="allocations to make (default 2000; at most 1280 per node)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="parallel callers (default 4)")
    parser.add_argument("--nodes", type=int, default=None, help="distinct node names (default: concurrency)")
    args = parser.parse_args(argv)

    from podnet.datastore.etcd import EtcdDatastore

    if args.etcd_endpoints:
        store = EtcdDatastore(args.etcd_endpoints)
        try:
            result = measure_allocation_rate(store, args.n, args.concurrency, nodes=args.nodes)
        finally:
            store.close()
        result["etcd"] = args.etcd_endpoints
    else:
        from podnet.datastore.etcd_server import EtcdServer

        with EtcdServer() as server:
            store = EtcdDatastore([server.endpoint])
            try:
                result = measure_allocation_rate(store, args.n, args.concurrency, nodes=args.nodes)
            finally:
                store.close()
        result["etcd"] = "private etcd started by the benchmark"
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
