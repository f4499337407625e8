"""Egress isolation covers a pod's traffic to its OWN node (found by the lab truth-table suite).

Packets from a pod to an address of its node are not forwarded, they meet the INPUT hook; before the
fix, the table hooked only FORWARD, so an egress-isolated pod reached its node (its IP, host-network
pods, node services) freely while the same traffic to another node was dropped. Kubernetes: "When a
pod is isolated for egress, the only allowed connections from the pod are those allowed by the egress
list ... Reply traffic for those allowed connections will also be implicitly allowed." The ruleset
is traced by hand here (no kernel): which chain a pod's packet to its node meets, in which order.
"""

from __future__ import annotations

import re

from podnet.calc.policy import CompiledPolicy, EndpointPolicy, EndpointTier, PolicyPlan
from podnet.dataplane.policy import (
    INPUT_CHAIN,
    Rendering,
    build_rendering,
    chain_name,
    deny_prefix,
    render_diff,
    render_policy,
    tier_chain_name,
)

KEY = "b/tool"
ENDPOINTS = {KEY: ("cali0123456789a", ("10.244.1.5",))}


def plan(egress_isolated: bool) -> PolicyPlan:
    policy = CompiledPolicy("b/deny-out", "NetworkPolicy", "b", "deny-out", "default", 1000.0, None, ())
    tiers = (EndpointTier("default", (policy.key,), "Deny"),) if egress_isolated else ()
    endpoint = EndpointPolicy(key=KEY, addresses=("10.244.1.5",), egress=tiers)
    return PolicyPlan(sets={}, endpoints={KEY: endpoint}, errors={}, policies={policy.key: policy})


def chain_body(text: str, name: str) -> list[str]:
    match = re.search(rf"^    chain {re.escape(name)} \{{\n(.*?)^    \}}", text, re.S | re.M)
    assert match, f"no chain {name}"
    return [line.strip() for line in match.group(1).splitlines()]


def test_input_hook_sends_pod_traffic_to_its_node_through_the_egress_chains() -> None:
    text = render_policy(plan(egress_isolated=True), ENDPOINTS)
    body = chain_body(text, "input")
    assert body[0] == "type filter hook input priority filter; policy accept;"
    # replies to connections the node opened (kubelet probes) pass first
    assert body.index("ct state established,related accept") < body.index("iifname vmap @egress_dispatch")
    # the dispatch map is the forward chain's: the pod's own egress chain, then its tiers' deny
    eg = chain_name(KEY, "egress")
    assert f'"cali0123456789a" : jump {eg}' in text
    tier = tier_chain_name(KEY, "egress", "default")
    assert chain_body(text, eg)[-1] == f"goto {tier}"
    assert chain_body(text, tier)[-1] == f'counter log group 7 prefix "{deny_prefix(KEY, "egress")}" drop'
    # the static base chain: allows accept, and input's accept policy admits what no tier selects
    assert body == list(INPUT_CHAIN)


def test_input_hook_filters_only_pods_and_only_link_control_is_exempt() -> None:
    body = chain_body(render_policy(plan(egress_isolated=False), ENDPOINTS), "input")
    # the node's own traffic from elsewhere meets this hook too: nothing that would touch it
    assert not any("invalid" in line or "oifname" in line or line.endswith(" drop") for line in body)
    (exempt,) = [line for line in body if line.startswith("icmpv6 type")]
    assert body.index(exempt) < body.index("iifname vmap @egress_dispatch")
    for kind in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit"):
        assert kind in exempt
    assert "echo-request" not in exempt  # a ping to the node is traffic, not link control


def test_input_chain_is_static_partial_syncs_leave_it_alone() -> None:
    before = build_rendering(plan(egress_isolated=False), ENDPOINTS)
    after = build_rendering(plan(egress_isolated=True), ENDPOINTS)
    script = render_diff(before, after)
    assert "input" not in script and script  # only the endpoint chain changes
    assert render_diff(Rendering(), Rendering()) == ""
