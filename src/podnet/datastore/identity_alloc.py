"""Cluster-wide numeric identities for label sets, allocated in the datastore by compare-and-swap.

Cilium's kvstore allocator is the model (a master key per number, a key per label set, a reference
per node that uses it, garbage collection of what no node references)::

    <root>identities/id/<number>            {"labels": ["k8s:app=web", ...]}   the number's labels
    <root>identities/labels/<digest>        {"id": <number>}                   the labels' number
    <root>identities/refs/<number>/<node>   {}                                 a node uses it

- **Allocate** (:meth:`IdentityAllocator.allocate`, idempotent): the labels' key names the number
  when it exists; otherwise a free number of 256-65535 is chosen at random and its ``id`` and
  ``labels`` keys are created in ONE transaction, both ``MUST_NOT_EXIST`` — two agents allocating
  the same labels, or two label sets the same number, cannot both win; the loser reads again.
- **Reference**: the node's ``refs`` key is written in one transaction with the labels key
  rewritten unchanged, on the condition that the labels key is still at the revision just read.
- **Collect garbage** (:func:`collect_garbage`): a number without references is deleted (both
  keys) on the condition that its labels key is still at the revision read *before* the references
  were listed. So the two race safely: a reference committed after that read moved the labels
  key's revision and the deletion fails; one committed before it is in the listing. A deletion
  that won makes a concurrent reference's transaction fail (the labels key is gone), and that
  allocation starts over.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

from podnet.datastore.base import MUST_NOT_EXIST, Datastore, KeyValue, Write
from podnet.datastore.keys import KeyLayout
from podnet.errors import ConflictError, DatastoreError, NotFoundError
from podnet.model.identity import MAX_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY, LabelSet, parse_label_set

ATTEMPTS = 20


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


class IdentityAllocator:
    """Allocation and references for one node (``node``: the name its references carry)."""

    def __init__(
        self, store: Datastore, layout: KeyLayout, node: str, rng: random.Random | None = None
    ) -> None:
        self.store, self.layout, self.node = store, layout, node
        self.rng = rng or random.SystemRandom()

    def allocate(self, labels: LabelSet) -> int:
        """The number of ``labels`` (allocated when new), referenced by this node."""
        key = self.layout.identity_labels(labels.digest)
        for _ in range(ATTEMPTS):
            found = self.store.get(key)
            if found is None:
                number = self._free_number()
                stored = _json({"labels": list(labels.labels)})
                writes = [
                    Write(self.layout.identity(number), stored, MUST_NOT_EXIST),
                    Write(key, _json({"id": number}), MUST_NOT_EXIST),
                ]
                try:
                    self.store.commit(writes)
                except ConflictError:
                    continue  # the number or the labels were taken meanwhile: read again
                found = self.store.get(key)
                if found is None:
                    continue  # collected at once (no reference yet): allocate again
            number = int(json.loads(found.value)["id"])
            try:
                self.store.commit(
                    [
                        Write(self.layout.identity_ref(number, self.node), b"{}"),
                        Write(key, found.value, found.mod_revision),
                    ]
                )
            except (ConflictError, NotFoundError):
                continue  # referenced or collected concurrently: read again
            return number
        raise DatastoreError(f"identity for {labels}: no allocation after {ATTEMPTS} attempts (contention)")

    def release(self, number: int) -> None:
        """This node no longer uses ``number`` (its reference goes; the number stays until GC)."""
        self.store.delete(self.layout.identity_ref(number, self.node))

    def _free_number(self) -> int:
        taken = set(list_identities(self.store, self.layout))
        size = MAX_CLUSTER_IDENTITY - MIN_CLUSTER_IDENTITY + 1
        if len(taken) >= size:
            raise DatastoreError(f"no free identity: all {size} cluster identities are in use")
        while True:
            number = self.rng.randint(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY)
            if number not in taken:
                return number


def _number(layout: KeyLayout, kv: KeyValue) -> int | None:
    tail = kv.key.removeprefix(layout.identities_prefix())
    return int(tail) if tail.isdigit() else None


def list_identities(store: Datastore, layout: KeyLayout) -> dict[int, LabelSet]:
    """Every allocated number and its labels (entries that do not parse are left out)."""
    out: dict[int, LabelSet] = {}
    for kv in store.list(layout.identities_prefix())[0]:
        number = _number(layout, kv)
        if number is None:
            continue
        try:
            out[number] = parse_label_set(json.loads(kv.value)["labels"])
        except (ValueError, KeyError, TypeError):
            continue
    return dict(sorted(out.items()))


def references(store: Datastore, layout: KeyLayout) -> dict[int, list[str]]:
    """number -> the nodes referencing it."""
    out: dict[int, list[str]] = {}
    for kv in store.list(layout.identity_refs_prefix())[0]:
        number, _, node = kv.key.removeprefix(layout.identity_refs_prefix()).partition("/")
        if number.isdigit() and node:
            out.setdefault(int(number), []).append(node)
    return out


def release_node(store: Datastore, layout: KeyLayout, node: str, keep: Iterable[int] = ()) -> int:
    """Drop ``node``'s references but those in ``keep`` (an agent's resync, a node removed):
    how many went."""
    keep = set(keep)
    gone = 0
    for number, nodes in references(store, layout).items():
        if node in nodes and number not in keep:
            store.delete(layout.identity_ref(number, node))
            gone += 1
    return gone


def collect_garbage(store: Datastore, layout: KeyLayout) -> list[int]:
    """Delete every number no node references (see the module docstring for the race with a new
    reference); returns those deleted. Three range reads whatever the count, in this order: every
    number (so each was created, with its labels key, before the next read), every labels key
    (read BEFORE the references are listed: their revisions fence the deletes), every reference;
    then one transaction per unreferenced number."""
    numbers = store.list(layout.identities_prefix())[0]
    labels_kvs = {kv.key: kv for kv in store.list(layout.identity_labels(""))[0]}
    referenced = set(references(store, layout))
    deleted = []
    for kv in numbers:
        number = _number(layout, kv)
        if number is None or number in referenced:
            continue
        try:
            labels_key = layout.identity_labels(parse_label_set(json.loads(kv.value)["labels"]).digest)
        except (ValueError, KeyError, TypeError):
            labels_key = None
        writes = [Write(layout.identity(number), None, kv.mod_revision)]
        labels_kv = labels_kvs.get(labels_key) if labels_key else None
        if labels_kv is not None and _labels_number(labels_kv) == number:
            writes.append(Write(labels_kv.key, None, labels_kv.mod_revision))
        try:
            store.commit(writes)
        except (ConflictError, NotFoundError):
            continue  # referenced or changed meanwhile: kept
        deleted.append(number)
    return deleted


def _labels_number(kv: KeyValue) -> int | None:
    try:
        number = json.loads(kv.value).get("id")
    except (ValueError, AttributeError):
        return None
    return number if isinstance(number, int) else None
