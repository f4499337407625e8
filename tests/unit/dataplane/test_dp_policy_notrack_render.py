"""The notrack rule, its set and the untracked accept in the rendered policy table (no kernel)."""

from __future__ import annotations

from podnet.calc.conntrack import NotrackPlan
from podnet.calc.policy import PolicyPlan
from podnet.dataplane.policy import (
    BASE_CHAINS,
    NOTRACK_RULE,
    UNTRACKED_ACCEPT,
    build_rendering,
    render_diff,
    render_policy,
)

ENDPOINTS = {"np/a": ("cali1111111111a", ("10.244.1.5",))}
EMPTY = PolicyPlan({}, {}, {})
NOTRACK = NotrackPlan(pods=("10.244.0.0/24", "10.244.1.0/30"), tracked=("10.244.1.4",))


def test_notrack_rule_in_raw_prerouting_after_anti_spoofing():
    prerouting = dict(BASE_CHAINS)["prerouting"]
    assert prerouting[0].startswith("type filter hook prerouting priority raw;")
    assert prerouting.index("iifname vmap @source_dispatch") < prerouting.index(NOTRACK_RULE)
    assert NOTRACK_RULE == "ip saddr @notrack_pods ip daddr @notrack_pods notrack"  # symmetric


def test_forward_chains_accept_untracked_first_input_does_not():
    chains = dict(BASE_CHAINS)
    for name in ("forward", "forward_ingress"):
        assert chains[name][1] == UNTRACKED_ACCEPT == "ct state untracked accept", name
    assert UNTRACKED_ACCEPT not in chains["input"]


def test_set_declared_with_its_elements():
    text = render_policy(EMPTY, ENDPOINTS, None, NOTRACK)
    assert (
        "set notrack_pods { type ipv4_addr; flags interval; elements = { 10.244.0.0/24, 10.244.1.0/30 }; }"
        in text
    )
    assert "set notrack_pods { type ipv4_addr; flags interval; }" in render_policy(EMPTY, ENDPOINTS)
    assert build_rendering(EMPTY, ENDPOINTS).notrack == {"notrack_pods": ()}


def test_changes_are_element_diffs():
    old = build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)) == ""
    more = NotrackPlan(pods=("10.244.0.0/23",))
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, more)).splitlines() == [
        "delete element inet podnet_policy notrack_pods { 10.244.0.0/24, 10.244.1.0/30 }",
        "add element inet podnet_policy notrack_pods { 10.244.0.0/23 }",
    ]
