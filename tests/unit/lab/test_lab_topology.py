"""Topology arithmetic: addresses, subnets, gateways (pure)."""

from __future__ import annotations

import json

import pytest

from podnet.lab.naming import LabError, LabNames
from podnet.lab.topology import LabSpec, build_topology, node_subnet


def test_default_one_subnet_three_nodes():
    t = build_topology()
    assert t.fabric_ns == "pn-fabric" and t.router is None
    assert [(s.bridge, s.cidr, s.gateway) for s in t.subnets] == [("br0", "10.77.0.0/24", None)]
    assert [(n.name, n.netns, n.attachments[0].address) for n in t.nodes] == [
        ("node-1", "pn-node-1", "10.77.0.11/24"),
        ("node-2", "pn-node-2", "10.77.0.12/24"),
        ("node-3", "pn-node-3", "10.77.0.13/24"),
    ]
    assert all(n.gateway is None and n.ip_forward for n in t.nodes)
    assert (t.etcd.netns, t.etcd.ip, t.etcd.gateway) == ("pn-etcd", "10.77.0.2", None)
    assert t.etcd_endpoint == "http://10.77.0.2:2379"
    assert t.mtu == 1500
    assert t.namespaces[0] == ("pn-fabric", "fabric")
    assert [k for _, k in t.namespaces] == ["fabric", "etcd", "ext", "node", "node", "node"]
    assert (t.external.netns, t.external.ip) == ("pn-ext", "10.77.0.3")  # a client outside the cluster


def test_two_subnets_split_nodes_and_route_via_router():
    t = build_topology(LabSpec(nodes=5, subnets=2))
    assert [(s.bridge, s.cidr, s.gateway) for s in t.subnets] == [
        ("br0", "10.77.0.0/24", "10.77.0.1"),
        ("br1", "10.77.1.0/24", "10.77.1.1"),
    ]
    assert [(n.name, n.subnet, n.ip, n.gateway) for n in t.nodes] == [
        ("node-1", 0, "10.77.0.11", "10.77.0.1"),
        ("node-2", 0, "10.77.0.12", "10.77.0.1"),
        ("node-3", 0, "10.77.0.13", "10.77.0.1"),
        ("node-4", 1, "10.77.1.14", "10.77.1.1"),
        ("node-5", 1, "10.77.1.15", "10.77.1.1"),
    ]
    r = t.router
    assert r is not None and r.ip_forward and r.netns == "pn-router"
    assert [(a.ifname, a.port, a.bridge, a.address) for a in r.attachments] == [
        ("eth0", "router-0", "br0", "10.77.0.1/24"),
        ("eth1", "router-1", "br1", "10.77.1.1/24"),
    ]
    assert t.etcd.gateway == "10.77.0.1"
    assert [k for _, k in t.namespaces] == ["fabric", "router", "etcd", "ext"] + ["node"] * 5


def test_node_subnet_halves():
    spec = LabSpec(nodes=4, subnets=2)
    assert [node_subnet(spec, i) for i in range(1, 5)] == [0, 0, 1, 1]
    assert [node_subnet(LabSpec(nodes=3), i) for i in range(1, 4)] == [0, 0, 0]


def test_custom_underlay_and_prefix():
    t = build_topology(LabSpec(nodes=2, subnets=2, underlay="10.123.0.0/16"), LabNames("pnt0001-"))
    assert t.nodes[0].ip == "10.123.0.11" and t.nodes[1].ip == "10.123.1.12"
    assert t.nodes[0].netns == "pnt0001-node-1" and t.fabric_ns == "pnt0001-fabric"
    assert t.etcd.ip == "10.123.0.2"


def test_all_addresses_unique_and_ports_fit():
    t = build_topology(LabSpec(nodes=244, subnets=2))
    ips = [a.ip for h in t.hosts for a in h.attachments]
    assert len(ips) == len(set(ips))
    assert all(len(a.port) <= 15 and len(a.ifname) <= 15 for h in t.hosts for a in h.attachments)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nodes": 0},
        {"nodes": 245},
        {"subnets": 3},
        {"subnets": 2, "nodes": 1},
        {"profile": "flannel"},
        {"encapsulation": "gre"},
        {"underlay": "10.77.0.0/24"},
        {"underlay": "nonsense"},
        {"mtu": 100},
    ],
)
def test_invalid_specs(kwargs):
    with pytest.raises(LabError):
        LabSpec(**kwargs)


def test_to_dict_is_json_and_spec_round_trips():
    t = build_topology(LabSpec(nodes=2, subnets=2, profile="cilium", encapsulation="vxlan"))
    doc = json.loads(json.dumps(t.to_dict()))
    assert doc["etcd"]["endpoint"] == "http://10.77.0.2:2379"
    assert [n["ip"] for n in doc["nodes"]] == ["10.77.0.11", "10.77.1.12"]
    assert LabSpec.from_dict(doc["spec"]) == t.spec
    with pytest.raises(LabError):
        t.node("node-9")
