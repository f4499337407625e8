"""IPAM consistency check (``podnet ipam check``) and garbage-collection decisions. Pure, no I/O.

Both work on an :class:`IPAMSnapshot`: every block, affinity and handle read in ONE datastore list
of the IPAM prefix, so the picture is consistent (one revision); a check built from three separate
lists would report allocations made between them as missing handles.

``analyse`` reports, each item naming what and where (kinds are the ``ISSUE_*`` constants):

- ``leaked-address``        an allocation whose handle is not live (no pod/tunnel owns it);
- ``duplicate-address``     one address in two blocks, one address used by two live handles, or an
                            address used by a handle while IPAM holds it for another (``in_use``);
- ``in-use-not-allocated``  a live handle uses an address IPAM has not allocated;
- ``stale-affinity``        a block or affinity record affine to a node that no longer exists;
- ``affinity-mismatch``     an affinity record without its block (or the block is affine elsewhere),
                            or a block affine to a node without the node's affinity record;
- ``empty-handle``          a handle record with no allocations;
- ``handle-mismatch``       a handle record whose per-block counts disagree with the blocks;
- ``missing-handle``        allocations whose handle has no handle record;
- ``overlapping-blocks``    two blocks covering the same addresses;
- ``outside-pool``          a block in no configured pool (only when pools are given);
- ``corrupt-record``        a value that does not parse or a block that is internally inconsistent.

Garbage collection (:class:`GcTracker`) mirrors Calico's kube-controllers IPAM GC
(design/ipam/ipam-gc.md): a leaked allocation is only a *candidate* the first time it is seen; it
is released when a later pass sees the very same allocation (block, ordinal, handle, sequence number)
still leaked and either ``grace_seconds`` have passed since it was first seen or its node is gone.
A handle's addresses are released all together or not at all, and the executor re-validates (handle
liveness callback, then the ABA-guarded release by handle + sequence number) just before it writes.
Empty blocks of deleted nodes (and, optionally, surplus empty blocks of live nodes, never a node's
last block), dangling affinities and empty handle records are removed after two consecutive
observations at the same datastore revision, with a compare-and-swap on that revision, so anything
written meanwhile keeps them alive.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet.datastore.base import KeyValue
from podnet.datastore.keys import KeyLayout, token_to_cidr
from podnet.ipam.block import Allocation, Block
from podnet.ipam.errors import CorruptRecord
from podnet.ipam.pools import PoolSpec, pool_for_block
from podnet.ipam.records import AffinityRecord, HandleRecord

ISSUE_LEAKED = "leaked-address"
ISSUE_DUPLICATE = "duplicate-address"
ISSUE_IN_USE_NOT_ALLOCATED = "in-use-not-allocated"
ISSUE_STALE_AFFINITY = "stale-affinity"
ISSUE_AFFINITY_MISMATCH = "affinity-mismatch"
ISSUE_EMPTY_HANDLE = "empty-handle"
ISSUE_HANDLE_MISMATCH = "handle-mismatch"
ISSUE_MISSING_HANDLE = "missing-handle"
ISSUE_OVERLAPPING_BLOCKS = "overlapping-blocks"
ISSUE_OUTSIDE_POOL = "outside-pool"
ISSUE_CORRUPT = "corrupt-record"


# -- snapshot --------------------------------------------------------------------------------
@dataclass
class IPAMSnapshot:
    revision: int
    blocks: dict[str, tuple[Block, int]] = field(default_factory=dict)  # cidr -> (block, mod_revision)
    affinities: dict[tuple[str, str], tuple[AffinityRecord, int]] = field(default_factory=dict)
    handles: dict[str, tuple[HandleRecord, int]] = field(default_factory=dict)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (key, problem)

    @classmethod
    def from_kvs(cls, kvs: Iterable[KeyValue], layout: KeyLayout, revision: int) -> IPAMSnapshot:
        snap = cls(revision)
        blocks_prefix, aff_prefix = layout.blocks_prefix(), layout.affinities_prefix()
        handles_prefix = layout.handles_prefix()
        for kv in kvs:
            try:
                if kv.key.startswith(blocks_prefix):
                    block = Block.from_json(kv.value)
                    snap.blocks[block.cidr] = (block, kv.mod_revision)
                elif kv.key.startswith(aff_prefix):
                    node, _, token = kv.key[len(aff_prefix) :].rpartition("/")
                    cidr = str(ipaddress.ip_network(token_to_cidr(token)))
                    snap.affinities[(node, cidr)] = (AffinityRecord.from_json(kv.value), kv.mod_revision)
                elif kv.key.startswith(handles_prefix):
                    record = HandleRecord.from_json(kv.value)
                    snap.handles[kv.key[len(handles_prefix) :]] = (record, kv.mod_revision)
            except (CorruptRecord, ValueError) as exc:
                snap.corrupt.append((kv.key, str(exc)))
        return snap

    def allocations(self) -> list[Allocation]:
        return [a for block, _ in self.blocks.values() for a in block.all_allocations()]


# -- report ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckIssue:
    kind: str
    message: str
    address: str | None = None
    handle: str | None = None
    block: str | None = None
    node: str | None = None
    ordinal: int | None = None
    sequence: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class CheckReport:
    revision: int
    issues: list[CheckIssue]
    blocks: int
    allocations: int
    handles: int
    affinities: int

    @property
    def ok(self) -> bool:
        return not self.issues

    def of_kind(self, kind: str) -> list[CheckIssue]:
        return [i for i in self.issues if i.kind == kind]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for issue in self.issues:
            out[issue.kind] += 1
        return dict(out)

    def summary(self) -> str:
        head = (
            f"IPAM check at revision {self.revision}: {self.blocks} blocks, {self.allocations} allocations, "
            f"{self.handles} handles, {self.affinities} affinities: "
        )
        if self.ok:
            return head + "no problems found"
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        return head + kinds + "\n" + "\n".join(f"  {i}" for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "revision": self.revision,
            "blocks": self.blocks,
            "allocations": self.allocations,
            "handles": self.handles,
            "affinities": self.affinities,
            "counts": self.counts(),
            "issues": [i.to_dict() for i in self.issues],
        }


def _overlaps(blocks: Iterable[Block]) -> list[tuple[Block, Block]]:
    ordered = sorted(blocks, key=lambda b: (b.network.version, int(b.network.network_address)))
    out = []
    for prev, cur in itertools.pairwise(ordered):
        if prev.network.version == cur.network.version and prev.network.overlaps(cur.network):  # type: ignore[arg-type]
            out.append((prev, cur))
    return out


def analyse(
    snap: IPAMSnapshot,
    live_handles: Collection[str] | None,
    nodes: Collection[str] | None,
    *,
    in_use: Mapping[str, Iterable[str]] | None = None,
    pools: Sequence[PoolSpec] | None = None,
) -> CheckReport:
    """Everything wrong in ``snap``. ``None`` for ``live_handles``/``nodes`` skips those checks.

    ``in_use`` maps live handles to the addresses their workloads actually use (from pod status or
    workload endpoints); it enables the duplicate-owner and in-use-not-allocated checks.
    """
    issues: list[CheckIssue] = []
    add = issues.append
    for key, problem in snap.corrupt:
        add(CheckIssue(ISSUE_CORRUPT, f"{key}: {problem}"))

    owners: dict[str, list[Allocation]] = defaultdict(list)
    held: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # handle -> cidr -> n
    stale: set[tuple[str, str]] = set()
    for cidr, (block, _) in sorted(snap.blocks.items()):
        for alloc in block.all_allocations():
            owners[alloc.address].append(alloc)
            held[alloc.handle_id][cidr] += 1
        node = block.node
        if block.affinity and node is None:
            problem = f"block {cidr} has unknown affinity {block.affinity!r}"
            add(CheckIssue(ISSUE_CORRUPT, problem, block=cidr))
        if node is not None:
            if nodes is not None and node not in nodes:
                stale.add((node, cidr))
            if (node, cidr) not in snap.affinities:
                add(
                    CheckIssue(
                        ISSUE_AFFINITY_MISMATCH,
                        f"block {cidr} is affine to node {node} but the node has no affinity record for it",
                        block=cidr,
                        node=node,
                    )
                )
        if pools is not None and pool_for_block(pools, cidr) is None:
            add(CheckIssue(ISSUE_OUTSIDE_POOL, f"block {cidr} lies in no configured IP pool", block=cidr))

    for a, b in _overlaps(block for block, _ in snap.blocks.values()):
        add(
            CheckIssue(
                ISSUE_OVERLAPPING_BLOCKS, f"blocks {a.cidr} and {b.cidr} overlap", block=f"{a.cidr},{b.cidr}"
            )
        )

    for address, allocs in sorted(owners.items()):
        if len(allocs) > 1:
            where = ", ".join(f"block {a.block} (handle {a.handle_id})" for a in allocs)
            add(CheckIssue(ISSUE_DUPLICATE, f"{address} is allocated in {where}", address=address))

    if live_handles is not None:
        for address, allocs in sorted(owners.items()):
            for a in allocs:
                if a.handle_id not in live_handles:
                    add(
                        CheckIssue(
                            ISSUE_LEAKED,
                            f"{address} in block {a.block} is allocated to handle {a.handle_id!r} "
                            f"(node {a.node}, since {a.attrs.get('timestamp', '?')}), which is not in use",
                            address=address,
                            handle=a.handle_id,
                            block=a.block,
                            node=a.node,
                            ordinal=a.ordinal,
                            sequence=a.sequence,
                        )
                    )

    for hid, (record, _) in sorted(snap.handles.items()):
        actual = dict(held.get(hid, {}))
        if not actual:
            add(CheckIssue(ISSUE_EMPTY_HANDLE, f"handle {hid!r} has a record but no allocations", handle=hid))
        elif actual != record.blocks:
            add(
                CheckIssue(
                    ISSUE_HANDLE_MISMATCH,
                    f"handle {hid!r} record says {record.blocks} but the blocks hold {actual}",
                    handle=hid,
                )
            )
    for hid in sorted(set(held) - set(snap.handles)):
        addresses = sorted(a for a, allocs in owners.items() if any(x.handle_id == hid for x in allocs))
        add(
            CheckIssue(
                ISSUE_MISSING_HANDLE,
                f"handle {hid!r} holds {', '.join(addresses)} but has no handle record",
                handle=hid,
                address=addresses[0] if len(addresses) == 1 else None,
            )
        )

    for (node, cidr), _ in sorted(snap.affinities.items()):
        if nodes is not None and node not in nodes:
            stale.add((node, cidr))
        entry = snap.blocks.get(cidr)
        if entry is None:
            add(
                CheckIssue(
                    ISSUE_AFFINITY_MISMATCH,
                    f"node {node} has an affinity for block {cidr}, which does not exist",
                    block=cidr,
                    node=node,
                )
            )
        elif entry[0].node != node:
            add(
                CheckIssue(
                    ISSUE_AFFINITY_MISMATCH,
                    f"node {node} has an affinity for block {cidr}, which is affine to {entry[0].affinity}",
                    block=cidr,
                    node=node,
                )
            )
    for node, cidr in sorted(stale):
        add(
            CheckIssue(
                ISSUE_STALE_AFFINITY,
                f"block {cidr} is affine to node {node}, which no longer exists",
                block=cidr,
                node=node,
            )
        )

    if in_use:
        users: dict[str, list[str]] = defaultdict(list)
        for hid, addresses in in_use.items():
            for address in addresses:
                users[str(ipaddress.ip_address(address.split("/")[0]))].append(hid)
        for address, hids in sorted(users.items()):
            if len(hids) > 1:
                add(
                    CheckIssue(
                        ISSUE_DUPLICATE,
                        f"{address} is used by several handles: {', '.join(sorted(hids))}",
                        address=address,
                    )
                )
            allocs = owners.get(address)
            if not allocs:
                add(
                    CheckIssue(
                        ISSUE_IN_USE_NOT_ALLOCATED,
                        f"{address} is used by {', '.join(hids)} but not allocated in IPAM",
                        address=address,
                        handle=hids[0],
                    )
                )
                continue
            for hid in hids:
                if all(a.handle_id != hid for a in allocs):
                    add(
                        CheckIssue(
                            ISSUE_DUPLICATE,
                            f"{address} is used by handle {hid!r} but IPAM holds it for "
                            f"{', '.join(repr(a.handle_id) for a in allocs)}",
                            address=address,
                            handle=hid,
                        )
                    )

    return CheckReport(
        revision=snap.revision,
        issues=issues,
        blocks=len(snap.blocks),
        allocations=sum(len(v) for v in owners.values()),
        handles=len(snap.handles),
        affinities=len(snap.affinities),
    )


# -- garbage collection ----------------------------------------------------------------------
LeakKey = tuple[str, int, str, int | None]  # (block, ordinal, handle, sequence)


@dataclass
class GcPlan:
    """What one GC pass may release; the executor re-validates each item with compare-and-swap."""

    handles: dict[str, list[Allocation]] = field(default_factory=dict)  # released all together
    blocks: list[tuple[str, int, str | None]] = field(default_factory=list)  # (cidr, block rev, node)
    affinities: list[tuple[str, str, int]] = field(default_factory=list)  # (node, cidr, rev)
    handle_records: list[tuple[str, int]] = field(default_factory=list)  # (handle, rev)
    candidates: int = 0
    waiting: list[str] = field(default_factory=list)  # why some leaks were held back


@dataclass
class GcResult:
    released_addresses: list[str] = field(default_factory=list)
    released_handles: list[str] = field(default_factory=list)
    released_blocks: list[str] = field(default_factory=list)
    deleted_affinities: list[str] = field(default_factory=list)
    deleted_handle_records: list[str] = field(default_factory=list)
    candidates: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class GcTracker:
    """What earlier passes saw; one per GC loop (kube-controllers keeps the same state in memory)."""

    leaks: dict[LeakKey, float] = field(default_factory=dict)  # -> first seen
    empty_blocks: dict[str, int] = field(default_factory=dict)  # cidr -> revision seen
    dangling_affinities: dict[tuple[str, str], int] = field(default_factory=dict)
    empty_handles: dict[str, int] = field(default_factory=dict)

    def plan(
        self,
        snap: IPAMSnapshot,
        report: CheckReport,
        *,
        now: float,
        grace_seconds: float,
        live_handles: Collection[str],
        nodes: Collection[str] | None,
        release_empty_blocks: bool = True,
    ) -> GcPlan:
        plan = GcPlan()

        # Leaked allocations: confirmed on a later observation of the same allocation.
        seen: dict[LeakKey, float] = {}
        confirmed: set[LeakKey] = set()
        for issue in report.of_kind(ISSUE_LEAKED):
            assert issue.block and issue.handle is not None and issue.ordinal is not None
            key = (issue.block, issue.ordinal, issue.handle, issue.sequence)
            first = self.leaks.get(key)
            seen[key] = now if first is None else first
            node_gone = nodes is not None and issue.node not in nodes
            if first is not None and (now - first >= grace_seconds or node_gone):
                confirmed.add(key)
        self.leaks = seen
        plan.candidates = len(seen)

        by_handle: dict[str, list[Allocation]] = defaultdict(list)
        for alloc in snap.allocations():
            by_handle[alloc.handle_id].append(alloc)
        for hid in sorted({k[2] for k in confirmed}):
            allocs = by_handle[hid]
            if all((a.block, a.ordinal, a.handle_id, a.sequence) in confirmed for a in allocs):
                plan.handles[hid] = allocs
            else:
                plan.waiting.append(f"handle {hid!r}: not all of its addresses are confirmed leaks yet")

        # Empty handle records of handles that are not live.
        empty_handles: dict[str, int] = {}
        for issue in report.of_kind(ISSUE_EMPTY_HANDLE):
            hid = issue.handle
            assert hid is not None
            if hid in live_handles:
                continue
            rev = snap.handles[hid][1]
            empty_handles[hid] = rev
            if self.empty_handles.get(hid) == rev:
                plan.handle_records.append((hid, rev))
        self.empty_handles = empty_handles

        # Empty blocks: of deleted nodes, unaffine ones, and surplus ones of live nodes.
        per_node: dict[str, int] = defaultdict(int)
        for block, _ in snap.blocks.values():
            if block.node is not None:
                per_node[block.node] += 1
        empty_blocks: dict[str, int] = {}
        for cidr, (block, rev) in sorted(snap.blocks.items()):
            if not block.is_empty():
                continue
            node = block.node
            node_gone = node is not None and nodes is not None and node not in nodes
            surplus = node is not None and not node_gone and release_empty_blocks and per_node[node] > 1
            if not (node is None or node_gone or surplus):
                continue
            empty_blocks[cidr] = rev
            if self.empty_blocks.get(cidr) == rev:
                plan.blocks.append((cidr, rev, node))
                if node is not None:
                    per_node[node] -= 1  # never the node's last block
        self.empty_blocks = empty_blocks

        # Affinities whose block is missing or affine elsewhere.
        dangling: dict[tuple[str, str], int] = {}
        for (node, cidr), (_, rev) in sorted(snap.affinities.items()):
            entry = snap.blocks.get(cidr)
            if entry is not None and entry[0].node == node:
                continue
            dangling[(node, cidr)] = rev
            if self.dangling_affinities.get((node, cidr)) == rev:
                plan.affinities.append((node, cidr, rev))
        self.dangling_affinities = dangling
        return plan
