"""HostEndpoint: model validation, the pure plan (calc.host_endpoints), the nft rendering and the cache."""

from __future__ import annotations

import json

import pytest

from podnet.calc.cluster import ClusterCache
from podnet.calc.host_endpoints import host_endpoint_plan
from podnet.dataplane.host_policy import HOST_QUALIFIED, host_chain_name, render_host_table
from podnet.datastore.keys import KeyLayout
from podnet.model import (
    ClusterConfiguration,
    DocumentsError,
    HostEndpoint,
    lookup,
    parse_resource,
    parse_yaml,
)

DEFAULTS = ClusterConfiguration().spec.effective()


def hep(name: str, node: str = "node-1", **spec: object) -> HostEndpoint:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "HostEndpoint",
        "metadata": {"name": name},
        "spec": {"node": node, **spec},
    }
    return parse_resource(doc)


def plan_for(*heps: HostEndpoint, **kwargs: object):  # type: ignore[no-untyped-def]
    return host_endpoint_plan("node-1", heps, DEFAULTS.failsafe_inbound, DEFAULTS.failsafe_outbound, **kwargs)


# ----------------------------------------------------------------------------------------- model


def test_felix_failsafe_defaults() -> None:
    assert DEFAULTS.failsafe_inbound == tuple(
        (p, n, None)
        for p, n in [
            ("TCP", 22),
            ("UDP", 68),
            ("TCP", 179),
            ("TCP", 2379),
            ("TCP", 2380),
            ("TCP", 5473),
            ("TCP", 6443),
            ("TCP", 6666),
            ("TCP", 6667),
        ]
    )
    assert DEFAULTS.failsafe_outbound[:2] == (("UDP", 53, None), ("UDP", 67, None))
    assert "failsafeInboundHostPorts" not in ClusterConfiguration().to_dict()["spec"]  # stays unset


def test_failsafe_ports_configurable_in_calico_format() -> None:
    (config,) = parse_yaml(
        "apiVersion: podnet.io/v1\nkind: ClusterConfiguration\nspec:\n"
        "  failsafeInboundHostPorts: [{protocol: TCP, port: 2222, net: 10.0.0.0/8}]\n"
        "  failsafeOutboundHostPorts: []\n",
        "x",
    )
    effective = config.spec.effective()
    assert effective.failsafe_inbound == (("TCP", 2222, "10.0.0.0/8"),)
    assert effective.failsafe_outbound == ()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"interfaceName": "eth0", "port": 1}, "spec.port"),
        ({"node": "node-1", "interfaceName": "x" * 16}, "spec.interfaceName"),
        ({"node": "node-1"}, "spec.interfaceName"),
        ({"node": "node-1", "expectedIPs": ["nope"]}, "spec.expectedIPs[0]"),
        ({"node": "Bad_Node", "interfaceName": "eth0"}, "spec.node"),
        ({"interfaceName": "eth0"}, "spec.node"),
    ],
)
def test_host_endpoint_validation_names_the_field(spec: dict, field: str) -> None:
    doc = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "HostEndpoint",
        "metadata": {"name": "h"},
        "spec": spec,
    }
    with pytest.raises(DocumentsError) as err:
        parse_yaml(json.dumps(doc), "x")
    assert field in str(err.value)


def test_host_endpoint_registered() -> None:
    assert (
        lookup("hep").kind == "HostEndpoint"
        and lookup("hostendpoints.projectcalico.org").plural == "hostendpoints"
    )
    assert not lookup("hep").namespaced


# ------------------------------------------------------------------------------------------ calc


def test_plan_only_this_nodes_host_endpoints() -> None:
    plan = plan_for(
        hep("a", interfaceName="eth0"),
        hep("b", node="node-2", interfaceName="eth1"),
        node_addresses=["10.0.0.2", None, "fd00::1"],
        local_pod_addresses=["10.244.0.5", "fd00::5"],
    )
    assert plan.interfaces == {"eth0": "a"}
    assert plan.tunnel_peers == ("10.0.0.2",) and plan.local_pods == ("10.244.0.5",)
    assert plan.failsafe_in == DEFAULTS.failsafe_inbound


def test_no_host_endpoint_means_inactive() -> None:
    assert not plan_for(hep("b", node="node-2", interfaceName="*")).active


def test_expected_ips_find_the_interface() -> None:
    plan = plan_for(
        hep("a", expectedIPs=["10.0.0.1"]),
        interface_addresses={"eth0": ["10.0.0.1"], "cali1": ["10.0.0.1"], "eth1": ["10.1.0.1"]},
    )
    assert plan.interfaces == {"eth0": "a"}
    missing = plan_for(hep("m", expectedIPs=["10.9.9.9"]), interface_addresses={"eth0": ["10.0.0.1"]})
    assert not missing.active and "m" in missing.errors


def test_workload_interface_is_not_a_host_endpoint_and_first_name_wins() -> None:
    plan = plan_for(
        hep("w", interfaceName="cali12345"), hep("z", interfaceName="eth0"), hep("y", interfaceName="eth0")
    )
    assert plan.interfaces == {"eth0": "y"} and "w" in plan.errors


# ---------------------------------------------------------------------------------------- render


def test_render_failsafe_before_default_deny() -> None:
    plan = plan_for(
        hep("a", interfaceName="eth0"), hep("all", interfaceName="*"), node_addresses=["10.0.0.2"]
    )
    script = render_host_table(plan)
    assert script.startswith(f"add table {HOST_QUALIFIED}\ndelete table {HOST_QUALIFIED}\n")
    chain_in = script.split(f"chain {host_chain_name('eth0', 'in')} {{")[1].split("}\n", 1)[0]
    lines = [line.strip() for line in chain_in.strip().splitlines()]
    assert lines[0] == "ct state established,related accept"
    assert (
        "meta l4proto tcp th dport 22 accept" in lines and "meta l4proto udp th dport 53 accept" not in lines
    )
    assert "ip saddr @tunnel_peers ip protocol ipip accept" in lines
    assert lines[-1].startswith('counter log group 7 prefix "pnh:') and lines[-1].endswith(':in:a" drop')
    chain_out = script.split(f"chain {host_chain_name('eth0', 'out')} {{")[1].split("}\n", 1)[0]
    assert "meta l4proto udp th dport 53 accept" in chain_out
    base = script.split("chain input {")[1]
    named = base.index(f'iifname "eth0" jump {host_chain_name("eth0", "in")}')
    wildcard = base.index(f"        jump {host_chain_name('*', 'in')}")
    assert base.index("iif lo accept") < base.index('"cali*"') < named < wildcard


def test_render_without_host_endpoint_deletes_the_table() -> None:
    assert render_host_table(plan_for()) == f"add table {HOST_QUALIFIED}\ndelete table {HOST_QUALIFIED}\n"


def test_failsafe_net_restricts_the_peer() -> None:
    plan = host_endpoint_plan("node-1", [hep("a", interfaceName="eth0")], [("TCP", 22, "10.0.0.0/8")], [])
    assert "ip saddr 10.0.0.0/8 meta l4proto tcp th dport 22 accept" in render_host_table(plan)


# ----------------------------------------------------------------------------------------- cache


def test_cache_marks_policy_dirty_for_host_endpoints() -> None:
    layout = KeyLayout()
    cache = ClusterCache(layout)
    rtype = lookup("hep")
    key = layout.resource(rtype.key_name, "a")
    doc = hep("a", interfaceName="eth0").to_dict()
    assert cache.update(key, json.dumps(doc).encode()) == "policy"
    assert list(cache.host_endpoints) == ["a"]
    assert cache.update(key, None) == "policy" and not cache.host_endpoints
