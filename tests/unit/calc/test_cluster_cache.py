import json

from podnet.calc.cluster import ClusterCache
from podnet.calc.endpoints import EndpointRecord
from podnet.datastore.keys import KeyLayout

LAYOUT = KeyLayout("/t/")


def put(cache: ClusterCache, key: str, doc: dict) -> str | None:
    return cache.update(key, json.dumps(doc).encode())


def test_pods_namespaces_and_policies_feed_pod_infos():
    cache = ClusterCache(LAYOUT)
    containers = [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"a": "b"}},
        "spec": {"nodeName": "n1", "containers": containers},
        "status": {"podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}]},
    }
    assert put(cache, LAYOUT.resource("pods", "web", "shop"), pod) == "pods"
    assert (
        put(
            cache,
            LAYOUT.resource("namespaces", "shop"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        )
        == "namespaces"
    )
    netpol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"podSelector": {}},
    }
    assert (
        put(cache, LAYOUT.resource("networkpolicies.networking.k8s.io", "deny", "shop"), netpol) == "policy"
    )
    [info] = cache.pod_infos()
    assert (info.key, info.ips, info.node, info.ports) == (
        "shop/web",
        ("10.244.0.9",),
        "n1",
        (("http", 80, "TCP"),),
    )
    assert cache.namespaces == {"shop": {"kubernetes.io/metadata.name": "shop"}}
    # An endpoint record is the fresher source of the pod's address.
    record = EndpointRecord("n1", "shop", "web", "c1", "eth0", "cali1", ("10.244.0.10",))
    cache.update(LAYOUT.endpoint("n1", "c1", "eth0"), record.to_json())
    assert cache.pod_infos()[0].ips == ("10.244.0.10",)
    cache.update(LAYOUT.resource("pods", "web", "shop"), None)
    assert cache.pod_infos() == []


def test_router_ip_is_read_from_either_cilium_annotation_and_validated():
    import pytest

    from podnet.calc.cluster import NodeInfo
    from podnet.calc.policy import control_plane
    from podnet.errors import ValidationError
    from podnet.model import parse_resource

    def node(annotations: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2", "annotations": annotations}}

    new = NodeInfo.from_node(parse_resource(node({"network.cilium.io/ipv4-cilium-host": "10.244.2.64"})))
    old = NodeInfo.from_node(parse_resource(node({"io.cilium.network.ipv4-cilium-host": "10.244.2.65"})))
    assert (new.router_ip, old.router_ip) == ("10.244.2.64", "10.244.2.65")
    assert NodeInfo.from_node(parse_resource(node({}))).router_ip is None
    with pytest.raises(ValidationError, match="ipv4-cilium-host"):
        parse_resource(node({"network.cilium.io/ipv4-cilium-host": "10.244.2.0/26"}))
    closed = control_plane([new.ip, new.router_ip], [], metrics_port=9099).remote
    assert ("10.244.2.64", "tcp", 9099) in closed


def _policy_docs() -> list[tuple[str, str | None, dict]]:
    """(type key, namespace, document) for every kind the policy calculation reads."""
    selector = {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}
    rules = {"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}
    np_api = "policy.networking.k8s.io/v1alpha1"

    def doc(api: str, kind: str, name: str, namespace: str | None = None, **body: object) -> dict:
        meta = {"name": name, "labels": {"team": "a"}} | ({"namespace": namespace} if namespace else {})
        return {"apiVersion": api, "kind": kind, "metadata": meta, **body}

    return [
        (
            "networkpolicies.projectcalico.org",
            "shop",
            doc(
                "projectcalico.org/v3", "NetworkPolicy", "web", "shop", spec={"tier": "security", "order": 10}
            ),
        ),
        (
            "globalnetworkpolicies.projectcalico.org",
            None,
            doc("projectcalico.org/v3", "GlobalNetworkPolicy", "g"),
        ),
        (
            "tiers.projectcalico.org",
            None,
            doc("projectcalico.org/v3", "Tier", "security", spec={"order": 100}),
        ),
        (
            "adminnetworkpolicies.policy.networking.k8s.io",
            None,
            doc(
                np_api,
                "AdminNetworkPolicy",
                "a",
                spec={"priority": 3, "subject": {"namespaces": selector}, **rules},
            ),
        ),
        (
            "baselineadminnetworkpolicies.policy.networking.k8s.io",
            None,
            doc(
                np_api, "BaselineAdminNetworkPolicy", "default", spec={"subject": {"namespaces": {}}, **rules}
            ),
        ),
        (
            "clusternetworkpolicies.policy.networking.k8s.io",
            None,
            doc(
                "policy.networking.k8s.io/v1alpha2",
                "ClusterNetworkPolicy",
                "c",
                spec={"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}}},
            ),
        ),
        ("serviceaccounts", "shop", doc("v1", "ServiceAccount", "api", "shop")),
    ]


def test_policy_kinds_are_decoded_kept_and_deleted():
    cache = ClusterCache(LAYOUT)
    for type_key, namespace, doc in _policy_docs():
        key = LAYOUT.resource(type_key, doc["metadata"]["name"], namespace)
        assert put(cache, key, doc) == "policy", cache.errors
    assert cache.calico_policies["shop/web"].spec.tier == "security"
    assert cache.calico_policies["shop/web"].spec.order == 10
    assert list(cache.global_policies) == ["g"]
    assert cache.tiers["security"].spec.order == 100
    assert cache.admin_policies["a"].spec.priority == 3
    assert cache.baseline_policy is not None and cache.baseline_policy.name == "default"
    assert cache.cluster_policies["c"].spec.calico_tier == "kube-baseline"
    assert cache.service_accounts == {"shop/api": {"team": "a"}}
    assert not cache.errors
    for type_key, namespace, doc in _policy_docs():
        assert cache.update(LAYOUT.resource(type_key, doc["metadata"]["name"], namespace), None) == "policy"
    empty = (cache.calico_policies, cache.global_policies, cache.tiers, cache.admin_policies)
    assert empty == ({}, {}, {}, {})
    assert (cache.baseline_policy, cache.cluster_policies, cache.service_accounts) == (None, {}, {})


def test_a_bad_policy_value_keeps_the_last_good_one_and_another_kind_is_refused():
    cache = ClusterCache(LAYOUT)
    [_, _, (type_key, _, tier)] = _policy_docs()[:3]
    key = LAYOUT.resource(type_key, "security")
    put(cache, key, tier)
    bad = {**tier, "spec": {"order": 100, "defaultAction": "Allow"}}
    assert put(cache, key, bad) is None
    assert "defaultAction" in cache.errors[key]
    assert cache.tiers["security"].spec.default_action == "Deny"
    # A valid document of another kind under the tiers key is not filed as a tier.
    other = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "security"},
    }
    assert put(cache, key, other) is None
    assert "kind" in cache.errors[key]
    assert type(cache.tiers["security"]).__name__ == "Tier"
    assert put(cache, key, tier) == "policy" and key not in cache.errors
