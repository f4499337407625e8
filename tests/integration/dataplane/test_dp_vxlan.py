"""The VXLAN tunnel between two nodes: pod blocks routed over it, standard VXLAN on the wire."""

from __future__ import annotations

import subprocess
import time

from conftest import icmp_ping
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.routes import Route, RouteManager
from podnet.dataplane.vxlan import VTEP, VXLANTunnel, vtep_mac


def test_vxlan_carries_pod_traffic_and_sync_is_idempotent(two_nodes):
    a, b = two_nodes
    tunnels = {}
    for me, other, tip, otip, block, pod in (
        (a, b, "10.244.1.0", "10.244.2.0", "10.244.2.0/24", "10.244.1.7"),
        (b, a, "10.244.2.0", "10.244.1.0", "10.244.1.0/24", "10.244.2.7"),
    ):
        t = VXLANTunnel(local_ip=me.ip, mtu=1450, netns=me.netns)
        t.ensure(tip, vtep_mac(me.netns))
        t.sync({"other": VTEP(otip, vtep_mac(other.netns), other.ip)})
        tunnels[me.netns] = t
        RouteManager(me.netns).apply([Route(block, otip, "vxlan.calico", onlink=True)])
        with Netlink.open(me.netns) as nl:  # a "pod" address inside the node's own block (no dummy here)
            nl.addr_add("lo", f"{pod}/32")
    # A capture on b's underlay sees UDP 4789 between the node addresses while a pings b's pod.
    cap = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            b.netns.rsplit("/", 1)[-1],
            "tcpdump",
            "-nn",
            "-c",
            "1",
            "-i",
            "eth0",
            "udp port 4789",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    assert icmp_ping(a.netns, "10.244.2.7", size=1372, df=True)  # 1400-byte packets fit the 1450 MTU
    out, _ = cap.communicate(timeout=10)
    assert f"{a.ip}" in out and f"{b.ip}.4789" in out and "VXLAN" in out.upper()
    # The same peers again: nothing to change.
    assert tunnels[a.netns].sync({"other": VTEP("10.244.2.0", vtep_mac(b.netns), b.ip)}) == {
        "added": 0,
        "deleted": 0,
    }
    # A peer that goes away leaves no neighbour or FDB entry behind.
    assert tunnels[a.netns].sync({}) == {"added": 0, "deleted": 2}
    assert not icmp_ping(a.netns, "10.244.2.7", timeout=0.5)
