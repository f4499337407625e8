"""The Cilium profile's ipcache (calc.ipcache): pods, nodes, the API server and policy CIDRs, and
what a longest-prefix lookup finds."""

from __future__ import annotations

from podnet.calc.ipcache import cidr_identities, ipcache, lookup
from podnet.calc.policy import PodInfo
from podnet.model.identity import LOCAL_CIDR_BASE

PODS = [
    PodInfo("shop", "web", {"app": "web"}, ("10.244.1.5",), "node-1"),
    PodInfo("shop", "api", {"app": "api"}, ("10.244.2.7", "fd00::7"), "node-2"),
    PodInfo("shop", "new", {"app": "new"}, ("10.244.1.9",), "node-1"),  # no number yet
]
NODES = {"node-1": ["192.168.1.1", "10.244.1.1"], "node-2": ["192.168.1.2"]}


def test_entries_and_lookups():
    cidrs = cidr_identities(["10.244.0.0/16", "0.0.0.0/0", "192.168.1.0/24"])
    entries = ipcache(PODS, {"shop/web": 300, "shop/api": 301}, NODES, "node-1", ["192.168.1.10"], cidrs)
    assert entries["10.244.1.5/32"].identity == 300
    assert entries["fd00::7/128"].source == "pod shop/api"
    assert entries["192.168.1.1/32"].identity == 1  # this node: host
    assert entries["10.244.1.1/32"].identity == 1
    assert entries["192.168.1.2/32"].identity == 6  # remote-node
    assert entries["192.168.1.10/32"].identity == 7  # kube-apiserver
    assert lookup(entries, "10.244.1.5") == 300
    # CIDR rules do not select pods or nodes: their /32 wins; a pod without a number falls to the CIDR
    assert lookup(entries, "192.168.1.2") == 6
    assert lookup(entries, "10.244.1.9") == cidrs["10.244.0.0/16"]
    assert lookup(entries, "192.168.1.77") == cidrs["192.168.1.0/24"]
    assert lookup(entries, "8.8.8.8") == cidrs["0.0.0.0/0"]
    assert lookup(ipcache(PODS, {}, {}, "node-1"), "8.8.8.8") == 2  # nothing: world


def test_cidr_identities_stable_local_and_distinct():
    one = cidr_identities(["10.0.0.0/8", "10.1.0.0/16"])
    two = cidr_identities(["10.1.0.0/16", "172.16.0.0/12", "10.0.0.0/8", "10.0.0.1/8"])
    assert one["10.1.0.0/16"] == two["10.1.0.0/16"]  # the same number whatever else is there
    assert set(two) == {"10.0.0.0/8", "10.1.0.0/16", "172.16.0.0/12"}  # canonical prefixes
    assert all(n > LOCAL_CIDR_BASE for n in two.values())
    many = cidr_identities(f"10.{i // 256}.{i % 256}.0/24" for i in range(5000))
    assert len(set(many.values())) == 5000
