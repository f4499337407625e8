"""Agent footprint and control-plane figures per profile, for ``podnet bench``.

One private 3-node lab per measured profile (its own prefix and underlay, removed at the end
whatever happens), in this order::

    lab up ─▶ 1 memory, idle ─▶ 2 route convergence (node-3 leaves and joins again)
           ─▶ 3 CNI ADD/DEL latency @10 and @1 (node-1) ─▶ 4 IPAM allocations/s (the lab's etcd)
           ─▶ 5 workload: pods, then NetworkPolicies, timed until programmed on every node
           ─▶ 6 memory, loaded ─▶ 7 policy change → kernel ─▶ teardown

**Memory** is ``VmRSS`` (and the peak, ``VmHWM``) of each node's agent, found through the lab
state (:func:`podnet.lab.cluster.agent_pids`), and of each node's BIRD when the profile runs
BGP (found the way the agent itself adopts it: ``bird.pid`` in the node directory, checked against
the control socket on its command line). Seed comparison: "about 150 MB per node" for calico-node
(Felix + BIRD + confd) and "about 300 MB" for cilium-agent, so per node we report agent + BIRD.

**Route convergence after a node joins.** The lab cannot add a node namespace to a running cluster
(the fabric is built once from the topology), so the join is re-enacted on the last node, with
everything the other nodes learn from going away and coming back:

1. *leave*: node-3's agent is stopped (SIGTERM), its BIRD is shut down (``down``: peers drop the
   session) when BGP runs, its ``Node`` resource is deleted and its IPAM blocks released (its own
   addresses first: the Cilium-style router address, the VXLAN tunnel address), as Calico's node
   controller and Cilium's operator do when a Kubernetes node goes away. No pod exists yet, so
   the Node + the block affinities are the whole source of truth for routes to node-3. 2 s
   settle, so the other agents and BIRDs drop it.
2. *join*: ``t0`` = the ``Node`` is created again (the same document ``lab up`` wrote) and the agent
   restarted with its original command line (:func:`podnet.lab.cluster.restart_agent`); then the
   node's first pod is applied (``t_pod``). The node's first block is claimed where each world
   claims it: the Cilium-style agent at start (its router address on ``cilium_host``, as Cilium
   takes the node's pod CIDR at join), the Calico-style one at the first pod's CNI ADD.
3. ``ip monitor route`` in every other node (started before ``t0``) timestamps the first route with
   a gateway whose destination contains the pod's address (the block's route). Reported: seconds
   from ``t0`` until every other node has it (the headline: Node created → routed everywhere,
   agent start and, for Calico, the first pod's setup included), and from ``t_pod`` where the block
   came with the pod (block claimed → route everywhere: what the datastore watch or BGP adds).

What this does not cover: a fresh kernel namespace (node-3 keeps its devices, and BIRD may find its
own routes of the earlier run; the agent restarts as it would after an upgrade). The figure is
therefore the control-plane part of a join, which is what the datastore and BGP paths differ in.

**Policy change → kernel**: the NetworkPolicy workload of :mod:`podnet.bench.policy_scale`
(``generate_workload``; 100 pods / 1,000 policies, ``--quick`` 30 / 100), its change plan and its
``nft monitor`` watcher: one policy edited at a time, timed from the apply returning until every
node hosting a selected pod shows the new rule.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.bench.cilium_fence import lxc_pins
from podnet.bench.monitor import LineMonitor
from podnet.bench.policy_scale import (
    RuleMonitor,
    Workload,
    _key,
    _wait_running,
    chain_has,
    generate_workload,
    node_targets,
    plan_changes,
    proc_memory,
)
from podnet.bench.stats import latency_summary
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec

Progress = Callable[[str, int, int], None]

BENCH_PREFIX = "pnfp-"
NODES = 3


def _profile_labs() -> dict[str, dict[str, Any]]:
    """Profile name -> LabSpec keywords: the data-path bench's table, the one place profiles live."""
    from podnet.bench.datapath import PROFILES

    return {name: dict(profile.spec) for name, profile in PROFILES.items()}


PROFILE_LABS: dict[str, dict[str, Any]] = _profile_labs()


