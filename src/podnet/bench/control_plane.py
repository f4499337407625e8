"""Control-plane figures on a private lab: CNI ADD/DEL latency and pods-to-Running time.

    python -m podnet.bench.control_plane [--sandboxes 50] [--concurrency 10] [--pods 30] [-o json]

- CNI latency: ``--sandboxes`` pod network namespaces on one node, ADD through the node's real
  conflist (podnet → portmap → bandwidth, each plugin run inside the node's netns, as a runtime
  does) from ``--concurrency`` threads, then DEL the same way; once more at concurrency 1. Reported:
  p50/p90/p99 of the whole chain and of the podnet plugin alone (per-plugin timings of the runtime).
- Pods to Running: ``--pods`` Pod objects applied in one transaction, spread over the nodes by the
  lab scheduler; the time until every one is Running (kubelet: netns, cgroup, CNI, pod server).

The lab gets its own prefix and underlay, so it never meets a user's lab, and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from podnet.bench.stats import latency_summary
from podnet.dataplane.netns import netns_path
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.errors import NotFoundError
from podnet.lab import cluster
from podnet.lab.cni_runtime import CNIRuntime
from podnet.lab.naming import LabNames
from podnet.lab.netns import create_netns, delete_netns
from podnet.lab.state import LabState, cpu_seconds
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

BENCH_PREFIX = "pnbench-"


def _runtime(names: LabNames, info: cluster.LabInfo, node: str) -> CNIRuntime:
    return CNIRuntime(
        names.cni_conf_dir(node),
        [cluster.cni_bin_dir(names)],
        os.path.join(names.node_dir(node), "cni", "bench-cache"),
        netns_exec=info.topology.node(node).netns,
    )


ELSEWHERE = "bench-elsewhere"  # the nodeName of the bench's Pod objects: no lab node, so no kubelet runs them


def _write_pods(store: ResourceStore, node: str, names: list[str]) -> dict[str, str]:
    """The Pod objects a kubelet's ADD is for (the agent reads their labels and annotations from its
    watch cache), fenced until the node's agent has them; returns name -> uid."""
    from podnet.bench.churn import Fence

    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}] + [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench", "labels": {"app": "bench"}},
            "spec": {"nodeName": ELSEWHERE, "containers": [{"name": "c"}]},
        }
        for name in names
    ]
    results = store.apply([parse_resource(d) for d in docs])
    Fence(store, [node])(timeout=60.0)
    return {r.resource.metadata.name: r.resource.metadata.uid or "" for r in results[1:]}


