import ipaddress

from podnet.calc.cluster import BlockInfo, NodeInfo
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.mtu import pod_mtu
from podnet.calc.routes import EncapPolicy, RouteSpec, node_routes
from podnet.model import parse_resource


def node(name: str, cidr: str) -> NodeInfo:
    return NodeInfo(name, ipaddress.IPv4Interface(cidr))


NODES = {
    "n1": node("n1", "10.77.0.11/24"),
    "n2": node("n2", "10.77.0.12/24"),
    "n3": node("n3", "10.77.1.13/24"),
}


def ep(ip: str, host_if: str) -> EndpointRecord:
    return EndpointRecord("n1", "default", "p", "c1", "eth0", host_if, (ip,))


def test_local_remote_and_borrowed_routes():
    blocks = [
        BlockInfo("10.244.1.0/26", "n1"),
        BlockInfo("10.244.2.0/26", "n2", {"10.244.2.9": "n1", "10.244.2.10": "n3", "10.244.2.11": "n2"}),
    ]
    plan = node_routes("n1", NODES, blocks, [ep("10.244.1.5", "cali1"), ep("10.244.2.9", "cali2")])
    assert plan.routes == sorted(
        [
            RouteSpec("10.244.1.0/26", kind="blackhole"),
            RouteSpec("10.244.2.0/26", "10.77.0.12", "eth0"),
            RouteSpec("10.244.1.5/32", None, "cali1"),
            RouteSpec("10.244.2.9/32", None, "cali2"),  # our own borrowed address: the endpoint route
        ]
    )
    # n3's borrowed address is in another subnet: no direct route, and the plan says why.
    assert "needs encapsulation or BGP" in plan.unreachable["n3"]


def test_unknown_node_and_missing_local_address():
    plan = node_routes("n9", NODES, [BlockInfo("10.244.3.0/26", "n2")], [])
    assert plan.routes == [] and "no address" in plan.unreachable["n2"]
    plan = node_routes("n1", NODES, [BlockInfo("10.244.3.0/26", "ghost")], [])
    assert plan.routes == [] and "unknown" in plan.unreachable["ghost"]


def pool(**spec):
    return parse_resource(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "p"},
            "spec": {"cidr": "10.244.0.0/16", **spec},
        }
    )


def test_pod_mtu_follows_the_encapsulation_in_use():
    cfg = parse_resource(
        {
            "apiVersion": "podnet.io/v1",
            "kind": "ClusterConfiguration",
            "metadata": {"name": "default"},
            "spec": {"profile": "calico"},
        }
    )
    assert pod_mtu(1500, [pool()], cfg) == 1500
    assert pod_mtu(1500, [pool(ipipMode="Always")], cfg) == 1480
    assert pod_mtu(1500, [pool(vxlanMode="CrossSubnet"), pool(ipipMode="Always", disabled=True)], cfg) == 1450
    cilium = parse_resource(
        {
            "apiVersion": "podnet.io/v1",
            "kind": "ClusterConfiguration",
            "metadata": {"name": "default"},
            "spec": {"profile": "cilium"},
        }
    )
    assert pod_mtu(1500, [pool()], cilium) == 1450
    fixed = parse_resource(
        {
            "apiVersion": "podnet.io/v1",
            "kind": "ClusterConfiguration",
            "metadata": {"name": "default"},
            "spec": {"mtu": 1400},
        }
    )
    assert pod_mtu(1500, [pool(vxlanMode="Always")], fixed) == 1400


def vnode(name: str, cidr: str, vip: str) -> NodeInfo:
    return NodeInfo(name, ipaddress.IPv4Interface(cidr), {}, vip, f"66:00:00:00:00:{vip[-1]}0")


VNODES = {
    "n1": vnode("n1", "10.77.0.11/24", "10.244.1.0"),
    "n2": vnode("n2", "10.77.0.12/24", "10.244.2.0"),
    "n3": vnode("n3", "10.77.1.13/24", "10.244.3.0"),
}
BLOCKS = [
    BlockInfo("10.244.1.0/26", "n1"),
    BlockInfo("10.244.2.0/26", "n2"),
    BlockInfo("10.244.3.0/26", "n3"),
]


def by_dst(plan):
    return {r.dst: (r.gateway, r.dev, r.onlink) for r in plan.routes}


def test_vxlan_always_routes_every_remote_block_over_the_tunnel():
    policy = EncapPolicy(pools=(("10.244.0.0/16", "Never", "Always"),))
    plan = node_routes("n1", VNODES, BLOCKS, [], policy=policy)
    assert by_dst(plan)["10.244.2.0/26"] == ("10.244.2.0", "vxlan.calico", True)
    assert by_dst(plan)["10.244.3.0/26"] == ("10.244.3.0", "vxlan.calico", True)
    assert set(plan.vxlan_peers) == {"n2", "n3"} and plan.vxlan_peers["n3"].node_ip == "10.77.1.13"
    assert plan.modes == {"vxlan"} and not plan.ipip_map


def test_ipip_crosssubnet_encapsulates_only_across_subnets():
    policy = EncapPolicy(pools=(("10.244.0.0/16", "CrossSubnet", "Never"),))
    plan = node_routes("n1", VNODES, BLOCKS, [], policy=policy)
    assert by_dst(plan)["10.244.2.0/26"] == ("10.77.0.12", "eth0", False)
    assert by_dst(plan)["10.244.3.0/26"] == ("10.77.1.13", "tunl0", True)
    assert plan.ipip_map == {"10.244.3.0/26": "10.77.1.13"}


def test_bgp_leaves_unencapsulated_routes_to_bird():
    policy = EncapPolicy(pools=(("10.244.0.0/16", "Never", "Never"),), bgp=True)
    plan = node_routes("n1", VNODES, BLOCKS, [], policy=policy)
    assert plan.bird_cidrs == {"10.244.2.0/26", "10.244.3.0/26"}
    assert [r.dst for r in plan.routes] == ["10.244.1.0/26"] and not plan.unreachable


def test_cilium_direct_routing_needs_one_subnet_and_vxlan_waits_for_the_vtep():
    plan = node_routes("n1", VNODES, BLOCKS, [], policy=EncapPolicy(profile="cilium"))
    assert by_dst(plan)["10.244.2.0/26"] == ("10.77.0.12", "eth0", False)
    assert "autoDirectNodeRoutes" in plan.unreachable["n3"]
    no_vtep = dict(VNODES, n2=NodeInfo("n2", ipaddress.IPv4Interface("10.77.0.12/24")))
    plan = node_routes("n1", no_vtep, BLOCKS, [], policy=EncapPolicy(profile="cilium", cilium_tunnel="vxlan"))
    assert "VXLAN endpoint" in plan.unreachable["n2"]
    assert by_dst(plan)["10.244.3.0/26"] == ("10.244.3.0", "cilium_vxlan", True)
