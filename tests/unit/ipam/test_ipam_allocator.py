"""The allocator on the in-memory datastore: Calico's order, limits, errors, CAS retries and races."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from podnet.datastore.keys import KeyLayout
from podnet.datastore.memory import MemoryDatastore
from podnet.errors import PoolExhausted
from podnet.ipam import (
    IPAM,
    AddressInUse,
    AddressNotInPool,
    BlockLimitReached,
    ContentionError,
    HandleInUse,
    IPAMConfig,
    PoolSpec,
    Release,
    SequenceMismatch,
)
from podnet.ipam.records import HandleRecord

# 4 blocks of 4 addresses: small enough to fill, claim and borrow in a few calls.
POOL = PoolSpec("tiny", "10.0.0.0/28", block_size=30)


def block_of(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/30", strict=False))


def affine_blocks(ipam: IPAM, node: str) -> set[str]:
    return {a.cidr for a in ipam.affinities(node)}


@pytest.fixture
def ipam(store: MemoryDatastore) -> IPAM:
    return IPAM(store, backoff=0)


def test_first_allocation_claims_a_block_for_the_node(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("h1", "n1", [POOL], {"pod": "web", "namespace": "default"})
    assert affine_blocks(ipam, "n1") == {block_of(ip)}
    [block] = ipam.blocks()
    assert block.node == "n1" and block.allocated_count() == 1
    alloc = ipam.allocation(ip)
    assert alloc is not None and alloc.handle_id == "h1"
    assert alloc.attrs["pod"] == "web" and alloc.attrs["namespace"] == "default"
    assert alloc.attrs["node"] == "n1" and alloc.attrs["timestamp"].endswith("Z")


def test_affine_block_first_then_new_block_then_borrow(ipam: IPAM) -> None:
    first = ipam.auto_assign("a", "n1", [POOL], num=3)
    assert len({block_of(ip) for ip in first}) == 1
    # the affine block still has one free address: it is used before any new claim
    [fourth] = ipam.auto_assign("b", "n1", [POOL])
    assert block_of(fourth) == block_of(first[0])
    # full: the next address comes from a newly claimed block
    [fifth] = ipam.auto_assign("c", "n1", [POOL])
    assert block_of(fifth) != block_of(first[0])
    assert affine_blocks(ipam, "n1") == {block_of(first[0]), block_of(fifth)}
    # n2 takes the remaining two blocks entirely
    n2 = ipam.auto_assign("d", "n2", [POOL], num=8)
    assert len(affine_blocks(ipam, "n2")) == 2 and len(set(n2)) == 8
    # n1's blocks: 3 free addresses left in its second block, then it must borrow
    ipam.auto_assign("e", "n1", [POOL], num=3)
    assert ipam.blocks() and all(b.free_count() == 0 for b in ipam.blocks())
    ipam.release_handle("d")
    [borrowed] = ipam.auto_assign("f", "n1", [POOL])
    assert block_of(borrowed) in affine_blocks(ipam, "n2")
    assert ipam.allocation(borrowed).node == "n1"  # type: ignore[union-attr]
    assert ipam.stats["borrowed"] == 1
    assert ipam.check({"a", "b", "c", "e", "f"}, {"n1", "n2"}).ok


def test_strict_affinity_forbids_borrowing(ipam: IPAM) -> None:
    ipam.set_config(IPAMConfig(strict_affinity=True))
    ipam.auto_assign("x", "n2", [POOL], num=12)  # n2 claims 3 blocks
    ipam.auto_assign("y", "n1", [POOL], num=4)  # n1 gets the last one
    ipam.release_ips(["10.0.0.0", "10.0.0.4", "10.0.0.8", "10.0.0.12"])  # free room in every block
    ipam.auto_assign("z", "n1", [POOL])  # n1's own block has room again
    with pytest.raises(PoolExhausted) as err:
        ipam.auto_assign("w", "n1", [POOL])
    assert "'n1'" in err.value.message and "tiny (10.0.0.0/28)" in err.value.message
    assert "strictAffinity" in err.value.message
    assert ipam.handle_ips("w") == []


def test_max_blocks_per_host(ipam: IPAM) -> None:
    ipam.set_config(IPAMConfig(strict_affinity=True, max_blocks_per_host=1))
    ipam.auto_assign("a", "n1", [POOL], num=4)
    with pytest.raises(BlockLimitReached, match=r"'n1' needs a new IPAM block but already holds 1"):
        ipam.auto_assign("b", "n1", [POOL])
    assert len(affine_blocks(ipam, "n1")) == 1
    assert len(ipam.auto_assign("c", "n2", [POOL], num=4)) == 4  # other nodes are unaffected


def test_default_block_limit_is_20_and_stops_borrowing(store: MemoryDatastore) -> None:
    """Calico's autoAssign: maxBlocksPerHost 0 means 20, and at the limit it fails (ErrBlockLimit)."""
    ipam = IPAM(store, backoff=0)
    pool = PoolSpec("p", "10.1.0.0/24", block_size=30)  # 64 blocks of 4
    ipam.auto_assign("a", "n1", [pool], num=80)
    assert len(affine_blocks(ipam, "n1")) == 20
    n2 = ipam.auto_assign("b", "n2", [pool], num=4)
    ipam.release_ips(n2[:1])  # room in n2's block, and 43 unclaimed blocks
    with pytest.raises(BlockLimitReached):
        ipam.auto_assign("c", "n1", [pool])
    assert ipam.handle_ips("c") == []
    ipam.release_ips(ipam.handle_ips("a")[:1])
    assert len(ipam.auto_assign("d", "n1", [pool])) == 1  # room in its own blocks again


