"""Calico-style IPAM over the datastore: blocks, affinities, handles, compare-and-swap everywhere.

Data (keys from :class:`podnet.datastore.keys.KeyLayout`, values in :mod:`~podnet.ipam.block` and
:mod:`~podnet.ipam.records`)::

    ipam/blocks/10.0.0.64-26          Block: who holds each address of the /26, sequence numbers
    ipam/affinities/node-1/10.0.0.64-26   AffinityRecord: node-1 owns that block
    ipam/handles/k8s-pod-network.<cid>.eth0  HandleRecord: {block cidr: count} of the handle
    ipam/config                       IPAMConfig: strictAffinity, maxBlocksPerHost, autoAllocateBlocks

``auto_assign(handle, node, pools)`` takes addresses in Calico's order:

1. from the node's affine blocks (lowest first);
2. else it claims a block for the node (``autoAllocateBlocks``): an existing empty block without
   affinity, else a new one (the search starts at a node-seeded offset so nodes rarely race for
   the same block), and allocates from it. A node already holding ``maxBlocksPerHost`` blocks
   (0 means 20, as in Calico's ``autoAssign``) gets :class:`BlockLimitReached` instead, without
   borrowing: Calico's ``ErrBlockLimit``. (Two concurrent claims by one node can overshoot by one;
   Calico serialises a node's allocations with a host lock, podnet's agent does the same.)
3. else, unless ``strictAffinity``, it borrows from any block of the pools with a free address
   (node-seeded random order, like Calico's hostname-seeded shuffle);
4. else :class:`PoolExhausted` naming the pools and the node. A partial multi-address result is
   rolled back before the error (ABA-guarded release).

Addresses are returned as plain IP strings (``"10.0.0.5"``), not CIDRs; the CNI layer adds ``/32``.

Consistency. Every write is a compare-and-swap on the mod revisions just read, retried after a
conflict (re-read, re-apply) at most ``max_retries`` (100, as Calico) times with small jittered
back-off; then :class:`ContentionError`. Where Calico writes the handle, then the block, then fixes
the handle up on failure (its Kubernetes backend has no multi-object transactions), podnet writes
**block and handle in one etcd transaction** (``Datastore.commit``), conditional on both revisions:

- allocate = {block with the address marked, handle count +n}: both or neither;
- release  = {block with the address freed, handle count -n (record deleted at 0)}: both or neither;
- claim    = {new block (must not exist) or adopted unaffine empty block, affinity record}: both or
  neither, so Calico's ``pending`` affinity state is unnecessary. The claim and the first allocation
  in the block are two transactions; a crash between them leaves an empty affine block, which is a
  normal state (GC can release surplus empty blocks).

So a crash at any point can at worst leak (an allocation whose caller never learnt it, found by
:meth:`IPAM.check` and released by :meth:`IPAM.gc`), and never hand one address to two handles: an
address is only marked in its block by a CAS on that block. One caveat is the datastore's: an etcd
write that timed out may or may not have been applied (``DatastoreUnavailable`` says so); the caller
retries with the same handle, and the orphan, if any, is again a leak by handle that GC collects.

Per-ordinal sequence numbers (see :mod:`podnet.ipam.block`) make :meth:`IPAM.release_ips` with a
:class:`Release` naming a handle and/or sequence number refuse an address that was released and
reassigned meanwhile (:class:`SequenceMismatch`); GC and rollback always release that way.

The ``IPAM`` object holds no allocation state of its own (counters, the GC tracker, a per-node hint
of which affine block to read first, and the values of its own last writes), so any number of them,
in any number of processes, can share one datastore. It is thread-safe if the datastore is.

Round trips. A node's agent allocates and releases its own pods' addresses, so the block and handle
it is about to change are usually the ones it wrote last: the IPAM object keeps the value and mod
revision of each key it committed (write-through, dropped when a commit fails or its outcome is
unknown) and builds the next compare-and-swap on them without reading. Only a commit can make an
address taken, and it is conditional on the revision it was built on, so a stale copy costs a
conflict and a re-read, never a duplicate. With the hint, a lazily read IPAM configuration (only a
block claim or a borrow needs it) and ``new_handle`` (a handle assumed absent, checked by the
commit itself), a pod's address costs one transaction and its release one more.
"""

from __future__ import annotations

