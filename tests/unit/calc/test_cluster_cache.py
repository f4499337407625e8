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
