"""Underlay MTU detection rules and pod MTU arithmetic (Calico's), without a kernel."""

from __future__ import annotations

import pytest

from podnet.dataplane.mtu import DEFAULT_UNDERLAY_MTU, UNDERLAY_IFACE_RE, pod_mtu, underlay_mtu_of
from podnet.dataplane.netlink import Link


def link(name: str, mtu: int, up: bool = True) -> Link:
    return Link(index=1, name=name, kind=None, mac=None, mtu=mtu, up=up, operstate="UP")


@pytest.mark.parametrize(
    "name", ["eth0", "ens3", "enp0s31f6", "eno1", "wlp2s0", "wlan0", "wwan0", "ibp1s0", "enx00e0"]
)
def test_underlay_names_match(name):
    assert UNDERLAY_IFACE_RE.match(name)


@pytest.mark.parametrize(
    "name",
    [
        "lo",
        "cali1234567890a",
        "lxc12",
        "vxlan.calico",
        "tunl0",
        "cilium_host",
        "docker0",
        "br0",
        "en0",
        "ib0",
    ],
)
def test_podnet_and_virtual_devices_do_not(name):
    assert not UNDERLAY_IFACE_RE.match(name)


def test_smallest_up_underlay_mtu_wins():
    links = [link("eth0", 1500), link("ens4", 9000), link("eth1", 1400, up=False), link("cali1", 1200)]
    assert underlay_mtu_of(links) == 1500


def test_no_underlay_falls_back_to_calicos_1460():
    assert underlay_mtu_of([link("lo", 65536), link("fabric0", 1500)]) == DEFAULT_UNDERLAY_MTU == 1460


def test_pod_mtu():
    assert pod_mtu(1500) == 1500
    assert pod_mtu(1500, "none") == 1500
    assert pod_mtu(1500, "ipip") == 1480
    assert pod_mtu(1500, "vxlan") == 1450
    assert pod_mtu(1500, "ipip", "vxlan") == 1450  # the minimum over enabled encapsulations
    assert pod_mtu(9000, "vxlan-v6") == 8930
    assert pod_mtu(1460, "wireguard") == 1400
    with pytest.raises(ValueError, match="unknown encapsulation 'gre'"):
        pod_mtu(1500, "gre")
    with pytest.raises(ValueError, match="leaves"):
        pod_mtu(100, "vxlan")