import ipaddress
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from podnet.datastore.base import MUST_NOT_EXIST, Datastore, KeyValue, Write
from podnet.datastore.keys import KeyLayout, token_to_cidr
from podnet.errors import ConflictError, NotFoundError, PoolExhausted
from podnet.ipam.block import Allocation, Block, Release, host_affinity
from podnet.ipam.check import CheckReport, GcResult, GcTracker, IPAMSnapshot, analyse
from podnet.ipam.errors import (
    AddressNotInPool,
    BlockLimitReached,
    ContentionError,
    CorruptRecord,
    HandleInUse,
    SequenceMismatch,
)
from podnet.ipam.pools import WORKLOAD, PoolSpec, cached_network, pool_for_address, pool_for_block
from podnet.ipam.records import AffinityRecord, HandleRecord, IPAMConfig

T = TypeVar("T")
DEFAULT_MAX_RETRIES = 100
DEFAULT_GC_GRACE_SECONDS = 15 * 60  # Calico's leakGracePeriod
MAX_BATCH = 64  # requests one group commit takes (etcd allows 128 operations per transaction)
MAX_WRITTEN = 4096  # keys whose last committed value an IPAM object keeps (cleared when exceeded)


@dataclass(frozen=True)
class BlockUsage:
    cidr: str
    node: str | None
    allocated: int
    size: int


@dataclass(frozen=True)
class PoolUsage:
    name: str
    cidr: str
    disabled: bool
    size: int
    allocated: int
    blocks: list[BlockUsage]

    @property
    def free(self) -> int:
        return self.size - self.allocated


@dataclass
class NodeRelease:
    released: list[str] = field(default_factory=list)  # empty blocks deleted with their affinity
    unaffined: list[str] = field(default_factory=list)  # non-empty blocks left without affinity
    kept: list[str] = field(default_factory=list)  # non-empty blocks still affine (require_empty)


