"""The lab's cluster DNS names (lab.cluster_dns), as CoreDNS's kubernetes plugin answers them."""

from __future__ import annotations

from podnet.lab.cluster_dns import FORWARD, NOERROR, NXDOMAIN, Answer, answer
from podnet.model import parse_resource


def service(name: str, namespace: str, cluster_ip: str | None, selector: dict | None = None):
    spec: dict = {"ports": [{"port": 80, "protocol": "TCP"}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    if selector:
        spec["selector"] = selector
    meta = {"name": name, "namespace": namespace}
    return parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})


def pod(name: str, ip: str, labels: dict, ready: bool = True):
    status = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    meta = {"name": name, "namespace": "shop", "labels": labels}
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
        "status": status,
    }
    return parse_resource(doc)


SERVICES = [service("web", "shop", "10.96.0.10"), service("db", "shop", "None", {"app": "db"})]
PODS = [
    pod("db-1", "10.244.1.7", {"app": "db"}),
    pod("db-0", "10.244.1.12", {"app": "db"}),
    pod("db-2", "10.244.2.3", {"app": "db"}, ready=False),
]


def test_services_pods_and_the_rest():
    assert answer("web.shop.svc.cluster.local", SERVICES, PODS) == Answer(NOERROR, ("10.96.0.10",))
    assert answer("WEB.Shop.svc.cluster.local.", SERVICES, PODS) == Answer(NOERROR, ("10.96.0.10",))
    assert answer("db.shop.svc.cluster.local", SERVICES, PODS) == Answer(
        NOERROR, ("10.244.1.7", "10.244.1.12")
    )  # headless: ready endpoints
    assert answer("web.ops.svc.cluster.local", SERVICES, PODS).rcode == NXDOMAIN
    assert answer("10-244-1-7.shop.pod.cluster.local", SERVICES, PODS) == Answer(NOERROR, ("10.244.1.7",))
    assert answer("10-244-1.shop.pod.cluster.local", SERVICES, PODS).rcode == NXDOMAIN
    assert answer("shop.svc.cluster.local", SERVICES, PODS) == Answer(NOERROR)  # exists, no address
    assert answer("cluster.local", SERVICES, PODS) == Answer(NOERROR)
    assert answer("a.b.c.shop.svc.cluster.local", SERVICES, PODS).rcode == NXDOMAIN
    assert answer("api.example.test", SERVICES, PODS) == Answer(FORWARD)
    assert answer("local", SERVICES, PODS) == Answer(FORWARD)


def test_resolv_conf_and_the_dns_objects() -> None:
    from podnet.lab.cluster_dns import DNS_IMAGE, dns_docs, resolv_conf
    from podnet.model import parse_resource

    assert resolv_conf("shop", "10.96.0.10") == (
        "nameserver 10.96.0.10\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )
    service, pod = (parse_resource(d) for d in dns_docs("10.96.0.10", "node-1", "10.9.0.3:53"))
    assert (service.metadata.namespace, service.metadata.name, service.spec.cluster_ip) == (
        "kube-system",
        "kube-dns",
        "10.96.0.10",
    )
    assert sorted(p.protocol for p in service.spec.ports) == ["TCP", "UDP"]
    assert service.spec.selector == pod.metadata.labels == {"k8s-app": "kube-dns"}
    container = pod.spec.containers[0]
    assert container.image == DNS_IMAGE and container.args == ["--upstream", "10.9.0.3:53"]
    assert pod.spec.node_name == "node-1"
