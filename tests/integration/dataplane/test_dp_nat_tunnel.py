"""natOutgoing's table and the Cilium tunnel's untracked UDP port, in a real namespace: the
masquerade makes the kernel track the node's connections, except the tunnel's packets."""

from __future__ import annotations

import socket
import subprocess

import pytest

from podnet.dataplane.nat import TABLE, TUNNEL_TABLE, NatManager
from podnet.dataplane.netns import in_netns
from podnet.dataplane.nft import list_table

pytestmark = [pytest.mark.root]


def tracked_udp_ports(netns: str) -> set[str]:
    """Destination ports of the UDP entries in the namespace's conntrack table (original direction)."""
    text = subprocess.run(
        ["nsenter", f"--net={netns}", "cat", "/proc/net/nf_conntrack"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ports = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "udp":
            ports.add(next(t for t in fields if t.startswith("dport=")).split("=", 1)[1])
    return ports


def send_udp(netns: str, port: int) -> None:
    with in_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", port))


def test_the_tunnel_port_is_untracked_and_the_rest_still_tracked(make_netns) -> None:  # type: ignore[no-untyped-def]
    netns = make_netns("nat")
    nat = NatManager(netns)
    assert nat.apply(["10.244.0.0/16"], ["10.244.0.0/16"], [8472])
    send_udp(netns, 8472)
    send_udp(netns, 8473)  # the positive control: the table does track the node's traffic
    assert tracked_udp_ports(netns) == {"8473"}
    assert not nat.apply(["10.244.0.0/16"], ["10.244.0.0/16"], [8472])  # unchanged: nothing written
    nat.apply(["10.244.0.0/16"], ["10.244.0.0/16"])  # the Calico profile: nothing untracked
    assert list_table("ip", TUNNEL_TABLE, netns) is None and list_table("ip", TABLE, netns) is not None
    send_udp(netns, 8472)
    assert "8472" in tracked_udp_ports(netns)
    assert not nat.apply(["10.244.0.0/16"], ["10.244.0.0/16"])  # unchanged: nothing written
