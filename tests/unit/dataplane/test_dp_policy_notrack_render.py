"""The notrack chain, its set and the untracked accept in the rendered policy table (no kernel)."""

from __future__ import annotations

from podnet.calc.conntrack import NotrackPlan
from podnet.calc.policy import PolicyPlan
from podnet.dataplane.policy import (
    BASE_CHAINS,
    NOTRACK_CHAIN,
    NOTRACK_JUMP,
    UNTRACKED_ACCEPT,
    build_rendering,
    notrack_chain,
    render_diff,
    render_policy,
)

ENDPOINTS = {"np/a": ("cali1111111111a", ("10.244.1.5",))}
EMPTY = PolicyPlan({}, {}, {})
NOTRACK = NotrackPlan(pools=("10.244.0.0/16",), tracked=("10.244.1.4", "10.244.1.9"))


def test_notrack_jump_in_raw_prerouting_after_anti_spoofing():
    prerouting = dict(BASE_CHAINS)["prerouting"]
    assert prerouting[0].startswith("type filter hook prerouting priority raw;")
    assert prerouting.index("iifname vmap @source_dispatch") < prerouting.index(NOTRACK_JUMP)
    assert f"jump {NOTRACK_CHAIN}" == NOTRACK_JUMP


def test_rule_is_symmetric_prefix_compares_then_hash_lookups():
    rule = (
        "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16"
        " ip saddr != @notrack_tracked ip daddr != @notrack_tracked notrack"
    )
    assert notrack_chain(NOTRACK) == (rule,)
    two = NotrackPlan(pools=("10.244.0.0/16", "10.246.0.0/16"))
    assert notrack_chain(two)[0].startswith(
        "ip saddr { 10.244.0.0/16, 10.246.0.0/16 } ip daddr { 10.244.0.0/16, "
    )
    assert notrack_chain(NotrackPlan()) == ()  # no pools: nothing untracked
    assert notrack_chain(None) == ()


def test_forward_chains_accept_untracked_first_input_does_not():
    chains = dict(BASE_CHAINS)
    for name in ("forward", "forward_ingress"):
        assert chains[name][1] == UNTRACKED_ACCEPT == "ct state untracked accept", name
    assert UNTRACKED_ACCEPT not in chains["input"]


def test_set_is_a_hash_set_declared_with_its_elements():
    text = render_policy(EMPTY, ENDPOINTS, None, NOTRACK)
    assert "set notrack_tracked { type ipv4_addr; elements = { 10.244.1.4, 10.244.1.9 }; }" in text
    assert f"chain {NOTRACK_CHAIN} {{\n        ip saddr 10.244.0.0/16 " in text
    bare = render_policy(EMPTY, ENDPOINTS)
    assert "set notrack_tracked { type ipv4_addr; }" in bare
    assert f"chain {NOTRACK_CHAIN} {{\n    }}" in bare  # the jump's target exists, empty
    assert build_rendering(EMPTY, ENDPOINTS).notrack == {"notrack_tracked": ()}


def test_changes_are_element_diffs_and_a_pool_change_refills_the_chain():
    old = build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)) == ""
    moved = NotrackPlan(pools=NOTRACK.pools, tracked=("10.244.1.4", "10.244.2.7"))
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, moved)).splitlines() == [
        "delete element inet podnet_policy notrack_tracked { 10.244.1.9 }",
        "add element inet podnet_policy notrack_tracked { 10.244.2.7 }",
    ]
    wider = NotrackPlan(pools=("10.244.0.0/15",), tracked=NOTRACK.tracked)
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, wider)).splitlines() == [
        f"flush chain inet podnet_policy {NOTRACK_CHAIN}",
        f"add rule inet podnet_policy {NOTRACK_CHAIN} {notrack_chain(wider)[0]}",
    ]
