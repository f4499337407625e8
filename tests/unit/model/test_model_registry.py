"""The kind table: dispatch by apiVersion/kind, CLI name lookup, key names."""

from __future__ import annotations

import pytest

from podnet.errors import ValidationError
from podnet.model import (
    RESOURCE_TYPES,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    BGPConfiguration,
    BGPPeer,
    CalicoNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    ClusterNetworkPolicy,
    GlobalNetworkPolicy,
    IPPool,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
    ServiceAccount,
    Tier,
    lookup,
    resource_type_for,
    type_of,
)


@pytest.mark.parametrize(
    ("name", "model_cls"),
    [
        ("IPPool", IPPool),
        ("ippool", IPPool),
        ("ippools", IPPool),
        ("ippools.projectcalico.org", IPPool),
        ("netpol", NetworkPolicy),
        ("networkpolicy", NetworkPolicy),
        ("NetworkPolicy", NetworkPolicy),
        ("networkpolicies", NetworkPolicy),
        ("networkpolicies.networking.k8s.io", NetworkPolicy),
        ("networkpolicy.networking.k8s.io", NetworkPolicy),
        ("networkpolicies.projectcalico.org", CalicoNetworkPolicy),
        ("NetworkPolicy.projectcalico.org", CalicoNetworkPolicy),
        ("cnp", CiliumNetworkPolicy),
        ("ciliumnetworkpolicies", CiliumNetworkPolicy),
        ("ccnp", CiliumClusterwideNetworkPolicy),
        ("gnp", GlobalNetworkPolicy),
        ("globalnetpol", GlobalNetworkPolicy),
        ("globalnetworkpolicies", GlobalNetworkPolicy),
        ("ns", Namespace),
        ("po", Pod),
        ("no", Node),
        ("svc", Service),
        ("services", Service),
        ("bgppeer", BGPPeer),
        ("bgppeers", BGPPeer),
        ("BGPPeer", BGPPeer),
        ("bgpconfig", BGPConfiguration),
        ("bgpconfigurations", BGPConfiguration),
        (" Pods ", Pod),
        ("sa", ServiceAccount),
        ("serviceaccounts", ServiceAccount),
        ("tier", Tier),
        ("tiers.projectcalico.org", Tier),
        ("anp", AdminNetworkPolicy),
        ("adminnetworkpolicies.policy.networking.k8s.io", AdminNetworkPolicy),
        ("banp", BaselineAdminNetworkPolicy),
        ("BaselineAdminNetworkPolicy", BaselineAdminNetworkPolicy),
        ("clusternetworkpolicy", ClusterNetworkPolicy),
        ("clusternetworkpolicies.policy.networking.k8s.io", ClusterNetworkPolicy),
    ],
)
def test_lookup(name: str, model_cls: type) -> None:
    assert lookup(name).model_cls is model_cls


def test_lookup_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ValidationError) as info:
        lookup("ippol")
    message = info.value.problems[0][1]
    assert message.startswith('unknown resource type "ippol"; did you mean ippool')
    assert info.value.hint is not None and "ippools.projectcalico.org" in info.value.hint
    with pytest.raises(ValidationError) as info:
        lookup("zzz")
    assert info.value.problems == [("", 'unknown resource type "zzz"')]


def test_key_names_are_stable_and_unique() -> None:
    keys = {rt.kind + "/" + rt.group: rt.key_name for rt in RESOURCE_TYPES}
    assert keys["Namespace/"] == "namespaces"
    assert keys["Pod/"] == "pods"
    assert keys["NetworkPolicy/networking.k8s.io"] == "networkpolicies.networking.k8s.io"
    assert keys["NetworkPolicy/projectcalico.org"] == "networkpolicies.projectcalico.org"
    assert keys["IPPool/projectcalico.org"] == "ippools.projectcalico.org"
    assert keys["ClusterConfiguration/podnet.io"] == "clusterconfigurations.podnet.io"
    assert keys["ServiceAccount/"] == "serviceaccounts"
    assert keys["Tier/projectcalico.org"] == "tiers.projectcalico.org"
    assert (
        keys["AdminNetworkPolicy/policy.networking.k8s.io"] == "adminnetworkpolicies.policy.networking.k8s.io"
    )
    assert (
        keys["BaselineAdminNetworkPolicy/policy.networking.k8s.io"]
        == "baselineadminnetworkpolicies.policy.networking.k8s.io"
    )
    assert (
        keys["ClusterNetworkPolicy/policy.networking.k8s.io"]
        == "clusternetworkpolicies.policy.networking.k8s.io"
    )
    assert len(set(keys.values())) == len(RESOURCE_TYPES)


def test_every_type_is_consistent_with_its_class() -> None:
    for rt in RESOURCE_TYPES:
        assert rt.kind == rt.model_cls.KIND
        assert rt.namespaced == rt.model_cls.NAMESPACED
        assert rt.api_version == rt.versions[0]
        assert lookup(rt.key_name) is rt
        assert lookup(rt.plural) in (rt, lookup(rt.kind))  # shared bare names resolve to Kubernetes


def test_scopes() -> None:
    namespaced = {rt.kind for rt in RESOURCE_TYPES if rt.namespaced}
    assert namespaced == {"Pod", "Service", "ServiceAccount", "NetworkPolicy", "CiliumNetworkPolicy"}
    assert not lookup("gnp").namespaced
    assert lookup("networkpolicies.projectcalico.org").namespaced


def test_resource_type_for() -> None:
    assert resource_type_for("v1", "Namespace").model_cls is Namespace
    assert resource_type_for("networking.k8s.io/v1", "NetworkPolicy").model_cls is NetworkPolicy
    assert resource_type_for("projectcalico.org/v3", "NetworkPolicy").model_cls is CalicoNetworkPolicy


def test_resource_type_for_suggests_the_kind() -> None:
    with pytest.raises(ValidationError) as info:
        resource_type_for("projectcalico.org/v3", "IPPol")
    assert info.value.problems == [
        ("kind", 'apiVersion: projectcalico.org/v3 has no kind "IPPol"; did you mean IPPool?')
    ]
    with pytest.raises(ValidationError) as info:
        resource_type_for("projectcalico.org/v3", "ippool")
    assert info.value.problems[0][1].endswith("did you mean IPPool?")


def test_resource_type_for_names_the_right_api_version() -> None:
    with pytest.raises(ValidationError) as info:
        resource_type_for("projectcalico.org/v3", "Pod")
    assert info.value.problems == [
        (
            "kind",
            'apiVersion: projectcalico.org/v3 has no kind "Pod"; its kinds are IPPool, BGPConfiguration, '
            "BGPPeer, NetworkPolicy, GlobalNetworkPolicy, HostEndpoint, Tier",
        )
    ]
    assert info.value.hint == "kind Pod uses apiVersion v1"
    with pytest.raises(ValidationError) as info:
        resource_type_for("crd.projectcalico.org/v1", "IPPool")
    assert info.value.problems == [
        (
            "apiVersion",
            "unknown apiVersion 'crd.projectcalico.org/v1'; podnet accepts v1, networking.k8s.io/v1, "
            "projectcalico.org/v3, cilium.io/v2, policy.networking.k8s.io/v1alpha1, "
            "policy.networking.k8s.io/v1alpha2, podnet.io/v1",
        )
    ]
    assert info.value.hint == "kind IPPool uses apiVersion projectcalico.org/v3"


def test_type_of() -> None:
    assert (
        type_of(
            Namespace.from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}})
        ).key_name
        == "namespaces"
    )