def test_auto_allocate_blocks_off_only_borrows(ipam: IPAM) -> None:
    ipam.auto_assign("a", "n2", [POOL])
    ipam.set_config(IPAMConfig(auto_allocate_blocks=False))
    [ip] = ipam.auto_assign("b", "n1", [POOL])
    assert affine_blocks(ipam, "n1") == set() and block_of(ip) in affine_blocks(ipam, "n2")
    ipam.set_config(IPAMConfig(auto_allocate_blocks=False, strict_affinity=True))
    with pytest.raises(PoolExhausted, match="autoAllocateBlocks is off"):
        ipam.auto_assign("c", "n1", [POOL])


def test_exhaustion_rolls_back_partial_multi_address_request(ipam: IPAM) -> None:
    ipam.auto_assign("a", "n1", [POOL], num=14)
    with pytest.raises(PoolExhausted, match=r"wanted 3, found 2"):
        ipam.auto_assign("b", "n1", [POOL], num=3)
    assert ipam.handle_ips("b") == []
    assert sum(b.allocated_count() for b in ipam.blocks()) == 14
    assert ipam.check({"a"}, {"n1"}).ok


def test_disabled_pool_is_not_used_but_its_addresses_stay(ipam: IPAM) -> None:
    old = PoolSpec("old", "10.9.0.0/28", block_size=30)
    [kept] = ipam.auto_assign("a", "n1", [old])
    disabled = PoolSpec("old", "10.9.0.0/28", block_size=30, disabled=True)
    with pytest.raises(PoolExhausted, match="no enabled IP pool"):
        ipam.auto_assign("b", "n1", [disabled])
    [new] = ipam.auto_assign("c", "n1", [disabled, POOL])
    assert ipaddress.ip_address(new) in POOL.network
    assert ipam.handle_ips("a") == [kept]
    assert ipam.release_handle("a") == [kept]


def test_assign_specific_address(ipam: IPAM) -> None:
    assert ipam.assign_ip("10.0.0.9", "h1", "n1", [POOL], {"pod": "p"}) == "10.0.0.9"
    assert affine_blocks(ipam, "n1") == {"10.0.0.8/30"}
    with pytest.raises(AddressInUse, match="'h1'"):
        ipam.assign_ip("10.0.0.9", "h2", "n2", [POOL])
    # a specific address inside another node's block is allowed (it is asked for explicitly)
    assert ipam.assign_ip("10.0.0.10", "h2", "n2", [POOL]) == "10.0.0.10"
    with pytest.raises(AddressNotInPool, match=r"192\.168\.1\.1 is not in any IP pool"):
        ipam.assign_ip("192.168.1.1", "h3", "n1", [POOL])
    # auto-assignment on n1 continues in its block around the taken addresses
    assert set(ipam.auto_assign("h4", "n1", [POOL], num=2)) == {"10.0.0.8", "10.0.0.11"}
    assert ipam.check({"h1", "h2", "h4"}, {"n1", "n2"}).ok


def test_release_handle_frees_exactly_its_addresses_and_is_idempotent(ipam: IPAM) -> None:
    mine = ipam.auto_assign("mine", "n1", [POOL], num=6)  # spans two blocks
    other = ipam.auto_assign("other", "n1", [POOL], num=2)
    record = HandleRecord.from_json(ipam.store.get(KeyLayout().handle("mine")).value)  # type: ignore[union-attr]
    assert sum(record.blocks.values()) == 6 and len(record.blocks) == 2
    assert sorted(ipam.release_handle("mine")) == sorted(mine)
    assert ipam.store.get(KeyLayout().handle("mine")) is None
    assert ipam.release_handle("mine") == []
    assert ipam.release_handle("never-existed") == []
    assert sorted(ipam.handle_ips("other")) == sorted(other)
    assert ipam.check({"other"}, {"n1"}).ok


