"""Pod MTU: the node's underlay MTU minus the encapsulation overhead (Calico's rules).

Underlay MTU, as Felix computes it (``felix/dataplane/linux/int_dataplane.go``): the smallest MTU
among interfaces that are up and whose name matches ``UNDERLAY_IFACE_RE`` (``^((en|wl|ww|sl|ib)
[Pcopsvx].*|(eth|wlan|wwan).*)``: predictable NIC names and the classic ``eth*``). When none
matches, Felix falls back to **1460** (a conservative value that also fits GCE's 1460-byte
network), not 1500; podnet follows Felix, so a node whose NIC is called e.g. ``fabric0`` gets pod
MTU 1460 - overhead unless the operator sets the MTU. Devices podnet itself creates (``cali*``,
``lxc*``, ``vxlan.*``, ``cilium_*``) never match the pattern.

Overheads: IPIP 20, VXLAN 50 (IPv4 outer), VXLAN over IPv6 70, WireGuard 60 / 80. With several
encapsulations enabled the pod MTU is the minimum over them (``pod_mtu(1500, "ipip", "vxlan")`` ==
1450). Ignoring the overhead is the most common silent failure: TCP stalls on large segments while
ping works.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from podnet.dataplane.netlink import Link, Netlink

UNDERLAY_IFACE_RE = re.compile(r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)")
DEFAULT_UNDERLAY_MTU = 1460
MIN_MTU = 68  # the IPv4 minimum; IPv6 needs 1280

ENCAP_OVERHEAD: dict[str, int] = {
    "none": 0,
    "direct": 0,
    "ipip": 20,
    "vxlan": 50,
    "vxlan-v6": 70,
    "wireguard": 60,
    "wireguard-v6": 80,
}


def underlay_mtu_of(links: Iterable[Link]) -> int:
    """Pure part of ``detect_underlay_mtu``: smallest MTU of matching up links, else 1460."""
    mtus = [link.mtu for link in links if link.up and UNDERLAY_IFACE_RE.match(link.name)]
    return min(mtus) if mtus else DEFAULT_UNDERLAY_MTU


def detect_underlay_mtu(netns: str | None = None) -> int:
    """The underlay MTU of the node whose network namespace is ``netns`` (None: the caller's)."""
    with Netlink.open(netns) as nl:
        return underlay_mtu_of(nl.links())


def encap_overhead(encap: str) -> int:
    try:
        return ENCAP_OVERHEAD[encap]
    except KeyError:
        raise ValueError(f"unknown encapsulation {encap!r}; known: {', '.join(ENCAP_OVERHEAD)}") from None


def pod_mtu(underlay: int, *encaps: str) -> int:
    """``underlay`` minus the largest overhead among the enabled ``encaps`` (none given: no overhead)."""
    overhead = max((encap_overhead(e) for e in encaps), default=0)
    mtu = underlay - overhead
    if mtu < MIN_MTU:
        raise ValueError(f"underlay MTU {underlay} leaves {mtu} for pods after {overhead} bytes of overhead")
    return mtu
