import ipaddress

from podnet.calc.cluster import BlockInfo, NodeInfo
from podnet.calc.endpoints import EndpointRecord
from podnet.calc.mtu import pod_mtu
from podnet.calc.routes import RouteSpec, node_routes
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
