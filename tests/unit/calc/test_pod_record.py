"""PodRecord: what the watch cache keeps of a Pod reads like the Pod for its readers."""

from __future__ import annotations

import pytest

from podnet.calc.pod_record import Interner, PodRecord
from podnet.calc.services import service_endpoints
from podnet.model import parse_resource


def _pod(name: str, labels: dict, **status) -> object:  # type: ignore[no-untyped-def]
    return parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "web",
                "uid": f"uid-{name}",
                "labels": labels,
                "annotations": {"cni.projectcalico.org/ipAddrs": '["10.0.0.9"]', "big": "x" * 1000},
            },
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": "front",
                "containers": [
                    {"name": "a", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]},
                    {"name": "b", "ports": [{"containerPort": 9090, "protocol": "UDP"}]},
                ],
            },
            "status": status
            or {
                "phase": "Running",
                "podIP": "10.0.0.9",
                "podIPs": [{"ip": "10.0.0.9"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )


def test_the_fields_readers_use() -> None:
    pod = _pod("a", {"app": "web"})
    r = PodRecord.from_pod(pod)
    assert r.metadata.labels == {"app": "web"} and r.metadata.uid == "uid-a" and r.key == "web/a"
    assert r.metadata.annotations == {"cni.projectcalico.org/ipAddrs": '["10.0.0.9"]'}  # IPAM's only
    assert r.spec.node_name == "node-1" and r.spec.host_network is False
    assert r.spec.effective_service_account() == "front"
    assert [(p.name, p.container_port, p.protocol) for c in r.spec.containers for p in c.ports] == [
        ("http", 8080, "TCP"),
        (None, 9090, "UDP"),
    ]
    assert r.status.pod_ip == "10.0.0.9" and r.ips == ("10.0.0.9",) and r.status.phase == "Running"
    with pytest.raises(AttributeError):
        r.name = "b"  # type: ignore[misc]


def test_services_see_the_same_backends_as_with_the_pod() -> None:
    service = parse_resource(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s", "namespace": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        }
    )
    ready = _pod("a", {"app": "web"})
    unready = _pod(
        "b",
        {"app": "web"},
        phase="Running",
        podIP="10.0.0.8",
        conditions=[{"type": "Ready", "status": "False"}],
    )
    pods = [ready, unready]
    assert service_endpoints(service, [PodRecord.from_pod(p) for p in pods]) == service_endpoints(
        service, pods
    )
    assert service_endpoints(service, pods)[("", "TCP")]  # not vacuous: one backend


def test_equal_labels_and_ports_are_shared_and_released() -> None:
    shared = Interner()
    one = PodRecord.from_pod(_pod("a", {"app": "web", "v": "1"}), shared)
    two = PodRecord.from_pod(_pod("b", {"v": "1", "app": "web"}), shared)
    other = PodRecord.from_pod(_pod("c", {"app": "db"}), shared)
    assert one.labels is two.labels and one.ports is two.ports and one.labels is not other.labels
    assert one == PodRecord.from_pod(_pod("a", {"app": "web", "v": "1"})) and one != two
    shared.retain_used([one.labels, one.ports])
    assert len(shared) == 2  # other's labels forgotten; its ports were the same object as one's
