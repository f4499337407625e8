"""Pure parts of pod wiring: names, MACs, validation, the endpoint's node routes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.dataplane.endpoint import (
    CALICO_HOST_MAC,
    EndpointSpec,
    WiredEndpoint,
    endpoint_routes,
    host_ifname_for,
    host_mac,
    host_sysctls,
    pod_mac,
    stable_mac,
    validate_spec,
)
from podnet.dataplane.routes import Route
from podnet.errors import ValidationError

SPEC = EndpointSpec(
    netns="/run/netns/pod",
    ifname="eth0",
    host_ifname="calic440f455693",
    addresses=("10.244.1.5",),
    mtu=1450,
    scheme="calico",
    gateway="169.254.1.1",
)


def test_host_ifname_is_calicos_rule():
    assert host_ifname_for("cali", "default", "nginx") == "calic440f455693"
    assert host_ifname_for("lxc", "kube-system", "coredns-abc") == "lxc3d5d6ab04b5"
    assert host_ifname_for("cali", "default", "nginx") != host_ifname_for("cali", "default.nginx", "")
    with pytest.raises(ValueError, match="exceeds 15"):
        host_ifname_for("podnet", "default", "nginx")


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=60))
def test_host_ifname_fits_ifnamsiz(namespace, pod):
    name = host_ifname_for("cali", namespace, pod)
    assert len(name) == 15 and name.isascii()


@given(st.text(max_size=50))
def test_stable_mac_is_unicast_locally_administered(seed):
    mac = stable_mac(seed)
    first = int(mac[:2], 16)
    assert first & 0x01 == 0 and first & 0x02 == 0x02
    assert mac == stable_mac(seed) and len(mac) == 17


def test_macs_per_scheme():
    assert host_mac(SPEC) == CALICO_HOST_MAC
    cilium = dataclasses.replace(SPEC, scheme="cilium", host_ifname="lxc3d5d6ab04b5")
    assert host_mac(cilium) != CALICO_HOST_MAC and host_mac(cilium) == host_mac(cilium)
    assert pod_mac(SPEC) != pod_mac(dataclasses.replace(SPEC, host_ifname="cali0000000000a"))


def test_host_sysctls():
    assert host_sysctls("calico", "cali1") == {
        "net/ipv4/conf/cali1/proxy_arp": "1",
        "net/ipv4/neigh/cali1/proxy_delay": "0",
        "net/ipv4/conf/cali1/forwarding": "1",
        "net/ipv4/conf/cali1/route_localnet": "1",
    }
    assert host_sysctls("cilium", "lxc1")["net/ipv4/conf/lxc1/rp_filter"] == "0"


def test_validate_spec_canonicalises_addresses():
    assert validate_spec(dataclasses.replace(SPEC, addresses=("10.244.1.5/32", "10.244.1.6"))) == (
        "10.244.1.5",
        "10.244.1.6",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scheme": "flannel"}, "scheme"),
        ({"ifname": "a-name-that-is-too-long"}, "ifname"),
        ({"host_ifname": "cali/1"}, "host_ifname"),
        ({"mtu": 50}, "mtu"),
        ({"addresses": ()}, "addresses"),
        ({"addresses": ("10.244.1.0/24",)}, "addresses[0]"),
        ({"addresses": ("fd00::5",)}, "addresses[0]"),
        ({"addresses": ("bogus",)}, "addresses[0]"),
        ({"gateway": "10.244.1.5"}, "gateway"),
        ({"gateway": "nope"}, "gateway"),
        ({"netns": ""}, "netns"),
    ],
)
def test_validate_spec_names_the_field(change, field):
    with pytest.raises(ValidationError) as info:
        validate_spec(dataclasses.replace(SPEC, **change))
    assert field in [path for path, _ in info.value.problems]


def test_endpoint_routes_is_the_one_definition():
    wired = WiredEndpoint(
        "cali1",
        CALICO_HOST_MAC,
        "eth0",
        "02:00:00:00:00:01",
        1450,
        ("10.244.1.5", "10.244.1.6"),
        "169.254.1.1",
    )
    assert endpoint_routes(wired) == (
        Route("10.244.1.5/32", dev="cali1", scope="link"),
        Route("10.244.1.6/32", dev="cali1", scope="link"),
    )
