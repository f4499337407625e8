"""The pure parts of the footprint bench: which labs run, their specs, and the route-line parser."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.bench import footprint


def test_every_profile_has_a_lab_and_quick_keeps_one_per_style() -> None:
    everything = list(footprint.PROFILE_LABS)
    assert footprint.footprint_profiles(everything, quick=False) == everything
    assert footprint.footprint_profiles(everything, quick=True) == ["calico-bgp", "cilium-vxlan"]
    assert footprint.footprint_profiles(["cilium-direct", "calico-ipip"], quick=True) == [
        "cilium-direct",
        "calico-ipip",
    ]
    assert footprint.footprint_profiles(["calico-ipip", "calico-ipip"], quick=False) == ["calico-ipip"]


def test_lab_specs() -> None:
    bgp = footprint.lab_spec("calico-bgp")
    assert (bgp.profile, bgp.encapsulation, bgp.bgp, bgp.nodes) == ("calico", "none", True, 3)
    cross = footprint.lab_spec("calico-ipip-crosssubnet", "10.99.0.0/16")
    assert (cross.encapsulation, cross.subnets, cross.underlay) == ("ipip-crosssubnet", 2, "10.99.0.0/16")
    assert footprint.lab_spec("cilium-vxlan").profile == "cilium"
    with pytest.raises(ValueError, match="unknown profile"):
        footprint.lab_spec("flannel")


@pytest.mark.parametrize(
    ("line", "dst"),
    [
        ("10.244.92.192/26 via 10.77.0.13 dev eth0 proto bird metric 32 ", "10.244.92.192/26"),
        ("10.244.92.192/26 via 10.244.92.193 dev vxlan.calico proto 80 onlink ", "10.244.92.192/26"),
        ("10.244.1.7 via 10.77.0.12 dev tunl0 proto 80 onlink ", "10.244.1.7/32"),
        ("Deleted 10.244.92.192/26 via 10.77.0.13 dev eth0 proto bird metric 32 ", None),
        ("blackhole 10.244.92.192/26 proto 80 ", None),
        ("10.244.92.194 dev cali1234 scope link ", None),
        ("default via 10.77.0.1 dev eth0 ", None),
        ("local 10.244.92.193 dev cilium_host table local proto kernel scope host src 10.244.92.193 ", None),
        ("", None),
    ],
)
def test_parse_route_line(line: str, dst: str | None) -> None:
    got = footprint.parse_route_line(line)
    assert got == (ipaddress.IPv4Network(dst) if dst else None)


def test_quick_sizes_fit_the_policy_workload() -> None:
    from podnet.bench.policy_scale import generate_workload, plan_changes

    for sizes in (footprint.QUICK, footprint.FULL):
        workload = generate_workload(
            sizes.pods, sizes.policies, sizes.rules_per_policy, nodes=footprint.NODES
        )
        assert len(plan_changes(workload, sizes.changes)) == sizes.changes
