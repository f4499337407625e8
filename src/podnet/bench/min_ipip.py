"""The bench's own minimal IPIP, ``min_ipip.c``: the physical reference podnet's IPIP is measured against.

A node's half of a one-peer tunnel, installed by hand in a network namespace: a ``dummy`` device
``tunl0`` for the pod routes to point at (the same hook podnet's tunnel uses, so the kernel path up
to the program is the same), ``min_ipip_encap`` on its tc egress and ``min_ipip_decap`` on the
uplink's tc ingress, and the peer (addresses, ifindex, MACs) written once into the object's only
map. Nothing of podnet's IPIP (``dataplane/ipip.py``, ``bpf/ipip.c``) is used: only the generic
compile/load/attach helpers of ``dataplane/bpf``. Pinned under ``/sys/fs/bpf/<netns>-min-ipip``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import struct
from pathlib import Path

from podnet.dataplane import bpf
from podnet.dataplane.errors import KernelError
from podnet.dataplane.netlink import Netlink

SOURCE = str(Path(__file__).with_name("min_ipip.c"))
ENCAP_PROG = "min_ipip_encap"
DECAP_PROG = "min_ipip_decap"
PEER_MAP = "min_ipip_peer"
DEVICE = "tunl0"
DEVICE_KINDS = ("dummy", "ifb")  # Ethernet-type devices that drop what reaches their xmit
TC_PREF = 1
OVERHEAD = 20
_PEER = struct.Struct("=4s4sI6s6s")  # struct peer: local, remote (network order), ifindex, MACs


def encode_peer(local_ip: str, remote_ip: str, ifindex: int, src_mac: str, dst_mac: str) -> bytes:
    """The value of ``min_ipip_peer[0]`` (``struct peer`` of ``min_ipip.c``)."""
    return _PEER.pack(
        ipaddress.IPv4Address(local_ip).packed,
        ipaddress.IPv4Address(remote_ip).packed,
        ifindex,
        bytes.fromhex(src_mac.replace(":", "")),
        bytes.fromhex(dst_mac.replace(":", "")),
    )


class MinimalIPIP:
    """One node's side: ``ensure`` builds and attaches it, ``remove`` unpins it (deleting the
    namespace takes the device and the tc hooks along)."""

    def __init__(
        self,
        netns: str,
        local_ip: str,
        remote_ip: str,
        remote_mac: str,
        *,
        uplink: str = "eth0",
        mtu: int = 1480,
        cache_dir: str = "/var/cache/podnet/bpf",
    ) -> None:
        self.netns = netns
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.remote_mac = remote_mac
        self.uplink = uplink
        self.mtu = mtu
        self.cache_dir = cache_dir
        self.pin_dir = f"{bpf.BPFFS}/{netns}-min-ipip"

    def ensure(self) -> None:
        obj = bpf.compile_program(SOURCE, self.cache_dir)
        bpf.ensure_bpffs()
        with Netlink.open(self.netns) as nl:
            for kind in DEVICE_KINDS:
                try:
                    nl.link_add(DEVICE, kind, mtu=self.mtu)
                    break
                except KernelError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                        raise
            else:
                raise bpf.BpfError(f"cannot create {DEVICE}: none of the drivers {DEVICE_KINDS}")
            nl.link_set(DEVICE, up=True)
            uplink = nl.link_get(self.uplink)
        if not uplink.mac:
            raise bpf.BpfError(f"{self.uplink} in {self.netns} has no MAC address")
        bpf.unpin_tree(self.pin_dir)
        os.makedirs(self.pin_dir)  # bpftool wants the parent of a pin path to exist on bpffs
        bpf.load_object(obj, f"{self.pin_dir}/progs", f"{self.pin_dir}/maps")
        value = encode_peer(self.local_ip, self.remote_ip, uplink.index, uplink.mac, self.remote_mac)
        with bpf.BpfMap(f"{self.pin_dir}/maps/{PEER_MAP}") as peer:
            peer.update(bytes(4), value)
        for dev, direction, prog in ((DEVICE, "egress", ENCAP_PROG), (self.uplink, "ingress", DECAP_PROG)):
            bpf.attach_tc(dev, direction, f"{self.pin_dir}/progs/{prog}", pref=TC_PREF, netns=self.netns)

    def remove(self) -> None:
        bpf.unpin_tree(self.pin_dir)
