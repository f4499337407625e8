"""GlobalNetworkPolicy on host endpoints: which subjects a policy selects (calc.host_policy through
calc.policy.compile_policies) and how the host table renders them (dataplane.host_policy)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from podnet.calc.host_endpoints import host_endpoint_plan
from podnet.calc.host_policy import host_key, host_policy_plan
from podnet.calc.policy import EGRESS, INGRESS, PodInfo, compile_policies
from podnet.dataplane.host_policy import HOST_TABLE, host_chain_name, render_host_table
from podnet.dataplane.nft import scratch_listing
from podnet.dataplane.policy import FAMILY, tier_chain_name
from podnet.model import ClusterConfiguration, parse_resource

DEFAULTS = ClusterConfiguration().spec.effective()
EDGE = {"role": "edge"}
HEPS = {"node-1-eth0": EDGE}


def gnp(name: str, **spec: Any) -> Any:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}}
    return parse_resource({**doc, "spec": spec})


ALLOW_8081 = gnp(
    "edge-web",
    selector="role == 'edge'",
    order=10,
    types=["Ingress"],
    ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [8081]}}],
)


def host_plan(*policies: Any, pods: tuple[PodInfo, ...] = (), labels: dict | None = None):  # type: ignore[no-untyped-def]
    """node-1's host endpoint on eth0 with ``policies`` compiled for it (and for ``pods``)."""
    hep = parse_resource(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "HostEndpoint",
            "metadata": {"name": "node-1-eth0", "labels": EDGE},
            "spec": {"node": "node-1", "interfaceName": "eth0"},
        }
    )
    plan = host_endpoint_plan("node-1", [hep], DEFAULTS.failsafe_inbound, DEFAULTS.failsafe_outbound)

    def compile_hosts(hosts):  # type: ignore[no-untyped-def]
        return compile_policies(pods, pods, {"default": {}}, policies, hosts=hosts)

    policy = host_policy_plan(plan.interfaces, HEPS if labels is None else labels, compile_hosts)
    return plan.__class__(**{**plan.__dict__, "policy": policy})


def tiers(plan, key: str, direction: str) -> list[tuple[str, tuple[str, ...], str]]:  # type: ignore[no-untyped-def]
    return [(t.tier, t.policies, t.default_action) for t in plan.tiers(key, direction)]


# ------------------------------------------------------------------------------------------ selection


def test_selector_on_host_endpoint_labels_in_tier_order_and_types() -> None:
    other = gnp("edge-first", selector="has(role)", order=1, ingress=[{"action": "Pass"}])
    plan = host_plan(ALLOW_8081, other)
    assert tiers(plan, host_key("eth0"), INGRESS) == [
        ("default", ("GlobalNetworkPolicy:edge-first", "GlobalNetworkPolicy:edge-web"), "Deny")
    ]
    assert tiers(plan, host_key("eth0"), EGRESS) == []  # types: Ingress only
    assert tiers(plan, host_key("eth0", forwarded=True), INGRESS) == []  # no applyOnForward


def test_selector_that_does_not_match_and_scoped_policies_select_no_host_endpoint() -> None:
    plan = host_plan(
        gnp("web", selector="role == 'web'", ingress=[{"action": "Allow"}]),
        gnp("in-ns", namespaceSelector="all()", ingress=[{"action": "Allow"}]),
        gnp("by-sa", serviceAccountSelector="all()", ingress=[{"action": "Allow"}]),
    )
    assert tiers(plan, host_key("eth0"), INGRESS) == []
    assert plan.policy is not None and plan.policy.errors == {}


def test_apply_on_forward_selects_forwarded_traffic_too() -> None:
    policy = gnp("fwd", selector="all()", applyOnForward=True, types=["Egress"], egress=[{"action": "Allow"}])
    plan = host_plan(policy)
    for forwarded in (False, True):
        assert tiers(plan, host_key("eth0", forwarded), EGRESS) == [
            ("default", ("GlobalNetworkPolicy:fwd",), "Deny")
        ]


@pytest.mark.parametrize("flag", ["preDNAT", "doNotTrack"])
def test_pre_dnat_and_do_not_track_fail_closed_on_hosts_and_never_select_pods(flag: str) -> None:
    policy = gnp(
        flag.lower(), selector="all()", applyOnForward=True, ingress=[{"action": "Allow"}], **{flag: True}
    )
    pod = PodInfo("default", "p", {"role": "edge"}, ("10.244.1.5",), "node-1")
    plan = host_plan(policy, pods=(pod,))
    assert plan.policy is not None
    key = f"GlobalNetworkPolicy:{flag.lower()}"
    assert f"does not run {flag} host policy" in plan.policy.errors[key]
    assert plan.policy.policies[key].fail_closed
    assert tiers(plan, host_key("eth0"), INGRESS) == [("default", (key,), "Deny")]
    assert plan.policy.endpoints["default/p"].ingress == ()  # a pod: never selected


