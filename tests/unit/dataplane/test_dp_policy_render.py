"""The nftables rendering of a compiled PolicyPlan: full table text, names, deny ids, diffs (no kernel)."""

from __future__ import annotations

import re
import struct
from dataclasses import replace

from podnet.calc.policy import (
    CompiledPolicy,
    EndpointPolicy,
    EndpointTier,
    Match,
    OrderedRule,
    PolicyPlan,
    PortMatch,
    Provenance,
    Side,
)
from podnet.dataplane.nflog import Drop, parse_nflog_packet
from podnet.dataplane.policy import (
    MAX_PREFIX,
    PASS_MARK,
    chain_name,
    deny_prefix,
    deny_reasons,
    diff_policy,
    fail_closed_prefix,
    log_reasons,
    match_lines,
    policy_chain_name,
    render_policy,
    rule_prefix,
    tier_chain_name,
)


def prov(
    name: str, direction: str, rule: int, kind: str = "NetworkPolicy", tier: str = "default"
) -> Provenance:
    return Provenance(kind, "default" if kind == "NetworkPolicy" else "", name, direction, rule, tier)


CLIENTS = OrderedRule(
    "Allow",
    Match(
        src=Side(sets=("pn-clients",)),
        dst=Side(ports=(PortMatch("TCP", 80, 80), PortMatch("UDP", 5000, 5010))),
    ),
    prov("allow-clients", "ingress", 2),
)


def knp(name: str, ingress: tuple[OrderedRule, ...] | None, egress: tuple[OrderedRule, ...] | None = None):
    return CompiledPolicy(
        f"default/{name}", "NetworkPolicy", "default", name, "default", 1000.0, ingress, egress
    )


def plan_with(web_set: frozenset[str], *, egress_isolated: bool = False) -> PolicyPlan:
    policies = {
        "default/allow-clients": knp("allow-clients", (CLIENTS,)),
        "default/deny-all": knp("deny-all", ()),
        "default/no-egress": knp("no-egress", None, ()),
    }
    web = EndpointPolicy(
        "default/web",
        ("10.244.1.5",),
        ingress=(EndpointTier("default", ("default/allow-clients", "default/deny-all"), "Deny"),),
    )
    db_egress = (EndpointTier("default", ("default/no-egress",), "Deny"),) if egress_isolated else ()
    db = EndpointPolicy("default/db", ("10.244.1.6",), egress=db_egress)
    used = {"default/allow-clients", "default/deny-all"} | (
        {"default/no-egress"} if egress_isolated else set()
    )
    return PolicyPlan(
        sets={"pn-clients": web_set | {"fd00::7/128"}},
        endpoints={"default/web": web, "default/db": db},
        errors={},
        policies={k: v for k, v in policies.items() if k in used},
    )


ENDPOINTS = {
    "default/web": ("cali1111111111a", ("10.244.1.5",)),
    "default/db": ("cali2222222222b", ("10.244.1.6",)),
}


