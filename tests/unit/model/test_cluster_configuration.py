"""podnet.io/v1 ClusterConfiguration: defaults, profile presets, validation."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.errors import ValidationError
from podnet.model import ClusterConfiguration, parse_resource


def config(spec: dict[str, Any] | None = None, name: str | None = "default") -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "podnet.io/v1", "kind": "ClusterConfiguration"}
    if name is not None:
        doc["metadata"] = {"name": name}
    if spec is not None:
        doc["spec"] = spec
    return doc


def parse(spec: dict[str, Any] | None = None) -> ClusterConfiguration:
    resource = parse_resource(config(spec))
    assert isinstance(resource, ClusterConfiguration)
    return resource


def problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return info.value.problems


def test_defaults_shown_in_output() -> None:
    assert parse().to_dict() == {
        "apiVersion": "podnet.io/v1",
        "kind": "ClusterConfiguration",
        "metadata": {"name": "default"},
        "spec": {
            "profile": "calico",
            "mtu": 0,
            "serviceClusterIPRange": "10.96.0.0/12",
            "nodePortRange": "30000-32767",
            "policyEnforcementMode": "default",
        },
    }


def test_name_defaults_to_default_and_must_be_default() -> None:
    assert parse_resource(config(name=None)).name == "default"
    assert ClusterConfiguration().name == "default"
    assert problems(config(name="prod")) == [
        ("metadata.name", 'must be "default" (podnet reads only the ClusterConfiguration named "default")')
    ]


def test_calico_profile_preset() -> None:
    effective = parse().effective()
    assert effective.profile == "calico"
    assert effective.default_ipip_mode == "Always"
    assert effective.default_vxlan_mode == "Never"
    assert effective.tunnel == "disabled"
    assert effective.kube_proxy_replacement is False
    assert effective.node_port_range == (30000, 32767)
    assert effective.tunnel_overhead() == 20
    assert effective.pod_mtu(1500) == 1480


def test_cilium_profile_preset() -> None:
    effective = parse({"profile": "cilium"}).effective()
    assert effective.tunnel == "vxlan"
    assert effective.default_vxlan_mode == "Always"
    assert effective.default_ipip_mode == "Never"
    assert effective.kube_proxy_replacement is True
    assert effective.auto_direct_node_routes is False
    assert effective.pod_mtu(1500) == 1450


def test_cilium_direct_routing() -> None:
    effective = parse({"profile": "cilium", "tunnel": "disabled", "autoDirectNodeRoutes": True}).effective()
    assert effective.default_vxlan_mode == "Never"
    assert effective.tunnel_overhead() == 0
    assert effective.pod_mtu(1500) == 1500


def test_explicit_fields_override_the_preset() -> None:
    effective = parse(
        {"defaultVXLANMode": "CrossSubnet", "kubeProxyReplacement": True, "mtu": 1400}
    ).effective()
    assert effective.default_vxlan_mode == "CrossSubnet"
    assert effective.default_ipip_mode == "Never"  # VXLAN chosen: the IPIP preset steps aside
    assert effective.kube_proxy_replacement is True
    assert effective.pod_mtu(9000) == 1400


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"profile": "flannel"}, ("spec.profile", "must be one of calico, cilium")),
        ({"mtu": 500}, ("spec.mtu", "must be 0 (detect) or between 576 and 9000")),
        ({"mtu": 9001}, ("spec.mtu", "must be 0 (detect) or between 576 and 9000")),
        ({"tunnel": "geneve"}, ("spec.tunnel", "must be one of vxlan, disabled")),
        ({"nodePortRange": "32767-30000"}, ("spec.nodePortRange", "must satisfy 1 <= lo < hi <= 65535")),
        (
            {"nodePortRange": "30000:32767"},
            ("spec.nodePortRange", "must be a range 'lo-hi' such as 30000-32767"),
        ),
        ({"nodePortRange": "0-100"}, ("spec.nodePortRange", "must satisfy 1 <= lo < hi <= 65535")),
        (
            {"serviceClusterIPRange": "10.96.0.1/12"},
            ("spec.serviceClusterIPRange", "host bits must be zero (did you mean 10.96.0.0/12?)"),
        ),
        (
            {"serviceClusterIPRange": "10.0.0.0/8"},
            ("spec.serviceClusterIPRange", "an IPv4 service range must be /12 or smaller"),
        ),
        (
            {"policyEnforcementMode": "strict"},
            ("spec.policyEnforcementMode", "must be one of default, always, never"),
        ),
        (
            {"defaultIPIPMode": "Always", "defaultVXLANMode": "Always"},
            (
                "spec.defaultVXLANMode",
                "defaultIPIPMode (Always) and defaultVXLANMode (Always) cannot both be enabled",
            ),
        ),
        (
            {"profile": "cilium", "autoDirectNodeRoutes": True},
            ("spec.autoDirectNodeRoutes", "needs tunnel: disabled (direct routes replace the VXLAN tunnel)"),
        ),
        (
            {"profile": "cilium", "defaultIPIPMode": "Always"},
            (
                "spec.defaultIPIPMode",
                "defaultIPIPMode (Always) and defaultVXLANMode (Always) cannot both be enabled",
            ),
        ),
        ({"kubeProxyReplacement": "true"}, ("spec.kubeProxyReplacement", "must be true or false")),
    ],
)
def test_validation(spec: dict[str, Any], problem: tuple[str, str]) -> None:
    assert problems(config(spec)) == [problem]


def test_cluster_name_defaults_to_default_and_stays_unset_when_not_given() -> None:
    assert parse().effective().cluster_name == "default"
    assert "clusterName" not in parse().to_dict()["spec"]  # an older agent refuses unknown fields
    named = parse_resource({**config(), "spec": {"clusterName": "lab-1"}})
    assert named.effective().cluster_name == "lab-1"
    assert problems({**config(), "spec": {"clusterName": "Lab_1"}})[0][0] == "spec.clusterName"
