"""``podnet capture NODE [--tunnel] [-c N] [FILTER...]``: tcpdump on a lab node's uplink or tunnel.

The seed's ``tcpdump -i tunl0 -nn -v``: with ``--tunnel`` the capture runs on the node's tunnel
device (``tunl0``, ``vxlan.calico`` or ``cilium_vxlan``, whichever the node has), so a user sees
the inner packets; without it, on ``eth0``, where the encapsulation itself is visible (IP protocol
4, or UDP 4789/8472).
"""

from __future__ import annotations

import argparse

from podnet.errors import PodnetError

TUNNEL_DEVICES = ("tunl0", "vxlan.calico", "cilium_vxlan")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("node")
    parser.add_argument("--tunnel", action="store_true", help="capture on the tunnel device, not eth0")
    parser.add_argument("-c", "--count", type=int, default=20, help="stop after N packets (default 20)")
    parser.add_argument("-w", "--write", default=None, metavar="FILE", help="write a pcap file instead")
    parser.add_argument("filter", nargs="*", help="a tcpdump filter, e.g. 'ip proto 4' or 'udp port 4789'")


def run(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from podnet.dataplane.netlink import Netlink
    from podnet.dataplane.netns import netns_exists
    from podnet.lab.cluster import lab_names

    if shutil.which("tcpdump") is None:
        raise PodnetError("tcpdump is not installed", hint="apt-get install tcpdump (scripts/setup.sh does)")
    netns = lab_names().node_ns(args.node)
    if not netns_exists(netns):
        raise PodnetError(f"no lab node {args.node!r}", hint="podnet lab status")
    device = "eth0"
    if args.tunnel:
        with Netlink.open(netns) as nl:
            found = [d for d in TUNNEL_DEVICES if nl.link_find(d) is not None]
        if not found:
            raise PodnetError(f"{args.node} has no tunnel device", hint="the lab runs without encapsulation")
        device = found[0]
        from podnet.dataplane.ipip import kernel_has_ipip

        if device == "tunl0" and not kernel_has_ipip():
            # The eBPF tunl0 hands packets to eth0 at tc egress, before any capture point on it:
            # the encapsulated packets are visible on eth0, and tcpdump decodes the inner ones.
            print("(tunl0 is an eBPF tunnel here: capturing IP protocol 4 on eth0)", flush=True)
            device, args.filter = (
                "eth0",
                ["ip", "proto", "4", *(["and", "(", *args.filter, ")"] if args.filter else [])],
            )
    cmd = ["ip", "netns", "exec", netns, "tcpdump", "-nn", "-v", "-i", device, "-c", str(args.count)]
    cmd += ["-w", args.write] if args.write else ["-l"]
    return subprocess.call(cmd + list(args.filter))
