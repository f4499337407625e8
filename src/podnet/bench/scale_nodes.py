"""Scale section ``nodes``: 10, 100 and 1,000 nodes, simulated, against the 3 real agents of a lab.

    python -m podnet.bench.scale_nodes [--quick] [--sizes 10,100,1000] [--out DIR] [-o json]
    python -m podnet.bench.scale_nodes --from DIR/bench.json [--out DIR2]   # figures again, no lab

One private 3-node lab (Calico profile, VXLAN pool, BIRD; own prefix ``pnnd<hex>-`` and
underlay, removed at the end whatever happens). BGP with route reflectors: node-1 and node-2
reflect (cluster id 244.0.0.1), node-3 and every simulated node are clients
(:func:`podnet.bench.sim_nodes.bgp_docs`). A modest policy set: 20 NetworkPolicies of 4 rules
(:func:`podnet.bench.policy_scale.generate_workload`) over 10 namespaces, and 30 datastore-only pods
per real node (the lab kubelet replaced by one that leaves them alone, as in
:mod:`podnet.bench.churn`)::

    lab up ─▶ RR setup, pool, policies, real-node pods ─▶ fence
      for N in sizes (the cluster grows: 10, then 90 more, then 900 more):
        write the simulated nodes up to N (Node, block + affinity, 30 Running pods each)
          ─▶ each agent's policy status applied (seconds from the write's start), RSS, kernel
             routes/FDB counts, each agent's bird.conf through ``bird -p``
        ─▶ in process, the same snapshot: cache load, routes, BIRD config, VXLAN FDB, policy
           per real node (:mod:`podnet.bench.node_compute`: median ms, tracemalloc peak)
        ─▶ one more simulated node joins (Node, then its block): seconds until each real kernel
           has the route to its block; the watch bytes and events of that change
        ─▶ one pod added on it: the watch bytes and events of that change

The watch figures are one stream's (:class:`podnet.bench.node_watch.WatchTally`, the request each
agent makes); the change's window ends when the stream has delivered the agents' own policy
status writes that follow it, which are part of what a change costs every watcher.

What the simulated nodes are and why nothing can reach them: :mod:`podnet.bench.sim_nodes`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from podnet.bench.sim_nodes import PODS_PER_NODE, SIM_POOL, SimNode

FULL_SIZES = (10, 100, 1000)
QUICK_SIZES = (10, 100)
BENCH_PREFIX = "pnnd-"  # + 4 hex digits per run: pnnd1a2b-
REFLECTORS = ("node-1", "node-2")
POLICIES, RULES_PER_POLICY = 20, 4
FENCE_NS = "nodes-fence"
TIMEOUT = 900.0  # per wait; 1,000 nodes with 30,000 pods take minutes on 2 cores


# ------------------------------------------------------------------------------------ documents


class Workload:
    """The namespaces, policies, real-node pods and the label vocabulary of simulated pods."""

    def __init__(self, seed: int = 1) -> None:
        from podnet.bench.churn import VIRTUAL_ANNOTATION, VIRTUAL_VALUE, virtual_ip
        from podnet.bench.policy_scale import CONTROL_NS, generate_workload

        base = generate_workload(3 * PODS_PER_NODE, POLICIES, RULES_PER_POLICY, nodes=3, seed=seed)
        self.namespaces = [d for d in base.namespaces if d["metadata"]["name"] != CONTROL_NS]
        self.policies = base.policies
        self.real_pods = []
        for i, doc in enumerate(p for p in base.pods if p["metadata"]["namespace"] != CONTROL_NS):
            ip = virtual_ip(0, i, 3 * PODS_PER_NODE)
            doc["metadata"]["annotations"] = {VIRTUAL_ANNOTATION: VIRTUAL_VALUE}
            doc["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
            self.real_pods.append(doc)
        self.apps = sorted({p["metadata"]["labels"]["app"] for p in self.real_pods})

    def sim_pods(self, sim: SimNode, slots: int = PODS_PER_NODE) -> list[dict]:
        from podnet.bench.policy_scale import CONTAINER_PORTS, TIERS
        from podnet.bench.sim_nodes import pod_doc

        out = []
        for slot in range(slots):
            k = sim.index * PODS_PER_NODE + slot
            labels = {
                "app": self.apps[k % len(self.apps)],
                "tier": TIERS[k % len(TIERS)],
                "pod": f"{sim.name}-p{slot:02d}",
                "version": f"v{k % 3}",
            }
            namespace = self.namespaces[k % len(self.namespaces)]["metadata"]["name"]
            out.append(pod_doc(sim, slot, namespace, labels, CONTAINER_PORTS))
        return out


# ------------------------------------------------------------------------------------------ lab


class Lab:
    """The lab, its store and what the bench writes into it."""

    def __init__(self, step: Callable[[str], None]) -> None:
        self.step = step
        self.names = None
        self.kubelet = None

    def up(self) -> None:
        from podnet.bench.churn import _replace_kubelet
        from podnet.datastore.etcd import EtcdDatastore
        from podnet.datastore.resources import ResourceStore
        from podnet.lab import cluster
        from podnet.lab.naming import LabNames
        from podnet.lab.topology import LabSpec, random_underlay

        self.names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
        spec = LabSpec(nodes=3, encapsulation="vxlan", bgp=True, flows=False, underlay=random_underlay())
        self.step(f"nodes: lab {self.names.prefix} up")
        info = cluster.up(spec, self.names)
        self.underlay = spec.underlay
        self.netns = {h.name: h.netns for h in info.topology.nodes}
        self.etcd = EtcdDatastore([info.etcd_endpoint])
        self.store = ResourceStore(self.etcd)
        self.layout = self.store.layout
        self.kubelet = _replace_kubelet(self.names, self.store)
        self.fences = 0
        self.next_index = 0

    def down(self) -> None:
        from podnet.bench.churn import _stop_kubelet
        from podnet.lab import cluster

        try:
            _stop_kubelet(self.kubelet)
        finally:
            if self.names is not None:
                cluster.remove(self.names)

    def apply(self, docs: list[dict], chunk: int = 1000) -> int:
        """Apply ``docs`` in chunks; the last revision written."""
        from podnet.model import parse_resource

        revision = 0
        for start in range(0, len(docs), chunk):
            results = self.store.apply([parse_resource(d) for d in docs[start : start + chunk]])
            revision = max([revision] + [int(r.resource.metadata.resource_version or 0) for r in results])
        return revision

    def commit(self, writes: list) -> int:
        from podnet.datastore.resources import MAX_TXN_OPS

        revision = 0
        for start in range(0, len(writes), MAX_TXN_OPS):
            revision = self.etcd.commit(writes[start : start + MAX_TXN_OPS])
        return revision

    def fence(self, started: float) -> dict[str, float]:
        """Write the fence Namespace; seconds from ``started`` until each agent applied it."""
        from podnet.bench.node_watch import applied_times

        self.fences += 1
        meta = {"name": FENCE_NS, "annotations": {"bench.podnet.io/fence": str(self.fences)}}
        revision = self.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": meta}])
        times, _ = applied_times(self.etcd, self.layout, list(self.netns), revision, started, TIMEOUT)
        return times

    def setup(self, workload: Workload) -> dict[str, float]:
        from podnet.bench.sim_nodes import bgp_docs, pool_doc, reflector_patch
        from podnet.model import lookup

        started = time.perf_counter()
        self.apply([pool_doc(), *bgp_docs()])
        for node in REFLECTORS:
            self.store.patch(lookup("nodes"), node, reflector_patch())
        self.apply(workload.namespaces + workload.real_pods + workload.policies)
        return self.fence(started)

    def add_sims(self, workload: Workload, count: int) -> dict[str, Any]:
        """Write ``count`` more simulated nodes with their blocks and pods; until every agent applied."""
        from podnet.bench.sim_nodes import ipam_writes, node_doc, sim_node

        sims = [sim_node(self.underlay, self.next_index + i) for i in range(count)]
        self.next_index += count
        pods = {s.name: workload.sim_pods(s) for s in sims}
        started = time.perf_counter()
        self.apply([node_doc(s) for s in sims])
        self.commit([w for s in sims for w in ipam_writes(self.layout, s, pods[s.name])])
        self.apply([p for s in sims for p in pods[s.name]])
        written = time.perf_counter() - started
        return {
            "nodes": count,
            "pods": count * PODS_PER_NODE,
            "write_s": round(written, 2),
            "applied_s": self.fence(started),
        }


# ------------------------------------------------------------------------------- per size


def agent_checks(lab: Lab, sims: int) -> dict[str, Any]:
    """Per real node: kernel routes into the simulated pool and FDB entries, the agent's own
    bird.conf through ``bird -p``, agent and BIRD RSS."""
    import os

    from podnet.bench.footprint import bird_pid
    from podnet.bench.node_compute import bird_parse_file, peering_count
    from podnet.bench.node_watch import kernel_counts
    from podnet.bench.policy_scale import proc_memory
    from podnet.lab.cluster import agent_pids

    pids = agent_pids(lab.names)
    out = {}
    for node, ns in sorted(lab.netns.items()):
        path = os.path.join(lab.names.node_dir(node), "bird.conf")
        with open(path) as f:
            text = f.read()
        accepted, message = bird_parse_file(path)
        bpid = bird_pid(lab.names, node)
        out[node] = {
            "kernel": kernel_counts(ns, str(SIM_POOL)),
            "bird_conf": {
                "accepted": accepted,
                "message": message,
                "peerings": peering_count(text),
                "lines": text.count("\n"),
            },
            "agent": proc_memory(pids[node]),
            "bird": proc_memory(bpid) if bpid else None,
        }
    return out


def in_process(lab: Lab, repeats: int) -> dict[str, Any]:
    from podnet.bench.node_compute import load_cache, measure_node

    items, revision = lab.etcd.list(lab.layout.root)
    cache, load = load_cache(items, revision, lab.layout, repeats)
    load["keys"] = len(items)
    load["bytes"] = sum(len(kv.key) + len(kv.value) for kv in items)
    return {"cache": load, "nodes": {node: measure_node(cache, node, repeats) for node in sorted(lab.netns)}}


def join(lab: Lab, workload: Workload) -> dict[str, Any]:
    """One more simulated node joins (Node, then block + affinity), then one pod on it: route
    convergence on every real node and one watch stream's bytes and events per change."""
    from podnet.bench.node_watch import WatchTally, applied_times, wait_routes
    from podnet.bench.sim_nodes import ipam_writes, node_doc, sim_node

    sim = sim_node(lab.underlay, lab.next_index)
    lab.next_index += 1
    nodes = list(lab.netns)
    tally = WatchTally(lab.etcd, lab.layout)
    tally.start(lab.etcd.revision() + 1)
    try:
        mark = tally.mark()
        started = time.perf_counter()
        lab.apply([node_doc(sim)])
        revision = lab.commit(ipam_writes(lab.layout, sim, []))
        routes = wait_routes(lab.netns, sim.block, started, 120.0)
        applied, last = applied_times(lab.etcd, lab.layout, nodes, revision, started, TIMEOUT)
        node_add = tally.window(mark, last) | {"applied_s": applied}

        mark = tally.mark()
        started = time.perf_counter()
        revision = lab.apply(workload.sim_pods(sim, 1))
        applied, last = applied_times(lab.etcd, lab.layout, nodes, revision, started, TIMEOUT)
        pod_add = tally.window(mark, last) | {"applied_s": applied}
    finally:
        tally.stop()
    return {"node": sim.name, "block": sim.block, "route_s": routes, "node_add": node_add, "pod_add": pod_add}


