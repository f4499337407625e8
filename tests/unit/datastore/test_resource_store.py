"""ResourceStore semantics on the in-memory datastore (the contract tests hold it to etcd's)."""

from __future__ import annotations

import pytest

from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import MAX_TXN_OPS, ResourceStore
from podnet.errors import ConflictError, NotFoundError, PodnetError, ValidationError
from podnet.model import lookup, parse_resource

POOL = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "IPPool",
    "metadata": {"name": "pool-a"},
    "spec": {"cidr": "10.10.0.0/16"},
}


@pytest.fixture
def store() -> ResourceStore:
    return ResourceStore(MemoryDatastore())


def ns(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def test_apply_creates_then_reports_unchanged_then_configured(store):
    [first] = store.apply([parse_resource(POOL)])
    assert first.action == "created"
    assert first.resource.metadata.uid and first.resource.metadata.creation_timestamp
    [again] = store.apply([parse_resource(POOL)])
    assert again.action == "unchanged"
    changed = {**POOL, "spec": {"cidr": "10.10.0.0/16", "natOutgoing": True}}
    [third] = store.apply([parse_resource(changed)])
    assert third.action == "configured"
    got = store.get(lookup("ippool"), "pool-a")
    assert got.spec.nat_outgoing is True
    assert got.metadata.uid == first.resource.metadata.uid
    assert int(got.metadata.resource_version) > int(first.resource.metadata.resource_version)


def test_namespaced_default_namespace(store):
    netpol = parse_resource(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny"},
            "spec": {"podSelector": {}},
        }
    )
    store.apply([netpol])
    assert store.get(lookup("netpol"), "deny").metadata.namespace == "default"
    assert store.list(lookup("netpol"), "other") == []
    assert [r.metadata.name for r in store.list(lookup("netpol"))] == ["deny"]


def test_stale_resource_version_is_a_conflict(store):
    [res] = store.apply([parse_resource(POOL)])
    stale = res.resource.to_dict()
    store.patch(lookup("ippool"), "pool-a", {"spec": {"natOutgoing": True}})
    with pytest.raises(ConflictError):
        store.apply([parse_resource(stale)])


def test_batch_is_all_or_nothing(store):
    store.apply([parse_resource(ns("taken"))])
    [existing] = store.list(lookup("ns"))
    stale = existing.to_dict()
    store.patch(lookup("ns"), "taken", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ConflictError):
        store.apply([parse_resource(ns("fresh")), parse_resource(stale)])
    assert [r.metadata.name for r in store.list(lookup("ns"))] == ["taken"]


def test_duplicate_in_one_batch_is_refused(store):
    with pytest.raises(PodnetError):
        store.apply([parse_resource(ns("a")), parse_resource(ns("a"))])


def test_large_batches_are_chunked(store):
    results = store.apply([parse_resource(ns(f"n{i}")) for i in range(MAX_TXN_OPS + 5)])
    assert len(results) == MAX_TXN_OPS + 5 and {r.action for r in results} == {"created"}


def test_patch_is_revalidated_and_keeps_the_old_state_on_error(store):
    store.apply([parse_resource(POOL)])
    with pytest.raises(ValidationError) as info:
        store.patch(lookup("ippool"), "pool-a", {"spec": {"ipipMode": "Sometimes"}})
    assert "spec.ipipMode" in str(info.value)
    assert store.get(lookup("ippool"), "pool-a").spec.ipip_mode == "Never"
    with pytest.raises(PodnetError):
        store.patch(lookup("ippool"), "pool-a", {"metadata": {"name": "renamed"}})
    with pytest.raises(NotFoundError):
        store.patch(lookup("ippool"), "missing", {"spec": {}})


def test_status_survives_apply(store):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    store.apply([parse_resource(pod)])
    current = store.get(lookup("pod"), "p", "default").to_dict()
    current["status"] = {"phase": "Running", "podIP": "10.10.0.5"}
    store.update(parse_resource(current))
    pod["metadata"]["labels"] = {"a": "b"}
    store.apply([parse_resource(pod)])
    got = store.get(lookup("pod"), "p", "default")
    assert got.status.pod_ip == "10.10.0.5" and got.metadata.labels == {"a": "b"}


def test_delete(store):
    store.apply([parse_resource(POOL)])
    store.delete(lookup("ippools"), "pool-a")
    with pytest.raises(NotFoundError):
        store.delete(lookup("ippools"), "pool-a")


# -- bulk: chunks by operation count, create_many, delete_many ----------------------------


class CountingStore(MemoryDatastore):
    """Records the number of operations of each commit (etcd refuses more than MAX_TXN_OPS)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[int] = []

    def commit(self, writes):  # type: ignore[no-untyped-def]
        self.commits.append(len(writes))
        return super().commit(writes)


def service(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80}]},
    }


def test_txn_chunks_respects_the_limit_and_the_order():
    from podnet.datastore.resources import txn_chunks

    assert txn_chunks([1, 2, 3, 1, 1], lambda n: n, limit=3) == [[1, 2], [3], [1, 1]]
    assert txn_chunks([5, 1], lambda n: n, limit=3) == [[5], [1]]  # alone over the limit
    assert txn_chunks([], len) == []


def test_apply_of_many_services_stays_within_max_txn_ops():
    counting = CountingStore()
    store = ResourceStore(counting)
    store.apply([parse_resource(service(f"s{i}")) for i in range(100)])  # 100 services + 100 IPs
    assert max(counting.commits) <= MAX_TXN_OPS
    assert sum(counting.commits) == 200
    ips = {s.spec.cluster_ip for s in store.list(lookup("services"), "default")}
    assert len(ips) == 100


def test_create_many_allocates_and_refuses_an_existing_object():
    counting = CountingStore()
    store = ResourceStore(counting)
    results = store.create_many([parse_resource(service(f"s{i}")) for i in range(150)])
    assert [r.action for r in results] == ["created"] * 150
    assert max(counting.commits) <= MAX_TXN_OPS and sum(counting.commits) == 300
    assert len({r.resource.spec.cluster_ip for r in results}) == 150
    with pytest.raises(ConflictError):
        store.create_many([parse_resource(service("s3"))])
    with pytest.raises(PodnetError):
        store.create_many([parse_resource(service("x")), parse_resource(service("x"))])


def test_delete_many_releases_cluster_ips():
    store = ResourceStore(CountingStore())
    store.create_many([parse_resource(service(f"s{i}")) for i in range(70)])
    assert store.delete_many(lookup("services"), [f"s{i}" for i in range(60)] + ["absent"], "default") == 60
    assert sorted(s.metadata.name for s in store.list(lookup("services"), "default")) == [
        f"s{i}" for i in range(60, 70)
    ]
    allocated, _ = store.store.list(f"{store.layout.root}services/clusterips/")
    assert len(allocated) == 10