def _now_rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IPAM:
    """Calico-style IPAM on one datastore (see the module docstring).

    Allocate: :meth:`auto_assign`, :meth:`assign_ip`. Release: :meth:`release_handle` (idempotent),
    :meth:`release_ips`, :meth:`release_node`. Read: :meth:`handle_ips`, :meth:`allocation`,
    :meth:`blocks`, :meth:`affinities`, :meth:`usage`, :meth:`get_config`. Repair: :meth:`check`,
    :meth:`gc`. ``stats`` counts conflicts, claims, borrows and GC reclamations.
    """

    def __init__(
        self,
        datastore: Datastore,
        layout: KeyLayout | None = None,
        *,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = 0.002,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = datastore
        self.layout = layout or KeyLayout()
        self.max_retries = max_retries
        self.backoff = backoff
        self.clock = clock
        self._rng = rng or random.Random()
        self.stats: Counter[str] = Counter()
        self._last_block: dict[str, str] = {}  # node -> affine block that last had room (a read-order hint)
        self._written: dict[str, KeyValue] = {}  # key -> what our last commit of it wrote (see above)
        self.gc_tracker = GcTracker()

    # -- configuration ---------------------------------------------------------------------
    def get_config(self) -> IPAMConfig:
        kv = self.store.get(self.layout.ipam_config())
        return IPAMConfig.from_json(kv.value) if kv else IPAMConfig()

    def set_config(self, config: IPAMConfig) -> None:
        self.store.put(self.layout.ipam_config(), config.to_json())

    # -- allocation ------------------------------------------------------------------------
    def auto_assign(
        self,
        handle: str,
        node: str,
        pools: Sequence[PoolSpec],
        attrs: Mapping[str, str] | None = None,
        num: int = 1,
        use: str = WORKLOAD,
        new_handle: bool = False,
    ) -> list[str]:
        """Allocate ``num`` addresses for ``handle`` on ``node`` from ``pools`` (see module docstring).

        ``new_handle``: the handle must not hold addresses yet; if it does (a retried CNI ADD),
        :class:`HandleInUse` carries them and nothing is allocated. Checked by the allocation's own
        transaction, so it costs no read.
        """
        if num < 1:
            raise ValueError("num must be >= 1")
        usable = [p for p in pools if not p.disabled and use in p.allowed_uses]
        names = ", ".join(f"{p.name} ({p.cidr})" for p in pools) or "none"
        if not usable:
            raise PoolExhausted(
                f"no enabled IP pool allows {use} addresses for node {node!r} (pools given: {names})",
                hint="create an IP pool, enable one, or check its nodeSelector and allowedUses",
            )
        secondary = self._secondary(node, attrs)
        got: list[Allocation] = []
        try:
            hint = self._last_block.get(node)
            if hint is not None and pool_for_block(usable, hint) is not None:
                # the block that had room last time usually still has: no affinity listing
                got += self._assign_from_block(
                    hint, handle, secondary, num, affine_to=node, new_handle=new_handle
                )
                if len(got) == num:
                    return [a.address for a in got]
            affine = self._node_block_cidrs(node)
            for cidr in self._sorted_in_pools(affine, usable):
                if cidr == hint:
                    continue
                got += self._assign_from_block(
                    cidr, handle, secondary, num - len(got), affine_to=node, new_handle=new_handle and not got
                )
                if len(got) == num:
                    self._last_block[node] = cidr
                    return [a.address for a in got]
            config = self.get_config()
            blocks_held = len(affine)
            while len(got) < num and config.auto_allocate_blocks:
                if blocks_held >= config.effective_max_blocks:
                    raise BlockLimitReached(
                        f"node {node!r} needs a new IPAM block but already holds {blocks_held} "
                        f"(maxBlocksPerHost {config.effective_max_blocks}); pools {names}",
                        hint="raise maxBlocksPerHost (with strictAffinity), use larger blocks, "
                        "or free addresses on this node",
                    )
                cidr = self._claim_block(node, usable)
                if cidr is None:
                    break
                blocks_held += 1
                self._last_block[node] = cidr
                got += self._assign_from_block(
                    cidr, handle, secondary, num - len(got), affine_to=node, new_handle=new_handle and not got
                )
            if len(got) < num and not config.strict_affinity:
                for cidr, kv in self._borrow_candidates(node, usable):
                    got += self._assign_from_block(
                        cidr,
                        handle,
                        secondary,
                        num - len(got),
                        affine_to=None,
                        initial=kv,
                        new_handle=new_handle and not got,
                    )
                    if len(got) == num:
                        self.stats["borrowed"] += 1
                        break
            if len(got) < num:
                why = []
                if config.strict_affinity:
                    why.append("strictAffinity forbids borrowing from other nodes' blocks")
                if not config.auto_allocate_blocks:
                    why.append("autoAllocateBlocks is off")
                raise PoolExhausted(
                    f"IP pools exhausted: no free address for node {node!r} in {names} "
                    f"(wanted {num}, found {len(got)})" + (f"; {'; '.join(why)}" if why else ""),
                    hint="add an IP pool or free addresses (podnet ipam show; podnet ipam check)",
                )
        except BaseException:
            self._rollback(got)
            raise
        return [a.address for a in got]

    def auto_assign_many(
        self,
        requests: Sequence[tuple[str, Mapping[str, str] | None]],
        node: str,
        pools: Sequence[PoolSpec],
    ) -> list[list[str] | BaseException]:
        """One address for each ``(handle, attrs)``, every handle new (as ``new_handle``), in one
        transaction when the node's hinted block has room for all of them (a group commit: a burst
        of pods starting on a node costs one etcd round trip, not one each). Otherwise, or when that
        transaction loses a race, each is :meth:`auto_assign`-ed on its own. Per request: its
        addresses, or the exception it met (:class:`HandleInUse` for a handle that holds some)."""
        results: list[list[str] | BaseException | None] = [None] * len(requests)
        batch = self._assign_batch(requests, node, pools, results) if len(requests) > 1 else False
        for i, (handle, attrs) in enumerate(requests):
            if batch and results[i] is not None:
                continue
            try:
                results[i] = self.auto_assign(handle, node, pools, attrs, new_handle=True)
            except Exception as exc:
                results[i] = exc
        return results  # type: ignore[return-value]

    def _assign_batch(
        self,
        requests: Sequence[tuple[str, Mapping[str, str] | None]],
        node: str,
        pools: Sequence[PoolSpec],
        results: list,
    ) -> bool:
        """The one-transaction path of :meth:`auto_assign_many`; False (nothing done) when it does
        not apply or lost a race."""
        hint = self._last_block.get(node)
        usable = [p for p in pools if not p.disabled and WORKLOAD in p.allowed_uses]
        if hint is None or pool_for_block(usable, hint) is None or len(requests) > MAX_BATCH:
            return False
        kv = self._read(self.layout.block(hint))
        if kv is None:
            return False
        try:
            block = Block.from_json(kv.value)
        except CorruptRecord:
            return False
        if block.deleted or block.affinity != host_affinity(node) or block.free_count() < len(requests):
            return False
        writes = [Write(kv.key, b"", kv.mod_revision)]  # the block's value is filled in below
        taken: list[tuple[int, list[int]]] = []
        for i, (handle, attrs) in enumerate(requests):
            hkey = self.layout.handle(handle)
            if hkey in self._written:  # ours already: a retried ADD
                try:
                    results[i] = HandleInUse(handle, self.handle_ips(handle))
                except Exception as exc:
                    results[i] = exc
                continue
            ordinals = block.assign(1, handle, self._secondary(node, attrs))
            record = HandleRecord(handle)
            record.add(block.cidr, len(ordinals))
            writes.append(Write(hkey, record.to_json(), MUST_NOT_EXIST))
            taken.append((i, ordinals))
        if not taken:
            return True
        writes[0] = Write(kv.key, block.to_json(), kv.mod_revision)
        try:
            self._commit(writes)
        except (ConflictError, NotFoundError):
            self.stats["conflicts"] += 1
            for i, _ in taken:
                results[i] = None  # each on its own, which tells a retried ADD's handle from a race
            return True
        self.stats["batched"] += len(taken)
        for i, ordinals in taken:
            results[i] = [block.address(o) for o in ordinals]
        return True

    def assign_ip(
        self,
        address: str,
        handle: str,
        node: str,
        pools: Sequence[PoolSpec],
        attrs: Mapping[str, str] | None = None,
    ) -> str:
        """Allocate one specific address (e.g. from ``cni.projectcalico.org/ipAddrs``).

        The address must lie in one of ``pools`` (disabled pools included: the address was asked for
        explicitly). If its block does not exist yet it is created affine to ``node`` (when
        ``autoAllocateBlocks`` and ``maxBlocksPerHost`` allow, else without affinity).
        :class:`AddressInUse` when another allocation holds it.
        """
        ip = str(ipaddress.ip_address(address))
        pool = pool_for_address(pools, ip)
        if pool is None:
            names = ", ".join(f"{p.name} ({p.cidr})" for p in pools) or "none"
            raise AddressNotInPool(
                f"{ip} is not in any IP pool ({names})", hint="pick an address inside a configured pool"
            )
        cidr = pool.block_for(ip)
        secondary = self._secondary(node, attrs)
        config = self.get_config()

        def attempt() -> str:
            bkey = self.layout.block(cidr)
            bkv = self.store.get(bkey)
            writes: list[Write] = []
            if bkv is None:
                affine = (
                    config.auto_allocate_blocks
                    and len(self._node_block_cidrs(node)) < config.effective_max_blocks
                )
                block = Block.empty(cidr, host_affinity(node) if affine else None)
                if affine:
                    akey = self.layout.affinity(node, cidr)
                    akv = self.store.get(akey)
                    writes.append(
                        Write(akey, AffinityRecord(node, cidr).to_json(), akv.mod_revision if akv else 0)
                    )
            else:
                block = Block.from_json(bkv.value)
            block.assign_ordinal(block.ordinal(ip), handle, secondary)
            writes.append(Write(bkey, block.to_json(), bkv.mod_revision if bkv else MUST_NOT_EXIST))
            writes.append(self._handle_write(handle, {cidr: 1}))
            self._commit(writes)
            return ip

        return self._retry(f"assign {ip}", attempt)

    # -- release ---------------------------------------------------------------------------
    def release_handle(self, handle: str) -> list[str]:
        """Release every address of ``handle``; idempotent (an unknown handle releases nothing)."""
        kv = self._read(self.layout.handle(handle))
        if kv is None:
            return []
        released: list[str] = []
        for cidr in sorted(HandleRecord.from_json(kv.value).blocks):
            released += self._retry(
                f"release handle {handle} in {cidr}", lambda c=cidr: self._release_handle_in_block(handle, c)
            )
        return released

    def release_handles(self, handles: Sequence[str]) -> list[list[str] | BaseException]:
        """:meth:`release_handle` for each of ``handles``, in one transaction when this object
        wrote them all and they sit in one block it wrote too (a burst of pods deleted on a node);
        otherwise, or when that transaction loses a race, each on its own. Per handle: the
        addresses released, or the exception it met."""
        results: list[list[str] | BaseException | None] = [None] * len(handles)
        if 1 < len(handles) <= MAX_BATCH and len(set(handles)) == len(handles):
            self._release_batch(handles, results)
        for i, handle in enumerate(handles):
            if results[i] is not None:
                continue
            try:
                results[i] = self.release_handle(handle)
            except Exception as exc:
                results[i] = exc
        return results  # type: ignore[return-value]

    def _release_batch(self, handles: Sequence[str], results: list) -> None:
        """The one-transaction path of :meth:`release_handles` (leaves ``results`` None otherwise)."""
        records = [self._written.get(self.layout.handle(h)) for h in handles]
        if any(kv is None for kv in records):
            return
        parsed = [HandleRecord.from_json(kv.value) for kv in records]  # type: ignore[union-attr]
        cidrs = {cidr for record in parsed for cidr in record.blocks}
        if len(cidrs) != 1 or any(len(record.blocks) != 1 for record in parsed):
            return
        [cidr] = cidrs
        bkv = self._written.get(self.layout.block(cidr))
        if bkv is None:
            return
        block = Block.from_json(bkv.value)
        released = [[block.address(o) for o in block.release_handle(h)] for h in handles]
        writes = [Write(bkv.key, block.to_json(), bkv.mod_revision)]
        writes += [Write(kv.key, None, kv.mod_revision) for kv in records]  # type: ignore[union-attr]
        try:
            self._commit(writes)
        except (ConflictError, NotFoundError):
            self.stats["conflicts"] += 1
            return
        self.stats["batched_releases"] += len(handles)
        results[:] = released

    def release_ips(self, ips: Iterable[str | Release]) -> list[str]:
        """Release addresses; returns those that were allocated and are now free.

        A plain string releases whatever holds the address. A :class:`Release` naming ``handle``
        and/or ``sequence`` is ABA-safe: if the address now belongs to another allocation, the
        whole block's batch is refused with :class:`SequenceMismatch` (earlier blocks stay released).
        """
        requests = [Release(x) if isinstance(x, str) else x for x in ips]
        if not requests:
            return []
        kvs, _ = self.store.list(self.layout.blocks_prefix())
        by_prefix: dict[int, set[str]] = {}
        for kv in kvs:
            cidr = self._cidr_of_block_key(kv.key)
            by_prefix.setdefault(ipaddress.ip_network(cidr).prefixlen, set()).add(cidr)
        grouped: dict[str, list[Release]] = {}
        for req in requests:
            ip = ipaddress.ip_address(req.address)
            for prefix, cidrs in by_prefix.items():
                if prefix > ip.max_prefixlen:
                    continue
                cidr = str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
                if cidr in cidrs:
                    grouped.setdefault(cidr, []).append(Release(str(ip), req.handle, req.sequence))
                    break
        released: list[str] = []
        for cidr, reqs in sorted(grouped.items()):
            released += self._release_in_block(cidr, reqs)
        return released

    # -- queries ---------------------------------------------------------------------------
    def handle_ips(self, handle: str) -> list[str]:
        kv = self.store.get(self.layout.handle(handle))
        if kv is None:
            return []
        out: list[str] = []
        for cidr in sorted(HandleRecord.from_json(kv.value).blocks):
            bkv = self.store.get(self.layout.block(cidr))
            if bkv is not None:
                block = Block.from_json(bkv.value)
                out += [block.address(o) for o in block.ordinals_for_handle(handle)]
        return out

    def allocation(self, address: str) -> Allocation | None:
        """Who holds ``address`` (handle, attributes, sequence number), or None."""
        ip = ipaddress.ip_address(address)
        for block in self.blocks():
            if ip in block.network:
                return block.allocation(block.ordinal(str(ip)))
        return None

    def blocks(self) -> list[Block]:
        kvs, _ = self.store.list(self.layout.blocks_prefix())
        return [Block.from_json(kv.value) for kv in kvs]

    def affinities(self, node: str | None = None) -> list[AffinityRecord]:
        kvs, _ = self.store.list(self.layout.affinities_prefix(node))
        return [AffinityRecord.from_json(kv.value) for kv in kvs]

    def usage(self, pools: Sequence[PoolSpec]) -> list[PoolUsage]:
        """Per pool: size, allocated, free and its blocks (for ``podnet ipam show``)."""
        blocks = self.blocks()
        out = []
        for pool in pools:
            mine = [b for b in blocks if pool.holds_block(b.cidr)]
            mine.sort(key=lambda b: int(b.network.network_address))
            usages = [BlockUsage(b.cidr, b.node, b.allocated_count(), b.size) for b in mine]
            out.append(
                PoolUsage(
                    pool.name, pool.cidr, pool.disabled, pool.size, sum(u.allocated for u in usages), usages
                )
            )
        return out

    # -- check and garbage collection ------------------------------------------------------
    def snapshot(self) -> IPAMSnapshot:
        """Blocks, affinities and handles read in one list (one revision)."""
        kvs, revision = self.store.list(self.layout.ipam_prefix())
        return IPAMSnapshot.from_kvs(kvs, self.layout, revision)

    def check(
        self,
        live_handles: Collection[str] | None,
        nodes: Collection[str] | None,
        *,
        in_use: Mapping[str, Iterable[str]] | None = None,
        pools: Sequence[PoolSpec] | None = None,
    ) -> CheckReport:
        """``podnet ipam check``: see :mod:`podnet.ipam.check` for what is reported."""
        return analyse(self.snapshot(), live_handles, nodes, in_use=in_use, pools=pools)

    def gc(
        self,
        live_handles: Collection[str],
        nodes: Collection[str] | None,
        *,
        grace_seconds: float = DEFAULT_GC_GRACE_SECONDS,
        is_live: Callable[[str], bool] | None = None,
        release_empty_blocks: bool = True,
    ) -> GcResult:
        """One GC pass (run it periodically on ONE IPAM object: it remembers earlier passes).

        ``is_live(handle)`` re-validates a handle just before its addresses are released (e.g. by
        asking the API server for the pod again); ``live_handles`` is the view the pass started with.
        """
        snap = self.snapshot()
        report = analyse(snap, live_handles, nodes)
        plan = self.gc_tracker.plan(
            snap,
            report,
            now=self.clock(),
            grace_seconds=grace_seconds,
            live_handles=live_handles,
            nodes=nodes,
            release_empty_blocks=release_empty_blocks,
        )
        result = GcResult(candidates=plan.candidates, skipped=list(plan.waiting))
        for hid, allocs in plan.handles.items():
            if is_live is not None and is_live(hid):
                result.skipped.append(f"handle {hid!r}: live again on re-validation")
                continue
            per_block: dict[str, list[Release]] = {}
            for a in allocs:
                per_block.setdefault(a.block, []).append(Release(a.address, hid, a.sequence))
            try:
                for cidr, reqs in sorted(per_block.items()):
                    result.released_addresses += self._release_in_block(cidr, reqs)
                result.released_handles.append(hid)
            except SequenceMismatch as exc:
                result.skipped.append(f"handle {hid!r}: {exc}")
        for cidr, rev, node in plan.blocks:
            writes = [Write(self.layout.block(cidr), None, rev)]
            if node is not None:
                akv = self.store.get(self.layout.affinity(node, cidr))
                if akv is not None:
                    writes.append(Write(akv.key, None, akv.mod_revision))
            if self._try_commit(writes):
                result.released_blocks.append(cidr)
        for node, cidr, rev in plan.affinities:
            if self._try_commit([Write(self.layout.affinity(node, cidr), None, rev)]):
                result.deleted_affinities.append(f"{node}/{cidr}")
        for hid, rev in plan.handle_records:
            if self._try_commit([Write(self.layout.handle(hid), None, rev)]):
                result.deleted_handle_records.append(hid)
        self.stats["gc_reclamations"] += len(result.released_addresses)
        self.stats["gc_candidates"] = plan.candidates
        return result

    def release_node(self, node: str, *, require_empty: bool = True) -> NodeRelease:
        """Drop a removed node's block affinities: empty blocks are deleted with their affinity.

        Non-empty blocks are kept affine (``require_empty=True``: release their addresses first, e.g.
        by GC) or left without affinity, borrowable by all (``require_empty=False``, Calico's
        ``ReleaseAffinity``).
        """
        result = NodeRelease()
        for cidr in sorted(set(self._node_block_cidrs(node)) | self._blocks_affine_to(node)):
            outcome = self._retry(
                f"release block {cidr} of node {node}",
                lambda c=cidr: self._release_affinity(node, c, require_empty),
            )
            if outcome:
                getattr(result, outcome).append(cidr)
        return result

    # -- internals: allocation -------------------------------------------------------------
    def _secondary(self, node: str, attrs: Mapping[str, str] | None) -> dict[str, str]:
        out = {k: str(v) for k, v in (attrs or {}).items()}
        out["node"] = node
        out.setdefault("timestamp", _now_rfc3339(self.clock()))
        return out

    def _node_block_cidrs(self, node: str) -> list[str]:
        prefix = self.layout.affinities_prefix(node)
        kvs, _ = self.store.list(prefix)
        return [token_to_cidr(kv.key[len(prefix) :]) for kv in kvs if "/" not in kv.key[len(prefix) :]]

    def _blocks_affine_to(self, node: str) -> set[str]:
        return {b.cidr for b in self.blocks() if b.node == node}

    @staticmethod
    def _sorted_in_pools(cidrs: Iterable[str], pools: Sequence[PoolSpec]) -> list[str]:
        keyed = []
        for cidr in cidrs:
            for i, pool in enumerate(pools):
                if pool.holds_block(cidr):
                    keyed.append((i, int(cached_network(cidr).network_address), cidr))
                    break
        return [c for _, _, c in sorted(keyed)]

    def _cidr_of_block_key(self, key: str) -> str:
        return str(ipaddress.ip_network(token_to_cidr(key[len(self.layout.blocks_prefix()) :])))

    def _handle_write(self, handle: str, added: Mapping[str, int], new_handle: bool = False) -> Write:
        """The handle's record with ``added`` counted. ``new_handle``: the record is assumed absent
        (unless this object wrote it): the commit's condition checks it, and a retry reads it."""
        hkey = self.layout.handle(handle)
        hkv = self._written.get(hkey) if new_handle else self._read(hkey)
        if new_handle and hkv is not None:
            raise HandleInUse(handle, self.handle_ips(handle))
        record = HandleRecord.from_json(hkv.value) if hkv else HandleRecord(handle)
        for cidr, n in added.items():
            record.add(cidr, n)
        return Write(hkey, record.to_json(), hkv.mod_revision if hkv else MUST_NOT_EXIST)

    def _assign_from_block(
        self,
        cidr: str,
        handle: str,
        secondary: Mapping[str, str],
        want: int,
        *,
        affine_to: str | None,
        initial: KeyValue | None = None,
        new_handle: bool = False,
    ) -> list[Allocation]:
        """Take up to ``want`` addresses of one block (one CAS transaction with the handle)."""
        key = self.layout.block(cidr)
        first = [initial] if initial is not None else []
        tries = [0]

        def attempt() -> list[Allocation]:
            tries[0] += 1
            kv = first.pop() if first else self._read(key)
            if kv is None:
                return []
            try:
                block = Block.from_json(kv.value)
            except CorruptRecord:
                self.stats["corrupt_blocks_skipped"] += 1
                return []
            if block.deleted or (affine_to is not None and block.affinity != host_affinity(affine_to)):
                return []
            ordinals = block.assign(want, handle, secondary)
            if not ordinals:
                return []
            if new_handle and tries[0] > 1:  # lost a race: was it on the handle (a retried ADD)?
                hkv = self.store.get(self.layout.handle(handle))
                if hkv is not None:
                    raise HandleInUse(handle, self.handle_ips(handle))
            self._commit(
                [
                    Write(key, block.to_json(), kv.mod_revision),
                    self._handle_write(handle, {block.cidr: len(ordinals)}, new_handle and tries[0] == 1),
                ]
            )
            allocs = [block.allocation(o) for o in ordinals]
            return [a for a in allocs if a is not None]

        return self._retry(f"assign from block {cidr}", attempt)

    def _claim_block(self, node: str, pools: Sequence[PoolSpec]) -> str | None:
        """Claim a block for ``node``: an existing empty block without affinity, else a new one."""
        start = zlib.crc32(node.encode())

        def attempt() -> str | None:
            kvs, _ = self.store.list(self.layout.blocks_prefix())
            existing = {self._cidr_of_block_key(kv.key): kv for kv in kvs}
            for pool in pools:
                for cidr, kv in existing.items():
                    if not pool.holds_block(cidr):
                        continue
                    try:
                        block = Block.from_json(kv.value)
                    except CorruptRecord:
                        continue
                    if block.affinity is None and block.is_empty() and not block.deleted:
                        block.affinity = host_affinity(node)
                        self._commit_claim(node, cidr, Write(kv.key, block.to_json(), kv.mod_revision))
                        return cidr
            for pool in pools:
                odd = [
                    ipaddress.ip_network(c)
                    for c in existing
                    if pool.holds_block(c) and ipaddress.ip_network(c).prefixlen != pool.block_size
                ]
                count = pool.block_count
                for i in range(count):
                    cidr = pool.block_cidr((start + i) % count)
                    if cidr in existing or (odd and any(ipaddress.ip_network(cidr).overlaps(o) for o in odd)):
                        continue
                    block = Block.empty(cidr, host_affinity(node))
                    self._commit_claim(
                        node, cidr, Write(self.layout.block(cidr), block.to_json(), MUST_NOT_EXIST)
                    )
                    self.stats["blocks_claimed"] += 1
                    return cidr
            return None

        return self._retry(f"claim a block for node {node}", attempt)

    def _commit_claim(self, node: str, cidr: str, block_write: Write) -> None:
        akey = self.layout.affinity(node, cidr)
        akv = self.store.get(akey)  # normally absent; a dangling one is overwritten (CAS on it)
        self._commit(
            [block_write, Write(akey, AffinityRecord(node, cidr).to_json(), akv.mod_revision if akv else 0)]
        )

    def _borrow_candidates(self, node: str, pools: Sequence[PoolSpec]) -> list[tuple[str, KeyValue]]:
        kvs, _ = self.store.list(self.layout.blocks_prefix())
        out = []
        for kv in kvs:
            cidr = self._cidr_of_block_key(kv.key)
            if pool_for_block(pools, cidr) is None:
                continue
            try:
                block = Block.from_json(kv.value)
            except CorruptRecord:
                continue
            if block.free_count() and not block.deleted:
                out.append((cidr, kv))
        random.Random(node).shuffle(out)  # node-seeded: one node keeps to the same donor blocks
        return out

    def _rollback(self, allocations: Sequence[Allocation]) -> None:
        per_block: dict[str, list[Release]] = {}
        for a in allocations:
            per_block.setdefault(a.block, []).append(Release(a.address, a.handle_id, a.sequence))
        for cidr, reqs in per_block.items():
            try:
                self._release_in_block(cidr, reqs)
            except Exception:  # the original error matters more; a failed rollback is a leak for GC
                self.stats["rollback_failures"] += 1

    # -- internals: release ----------------------------------------------------------------
    def _release_handle_in_block(self, handle: str, cidr: str) -> list[str]:
        hkey = self.layout.handle(handle)
        hkv = self._read(hkey)
        record = HandleRecord.from_json(hkv.value) if hkv else None
        if hkv is None or record is None or cidr not in record.blocks:
            return []  # released meanwhile by someone else
        writes: list[Write] = []
        released: list[str] = []
        bkv = self._read(self.layout.block(cidr))
        if bkv is not None:
            block = Block.from_json(bkv.value)
            ordinals = block.release_handle(handle)
            if ordinals:
                writes.append(Write(bkv.key, block.to_json(), bkv.mod_revision))
                released = [block.address(o) for o in ordinals]
        record.blocks.pop(cidr)
        writes.append(Write(hkey, record.to_json() if record.blocks else None, hkv.mod_revision))
        self._commit(writes)
        return released

    def _release_in_block(self, cidr: str, requests: Sequence[Release]) -> list[str]:
        key = self.layout.block(cidr)

        def attempt() -> list[str]:
            kv = self.store.get(key)
            if kv is None:
                return []
            block = Block.from_json(kv.value)
            freed = block.release({block.ordinal(r.address): (r.handle, r.sequence) for r in requests})
            if not freed:
                return []
            writes = [Write(key, block.to_json(), kv.mod_revision)]
            for hid, n in Counter(freed.values()).items():
                hkv = self.store.get(self.layout.handle(hid))
                if hkv is None:
                    continue  # no record (inconsistent already; check reports it)
                record = HandleRecord.from_json(hkv.value)
                record.remove(block.cidr, n)
                writes.append(Write(hkv.key, record.to_json() if record.blocks else None, hkv.mod_revision))
            self._commit(writes)
            return [block.address(o) for o in sorted(freed)]

        return self._retry(f"release addresses in block {cidr}", attempt)

    def _release_affinity(self, node: str, cidr: str, require_empty: bool) -> str | None:
        akey = self.layout.affinity(node, cidr)
        akv = self.store.get(akey)
        bkv = self.store.get(self.layout.block(cidr))
        drop_affinity = [Write(akey, None, akv.mod_revision)] if akv else []
        block = Block.from_json(bkv.value) if bkv else None
        if bkv is None or block is None or block.node != node:
            if drop_affinity:
                self._commit(drop_affinity)
            return "released" if akv else None
        if block.is_empty():
            self._commit([Write(bkv.key, None, bkv.mod_revision), *drop_affinity])
            return "released"
        if require_empty:
            return "kept"
        block.affinity = None
        self._commit([Write(bkv.key, block.to_json(), bkv.mod_revision), *drop_affinity])
        return "unaffined"

    # -- internals: CAS plumbing -----------------------------------------------------------
    def _retry(self, what: str, attempt: Callable[[], T]) -> T:
        last: Exception | None = None
        for i in range(self.max_retries):
            try:
                return attempt()
            except (ConflictError, NotFoundError) as exc:  # lost a CAS race: re-read and re-apply
                last = exc
                self.stats["conflicts"] += 1
                if self.backoff:
                    time.sleep(self._rng.uniform(0, min(self.backoff * (2 ** min(i, 5)), 0.05)))
        raise ContentionError(
            f"{what}: gave up after {self.max_retries} conflicting writes (last: {last})",
            hint="the datastore is under heavy contention; retry later",
        )

    def _read(self, key: str) -> KeyValue | None:
        """``key`` as this object last committed it, else as the datastore has it."""
        kv = self._written.get(key)
        return kv if kv is not None else self.store.get(key)

    def _commit(self, writes: Sequence[Write]) -> int:
        """``Datastore.commit``, remembering what was written (forgetting it when the commit failed
        or its outcome is unknown: the next attempt reads the datastore)."""
        try:
            revision = self.store.commit(writes)
        except BaseException:
            for w in writes:
                self._written.pop(w.key, None)
            raise
        if len(self._written) + len(writes) > MAX_WRITTEN:
            self._written.clear()
        for w in writes:
            if w.value is None:
                self._written.pop(w.key, None)
                continue
            before = self._written.get(w.key)
            created = revision if w.expect == MUST_NOT_EXIST else (before.create_revision if before else 0)
            self._written[w.key] = KeyValue(w.key, w.value, revision, created)
        return revision

    def _try_commit(self, writes: Sequence[Write]) -> bool:
        try:
            self._commit(writes)
            return True
        except (ConflictError, NotFoundError):
            return False  # changed since it was observed: no longer a GC candidate
