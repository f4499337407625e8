"""The pure parts of the NetworkPolicy scale benchmark: workload generation, the edits of the change
phase, what each node must hold, and the parsers of nft and Prometheus output (no root, no lab)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from podnet.bench.policy_scale import (
    CHANGE_PORT_BASE,
    IPERF_PORTS,
    QUICK,
    calico_form,
    count_kernel_rules,
    count_rules,
    generate_workload,
    node_targets,
    pair_figures,
    parse_comment,
    parse_sync_histogram,
    plan_changes,
    pod_infos,
    selected_pods,
    sync_delta,
)
from podnet.bench.services import NGINX_PORT
from podnet.calc.policy import compile_policies
from podnet.dataplane.policy import match_lines, policy_chain_name
from podnet.model import NetworkPolicy, parse_resource


@pytest.fixture(scope="module")
def full():
    return generate_workload(300, 1000, 5, seed=1)


def _ips(workload) -> dict[str, str]:
    base = ipaddress.ip_address("10.244.0.2")
    return {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}": str(base + i)
        for i, p in enumerate(workload.pods)
    }


def test_every_generated_document_is_a_valid_resource(full):
    for doc in full.namespaces + full.pods + full.policies:
        parse_resource(doc)
    assert all(isinstance(parse_resource(p), NetworkPolicy) for p in full.policies)


def test_counts_are_exact(full):
    assert len(full.policies) == 1000
    assert full.rule_count == 5000
    assert all(count_rules(p) == 5 for p in full.policies)
    assert len(full.pods) == 300 + 2  # + the control pair
    assert len({p["metadata"]["name"] for p in full.policies}) == 1000
    assert len(full.namespaces) == 10 + 1
    for rules in (2, 3, 7):
        assert generate_workload(30, 40, rules).rule_count == 40 * rules


def test_deterministic_for_a_seed_and_different_for_another():
    a, b = generate_workload(60, 50, 5, seed=3), generate_workload(60, 50, 5, seed=3)
    assert json.dumps(a.policies + a.pods) == json.dumps(b.policies + b.pods)
    c = generate_workload(60, 50, 5, seed=4)
    assert json.dumps(a.policies) != json.dumps(c.policies)


def test_pods_spread_over_nodes_namespaces_and_labels(full):
    pods = [p for p in full.pods if p["metadata"]["namespace"] != "ctl"]
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert {n: nodes.count(n) for n in set(nodes)} == {"node-1": 100, "node-2": 100, "node-3": 100}
    assert len({p["metadata"]["labels"]["app"] for p in pods}) == 10
    assert len({p["metadata"]["labels"]["tier"] for p in pods}) == 4
    ports = pods[0]["spec"]["containers"][0]["ports"]
    assert {p.get("name") for p in ports} >= {"http"}


def test_rules_use_every_kind_of_peer_and_port(full):
    text = json.dumps(full.policies)
    for needle in (
        '"podSelector"',
        '"namespaceSelector"',
        '"ipBlock"',
        '"except"',
        '"endPort"',
        '"port": "http"',
        '"protocol": "UDP"',
        '"egress"',
        '"matchExpressions"',
    ):
        assert needle in text, needle


def test_policy_zero_allows_the_measured_pair_on_the_iperf_and_nginx_ports(full):
    policy = full.policies[0]
    chosen = {
        f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in selected_pods(policy, full.pods)
    }
    assert chosen == {full.client, full.server}
    ports = [{"port": IPERF_PORTS[0], "endPort": IPERF_PORTS[1]}, {"port": NGINX_PORT}]
    assert policy["spec"]["ingress"][0]["ports"] == ports
    assert policy["spec"]["egress"][0]["ports"] == ports
    pair = (full.client, full.server)
    nodes = {
        p["spec"]["nodeName"]
        for p in full.pods
        if f"{p['metadata']['namespace']}/{p['metadata']['name']}" in pair
    }
    assert len(nodes) == 2  # across nodes
    control = set(full.control)
    for p in full.policies:
        assert not control & {f"ctl/{x['metadata']['name']}" for x in selected_pods(p, full.pods)}


def test_changes_add_one_distinct_rule_each(full):
    changes = plan_changes(full, 30)
    assert len(changes) == 30
    assert len({c.comment for c in changes}) == 30
    assert len({c.policy["metadata"]["name"] for c in changes}) == 30
    for c in changes:
        original = next(p for p in full.policies if p["metadata"]["name"] == c.policy["metadata"]["name"])
        assert count_rules(c.policy) == count_rules(original) + 1
        assert c.policy["spec"]["ingress"][-1]["ports"] == [{"port": c.port}]
        assert c.port == CHANGE_PORT_BASE + c.index
        assert c.nodes and selected_pods(c.policy, full.pods)
        parse_resource(c.policy)
    assert [c.comment for c in plan_changes(full, 30)] == [c.comment for c in changes]


def test_node_targets_name_the_last_policy_with_rules_on_each_node():
    w = generate_workload(QUICK["pods"], QUICK["policies"], QUICK["rules_per_policy"], seed=2)
    targets = node_targets(w, _ips(w), ["node-1", "node-2", "node-3"])
    assert set(targets) == {"node-1", "node-2", "node-3"}
    order = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in w.policies]
    for node, t in targets.items():
        assert t.rule_lines > 0
        assert t.comment.startswith(f"knp:{t.policy}:")
        # no later policy selects a pod of this node
        later = w.policies[order.index(t.policy) + 1 :]
        assert not any(p["spec"]["nodeName"] == node for pol in later for p in selected_pods(pol, w.pods))
        # the policy's own chain (one per policy and direction, shared by the endpoints it selects)
        assert t.chain in {policy_chain_name(t.policy, d) for d in ("ingress", "egress")}


def test_parse_comment_from_monitor_and_list_lines():
    line = (
        "add rule inet podnet_policy ep-1a2b3c4d5e6f-in ip saddr @pn-0011223344556677 "
        "meta l4proto tcp th dport 41003 counter packets 0 bytes 0 accept "
        'comment "knp:ps-01/np-0601:ingress:3"'
    )
    assert parse_comment(line) == "knp:ps-01/np-0601:ingress:3"
    assert parse_comment('counter log group 7 prefix "pnd:abc:in:ps-01/p0001" drop') is None


def test_count_kernel_rules_from_nft_json():
    doc = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "podnet_policy"}},
            {"set": {"name": "pn-1", "elem": ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}]}},
            {"set": {"name": "pn-2"}},
            {"chain": {"name": "forward"}},
            {"chain": {"name": "ep-x-in"}},
            {"rule": {"chain": "forward", "expr": []}},
            {"rule": {"chain": "ep-x-in", "comment": "knp:a/b:ingress:0", "expr": []}},
            {"rule": {"chain": "ep-x-in", "comment": "knp:a/b:ingress:1", "expr": []}},
        ]
    }
    assert count_kernel_rules(doc) == {
        "rules": 3,
        "policy_rules": 2,
        "chains": 2,
        "sets": 2,
        "set_elements": 2,
    }
    assert count_kernel_rules({})["rules"] == 0


def test_sync_histogram_and_delta():
    text = """# HELP podnet_dataplane_sync_seconds time to compute and apply
