"""Property-based tests of the IPAM invariants (hypothesis), against a model of who holds what.

The state machine runs random auto-assign / assign-ip / release-handle / release-ips / ABA attempts
over three nodes and two small pools (one with a nodeSelector, one disabled), on a datastore that
injects CAS conflicts, and checks after every step:

- no address is held twice, and IPAM's view equals the model (handle → addresses);
- every allocated address lies in an enabled-or-not pool and in its block; blocks lie in pools;
- ``check()`` with the model's live handles is clean;
- each auto-assignment followed Calico's order: affine block, else a new block, else a borrow
  (never with strictAffinity), and failed with PoolExhausted exactly when the order had no room.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from podnet.datastore.base import Write
from podnet.datastore.memory import MemoryDatastore
from podnet.errors import ConflictError, PoolExhausted
from podnet.ipam import IPAM, AddressInUse, IPAMConfig, PoolSpec, Release, SequenceMismatch, select_pools

NODES = ["n0", "n1", "n2"]
LABELS = {"n0": {"zone": "a"}, "n1": {"zone": "a"}, "n2": {"zone": "b"}}
POOL_A = PoolSpec("a", "10.0.0.0/28", block_size=30, node_selector="zone == 'a'")  # 4 blocks of 4
POOL_ALL = PoolSpec("all", "10.0.1.0/29", block_size=30)  # 2 blocks of 4
POOL_OFF = PoolSpec("off", "10.0.2.0/29", block_size=30, disabled=True)
POOLS = [POOL_A, POOL_ALL, POOL_OFF]


class Conflicting:
    """Fails a fraction of commits with ConflictError (not applied), to exercise the retry paths."""

    def __init__(self, inner: MemoryDatastore, rate: float, seed: int) -> None:
        self.inner, self.rate, self.rng = inner, rate, random.Random(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, writes: Sequence[Write]) -> int:
        if self.rng.random() < self.rate:
            raise ConflictError("injected")
        return self.inner.commit(writes)


def block_cidr(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/30", strict=False))


class IPAMMachine(RuleBasedStateMachine):
    @initialize(strict=st.booleans(), conflict_rate=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99))
    def setup(self, strict: bool, conflict_rate: float, seed: int) -> None:
        self.store = MemoryDatastore()
        self.ipam = IPAM(Conflicting(self.store, conflict_rate, seed), backoff=0)
        self.strict = strict
        self.ipam.set_config(IPAMConfig(strict_affinity=strict))
        self.held: dict[str, set[str]] = {}
        self.counter = 0

    def new_handle(self) -> str:
        self.counter += 1
        return f"h{self.counter}"

    def owner(self, address: str) -> str | None:
        return next((h for h, ips in self.held.items() if address in ips), None)

    # -- rules ---------------------------------------------------------------------------------
    @rule(node=st.sampled_from(NODES), num=st.integers(1, 3))
    def auto_assign(self, node: str, num: int) -> None:
        pools = select_pools(POOLS, LABELS[node])
        blocks = {b.cidr: b for b in self.ipam.blocks()}
        in_pools = [c for c in blocks if any(p.holds_block(c) for p in pools)]
        affine_free = sum(blocks[c].free_count() for c in in_pools if blocks[c].node == node)
        unclaimed = sum(p.block_count for p in pools) - len(in_pools)
        other_free = sum(blocks[c].free_count() for c in in_pools if blocks[c].node != node)
        room = affine_free + 4 * unclaimed + (0 if self.strict else other_free)
        handle = self.new_handle()
        try:
            got = self.ipam.auto_assign(handle, node, pools, {"pod": handle}, num=num)
        except PoolExhausted:
            assert room < num
            return
        assert room >= num and len(got) == num == len(set(got))
        for ip in got:
            assert self.owner(ip) is None, f"{ip} handed out twice"
            assert any(p.contains(ip) for p in pools)
        first = block_cidr(got[0])
        if affine_free:
            assert first in blocks and blocks[first].node == node  # affine block first
        elif unclaimed:
            assert first not in blocks  # then a newly claimed block
        else:
            assert not self.strict and first in blocks and blocks[first].node != node  # then a borrow
        self.held[handle] = set(got)

    @rule(node=st.sampled_from(NODES), index=st.integers(0, 15))
    def assign_ip(self, node: str, index: int) -> None:
        ip = str(POOL_A.network.network_address + index)
        handle = self.new_handle()
        try:
            assert self.ipam.assign_ip(ip, handle, node, POOLS) == ip
        except AddressInUse:
            assert self.owner(ip) is not None
            return
        assert self.owner(ip) is None
        self.held[handle] = {ip}

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_handle(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.held)))
        assert set(self.ipam.release_handle(handle)) == self.held.pop(handle)
        assert self.ipam.release_handle(handle) == []

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_some_ips(self, data: st.DataObject) -> None:
        everything = sorted(ip for ips in self.held.values() for ip in ips)
        chosen = data.draw(st.lists(st.sampled_from(everything), max_size=4, unique=True))
        assert set(self.ipam.release_ips(chosen)) == set(chosen)
        for ip in chosen:
            handle = self.owner(ip)
            assert handle is not None
            self.held[handle].discard(ip)
            if not self.held[handle]:
                del self.held[handle]

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def stale_release_is_refused(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.held)))
        ip = sorted(self.held[handle])[0]
        old = self.ipam.allocation(ip)
        assert old is not None and old.handle_id == handle
        self.ipam.release_ips([Release(ip, handle, old.sequence)])
        newcomer = self.new_handle()
        self.ipam.assign_ip(ip, newcomer, "n0", POOLS)
        for stale in (Release(ip, sequence=old.sequence), Release(ip, handle=handle)):
            try:
                self.ipam.release_ips([stale])
                raise AssertionError("a stale release freed a reassigned address")
            except SequenceMismatch:
                pass
        self.held[handle].discard(ip)
        if not self.held[handle]:
            del self.held[handle]
        self.held[newcomer] = {ip}

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def ipam_agrees_with_the_model(self) -> None:
        if not hasattr(self, "ipam"):
            return
        seen: dict[str, str] = {}
        for block in self.ipam.blocks():
            assert any(p.holds_block(block.cidr) for p in POOLS), block.cidr
            for a in block.all_allocations():
                assert ipaddress.ip_address(a.address) in block.network
                assert a.address not in seen, f"{a.address} allocated twice"
                seen[a.address] = a.handle_id
        assert seen == {ip: h for h, ips in self.held.items() for ip in ips}
        report = self.ipam.check(set(self.held), set(NODES), pools=POOLS)
        assert report.ok, report.summary()
        if self.strict:
            for block in self.ipam.blocks():
                for a in block.all_allocations():
                    # with strictAffinity an auto-assigned address is always in the node's own block
                    if a.attrs.get("pod") == a.handle_id:
                        assert block.node == a.node


TestIPAMMachine = IPAMMachine.TestCase
TestIPAMMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(NODES), st.integers(1, 3), st.booleans()), min_size=1, max_size=12),
)
def test_forgotten_handles_are_collected_and_live_ones_survive(ops: list[tuple[str, int, bool]]) -> None:
    ipam = IPAM(MemoryDatastore(), backoff=0)
    live: dict[str, list[str]] = {}
    dead: dict[str, list[str]] = {}
    for i, (node, num, keep) in enumerate(ops):
        try:
            got = ipam.auto_assign(f"h{i}", node, [POOL_A, POOL_ALL], num=num)
        except PoolExhausted:
            continue
        (live if keep else dead)[f"h{i}"] = got
    nodes = set(NODES)
    assert {i.handle for i in ipam.check(set(live), nodes).issues} == set(dead)
    for _ in range(2):
        ipam.gc(set(live), nodes, grace_seconds=0, release_empty_blocks=True)
    assert ipam.check(set(live), nodes).ok
    for handle, ips in live.items():
        assert sorted(ipam.handle_ips(handle)) == sorted(ips)
    for handle in dead:
        assert ipam.handle_ips(handle) == []