def cni_latency(names: LabNames, info: cluster.LabInfo, sandboxes: int, concurrency: int) -> dict:
    """``sandboxes`` ADDs then DELs through node-1's real chain, ``concurrency`` at once, for Pod
    objects that exist (as a kubelet's are). Latencies per call, and the CPU each call cost per
    process: the agent, etcd, the plugins (with the runtime's ``ip netns exec``) and the runtime."""
    node = info.topology.nodes[0].name
    runtime = _runtime(names, info, node)
    store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
    pods = [f"s{i}-{concurrency}" for i in range(sandboxes)]
    uids = _write_pods(store, node, pods)
    boxes = [(uuid.uuid4().hex, names.pod_ns("bench", pod)) for pod in pods]
    state = LabState(names.state_dir)
    procs = {p.name: p.pid for p in state.processes()}
    watched = {"agent": procs[f"agent-{node}"], "etcd": procs["etcd"]}
    state.record_netns_many([(ns, "pod") for _, ns in boxes])
    for _, ns in boxes:
        create_netns(ns)

    def args(i: int) -> dict:
        return {"K8S_POD_NAMESPACE": "bench", "K8S_POD_NAME": pods[i], "K8S_POD_UID": uids[pods[i]]}

    def timed(fn, *a):
        started = time.perf_counter()
        out = fn(*a)
        return time.perf_counter() - started, out

    def cpu() -> dict[str, float]:
        children = os.times()
        return {name: cpu_seconds(pid) for name, pid in watched.items()} | {
            "plugins": children.children_user + children.children_system,
            "runtime": time.process_time(),
        }

    def per_call(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round((after[k] - before[k]) * 1e3 / sandboxes, 2) for k in before}

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            before = cpu()
            adds = list(
                pool.map(
                    lambda i: timed(runtime.add, boxes[i][0], netns_path(boxes[i][1]), "eth0", args(i)),
                    range(sandboxes),
                )
            )
            middle = cpu()
            dels = list(
                pool.map(
                    lambda i: timed(runtime.delete, boxes[i][0], netns_path(boxes[i][1]), "eth0", args(i)),
                    range(sandboxes),
                )
            )
            after = cpu()
    finally:
        for _, ns in boxes:
            delete_netns(ns)
        for _, ns in boxes:
            state.forget_netns(ns)
        for pod in pods:
            with contextlib.suppress(NotFoundError):
                store.delete(lookup("pods"), pod, "bench")
    podnet_add = [next(c.seconds for c in result.calls if c.plugin == "podnet") for _, result in adds]
    podnet_del = [next(c.seconds for c in calls if c.plugin == "podnet") for _, calls in dels]
    return {
        "concurrency": concurrency,
        "add_chain": latency_summary([s for s, _ in adds]),
        "add_podnet": latency_summary(podnet_add),
        "del_chain": latency_summary([s for s, _ in dels]),
        "del_podnet": latency_summary(podnet_del),
        "add_cpu_ms": per_call(before, middle),
        "del_cpu_ms": per_call(middle, after),
        "add_chain_s": [round(s, 5) for s, _ in adds],
        "chain": [p["type"] for p in runtime.conflist["plugins"]],
    }


def pods_to_running(info: cluster.LabInfo, pods: int, timeout: float = 120.0) -> dict:
    store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}] + [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"web-{i}", "namespace": "bench"},
            "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
        }
        for i in range(pods)
    ]
    resources = [parse_resource(d) for d in docs]
    started = time.perf_counter()
    store.apply(resources)
    while True:
        running = [p for p in store.list(lookup("pods"), "bench") if p.status and p.status.phase == "Running"]
        if len(running) == pods:
            return {
                "pods": pods,
                "seconds": round(time.perf_counter() - started, 3),
                "nodes": sorted({p.spec.node_name for p in running}),
            }
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"only {len(running)}/{pods} pods Running after {timeout:g}s")
        time.sleep(0.02)


def run(sandboxes: int = 50, concurrency: int = 10, pods: int = 30, nodes: int = 3) -> dict:
    names = LabNames(BENCH_PREFIX)
    spec = LabSpec(nodes=nodes, underlay=random_underlay())
    info = cluster.up(spec, names)
    try:
        results = {
            "lab_up_seconds": round(info.seconds, 3),
            "cni": [cni_latency(names, info, sandboxes, concurrency), cni_latency(names, info, sandboxes, 1)],
            "pods_to_running": pods_to_running(info, pods),
        }
    finally:
        cluster.teardown(names)
    return results


def render(results: dict) -> str:
    lines = [
        f"lab up: {results['lab_up_seconds']} s",
        "",
        f"{'CNI (n per row)':32} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for row in results["cni"]:
        for key, label in (
            ("add_chain", "ADD, whole chain"),
            ("add_podnet", "ADD, podnet plugin"),
            ("del_chain", "DEL, whole chain"),
            ("del_podnet", "DEL, podnet plugin"),
        ):
            s = row[key]
            name = f"{label} @{row['concurrency']} ({s['n']})"
            lines.append(
                f"{name:32} {s['p50_ms']:8.1f} {s['p90_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}"
            )
    p = results["pods_to_running"]
    lines += ["", f"{p['pods']} pods applied → all Running: {p['seconds']} s (nodes {', '.join(p['nodes'])})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.control_plane", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--sandboxes", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    results = run(args.sandboxes, args.concurrency, args.pods, args.nodes)
    print(json.dumps(results, indent=2) if args.output == "json" else render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