@dataclass(frozen=True)
class Sizes:
    pods: int
    policies: int
    rules_per_policy: int
    changes: int
    sandboxes: int  # CNI ADD/DEL per concurrency level
    ipam_allocations: int
    timeout: float  # per phase


FULL = Sizes(
    pods=100,
    policies=1000,
    rules_per_policy=5,
    changes=20,
    sandboxes=50,
    ipam_allocations=2000,
    timeout=600.0,
)
QUICK = Sizes(
    pods=30, policies=100, rules_per_policy=5, changes=3, sandboxes=10, ipam_allocations=200, timeout=180.0
)


def lab_spec(profile: str, underlay: str | None = None) -> LabSpec:
    if profile not in PROFILE_LABS:
        raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILE_LABS)}")
    extra = {"underlay": underlay} if underlay else {}
    return LabSpec(nodes=NODES, **PROFILE_LABS[profile], **extra)


def footprint_profiles(profiles: Sequence[str], quick: bool) -> list[str]:
    """Which profiles get a footprint lab: all of them; with ``quick`` one per style (Calico with
    BGP when selected, so BIRD is measured too; else the first Calico one; the first Cilium one)."""
    profiles = list(dict.fromkeys(profiles))
    if not quick:
        return profiles
    calico = [p for p in profiles if PROFILE_LABS[p]["profile"] == "calico"]
    cilium = [p for p in profiles if PROFILE_LABS[p]["profile"] == "cilium"]
    chosen = []
    if calico:
        chosen.append("calico-bgp" if "calico-bgp" in calico else calico[0])
    if cilium:
        chosen.append(cilium[0])
    return [p for p in profiles if p in chosen]


# ----------------------------------------------------------------------------------------- memory


def bird_pid(names: LabNames, node: str) -> int | None:
    """The pid of the node's BIRD, as the agent's BirdManager adopts it (pid file + socket check)."""
    from podnet.dataplane.bird import BirdManager

    manager = BirdManager(names.node_dir(node))  # the agent's config dir: where its socket lives
    return manager.pid if manager.process_alive() else None


def node_memory(names: LabNames, bgp: bool) -> dict[str, dict]:
    """Per node: the agent's RSS/peak, BIRD's (None without BGP) and their RSS sum, in MiB."""
    out = {}
    from podnet.lab.cluster import agent_pids

    for node, pid in sorted(agent_pids(names).items()):
        agent = proc_memory(pid)
        bird = None
        if bgp and (bpid := bird_pid(names, node)) is not None:
            bird = proc_memory(bpid)
        total = agent["rss_mib"] + (bird["rss_mib"] if bird else 0.0)
        out[node] = {"agent": agent, "bird": bird, "total_rss_mib": round(total, 1)}
    return out


# ------------------------------------------------------------------------------ route convergence


_NOT_FORWARDING = (
    "Deleted",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "local",
    "broadcast",
    "multicast",
    "anycast",
)


def parse_route_line(line: str) -> ipaddress.IPv4Network | None:
    """The destination of an ``ip monitor route`` line that adds a route through a gateway (a route
    to another node's pods); None for deletions, blackholes, default and device-only routes."""
    tokens = line.split()
    if not tokens or tokens[0] in _NOT_FORWARDING or "via" not in tokens:
        return None
    try:
        return ipaddress.IPv4Network(tokens[0], strict=False)
    except ValueError:
        return None


class RouteMonitor(LineMonitor):
    """``ip monitor route`` in one node netns: when each gateway route first appeared."""

    def __init__(self, netns: str) -> None:
        self.seen: list[tuple[ipaddress.IPv4Network, float]] = []
        super().__init__(netns, ["ip", "monitor", "route"])

    def parse(self, line: str) -> ipaddress.IPv4Network | None:
        return parse_route_line(line)

    def record(self, item: ipaddress.IPv4Network, at: float) -> None:
        self.seen.append((item, at))

    def first_covering(self, address: str, timeout: float) -> float | None:
        """perf_counter() of the first route seen whose destination contains ``address``."""
        ip = ipaddress.IPv4Address(address)
        return self.wait_until(lambda: min((at for dst, at in self.seen if ip in dst), default=None), timeout)


