"""What one agent's calculation costs, in this process, over a datastore snapshot (``nodes`` section).

The agent's pure functions, called as the agent calls them (:mod:`podnet.agent.syncer`,
:mod:`podnet.agent.daemon`), over a :class:`~podnet.calc.cluster.ClusterCache` loaded from the same
etcd snapshot the real agents watch:

    snapshot ─▶ ClusterCache.reset ─▶ routes    calc.routes.node_routes (+ encap_policy)
                                   ─▶ bird      calc.bird.render_bird_config (BgpNode per node)
                                   ─▶ fdb       dataplane.vxlan.vtep_tables(plan.vxlan_peers)
                                   ─▶ policy    local_pods + policy_inputs.compile_cluster (no memo)

Each is timed ``repeats`` times (median, ms), then run once more under :mod:`tracemalloc` for its
peak allocation (MiB; separate, tracing slows the code down). The cache load is measured the same
way, with what it keeps (``retained``). The rendered BIRD configuration is checked with
``bird -p`` (BIRD's own parser).
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from podnet.calc.bird import BgpNode, BirdOptions, render_bird_config
from podnet.calc.cluster import ClusterCache
from podnet.calc.local_pods import local_pods
from podnet.calc.policy_inputs import compile_cluster
from podnet.calc.routes import RoutePlan, encap_policy, node_routes
from podnet.dataplane.vxlan import vtep_tables
from podnet.datastore.base import KeyValue
from podnet.datastore.keys import KeyLayout

MIB = 1024 * 1024
STEPS = ("routes", "bird", "fdb", "policy")


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(median ms over ``repeats``, tracemalloc peak MiB of one more call, its result)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return round(statistics.median(times), 3), round(peak / MIB, 3), result


def load_cache(
    items: Sequence[KeyValue], revision: int, layout: KeyLayout, repeats: int
) -> tuple[ClusterCache, dict]:
    """A cache of the snapshot, and what loading it cost: median ms, peak and retained MiB."""

    def load() -> ClusterCache:
        cache = ClusterCache(layout)
        cache.reset(items, revision)
        return cache

    ms, _, _ = _timed(load, repeats)
    tracemalloc.start()
    try:
        cache = load()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return cache, {"ms": ms, "peak_mib": round(peak / MIB, 3), "retained_mib": round(retained / MIB, 3)}


def route_plan(cache: ClusterCache, node: str, uplink: str = "eth0") -> RoutePlan:
    """What the syncer computes for ``node`` (its endpoint records: the cache's)."""
    policy = encap_policy(cache.pools.values(), cache.config, cache.bgp_config is not None)
    return node_routes(
        node, cache.nodes, list(cache.blocks.values()), cache.local_endpoints(node), uplink, policy
    )


def bird_config(cache: ClusterCache, node: str, plan: RoutePlan, uplink: str = "eth0") -> str:
    """``bird.conf`` as the agent renders it (``Agent._apply_bgp``)."""
    if cache.bgp_config is None:
        raise ValueError("no BGPConfiguration: the agent runs no BIRD")
    nodes = [
        BgpNode.from_info(info, cache.node_annotations.get(name))
        for name, info in cache.nodes.items()
        if info.ip
    ]
    return render_bird_config(
        node,
        nodes,
        list(cache.blocks.values()),
        cache.bgp_config.spec,
        list(cache.bgp_peers.values()),
        list(cache.pools.values()),
        no_kernel=sorted(set(plan.ipip_map) | {r.dst for r in plan.routes if r.onlink}),
        options=BirdOptions(uplink=uplink),
    )


def policy_plan(cache: ClusterCache, node: str, profile: str = "calico") -> Any:
    """The node's compiled policy, cold (no memo of an earlier compile)."""
    local = local_pods(node, cache.pod_infos(), cache.local_endpoints(node), {})
    return compile_cluster(cache, local.pods, profile)


def bird_parse(text: str) -> tuple[bool, str]:
    """Does ``bird -p`` accept ``text``? (accepted, BIRD's message)."""
    with tempfile.TemporaryDirectory(prefix="podnet-bird-") as tmp:
        path = Path(tmp) / "bird.conf"
        path.write_text(text)
        return bird_parse_file(str(path))


def bird_parse_file(path: str) -> tuple[bool, str]:
    proc = subprocess.run(["bird", "-p", "-c", path], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()[-300:]


def peering_count(text: str) -> int:
    """BGP sessions in a rendered configuration (``protocol bgp`` blocks)."""
    return sum(1 for line in text.splitlines() if line.startswith("protocol bgp "))


def measure_node(cache: ClusterCache, node: str, repeats: int) -> dict:
    """Every step for ``node``: ms (median), peak MiB, and what it produced (sizes, bird -p)."""
    out: dict[str, Any] = {}
    ms, peak, plan = _timed(lambda: route_plan(cache, node), repeats)
    out["routes"] = {
        "ms": ms,
        "peak_mib": peak,
        "routes": len(plan.routes),
        "vxlan_peers": len(plan.vxlan_peers),
    }
    ms, peak, text = _timed(lambda: bird_config(cache, node, plan), repeats)
    accepted, message = bird_parse(text)
    out["bird"] = {
        "ms": ms,
        "peak_mib": peak,
        "lines": text.count("\n"),
        "peerings": peering_count(text),
        "accepted": accepted,
        "message": message,
    }
    ms, peak, (fdb, neigh) = _timed(lambda: vtep_tables(plan.vxlan_peers), repeats)
    out["fdb"] = {"ms": ms, "peak_mib": peak, "fdb": len(fdb), "neighbours": len(neigh)}
    cache.pod_infos()  # the pod list is kept between syncs: warm it as an agent's is
    ms, peak, compiled = _timed(lambda: policy_plan(cache, node), repeats)
    out["policy"] = {
        "ms": ms,
        "peak_mib": peak,
        "endpoints": len(compiled.endpoints),
        "sets": len(compiled.sets),
        "set_members": sum(len(members) for members in compiled.sets.values()),
    }
    return out
