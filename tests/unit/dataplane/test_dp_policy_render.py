"""The nftables rendering of a compiled PolicyPlan: full table text, names, deny ids, diffs (no kernel)."""

from __future__ import annotations

import re
import struct

from podnet.calc.policy import CompiledRule, EndpointPolicy, PolicyPlan, PortMatch, Provenance
from podnet.dataplane.policy import (
    MAX_PREFIX,
    Drop,
    chain_name,
    deny_prefix,
    deny_reasons,
    diff_policy,
    parse_nflog_packet,
    render_policy,
)


def prov(name: str, direction: str, rule: int) -> Provenance:
    return Provenance("NetworkPolicy", "default", name, direction, rule)


def plan_with(web_set: frozenset[str], *, egress_isolated: bool = False) -> PolicyPlan:
    web = EndpointPolicy(
        key="default/web",
        addresses=("10.244.1.5",),
        ingress_isolated=True,
        egress_isolated=False,
        ingress=(
            CompiledRule(
                "ingress",
                "pn-clients",
                (PortMatch("TCP", 80, 80), PortMatch("UDP", 5000, 5010)),
                prov("allow-clients", "ingress", 2),
            ),
        ),
        egress=(),
        ingress_deniers=(prov("allow-clients", "ingress", -1), prov("deny-all", "ingress", -1)),
        egress_deniers=(),
    )
    db = EndpointPolicy(
        key="default/db",
        addresses=("10.244.1.6",),
        ingress_isolated=False,
        egress_isolated=egress_isolated,
        ingress=(),
        egress=(),
        ingress_deniers=(),
        egress_deniers=(prov("no-egress", "egress", -1),) if egress_isolated else (),
    )
    return PolicyPlan(
        sets={"pn-clients": web_set | {"fd00::7/128"}},
        endpoints={"default/web": web, "default/db": db},
        errors={},
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
    assert "type filter hook forward priority filter; policy accept;" in text
    fwd = text[text.index("chain forward") :]
    assert fwd.index("ct state established,related accept") < fwd.index("ct state invalid drop")
    assert fwd.index("ct state invalid drop") < fwd.index("iifname vmap @egress_dispatch")
    assert "oifname vmap @ingress_dispatch" in fwd
    assert (
        f'map egress_dispatch {{ type ifname : verdict; elements = {{ "cali1111111111a" : jump {web_eg}, '
        f'"cali2222222222b" : jump {db_eg} }}; }}'
    ) in text
    assert (
        "map ingress_dispatch { type ifname : verdict; "
        f'elements = {{ "cali1111111111a" : jump {web_in} }}; }}' in text
    )
    # rules with ports, counters and provenance comments; the deny log at the end of the chain
    assert (
        "ip saddr @pn-clients meta l4proto tcp th dport 80 counter accept "
        'comment "knp:default/allow-clients:ingress:2"' in text
    )
    assert "ip saddr @pn-clients meta l4proto udp th dport 5000-5010 counter accept" in text
    assert f'counter log group 7 prefix "{deny_prefix("default/web", "ingress")}" drop' in text
    # anti-spoofing for every local pod, ingress chain only where isolated
    assert "ip saddr != { 10.244.1.6 } counter log group 7" in text
    assert chain_name("default/db", "ingress") not in text
    # identifiers are valid and short
    for name in re.findall(r"chain (\S+) \{", text):
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", name)


def test_egress_isolation_returns_and_logs():
    text = render_policy(plan_with(frozenset(), egress_isolated=True), ENDPOINTS)
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


def test_diff_only_set_elements():
    old = plan_with(frozenset({"10.244.1.7/32"}))
    new = plan_with(frozenset({"10.244.1.8/32"}))
    assert diff_policy(old, ENDPOINTS, new, ENDPOINTS).splitlines() == [
        "delete element inet podnet_policy pn-clients { 10.244.1.7/32 }",
        "add element inet podnet_policy pn-clients { 10.244.1.8/32 }",
    ]
    assert diff_policy(old, ENDPOINTS, old, ENDPOINTS) == ""


def test_diff_one_chain_and_endpoint_removal():
    old = plan_with(frozenset())
    new = plan_with(frozenset(), egress_isolated=True)
    db_eg = chain_name("default/db", "egress")
    lines = diff_policy(old, ENDPOINTS, new, ENDPOINTS).splitlines()
    assert lines[0] == f"flush chain inet podnet_policy {db_eg}"
    assert all(line.startswith(f"add rule inet podnet_policy {db_eg} ") for line in lines[1:])
    assert len(lines) == 4  # two control-plane drops + the deny
    # the web pod leaves the node: its chains and map entries go, after the entries that jump to them
    only_db = {"default/db": ENDPOINTS["default/db"]}
    lines = diff_policy(old, ENDPOINTS, old, only_db).splitlines()
    web_in, web_eg = chain_name("default/web", "ingress"), chain_name("default/web", "egress")
    web_src = chain_name("default/web", "source")
    assert lines == [
        'delete element inet podnet_policy source_dispatch { "cali1111111111a" }',
        'delete element inet podnet_policy egress_dispatch { "cali1111111111a" }',
        'delete element inet podnet_policy ingress_dispatch { "cali1111111111a" }',
        f"flush chain inet podnet_policy {web_eg}",
        f"delete chain inet podnet_policy {web_eg}",
        f"flush chain inet podnet_policy {web_in}",
        f"delete chain inet podnet_policy {web_in}",
        f"flush chain inet podnet_policy {web_src}",
        f"delete chain inet podnet_policy {web_src}",
    ]


def test_parse_nflog_packet():
    ip_header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes([10, 244, 1, 13]), bytes([10, 244, 1, 12])
    )
    tcp = struct.pack("!HH", 40000, 9090) + b"\0" * 16
    prefix = deny_prefix("default/web", "ingress").encode() + b"\0"
    body = struct.pack("!BBH", 2, 0, 7) + _attr(10, prefix) + _attr(9, ip_header + tcp)
    drop = parse_nflog_packet(body)
    assert drop == Drop(deny_prefix("default/web", "ingress"), "10.244.1.13", "10.244.1.12", "TCP", 9090)
    assert parse_nflog_packet(struct.pack("!BBH", 10, 0, 7) + _attr(9, b"\x60" + b"\0" * 39)) is None  # IPv6


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-(4 + len(value)) % 4)
