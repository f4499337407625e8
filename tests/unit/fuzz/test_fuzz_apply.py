"""Fuzzing ``apply``: a batch is written whole or not at all.

Properties:

* a YAML stream of documents, some of them mutated into invalid ones: ``load_documents`` +
  ``parse_documents`` raise one ``DocumentsError`` naming *every* invalid document (and only those,
  by their 1-based number) before anything reaches the datastore; a valid stream parses whole;
* a valid batch that fails when it is written (a stale ``metadata.resourceVersion``, a
  resourceVersion on an object that does not exist, the same object twice, or another writer
  changing one of its keys just before the commit) leaves the ``MemoryDatastore`` byte-identical:
  the same keys, values and revisions (plus only the other writer's own write);
* the same holds for batches larger than one etcd transaction (``MAX_TXN_OPS``), whichever
  resource of the batch is the one that fails;
* a batch that does not fail is readable back exactly as applied.

Long mode: ``PODNET_FUZZ=long`` (see ``conftest.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from fuzz_common import ALL_EXAMPLES, fuzz_settings, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from podnet.datastore.base import Write
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import MAX_TXN_OPS, ResourceStore
from podnet.errors import PodnetError, ValidationError
from podnet.model import DocumentsError, Resource, load_documents, parse_documents, parse_resource


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("resourceVersion", None)
    return doc


def _unique_examples() -> list[dict[str, Any]]:
    store = ResourceStore(MemoryDatastore())
    seen: set[str] = set()
    out = []
    for doc in ALL_EXAMPLES:
        key = store.key_of(parse_resource(_strip(doc)))
        if key not in seen:
            seen.add(key)
            out.append(_strip(doc))
    return out


UNIQUE = _unique_examples()
SEEDED = UNIQUE[::2]  # in the store before the batch: the batch both creates and updates


def state(store: ResourceStore) -> tuple[list[Any], int]:
    """Every key with its value and revisions, and the store's revision."""
    items, revision = store.store.list("")
    return [(kv.key, kv.value, kv.mod_revision, kv.create_revision) for kv in items], revision


def _seed() -> list[Write]:
    store = ResourceStore(MemoryDatastore())
    store.apply([parse_resource(doc) for doc in SEEDED])
    return [Write(kv.key, kv.value) for kv in store.store.list("")[0]]


SEED = _seed()


def seeded_store(datastore: MemoryDatastore | None = None) -> ResourceStore:
    """A store holding SEEDED as ``apply`` wrote them (replayed: applying them each time is slow)."""
    datastore = datastore or MemoryDatastore()
    datastore.commit(SEED)
    return ResourceStore(datastore)


# ----------------------------------------------------------------------------- invalid documents


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Any], set[int]]:
    """Documents (some mutated) and the 1-based numbers of those that do not parse on their own."""
    docs = draw(st.lists(st.sampled_from(UNIQUE), min_size=1, max_size=6, unique_by=lambda d: id(d)))
    out, invalid = [], set()
    for number, doc in enumerate(docs, start=1):
        if draw(st.integers(0, 2)) == 0:
            doc = draw(mutated(doc))[0]
        try:
            parse_resource(doc)
        except ValidationError:
            invalid.add(number)
        out.append(doc)
    return out, invalid


# A Pod whose metadata.name was dropped still parses (its generateName stands in); apply failed with
# a KeyError on the missing name instead of refusing it. Pinned from the long mode.
_GENERATED = next(d for d in UNIQUE if "generateName" in d["metadata"])
_NAMELESS = {**_GENERATED, "metadata": {k: v for k, v in _GENERATED["metadata"].items() if k != "name"}}


@fuzz_settings(quick=100, long=5000)
@given(case=streams())
@example(case=([_NAMELESS], set()))
def test_invalid_documents_stop_the_batch_before_any_write(case: tuple[list[Any], set[int]]) -> None:
    docs, invalid = case
    text = yaml.safe_dump_all(docs, sort_keys=False)
    store = seeded_store()
    before = state(store)
    try:
        resources = parse_documents(load_documents(text, "batch.yaml"), "batch.yaml")
    except DocumentsError as exc:
        assert {number for number, _ in exc.errors} == invalid
        assert invalid, "a DocumentsError without an invalid document"
        for path, _ in exc.problems:
            assert path.startswith("document "), path
        assert state(store) == before
        return
    assert not invalid, f"documents {invalid} are invalid alone but the stream parsed"
    assert len(resources) == len(docs)
    apply_and_check(store, resources, before)


def apply_and_check(store: ResourceStore, resources: Sequence[Resource], before: Any) -> None:
    """Apply; on failure nothing changed, on success every resource reads back as applied."""
    try:
        results = store.apply(resources)
    except PodnetError:
        assert state(store) == before, "a failed apply changed the store"
        return
    assert len(results) == len(resources)
    for resource, result in zip(resources, results, strict=True):
        stored = store.get(store.type_of(resource), resource.name, resource.namespace)
        if resource.kind != "Service":  # a Service gains its clusterIP and nodePorts when written
            assert stored.to_dict().get("spec") == resource.to_dict().get("spec")
        if result.action != "unchanged":
            assert result.resource.metadata.resource_version == stored.metadata.resource_version


# ---------------------------------------------------------------------------- failing commits


