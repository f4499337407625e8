"""The pure block and record logic: FIFO reuse, sequence numbers, ABA refusal, JSON, consistency."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.errors import ValidationError
from podnet.ipam.block import Block, host_affinity
from podnet.ipam.errors import AddressInUse, CorruptRecord, SequenceMismatch
from podnet.ipam.records import AffinityRecord, HandleRecord, IPAMConfig, handle_id

ATTRS = {"pod": "web-1", "namespace": "default", "node": "n1"}


def test_empty_block_geometry() -> None:
    block = Block.empty("10.0.0.64/26", host_affinity("n1"))
    assert block.size == 64 and block.free_count() == 64 and block.is_empty()
    assert block.node == "n1"
    assert block.address(0) == "10.0.0.64" and block.address(63) == "10.0.0.127"
    assert block.ordinal("10.0.0.70") == 6
    with pytest.raises(ValueError):
        block.ordinal("10.0.0.128")


def test_assign_takes_lowest_free_then_fifo_reuse() -> None:
    block = Block.empty("10.0.0.0/30")
    assert block.assign(2, "h1", ATTRS) == [0, 1]
    block.release({0: ("h1", None)})
    # the released ordinal goes to the back of the queue: longest-free reused first
    assert block.assign(2, "h2", ATTRS) == [2, 3]
    assert block.assign(5, "h3", ATTRS) == [0]
    assert block.assign(1, "h4", ATTRS) == []
    assert block.free_count() == 0 and block.allocated_count() == 4


def test_attributes_are_shared_and_compacted() -> None:
    block = Block.empty("10.0.0.0/29")
    block.assign(3, "h1", ATTRS)
    block.assign(1, "h2", {"pod": "other"})
    assert len(block.attributes) == 2
    assert block.handle_counts() == {"h1": 3, "h2": 1}
    assert block.release_handle("h1") == [0, 1, 2]
    assert len(block.attributes) == 1 and block.allocations[3] == 0
    assert block.allocation(3).handle_id == "h2"  # type: ignore[union-attr]
    assert block.validate() == []


def test_assign_ordinal_refuses_taken_address() -> None:
    block = Block.empty("10.0.0.0/29")
    block.assign_ordinal(5, "h1", ATTRS)
    with pytest.raises(AddressInUse, match=r"10\.0\.0\.5 .*'h1'"):
        block.assign_ordinal(5, "h2", ATTRS)
    assert block.allocation(5).handle_id == "h1"  # type: ignore[union-attr]
    assert 5 not in block.unallocated


def test_sequence_numbers_guard_against_aba() -> None:
    block = Block.empty("10.0.0.0/30")
    block.assign_ordinal(1, "h1", ATTRS)
    first = block.allocation(1)
    assert first is not None
    block.release({1: (None, None)})
    block.assign_ordinal(1, "h2", ATTRS)
    second = block.allocation(1)
    assert second is not None and second.sequence != first.sequence
    snapshot = block.to_json()
    with pytest.raises(SequenceMismatch):
        block.release({1: (None, first.sequence)})
    with pytest.raises(SequenceMismatch):
        block.release({1: ("h1", None)})
    assert block.to_json() == snapshot  # refused releases change nothing
    assert block.release({1: ("h2", second.sequence)}) == {1: "h2"}


def test_release_is_all_or_nothing_and_ignores_free_ordinals() -> None:
    block = Block.empty("10.0.0.0/30")
    block.assign(2, "h1", ATTRS)
    before = block.to_json()
    with pytest.raises(SequenceMismatch):
        block.release({0: ("h1", None), 1: ("other", None)})
    assert block.to_json() == before
    assert block.release({2: (None, None)}) == {}


def test_json_round_trip_and_calico_shape() -> None:
    block = Block.empty("10.0.0.0/29", host_affinity("n1"))
    block.assign(2, "h1", ATTRS)
    doc = json.loads(block.to_json())
    assert doc["affinity"] == "host:n1"
    assert doc["allocations"][:3] == [0, 0, None]
    assert doc["sequenceNumberForAllocation"] == {"0": 0, "1": 1}
    assert Block.from_json(block.to_json()) == block


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(unallocated=d["unallocated"] + [0]),
        lambda d: d.update(allocations=d["allocations"][:-1]),
        lambda d: d["allocations"].__setitem__(0, 7),
        lambda d: d.pop("cidr"),
    ],
)
def test_corrupt_blocks_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    block = Block.empty("10.0.0.0/29")
    block.assign(2, "h1", ATTRS)
    doc = json.loads(block.to_json())
    mutate(doc)
    with pytest.raises(CorruptRecord):
        Block.from_json(json.dumps(doc).encode())
    with pytest.raises(CorruptRecord):
        Block.from_json(b"not json")


def test_ipv6_block() -> None:
    block = Block.empty("fd00::40/122")
    assert block.size == 64
    block.assign_ordinal(block.ordinal("fd00::45"), "h", ATTRS)
    assert block.allocation(5).address == "fd00::45"  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["assign", "release", "release_handle"]), st.integers(0, 3), st.integers(1, 5)
        ),
        max_size=40,
    )
)
def test_random_operations_keep_the_block_consistent(ops: list[tuple[str, int, int]]) -> None:
    block = Block.empty("10.0.0.0/29")
    model: dict[int, str] = {}
    for op, h, n in ops:
        handle = f"h{h}"
        if op == "assign":
            taken = block.assign(n, handle, {"n": str(n)})
            assert not set(taken) & set(model)
            model.update(dict.fromkeys(taken, handle))
        elif op == "release":
            freed = block.release({o: (None, None) for o in range(n)})
            assert freed == {o: model[o] for o in range(n) if o in model}
            for o in freed:
                del model[o]
        else:
            freed_ordinals = block.release_handle(handle)
            assert sorted(freed_ordinals) == sorted(o for o, x in model.items() if x == handle)
            model = {o: x for o, x in model.items() if x != handle}
        assert block.validate() == []
        assert {o: a.handle_id for o in range(8) if (a := block.allocation(o))} == model
        assert Block.from_json(block.to_json()) == block


# -- records -----------------------------------------------------------------------------------
def test_handle_id_format() -> None:
    assert handle_id("k8s-pod-network", "abc123", "eth0") == "k8s-pod-network.abc123.eth0"


def test_handle_record_counts() -> None:
    record = HandleRecord("h")
    record.add("10.0.0.0/26", 2)
    record.add("10.0.0.64/26", 1)
    record.remove("10.0.0.0/26", 1)
    record.remove("10.0.0.64/26", 5)
    assert record.blocks == {"10.0.0.0/26": 1} and record.total() == 1
    assert HandleRecord.from_json(record.to_json()) == record
    with pytest.raises(CorruptRecord):
        HandleRecord.from_json(b"[]")


def test_affinity_record_round_trip() -> None:
    rec = AffinityRecord("n1", "10.0.0.0/26")
    assert AffinityRecord.from_json(rec.to_json()) == rec
    assert json.loads(rec.to_json())["state"] == "confirmed"


def test_ipam_config_defaults_and_validation() -> None:
    cfg = IPAMConfig()
    assert cfg.effective_max_blocks == 20 and cfg.auto_allocate_blocks and not cfg.strict_affinity
    assert IPAMConfig.from_json(b"{}") == cfg
    strict = IPAMConfig(strict_affinity=True, max_blocks_per_host=3)
    assert IPAMConfig.from_json(strict.to_json()) == strict
    with pytest.raises(ValidationError, match=r"maxBlocksPerHost.*strictAffinity"):
        IPAMConfig(max_blocks_per_host=3)
