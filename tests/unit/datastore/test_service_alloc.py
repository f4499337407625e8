"""ClusterIP and NodePort allocation when Services are written (the API server's job)."""

from __future__ import annotations

import ipaddress
import re

import pytest

from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.errors import ValidationError
from podnet.model import lookup, parse_resource


def svc(name: str, **spec) -> object:  # type: ignore[no-untyped-def]
    body = {"selector": {"app": name}, "ports": [{"port": 80}], **spec}
    return parse_resource(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": body}
    )


@pytest.fixture
def store() -> ResourceStore:
    return ResourceStore(MemoryDatastore())


def allocated(store: ResourceStore, what: str) -> list[str]:
    items, _ = store.store.list(f"{store.layout.root}services/{what}/")
    return sorted(kv.key.rsplit("/", 1)[1] for kv in items)


def test_cluster_ips_are_unique_in_the_range_and_immutable(store) -> None:  # type: ignore[no-untyped-def]
    results = store.apply([svc(f"s{i}") for i in range(20)])
    ips = [r.resource.spec.cluster_ip for r in results]
    assert len(set(ips)) == 20
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/12") for ip in ips)
    assert allocated(store, "clusterips") == sorted(ips)
    # re-applying the same YAML (no clusterIP) keeps the address and changes nothing
    assert store.apply([svc("s0")])[0].action == "unchanged"
    with pytest.raises(ValidationError, match=r"spec\.clusterIP: field is immutable"):
        store.apply([svc("s0", clusterIP="10.96.0.99")])


def test_requested_addresses_must_be_in_range_and_free(store) -> None:  # type: ignore[no-untyped-def]
    store.apply([svc("a", clusterIP="10.96.0.10")])
    with pytest.raises(ValidationError, match=re.escape("10.96.0.10 is already allocated to ns/a")):
        store.apply([svc("b", clusterIP="10.96.0.10")])
    with pytest.raises(ValidationError, match=re.escape("is not in the service range 10.96.0.0/12")):
        store.apply([svc("b", clusterIP="192.168.0.1")])
    assert allocated(store, "clusterips") == ["10.96.0.10"]  # nothing half-written


def test_the_range_comes_from_the_cluster_configuration(store) -> None:  # type: ignore[no-untyped-def]
    store.apply(
        [
            parse_resource(
                {
                    "apiVersion": "podnet.io/v1",
                    "kind": "ClusterConfiguration",
                    "metadata": {"name": "default"},
                    "spec": {"serviceClusterIPRange": "10.100.0.0/29", "nodePortRange": "31000-31001"},
                }
            )
        ]
    )
    ips = {store.apply([svc(f"s{i}")])[0].resource.spec.cluster_ip for i in range(5)}
    two = [{"name": "a", "port": 80}, {"name": "b", "port": 81}]
    a = store.apply([svc("np", type="NodePort", ports=two)])[0].resource
    assert ips | {a.spec.cluster_ip} == {f"10.100.0.{i}" for i in range(1, 7)}
    assert sorted(p.node_port for p in a.spec.ports) == [31000, 31001]
    with pytest.raises(ValidationError, match="is full"):
        store.apply([svc("s6")])
    with pytest.raises(ValidationError, match="31000-31001 is full"):
        store.apply([svc("s0", type="NodePort")])


def test_node_ports_allocated_kept_released(store) -> None:  # type: ignore[no-untyped-def]
    ports = [{"name": "web", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]
    first = store.apply([svc("a", type="NodePort", ports=ports)])[0].resource
    web = next(p.node_port for p in first.spec.ports if p.name == "web")
    assert 30000 <= web <= 32767 and allocated(store, "nodeports") == sorted([str(web), "30053"])
    taken = re.escape("spec.ports[0].nodePort: 30053 is already allocated to ns/a")
    with pytest.raises(ValidationError, match=taken):
        store.apply([svc("b", type="NodePort", ports=[{"port": 80, "nodePort": 30053}])])
    # dropping a port releases its nodePort; the other keeps its number
    again = store.apply([svc("a", type="NodePort", ports=[{"name": "web", "port": 80}])])[0].resource
    assert again.spec.ports[0].node_port == web
    assert allocated(store, "nodeports") == [str(web)]
    store.delete(lookup("services"), "a", "ns")
    assert allocated(store, "nodeports") == [] and allocated(store, "clusterips") == []


def test_headless_and_external_name_allocate_nothing(store) -> None:  # type: ignore[no-untyped-def]
    store.apply([svc("h", clusterIP="None")])
    meta = {"name": "x", "namespace": "ns"}
    spec = {"type": "ExternalName", "externalName": "db.example.org"}
    store.apply([parse_resource({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})])
    assert allocated(store, "clusterips") == []
