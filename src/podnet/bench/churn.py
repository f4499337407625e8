"""Agent memory under churn: pods and NetworkPolicies created and deleted, cycle after cycle.

    python -m podnet.bench.churn [--cycles 20] [--pods 1000] [--policies 500] [--real-pods 30]
                                 [--quick] [--json FILE]

Issue 9's bar: over 20 cycles of creating and deleting 1,000 pods and 500 policies, the agents' RSS
grows less than 1 % per cycle after the first. One private 3-node lab (fresh prefix and underlay,
removed at the end whatever happens)::

    lab up ─▶ namespaces ─▶ idle RSS ─▶ cycle x N:
        apply pods + policies ─▶ real pods Running ─▶ fence ─▶ peak check (nft, RSS)
        ─▶ delete all ─▶ real pods gone (CNI DEL, endpoint records) ─▶ fence ─▶ trough check
        ─▶ settle ─▶ RSS sample

**Workload.** Each cycle is :func:`podnet.bench.policy_scale.generate_workload` (seed + cycle, so
the rules differ from cycle to cycle) with every pod and policy renamed ``cNN-…``: a cache that
keeps deleted objects cannot hide behind a name that comes back. Pods keep their labels, so the
selectors pick the same kind of subsets. Namespaces are created once.

**Real and datastore-only pods (measured, then chosen).** One cycle of 100 real pods through the
lab kubelet (netns, CNI ADD, a podserver process per pod; ``--pods 100 --real-pods 100``) took
13.0 s up and 12.4 s down on this 2-core machine (shared): 20 x 1,000 real pods would be about
85 min of pod churn alone, with 1,000 podserver interpreters at each peak. So each
cycle has ``--real-pods`` real pods (kernel endpoint path: veth, IPAM, endpoint record, per-pod
chains, CNI DEL) and the rest are *datastore-only*: Pod objects written already scheduled
(``nodeName`` one of the lab nodes) and ``Running`` with an address from 100.64.0.0/10 (unique
per cycle), annotated ``bench.podnet.io/churn: datastore-only``. The lab kubelet is replaced for
the run by the same :class:`~podnet.lab.kubelet.Kubelet` in this process, told to leave annotated
pods alone. To an agent they are pods without an endpoint record (as a pod not wired yet): its
cache, the selector matching, the policy compile (they are local pods of their node) and the peer
address sets in nftables all carry them; only the per-interface chains need a real pod.

**Bounded, measured conditions.** *Fence*: a write to a ``churn-fence`` Namespace (every agent
re-syncs policy on a namespace change) at revision R; a node has taken in everything before it
when ``<root>status/policy/<node>`` shows ``applied_revision >= R`` without error. At the peak each
node's ``inet podnet_policy`` is read back: rules, policy rules, sets, elements and the number of
datastore-only addresses in its sets (must be > 0: the datastore-only pods reach the kernel). At
the trough it must hold no policy rule and no such address, and the endpoint records are back to
their idle count.

**Memory**: ``VmRSS`` of each agent (:func:`podnet.bench.policy_scale.proc_memory`), idle before
cycle 1, at each peak, and after each trough + ``--settle`` seconds (the sample the growth is
computed from). Growth after the first cycle: the least-squares slope over cycles 2..N as % of the
cycle-2 RSS, and the largest cycle-to-cycle increase (MiB and % of cycle 2).
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from podnet.bench.policy_scale import (
    CONTROL_NS,
    Workload,
    _wait_running,
    emit,
    generate_workload,
    kernel_rules,
    nft,
    overlay,
    proc_memory,
)
from podnet.lab.kubelet import Kubelet
from podnet.lab.naming import LabNames
from podnet.model import Pod

VIRTUAL_NET = ipaddress.IPv4Network("100.64.0.0/10")  # never a pod pool, an ipBlock or an underlay
VIRTUAL_ANNOTATION = "bench.podnet.io/churn"
VIRTUAL_VALUE = "datastore-only"
FENCE_NS = "churn-fence"
BENCH_PREFIX = "pnch-"
BOUND_PCT_PER_CYCLE = 1.0  # the bar


@dataclass
class Options:
    cycles: int = 20
    pods: int = 1000
    policies: int = 500
    real_pods: int = 30
    rules_per_policy: int = 4
    nodes: int = 3
    seed: int = 1
    settle: float = 2.0
    timeout: float = 600.0  # per wait


QUICK = {"cycles": 4, "pods": 150, "policies": 60, "real_pods": 15}


# ------------------------------------------------------------------------------ the workload (pure)


def virtual_ip(cycle: int, index: int, per_cycle: int) -> str:
    """The address of datastore-only pod ``index`` of ``cycle``: unique over the whole run."""
    offset = 1 + cycle * per_cycle + index
    if offset >= VIRTUAL_NET.num_addresses - 1:
        raise ValueError("too many datastore-only pods for 100.64.0.0/10")
    return str(VIRTUAL_NET.network_address + offset)


def is_virtual(pod: Pod) -> bool:
    return (pod.metadata.annotations or {}).get(VIRTUAL_ANNOTATION) == VIRTUAL_VALUE


@dataclass
class CycleWorkload:
    workload: Workload  # pods (this cycle's, no control pair) and policies, renamed
    real: list[str]  # "ns/name" of the pods the kubelet wires

    @property
    def virtual_count(self) -> int:
        return len(self.workload.pods) - len(self.real)


def cycle_workload(cycle: int, opts: Options, host_ips: dict[str, str] | None = None) -> CycleWorkload:
    """Cycle ``cycle``'s pods and policies: policy_scale's generator (seed + cycle), renamed
    ``cNN-…``; the first ``real_pods`` pods (spread over the nodes) are real, the others are
    written Running with a 100.64/10 address and the datastore-only annotation."""
    if not 0 <= opts.real_pods <= opts.pods:
        raise ValueError("need 0 <= real-pods <= pods")
    base = generate_workload(
        opts.pods, opts.policies, opts.rules_per_policy, nodes=opts.nodes, seed=opts.seed + cycle
    )
    prefix = f"c{cycle:02d}-"
    pods, real = [], []
    for i, doc in enumerate(p for p in base.pods if p["metadata"]["namespace"] != CONTROL_NS):
        doc["metadata"]["name"] = prefix + doc["metadata"]["name"]
        key = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        if i < opts.real_pods:
            real.append(key)
        else:
            ip = virtual_ip(cycle, i, opts.pods)
            doc["metadata"]["annotations"] = {VIRTUAL_ANNOTATION: VIRTUAL_VALUE}
            doc["status"] = {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
            if host_ips and doc["spec"]["nodeName"] in host_ips:
                doc["status"]["hostIP"] = host_ips[doc["spec"]["nodeName"]]
        pods.append(doc)
    for doc in base.policies:
        doc["metadata"]["name"] = prefix + doc["metadata"]["name"]
    return CycleWorkload(replace(base, pods=pods), real)


# ----------------------------------------------------------------------------- statistics (pure)


def least_squares_slope(values: Sequence[float]) -> float:
    """Slope of the least-squares line through ``(i, values[i])``; 0 for fewer than 2 points."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def growth(rss: Sequence[float]) -> dict[str, float | None]:
    """Growth per cycle after the first, from one node's per-cycle RSS (MiB, cycle 1 first):
    least-squares slope over cycles 2..N (MiB and % of cycle 2) and the largest cycle-to-cycle
    increase from cycle 2 on (MiB and %; negative when RSS only fell). None without 2 such cycles."""
    after = list(rss[1:])
    if len(after) < 2:
        return {
            "slope_mib_per_cycle": None,
            "slope_pct_per_cycle": None,
            "max_delta_mib": None,
            "max_delta_pct": None,
        }
    slope = least_squares_slope(after)
    delta = max(b - a for a, b in itertools.pairwise(after))
    ref = after[0]
    return {
        "slope_mib_per_cycle": round(slope, 3),
        "slope_pct_per_cycle": round(100 * slope / ref, 3),
        "max_delta_mib": round(delta, 2),
        "max_delta_pct": round(100 * delta / ref, 3),
    }


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Per node growth, and the worst node's slope % (the figure held against the 1 % bar)."""
    per_node = {node: growth(values) for node, values in sorted(samples.items())}
    slopes = [g["slope_pct_per_cycle"] for g in per_node.values() if g["slope_pct_per_cycle"] is not None]
    deltas = [g["max_delta_pct"] for g in per_node.values() if g["max_delta_pct"] is not None]
    return {
        "per_node": per_node,
        "worst_slope_pct_per_cycle": max(slopes) if slopes else None,
        "worst_max_delta_pct": max(deltas) if deltas else None,
        "bound_pct_per_cycle": BOUND_PCT_PER_CYCLE,
    }


