"""Identity allocation by compare-and-swap (datastore.identity_alloc) on the in-memory store: the
same labels one number, concurrent allocators, references, and garbage collection racing a new
reference. The same protocol against a real etcd: tests/integration/test_identity_etcd.py."""

from __future__ import annotations

import random

from podnet.datastore.identity_alloc import (
    IdentityAllocator,
    collect_garbage,
    list_identities,
    references,
    release_node,
)
from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.model.identity import LabelSet

LAYOUT = KeyLayout()
WEB = LabelSet.of({"app": "web", "io.kubernetes.pod.namespace": "shop"})
API = LabelSet.of({"app": "api", "io.kubernetes.pod.namespace": "shop"})


def test_same_labels_same_number_across_nodes_distinct_labels_distinct_numbers():
    store = MemoryDatastore()
    one, two = IdentityAllocator(store, LAYOUT, "node-1"), IdentityAllocator(store, LAYOUT, "node-2")
    web = one.allocate(WEB)
    assert 256 <= web <= 65535
    assert one.allocate(WEB) == web == two.allocate(WEB)  # idempotent, cluster-wide
    api = two.allocate(API)
    assert api != web
    assert list_identities(store, LAYOUT) == dict(sorted({web: WEB, api: API}.items()))
    assert references(store, LAYOUT) == {web: ["node-1", "node-2"], api: ["node-2"]}


def test_a_taken_number_is_not_handed_out_again():
    store = MemoryDatastore()
    first = IdentityAllocator(store, LAYOUT, "node-1", random.Random(5))
    second = IdentityAllocator(store, LAYOUT, "node-2", random.Random(5))  # draws the same numbers
    numbers = {first.allocate(LabelSet.of({"app": f"a{i}"})) for i in range(20)}
    numbers |= {second.allocate(LabelSet.of({"app": f"b{i}"})) for i in range(20)}
    assert len(numbers) == 40
    assert len(list_identities(store, LAYOUT)) == 40


def test_garbage_collection_keeps_referenced_numbers():
    store = MemoryDatastore()
    one, two = IdentityAllocator(store, LAYOUT, "node-1"), IdentityAllocator(store, LAYOUT, "node-2")
    web, api = one.allocate(WEB), two.allocate(API)
    one.allocate(API)
    assert collect_garbage(store, LAYOUT) == []
    two.release(api)
    assert collect_garbage(store, LAYOUT) == []  # node-1 still uses it
    assert release_node(store, LAYOUT, "node-1", keep=[web]) == 1
    assert collect_garbage(store, LAYOUT) == [api]
    assert list(list_identities(store, LAYOUT)) == [web]
    assert one.allocate(API) not in (web,)  # allocated afresh


class RacingStore(MemoryDatastore):
    """Runs ``hook`` once, right after the first listing of a references prefix (the window
    between garbage collection's read of the labels key and its delete)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook = None

    def list(self, prefix):  # type: ignore[no-untyped-def]
        out = super().list(prefix)
        if self.hook is not None and prefix.startswith(LAYOUT.identity_refs_prefix()):
            hook, self.hook = self.hook, None
            hook()
        return out


def test_a_reference_made_while_garbage_is_collected_wins():
    store = RacingStore()
    one = IdentityAllocator(store, LAYOUT, "node-1")
    web = one.allocate(WEB)
    one.release(web)
    store.hook = lambda: IdentityAllocator(store, LAYOUT, "node-2").allocate(WEB)
    assert collect_garbage(store, LAYOUT) == []  # its delete failed: the labels key moved
    assert list_identities(store, LAYOUT) == {web: WEB}
    assert references(store, LAYOUT) == {web: ["node-2"]}


class StaleReadStore(MemoryDatastore):
    """Runs ``hook`` once, right after a read of ``key`` returned (an allocator holding a value
    that garbage collection then deletes)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key, self.hook = key, None

    def get(self, key):  # type: ignore[no-untyped-def]
        out = super().get(key)
        if self.hook is not None and key == self.key and out is not None:
            hook, self.hook = self.hook, None
            hook()
        return out


def test_a_deletion_that_won_makes_the_reference_start_over():
    store = StaleReadStore(LAYOUT.identity_labels(WEB.digest))
    one = IdentityAllocator(store, LAYOUT, "node-1")
    web = one.allocate(WEB)
    one.release(web)
    collected: list[int] = []
    store.hook = lambda: collected.extend(collect_garbage(store, LAYOUT))
    again = IdentityAllocator(store, LAYOUT, "node-2").allocate(WEB)  # read web, then it was collected
    assert collected == [web]
    assert list_identities(store, LAYOUT) == {again: WEB}  # allocated afresh, consistent
    assert references(store, LAYOUT) == {again: ["node-2"]}  # no reference to the deleted number
