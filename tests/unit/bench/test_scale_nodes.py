"""The ``nodes`` scale section's pure parts: simulated node documents, what the agent's calculation
makes of them, the growth fit and the figures (no lab, no root)."""

from __future__ import annotations

import ipaddress
import shutil

import pytest

from podnet.bench import node_growth, sim_nodes
from podnet.bench.node_compute import bird_config, bird_parse, measure_node, peering_count, route_plan
from podnet.bench.node_watch import key_kind
from podnet.bench.scale import SECTIONS
from podnet.calc.cluster import ClusterCache
from podnet.dataplane.vxlan import VTEP, vtep_tables
from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.model import lookup, parse_resource

UNDERLAY = "10.130.0.0/16"
REAL = {"node-1": "10.130.0.11/24", "node-2": "10.130.0.12/24", "node-3": "10.130.0.13/24"}


def test_simulated_nodes_are_unique_and_unreachable_from_the_lab_subnet() -> None:
    sims = [sim_nodes.sim_node(UNDERLAY, i) for i in range(sim_nodes.MAX_SIM_NODES)]
    lab_subnet = ipaddress.IPv4Network("10.130.0.0/24")
    underlay = ipaddress.IPv4Network(UNDERLAY)
    assert (
        len({s.ip for s in sims}) == len({s.block for s in sims}) == len({s.name for s in sims}) == len(sims)
    )
    assert len({s.vtep_mac for s in sims}) == len(sims)
    for s in sims:
        ip = ipaddress.IPv4Address(s.ip)
        assert ip in underlay and ip not in lab_subnet
        assert int(ip) & 0xFF not in (0, 255)
        block = ipaddress.IPv4Network(s.block)
        assert block.prefixlen == sim_nodes.BLOCK_PREFIX and block.subnet_of(sim_nodes.SIM_POOL)
        assert ipaddress.IPv4Address(s.vtep_ip) == block.network_address
        assert ipaddress.IPv4Address(s.pod_ip(sim_nodes.PODS_PER_NODE - 1)) in block
    with pytest.raises(ValueError):
        sim_nodes.sim_node(UNDERLAY, sim_nodes.MAX_SIM_NODES)
    with pytest.raises(ValueError):
        sim_nodes.sim_node("10.130.0.0/24", 0)


def _cluster(sims: int, pods_per_node: int = 3) -> ClusterCache:
    """A datastore holding 3 real nodes (node-1 and node-2 reflectors), the simulated pool, the
    RR setup and ``sims`` simulated nodes with their blocks and pods; loaded into a cache."""
    store = ResourceStore(MemoryDatastore())
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}},
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "default"},
            "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always"},
        },
        sim_nodes.pool_doc(),
        *sim_nodes.bgp_docs(),
    ]
    for name, address in REAL.items():
        meta = {"name": name, "annotations": {"projectcalico.org/IPv4Address": address}}
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": meta})
    writes, pods = [], []
    for i in range(sims):
        sim = sim_nodes.sim_node(UNDERLAY, i)
        mine = [sim_nodes.pod_doc(sim, k, "ns", {"app": f"a{k}"}, []) for k in range(pods_per_node)]
        docs.append(sim_nodes.node_doc(sim))
        pods += mine
        writes += sim_nodes.ipam_writes(store.layout, sim, mine)
    store.apply([parse_resource(d) for d in docs + pods])
    for name in ("node-1", "node-2"):
        store.patch(lookup("nodes"), name, sim_nodes.reflector_patch())
    store.store.commit(writes)
    items, revision = store.store.list(store.layout.root)
    cache = ClusterCache(store.layout)
    cache.reset(items, revision)
    assert not cache.errors
    return cache