def _wait_pod_ip(store, namespace: str, name: str, timeout: float) -> str:
    from podnet.model import lookup

    deadline = time.perf_counter() + timeout
    while True:
        for pod in store.list(lookup("pods"), namespace):
            if (
                pod.metadata.name == name
                and pod.status
                and pod.status.phase == "Running"
                and pod.status.pod_ip
            ):
                return pod.status.pod_ip
        if time.perf_counter() > deadline:
            raise TimeoutError(f"pod {namespace}/{name} not Running after {timeout:g}s")
        time.sleep(0.02)


def route_convergence(names: LabNames, info, store, timeout: float = 120.0, settle: float = 2.0) -> dict:
    """Node-3 leaves and joins again; seconds until every other node routes to its first block.
    See the module notes for the exact procedure and what it leaves out."""
    from podnet.dataplane.bird import BirdManager
    from podnet.ipam import IPAM
    from podnet.lab import cluster
    from podnet.model import lookup, parse_resource

    topo = info.topology
    joiner, others = topo.nodes[-1], topo.nodes[:-1]
    node_doc = next(
        d
        for d in cluster.cluster_resources(topo)
        if d["kind"] == "Node" and d["metadata"]["name"] == joiner.name
    )

    # leave
    cluster.stop_process(names, f"agent-{joiner.name}")  # the kubelet holds it down until restart_agent
    if topo.spec.bgp:
        BirdManager(names.node_dir(joiner.name)).stop()
    store.delete(lookup("nodes"), joiner.name)
    # What Kubernetes node removal does in both worlds (Calico's node controller releases the block
    # affinities, Cilium's operator frees the node's pod CIDR): the node's own addresses (no pod
    # exists yet: the Cilium-style router address, the VXLAN tunnel address), then its blocks.
    ipam = IPAM(store.store, store.layout)
    for block in ipam.blocks():
        if block.node == joiner.name:
            for handle in block.handle_counts():
                ipam.release_handle(handle)
    released = ipam.release_node(joiner.name)
    time.sleep(settle)

    monitors = [RouteMonitor(h.netns) for h in others]
    try:
        time.sleep(0.3)  # the monitors subscribe
        # join
        t0 = time.perf_counter()
        store.apply([parse_resource(node_doc)])
        cluster.restart_agent(names, joiner.name, sig=signal.SIGTERM)
        t_ready = time.perf_counter()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "join-probe", "namespace": "default"},
            "spec": {"nodeName": joiner.name, "containers": [{"name": "c"}]},
        }
        t_pod = time.perf_counter()
        store.apply([parse_resource(pod)])
        ip = _wait_pod_ip(store, "default", "join-probe", timeout)
        t_running = time.perf_counter()
        seen = {}
        for host, monitor in zip(others, monitors, strict=True):
            at = monitor.first_covering(ip, timeout)
            if at is None:
                raise TimeoutError(
                    f"{host.name} has no route to {ip} ({joiner.name}'s block) after {timeout:g}s"
                )
            seen[host.name] = at
    finally:
        for monitor in monitors:
            monitor.close()
    converged = max(seen.values())
    # Cilium style claims the node's block at agent start (its router address, in a thread after the
    # first sync, so it may land just after STATUS answers): "after the first pod" means nothing
    # there. Calico style claims it with the first pod's CNI ADD.
    before_pod = topo.spec.profile == "cilium" or converged < t_pod
    return {
        "method": "node leaves (agent stopped, BIRD down, Node deleted, its IPAM blocks released) and "
        "joins again (Node created, agent restarted), then its first pod is applied",
        "node": joiner.name,
        "pod_ip": ip,
        "blocks_released_at_leave": len(released.released),
        "blocks_kept_at_leave": len(released.kept) + len(released.unaffined),
        "block_claimed_by": "agent start (router address)" if before_pod else "first pod",
        "agent_ready_s": round(t_ready - t0, 3),
        "pod_running_s": round(t_running - t_pod, 3),
        "routes_after_node_s": {n: round(at - t0, 3) for n, at in seen.items()},
        "converged_after_node_s": round(converged - t0, 3),
        "converged_after_pod_s": None if before_pod else round(converged - t_pod, 3),
    }


# ---------------------------------------------------------------------------------- the workload


