"""Scale section ``memory``: the agent's RSS idle, loaded, and per pod in the cluster (issue 18).

    python -m podnet.bench.scale_memory [--quick] [-o json]

Goals: RSS ≤ 45 MiB idle, ≤ 60 MiB with 100 pods and 1,000 NetworkPolicies (felix ≈ 88 MiB;
cilium-agent 438 MiB average in Cilium's 1,000-node report); growth ≤ 3 KiB per pod in the
cluster, measured up to 50,000 pods (Cilium: 10.5 KiB).

**Idle and loaded**: :mod:`podnet.bench.footprint`'s memory phases, a 3-node lab: VmRSS of every
agent after start, then with its workload (pods Running, policies programmed on every node).

**Per pod**: a 1-node lab (Calico profile) with two real pods, selected by :data:`GUARD_POLICIES`
NetworkPolicies whose peers pick the other pods by label and by namespace. Then pods that exist
only in the datastore are written in steps (:data:`FULL_SIZES`): Running, with a 100.64/10
address and :mod:`podnet.bench.churn`'s annotation, scheduled to nodes that do not exist
(``vnode-NNNN``, 100 each), so no kubelet touches them and they are what a node's agent sees of
the rest of a big cluster: cache entries, selector matches, addresses in its peer sets. After
each step the :class:`~podnet.bench.churn.Fence` (every agent's policy status at the fence
revision) and a settle, VmRSS is read; the figure is the least-squares slope of RSS over the
steps after the first (one-time costs of the first pod — code paths, schemas — stay out of it).

**Where it goes**: the agent is then restarted with ``--tracemalloc`` (it re-reads every pod), and
at :data:`FULL_TRACED` sizes (deleting on the way down) tracemalloc's total and its top
allocation sites are taken (:mod:`podnet.agent.memtrace`): the samples. Traced totals are
Python's heap only; RSS also holds the interpreter, shared libraries and the C and Rust heaps.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from podnet.bench.scale import Row
from podnet.errors import PodnetError

GOAL_IDLE_MIB = 45.0
GOAL_LOADED_MIB = 60.0
GOAL_PER_POD_KIB = 3.0
FULL_SIZES = (0, 10_000, 20_000, 30_000, 40_000, 50_000)
QUICK_SIZES = (0, 1_250, 2_500, 3_750, 5_000)
FULL_TRACED = (50_000, 5_000, 0)  # tracemalloc snapshots, taken on the way down
QUICK_TRACED = (5_000, 0)
NAMESPACES = 10
REPLICAS = 10  # pods that share their labels (one Deployment's)
PODS_PER_NODE = 100
GUARD_POLICIES = 20
GUARD_NS = "mem-guard"
BENCH_PREFIX = "pnmm-"
NODE = "node-1"
SETTLE_S = 2.0
TIMEOUT_S = 600.0


# --------------------------------------------------------------------------------- pure helpers


def fit_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Slope of the least-squares line through ``(xs[i], ys[i])``; None without two distinct xs."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    n = len(xs)
    if n < 2:
        return None
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    den = sum((x - mean_x) ** 2 for x in xs)
    if den == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / den


def per_pod_kib(points: Sequence[tuple[int, float]], skip_first: bool = True) -> float | None:
    """KiB per pod from ``(pods, MiB)`` points: the least-squares slope, over the points after the
    smallest size when ``skip_first`` (its one-time costs are not per pod)."""
    after = sorted(points)[1:] if skip_first else sorted(points)
    slope = fit_slope([p for p, _ in after], [m for _, m in after])
    return None if slope is None else round(slope * 1024, 3)


def virtual_pod(index: int) -> dict:
    """Datastore-only pod ``index``: Running at a 100.64/10 address on node ``vnode-NNNN``."""
    from podnet.bench.churn import VIRTUAL_ANNOTATION, VIRTUAL_VALUE, virtual_ip
    from podnet.bench.policy_scale import CONTAINER_PORTS, TEAMS

    group = index // REPLICAS
    ip = virtual_ip(0, index, 0)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"v{index:05d}",
            "namespace": f"mem-{group % NAMESPACES:02d}",
            "labels": {
                "app": f"a{group}",
                "team": TEAMS[group % len(TEAMS)],
                "pod-template-hash": f"h{group}",
            },
            "annotations": {VIRTUAL_ANNOTATION: VIRTUAL_VALUE},
        },
        "spec": {
            "nodeName": f"vnode-{index // PODS_PER_NODE:04d}",
            "containers": [{"name": "c", "ports": CONTAINER_PORTS}],
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def guard_docs(pods: int = 2, policies: int = GUARD_POLICIES) -> list[dict]:
    """The namespaces (labelled by team), ``pods`` real pods on :data:`NODE` and ``policies``
    NetworkPolicies selecting them; policy ``i`` admits app group ``i`` from any namespace, and
    every third one a whole team's namespaces, so the virtual pods fill the peer sets."""
    from podnet.bench.policy_scale import CONTAINER_PORTS, TEAMS

    docs: list[dict] = []
    for ns in [GUARD_NS] + [f"mem-{i:02d}" for i in range(NAMESPACES)]:
        labels = {"team": TEAMS[int(ns[-2:]) % len(TEAMS)]} if ns != GUARD_NS else {}
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
    for i in range(pods):
        meta = {"name": f"guard-{i}", "namespace": GUARD_NS, "labels": {"app": "guard"}}
        spec = {"nodeName": NODE, "containers": [{"name": "c", "ports": CONTAINER_PORTS}]}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    for i in range(policies):
        peer: dict[str, Any] = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": f"a{i}"}}}
        if i % 3 == 0:
            peer = {"namespaceSelector": {"matchLabels": {"team": TEAMS[i % len(TEAMS)]}}}
        spec = {
            "podSelector": {"matchLabels": {"app": "guard"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [peer], "ports": [{"port": "http"}]}],
        }
        meta = {"name": f"guard-{i:03d}", "namespace": GUARD_NS}
        docs.append(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}
        )
    return docs


