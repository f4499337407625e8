"""Typed resource storage: model resources in and out of a :class:`Datastore`.

What the store adds to raw keys, as the Kubernetes API server does:
- ``metadata.resourceVersion`` is the key's etcd ``mod_revision`` (never stored, always derived);
  a resource given with a resourceVersion is written only if it still matches (optimistic lock).
- ``metadata.uid`` and ``metadata.creationTimestamp`` are set on creation and kept on update;
  ``status`` is kept when a write leaves it out.
- :meth:`apply` of an existing object keeps the system-owned fields the manifest leaves out (a
  Pod's ``spec.nodeName``, a Node's agent-written annotations), as ``kubectl apply`` does, and
  reports ``unchanged`` when nothing differs; every update is refused if it changes an immutable
  field (a Pod's spec, an IPPool's cidr), in Kubernetes' words. The rules, per kind, are in
  :mod:`podnet.datastore.update_rules`.
- Namespaced kinds default to namespace ``default``.
- :meth:`apply` writes a whole batch in one transaction: every resource was validated before it
  gets here, and either all are written or none (a concurrent change makes the batch fail).
- :meth:`patch` is a JSON merge patch (RFC 7386, like ``kubectl patch --type merge``), validated
  again before it is written, compare-and-swap on the revision it was computed from.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from podnet.datastore.base import MUST_NOT_EXIST, Datastore, KeyValue, Write
from podnet.datastore.keys import KeyLayout
from podnet.datastore.update_rules import (
    check_update,
    drop_computed_status,
    keep_server_set,
    keep_system_owned,
)
from podnet.errors import AlreadyExistsError, ConflictError, NotFoundError, PodnetError, ValidationError
from podnet.model import Resource, ResourceType, parse_resource, resource_type_for

# etcd refuses transactions with more operations than --max-txn-ops (default 128).
MAX_TXN_OPS = 128
SERVER_FIELDS = ("resourceVersion",)
T = TypeVar("T")


def txn_chunks(items: Sequence[T], ops: Callable[[T], int], limit: int = MAX_TXN_OPS) -> list[list[T]]:
    """``items`` in order, grouped so that each group's ``ops`` add up to at most ``limit`` (an
    item alone over the limit is a group of its own: etcd refuses it, nothing else can)."""
    chunks: list[list[T]] = []
    size = 0
    for item in items:
        n = ops(item)
        if not chunks or size + n > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return chunks


@dataclass(frozen=True)
class ApplyResult:
    resource: Resource
    action: str  # "created" | "configured" | "unchanged"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stored_name(resource: Resource) -> str:
    """The name a resource is stored under. The model accepts ``generateName`` in place of a name
    (``kubectl get -o yaml`` output has both), but the store does not generate names: like
    ``kubectl apply``, refuse such a document instead of failing on the missing name."""
    name = resource.metadata.name
    if not name:
        raise ValidationError(
            [("metadata.name", "required: podnet does not generate names from generateName")],
            hint="give the resource a metadata.name",
            subject=resource.describe(),
        )
    return name


class ResourceStore:
    def __init__(self, store: Datastore, layout: KeyLayout | None = None) -> None:
        self.store = store
        self.layout = layout or KeyLayout.from_env()

    # -- keys ------------------------------------------------------------------------------
    def key(self, rtype: ResourceType, name: str, namespace: str | None = None) -> str:
        ns = (namespace or "default") if rtype.namespaced else None
        return self.layout.resource(rtype.key_name, name, ns)

    def key_of(self, resource: Resource) -> str:
        return self.key(self.type_of(resource), _stored_name(resource), resource.metadata.namespace)

    @staticmethod
    def type_of(resource: Resource) -> ResourceType:
        return resource_type_for(resource.api_version, resource.kind)

    # -- decoding --------------------------------------------------------------------------
    def _decode(self, kv: KeyValue) -> Resource:
        doc = json.loads(kv.value)
        doc.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        return parse_resource(doc)

    @staticmethod
    def _encode(doc: dict) -> bytes:
        meta = doc.get("metadata") or {}
        for name in SERVER_FIELDS:
            meta.pop(name, None)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    # -- reads -----------------------------------------------------------------------------
    def get(self, rtype: ResourceType, name: str, namespace: str | None = None) -> Resource:
        kv = self.store.get(self.key(rtype, name, namespace))
        if kv is None:
            where = f" in namespace {namespace or 'default'}" if rtype.namespaced else ""
            raise NotFoundError(
                f'{rtype.kind} "{name}" not found{where}',
                hint=f"list what exists with: podnet get {rtype.plural}",
            )
        return self._decode(kv)

    def list(self, rtype: ResourceType, namespace: str | None = None) -> list[Resource]:
        ns = namespace if rtype.namespaced else None
        items, _ = self.store.list(self.layout.resource_type_prefix(rtype.key_name, ns))
        return [self._decode(kv) for kv in items]

    # -- writes ----------------------------------------------------------------------------
    def _allocator(self):  # type: ignore[no-untyped-def]
        """A ServiceAllocator for one batch (ranges from the ClusterConfiguration, read lazily)."""
        from podnet.datastore.service_alloc import DEFAULT_NODE_PORTS, DEFAULT_SERVICE_RANGE, ServiceAllocator
        from podnet.model import lookup
        from podnet.model.cluster import parse_port_range

        def ranges() -> tuple[str, tuple[int, int]]:
            try:
                config = self.get(lookup("clusterconfigurations"), "default")
            except NotFoundError:
                return DEFAULT_SERVICE_RANGE, DEFAULT_NODE_PORTS
            spec = config.spec
            return spec.service_cluster_ip_range, parse_port_range(spec.node_port_range)

        return ServiceAllocator(self.store, self.layout, ranges)

    def _prepare(
        self,
        resource: Resource,
        current: KeyValue | None,
        allocator=None,  # type: ignore[no-untyped-def]
        applying: bool = False,
    ) -> tuple[Write, str, dict, list[Write]]:
        """The write for one resource, whether it creates, changes or leaves it, and the writes
        that must go with it (a Service's ClusterIP and NodePort allocations). ``applying``: an
        apply, which keeps the system-owned fields the manifest leaves out (update_rules)."""
        rtype = self.type_of(resource)
        _stored_name(resource)
        doc = resource.to_dict()
        meta = doc.setdefault("metadata", {})
        if rtype.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        wanted_version = meta.pop("resourceVersion", None)
        drop_computed_status(rtype.kind, doc)
        key = self.key(rtype, meta["name"], meta.get("namespace"))
        if current is None:
            if wanted_version:
                raise NotFoundError(f"{rtype.kind} {meta['name']!r} no longer exists")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            extra = self._admit(rtype, doc, None, allocator)
            return Write(key, self._encode(doc), MUST_NOT_EXIST), "created", doc, extra
        if wanted_version and int(wanted_version) != current.mod_revision:
            raise ConflictError(
                f"{rtype.kind} {meta['name']!r} was modified (resourceVersion {current.mod_revision}, "
                f"given {wanted_version})",
                hint="get it again, re-apply your change, or drop metadata.resourceVersion",
            )
        old = json.loads(current.value)
        keep_server_set(doc, old)
        if applying and keep_system_owned(rtype.kind, doc, old):
            parse_resource(doc)  # what was kept still makes a valid object with what was applied
        check_update(rtype.kind, old, doc)
        extra = self._admit(rtype, doc, old, allocator)
        encoded = self._encode(doc)
        action = "unchanged" if encoded == current.value else "configured"
        return Write(key, encoded, current.mod_revision), action, doc, extra

    def _admit(self, rtype: ResourceType, doc: dict, old: dict | None, allocator) -> list[Write]:  # type: ignore[no-untyped-def]
        if rtype.kind != "Service":
            return []
        return (allocator or self._allocator()).admit(doc, old)

    def apply(self, resources: Sequence[Resource]) -> list[ApplyResult]:
        """Create or update every resource in one transaction (chunks of MAX_TXN_OPS).

        The whole batch is prepared before anything is written, so a resource that is refused (a
        stale resourceVersion, an object that vanished, an address already taken) stops the batch
        with nothing written, however many chunks it has. Only another writer changing a key of a
        later chunk between two chunk commits can still leave a batch larger than one transaction
        partly applied (etcd's --max-txn-ops bounds one transaction).
        """
        keys = [self.key_of(r) for r in resources]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise PodnetError(f"the input defines {sorted(dupes)[0]} more than once")
        allocator = self._allocator()  # one for the batch: it remembers what the batch took
        prepared = [
            self._prepare(resource, self.store.get(key), allocator, applying=True)
            for resource, key in zip(resources, keys, strict=True)
        ]
        return self._commit_prepared(prepared)

    def _commit_prepared(self, prepared: list[tuple[Write, str, dict, list[Write]]]) -> list[ApplyResult]:
        """Commit prepared writes in transactions of at most MAX_TXN_OPS operations (a Service
        brings its allocation keys along, so 128 Services are more than 128 operations)."""
        results: list[ApplyResult] = []
        for chunk in txn_chunks(prepared, lambda p: (0 if p[1] == "unchanged" else 1) + len(p[3])):
            writes = []
            for write, action, _, extra in chunk:
                if action != "unchanged":
                    writes.append(write)
                writes.extend(extra)
            revision = self.store.commit(writes) if writes else 0
            for _, action, doc, _ in chunk:
                if action != "unchanged":
                    doc["metadata"]["resourceVersion"] = str(revision)
                results.append(ApplyResult(parse_resource(doc), action))
        return results

    def create_many(self, resources: Sequence[Resource]) -> list[ApplyResult]:
        """Create every resource, none of which may exist, in as few transactions as etcd takes.

        Unlike :meth:`apply` it reads nothing per resource (each key is written ``MUST_NOT_EXIST``,
        so an object that exists fails its transaction): bulk creation (benchmarks, imports) of
        tens of thousands of objects costs the commits, not one read each. Transactions committed
        before a failing one stay written.
        """
        keys = [self.key_of(r) for r in resources]
        if len(set(keys)) != len(keys):
            raise PodnetError("the input defines an object more than once")
        allocator = self._allocator()
        return self._commit_prepared([self._prepare(r, None, allocator) for r in resources])

    def delete_many(self, rtype: ResourceType, names: Sequence[str], namespace: str | None = None) -> int:
        """Delete the named objects of one kind and namespace (a Service's allocations released
        with it) in transactions of at most MAX_TXN_OPS operations, after one list of the kind;
        names that do not exist are skipped. Returns how many were deleted."""
        ns = (namespace or "default") if rtype.namespaced else None
        items, _ = self.store.list(self.layout.resource_type_prefix(rtype.key_name, ns))
        current = {kv.key: kv for kv in items}
        allocator = self._allocator() if rtype.kind == "Service" else None
        batches: list[list[Write]] = []
        for name in names:
            kv = current.get(self.key(rtype, name, ns))
            if kv is None:
                continue
            release = allocator.release(json.loads(kv.value)) if allocator is not None else []
            batches.append([Write(kv.key, None, kv.mod_revision), *release])
        for chunk in txn_chunks(batches, len):
            self.store.commit([w for batch in chunk for w in batch])
        return len(batches)

    def create(self, resource: Resource) -> Resource:
        write, _, doc, extra = self._prepare(resource, None)
        try:
            revision = self.store.commit([write, *extra])
        except ConflictError as exc:
            raise AlreadyExistsError(f"{resource.kind} {resource.metadata.name!r} already exists") from exc
        doc["metadata"]["resourceVersion"] = str(revision)
        return parse_resource(doc)

    def update(self, resource: Resource) -> Resource:
        """Write ``resource`` over the stored one; CAS on its resourceVersion if it has one."""
        current = self.store.get(self.key_of(resource))
        if current is None:
            raise NotFoundError(f"{resource.kind} {resource.metadata.name!r} not found")
        write, _, doc, extra = self._prepare(resource, current)
        doc["metadata"]["resourceVersion"] = str(self.store.commit([write, *extra]))
        return parse_resource(doc)

    def patch(
        self, rtype: ResourceType, name: str, patch: dict, namespace: str | None = None, retries: int = 5
    ) -> Resource:
        """Merge-patch the stored resource; re-validated; retried if someone wrote in between."""
        if not isinstance(patch, dict):
            raise PodnetError("a merge patch must be a JSON/YAML object", hint='e.g. {"spec": {...}}')
        for attempt in range(retries):
            current = self.get(rtype, name, namespace)
            doc = merge_patch(current.to_dict(), patch)
            meta = doc.setdefault("metadata", {})
            if meta.get("name") != name or (
                rtype.namespaced and meta.get("namespace") != current.metadata.namespace
            ):
                raise PodnetError("a patch cannot change metadata.name or metadata.namespace")
            meta["resourceVersion"] = current.metadata.resource_version
            try:
                return self.update(parse_resource(doc))
            except ConflictError:
                if attempt == retries - 1:
                    raise
        raise AssertionError("unreachable")

    def delete(self, rtype: ResourceType, name: str, namespace: str | None = None) -> int:
        """Delete the resource (a Service's ClusterIP and NodePorts are released with it); the
        datastore revision of the deletion."""
        key = self.key(rtype, name, namespace)
        try:
            if rtype.kind == "Service":
                current = self.store.get(key)
                if current is None:
                    raise NotFoundError(key)
                release = self._allocator().release(json.loads(current.value))
                return self.store.commit([Write(key, None, current.mod_revision), *release])
            return self.store.delete(key)
        except NotFoundError:
            where = f" in namespace {namespace or 'default'}" if rtype.namespaced else ""
            raise NotFoundError(f'{rtype.kind} "{name}" not found{where}') from None