def load_workload(
    store, workload: Workload, node_ns: dict[str, str], timeout: float, cilium: bool = False
) -> dict:
    """Apply the pods (until Running), then the policies (until programmed on every node: its
    nftables chains, or, ``cilium``, its agent's maps at the apply's revision)."""
    from podnet.bench.cilium_fence import wait_programmed
    from podnet.model import parse_resource

    started = time.perf_counter()
    store.apply([parse_resource(d) for d in workload.all_docs()])
    _, ips = _wait_running(store, workload, timeout)
    pods_s = time.perf_counter() - started
    targets = {} if cilium else node_targets(workload, ips, list(node_ns))
    started = time.perf_counter()
    resources = [parse_resource(p) for p in workload.policies]
    store.apply(resources)
    keys = [store.key_of(r) for r in resources]
    done: dict[str, float] = wait_programmed(store, node_ns, started, timeout, keys) if cilium else {}
    while len(done) < len(targets):
        for node, target in targets.items():
            if node not in done and chain_has(node_ns[node], target.chain, target.comment):
                done[node] = time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError(
                f"policies not programmed on {sorted(set(targets) - set(done))} after {timeout:g}s"
            )
        time.sleep(0.05)
    return {
        "pods": len(workload.pods),
        "policies": len(workload.policies),
        "rules": workload.rule_count,
        "pods_running_s": round(pods_s, 2),
        "policies_programmed_s": round(max(done.values()), 2),
        "ips": ips,
    }


def policy_changes(
    store,
    workload: Workload,
    node_ns: dict[str, str],
    count: int,
    timeout: float,
    cilium_pins: dict[str, str] | None = None,
    ips: dict[str, str] | None = None,
) -> dict:
    """policy_scale's change phase: each edit timed from the apply until every node that must show
    the new rule does (``nft monitor``; Cilium profile, ``cilium_pins``: its policy map's key)."""
    from podnet.model import parse_resource

    if cilium_pins is not None:
        return cilium_policy_changes(store, workload, cilium_pins, ips or {}, count, timeout)
    changes = plan_changes(workload, count)
    monitors = {node: RuleMonitor(ns) for node, ns in node_ns.items()}
    try:
        time.sleep(0.5)
        first, last = [], []
        for change in changes:
            store.apply([parse_resource(change.policy)])
            applied = time.perf_counter()
            seen = []
            for node in change.nodes:
                at = monitors[node].wait_for(change.comment, timeout=timeout)
                if at is None:
                    raise TimeoutError(f"change {change.index} ({change.comment}) never reached {node}")
                seen.append(max(0.0, at - applied))
            first.append(min(seen))
            last.append(max(seen))
            time.sleep(0.2)
    finally:
        for monitor in monitors.values():
            monitor.close()
    return {
        "first_node": latency_summary(first),
        "all_nodes": latency_summary(last),
        "samples_ms": [round(x * 1e3, 1) for x in last],
    }


def cilium_policy_changes(
    store, workload: Workload, pins: dict[str, str], ips: dict[str, str], count: int, timeout: float
) -> dict:
    """The change phase on the Cilium profile: each edit timed until every node hosting a pod the
    policy selects has the new rule's key in its policy map (bench.cilium_fence)."""
    from podnet.bench.cilium_fence import MapChange, time_changes
    from podnet.bench.policy_scale import selected_pods

    changes = []
    for change in plan_changes(workload, count):
        namespace = change.policy["metadata"]["namespace"]
        source = change.policy["spec"]["ingress"][-1]["from"][0]["podSelector"]["matchLabels"]["pod"]
        chosen = [p for p in selected_pods(change.policy, workload.pods) if _key(p) in ips]
        selected = {
            node: tuple(ips[_key(p)] for p in chosen if p["spec"]["nodeName"] == node)
            for node in change.nodes
        }
        changes.append(MapChange(change.policy, selected, ips[f"{namespace}/{source}"], change.port))
    return time_changes(store, pins, changes, timeout)


# --------------------------------------------------------------------------------------- the run


