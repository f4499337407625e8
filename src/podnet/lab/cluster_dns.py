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
