"""Pod MTU: the underlay's minus the largest overhead of any encapsulation in use (Calico's rule).

A pod MTU that ignores the tunnel overhead is the most common silent failure users report: large
packets fragment or vanish. ``ClusterConfiguration.spec.mtu`` (non-zero) overrides the calculation.
"""

from __future__ import annotations

from collections.abc import Iterable

from podnet.model import ClusterConfiguration, IPPool

IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50


def encapsulation_overhead(pools: Iterable[IPPool], config: ClusterConfiguration | None) -> int:
    overhead = 0
    for pool in pools:
        if pool.spec.disabled:
            continue
        if pool.spec.vxlan_mode != "Never":
            overhead = max(overhead, VXLAN_OVERHEAD)
        if pool.spec.ipip_mode != "Never":
            overhead = max(overhead, IPIP_OVERHEAD)
    if config is not None:
        settings = config.effective()
        if settings.profile == "cilium" and settings.tunnel == "vxlan":
            overhead = max(overhead, VXLAN_OVERHEAD)
    return overhead


def pod_mtu(underlay_mtu: int, pools: Iterable[IPPool], config: ClusterConfiguration | None) -> int:
    if config is not None and config.spec.mtu:
        return config.spec.mtu
    return underlay_mtu - encapsulation_overhead(pools, config)