def _one_lab(
    profile: str, sizes: Sizes, memory: bool, control_plane: bool, step: Callable[[str], None]
) -> dict:
    from podnet.bench.control_plane import cni_latency
    from podnet.bench.ipam_rate import measure_allocation_rate
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.topology import random_underlay

    spec = lab_spec(profile, random_underlay())
    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    out: dict[str, Any] = {
        "lab": {
            "nodes": spec.nodes,
            "profile": spec.profile,
            "subnets": spec.subnets,
            "encapsulation": spec.encapsulation,
            "bgp": spec.bgp,
        }
    }
    cp: dict[str, Any] = {}
    try:
        step(f"{profile}: lab up")
        info = cluster.up(spec, names)
        out["lab"]["up_s"] = round(info.seconds, 2)
        node_ns = {h.name: h.netns for h in info.topology.nodes}
        datastore = EtcdDatastore([info.etcd_endpoint])
        store = ResourceStore(datastore)
        time.sleep(2.0)  # the agents settle after start
        step(f"{profile}: memory, idle")
        if memory:
            out["memory"] = {"idle": node_memory(names, spec.bgp)}
        step(f"{profile}: route convergence ({info.topology.nodes[-1].name} leaves and joins)")
        if control_plane:
            cp["route_convergence"] = route_convergence(names, info, store, timeout=sizes.timeout)
        step(f"{profile}: CNI ADD/DEL latency ({sizes.sandboxes} sandboxes @10 and @1)")
        if control_plane:
            cp["cni"] = [
                cni_latency(names, info, sizes.sandboxes, 10),
                cni_latency(names, info, sizes.sandboxes, 1),
            ]
        step(f"{profile}: IPAM allocations/s ({sizes.ipam_allocations})")
        if control_plane:
            cp["ipam"] = measure_allocation_rate(datastore, sizes.ipam_allocations, concurrency=4)
        workload = generate_workload(sizes.pods, sizes.policies, sizes.rules_per_policy, nodes=spec.nodes)
        step(f"{profile}: {len(workload.pods)} pods and {sizes.policies} policies")
        if memory or control_plane:
            loaded = load_workload(store, workload, node_ns, sizes.timeout, cilium=spec.profile == "cilium")
            ips = loaded.pop("ips")
            out["workload"] = loaded
        step(f"{profile}: memory, loaded")
        if memory:
            time.sleep(1.0)
            out["memory"]["loaded"] = node_memory(names, spec.bgp)
        step(f"{profile}: policy change -> kernel ({sizes.changes} changes)")
        if control_plane:
            pins = {n: lxc_pins(names.state_dir, n) for n in node_ns} if spec.profile == "cilium" else None
            cp["policy_change"] = policy_changes(
                store,
                workload,
                node_ns,
                sizes.changes,
                sizes.timeout,
                pins,
                ips if memory or control_plane else {},
            )
    finally:
        step(f"{profile}: lab down")
        cluster.remove(names)
    if control_plane:
        out["control_plane"] = cp
    return out


STEPS_PER_LAB = 9


def run(
    profiles: Sequence[str],
    quick: bool = False,
    *,
    memory: bool = True,
    control_plane: bool = True,
    progress: Progress | None = None,
) -> dict:
    """Footprint and control-plane figures for the profiles :func:`footprint_profiles` picks."""
    if os.geteuid() != 0:
        from podnet.lab.naming import LabError

        raise LabError("the footprint bench builds labs: it needs root")
    sizes = QUICK if quick else FULL
    chosen = footprint_profiles(profiles, quick)
    total = len(chosen) * STEPS_PER_LAB
    done = 0

    def step(message: str) -> None:
        nonlocal done
        if progress is not None:
            progress(message, min(done, total), total)
        done += 1

    results = {}
    for profile in chosen:
        done = chosen.index(profile) * STEPS_PER_LAB
        results[profile] = _one_lab(profile, sizes, memory, control_plane, step)
    if progress is not None:
        progress("footprint and control plane done", total, total)
    return {
        "settings": {
            "quick": quick,
            "nodes": NODES,
            "pods": sizes.pods,
            "policies": sizes.policies,
            "rules_per_policy": sizes.rules_per_policy,
            "changes": sizes.changes,
            "cni_sandboxes": sizes.sandboxes,
            "ipam_allocations": sizes.ipam_allocations,
        },
        "profiles": results,
    }
