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
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"a": "b"}},
        "spec": {"nodeName": "n1", "containers": containers},
        "status": {"podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}]},
    }  # fmt: skip
    assert put(cache, LAYOUT.resource("pods", "web", "shop"), pod) == "pods"
    assert (
        put(
            cache,
            LAYOUT.resource("namespaces", "shop"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        )
        == "namespaces"
    )
    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "deny", "namespace": "shop"}, "spec": {"podSelector": {}}}  # fmt: skip
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