def measure(sizes: tuple[int, ...], repeats: int, step: Callable[[str], None]) -> dict[str, Any]:
    lab = Lab(step)
    out: dict[str, Any] = {"sizes": {}}
    wall = time.perf_counter()
    try:
        lab.up()
        workload = Workload()
        out["setup_applied_s"] = lab.setup(workload)
        for size in sizes:
            if size < lab.next_index:
                raise ValueError(f"sizes must grow: {size} after {lab.next_index}")
            step(f"nodes: {size} simulated nodes ({size - lab.next_index} more, {PODS_PER_NODE} pods each)")
            row: dict[str, Any] = {"batch": lab.add_sims(workload, size - lab.next_index)}
            row["agents"] = agent_checks(lab, size)
            step(f"nodes: {size}: calculation in process, {repeats} repeats")
            row["compute"] = in_process(lab, repeats)
            step(f"nodes: {size}: one node joins")
            row["join"] = join(lab, workload)
            out["sizes"][str(size)] = row
    finally:
        lab.down()
    out["wall_s"] = round(time.perf_counter() - wall, 1)
    return out


# ------------------------------------------------------------------------------------ output


def run(quick: bool = False, step: Callable[[str], None] = lambda text: None, sizes=None) -> dict:  # type: ignore[no-untyped-def]
    """The section: rows and samples (the plot is written by :func:`write_files`)."""
    from podnet.bench.node_growth import growth, rows_of

    chosen = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    samples = measure(chosen, 3 if quick else 5, step)
    samples["growth"] = growth(samples)
    return {"rows": rows_of(samples), "samples": samples}


