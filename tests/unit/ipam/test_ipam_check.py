"""``check`` finds every kind of inconsistency; GC releases leaks only after two observations."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.ipam import IPAM, Block, PoolSpec
from podnet.ipam.check import (
    ISSUE_AFFINITY_MISMATCH,
    ISSUE_CORRUPT,
    ISSUE_DUPLICATE,
    ISSUE_EMPTY_HANDLE,
    ISSUE_HANDLE_MISMATCH,
    ISSUE_IN_USE_NOT_ALLOCATED,
    ISSUE_LEAKED,
    ISSUE_MISSING_HANDLE,
    ISSUE_OUTSIDE_POOL,
    ISSUE_OVERLAPPING_BLOCKS,
    ISSUE_STALE_AFFINITY,
)
from podnet.ipam.records import AffinityRecord, HandleRecord

POOL = PoolSpec("tiny", "10.0.0.0/28", block_size=30)
KEYS = KeyLayout()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ipam(store: MemoryDatastore, clock: Clock) -> IPAM:
    return IPAM(store, backoff=0, clock=clock)


def kinds(report) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(i.kind for i in report.issues)


# -- check -------------------------------------------------------------------------------------
def test_clean_state_is_ok(ipam: IPAM) -> None:
    ipam.auto_assign("h1", "n1", [POOL], num=5)
    report = ipam.check({"h1"}, {"n1"}, pools=[POOL])
    assert report.ok, report.summary()
    assert (report.blocks, report.allocations, report.handles, report.affinities) == (2, 5, 1, 2)
    assert "no problems found" in report.summary()


def test_leaked_address_is_reported_with_where(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("forgotten", "n1", [POOL], {"pod": "p"})
    report = ipam.check(set(), {"n1"})
    [issue] = report.issues
    assert issue.kind == ISSUE_LEAKED and issue.address == ip and issue.handle == "forgotten"
    assert issue.block == POOL.block_for(ip) and issue.node == "n1"
    assert ip in str(issue) and "forgotten" in report.summary()
    assert report.to_dict()["counts"] == {ISSUE_LEAKED: 1}


def test_stale_affinity_for_deleted_node(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("h", "gone", [POOL])
    report = ipam.check({"h"}, {"n1"})
    assert kinds(report) == [ISSUE_STALE_AFFINITY]
    assert report.issues[0].node == "gone" and report.issues[0].block == POOL.block_for(ip)


def test_handle_record_problems(ipam: IPAM, store: MemoryDatastore) -> None:
    ipam.auto_assign("a", "n1", [POOL], num=2)
    ipam.auto_assign("b", "n1", [POOL])
    store.delete(KEYS.handle("a"))
    store.put(KEYS.handle("ghost"), HandleRecord("ghost", {"10.0.0.0/30": 1}).to_json())
    record = HandleRecord.from_json(store.get(KEYS.handle("b")).value)  # type: ignore[union-attr]
    record.add(next(iter(record.blocks)), 2)
    store.put(KEYS.handle("b"), record.to_json())
    report = ipam.check({"a", "b", "ghost"}, {"n1"})
    assert kinds(report) == [ISSUE_EMPTY_HANDLE, ISSUE_HANDLE_MISMATCH, ISSUE_MISSING_HANDLE]
    assert {i.handle for i in report.issues} == {"a", "b", "ghost"}


def test_affinity_mismatches(ipam: IPAM, store: MemoryDatastore) -> None:
    [ip] = ipam.auto_assign("a", "n1", [POOL])
    cidr = POOL.block_for(ip)
    store.delete(KEYS.affinity("n1", cidr))  # block affine to n1 without n1's affinity record
    store.put(KEYS.affinity("n2", "10.0.0.12/30"), AffinityRecord("n2", "10.0.0.12/30").to_json())
    store.put(KEYS.affinity("n2", cidr), AffinityRecord("n2", cidr).to_json())
    report = ipam.check({"a"}, {"n1", "n2"})
    assert kinds(report) == [ISSUE_AFFINITY_MISMATCH] * 3
    assert "does not exist" in report.summary() and "affine to host:n1" in report.summary()


def test_duplicates_overlaps_and_outside_pool(ipam: IPAM, store: MemoryDatastore) -> None:
    small, big = Block.empty("10.0.0.0/30"), Block.empty("10.0.0.0/29")
    small.assign_ordinal(1, "x", {})
    big.assign_ordinal(1, "y", {})
    store.put(KEYS.block(small.cidr), small.to_json())
    store.put(KEYS.block(big.cidr), big.to_json())
    for h, cidr in (("x", small.cidr), ("y", big.cidr)):
        store.put(KEYS.handle(h), HandleRecord(h, {cidr: 1}).to_json())
    report = ipam.check({"x", "y"}, set(), pools=[PoolSpec("other", "10.9.0.0/24")])
    assert kinds(report) == [
        ISSUE_DUPLICATE,
        ISSUE_OUTSIDE_POOL,
        ISSUE_OUTSIDE_POOL,
        ISSUE_OVERLAPPING_BLOCKS,
    ]
    [dup] = report.of_kind(ISSUE_DUPLICATE)
    assert dup.address == "10.0.0.1" and "10.0.0.0/30" in dup.message and "10.0.0.0/29" in dup.message


def test_in_use_owners(ipam: IPAM) -> None:
    [a] = ipam.auto_assign("a", "n1", [POOL])
    [b] = ipam.auto_assign("b", "n1", [POOL])
    report = ipam.check({"a", "b", "c"}, {"n1"}, in_use={"a": [a], "b": [a], "c": ["10.0.0.15/32"]})
    assert kinds(report) == [ISSUE_DUPLICATE, ISSUE_DUPLICATE, ISSUE_IN_USE_NOT_ALLOCATED]
    assert any("used by handle 'b' but IPAM holds it for 'a'" in i.message for i in report.issues)
    assert all(i.address != b for i in report.issues)


def test_corrupt_record_is_reported_and_skipped_by_allocation(ipam: IPAM, store: MemoryDatastore) -> None:
    store.put(KEYS.block("10.0.0.0/30"), b"{garbage")
    assert kinds(ipam.check(set(), set())) == [ISSUE_CORRUPT]
    ips = ipam.auto_assign("h", "n1", [POOL], num=12)  # the other three blocks
    assert not any(ip.startswith("10.0.0.") and int(ip.rsplit(".", 1)[1]) < 4 for ip in ips)


# -- garbage collection ------------------------------------------------------------------------
def test_gc_needs_two_observations(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("dead", "n1", [POOL])
    [live] = ipam.auto_assign("live", "n1", [POOL])
    first = ipam.gc({"live"}, {"n1"}, grace_seconds=0)
    assert first.released_addresses == [] and first.candidates == 1
    second = ipam.gc({"live"}, {"n1"}, grace_seconds=0)
    assert second.released_addresses == [ip] and second.released_handles == ["dead"]
    assert ipam.stats["gc_reclamations"] == 1
    assert ipam.check({"live"}, {"n1"}).ok and ipam.handle_ips("live") == [live]


def test_gc_grace_period_and_deleted_node(ipam: IPAM, clock: Clock) -> None:
    ipam.auto_assign("dead", "n1", [POOL])
    [gone_ip] = ipam.auto_assign("dead-on-gone-node", "gone", [POOL])
    ipam.gc(set(), {"n1"}, grace_seconds=60)
    clock.now += 10
    result = ipam.gc(set(), {"n1"}, grace_seconds=60)
    assert result.released_addresses == [gone_ip]  # node gone: no grace period
    clock.now += 51
    assert len(ipam.gc(set(), {"n1"}, grace_seconds=60).released_addresses) == 1
    assert ipam.check(set(), {"n1", "gone"}).ok


def test_gc_forgets_candidates_that_became_live(ipam: IPAM) -> None:
    ipam.auto_assign("slow-pod", "n1", [POOL])
    ipam.gc(set(), {"n1"}, grace_seconds=0)
    ipam.gc({"slow-pod"}, {"n1"}, grace_seconds=0)  # the pod showed up: no longer a candidate
    assert ipam.gc(set(), {"n1"}, grace_seconds=0).released_addresses == []  # seen once again


def test_gc_revalidates_before_release(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("h", "n1", [POOL])
    ipam.gc(set(), {"n1"}, grace_seconds=0)
    result = ipam.gc(set(), {"n1"}, grace_seconds=0, is_live=lambda h: h == "h")
    assert result.released_addresses == [] and "live again" in result.skipped[0]
    assert ipam.handle_ips("h") == [ip]


def test_gc_releases_a_handle_all_or_nothing(ipam: IPAM) -> None:
    ipam.auto_assign("h", "n1", [POOL])
    ipam.gc(set(), {"n1"}, grace_seconds=0)
    ipam.auto_assign("h", "n1", [POOL])  # a second address for the same handle, seen once only
    result = ipam.gc(set(), {"n1"}, grace_seconds=0)
    assert result.released_addresses == [] and "not all of its addresses" in result.skipped[0]
    assert len(ipam.gc(set(), {"n1"}, grace_seconds=0).released_addresses) == 2
    assert ipam.handle_ips("h") == [] and ipam.check(set(), {"n1"}).ok


def test_gc_does_not_free_a_reassigned_address(store: MemoryDatastore) -> None:
    """The address is released and given to a live pod between GC's snapshot and its release (ABA)."""
    pool = PoolSpec("one", "10.0.1.0/30", block_size=30)
    hook: list[Callable[[], None]] = []

    class RacyStore(MemoryDatastore):
        def list(self, prefix: str):  # type: ignore[no-untyped-def]
            result = super().list(prefix)
            if prefix == KEYS.ipam_prefix() and hook:
                hook.pop()()
            return result

    racy = RacyStore()
    ipam = IPAM(racy, backoff=0)
    ip = ipam.assign_ip("10.0.1.1", "dead", "n1", [pool])

    def reassign() -> None:
        other = IPAM(racy, backoff=0)
        other.release_handle("dead")
        other.assign_ip(ip, "new-live-pod", "n1", [pool])

    ipam.gc(set(), {"n1"}, grace_seconds=0)
    hook.append(reassign)
    result = ipam.gc(set(), {"n1"}, grace_seconds=0)
    assert result.released_addresses == [] and "reassigned" in result.skipped[0]
    assert ipam.handle_ips("new-live-pod") == [ip]