# ----------------------------------------------------------------------------------------- rendering


def chain(script: str, name: str) -> list[str]:
    body = script.split(f"    chain {name} {{\n", 1)[1].split("\n    }", 1)[0]
    return [line.strip() for line in body.splitlines()]


def test_render_failsafe_then_tiers_then_default_deny() -> None:
    plan = host_plan(ALLOW_8081)
    script = render_host_table(plan)
    hep_in = chain(script, host_chain_name("eth0", "in"))
    first_tier = tier_chain_name(host_key("eth0"), INGRESS, "default")
    assert hep_in.index("meta l4proto tcp th dport 22 accept") < hep_in.index(f"goto {first_tier}")
    assert hep_in[-1] == f"goto {first_tier}"
    tier = chain(script, first_tier)
    assert tier[0].startswith("jump pol-") and tier[-1].endswith("drop") and "pnd:" in tier[-1]
    policy = chain(script, tier[0].split()[1])
    assert "meta l4proto tcp th dport 8081 counter accept" in policy[0]
    hep_out = chain(script, host_chain_name("eth0", "out"))
    assert hep_out[-1].startswith("counter log group") and '"pnh:' in hep_out[-1]  # no egress policy
    assert "hook forward" not in script  # no applyOnForward policy


def test_render_pass_beyond_last_tier_meets_the_host_default_deny() -> None:
    plan = host_plan(gnp("pass", selector="all()", ingress=[{"action": "Pass"}]))
    script = render_host_table(plan)
    tier = chain(script, tier_chain_name(host_key("eth0"), INGRESS, "default"))
    assert tier[1].startswith("meta mark & 0x00100000 == 0x00100000") and '"pnh:' in tier[1]


def test_render_apply_on_forward_chains() -> None:
    policy = gnp(
        "fwd",
        selector="role == 'edge'",
        applyOnForward=True,
        types=["Ingress"],
        ingress=[{"action": "Allow", "source": {"nets": ["192.0.2.0/24"]}}],
    )
    script = render_host_table(host_plan(policy))
    forward = chain(script, "forward_in")
    assert forward[0] == "type filter hook forward priority filter; policy accept;"
    assert forward[2] == 'iifname { "cali*", "lxc*" } accept'
    assert forward[3] == f'iifname "eth0" goto {tier_chain_name(host_key("eth0", True), INGRESS, "default")}'
    assert "chain forward_out" not in script  # no Egress applyOnForward policy: forwarded out allowed
    assert "192.0.2.0/24" in script  # the policy's set lives in the host table


def test_render_pre_dnat_drops_after_failsafe() -> None:
    policy = gnp("pd", selector="all()", applyOnForward=True, preDNAT=True, ingress=[{"action": "Allow"}])
    script = render_host_table(host_plan(policy))
    tier = chain(script, tier_chain_name(host_key("eth0"), INGRESS, "default"))
    assert tier[0].startswith("counter log group") and '"pne:' in tier[0] and tier[0].endswith("drop")
    assert "accept" not in " ".join(tier)


@pytest.mark.skipif(os.geteuid() != 0, reason="nft in a scratch network namespace needs root")
def test_nft_accepts_the_rendering() -> None:
    policies = [
        ALLOW_8081,
        gnp("pass", selector="all()", order=5, ingress=[{"action": "Pass", "protocol": "UDP"}]),
        gnp(
            "fwd",
            selector="all()",
            applyOnForward=True,
            ingress=[{"action": "Deny", "source": {"nets": ["192.0.2.0/24"]}}],
            egress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["80:90"]}}],
        ),
        gnp("pd", selector="all()", applyOnForward=True, preDNAT=True, ingress=[{"action": "Allow"}]),
    ]
    listing = scratch_listing(render_host_table(host_plan(*policies)), FAMILY, HOST_TABLE)
    chains = {item["chain"]["name"] for item in listing["nftables"] if "chain" in item}
    assert {"input", "output", "forward_in", "forward_out"} <= chains


def test_host_drops_are_explained_by_the_merged_plan() -> None:
    from podnet.calc.host_policy import with_hosts
    from podnet.dataplane.policy import deny_prefix, deny_reasons

    pods = compile_policies((), (), {}, [ALLOW_8081])
    assert with_hosts(pods, None) is pods
    merged = with_hosts(pods, host_plan(ALLOW_8081).policy)
    reasons = deny_reasons(merged)
    end_of_tier = reasons[deny_prefix(host_key("eth0"), INGRESS, "default")]
    assert [(p.kind, p.name, p.rule) for p in end_of_tier] == [("GlobalNetworkPolicy", "edge-web", -1)]