def test_full_render_text():
    text = render_policy(plan_with(frozenset({"10.244.1.7/32", "10.244.1.8/32"})), ENDPOINTS)
    web_in, web_eg, db_eg = (
        chain_name("default/web", "ingress"),
        chain_name("default/web", "egress"),
        chain_name("default/db", "egress"),
    )
    assert text.startswith("add table inet podnet_policy\ndelete table inet podnet_policy\n")
    assert (
        "set pn-clients { type ipv4_addr; flags interval; elements = { 10.244.1.7/32, 10.244.1.8/32 }; }"
        in text
    )
    assert "fd00::7" not in text  # IPv4 only
    fwd = text[text.index("chain forward {") :]
    assert "type filter hook forward priority filter; policy accept;" in fwd
    assert fwd.index("ct state established,related accept") < fwd.index("ct state invalid drop")
    assert fwd.index("ct state invalid drop") < fwd.index("iifname vmap @egress_dispatch")
    ingress_base = text[text.index("chain forward_ingress {") :]
    assert "type filter hook forward priority filter + 1; policy accept;" in ingress_base
    assert "oifname vmap @ingress_dispatch" in ingress_base
    assert (
        f'map egress_dispatch {{ type ifname : verdict; elements = {{ "cali1111111111a" : jump {web_eg}, '
        f'"cali2222222222b" : jump {db_eg} }}; }}'
    ) in text
    assert (
        "map ingress_dispatch { type ifname : verdict; "
        f'elements = {{ "cali1111111111a" : jump {web_in} }}; }}' in text
    )
    # the policy's own chain: its rules with ports, counters and provenance comments
    pol = policy_chain_name("default/allow-clients", "ingress")
    body = text[text.index(f"chain {pol} {{") :]
    assert (
        "ip saddr @pn-clients meta l4proto tcp th dport 80 counter accept "
        'comment "knp:default/allow-clients:ingress:2"' in body
    )
    assert "ip saddr @pn-clients meta l4proto udp th dport 5000-5010 counter accept" in body
    # the endpoint's tier chain jumps to each selecting policy with rules, then the end-of-tier deny
    tier = tier_chain_name("default/web", "ingress", "default")
    assert f"chain {web_in} {{\n        goto {tier}\n    }}" in text
    tier_body = text[text.index(f"chain {tier} {{") :].split("}", 1)[0]
    assert tier_body.split("\n")[1:-1] == [
        f"        jump {pol}",
        f'        counter log group 7 prefix "{deny_prefix("default/web", "ingress")}" drop',
    ]
    assert policy_chain_name("default/deny-all", "ingress") not in text  # no rules: no chain
    # anti-spoofing for every local pod, ingress chain only where isolated
    assert "ip saddr != { 10.244.1.6 } counter log group 7" in text
    assert chain_name("default/db", "ingress") not in text
    # identifiers are valid and short
    for name in re.findall(r"chain (\S+) \{", text):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name)


def test_egress_isolation_goes_to_its_tier_and_logs():
    text = render_policy(plan_with(frozenset(), egress_isolated=True), ENDPOINTS)
    tier = tier_chain_name("default/db", "egress", "default")
    assert f"goto {tier}" in text
    assert f'prefix "{deny_prefix("default/db", "egress")}" drop' in text
    assert "set pn-clients { type ipv4_addr; flags interval; }" in text  # empty set, no elements


def test_render_is_deterministic():
    plan = plan_with(frozenset({"10.244.1.8/32", "10.244.1.7/32"}))
    reordered = dict(reversed(list(ENDPOINTS.items())))
    assert render_policy(plan, ENDPOINTS) == render_policy(plan, reordered)


def test_deny_reasons():
    reasons = deny_reasons(plan_with(frozenset(), egress_isolated=True))
    web = deny_prefix("default/web", "ingress")
    assert reasons[web] == [prov("allow-clients", "ingress", -1), prov("deny-all", "ingress", -1)]
    assert reasons[deny_prefix("default/db", "egress")] == [prov("no-egress", "egress", -1)]
    long_key = "n" * 63 + "/" + "p" * 253
    assert len(deny_prefix(long_key, "ingress")) <= MAX_PREFIX
    assert deny_prefix(long_key, "ingress") != deny_prefix(long_key, "egress")
    assert deny_prefix("a/b", "ingress", "t" * 60) != deny_prefix("a/b", "ingress", "t" * 59 + "u")


def _ordered_plan(rules: tuple[OrderedRule, ...], tiers: tuple[EndpointTier, ...]) -> PolicyPlan:
    policies = {
        "GlobalNetworkPolicy:ops": CompiledPolicy(
            "GlobalNetworkPolicy:ops", "GlobalNetworkPolicy", "", "ops", "ops", 10.0, rules, None
        ),
        "GlobalNetworkPolicy:broken": CompiledPolicy(
            "GlobalNetworkPolicy:broken",
            "GlobalNetworkPolicy",
            "",
            "broken",
            "ops",
            20.0,
            (),
            None,
            "bad",
            True,
        ),
        "default/allow-clients": knp("allow-clients", (CLIENTS,)),
    }
    web = EndpointPolicy("default/web", ("10.244.1.5",), ingress=tiers)
    return PolicyPlan({"pn-clients": frozenset(), "pn-ops": frozenset()}, {"default/web": web}, {}, policies)