def test_the_agents_calculation_routes_every_simulated_block_over_vxlan() -> None:
    cache = _cluster(12)
    plan = route_plan(cache, "node-3")
    assert not plan.unreachable
    sims = [sim_nodes.sim_node(UNDERLAY, i) for i in range(12)]
    by_dst = {r.dst: r for r in plan.routes}
    for s in sims:
        route = by_dst[s.block]
        assert (route.gateway, route.dev, route.onlink) == (s.vtep_ip, "vxlan.calico", True)
        assert plan.vxlan_peers[s.name].node_ip == s.ip
    fdb, neigh = vtep_tables(plan.vxlan_peers)
    assert {s.vtep_mac: s.ip for s in sims}.items() <= fdb.items()
    assert {s.vtep_ip: s.vtep_mac for s in sims}.items() <= neigh.items()
    assert len(cache.pod_infos()) == 12 * 3
    assert {p.node for p in cache.pod_infos()} == {s.name for s in sims}


def test_reflectors_peer_with_every_node_and_clients_with_the_reflectors_only() -> None:
    cache = _cluster(7, pods_per_node=0)
    rr = bird_config(cache, "node-1", route_plan(cache, "node-1"))
    client = bird_config(cache, "node-3", route_plan(cache, "node-3"))
    assert peering_count(rr) == 7 + 2  # the other reflector, node-3, the simulated nodes
    assert peering_count(client) == 2
    assert f"rr cluster id {sim_nodes.RR_CLUSTER_ID}" in rr and "rr cluster id" not in client


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird is not installed")
def test_bird_accepts_the_rendered_configurations_and_refuses_a_broken_one() -> None:
    cache = _cluster(5, pods_per_node=1)
    r = measure_node(cache, "node-1", repeats=1)
    assert r["bird"]["accepted"], r["bird"]["message"]
    assert r["routes"]["routes"] >= 5 and r["fdb"]["fdb"] == 5 + 0  # the real nodes publish no VTEP here
    assert r["policy"]["endpoints"] == 0  # no pod on node-1
    accepted, message = bird_parse("router id 1.2.3.4;\nprotocol bgp {\n")
    assert not accepted and message


def test_vtep_tables_lower_case_macs() -> None:
    fdb, neigh = vtep_tables({"n": VTEP("10.0.0.1", "66:AA:BB:CC:DD:EE", "192.0.2.1")})
    assert fdb == {"66:aa:bb:cc:dd:ee": "192.0.2.1"} and neigh == {"10.0.0.1": "66:aa:bb:cc:dd:ee"}


def test_key_kind() -> None:
    layout = KeyLayout()
    assert key_kind(layout, layout.resource("pods", "p", "ns")) == "pods"
    assert key_kind(layout, layout.resource("nodes", "n")) == "nodes"
    assert key_kind(layout, layout.block("10.0.0.0/26")) == "ipam/blocks"
    assert key_kind(layout, layout.policy_status("node-1")) == "status/policy"


def test_growth_exponent() -> None:
    sizes = [10, 100, 1000]
    assert sim_nodes.growth_exponent(sizes, [2, 20, 200]) == pytest.approx(1.0)
    assert sim_nodes.growth_exponent(sizes, [5, 5, 5]) == pytest.approx(0.0)
    assert sim_nodes.growth_exponent(sizes, [1, 100, 10000]) == pytest.approx(2.0)
    assert sim_nodes.growth_exponent(sizes, [None, 0, 3]) is None
    assert sim_nodes.growth_exponent([10, 10], [1, 2]) is None