# TYPE podnet_dataplane_sync_seconds histogram
podnet_dataplane_sync_seconds_bucket{le="0.001"} 0.0
podnet_dataplane_sync_seconds_count 12.0
podnet_dataplane_sync_seconds_sum 3.5
podnet_dataplane_syncs_total{result="ok"} 12.0
"""
    after = parse_sync_histogram(text)
    assert after == {"count": 12.0, "sum": 3.5}
    delta = sync_delta({"node-1": {"count": 10.0, "sum": 1.5}}, {"node-1": after})
    assert delta == {"node-1": {"syncs": 2, "mean_s": 1.0, "total_s": 2.0}}
    assert (
        sync_delta({"n": {"count": 1.0, "sum": 1.0}}, {"n": {"count": 1.0, "sum": 1.0}})["n"]["mean_s"] == 0.0
    )


def test_rejects_sizes_it_cannot_lay_out():
    with pytest.raises(ValueError):
        generate_workload(4, 10, 5)
    with pytest.raises(ValueError):
        generate_workload(30, 10, 1)
    with pytest.raises(ValueError):
        plan_changes(generate_workload(30, 3, 5), 10)


def test_calico_form_three_tiers_actions_and_changes():
    w = calico_form(generate_workload(QUICK["pods"], QUICK["policies"], QUICK["rules_per_policy"], seed=3))
    models = [parse_resource(d) for d in w.tiers + w.policies]  # every document validates
    assert [t.name for t in models[:2]] == ["security", "platform"]
    tiers = {p["spec"]["tier"] for p in w.policies}
    assert tiers == {"security", "platform", "default"} and w.policies[0]["spec"]["tier"] == "default"
    actions = {r["action"] for p in w.policies for d in ("ingress", "egress") for r in p["spec"].get(d, [])}
    assert actions == {"Allow", "Deny", "Pass"}
    ips = _ips(w)
    targets = node_targets(w, ips, ["node-1", "node-2", "node-3"])
    assert all(t.comment.startswith("np:") for t in targets.values())
    change = plan_changes(w, 2)[0]
    tier = change.policy["spec"]["tier"]
    assert change.comment.startswith(f"np:{tier}:")
    rules = change.policy["spec"]["ingress"]
    index = int(change.comment.rsplit(":", 1)[1])
    assert rules[index]["destination"] == {"ports": [change.port]}
    if tier != "default":
        assert rules[-1] == {"action": "Pass"}  # the new rule comes before the tier's Pass
    line = f'add rule inet podnet_policy pol-x-in tcp dport 1 counter accept comment "{change.comment}"'
    assert parse_comment(line) == change.comment


def test_calico_form_targets_count_every_tier():
    """The expected kernel rules include the user tiers' policies (compiled with their Tiers)."""
    w = calico_form(generate_workload(QUICK["pods"], QUICK["policies"], QUICK["rules_per_policy"]))
    infos = pod_infos(w.pods, _ips(w))
    namespaces = {d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in w.namespaces}
    local = [p for p in infos if p.node == "node-1"]
    plan = compile_policies(
        local,
        infos,
        namespaces,
        [parse_resource(p) for p in w.policies],
        tiers=[parse_resource(t) for t in w.tiers],
    )
    assert plan.errors == {}
    expected = sum(
        len(match_lines(r.match))
        for p in plan.policies.values()
        for d in ("ingress", "egress")
        for r in p.rules(d)
    )
    assert node_targets(w, _ips(w), ["node-1"])["node-1"].rule_lines == expected
    assert {p.tier for p in plan.policies.values()} == {"security", "platform", "default"}


def test_pair_figures_medians_and_ratios():
    before = {"measured": [10.0, 12.0, 11.0], "control": [20.0, 20.0, 20.0]}
    after = {"measured": [9.0, 9.9, 9.0], "control": [18.0, 18.0, 18.0]}
    f = pair_figures(before, after)
    assert f["median"] == {
        "measured_without": 11.0,
        "control_without": 20.0,
        "measured_with": 9.0,
        "control_with": 18.0,
    }
    assert f["ratio_with_vs_without"] == round(9.0 / 11.0, 3) and f["ratio_with_vs_control"] == 0.5
    assert f["samples"] == {"without": before, "with": after}