def from_json(path: str) -> dict:
    """The section again (growth, rows) from the samples of a ``bench.json`` this module wrote."""
    from podnet.bench.node_growth import growth, rows_of

    with open(path) as f:
        samples = json.load(f)["scale"]["nodes"]["samples"]
    samples["growth"] = growth(samples)
    return {"rows": rows_of(samples), "samples": samples}


def write_files(section: dict, out: str) -> list[str]:
    """The growth plot of a section result (``podnet.bench.scale.write``)."""
    from podnet.bench.node_growth import write_plot

    samples = section.get("samples") or {}
    return [write_plot(samples, out)] if samples.get("sizes") else []


def main(argv: list[str] | None = None) -> int:
    from podnet.bench.node_growth import render_growth
    from podnet.bench.scale import render

    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.scale_nodes", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help="10 and 100 nodes")
    ap.add_argument("--sizes", default=None, help="comma-separated, growing: 10,100,1000")
    ap.add_argument("--out", default=None, help="directory for nodes_growth.png and bench.json")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ap.add_argument(
        "--from", dest="source", help="no lab: the figures again from an earlier run's bench.json"
    )
    args = ap.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else None
    if args.source:
        result = from_json(args.source)
    else:
        result = run(args.quick, step=lambda text: print(text, flush=True), sizes=sizes)
    doc = {
        "order": ["nodes"],
        "nodes": {"rows": [r.to_dict() for r in result["rows"]], "samples": result["samples"]},
    }
    if args.out:
        from podnet.bench.scale import write

        print(f"wrote {write(doc, args.out)} and {', '.join(doc['nodes'].get('files', []))}")
    print(
        json.dumps(doc, indent=1)
        if args.output == "json"
        else render(doc) + "\n\n" + render_growth(result["samples"])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
