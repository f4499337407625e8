"""An IPAM block: a contiguous slice of an IP pool and who holds each of its addresses. Pure, no I/O.

The JSON mirrors Calico's ``IPAMBlock`` (libcalico-go ``model/block.go``) so anyone who knows
``calicoctl ipam`` can read it::

    {"cidr": "10.0.0.64/26", "affinity": "host:node-1",
     "allocations": [0, null, 1, ...],          # one per ordinal: index into attributes, or null
     "unallocated": [1, 3, 4, ...],             # FIFO of free ordinals: longest-free reused first
     "attributes": [{"handle_id": "...", "secondary": {"pod": ..., "namespace": ..., ...}}],
     "sequenceNumber": 7,                       # bumped by every allocation in the block
     "sequenceNumberForAllocation": {"0": 5, "2": 6},
     "deleted": false}

Sequence numbers are the ABA guard: an allocation remembers the block's sequence number at the time
it was made, and a release that names a sequence number (or a handle) is refused when the address
has since been released and handed to someone else.

Every mutating method works on ``self`` in memory; the caller (:mod:`podnet.ipam.allocator`) writes
the result back with compare-and-swap on the key's revision, so a lost race simply means re-reading
the block and applying the change again.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.ipam.errors import AddressInUse, CorruptRecord, SequenceMismatch

HOST_PREFIX = "host:"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_affinity(node: str) -> str:
    return f"{HOST_PREFIX}{node}"


@dataclass(frozen=True)
class Allocation:
    """One allocated address, as read from a block."""

    address: str
    block: str
    ordinal: int
    handle_id: str
    sequence: int | None
    attrs: Mapping[str, str]

    @property
    def node(self) -> str | None:
        return self.attrs.get("node")


@dataclass(frozen=True)
class Release:
    """Release one address; naming ``handle`` and/or ``sequence`` makes the release ABA-safe."""

    address: str
    handle: str | None = None
    sequence: int | None = None


@dataclass
class Block:
    cidr: str
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[dict[str, Any]] = field(default_factory=list)
    sequence_number: int = 0
    sequence_for_allocation: dict[int, int] = field(default_factory=dict)
    deleted: bool = False
    _net: IPNetwork = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._net = ipaddress.ip_network(self.cidr)
        self.cidr = str(self._net)

    # -- construction / serialisation ------------------------------------------------------
    @classmethod
    def empty(cls, cidr: str, affinity: str | None = None) -> Block:
        size = ipaddress.ip_network(cidr).num_addresses
        return cls(cidr=cidr, affinity=affinity, allocations=[None] * size, unallocated=list(range(size)))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "cidr": self.cidr,
                "affinity": self.affinity,
                "allocations": self.allocations,
                "unallocated": self.unallocated,
                "attributes": self.attributes,
                "sequenceNumber": self.sequence_number,
                "sequenceNumberForAllocation": {str(k): v for k, v in self.sequence_for_allocation.items()},
                "deleted": self.deleted,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Block:
        try:
            doc = json.loads(raw)
            affinity, attributes = doc.get("affinity"), list(doc.get("attributes") or [])
            if not isinstance(doc["cidr"], str) or not isinstance(affinity, str | None):
                raise TypeError("cidr and affinity must be strings")
            if not all(
                isinstance(a, dict) and isinstance(a.get("secondary") or {}, dict) for a in attributes
            ):
                raise TypeError("attributes must be objects")
            block = cls(
                cidr=doc["cidr"],
                affinity=doc.get("affinity"),
                allocations=list(doc["allocations"]),
                unallocated=[int(o) for o in doc["unallocated"]],
                attributes=list(doc.get("attributes") or []),
                sequence_number=int(doc.get("sequenceNumber", 0)),
                sequence_for_allocation={
                    int(k): int(v) for k, v in (doc.get("sequenceNumberForAllocation") or {}).items()
                },
                deleted=bool(doc.get("deleted", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise CorruptRecord(f"IPAM block record is not valid: {exc}") from exc
        problems = block.validate()
        if problems:
            raise CorruptRecord(f"IPAM block {block.cidr} is inconsistent: {'; '.join(problems)}")
        return block

    # -- geometry --------------------------------------------------------------------------
    @property
    def network(self) -> IPNetwork:
        return self._net

    @property
    def size(self) -> int:
        return self._net.num_addresses

    def contains(self, address: str) -> bool:
        return ipaddress.ip_address(address) in self._net

    def ordinal(self, address: str) -> int:
        ip = ipaddress.ip_address(address)
        if ip not in self._net:
            raise ValueError(f"{address} is not in block {self.cidr}")
        return int(ip) - int(self._net.network_address)

    def address(self, ordinal: int) -> str:
        return str(self._net.network_address + ordinal)

    @property
    def node(self) -> str | None:
        """The node this block is affine to, or None."""
        if self.affinity and self.affinity.startswith(HOST_PREFIX):
            return self.affinity[len(HOST_PREFIX) :]
        return None

    # -- queries ---------------------------------------------------------------------------
    def free_count(self) -> int:
        return len(self.unallocated)

    def allocated_count(self) -> int:
        return self.size - len(self.unallocated)

    def is_empty(self) -> bool:
        return len(self.unallocated) == self.size

    def allocation(self, ordinal: int) -> Allocation | None:
        index = self.allocations[ordinal]
        if index is None:
            return None
        attr = self.attributes[index]
        return Allocation(
            address=self.address(ordinal),
            block=self.cidr,
            ordinal=ordinal,
            handle_id=attr.get("handle_id") or "",
            sequence=self.sequence_for_allocation.get(ordinal),
            attrs=dict(attr.get("secondary") or {}),
        )

    def all_allocations(self) -> list[Allocation]:
        out = []
        for ordinal, index in enumerate(self.allocations):
            if index is not None:
                alloc = self.allocation(ordinal)
                assert alloc is not None
                out.append(alloc)
        return out

    def ordinals_for_handle(self, handle: str) -> list[int]:
        wanted = {i for i, a in enumerate(self.attributes) if a.get("handle_id") == handle}
        return [o for o, index in enumerate(self.allocations) if index in wanted]

    def handle_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for index in self.allocations:
            if index is not None:
                handle = self.attributes[index].get("handle_id") or ""
                counts[handle] = counts.get(handle, 0) + 1
        return counts

    # -- mutations -------------------------------------------------------------------------
    def assign(self, num: int, handle: str, attrs: Mapping[str, str]) -> list[int]:
        """Take up to ``num`` free ordinals (FIFO order) for ``handle``; returns the ordinals taken."""
        take = self.unallocated[:num]
        if not take:
            return []
        del self.unallocated[: len(take)]
        index = self._attribute_index(handle, attrs)
        for ordinal in take:
            self._mark(ordinal, index)
        return take

    def assign_ordinal(self, ordinal: int, handle: str, attrs: Mapping[str, str]) -> None:
        """Take one specific ordinal; AddressInUse when it is held."""
        if not 0 <= ordinal < self.size:
            raise ValueError(f"ordinal {ordinal} outside block {self.cidr}")
        current = self.allocation(ordinal)
        if current is not None:
            raise AddressInUse(
                f"{current.address} is already allocated to handle {current.handle_id!r}",
                hint="release that handle first, or let IPAM pick an address",
            )
        self.unallocated.remove(ordinal)
        self._mark(ordinal, self._attribute_index(handle, attrs))

    def release(self, requests: Mapping[int, tuple[str | None, int | None]]) -> dict[int, str]:
        """Free ordinals; ``requests`` maps ordinal → (expected handle, expected sequence), either None.

        All-or-nothing: SequenceMismatch (block unchanged) when an expectation does not hold.
        Ordinals that are already free are ignored. Returns ordinal → handle of what was freed.
        """
        freed: dict[int, str] = {}
        for ordinal, (handle, sequence) in requests.items():
            alloc = self.allocation(ordinal)
            if alloc is None:
                continue
            if handle is not None and alloc.handle_id != handle:
                raise SequenceMismatch(
                    f"{alloc.address} is now held by handle {alloc.handle_id!r}, not {handle!r}; "
                    "it was released and reassigned meanwhile",
                    hint="nothing was released; re-read the allocation",
                )
            if sequence is not None and alloc.sequence != sequence:
                raise SequenceMismatch(
                    f"{alloc.address}: sequence number is {alloc.sequence}, not {sequence}; "
                    "it was released and reassigned meanwhile",
                    hint="nothing was released; re-read the allocation",
                )
            freed[ordinal] = alloc.handle_id
        for ordinal in freed:
            self.allocations[ordinal] = None
            self.sequence_for_allocation.pop(ordinal, None)
            self.unallocated.append(ordinal)
        if freed:
            self._compact_attributes()
        return freed

    def release_handle(self, handle: str) -> list[int]:
        ordinals = self.ordinals_for_handle(handle)
        self.release({o: (handle, None) for o in ordinals})
        return ordinals

    # -- consistency -----------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Internal consistency problems (empty list when the block is sound)."""
        problems = []
        if len(self.allocations) != self.size:
            problems.append(f"{len(self.allocations)} allocation slots for {self.size} addresses")
            return problems
        free = [o for o, index in enumerate(self.allocations) if index is None]
        if len(set(self.unallocated)) != len(self.unallocated):
            problems.append("an ordinal is listed twice as unallocated")
        if sorted(self.unallocated) != free:
            problems.append("unallocated list does not match the free allocation slots")
        for ordinal, index in enumerate(self.allocations):
            if index is None:
                continue
            if not isinstance(index, int) or not 0 <= index < len(self.attributes):
                problems.append(f"ordinal {ordinal} points at missing attribute {index!r}")
            elif not self.attributes[index].get("handle_id"):
                problems.append(f"ordinal {ordinal} has no handle")
        for ordinal, seq in self.sequence_for_allocation.items():
            if seq >= self.sequence_number:
                problems.append(f"ordinal {ordinal} has sequence {seq} >= block sequence")
        return problems

    # -- internals -------------------------------------------------------------------------
    def _mark(self, ordinal: int, index: int) -> None:
        self.allocations[ordinal] = index
        self.sequence_for_allocation[ordinal] = self.sequence_number
        self.sequence_number += 1

    def _attribute_index(self, handle: str, attrs: Mapping[str, str]) -> int:
        entry = {"handle_id": handle, "secondary": dict(attrs)}
        for i, existing in enumerate(self.attributes):
            if existing == entry:
                return i
        self.attributes.append(entry)
        return len(self.attributes) - 1

    def _compact_attributes(self) -> None:
        used = sorted({i for i in self.allocations if i is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[i] for i in used]
        self.allocations = [None if i is None else remap[i] for i in self.allocations]
