"""compile_policies and build_rendering with memos give exactly what they give without, sync after
sync, as policies, pods, namespaces and endpoints change (the agent keeps one memo across syncs)."""

from __future__ import annotations

import dataclasses

from podnet.bench.policy_scale import _key, calico_form, generate_workload, pod_infos
from podnet.calc.memo import ObjectMemo
from podnet.calc.policy import compile_policies
from podnet.dataplane.policy import build_rendering
from podnet.model import parse_resource


def test_memoised_compile_and_render_equal_the_plain_ones_through_changes() -> None:
    workload = calico_form(generate_workload(30, 40, 4, nodes=3, seed=3))
    ips = {_key(p): f"10.244.0.{i + 1}" for i, p in enumerate(workload.pods)}
    pods = pod_infos(workload.pods, ips)
    namespaces = {d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in workload.namespaces}
    policies = [parse_resource(p) for p in workload.policies]
    tiers = [parse_resource(t) for t in workload.tiers]
    memo, chains = ObjectMemo(), ObjectMemo()

    def check(mac: str = "") -> None:
        local = [p for p in pods if p.node == "node-1"]
        endpoints = {p.key: (f"cali{i:011d}", p.ips, mac) for i, p in enumerate(local)}
        plain = compile_policies(local, pods, namespaces, policies, tiers=tiers)
        memoised = compile_policies(local, pods, namespaces, policies, tiers=tiers, memo=memo)
        assert memoised == plain
        assert build_rendering(memoised, endpoints, chains_memo=chains) == build_rendering(plain, endpoints)

    check()
    check()  # every policy a hit
    # a policy replaced by an edited copy (the watch cache makes a new object)
    doc = workload.policies[5]
    rules = doc["spec"].get("ingress") or doc["spec"]["egress"]
    rules.insert(0, {"action": "Deny", "protocol": "UDP", "destination": {"ports": [53]}})
    policies[5] = parse_resource(doc)
    check()
    # Pass rules appear in policies local endpoints meet (their tier chains change, tiers do not)
    for index in range(10):
        doc = workload.policies[index]
        direction = "ingress" if doc["spec"].get("ingress") else "egress"
        doc["spec"][direction].insert(0, {"action": "Pass", "protocol": "UDP", "destination": {"ports": [9]}})
        policies[index] = parse_resource(doc)
    check()
    # a pod's labels change: every policy may select or name it differently
    pods[0] = dataclasses.replace(pods[0], labels={**pods[0].labels, "app": "moved"})
    check()
    # a namespace's labels change
    first = sorted(namespaces)[1]
    namespaces[first] = {**namespaces[first], "team": "other"}
    check()
    # a local endpoint's address changes, then every MAC becomes known (anti-spoofing chains)
    index = next(i for i, p in enumerate(pods) if p.node == "node-1")
    pods[index] = dataclasses.replace(pods[index], ips=("10.244.1.99",))
    check()
    check(mac="02:00:00:00:00:01")
    # a policy deleted, a pod gone
    del policies[7]
    del pods[3]
    check()
    local = sum(p.node == "node-1" for p in pods)
    assert len(memo) == len(policies) + local + 1  # one entry per policy, per local endpoint, the inputs
