"""Anti-spoofing (MAC + IP, in prerouting) and the control-plane sets in the rendered table (no kernel)."""

from __future__ import annotations

from podnet.calc.policy import (
    CompiledPolicy,
    EndpointPolicy,
    EndpointTier,
    Match,
    OrderedRule,
    PolicyPlan,
    Provenance,
    control_plane,
)
from podnet.dataplane.policy import (
    build_rendering,
    chain_name,
    control_prefix,
    mac_spoof_prefix,
    render_diff,
    render_policy,
    spoof_prefix,
)

MAC = "02:AA:BB:CC:DD:EE"
ENDPOINTS = {"np/a": ("cali1111111111a", ("10.244.1.5",), MAC), "np/b": ("lxc2222222222b", ("10.244.1.6",))}
CONTROL = control_plane(["10.77.0.11", "10.77.0.12"], ["http://10.77.0.2:2379"], 179, 9099)
EMPTY = PolicyPlan({}, {}, {})


def egress_plan(name: str, rules: tuple[OrderedRule, ...]) -> PolicyPlan:
    policy = CompiledPolicy(f"np/{name}", "NetworkPolicy", "np", name, "default", 1000.0, None, rules)
    ep = EndpointPolicy("np/a", ("10.244.1.5",), egress=(EndpointTier("default", (policy.key,), "Deny"),))
    return PolicyPlan({}, {"np/a": ep}, {}, {policy.key: policy})


def isolated_plan() -> PolicyPlan:
    return egress_plan("deny", ())


def test_source_chain_checks_mac_then_ip_in_prerouting():
    r = build_rendering(EMPTY, ENDPOINTS, CONTROL)
    src = r.chains[chain_name("np/a", "source")]
    assert (
        src[0] == f'ether saddr != {MAC.lower()} counter log group 7 prefix "{mac_spoof_prefix("np/a")}" drop'
    )
    assert src[1].startswith("ip6 saddr { ::, fe80::/10 } icmpv6 type {") and src[1].endswith(" return")
    assert src[2] == f'ip saddr != {{ 10.244.1.5 }} counter log group 7 prefix "{spoof_prefix("np/a")}" drop'
    # an endpoint whose MAC is unknown (an old record) keeps the IP check only
    assert not any("ether" in line for line in r.chains[chain_name("np/b", "source")])
    assert r.source_map == {
        "cali1111111111a": chain_name("np/a", "source"),
        "lxc2222222222b": chain_name("np/b", "source"),
    }
    text = render_policy(EMPTY, ENDPOINTS, CONTROL)
    assert "type filter hook prerouting priority raw; policy accept;" in text
    assert "iifname vmap @source_dispatch" in text


def test_control_plane_first_in_egress_even_when_policy_allows_all():
    allow_all = Provenance("NetworkPolicy", "np", "all", "egress", 0)
    plan = egress_plan("all", (OrderedRule("Allow", Match(), allow_all),))
    chain = build_rendering(plan, ENDPOINTS, CONTROL).chains[chain_name("np/a", "egress")]
    log = f'counter log group 7 prefix "{control_prefix("np/a")}" drop'
    assert chain[:2] == (
        f"meta l4proto . th dport @control_ports fib daddr type local {log}",
        f"ip daddr . meta l4proto . th dport @control_hosts {log}",
    )
    assert chain[2].startswith("goto ep-")  # the tiers, and the allow-all rule in them, come after


def test_control_sets_rendered_and_diffed():
    text = render_policy(EMPTY, ENDPOINTS, CONTROL)
    assert (
        "set control_ports { type inet_proto . inet_service; elements = { tcp . 179, tcp . 9099 }; }" in text
    )
    hosts = "10.77.0.2 . tcp . 2379, 10.77.0.11 . tcp . 179, 10.77.0.11 . tcp . 9099, 10.77.0.12 . tcp . 179"
    assert f"set control_hosts {{ type ipv4_addr . inet_proto . inet_service; elements = {{ {hosts}" in text
    # no control plane known yet: the sets exist, empty (the rules still load)
    assert "set control_hosts { type ipv4_addr . inet_proto . inet_service; }" in render_policy(
        EMPTY, ENDPOINTS
    )
    # a node joins: only its elements are added
    bigger = control_plane(["10.77.0.11", "10.77.0.12", "10.77.0.13"], ["http://10.77.0.2:2379"], 179, 9099)
    old, new = build_rendering(EMPTY, ENDPOINTS, CONTROL), build_rendering(EMPTY, ENDPOINTS, bigger)
    assert render_diff(old, new).splitlines() == [
        "add element inet podnet_policy control_hosts { 10.77.0.13 . tcp . 179, 10.77.0.13 . tcp . 9099 }"
    ]
    assert render_diff(new, old).splitlines() == [
        "delete element inet podnet_policy control_hosts { 10.77.0.13 . tcp . 179, 10.77.0.13 . tcp . 9099 }"
    ]
    # a policy change refills the endpoint's chain; the control sets are not touched
    diff = render_diff(old, build_rendering(isolated_plan(), ENDPOINTS, CONTROL))
    assert "element inet podnet_policy control" not in diff and diff.count("@control_hosts") == 1
