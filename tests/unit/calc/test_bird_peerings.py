"""``podnet.calc.bird``: peerings (mesh, BGPPeers, route reflectors), node inputs, pool rules."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.calc.bird import (
    BgpNode,
    BirdConfigError,
    Peering,
    PoolRule,
    bgp_peerings,
    duration_seconds,
    parse_protocol_name,
    pool_rules,
    protocol_name,
    render_bird_config,
)
from podnet.calc.cluster import BlockInfo, NodeInfo
from podnet.model import parse_resource

V3 = "projectcalico.org/v3"


def peer(name: str, **spec):
    return parse_resource({"apiVersion": V3, "kind": "BGPPeer", "metadata": {"name": name}, "spec": spec})


def cfg(**spec):
    return parse_resource(
        {"apiVersion": V3, "kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": spec}
    ).spec


def pool(cidr: str, **spec):
    return parse_resource(
        {"apiVersion": V3, "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": cidr, **spec}}
    )


def n(i: int, **kw) -> BgpNode:
    return BgpNode(f"n{i}", f"10.77.0.{10 + i}", "10.77.0.0/24", kw.pop("labels", {}), **kw)


def names(peerings: list[Peering]) -> list[str]:
    return [p.name for p in peerings]


# -- mesh -----------------------------------------------------------------------------------------
def test_mesh_peers_every_other_node_passive_towards_higher_addresses() -> None:
    nodes = [n(1), n(2), n(3), BgpNode("no-ip", None)]
    got = bgp_peerings("n2", nodes)
    assert names(got) == ["Mesh_10_77_0_11", "Mesh_10_77_0_13"]
    low, high = got
    assert (low.passive, high.passive) == (False, True)
    assert all(p.kind == "mesh" and p.as_number == 64512 and p.source_address == "10.77.0.12" for p in got)
    assert [p.peer_node for p in got] == ["n1", "n3"]
    assert low.peer_type == "node-to-node mesh" and low.origin == "mesh"
    assert low.port is None and low.restart_time is None and low.rr_client_cluster_id is None


def test_passive_compares_addresses_numerically() -> None:
    nodes = [BgpNode("a", "10.0.0.9"), BgpNode("b", "10.0.0.10")]
    (p,) = bgp_peerings("a", nodes)
    assert p.passive  # 10.0.0.10 > 10.0.0.9 (a string comparison would say otherwise)
    (q,) = bgp_peerings("b", nodes)
    assert not q.passive


def test_mesh_restart_time_and_listen_port_and_as() -> None:
    (p,) = bgp_peerings(
        "n1", [n(1), n(2)], cfg(nodeMeshMaxRestartTime="90s", listenPort=1179, asNumber=65000)
    )
    assert (p.restart_time, p.port, p.as_number, p.name) == (90, 1179, 65000, "Mesh_10_77_0_12")


def test_mesh_disabled_and_route_reflectors_leave_the_mesh() -> None:
    assert bgp_peerings("n1", [n(1), n(2)], cfg(nodeToNodeMeshEnabled=False)) == []
    nodes = [n(1, rr_cluster_id="1.1.1.1"), n(2), n(3)]
    assert bgp_peerings("n1", nodes) == []  # the RR itself: no mesh
    assert names(bgp_peerings("n2", nodes)) == ["Mesh_10_77_0_13"]  # clients skip the RR


def test_custom_as_per_node() -> None:
    nodes = [n(1), n(2, as_number=64513)]
    assert bgp_peerings("n1", nodes)[0].as_number == 64513
    assert bgp_peerings("n2", nodes)[0].as_number == 64512
    assert "local as 64513;" in render_bird_config("n2", nodes, [])


def test_node_without_address_is_an_error() -> None:
    with pytest.raises(BirdConfigError, match="no IPv4 address"):
        bgp_peerings("x", [BgpNode("x", None)])
    with pytest.raises(BirdConfigError):
        bgp_peerings("missing", [n(1)])


# -- BGPPeers -------------------------------------------------------------------------------------
def test_global_peer_applies_to_every_node_with_all_fields() -> None:
    tor = peer(
        "tor",
        peerIP="10.77.0.250:1179",
        asNumber=64567,
        localASNumber=64999,
        numAllowedLocalASNumbers=2,
        keepOriginalNextHop=True,
        maxRestartTime="1m30s",
        keepaliveTime="20s",
        ttlSecurity=1,
        reachableBy="10.77.0.1",
    )
    for who in ("n1", "n2"):
        got = [p for p in bgp_peerings(who, [n(1), n(2)], peers=[tor]) if p.kind == "global"]
        assert len(got) == 1
        p = got[0]
        assert p.name == "Global_10_77_0_250_port_1179" and p.peer_type == "global"
        assert (p.ip, p.port, p.as_number, p.local_as, p.allow_local_as) == (
            "10.77.0.250",
            1179,
            64567,
            64999,
            2,
        )
        assert (p.next_hop, p.restart_time, p.keepalive_time, p.ttl_security) == ("keep", 90, 20, 1)
        assert p.reachable_by == "10.77.0.1" and p.origin == "BGPPeer tor" and p.peer_node is None
        assert not p.passive and p.source_address == f"10.77.0.1{who[-1]}"
    text = render_bird_config("n1", [n(1), n(2)], [], peers=[tor])
    for line in (
        "neighbor 10.77.0.250 port 1179 as 64567;",
        "local as 64999;",
        "allow local as 2;",
        "next hop keep;",
        "graceful restart time 90;",
        "keepalive time 20;",
        "ttl security on;",
        "multihop 1;",
        "route 10.77.0.250/32 via 10.77.0.1;  # reachableBy",
    ):
        assert line in text


def test_port_179_is_the_default_and_not_in_the_name() -> None:
    (p,) = [p for p in bgp_peerings("n1", [n(1)], peers=[peer("t", peerIP="10.9.9.9:179", asNumber=1)])]
    assert p.name == "Global_10_9_9_9" and p.port is None


def test_next_hop_mode_and_source_address_none() -> None:
    p = peer("x", node="n1", peerIP="10.9.9.9", asNumber=64512, nextHopMode="Self", sourceAddress="None")
    (got,) = bgp_peerings("n1", [n(1)], peers=[p])
    assert (got.kind, got.next_hop, got.source_address) == ("node", "self", None)
    # keepOriginalNextHop only applies to eBGP
    q = peer("y", node="n1", peerIP="10.9.9.9", asNumber=64512, keepOriginalNextHop=True)
    assert bgp_peerings("n1", [n(1)], peers=[q])[0].next_hop is None


def test_node_and_node_selector_choose_local_nodes() -> None:
    nodes = [n(1, labels={"rack": "a"}), n(2, labels={"rack": "b"}), n(3)]
    by_node = peer("one", node="n2", peerIP="10.9.9.9", asNumber=65000)
    by_sel = peer("rack-a", nodeSelector="rack == 'a'", peerIP="10.9.9.8", asNumber=65000)
    got = {
        who: names(bgp_peerings(who, nodes, cfg(nodeToNodeMeshEnabled=False), [by_node, by_sel]))
        for who in ("n1", "n2", "n3")
    }
    assert got == {"n1": ["Node_10_9_9_8"], "n2": ["Node_10_9_9_9"], "n3": []}
    assert bgp_peerings("n2", nodes, peers=[by_node])[-1].peer_type == "node specific"


def test_global_wins_over_node_specific_to_the_same_address() -> None:
    g = peer("g", peerIP="10.9.9.9", asNumber=65000)
    s = peer("s", node="n1", peerIP="10.9.9.9", asNumber=65001)
    assert names(bgp_peerings("n1", [n(1)], peers=[s, g])) == ["Global_10_9_9_9"]


def test_peer_selector_peers_and_reverse_peering() -> None:
    nodes = [
        n(1, labels={"role": "edge"}),
        n(2, labels={"role": "core"}),
        n(3, labels={"role": "core"}, as_number=65003),
    ]
    bp = peer("edge-core", nodeSelector="role == 'edge'", peerSelector="role == 'core'")
    off = cfg(nodeToNodeMeshEnabled=False)
    edge = bgp_peerings("n1", nodes, off, [bp])
    assert [(p.name, p.as_number, p.peer_node, p.kind) for p in edge] == [
        ("Node_10_77_0_12", 64512, "n2", "node"),
        ("Node_10_77_0_13", 65003, "n3", "node"),
    ]
    assert names(bgp_peerings("n2", nodes, off, [bp])) == ["Node_10_77_0_11"]  # reverse
    manual = peer("m", nodeSelector="role == 'edge'", peerSelector="role == 'core'", reversePeering="Manual")
    assert bgp_peerings("n2", nodes, off, [manual]) == []


def test_peer_ip_of_a_node_gets_a_reverse_peering() -> None:
    p = peer("to-n2", node="n1", peerIP="10.77.0.12", asNumber=64512)
    off = cfg(nodeToNodeMeshEnabled=False)
    assert names(bgp_peerings("n1", [n(1), n(2)], off, [p])) == ["Node_10_77_0_12"]
    assert names(bgp_peerings("n2", [n(1), n(2)], off, [p])) == ["Node_10_77_0_11"]
    other_as = peer("to-n2", node="n1", peerIP="10.77.0.12", asNumber=65000)
    assert bgp_peerings("n2", [n(1), n(2)], off, [other_as]) == []  # not our AS: not us


def test_explicit_peering_to_a_mesh_peer_is_dropped() -> None:
    p = peer("dup", node="n1", peerIP="10.77.0.12", asNumber=64512)
    assert names(bgp_peerings("n1", [n(1), n(2)], peers=[p])) == ["Mesh_10_77_0_12"]


def test_route_reflector_clients_and_rr_to_rr() -> None:
    rr = {"labels": {"route-reflector": "true"}, "rr_cluster_id": "244.0.0.1"}
    nodes = [n(1, **rr), n(2, **rr), n(3), n(4, as_number=65004)]
    bp = peer("rr", nodeSelector="all()", peerSelector="route-reflector == 'true'")
    got = {p.peer_node: p for p in bgp_peerings("n1", nodes, cfg(nodeToNodeMeshEnabled=False), [bp])}
    assert sorted(got) == ["n2", "n3", "n4"]
    assert got["n2"].rr_client_cluster_id is None  # same cluster: a fellow reflector
    assert got["n3"].rr_client_cluster_id == "244.0.0.1"
    assert got["n4"].rr_client_cluster_id is None  # eBGP: never a client
    client = bgp_peerings("n3", nodes, cfg(nodeToNodeMeshEnabled=False), [bp])
    assert [p.peer_node for p in client] == ["n1", "n2"]
    assert all(p.rr_client_cluster_id is None for p in client)


# -- inputs ---------------------------------------------------------------------------------------
def test_bgp_node_from_node_and_info() -> None:
    node = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "w1",
                "labels": {"route-reflector": "true"},
                "annotations": {
                    "projectcalico.org/IPv4Address": "10.77.1.13/24",
                    "projectcalico.org/ASNumber": "64513",
                    "projectcalico.org/RouteReflectorClusterID": "244.0.0.1",
                },
            },
        }
    )
    got = BgpNode.from_node(node)
    assert (got.name, got.ip, got.subnet, got.as_number, got.rr_cluster_id) == (
        "w1",
        "10.77.1.13",
        "10.77.1.0/24",
        64513,
        "244.0.0.1",
    )
    assert got.labels == {"route-reflector": "true"}
    info = NodeInfo("w2", ipaddress.IPv4Interface("10.0.0.2/16"), {"a": "b"})
    plain = BgpNode.from_info(info)
    assert (plain.ip, plain.subnet, plain.as_number, plain.rr_cluster_id, plain.labels) == (
        "10.0.0.2",
        "10.0.0.0/16",
        None,
        None,
        {"a": "b"},
    )
    assert BgpNode.from_info(info, {"projectcalico.org/ASNumber": "1.10"}).as_number == 65546  # asdot


def test_pool_rules() -> None:
    pools = [
        pool("10.3.0.0/16", vxlanMode="Always"),
        pool("10.1.0.0/16"),
        pool("10.2.0.0/16", ipipMode="Always"),
        pool("10.4.0.0/16", ipipMode="CrossSubnet", disableBGPExport=True),
        pool("10.5.0.0/16", vxlanMode="CrossSubnet"),
        pool("fd00::/48"),
    ]
    assert pool_rules(pools) == [
        PoolRule("10.1.0.0/16", True, "program"),
        PoolRule("10.2.0.0/16", True, "skip"),
        PoolRule("10.3.0.0/16", True, "skip"),
        PoolRule("10.4.0.0/16", False, "same-subnet"),
        PoolRule("10.5.0.0/16", True, "skip"),
    ]
    assert {r.kernel for r in pool_rules(pools, "Disabled")} == {"skip"}


def test_cross_subnet_pool_without_a_known_subnet_is_not_programmed() -> None:
    text = render_bird_config(
        "a", [BgpNode("a", "10.0.0.1")], [], pools=[pool("10.4.0.0/16", ipipMode="CrossSubnet")]
    )
    assert "if net ~ 10.4.0.0/16 then reject;  # subnet unknown: treated as encapsulated" in text


def test_blocks_and_borrowed_addresses_are_announced() -> None:
    blocks = [
        BlockInfo("10.244.1.0/26", "n1", {"10.244.1.5": "n2"}),
        BlockInfo("10.244.2.0/26", "n2", {"10.244.2.9": "n1", "10.244.2.10": "n3"}),
        BlockInfo("10.244.3.0/26", None, {"10.244.3.1": "n1"}),
    ]
    text = render_bird_config("n1", [n(1), n(2)], blocks, pools=[pool("10.244.0.0/16")])
    static = text.split("protocol static blocks {")[1].split("}")[0]
    assert static.split("\n")[1:-1] == [
        "  ipv4;",
        "  route 10.244.1.0/26 blackhole;",
        "  route 10.244.2.9/32 blackhole;",
        "  route 10.244.3.1/32 blackhole;",
    ]
    assert "if net = 10.244.1.0/26 then reject;  # our block: ours to announce" in text


def test_small_helpers() -> None:
    assert [duration_seconds(t) for t in ("0", "120s", "1m30s", "2h", "1500ms")] == [0, 120, 90, 7200, 2]
    assert protocol_name("node", "10.1.2.3", 1179) == "Node_10_1_2_3_port_1179"
    assert parse_protocol_name("Node_10_1_2_3_port_1179") == ("node specific", "10.1.2.3", 1179)
    assert parse_protocol_name("Global_10_1_2_3") == ("global", "10.1.2.3", None)
    assert parse_protocol_name("Mesh_10_1_2_3") == ("node-to-node mesh", "10.1.2.3", None)
    assert parse_protocol_name("kernel4") is None


def test_external_peers_hear_only_our_own_routes_unless_next_hop_mode() -> None:
    nodes = [n(1), n(2, as_number=65002)]
    auto = peer("tor", peerIP="10.9.9.9", asNumber=64567)
    keep = peer("tor-keep", peerIP="10.9.9.8", asNumber=64567, nextHopMode="Keep")
    ibgp = peer("ibgp", peerIP="10.9.9.7", asNumber=64512)
    local = peer("local-as", peerIP="10.9.9.6", asNumber=64567, localASNumber=64567)
    got = {p.name: p.own_routes_only for p in bgp_peerings("n1", nodes, peers=[auto, keep, ibgp, local])}
    assert got == {
        "Global_10_9_9_9": True,
        "Global_10_9_9_8": False,
        "Global_10_9_9_7": False,
        "Global_10_9_9_6": False,  # iBGP from its localASNumber
        "Mesh_10_77_0_12": True,  # eBGP mesh (per-node AS)
    }
    text = render_bird_config("n1", nodes, [], peers=[auto])
    tor_block = text.split("protocol bgp Global_10_9_9_9")[1]
    assert "  ipv4 {\n    export filter podnet_export_own_routes;\n  };" in tor_block
    assert "  if source = RTS_BGP then reject;" in text.split("filter podnet_export_own_routes {")[1]


def test_reverse_peering_does_not_take_the_forward_sides_local_options() -> None:
    p = peer(
        "to-n2", node="n1", peerIP="10.77.0.12", asNumber=64512, reachableBy="10.77.0.1", localASNumber=64512
    )
    (back,) = bgp_peerings("n2", [n(1), n(2)], cfg(nodeToNodeMeshEnabled=False), [p])
    assert (back.ip, back.reachable_by, back.local_as) == ("10.77.0.11", None, None)
    (fwd,) = bgp_peerings("n1", [n(1), n(2)], cfg(nodeToNodeMeshEnabled=False), [p])
    assert (fwd.reachable_by, fwd.local_as) == ("10.77.0.1", 64512)