class InterferingDatastore(MemoryDatastore):
    """A MemoryDatastore where another writer puts ``key`` just before the batch's ``at``-th commit."""

    def __init__(self) -> None:
        super().__init__()
        self.interfere: tuple[str, int] | None = None
        self.commits = 0

    def commit(self, writes: Sequence[Write]) -> int:
        self.commits += 1
        if self.interfere and self.commits == self.interfere[1]:
            key, _ = self.interfere
            self.interfere = None
            self.put(key, b'{"written":"by someone else"}')
        return super().commit(writes)


FAULTS = ("stale-version", "version-of-missing", "duplicate", "address-taken", "concurrent-writer")
# Renaming these makes them invalid (a ClusterConfiguration and a BaselineAdminNetworkPolicy must be
# "default") or clash (a Service with a fixed clusterIP): batches rename the others, and add
# Namespaces past the examples.
SINGLETONS = {"ClusterConfiguration", "BaselineAdminNetworkPolicy"}
FIXED_NAMES = SINGLETONS | {"Service"}


@st.composite
def batches(draw: st.DrawFn, size: tuple[int, int]) -> tuple[list[dict[str, Any]], str, int]:
    """Valid documents (examples, some relabelled so they change, some renamed so they are new),
    the fault to inject and which document it hits."""
    count = draw(st.integers(*size))
    docs = []
    for n in range(count):
        if n < len(UNIQUE):
            doc = copy.deepcopy(UNIQUE[n])
            if doc["kind"] not in FIXED_NAMES and draw(st.integers(0, 3)) == 0:
                doc["metadata"]["name"] = f"fuzz-{n}-{doc['metadata']['name']}"[:60].rstrip("-.")
        else:
            doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"fuzz-ns-{n}"}}
        if draw(st.booleans()):
            doc["metadata"].setdefault("labels", {})["fuzz"] = str(draw(st.integers(0, 9)))
        docs.append(doc)
    fault = draw(st.sampled_from(FAULTS))
    return docs, fault, draw(st.integers(0, count - 1))


TAKEN_IP = next(w.key.rpartition("/")[2] for w in SEED if "/services/clusterips/" in w.key)


def inject(store: ResourceStore, docs: list[dict[str, Any]], fault: str, index: int) -> list[Resource]:
    docs = copy.deepcopy(docs)
    if fault == "address-taken":  # refused by the ClusterIP allocator while the batch is prepared
        docs[index] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"fuzz-clash-{index}"},
            "spec": {"clusterIP": TAKEN_IP, "ports": [{"port": 80}]},
        }
    target = docs[index]
    # The target always changes, so the batch writes its key (an unchanged one is not written).
    target["metadata"].setdefault("labels", {})["fuzz-target"] = "yes"
    if fault == "duplicate":
        docs.append(copy.deepcopy(target))
    elif fault in ("stale-version", "version-of-missing"):
        resource = parse_resource(target)
        current = store.store.get(store.key_of(resource))
        if fault == "stale-version" and current is None:
            store.apply([resource])  # make it exist, then hand the batch an older version
            current = store.store.get(store.key_of(resource))
        if fault == "version-of-missing":
            if target["kind"] in SINGLETONS:  # must stay "default": remove the stored one
                if current is not None:
                    store.store.commit([Write(store.key_of(resource), None)])
            else:
                target["metadata"]["name"] = "fuzz-missing-" + target["metadata"]["name"][:40]
            target["metadata"]["resourceVersion"] = "7"
        else:
            assert current is not None
            target["metadata"]["resourceVersion"] = str(current.mod_revision - 1)
    return [parse_resource(doc) for doc in docs]


def check_fault(docs: list[dict[str, Any]], fault: str, index: int) -> None:
    datastore = InterferingDatastore()
    store = seeded_store(datastore)
    resources = inject(store, docs, fault, index)
    if fault == "concurrent-writer":
        datastore.commits = 0
        datastore.interfere = (store.key_of(resources[index]), 1)
        expected_extra = store.key_of(resources[index])
    before = state(store)
    with pytest.raises(PodnetError):
        store.apply(resources)
    after = state(store)
    if fault == "concurrent-writer":
        # Exactly the other writer's put happened (one key, one revision); nothing of the batch.
        items_before = {item[0]: item for item in before[0]}
        changed = [item for item in after[0] if items_before.get(item[0]) != item]
        assert [item[0] for item in changed] == [expected_extra], changed
        assert after[1] == before[1] + 1
    else:
        assert after == before, f"{fault} at {index}: the failed apply changed the store"


@fuzz_settings(quick=80, long=4000)
@given(case=batches(size=(1, 12)))
def test_failed_commit_leaves_the_store_identical(case: tuple[list[dict[str, Any]], str, int]) -> None:
    check_fault(*case)


@fuzz_settings(quick=4, long=150)
@given(case=batches(size=(MAX_TXN_OPS + 1, 2 * MAX_TXN_OPS + 20)))
def test_batches_larger_than_one_transaction_never_half_apply(
    case: tuple[list[dict[str, Any]], str, int],
) -> None:
    docs, fault, index = case
    if fault == "concurrent-writer":
        fault = "stale-version"  # see test_concurrent_writer_between_chunks
    check_fault(docs, fault, index)


@fuzz_settings(quick=30, long=1500)
@given(case=batches(size=(1, 12)))
def test_valid_batches_read_back(case: tuple[list[dict[str, Any]], str, int]) -> None:
    docs, _, _ = case
    store = seeded_store()
    apply_and_check(store, [parse_resource(doc) for doc in docs], state(store))
