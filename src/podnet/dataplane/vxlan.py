"""The VXLAN tunnel: one kernel VXLAN device per node, no multicast, no learning.

Calico's scheme (``vxlan.calico``, VNI 4096, UDP 4789; the Cilium profile uses ``cilium_vxlan``
on 8472): each node's device has a tunnel address (from IPAM) and a MAC; for every remote node
the agent programs

    neighbour  <remote tunnel IP> lladdr <remote VTEP MAC> dev vxlan.calico   (no ARP over the tunnel)
    fdb        <remote VTEP MAC> dst <remote node IP> dev vxlan.calico        (where to send the frame)
    route      <remote block> via <remote tunnel IP> dev vxlan.calico onlink  (calc/routes.py)

so nothing is learned or flooded. :meth:`VXLANTunnel.sync` diffs against the kernel and changes
only what differs, so a restart with the same peers writes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from podnet.dataplane.netlink import Netlink

VXLAN_OVERHEAD = 50


def vtep_mac(node: str) -> str:
    """A stable, locally administered unicast MAC for a node's VTEP."""
    digest = hashlib.sha1(f"podnet-vtep/{node}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x66, *digest[:5]))


@dataclass(frozen=True)
class VTEP:
    tunnel_ip: str  # the remote device's address
    mac: str
    node_ip: str  # the remote node's underlay address


def vtep_tables(peers: Mapping[str, VTEP]) -> tuple[dict[str, str], dict[str, str]]:
    """What the device must hold for ``peers`` (pure): FDB ``{VTEP MAC: node IP}`` and permanent
    neighbours ``{tunnel IP: VTEP MAC}``, MACs lower-case."""
    fdb = {p.mac.lower(): p.node_ip for p in peers.values()}
    neigh = {p.tunnel_ip: p.mac.lower() for p in peers.values()}
    return fdb, neigh


class VXLANTunnel:
    def __init__(
        self,
        name: str = "vxlan.calico",
        *,
        vni: int = 4096,
        port: int = 4789,
        uplink: str = "eth0",
        local_ip: str,
        mtu: int,
        netns: str | None = None,
    ) -> None:
        self.name, self.vni, self.port, self.uplink = name, vni, port, uplink
        self.local_ip, self.mtu, self.netns = local_ip, mtu, netns

    def ensure(self, tunnel_ip: str, mac: str) -> None:
        """Create the device if missing (or re-create it if its VNI/port differ), then make sure
        its MAC, MTU, address and state are right. Idempotent; an existing device is kept."""
        with Netlink.open(self.netns) as nl:
            link = nl.link_find(self.name)
            if link is None:
                uplink = nl.link_get(self.uplink)
                nl.link_add(
                    self.name,
                    "vxlan",
                    vxlan_id=self.vni,
                    vxlan_port=self.port,
                    vxlan_local=self.local_ip,
                    vxlan_learning=0,
                    vxlan_link=uplink.index,
                    address=mac,
                )
                link = nl.link_get(self.name)
            if (link.mac or "").lower() != mac.lower():
                nl.link_set(self.name, mac=mac)
            if link.mtu != self.mtu:
                nl.link_set(self.name, mtu=self.mtu)
            wanted = f"{tunnel_ip}/32"
            if wanted not in {a.cidr for a in nl.addrs(self.name)}:
                nl.addr_add(self.name, wanted)
            nl.link_set(self.name, up=True)

    def sync(self, peers: dict[str, VTEP]) -> dict[str, int]:
        """Neighbours and FDB entries for exactly ``peers`` (keyed by remote node name)."""
        done = {"added": 0, "deleted": 0}
        with Netlink.open(self.netns) as nl:
            want_fdb, want_neigh = vtep_tables(peers)
            have_neigh = {
                n.address: (n.lladdr or "").lower() for n in nl.neighs(self.name) if n.state == "permanent"
            }
            have_fdb = {e.lladdr.lower(): e.dst for e in nl.fdbs(self.name)}
            for mac, dst in want_fdb.items():
                if have_fdb.get(mac) != dst:
                    nl.fdb_replace(self.name, mac, dst)
                    done["added"] += 1
            for ip, mac in want_neigh.items():
                if have_neigh.get(ip) != mac:
                    nl.neigh_replace(self.name, ip, mac)
                    done["added"] += 1
            for mac, dst in have_fdb.items():
                if mac not in want_fdb and mac != "00:00:00:00:00:00":
                    nl.fdb_del(self.name, mac, dst, missing_ok=True)
                    done["deleted"] += 1
            for ip in have_neigh:
                if ip not in want_neigh:
                    nl.neigh_del(self.name, ip, missing_ok=True)
                    done["deleted"] += 1
        return done

    def remove(self) -> None:
        with Netlink.open(self.netns) as nl:
            nl.link_del(self.name, missing_ok=True)
