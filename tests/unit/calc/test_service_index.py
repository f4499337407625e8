"""The cluster cache's index of ready pods (kept current pod by pod) and the policy compile's
reading of Services: only those a Calico rule names, so a Service added elsewhere recompiles
nothing, while one a Deny names still brings its new endpoints into the rule (fail closed)."""

from __future__ import annotations

import json
import random

from podnet.calc.cluster import ClusterCache
from podnet.calc.memo import ObjectMemo
from podnet.calc.policy_inputs import compile_cluster, referenced_services, service_backends
from podnet.calc.services import ReadyPods
from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.model import parse_resource

LAYOUT = KeyLayout("/t/")


def pod(name: str, ip: str, labels: dict[str, str], ready: bool = True, ns: str = "shop") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(name: str, selector: dict[str, str], ns: str = "shop") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": [{"name": "p", "port": 80, "targetPort": 8080}]},
    }


def deny_to(svc: str, ns: str = "shop") -> dict:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"no-{svc}", "namespace": ns},
        "spec": {
            "selector": "app == 'client'",
            "types": ["Egress"],
            "egress": [
                {"action": "Deny", "protocol": "TCP", "destination": {"services": {"name": svc}}},
                {"action": "Allow"},
            ],
        },
    }


class Cluster:
    """A datastore and the cache an agent would hold of it, updated key by key."""

    def __init__(self) -> None:
        self.store = MemoryDatastore()
        self.resources = ResourceStore(self.store, LAYOUT)
        self.cache = ClusterCache(LAYOUT)

    def write(self, *docs: dict) -> None:
        """Pods put whole, status too (as the kubelet's status updates); the rest applied."""
        for doc in docs:
            if doc["kind"] == "Pod":
                meta = doc["metadata"]
                self.store.put(
                    LAYOUT.resource("pods", meta["name"], meta["namespace"]), json.dumps(doc).encode()
                )
        self.resources.apply([parse_resource(d) for d in docs if d["kind"] != "Pod"])
        self.sync()

    def sync(self) -> None:
        """The changed keys only, as a watch delivers them (unchanged objects stay the same)."""
        items, revision = self.store.list(LAYOUT.root)
        seen = self.cache.revision
        for kv in items:
            if kv.mod_revision > seen:
                self.cache.update(kv.key, kv.value, kv.mod_revision)
        self.cache.revision = revision

    def delete_pod(self, name: str, ns: str = "shop") -> None:
        self.resources.store.delete(LAYOUT.resource("pods", name, ns))
        self.cache.update(LAYOUT.resource("pods", name, ns), None)


def keys(pods: list) -> list[str]:
    return sorted(f"{p.metadata.namespace}/{p.metadata.name}" for p in pods)


def test_the_kept_index_equals_a_fresh_one_through_random_changes() -> None:
    rng = random.Random(7)
    cluster = Cluster()
    alive: set[str] = set()
    selectors = [{"app": "a"}, {"app": "b"}, {"app": "a", "tier": "x"}, {"tier": "y"}, {}]
    for step in range(300):
        name = f"p{rng.randrange(25)}"
        if name in alive and rng.random() < 0.3:
            cluster.delete_pod(name)
            alive.discard(name)
        else:
            labels = {"app": rng.choice("ab")}
            if rng.random() < 0.5:
                labels["tier"] = rng.choice("xy")
            cluster.write(pod(name, f"10.0.0.{rng.randrange(1, 250)}", labels, ready=rng.random() < 0.8))
            alive.add(name)
        fresh = ReadyPods(cluster.cache.pods.values())
        for selector in selectors:
            kept = cluster.cache.ready_pods.selected("shop", selector)
            assert keys(kept) == keys(fresh.selected("shop", selector)), (step, selector)
            assert cluster.cache.ready_pods.selected("other", selector) == ()
    assert alive and any(cluster.cache.ready_pods.selected("shop", s) for s in selectors)
    # asked again with nothing changed: the very same answer (a sync asks every Service's)
    index = cluster.cache.ready_pods
    assert all(index.selected("shop", s) is index.selected("shop", s) for s in selectors)


def test_a_pod_leaves_the_index_when_it_stops_being_ready_or_is_deleted() -> None:
    cluster = Cluster()
    cluster.write(pod("db-1", "10.0.0.1", {"app": "db"}), pod("db-2", "10.0.0.2", {"app": "db"}))
    index = cluster.cache.ready_pods
    assert keys(index.selected("shop", {"app": "db"})) == ["shop/db-1", "shop/db-2"]
    cluster.write(pod("db-1", "10.0.0.1", {"app": "db"}, ready=False))
    assert keys(index.selected("shop", {"app": "db"})) == ["shop/db-2"]
    cluster.write(pod("db-2", "10.0.0.2", {"app": "web"}))  # relabelled: out of app=db
    assert index.selected("shop", {"app": "db"}) == ()
    assert keys(index.selected("shop", {"app": "web"})) == ["shop/db-2"]
    cluster.delete_pod("db-2")
    assert index.selected("shop", {"app": "web"}) == () and index.by_label == {}


def test_referenced_services_resolves_namespaces_as_the_compile_does() -> None:
    namespaced = parse_resource(deny_to("db", ns="shop"))
    global_doc = deny_to("dns")
    global_doc.update(kind="GlobalNetworkPolicy")
    del global_doc["metadata"]["namespace"]
    global_doc["spec"]["egress"][0]["destination"]["services"]["namespace"] = "infra"  # required
    explicit = deny_to("x")
    explicit["spec"]["egress"][0]["destination"]["services"]["namespace"] = "kube-system"
    objects = [namespaced, parse_resource(global_doc), parse_resource(explicit)]
    assert referenced_services(objects) == {"shop/db", "infra/dns", "kube-system/x"}


def _deny_ports(plan) -> set[tuple]:  # type: ignore[no-untyped-def]
    return {triple for triples in plan.port_sets.values() for triple in triples}


def test_a_service_no_policy_names_recompiles_nothing_and_a_named_one_stays_closed() -> None:
    cluster = Cluster()
    cluster.write(
        pod("client", "10.0.1.1", {"app": "client"}),
        pod("db-1", "10.0.0.1", {"app": "db"}),
        pod("web-1", "10.0.0.5", {"app": "web"}),
        service("db", {"app": "db"}),
        deny_to("db"),
    )
    memo: ObjectMemo = ObjectMemo()

    def compile_now():  # type: ignore[no-untyped-def]
        local = [info for info in cluster.cache.pod_infos() if info.key == "shop/client"]
        return compile_cluster(cluster.cache, local, "calico", memo=memo)

    first = compile_now()
    assert ("10.0.0.1", "TCP", 8080) in _deny_ports(first)
    assert service_backends(cluster.cache, names=["shop/db", "shop/none"]) == {
        "shop/db": (("10.0.0.1", "TCP", 8080),)
    }
    # a Service no rule names: the policy is not compiled again (the very same object)
    cluster.write(service("web", {"app": "web"}))
    again = compile_now()
    assert again.policies.keys() == first.policies.keys()
    assert all(again.policies[k] is first.policies[k] for k in first.policies)
    # a new endpoint of the Service the Deny names: in the rule at once (never let through)
    cluster.write(pod("db-2", "10.0.0.2", {"app": "db"}))
    later = compile_now()
    assert {("10.0.0.1", "TCP", 8080), ("10.0.0.2", "TCP", 8080)} <= _deny_ports(later)
