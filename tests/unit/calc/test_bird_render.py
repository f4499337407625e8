"""Golden BIRD 2 configs rendered by ``podnet.calc.bird``, and BIRD's own parser accepting each one.

Goldens live in ``test_bird_golden/``; ``PODNET_UPDATE_GOLDEN=1`` rewrites them (review the diff).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from podnet.calc.bird import BgpNode, BirdOptions, PoolRule, render_bird_config
from podnet.calc.cluster import BlockInfo
from podnet.model import parse_resource

GOLDEN = Path(__file__).parent / "test_bird_golden"
V3 = "projectcalico.org/v3"


def pool(name: str, cidr: str, **spec) -> object:
    return parse_resource(
        {"apiVersion": V3, "kind": "IPPool", "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}}
    )


def peer(name: str, **spec) -> object:
    return parse_resource({"apiVersion": V3, "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec})


def bgpconfig(**spec) -> object:
    return parse_resource(
        {"apiVersion": V3, "kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec}
    ).spec


def node(i: int, subnet: int = 0, **kw) -> BgpNode:
    labels = {"kubernetes.io/hostname": f"node-{i}", **kw.pop("labels", {})}
    return BgpNode(f"node-{i}", f"10.77.{subnet}.{10 + i}", f"10.77.{subnet}.0/24", labels, **kw)


def blocks(n: int) -> list[BlockInfo]:
    return [BlockInfo(f"10.244.{i}.0/26", f"node-{i}") for i in range(1, n + 1)]


POOL = pool("default-ipv4-ippool", "10.244.0.0/16")
RR = {"labels": {"route-reflector": "true"}, "rr_cluster_id": "244.0.0.1"}


def scenarios() -> dict[str, str]:
    """name -> rendered text."""
    mesh = [node(1), node(2), node(3)]
    rr_nodes = [node(1, **RR), node(2, **RR), node(3), node(4)]
    rr_peer = peer("peer-with-rrs", nodeSelector="all()", peerSelector="route-reflector == 'true'")
    mesh_off = bgpconfig(nodeToNodeMeshEnabled=False)
    racks = [node(1, labels={"rack": "a"}), node(2, labels={"rack": "a"}), node(3, labels={"rack": "b"})]
    rack_peer = peer(
        "rack-a-tor",
        nodeSelector="rack == 'a'",
        peerIP="10.77.0.251:1179",
        asNumber=64600,
        maxRestartTime="5m",
        keepaliveTime="10s",
        nextHopMode="Self",
        sourceAddress="None",
    )
    edges = [
        node(1, labels={"role": "edge"}),
        node(2, labels={"role": "core"}),
        node(3, labels={"role": "core"}),
    ]
    edge_peer = peer("edge-to-core", nodeSelector="role == 'edge'", peerSelector="role == 'core'")
    as_nodes = [node(1), node(2, as_number=64513), node(3)]
    encap_pools = [
        POOL,
        pool("ipip-always", "10.245.0.0/16", ipipMode="Always"),
        pool("ipip-cross", "10.246.0.0/16", ipipMode="CrossSubnet"),
        pool("vxlan", "10.247.0.0/16", vxlanMode="CrossSubnet"),
        pool("no-export", "10.248.0.0/16", disableBGPExport=True),
    ]
    encap_blocks = [
        *blocks(3),
        BlockInfo("10.245.1.0/26", "node-1"),
        BlockInfo("10.246.2.0/26", "node-2", {"10.246.2.7": "node-1"}),
    ]
    return {
        "mesh_node-1": render_bird_config("node-1", mesh, blocks(3), pools=[POOL]),
        "mesh_node-3": render_bird_config("node-3", mesh, blocks(3), pools=[POOL]),
        "rr_reflector": render_bird_config("node-1", rr_nodes, blocks(4), mesh_off, [rr_peer], [POOL]),
        "rr_client": render_bird_config("node-3", rr_nodes, blocks(4), mesh_off, [rr_peer], [POOL]),
        "global_peer": render_bird_config(
            "node-1", mesh, blocks(3), peers=[peer("tor", peerIP="10.77.0.250", asNumber=64567)], pools=[POOL]
        ),
        "node_selector_peer": render_bird_config("node-1", racks, blocks(3), peers=[rack_peer], pools=[POOL]),
        "peer_selector_edge": render_bird_config("node-1", edges, blocks(3), mesh_off, [edge_peer], [POOL]),
        "peer_selector_core": render_bird_config("node-2", edges, blocks(3), mesh_off, [edge_peer], [POOL]),
        "custom_as_node-1": render_bird_config("node-1", as_nodes, blocks(3), pools=[POOL]),
        "custom_as_node-2": render_bird_config("node-2", as_nodes, blocks(3), pools=[POOL]),
        "listen_port": render_bird_config(
            "node-1", mesh, blocks(3), bgpconfig(listenPort=1179, asNumber=65001), pools=[POOL]
        ),
        "excluded_cidrs": render_bird_config(
            "node-1",
            mesh,
            encap_blocks,
            pools=encap_pools,
            no_kernel=["10.250.0.0/16", "10.249.0.0/16"],
            options=BirdOptions(uplink="ens3", kernel_table=100, kernel_metric=64, log=None),
        ),
        "no_blocks_no_peers": render_bird_config("node-1", [node(1)], [], pools=[PoolRule("10.244.0.0/16")]),
    }


SCENARIOS = scenarios()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_golden(name: str) -> None:
    path = GOLDEN / f"{name}.conf"
    if os.environ.get("PODNET_UPDATE_GOLDEN"):
        path.write_text(SCENARIOS[name])
    assert SCENARIOS[name] == path.read_text(), (
        f"{name} differs from {path} (PODNET_UPDATE_GOLDEN=1 rewrites)"
    )


@pytest.mark.skipif(shutil.which("bird") is None, reason="bird (Debian bird2) is not installed")
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_bird_parses_golden(name: str) -> None:
    proc = subprocess.run(["bird", "-p", "-c", str(GOLDEN / f"{name}.conf")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_golden_file_is_a_scenario() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.conf")) == sorted(SCENARIOS)


def test_output_does_not_depend_on_input_order() -> None:
    nodes = [node(i) for i in range(1, 7)]
    peers = [peer(f"p{i}", peerIP=f"10.77.0.{200 + i}", asNumber=64600 + i) for i in range(5)]
    pools = [POOL, pool("b", "10.245.0.0/16", ipipMode="Always"), pool("c", "10.246.0.0/16")]
    want = render_bird_config(
        "node-3", nodes, blocks(6), peers=peers, pools=pools, no_kernel=["10.9.0.0/16", "10.8.0.0/16"]
    )
    rng = random.Random(7)
    for _ in range(5):
        for items in (nodes, peers, pools):
            rng.shuffle(items)
        bl = blocks(6)
        rng.shuffle(bl)
        got = render_bird_config(
            "node-3", nodes, bl, peers=peers, pools=pools, no_kernel=["10.8.0.0/16", "10.9.0.0/16"]
        )
        assert got == want
