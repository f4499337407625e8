"""The lab's cluster DNS: which addresses a name in the cluster zone has (pure), the part of
CoreDNS's ``kubernetes`` plugin a lab needs (issue 15 builds the server around it).

    <service>.<namespace>.svc.<zone>      the Service's ClusterIP; a headless Service (clusterIP
                                          None): the addresses of its ready endpoints
    <a-b-c-d>.<namespace>.pod.<zone>      a.b.c.d (CoreDNS's ``pods insecure``: any such name)

Names are compared case-insensitively, with or without the final dot. A name in the zone that has
no record is NXDOMAIN; a name outside it is not answered here (:data:`FORWARD`: the server asks its
upstream). ``svc.<zone>`` and the other names between the zone and a record exist but hold no
address (NOERROR with no answer), as in CoreDNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from podnet.calc.services import service_endpoints

ZONE = "cluster.local"
#: the lab's cluster DNS, as a cluster runs CoreDNS: this Service, served by pods with this label and
#: this container image (the kubelet runs ``python -m podnet.lab.dns_server cluster`` for it)
DNS_NAMESPACE, DNS_SERVICE, DNS_LABEL = "kube-system", "kube-dns", ("k8s-app", "kube-dns")
DNS_IMAGE = "podnet.io/cluster-dns"
NDOTS = 5
NOERROR, NXDOMAIN = "NOERROR", "NXDOMAIN"
#: the name is outside the cluster zone: ask the upstream
FORWARD = "FORWARD"


@dataclass(frozen=True)
class Answer:
    rcode: str  # NOERROR, NXDOMAIN or FORWARD
    addresses: tuple[str, ...] = ()


def answer(name: str, services: Iterable, pods: Iterable, zone: str = ZONE) -> Answer:  # type: ignore[type-arg]
    """The A records of ``name`` from the cluster's ``services`` and ``pods`` (model objects)."""
    labels = name.lower().rstrip(".").split(".")
    zone_labels = zone.lower().rstrip(".").split(".")
    if labels[-len(zone_labels) :] != zone_labels or len(labels) < len(zone_labels):
        return Answer(FORWARD)
    inner = labels[: -len(zone_labels)]
    if not inner or (len(inner) <= 2 and inner[-1] in ("svc", "pod")):
        return Answer(NOERROR)  # the zone, svc.<zone>, <ns>.svc.<zone>: names without addresses
    if len(inner) == 3 and inner[2] == "svc":
        return _service(inner[0], inner[1], list(services), list(pods))
    if len(inner) == 3 and inner[2] == "pod":
        try:
            address = ipaddress.IPv4Address(inner[0].replace("-", "."))
        except ValueError:
            return Answer(NXDOMAIN)
        return Answer(NOERROR, (str(address),))
    return Answer(NXDOMAIN)


def _service(name: str, namespace: str, services: list, pods: list) -> Answer:  # type: ignore[type-arg]
    for service in services:
        meta = service.metadata
        if (meta.name or "").lower() != name or (meta.namespace or "default").lower() != namespace:
            continue
        cluster_ip = service.spec.cluster_ip
        if cluster_ip and cluster_ip != "None":
            return Answer(NOERROR, (cluster_ip,))
        found = {b.ip for backends in service_endpoints(service, pods).values() for b in backends}
        return Answer(NOERROR, tuple(sorted(found, key=ipaddress.IPv4Address)))
    return Answer(NXDOMAIN)


def resolv_conf(namespace: str, nameserver: str, zone: str = ZONE) -> str:
    """A pod's ``/etc/resolv.conf`` (the kubelet's ``ClusterFirst``): the cluster DNS, the search
    list of its namespace, ``ndots:5``."""
    search = f"{namespace}.svc.{zone} svc.{zone} {zone}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:{NDOTS}\n"


def dns_docs(cluster_ip: str, node: str, upstream: str | None) -> list[dict]:
    """The cluster DNS's objects: Service ``kube-system/kube-dns`` at ``cluster_ip`` (53/UDP,
    53/TCP) and its pod ``coredns`` on ``node``, forwarding other names to ``upstream``
    (``IP:PORT``)."""
    labels = {DNS_LABEL[0]: DNS_LABEL[1]}
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    container: dict = {
        "name": "coredns",
        "image": DNS_IMAGE,
        "ports": [{"name": n, "containerPort": 53, "protocol": p} for n, p in ports],
    }
    if upstream:
        container["args"] = ["--upstream", upstream]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": DNS_SERVICE, "namespace": DNS_NAMESPACE, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": cluster_ip,
                "ports": [{"name": n, "port": 53, "targetPort": 53, "protocol": p} for n, p in ports],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "coredns", "namespace": DNS_NAMESPACE, "labels": labels},
            "spec": {"nodeName": node, "containers": [container]},
        },
    ]
