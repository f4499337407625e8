"""The notrack rule and its sets in the rendered policy table (no kernel)."""

from __future__ import annotations

from podnet.calc.conntrack import NotrackPlan
from podnet.calc.policy import PolicyPlan
from podnet.dataplane.policy import (
    BASE_CHAINS,
    NOTRACK_RULE,
    build_rendering,
    render_diff,
    render_policy,
)

ENDPOINTS = {"np/a": ("cali1111111111a", ("10.244.1.5",))}
EMPTY = PolicyPlan({}, {}, {})
NOTRACK = NotrackPlan(pools=("10.244.0.0/16",), keep=("10.244.1.5",), backends=(("10.244.2.9", "TCP", 8080),))


def test_notrack_rule_in_raw_prerouting_after_anti_spoofing():
    prerouting = dict(BASE_CHAINS)["prerouting"]
    assert prerouting[0].startswith("type filter hook prerouting priority raw;")
    assert prerouting.index("iifname vmap @source_dispatch") < prerouting.index(NOTRACK_RULE)
    assert NOTRACK_RULE.endswith(" notrack")
    # symmetric: every test on the source has its twin on the destination
    for twin in (("@notrack_pools", 2), ("!= @notrack_keep", 2), ("!= @notrack_backends", 2)):
        assert NOTRACK_RULE.count(twin[0]) == twin[1], twin
    assert "ip saddr . meta l4proto . th sport != @notrack_backends" in NOTRACK_RULE
    assert "ip daddr . meta l4proto . th dport != @notrack_backends" in NOTRACK_RULE


def test_sets_declared_with_their_elements():
    text = render_policy(EMPTY, ENDPOINTS, None, NOTRACK)
    assert "set notrack_pools { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 }; }" in text
    assert "set notrack_keep { type ipv4_addr; elements = { 10.244.1.5 }; }" in text
    assert (
        "set notrack_backends { type ipv4_addr . inet_proto . inet_service; "
        "elements = { 10.244.2.9 . tcp . 8080 }; }" in text
    )


def test_without_a_plan_the_sets_are_empty_and_nothing_is_untracked():
    text = render_policy(EMPTY, ENDPOINTS)
    assert "set notrack_pools { type ipv4_addr; flags interval; }" in text
    assert build_rendering(EMPTY, ENDPOINTS).notrack == {
        "notrack_pools": (),
        "notrack_keep": (),
        "notrack_backends": (),
    }


def test_changes_are_element_diffs():
    old = build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, NOTRACK)) == ""
    more = NotrackPlan(
        pools=("10.244.0.0/16", "10.250.0.0/16"), keep=(), backends=(("10.244.2.9", "UDP", 53),)
    )
    assert render_diff(old, build_rendering(EMPTY, ENDPOINTS, None, more)).splitlines() == [
        "add element inet podnet_policy notrack_pools { 10.250.0.0/16 }",
        "delete element inet podnet_policy notrack_keep { 10.244.1.5 }",
        "delete element inet podnet_policy notrack_backends { 10.244.2.9 . tcp . 8080 }",
        "add element inet podnet_policy notrack_backends { 10.244.2.9 . udp . 53 }",
    ]