def test_release_ips_and_aba_protection(ipam: IPAM) -> None:
    small = PoolSpec("one", "10.0.1.0/30", block_size=30)
    [ip] = ipam.auto_assign("old", "n1", [small])
    stale = ipam.allocation(ip)
    assert stale is not None
    assert ipam.release_ips([ip]) == [ip]
    assert ipam.release_ips([ip, "10.200.0.1"]) == []  # free or unknown: nothing to do
    ipam.assign_ip(ip, "new", "n1", [small])
    # someone who still remembers the old allocation must not free the new owner's address
    with pytest.raises(SequenceMismatch):
        ipam.release_ips([Release(ip, sequence=stale.sequence)])
    with pytest.raises(SequenceMismatch):
        ipam.release_ips([Release(ip, handle="old")])
    assert ipam.handle_ips("new") == [ip]
    current = ipam.allocation(ip)
    assert current is not None
    assert ipam.release_ips([Release(ip, handle="new", sequence=current.sequence)]) == [ip]
    assert ipam.store.get(KeyLayout().handle("new")) is None


def test_usage(ipam: IPAM) -> None:
    ipam.auto_assign("a", "n1", [POOL], num=5)
    [usage] = ipam.usage([POOL])
    assert (usage.size, usage.allocated, usage.free) == (16, 5, 11)
    assert sorted((b.node, b.allocated, b.size) for b in usage.blocks) == [("n1", 1, 4), ("n1", 4, 4)]
    assert [b.cidr for b in usage.blocks] == sorted(
        (b.cidr for b in usage.blocks), key=lambda c: ipaddress.ip_network(c).network_address
    )


def test_release_node(ipam: IPAM) -> None:
    ipam.auto_assign("a", "gone", [POOL], num=5)  # two blocks, one full, one with 1 address
    ipam.release_ips(ipam.handle_ips("a")[:4])  # empty the first block
    first = ipam.release_node("gone")
    assert len(first.released) == 1 and len(first.kept) == 1
    assert affine_blocks(ipam, "gone") == set(first.kept)
    second = ipam.release_node("gone", require_empty=False)
    assert second.unaffined == first.kept and second.released == []
    assert ipam.affinities("gone") == []
    [unaffine] = ipam.blocks()
    assert unaffine.affinity is None and unaffine.allocated_count() == 1
    assert ipam.check({"a"}, {"n1"}).ok
    assert ipam.release_node("gone") == type(first)()  # nothing left: idempotent


def test_an_empty_unaffine_block_can_be_claimed(ipam: IPAM) -> None:
    [ip] = ipam.auto_assign("a", "gone", [POOL])
    ipam.release_node("gone", require_empty=False)
    ipam.release_handle("a")
    ipam.set_config(IPAMConfig(strict_affinity=True, max_blocks_per_host=1))
    ipam.auto_assign("b", "n1", [POOL], num=4)
    assert affine_blocks(ipam, "n1") == {block_of(ip)}


def test_injected_conflicts_are_retried(flaky, store: MemoryDatastore) -> None:  # type: ignore[no-untyped-def]
    flaky_store = flaky(store, conflict_rate=0.5, seed=7)
    ipam = IPAM(flaky_store, backoff=0)
    handles = {f"h{i}": ipam.auto_assign(f"h{i}", f"n{i % 3}", [POOL]) for i in range(14)}
    assert flaky_store.injected > 5 and ipam.stats["conflicts"] == flaky_store.injected
    addresses = [ip for ips in handles.values() for ip in ips]
    assert len(set(addresses)) == 14
    for h in list(handles)[:7]:
        assert ipam.release_handle(h) == handles[h]
    assert ipam.check({f"h{i}" for i in range(7, 14)}, {"n0", "n1", "n2"}).ok


def test_contention_is_bounded(flaky, store: MemoryDatastore) -> None:  # type: ignore[no-untyped-def]
    ipam = IPAM(flaky(store, conflict_rate=1.0), max_retries=5, backoff=0)
    with pytest.raises(ContentionError, match="gave up after 5"):
        ipam.auto_assign("h", "n1", [POOL])
    assert IPAM(store).check(set(), {"n1"}).ok


