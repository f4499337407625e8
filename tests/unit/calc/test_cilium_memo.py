"""compile_cilium with its memo gives exactly what it gives without, sync after sync, as policies,
pods, namespaces and identities change (the agent keeps one CiliumMemo across syncs)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from podnet.bench.cilium_scale import generate_policies
from podnet.bench.policy_scale import _key, generate_workload, pod_infos
from podnet.calc.identity import pod_label_sets
from podnet.calc.policy_inputs import CiliumMemo, compile_cilium
from podnet.model import parse_resource


class FakeCache(SimpleNamespace):
    """What compile_cilium reads of the watch cache; pods keep their object while unchanged."""

    def pod_infos(self):  # type: ignore[no-untyped-def]
        return self.pods


def allocate(cache: FakeCache) -> None:
    """Numbers for every label set, as the agents' allocator would (stable per digest)."""
    for labels in pod_label_sets(cache.pods, cache.namespaces).values():
        if labels.digest not in cache.identity_numbers:
            number = 256 + len(cache.identity_numbers)
            cache.identity_numbers[labels.digest] = number
            cache.identities[number] = labels


def test_memoised_cilium_compile_equals_the_plain_one_through_changes() -> None:
    workload = generate_workload(30, 12, 4, nodes=3, seed=5)
    ips = {_key(p): f"10.244.0.{i + 1}" for i, p in enumerate(workload.pods)}
    namespaces = [d["metadata"]["name"] for d in workload.namespaces if d["metadata"]["name"] != "ctl"]
    cache = FakeCache(
        pods=pod_infos(workload.pods, ips),
        namespaces={
            d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in workload.namespaces
        },
        identities={},
        identity_numbers={},
        netpols={_key(p): parse_resource(p) for p in workload.policies},
        cilium_policies={_key(p): parse_resource(p) for p in generate_policies(20, namespaces, 3, seed=5)},
        cilium_cluster_policies={},
        nodes={},
        config=None,
    )
    allocate(cache)
    memo = CiliumMemo()

    def check() -> dict:
        local = [p for p in cache.pods if p.node == "node-1"]
        plain = compile_cilium(cache, local, "node-1")
        memoised = compile_cilium(cache, local, "node-1", memo=memo)
        assert memoised.maps == plain.maps
        assert memoised.ipcache == plain.ipcache
        assert memoised.pod_identity == plain.pod_identity
        assert any(m.entries for m in plain.maps.values())  # the workload has policy to compare
        return dict(plain.maps)

    check()
    before = check()  # every endpoint a hit
    for key in sorted(cache.cilium_policies):  # each CNP replaced by an edited copy
        doc = cache.cilium_policies[key].model_dump(mode="json", by_alias=True, exclude_none=True)
        doc["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "8443"
        cache.cilium_policies[key] = parse_resource(doc)
    assert check() != before  # the edits reached local endpoints: a memo that missed them fails
    index = next(i for i, p in enumerate(cache.pods) if p.node == "node-1")
    cache.pods = list(cache.pods)  # a local pod relabelled: a new identity
    cache.pods[index] = dataclasses.replace(
        cache.pods[index], labels={**cache.pods[index].labels, "tier": "db"}
    )
    check()
    allocate(cache)  # ... numbered later
    check()
    first = sorted(cache.namespaces)[1]  # a namespace relabelled: its pods' identities change
    cache.namespaces = {**cache.namespaces, first: {**cache.namespaces[first], "team": "other"}}
    check()
    allocate(cache)
    check()
    del cache.netpols[sorted(cache.netpols)[0]]  # a NetworkPolicy deleted
    check()


def test_to_services_follow_the_services_through_the_memo() -> None:
    """A Service's selector or labels changed: the endpoints' maps follow (the universe's memo
    key has the Services once a policy names them)."""
    workload = generate_workload(30, 4, 2, nodes=3, seed=7)
    ips = {_key(p): f"10.244.0.{i + 1}" for i, p in enumerate(workload.pods)}
    pods = pod_infos(workload.pods, ips)
    client = pods[0]
    apps = [p.labels["pod"] for p in pods if p.namespace == client.namespace and p is not client]

    def service(selector: dict, labels: dict) -> object:
        meta = {"name": "svc", "namespace": client.namespace, "labels": labels}
        spec = {"selector": selector, "ports": [{"port": 80}]}
        return parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})

    exposed = {"matchLabels": {"x": "1"}}
    cache = FakeCache(
        pods=pods,
        namespaces={
            d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in workload.namespaces
        },
        identities={},
        identity_numbers={},
        netpols={},
        cilium_policies={},
        cilium_cluster_policies={
            "out": parse_resource(
                {
                    "apiVersion": "cilium.io/v2",
                    "kind": "CiliumClusterwideNetworkPolicy",
                    "metadata": {"name": "out"},
                    "spec": {
                        "endpointSelector": {"matchLabels": {"pod": client.name}},
                        "egress": [{"toServices": [{"k8sServiceSelector": {"selector": exposed}}]}],
                    },
                }
            )
        },
        services={f"{client.namespace}/svc": service({"pod": apps[0]}, {"x": "1"})},
        nodes={},
        config=None,
    )
    allocate(cache)
    memo = CiliumMemo()

    def peers() -> set[int]:
        plain = compile_cilium(cache, [client], client.node)
        memoised = compile_cilium(cache, [client], client.node, memo=memo)
        assert memoised.maps == plain.maps
        return {k.identity for k in plain.maps[client.key].entries}

    first = peers()
    assert first and peers() == first
    cache.services = {f"{client.namespace}/svc": service({"pod": apps[1]}, {"x": "1"})}
    second = peers()
    assert second and second != first  # the selector's new pods
    cache.services = {f"{client.namespace}/svc": service({"pod": apps[1]}, {"x": "2"})}
    assert peers() == set()  # the rule no longer names the Service: egress denied