def test_actions_and_tiers():
    gnp = "GlobalNetworkPolicy"
    deny = OrderedRule("Deny", Match(src=Side(sets=("pn-ops",))), prov("ops", "ingress", 0, gnp, "ops"))
    log = OrderedRule("Log", Match(protocol="TCP"), prov("ops", "ingress", 1, gnp, "ops"))
    passing = OrderedRule("Pass", Match(), prov("ops", "ingress", 2, gnp, "ops"))
    tiers = (
        EndpointTier("ops", ("GlobalNetworkPolicy:ops",), "Pass"),
        EndpointTier("default", ("default/allow-clients",), "Deny"),
    )
    plan = _ordered_plan((deny, log, passing), tiers)
    text = render_policy(plan, {"default/web": ENDPOINTS["default/web"]})
    pol = text[text.index(f"chain {policy_chain_name('GlobalNetworkPolicy:ops', 'ingress')} {{") :]
    lines = [line.strip() for line in pol.split("}", 1)[0].splitlines()[1:] if line.strip()]
    assert lines == [
        f'ip saddr @pn-ops counter log group 7 prefix "{rule_prefix(deny.provenance, "Deny")}" drop '
        'comment "gnp:ops:ops:ingress:0"',
        f'meta l4proto tcp counter log group 7 prefix "{rule_prefix(log.provenance, "Log")}" '
        'comment "gnp:ops:ops:ingress:1"',
        f'meta mark set meta mark | {PASS_MARK:#010x} counter return comment "gnp:ops:ops:ingress:2"',
    ]
    ops = tier_chain_name("default/web", "ingress", "ops")
    default = tier_chain_name("default/web", "ingress", "default")
    body = text[text.index(f"chain {ops} {{") :].split("}", 1)[0]
    assert f"meta mark & {PASS_MARK:#010x} == {PASS_MARK:#010x}" in body and f"goto {default}" in body
    assert body.strip().splitlines()[-1].strip() == f"goto {default}"  # defaultAction Pass
    reasons = deny_reasons(plan)
    assert reasons[rule_prefix(deny.provenance, "Deny")] == [deny.provenance]
    assert log_reasons(plan) == {rule_prefix(log.provenance, "Log"): log.provenance}
    # a policy failing closed drops in place of its jump
    broken = _ordered_plan((), (EndpointTier("ops", ("GlobalNetworkPolicy:broken",), "Pass"),))
    text = render_policy(broken, {"default/web": ENDPOINTS["default/web"]})
    prefix = fail_closed_prefix("GlobalNetworkPolicy:broken", "ingress")
    assert f'counter log group 7 prefix "{prefix}" drop' in text
    assert deny_reasons(broken)[prefix] == [prov("broken", "ingress", -1, gnp, "ops")]


def test_match_lines_calico_fields():
    match = Match(
        protocol="TCP",
        ip_version=4,
        src=Side(sets=("pn-a", "pn-b"), not_sets=("pn-c",)),
        dst=Side(
            ports=(PortMatch("TCP", 80, 80), PortMatch("TCP", 6040, 6050)),
            port_sets=("pp-web",),
            not_ports=(PortMatch("TCP", 81, 81),),
        ),
    )
    assert match_lines(match) == [
        "meta nfproto ipv4 meta l4proto tcp ip saddr @pn-a ip saddr @pn-b ip saddr != @pn-c th dport != 81 "
        "meta l4proto tcp th dport { 80, 6040-6050 }",
        "meta nfproto ipv4 meta l4proto tcp ip saddr @pn-a ip saddr @pn-b ip saddr != @pn-c th dport != 81 "
        "ip daddr . meta l4proto . th dport @pp-web",
    ]
    icmp = Match(protocol="ICMP", icmp=(8, None), not_icmp=(3, 4))
    assert match_lines(icmp) == ["meta l4proto icmp icmp type 8 icmp type . icmp code != { 3 . 4 }"]
    assert match_lines(Match(not_protocol="17")) == ["meta l4proto != 17"]
    assert match_lines(Match(dst=Side(never=True))) == []