def test_a_real_race_on_the_same_block(flaky, store: MemoryDatastore) -> None:  # type: ignore[no-untyped-def]
    rival = IPAM(store, backoff=0)
    rival.auto_assign("seed", "n1", [POOL])  # n1 owns a block with free room

    def race(n: int, writes) -> None:  # type: ignore[no-untyped-def]
        if n == 0:  # another client allocates in the same block just before our first CAS write
            rival.auto_assign("rival", "n1", [POOL])

    ipam = IPAM(flaky(store, before_commit=race), backoff=0)
    [ip] = ipam.auto_assign("me", "n1", [POOL])
    assert ipam.stats["conflicts"] >= 1
    assert ip not in rival.handle_ips("rival") + rival.handle_ips("seed")
    assert ipam.check({"seed", "rival", "me"}, {"n1"}).ok


def test_threads_never_share_an_address(store: MemoryDatastore) -> None:
    pool = PoolSpec("p", "10.2.0.0/26", block_size=29)  # 8 blocks of 8
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        ipam = IPAM(store)
        try:
            for i in range(10):
                h = f"t{t}-{i}"
                results[h] = ipam.auto_assign(h, f"n{t % 4}", [pool])
                if i % 3 == 0:
                    ipam.release_handle(h)
                    results.pop(h)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = [ip for ips in results.values() for ip in ips]
    assert len(held) == len(set(held)) == 6 * 6
    ipam = IPAM(store)
    assert ipam.check(set(results), {f"n{i}" for i in range(4)}).ok
    assert sorted(ip for h in results for ip in ipam.handle_ips(h)) == sorted(held)


class Counting:
    """A datastore wrapper counting reads and commits (the round trips an etcd client would make)."""

    def __init__(self, inner: MemoryDatastore) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


def test_new_handle_gives_back_what_a_retried_add_holds(store: MemoryDatastore) -> None:
    ipam = IPAM(store, backoff=0)
    [ip] = ipam.auto_assign("h", "n1", [POOL], new_handle=True)
    with pytest.raises(HandleInUse) as held:
        ipam.auto_assign("h", "n1", [POOL], new_handle=True)
    assert held.value.addresses == [ip]
    # another IPAM object (an agent restarted after the first ADD): its commit's condition finds it
    with pytest.raises(HandleInUse) as held:
        IPAM(store, backoff=0).auto_assign("h", "n1", [POOL], new_handle=True)
    assert held.value.addresses == [ip]
    [block] = IPAM(store).blocks()
    assert block.allocated_count() == 1  # nothing allocated by the refused calls
    # positive control: without new_handle the same handle gets a second address
    assert len(IPAM(store, backoff=0).auto_assign("h", "n1", [POOL])) == 1
    assert len(IPAM(store).handle_ips("h")) == 2


def test_a_warm_allocation_and_release_are_one_commit_each_without_reads(store: MemoryDatastore) -> None:
    counting = Counting(store)
    ipam = IPAM(counting, backoff=0)  # type: ignore[arg-type]
    ipam.auto_assign("first", "n1", [POOL], new_handle=True)
    counting.calls.clear()
    [ip] = ipam.auto_assign("second", "n1", [POOL], new_handle=True)
    assert counting.calls == {"commit": 1}
    counting.calls.clear()
    assert ipam.release_handle("second") == [ip]
    assert counting.calls == {"commit": 1}
    assert IPAM(store).check({"first"}, {"n1"}).ok


def test_stale_copies_cost_a_conflict_never_a_duplicate(store: MemoryDatastore) -> None:
    """Two IPAM objects for one node take turns: each builds on its own (stale) copy of the block."""
    pool = PoolSpec("p", "10.3.0.0/27", block_size=28)  # 2 blocks of 16
    a, b = IPAM(store, backoff=0), IPAM(store, backoff=0)
    held: dict[str, str] = {}
    for i in range(12):
        ipam = (a, b)[i % 2]
        [held[f"h{i}"]] = ipam.auto_assign(f"h{i}", "n1", [pool], new_handle=True)
        if i % 4 == 3:
            (b, a)[i % 2].release_handle(f"h{i - 1}")  # the other object releases: its copy is stale too
            held.pop(f"h{i - 1}")
    assert len(set(held.values())) == len(held)
    assert a.stats["conflicts"] + b.stats["conflicts"] > 0  # the stale copies were really used
    assert IPAM(store).check(set(held), {"n1"}).ok
    assert sorted(ip for h in held for ip in IPAM(store).handle_ips(h)) == sorted(held.values())