def test_gc_releases_empty_blocks_of_deleted_nodes_and_surplus_blocks(ipam: IPAM) -> None:
    ipam.auto_assign("g", "gone", [POOL])
    ipam.release_handle("g")
    ipam.auto_assign("a", "n1", [POOL], num=5)
    ipam.release_handle("a")  # n1 now holds two empty blocks
    assert ipam.gc(set(), {"n1"}, grace_seconds=0).released_blocks == []
    result = ipam.gc(set(), {"n1"}, grace_seconds=0)
    assert len(result.released_blocks) == 2  # gone's block and one of n1's two, never n1's last
    assert ipam.affinities("gone") == [] and len(ipam.affinities("n1")) == 1
    assert len(ipam.blocks()) == 1 and ipam.check(set(), {"n1"}).ok


def test_gc_keeps_a_block_written_between_observations(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("g", "gone", [POOL])
    ipam.release_handle("g")
    ipam.gc(set(), set(), grace_seconds=0)
    ipam.assign_ip(ip, "x", "n1", [POOL])
    ipam.release_handle("x")  # the block changed revision since the first observation
    assert ipam.gc(set(), {"n1"}, grace_seconds=0).released_blocks == []
    assert ipam.gc(set(), {"n1"}, grace_seconds=0).released_blocks == [POOL.block_for(ip)]


def test_gc_cleans_dangling_affinities_and_empty_handles(ipam: IPAM, store: MemoryDatastore) -> None:
    store.put(KEYS.affinity("n1", "10.0.0.8/30"), AffinityRecord("n1", "10.0.0.8/30").to_json())
    store.put(KEYS.handle("empty"), HandleRecord("empty", {}).to_json())
    store.put(KEYS.handle("live-empty"), HandleRecord("live-empty", {}).to_json())
    ipam.gc({"live-empty"}, {"n1"}, grace_seconds=0)
    result = ipam.gc({"live-empty"}, {"n1"}, grace_seconds=0)
    assert result.deleted_affinities == ["n1/10.0.0.8/30"] and result.deleted_handle_records == ["empty"]
    assert kinds(ipam.check({"live-empty"}, {"n1"})) == [ISSUE_EMPTY_HANDLE]


# -- crash safety ------------------------------------------------------------------------------
def scenario(ipam: IPAM, done: set[str]) -> None:
    """A run of operations; ``done`` collects the handles whose operation completed."""
    ipam.auto_assign("a", "n1", [POOL], num=6)
    done.add("a")
    ipam.auto_assign("b", "n2", [POOL], num=2)
    done.add("b")
    ipam.assign_ip("10.0.0.14", "c", "n2", [POOL])
    done.add("c")
    ipam.release_ips(ipam.handle_ips("b")[:1])
    ipam.release_handle("a")
    done.discard("a")
    ipam.auto_assign("d", "n1", [POOL], num=3)
    done.add("d")


def count_commits(flaky) -> int:  # type: ignore[no-untyped-def]
    flaky_store = flaky(MemoryDatastore())
    scenario(IPAM(flaky_store, backoff=0), set())
    return flaky_store.commits


@pytest.mark.parametrize("after_apply", [False, True])
def test_a_crash_between_writes_can_only_leak(flaky, crash_type, after_apply: bool) -> None:  # type: ignore[no-untyped-def]
    harmless = {ISSUE_LEAKED}
    for crash_at in range(count_commits(flaky)):
        inner = MemoryDatastore()
        done: set[str] = set()
        with pytest.raises(crash_type):
            scenario(IPAM(flaky(inner, crash_at=crash_at, crash_after_apply=after_apply), backoff=0), done)
        ipam = IPAM(inner, backoff=0)
        report = ipam.check(done, {"n1", "n2"})
        assert {i.kind for i in report.issues} <= harmless, (crash_at, report.summary())
        ipam.gc(done, {"n1", "n2"}, grace_seconds=0)
        ipam.gc(done, {"n1", "n2"}, grace_seconds=0)
        assert ipam.check(done, {"n1", "n2"}).ok
        # and the survivors can carry on
        assert len(ipam.auto_assign("after", "n1", [POOL])) == 1