def _size_sample(n: int) -> dict:
    def node(scale: float) -> dict:
        return {
            "routes": {"ms": 0.01 * n * scale},
            "bird": {"ms": 0.02 * n * scale, "peak_mib": 0.001 * n, "peerings": n + 2, "accepted": True},
            "fdb": {"ms": 0.001 * n},
            "policy": {"ms": 0.5 * n * scale, "peak_mib": 0.01 * n, "set_members": 55 * n},
        }

    conf = {"accepted": True, "peerings": 2}
    agent = {"kernel": {"routes": n, "fdb": n + 2}, "bird_conf": conf, "agent": {"rss_mib": 60 + n / 10}}
    return {
        "batch": {"applied_s": {"node-1": 0.01 * n}, "write_s": 0.005 * n},
        "agents": {"node-1": agent | {"bird": {"rss_mib": 5.0}}, "node-3": agent | {"bird": None}},
        "compute": {
            "cache": {"ms": 3.0 * n, "retained_mib": 0.3 * n, "bytes": 30_000 * n},
            "nodes": {"node-1": node(1), "node-3": node(2)},
        },
        "join": {
            "route_s": {"node-1": 0.05},
            "node_add": {"bytes": 4000, "applied_s": {"node-1": 0.2}},
            "pod_add": {"bytes": 2800, "applied_s": {"node-1": 0.001 * n}},
        },
    }


def test_growth_rows_table_and_what_dominates() -> None:
    samples = {"sizes": {str(n): _size_sample(n) for n in (10, 100, 1000)}}
    samples["growth"] = node_growth.growth(samples)
    exps = samples["growth"]["exponents"]
    assert exps["policy, slowest node"] == pytest.approx(1.0)
    assert exps["watch bytes, pod add"] == pytest.approx(0.0)
    assert exps["BIRD RSS, reflector"] == pytest.approx(0.0)
    assert "policy compile dominates" in samples["growth"]["dominates"]
    assert "At 1,000 nodes" in samples["growth"]["dominates"]
    assert "one pod added is applied on every node after 1.0 s" in samples["growth"]["dominates"]
    assert "hold 55,000 pod addresses" in samples["growth"]["dominates"]
    assert exps["batch: agents done after the writes"] == pytest.approx(1.0)
    assert exps["pod add → every agent applied"] == pytest.approx(1.0)
    rows = node_growth.rows_of(samples)
    accepted = [r for r in rows if "accepted by bird -p" in r.figure]
    assert [r.met for r in accepted] == [True, True, True]
    policy = next(r for r in rows if r.figure == "1000 nodes: policy, slowest node")
    assert policy.value == pytest.approx(1000.0) and policy.unit == "ms"
    table = node_growth.render_growth(samples)
    assert "N=1,000" in table and "policy, slowest node (ms)" in table
    broken = _size_sample(10)
    broken["agents"]["node-3"]["bird_conf"] = {"accepted": False, "peerings": 2}
    assert node_growth.rows_of({"sizes": {"10": broken}})[0].met is False


def test_the_plot_is_written(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    samples = {"sizes": {str(n): _size_sample(n) for n in (10, 100)}}
    path = node_growth.write_plot(samples, str(tmp_path))
    assert path.endswith(node_growth.PLOT_FILE) and (tmp_path / node_growth.PLOT_FILE).stat().st_size > 10_000


def test_nodes_is_a_scale_section() -> None:
    assert "nodes" in SECTIONS


def test_simulated_pods_use_the_policy_vocabulary_and_their_node_block() -> None:
    from podnet.bench.scale_nodes import Workload

    workload = Workload()
    sim = sim_nodes.sim_node(UNDERLAY, 42)
    pods = workload.sim_pods(sim)
    namespaces = {d["metadata"]["name"] for d in workload.namespaces}
    assert len(pods) == sim_nodes.PODS_PER_NODE and len({p["metadata"]["name"] for p in pods}) == len(pods)
    assert {p["metadata"]["namespace"] for p in pods} <= namespaces
    assert {p["metadata"]["labels"]["app"] for p in pods} <= set(workload.apps)
    for pod in pods:
        assert pod["spec"]["nodeName"] == sim.name and pod["status"]["phase"] == "Running"
        assert ipaddress.IPv4Address(pod["status"]["podIP"]) in ipaddress.IPv4Network(sim.block)
        parse_resource(pod)
    assert len(workload.real_pods) == 3 * sim_nodes.PODS_PER_NODE and len(workload.policies) == 20
    assert all(p["status"]["podIP"].startswith("100.") for p in workload.real_pods)
