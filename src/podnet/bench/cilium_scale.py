"""The Cilium profile's policy at scale: identities, CiliumNetworkPolicies and the eBPF maps they
become, on a 3-node lab.

    python -m podnet.bench.cilium_scale [--quick] [--pods 300] [--identities 1000] [--policies 1000]
                                        [--changes 100] [--seed 1] [--json PATH]

One private 3-node Cilium lab (its own prefix, removed at the end whatever happens):

1. **Pods**: ``--pods`` real Pods (policy_scale's generator: 10 namespaces, labels ``app``, ``tier``,
   ``version`` and a per-pod ``pod`` label, so each has its own identity), and enough
   datastore-only Pods on simulated nodes ``sim-1..3`` (Running, an address in 100.64/10, each with
   its own ``sim`` label; their identities allocated and referenced by those nodes as their agents
   would) for ``--identities`` identities in all; timed until every node's ipcache maps each
   address to an identity.
2. **Idle**: agent RSS.
3. **Cold programming**: ``--policies`` CNPs applied in one call (each selects one app of its
   namespace; ingress from a tier of the namespace and from an app of the teams' namespaces, on
   port 8080 or a range; egress to a tier on 5432 and to a CIDR set with a hole on 53/UDP; every
   fifth an ingressDeny of ``version: v2``), timed until every agent's maps hold the datastore's
   revision (``bench.cilium_fence``); then the policy map's entries and memory per node (``bpftool``'s
   ``bytes_memlock``: what the kernel charges for the map), the ipcache's, and agent RSS.
4. **Change → every node's map**: ``--changes`` times, a CNP gets an ingress rule allowing one port
   from one pod; timed from the apply until each node hosting a selected pod answers the new key
   with a new entry (one ``bpf(2)`` lookup per millisecond): p50/p99, first node and all nodes
   (100 changes by default: of fewer samples the p99 is the maximum). Goal: p99 ≤ 200 ms.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import secrets
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from podnet.bench.churn import VIRTUAL_ANNOTATION, VIRTUAL_VALUE
from podnet.bench.cilium_fence import MapChange, lxc_pins, time_changes, wait_programmed
from podnet.bench.policy_scale import TIERS, _key, _memory, _wait_running, generate_workload
from podnet.lab.naming import LabNames

BENCH_PREFIX = "pncs-"
SIM_NET = ipaddress.ip_network("100.64.0.0/10")
CHANGE_PORT_BASE = 41000
GOAL_P99_MS = 200.0


@dataclass
class Options:
    pods: int = 300
    identities: int = 1000
    policies: int = 1000
    changes: int = 100
    seed: int = 1
    timeout: float = 900.0


QUICK = Options(pods=24, identities=80, policies=60, changes=5, timeout=300.0)


SIM_NODES = ("sim-1", "sim-2", "sim-3")


def simulated_pods(count: int, namespaces: list[str], nodes: tuple[str, ...] = SIM_NODES) -> list[dict]:
    """Datastore-only Running pods on nodes no agent runs (no kubelet starts them), each with its
    own ``sim`` label (its own identity)."""
    out = []
    for i in range(count):
        ip = str(SIM_NET.network_address + 1 + i)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"sim-{i:05d}",
                    "namespace": namespaces[i % len(namespaces)],
                    "labels": {"app": f"sim{i % 7}", "sim": str(i), "tier": TIERS[i % len(TIERS)]},
                    "annotations": {VIRTUAL_ANNOTATION: VIRTUAL_VALUE},
                },
                "spec": {"nodeName": nodes[i % len(nodes)], "containers": [{"name": "c", "image": "sim"}]},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return out


def generate_policies(count: int, namespaces: list[str], apps: int, seed: int) -> list[dict]:
    """``count`` CiliumNetworkPolicies over the workload's labels (pure, seeded)."""
    rng = random.Random(seed)
    out = []
    for j in range(count):
        namespace = namespaces[j % len(namespaces)]
        first = rng.randrange(9000, 9500)
        ingress: list[dict[str, Any]] = [
            {
                "fromEndpoints": [{"matchLabels": {"tier": rng.choice(TIERS)}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}],
            },
            {
                "fromEndpoints": [
                    {
                        "matchLabels": {
                            "app": f"a{rng.randrange(apps)}",
                            "k8s:io.kubernetes.pod.namespace": rng.choice(namespaces),
                        }
                    }
                ],
                "toPorts": [{"ports": [{"port": str(first), "endPort": first + rng.randrange(1, 64)}]}],
            },
        ]
        spec: dict[str, Any] = {
            "endpointSelector": {"matchLabels": {"app": f"a{rng.randrange(apps)}"}},
            "ingress": ingress,
            "egress": [
                {
                    "toEndpoints": [{"matchLabels": {"tier": rng.choice(TIERS)}}],
                    "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}],
                },
                {
                    "toCIDRSet": [
                        {"cidr": f"172.{16 + j % 16}.0.0/16", "except": [f"172.{16 + j % 16}.9.0/24"]}
                    ],
                    "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}],
                },
            ],
        }
        if j % 5 == 0:
            spec["ingressDeny"] = [{"fromEndpoints": [{"matchLabels": {"version": "v2"}}]}]
        out.append(
            {
                "apiVersion": "cilium.io/v2",
                "kind": "CiliumNetworkPolicy",
                "metadata": {"name": f"cnp-{j:04d}", "namespace": namespace},
                "spec": spec,
            }
        )
    return out