def test_diff_only_set_elements():
    old = plan_with(frozenset({"10.244.1.7/32"}))
    new = plan_with(frozenset({"10.244.1.8/32"}))
    assert diff_policy(old, ENDPOINTS, new, ENDPOINTS).splitlines() == [
        "delete element inet podnet_policy pn-clients { 10.244.1.7/32 }",
        "add element inet podnet_policy pn-clients { 10.244.1.8/32 }",
    ]
    assert diff_policy(old, ENDPOINTS, old, ENDPOINTS) == ""


def test_diff_declares_a_new_set_with_its_members():
    """A new set comes with its elements in one ``add set`` (an ``add element`` makes nft 1.0.6 read
    every set of the table back first: ~0.1 s at 1,200 sets)."""
    old = plan_with(frozenset({"10.244.1.7/32"}))
    new = replace(old, sets={**old.sets, "pn-more": frozenset({"10.244.2.0/24", "10.244.1.9/32"})})
    lines = diff_policy(old, ENDPOINTS, new, ENDPOINTS).splitlines()
    assert lines == [
        "add set inet podnet_policy pn-more { type ipv4_addr; flags interval; "
        "elements = { 10.244.1.9/32, 10.244.2.0/24 }; }"
    ]


def test_diff_new_chains_exist_before_rules_jump_to_them():
    old = plan_with(frozenset())
    new = plan_with(frozenset(), egress_isolated=True)
    db_eg = chain_name("default/db", "egress")
    tier = tier_chain_name("default/db", "egress", "default")
    lines = diff_policy(old, ENDPOINTS, new, ENDPOINTS).splitlines()
    assert lines[0] == f"add chain inet podnet_policy {tier}"
    assert lines.index(f"flush chain inet podnet_policy {db_eg}") > 0
    assert f"add rule inet podnet_policy {db_eg} goto {tier}" in lines


def test_diff_endpoint_removal():
    old = plan_with(frozenset())
    only_db = {"default/db": ENDPOINTS["default/db"]}
    lines = diff_policy(old, ENDPOINTS, old, only_db).splitlines()
    web = [
        chain_name("default/web", "egress"),
        chain_name("default/web", "ingress"),
        tier_chain_name("default/web", "ingress", "default"),
        chain_name("default/web", "source"),
    ]
    gone = sorted([*web, policy_chain_name("default/allow-clients", "ingress")])
    assert lines[:3] == [
        'delete element inet podnet_policy source_dispatch { "cali1111111111a" }',
        'delete element inet podnet_policy egress_dispatch { "cali1111111111a" }',
        'delete element inet podnet_policy ingress_dispatch { "cali1111111111a" }',
    ]
    # every removed chain is flushed before any is deleted (they jump to each other)
    assert lines[3:] == [f"flush chain inet podnet_policy {n}" for n in gone] + [
        f"delete chain inet podnet_policy {n}" for n in gone
    ]


def test_parse_nflog_packet():
    ip_header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes([10, 244, 1, 13]), bytes([10, 244, 1, 12])
    )
    tcp = struct.pack("!HH", 40000, 9090) + b"\0" * 16
    prefix = deny_prefix("default/web", "ingress").encode() + b"\0"
    body = struct.pack("!BBH", 2, 0, 7) + _attr(10, prefix) + _attr(9, ip_header + tcp)
    drop = parse_nflog_packet(body)
    assert drop == Drop(
        deny_prefix("default/web", "ingress"), "10.244.1.13", "10.244.1.12", "TCP", 9090, 40, 40000
    )
    assert parse_nflog_packet(struct.pack("!BBH", 10, 0, 7) + _attr(9, b"\x60" + b"\0" * 39)) is None  # IPv6


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-(4 + len(value)) % 4)