def test_a_burst_of_new_handles_is_one_transaction(store: MemoryDatastore) -> None:
    pool = PoolSpec("p", "10.4.0.0/26", block_size=28)  # blocks of 16
    counting = Counting(store)
    ipam = IPAM(counting, backoff=0)  # type: ignore[arg-type]
    ipam.auto_assign("warm", "n1", [pool], new_handle=True)  # claims the block, sets the hint
    counting.calls.clear()
    results = ipam.auto_assign_many([(f"h{i}", {"pod": f"p{i}"}) for i in range(5)], "n1", [pool])
    assert counting.calls == {"commit": 1}
    ips = [ip for r in results for ip in r]  # type: ignore[union-attr]
    assert len(ips) == len(set(ips)) == 5
    fresh = IPAM(store)
    assert all(fresh.handle_ips(f"h{i}") == results[i] for i in range(5))
    assert fresh.allocation(ips[2]).attrs["pod"] == "p2"  # type: ignore[union-attr]
    assert fresh.check({"warm", *(f"h{i}" for i in range(5))}, {"n1"}).ok


def test_a_burst_with_a_retried_handle_and_one_that_does_not_fit(store: MemoryDatastore) -> None:
    pool = PoolSpec("p", "10.4.0.0/26", block_size=28)
    ipam = IPAM(store, backoff=0)
    [held] = ipam.auto_assign("again", "n1", [pool], new_handle=True)
    results = ipam.auto_assign_many([("again", None), ("new", None)], "n1", [pool])
    assert isinstance(results[0], HandleInUse) and results[0].addresses == [held]
    assert isinstance(results[1], list) and len(results[1]) == 1
    # a burst bigger than the block's room: each on its own (the second block is claimed)
    burst = ipam.auto_assign_many([(f"b{i}", None) for i in range(16)], "n1", [pool])
    ips = [ip for r in burst for ip in r]  # type: ignore[union-attr]
    assert len(set(ips)) == 16 and len({block_of_28(ip) for ip in ips}) == 2
    assert IPAM(store).check({"again", "new", *(f"b{i}" for i in range(16))}, {"n1"}).ok


def block_of_28(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/28", strict=False))


def test_a_burst_that_loses_a_race_falls_back_one_by_one(flaky, store: MemoryDatastore) -> None:  # type: ignore[no-untyped-def]
    pool = PoolSpec("p", "10.4.0.0/26", block_size=28)
    ipam = IPAM(store, backoff=0)
    ipam.auto_assign("warm", "n1", [pool], new_handle=True)
    rival = IPAM(store, backoff=0)
    rival.auto_assign("rival", "n1", [pool], new_handle=True)  # the block changed under ipam's copy
    results = ipam.auto_assign_many([("x", None), ("y", None)], "n1", [pool])
    assert ipam.stats["conflicts"] >= 1 and ipam.stats["batched"] == 0
    ips = [ip for r in results for ip in r]  # type: ignore[union-attr]
    assert len(set(ips)) == 2 and not set(ips) & set(rival.handle_ips("rival"))
    assert IPAM(store).check({"warm", "rival", "x", "y"}, {"n1"}).ok


def test_a_burst_of_releases_is_one_transaction(store: MemoryDatastore) -> None:
    pool = PoolSpec("p", "10.4.0.0/26", block_size=28)
    counting = Counting(store)
    ipam = IPAM(counting, backoff=0)  # type: ignore[arg-type]
    held = ipam.auto_assign_many([(f"h{i}", None) for i in range(6)], "n1", [pool])
    counting.calls.clear()
    released = ipam.release_handles([f"h{i}" for i in range(4)] + ["unknown"])
    # "unknown" is not one of ours: no one-transaction path; each on its own, so one commit each
    assert counting.calls.get("commit", 0) == 4 and released[:4] == held[:4] and released[4] == []
    counting.calls.clear()
    assert ipam.release_handles(["h4", "h5"]) == held[4:]
    assert counting.calls == {"commit": 1}  # both ours, one block: one transaction
    assert IPAM(store).check(set(), {"n1"}).ok and IPAM(store).handle_ips("h4") == []


def test_releases_built_on_stale_copies_fall_back_one_by_one(store: MemoryDatastore) -> None:
    pool = PoolSpec("p", "10.4.0.0/26", block_size=28)
    ipam = IPAM(store, backoff=0)
    held = ipam.auto_assign_many([(f"h{i}", None) for i in range(3)], "n1", [pool])
    IPAM(store, backoff=0).auto_assign("rival", "n1", [pool])  # the block moved under ipam's copy
    released = ipam.release_handles(["h0", "h1"])
    assert released == held[:2] and ipam.stats["batched_releases"] == 0
    assert IPAM(store).check({"h2", "rival"}, {"n1"}).ok