def allocate_simulated(store, sims: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """The identities of the datastore-only pods, allocated and referenced by their (simulated)
    nodes as those nodes' agents would (the cluster's agents see them through the datastore);
    the namespaces' labels as stored (with the ``kubernetes.io/metadata.name`` the system adds)."""
    from podnet.calc.identity import identity_labels
    from podnet.datastore.identity_alloc import IdentityAllocator
    from podnet.model import lookup
    from podnet.model.identity import LabelSet

    names = {d["metadata"]["namespace"] for d in sims}
    namespaces = {n: dict(store.get(lookup("namespaces"), n).metadata.labels or {}) for n in names}
    allocators = {node: IdentityAllocator(store.store, store.layout, node) for node in SIM_NODES}
    for doc in sims:
        meta = doc["metadata"]
        labels = identity_labels(meta["labels"], meta["namespace"], namespaces.get(meta["namespace"], {}))
        allocators[doc["spec"]["nodeName"]].allocate(LabelSet.of(labels))


def selected(policy: dict, pods: list[dict]) -> list[dict]:
    """The pods a generated CNP selects (its namespace, its ``app``)."""
    namespace = policy["metadata"]["namespace"]
    app = policy["spec"]["endpointSelector"]["matchLabels"]["app"]
    return [
        p
        for p in pods
        if p["metadata"]["namespace"] == namespace and p["metadata"]["labels"].get("app") == app
    ]


def plan_changes(
    policies: list[dict], pods: list[dict], ips: dict[str, str], count: int, seed: int
) -> list[MapChange]:
    """``count`` edits of policies that select real pods: an ingress rule from one pod on a new port."""
    rng = random.Random(seed + 7)
    order = list(range(len(policies)))
    rng.shuffle(order)
    out: list[MapChange] = []
    for j in order:
        if len(out) == count:
            break
        policy = policies[j]
        chosen = [p for p in selected(policy, pods) if _key(p) in ips]
        peers = [
            p
            for p in pods
            if p["metadata"]["namespace"] == policy["metadata"]["namespace"] and _key(p) in ips
        ]
        if not chosen or not peers:
            continue
        source = rng.choice(peers)
        port = CHANGE_PORT_BASE + len(out)
        edited = json.loads(json.dumps(policy))
        edited["spec"]["ingress"].append(
            {
                "fromEndpoints": [{"matchLabels": {"pod": source["metadata"]["name"]}}],
                "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
            }
        )
        by_node: dict[str, list[str]] = {}
        for p in chosen:
            by_node.setdefault(p["spec"]["nodeName"], []).append(ips[_key(p)])
        out.append(MapChange(edited, {n: tuple(v) for n, v in by_node.items()}, ips[_key(source)], port))
    if len(out) < count:
        raise ValueError(f"only {len(out)} policies select a real pod; cannot make {count} changes")
    return out


def map_figures(pins: str) -> dict[str, Any]:
    """Elements and kernel memory of the node's policy map and ipcache."""
    from podnet.dataplane import bpf
    from podnet.dataplane.lxc import IPCACHE, POLICY

    shown = {m.get("name"): m for m in bpf._json([bpf.BPFTOOL, "-j", "map", "show"])}
    out: dict[str, Any] = {}
    for name in (POLICY, IPCACHE):
        with bpf.BpfMap(f"{pins}/{name}") as m:
            elements = sum(1 for _ in m.iter_keys())
            kernel = next(
                (v for k, v in shown.items() if k == name and v.get("id") == m.info.id), shown.get(name, {})
            )
        out[name] = {"elements": elements, "bytes_memlock": int(kernel.get("bytes_memlock", 0))}
    return out


def wait_ipcache(pins: dict[str, str], addresses: set[str], timeout: float) -> float:
    """Seconds until every node's ipcache maps each of ``addresses`` to an identity."""
    from podnet.dataplane.lxc import pinned_ipcache

    started = time.perf_counter()
    while True:
        missing = 0
        for pin in pins.values():
            known = {
                prefix.split("/")[0]
                for prefix, (identity, _) in pinned_ipcache(pin).items()
                if identity >= 256
            }
            missing += len(addresses - known)
        if not missing:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{missing} addresses without an identity after {timeout:g}s")
        time.sleep(0.5)


def run(opts: Options, step=lambda text: None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import parse_resource

    workload = generate_workload(opts.pods, 1, 2, nodes=3, seed=opts.seed)
    namespaces = [d["metadata"]["name"] for d in workload.namespaces if d["metadata"]["name"] != "ctl"]
    real = [p for p in workload.pods if p["metadata"]["namespace"] in namespaces]
    sims = simulated_pods(max(0, opts.identities - len(real)), namespaces)
    apps = max(1, len(real) // (len(namespaces) * 3))
    policies = generate_policies(opts.policies, namespaces, apps, opts.seed)
    out: dict[str, Any] = {
        "params": {
            "pods": len(real),
            "simulated_pods": len(sims),
            "identities_wanted": opts.identities,
            "policies": len(policies),
            "changes": opts.changes,
            "seed": opts.seed,
        },
        "goal_change_p99_ms": GOAL_P99_MS,
    }
    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    try:
        step("lab up")
        info = cluster.up(LabSpec(nodes=3, profile="cilium", underlay=random_underlay()), names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        nodes = [h.name for h in info.topology.nodes]
        pins = {n: lxc_pins(names.state_dir, n) for n in nodes}
        step(f"{len(real)} pods, {len(sims)} datastore-only pods")
        started = time.perf_counter()
        store.apply([parse_resource(d) for d in [*workload.namespaces, *real, *sims]])
        workload.pods = real
        allocate_simulated(store, sims)
        _, ips = _wait_running(store, workload, opts.timeout)
        out["pods_running_s"] = round(time.perf_counter() - started, 2)
        addresses = set(ips.values()) | {d["status"]["podIP"] for d in sims}
        out["identities_in_ipcache_s"] = round(
            wait_ipcache(pins, addresses, opts.timeout) + out["pods_running_s"], 2
        )
        out["identities"] = _identity_count(store)
        out["memory_idle"] = _memory(names)
        step(f"{len(policies)} CNPs, cold")
        started = time.perf_counter()
        resources = [parse_resource(p) for p in policies]
        store.apply(resources)
        done = wait_programmed(store, nodes, started, opts.timeout, [store.key_of(r) for r in resources])
        out["cold_programming_s"] = round(max(done.values()), 2)
        out["maps"] = {n: map_figures(pin) for n, pin in pins.items()}
        out["memory_loaded"] = _memory(names)
        step(f"{opts.changes} changes")
        changes = plan_changes(policies, real, ips, opts.changes, opts.seed)
        out["change"] = time_changes(store, pins, changes, 30.0)
        out["memory_after_changes"] = _memory(names)
    finally:
        step("lab down")
        cluster.remove(names)
    return out


def _identity_count(store) -> int:  # type: ignore[no-untyped-def]
    """Cluster identities allocated in the datastore."""
    from podnet.datastore.identity_alloc import list_identities

    return len(list_identities(store.store, store.layout))


def render(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        f"Cilium profile at scale: {p['pods']} pods (+{p['simulated_pods']} datastore-only), "
        f"{r.get('identities', '?')} identities, {p['policies']} CNPs, 3 nodes",
        f"  pods Running {r.get('pods_running_s')} s; every address with an identity in every ipcache "
        f"{r.get('identities_in_ipcache_s')} s",
        f"  cold programming (apply -> every node's maps): {r.get('cold_programming_s')} s",
    ]
    for node, maps in sorted(r.get("maps", {}).items()):
        pol, ipc = maps["pn_policy"], maps["pn_ipcache"]
        lines.append(
            f"  {node}: policy map {pol['elements']} entries, {pol['bytes_memlock'] / 2**20:.1f} MiB; "
            f"ipcache {ipc['elements']} entries, {ipc['bytes_memlock'] / 2**20:.1f} MiB"
        )
    change = r.get("change") or {}
    if change:
        first, last = change["first_node"], change["all_nodes"]
        verdict = "met" if last["p99_ms"] <= GOAL_P99_MS else "NOT met"
        lines.append(
            f"  change -> map: first node p50/p99 {first['p50_ms']}/{first['p99_ms']} ms; every node "
            f"p50/p99 {last['p50_ms']}/{last['p99_ms']} ms (goal p99 <= {GOAL_P99_MS:g} ms: {verdict})"
        )
    for when in ("memory_idle", "memory_loaded", "memory_after_changes"):
        mem = r.get(when) or {}
        if mem:
            text = ", ".join(f"{n} {m['rss_mib']}" for n, m in sorted(mem.items()))
            lines.append(f"  agent RSS {when.removeprefix('memory_')}: {text} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.cilium_scale", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="CI sizes (24 pods, 80 identities, 60 CNPs)")
    for name in ("pods", "identities", "policies", "changes", "seed"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    given = {n: getattr(args, n) for n in ("pods", "identities", "policies", "changes", "seed")}
    opts = replace(QUICK if args.quick else Options(), **{n: v for n, v in given.items() if v is not None})
    results = run(opts, lambda text: print(f"== {text}", file=sys.stderr, flush=True))
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