def count_addresses_in(doc: dict, net: ipaddress.IPv4Network = VIRTUAL_NET) -> int:
    """Addresses of ``net`` held by the sets of an ``nft -j list table`` document (elements may be
    addresses, prefixes or ranges; summed over sets)."""
    total = 0
    for item in doc.get("nftables", []):
        for elem in (item.get("set") or {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:  # {"elem": {"val": ..., ...}}
                elem = elem["elem"].get("val")
            if isinstance(elem, str):
                first = last = ipaddress.IPv4Address(elem)
            elif isinstance(elem, dict) and "prefix" in elem:
                block = ipaddress.IPv4Network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                first, last = block.network_address, block.broadcast_address
            elif isinstance(elem, dict) and "range" in elem:
                first, last = (ipaddress.IPv4Address(a) for a in elem["range"])
            else:
                continue
            low = max(int(first), int(net.network_address))
            high = min(int(last), int(net.broadcast_address))
            total += max(0, high - low + 1)
    return total


# ------------------------------------------------------------------------------------- the lab


class RealPodKubelet(Kubelet):
    """The lab kubelet, run in this process, that leaves datastore-only pods alone."""

    def _submit(self, key: str, fn, arg) -> None:  # type: ignore[no-untyped-def]
        if isinstance(arg, Pod) and is_virtual(arg):
            return
        super()._submit(key, fn, arg)


def _kernel(netns: str) -> dict[str, Any]:
    from podnet.dataplane.policy import QUALIFIED

    counts = kernel_rules(netns)
    proc = nft(netns, "-j", "list", "table", *QUALIFIED.split())
    counts["virtual_addresses"] = count_addresses_in(json.loads(proc.stdout or "{}"))
    return counts


def _rss(names: LabNames) -> dict[str, float]:
    from podnet.lab.cluster import agent_pids

    return {node: proc_memory(pid)["rss_mib"] for node, pid in sorted(agent_pids(names).items())}


class Fence:
    """Write the fence Namespace, then wait until every node's policy status has applied it."""

    def __init__(self, store, nodes: Sequence[str]) -> None:  # type: ignore[no-untyped-def]
        self.store, self.nodes, self.count = store, list(nodes), 0

    def __call__(self, timeout: float) -> float:
        from podnet.bench.node_watch import applied_times
        from podnet.model import parse_resource

        self.count += 1
        meta = {"name": FENCE_NS, "annotations": {"bench.podnet.io/fence": str(self.count)}}
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
        started = time.perf_counter()
        [result] = self.store.apply([parse_resource(doc)])
        fence = int(result.resource.metadata.resource_version or 0)
        applied_times(self.store.store, self.store.layout, self.nodes, fence, started, timeout)
        return time.perf_counter() - started


def _delete_all(store, cw: CycleWorkload) -> None:  # type: ignore[no-untyped-def]
    """Delete the cycle's policies and pods, in transactions of 128 keys."""
    from podnet.datastore.base import Write
    from podnet.datastore.resources import MAX_TXN_OPS
    from podnet.model import parse_resource

    keys = [store.key_of(parse_resource(d)) for d in cw.workload.policies + cw.workload.pods]
    for start in range(0, len(keys), MAX_TXN_OPS):
        store.store.commit([Write(k, None) for k in keys[start : start + MAX_TXN_OPS]])


def endpoint_records(store) -> int:  # type: ignore[no-untyped-def]
    return len(store.store.list(store.layout.endpoints_prefix())[0])


def _wait_gone(store, kubelet: Kubelet, records_idle: int, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Until the kubelet runs no pod and the endpoint records are back to idle (CNI DEL done)."""
    started = time.perf_counter()
    while True:
        with kubelet.lock:
            running = len(kubelet.running) + len(kubelet.busy)
        records = endpoint_records(store) - records_idle
        if running == 0 and records <= 0:
            return
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{running} pods still running, {records} endpoint records after {timeout:g}s")
        time.sleep(0.2)


def _replace_kubelet(names: LabNames, store) -> RealPodKubelet:  # type: ignore[no-untyped-def]
    import threading

    from podnet.lab.netns import stop_processes
    from podnet.lab.state import LabState

    state = LabState(names.state_dir)
    procs = [(p.pid, p.start_time) for p in state.processes() if p.name == "kubelet"]
    stop_processes(procs)
    kubelet = RealPodKubelet(names, store)
    threading.Thread(target=kubelet.watch, name="churn-kubelet-watch", daemon=True).start()
    threading.Thread(target=kubelet.reconcile_forever, name="churn-kubelet", daemon=True).start()
    return kubelet


def _stop_kubelet(kubelet: RealPodKubelet | None) -> None:
    if kubelet is None:
        return
    kubelet.stop.set()
    kubelet.wake.set()
    kubelet.pool.shutdown(wait=True, cancel_futures=True)


def run(opts: Options, progress=print) -> dict:  # type: ignore[no-untyped-def]
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.state import LabState
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    results: dict[str, Any] = {"params": asdict(opts) | {"virtual_net": str(VIRTUAL_NET)}, "cycles": []}
    wall = time.perf_counter()
    kubelet: RealPodKubelet | None = None
    try:
        info = cluster.up(LabSpec(nodes=opts.nodes, underlay=random_underlay()), names)
        results["lab_up_s"] = round(info.seconds, 2)
        node_ns = {h.name: h.netns for h in info.topology.nodes}
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        host_ips = {n: v["ip"] for n, v in LabState(names.state_dir).meta()["nodes"].items()}
        kubelet = _replace_kubelet(names, store)
        fence = Fence(store, list(node_ns))
        first = cycle_workload(0, opts, host_ips)
        store.apply([parse_resource(d) for d in first.workload.namespaces])
        fence(opts.timeout)
        time.sleep(opts.settle)
        results["rss_idle_mib"] = _rss(names)
        results["kernel_idle"] = {n: _kernel(ns) for n, ns in node_ns.items()}
        results["endpoint_records_idle"] = endpoint_records(store)
        progress(f"lab up {results['lab_up_s']} s; idle RSS {results['rss_idle_mib']}")
        for cycle in range(opts.cycles):
            cw = first if cycle == 0 else cycle_workload(cycle, opts, host_ips)
            row: dict[str, Any] = {"cycle": cycle + 1}
            t0 = time.perf_counter()
            store.apply([parse_resource(d) for d in cw.workload.pods + cw.workload.policies])
            row["apply_s"] = round(time.perf_counter() - t0, 2)
            _wait_running(store, cw.workload, opts.timeout)
            row["running_s"] = round(time.perf_counter() - t0, 2)
            row["fence_up_s"] = round(fence(opts.timeout), 2)
            row["up_s"] = round(time.perf_counter() - t0, 2)
            row["peak_kernel"] = {n: _kernel(ns) for n, ns in node_ns.items()}
            row["rss_peak_mib"] = _rss(names)
            t1 = time.perf_counter()
            _delete_all(store, cw)
            _wait_gone(store, kubelet, results["endpoint_records_idle"], opts.timeout)
            row["fence_down_s"] = round(fence(opts.timeout), 2)
            row["down_s"] = round(time.perf_counter() - t1, 2)
            row["trough_kernel"] = {n: _kernel(ns) for n, ns in node_ns.items()}
            time.sleep(opts.settle)
            row["rss_mib"] = _rss(names)
            row["checks"] = cycle_checks(row)
            results["cycles"].append(row)
            progress(render_row(row))
            if not all(row["checks"].values()):
                raise RuntimeError(
                    f"cycle {cycle + 1}: the agents did not take the churn in: {row['checks']}"
                )
        samples = {n: [c["rss_mib"][n] for c in results["cycles"]] for n in node_ns}
        results["growth"] = summarize(samples)
    finally:
        try:
            _stop_kubelet(kubelet)
        finally:
            cluster.remove(names)
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    return results


def cycle_checks(row: dict) -> dict[str, bool]:
    """What says the agents took a cycle in: at the peak every node's sets hold datastore-only
    addresses and its table policy rules; at the trough none of either."""
    peak, trough = row["peak_kernel"], row["trough_kernel"]
    return {
        "peak_virtual_addresses_in_sets": all(k.get("virtual_addresses", 0) > 0 for k in peak.values()),
        "peak_policy_rules": all(k.get("policy_rules", 0) > 0 for k in peak.values()),
        "trough_no_virtual_address": all(k.get("virtual_addresses", 1) == 0 for k in trough.values()),
        "trough_no_policy_rule": all(k.get("policy_rules", 1) == 0 for k in trough.values()),
    }


# ------------------------------------------------------------------------------------- output


def render_row(row: dict) -> str:
    rss = " ".join(f"{v:7.1f}" for _, v in sorted(row["rss_mib"].items()))
    peak = " ".join(f"{v:7.1f}" for _, v in sorted(row["rss_peak_mib"].items()))
    sets = "/".join(str(k["virtual_addresses"]) for _, k in sorted(row["peak_kernel"].items()))
    rules = "/".join(str(k["policy_rules"]) for _, k in sorted(row["peak_kernel"].items()))
    return (
        f"{row['cycle']:5} {rss}   {peak}   {row['up_s']:6.1f} {row['down_s']:6.1f}   {rules:>17} {sets:>17}"
    )


def render(r: dict) -> str:
    p = r["params"]
    nodes = sorted(r["rss_idle_mib"])
    lines = [
        f"Agent memory under churn: {p['cycles']} cycles x {p['pods']} pods ({p['real_pods']} real, the "
        f"rest datastore-only) and {p['policies']} NetworkPolicies, {p['nodes']} nodes",
        f"lab up {r['lab_up_s']} s; idle RSS (MiB) "
        + ", ".join(f"{n} {r['rss_idle_mib'][n]}" for n in nodes),
        "",
        f"{'cycle':5} {'RSS after delete (MiB)':>{8 * len(nodes) - 1}}   "
        f"{'RSS at peak (MiB)':>{8 * len(nodes) - 1}}   {'up s':>6} {'down s':>6}   "
        f"{'policy rules':>17} {'100.64 addrs':>17}",
    ]
    lines += [render_row(row) for row in r["cycles"]]
    g = r.get("growth")
    if g:
        lines.append("")
        lines.append("growth per cycle after the first (least squares over cycles 2..N; max step):")
        for node, s in g["per_node"].items():
            lines.append(
                f"  {node:10} slope {s['slope_mib_per_cycle']} MiB = "
                f"{s['slope_pct_per_cycle']} %/cycle; "
                f"max step {s['max_delta_mib']} MiB = {s['max_delta_pct']} %"
            )
        lines.append(
            f"  worst node: {g['worst_slope_pct_per_cycle']} %/cycle (bar: < {g['bound_pct_per_cycle']} %)"
        )
    lines.append(f"\nwall time {r['wall_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.bench.churn", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="CI size: 4 cycles x 150 pods (15 real) x 60 policies"
    )
    ap.add_argument("--cycles", type=int)
    ap.add_argument("--pods", type=int)
    ap.add_argument("--policies", type=int)
    ap.add_argument(
        "--real-pods", type=int, help="pods per cycle wired by the kubelet (the rest datastore-only)"
    )
    ap.add_argument("--rules-per-policy", type=int, default=Options.rules_per_policy)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--settle", type=float, default=Options.settle, help="seconds before each RSS sample")
    ap.add_argument("--timeout", type=float, default=Options.timeout, help="per wait")
    ap.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = ap.parse_args(argv)
    opts = Options(
        rules_per_policy=args.rules_per_policy, seed=args.seed, settle=args.settle, timeout=args.timeout
    )
    overlay(opts, args, ("cycles", "pods", "policies", "real_pods"), QUICK if args.quick else {})
    emit(run(opts), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