# ------------------------------------------------------------------------------------- the lab


def write_pods(store, start: int, stop: int, delete: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Write (or delete) virtual pods ``start..stop-1``, in transactions of MAX_TXN_OPS keys;
    each written one is validated as the API would first."""
    from podnet.datastore.base import Write
    from podnet.datastore.resources import MAX_TXN_OPS, ResourceStore
    from podnet.model import parse_resource

    writes = []
    for index in range(start, stop):
        doc = virtual_pod(index)
        key = store.layout.resource("pods", doc["metadata"]["name"], doc["metadata"]["namespace"])
        if delete:
            writes.append(Write(key, None))
        else:
            parse_resource(doc)
            writes.append(Write(key, ResourceStore._encode(doc)))
    for at in range(0, len(writes), MAX_TXN_OPS):
        store.store.commit(writes[at : at + MAX_TXN_OPS])


def _wait_guards_running(store, timeout: float) -> None:  # type: ignore[no-untyped-def]
    from podnet.model import lookup

    started = time.monotonic()
    while True:
        pods = store.list(lookup("pods"), GUARD_NS)
        if pods and all(p.status and p.status.phase == "Running" and p.status.pod_ip for p in pods):
            return
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the guard pods were not Running after {timeout:g}s")
        time.sleep(0.3)


def _traced(names, path: str, pid: int, timeout: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    """Ask the traced agent ``pid`` for a snapshot (SIGUSR2) and read it."""
    if os.path.exists(path):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR2)
    started = time.monotonic()
    while not os.path.exists(path):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the agent wrote no tracemalloc snapshot to {path} in {timeout:g}s")
        time.sleep(0.2)
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def _traced_series(
    names, store, fence, sizes: Sequence[int], written: int, out: dict, timeout: float
) -> None:  # type: ignore[no-untyped-def]
    """The agent restarted with tracing (it re-reads every pod: slower), then a snapshot at each
    of ``sizes``, deleting pods on the way down."""
    from podnet.lab import cluster

    path = os.path.join(names.state_dir, "tracemalloc.json")
    cluster.restart_agent(names, NODE, signal.SIGTERM, ("--tracemalloc", path), timeout=timeout)
    for size in sorted(sizes, reverse=True):
        write_pods(store, size, written, delete=True)
        written = min(written, size)
        fence(timeout)
        time.sleep(SETTLE_S)
        out[str(size)] = _traced(names, path, cluster.agent_pids(names)[NODE])


def pod_series(
    sizes: Sequence[int], traced: Sequence[int], step: Callable[[str], None], timeout: float = TIMEOUT_S
) -> dict:
    """The per-pod run (see the module docstring): RSS at each size, then the traced snapshots."""
    from podnet.bench.churn import Fence
    from podnet.bench.policy_scale import proc_memory
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.naming import LabNames
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    out: dict[str, Any] = {"sizes": list(sizes), "rss_mib": {}, "seconds": {}, "traced": {}}
    try:
        step(f"memory: 1-node lab {names.prefix}")
        info = cluster.up(LabSpec(nodes=1, profile="calico", underlay=random_underlay()), names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        fence = Fence(store, [NODE])
        store.apply([parse_resource(d) for d in guard_docs()])
        _wait_guards_running(store, timeout)
        written = 0
        for size in sorted(sizes):
            step(f"memory: {size:,} datastore-only pods")
            started = time.monotonic()
            write_pods(store, written, size)
            written = size
            fence(timeout)
            out["seconds"][str(size)] = round(time.monotonic() - started, 1)
            time.sleep(SETTLE_S)
            out["rss_mib"][str(size)] = proc_memory(cluster.agent_pids(names)[NODE])["rss_mib"]
        if traced:
            step(f"memory: agent restarted with --tracemalloc, {written:,} pods")
            try:
                _traced_series(names, store, fence, traced, written, out["traced"], timeout)
            except (TimeoutError, OSError, PodnetError) as exc:  # the RSS series stands without it
                out["traced_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        step("memory: lab down")
        cluster.remove(names)
    return out


def loaded(quick: bool, step: Callable[[str], None]) -> dict:
    """Idle and loaded agent memory of a 3-node Calico lab, by :mod:`podnet.bench.footprint`."""
    from podnet.bench import footprint

    sizes = footprint.QUICK if quick else footprint.FULL
    return footprint._one_lab("calico-ipip", sizes, memory=True, control_plane=False, step=step)


# ----------------------------------------------------------------------------------- the section


def rows(fp: dict, series: dict, quick: bool) -> list[Row]:
    idle = [m["agent"]["rss_mib"] for m in fp["memory"]["idle"].values()]
    busy = [m["agent"]["rss_mib"] for m in fp["memory"]["loaded"].values()]
    w = fp["workload"]
    points = [(int(k), v) for k, v in series["rss_mib"].items()]
    top = max(p for p, _ in points)
    out = [
        Row("agent RSS idle, largest node", max(idle), "MiB", GOAL_IDLE_MIB, note=f"nodes {idle}"),
        Row(
            f"agent RSS loaded ({w['pods']} pods, {w['policies']} policies), largest node",
            max(busy),
            "MiB",
            None if quick else GOAL_LOADED_MIB,
            note=f"nodes {busy}"
            + ("; quick size, the goal is for 100 pods + 1,000 policies" if quick else ""),
        ),
        Row(
            f"agent RSS growth per pod in the cluster (up to {top:,})",
            per_pod_kib(points),
            "KiB",
            GOAL_PER_POD_KIB,
            note="RSS MiB at " + ", ".join(f"{p:,}: {m}" for p, m in sorted(points)),
        ),
    ]
    traced = [(int(k), v["traced_mib"]) for k, v in series["traced"].items()]
    if len(traced) >= 2:
        out.append(
            Row(
                "Python heap (tracemalloc) per pod",
                per_pod_kib(traced, skip_first=False),
                "KiB",
                note="traced MiB at " + ", ".join(f"{p:,}: {m}" for p, m in sorted(traced)),
            )
        )
    return out


def run(quick: bool = False, step: Callable[[str], None] = lambda text: None) -> dict:
    fp = loaded(quick, step)
    series = pod_series(QUICK_SIZES if quick else FULL_SIZES, QUICK_TRACED if quick else FULL_TRACED, step)
    return {"rows": rows(fp, series, quick), "samples": {"footprint": fp, "per_pod": series}}


def main(argv: list[str] | None = None) -> int:
    from podnet.bench.scale import render

    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.scale_memory", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"per pod up to {QUICK_SIZES[-1]:,} pods; smaller load"
    )
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    out = run(args.quick, step=lambda text: print(text, file=sys.stderr, flush=True))
    doc = {
        "order": ["memory"],
        "memory": {"rows": [r.to_dict() for r in out["rows"]], "samples": out["samples"]},
    }
    print(json.dumps(doc, indent=1) if args.output == "json" else render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
