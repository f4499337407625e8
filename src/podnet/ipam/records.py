"""The small IPAM records next to the blocks: handles, affinities, the IPAM config. Pure, no I/O.

- ``HandleRecord`` (Calico's ``IPAMHandle``) at ``KeyLayout.handle(id)``: ``{"handleID": ...,
  "block": {"10.0.0.64/26": 2}}``, how many of the handle's addresses each block holds, so a release
  by handle reads only those blocks.
- ``AffinityRecord`` (Calico's ``BlockAffinity``) at ``KeyLayout.affinity(node, cidr)``. podnet
  writes the affinity atomically together with the block (one etcd transaction), so it is only ever
  ``confirmed``; the ``state`` field is kept for Calico familiarity.
- ``IPAMConfig`` at ``KeyLayout.ipam_config()``: ``strictAffinity``, ``maxBlocksPerHost`` (0 = the
  default of 20; a positive value requires ``strictAffinity``, as in Calico), ``autoAllocateBlocks``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from podnet.errors import ValidationError
from podnet.ipam.errors import CorruptRecord

DEFAULT_MAX_BLOCKS_PER_HOST = 20


def handle_id(network: str, container_id: str, ifname: str) -> str:
    """The handle of one pod interface: ``<network>.<containerID>.<ifname>``."""
    return f"{network}.{container_id}.{ifname}"


def _load(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CorruptRecord(f"{what} record is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CorruptRecord(f"{what} record is not a JSON object")
    return doc


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class HandleRecord:
    handle_id: str
    blocks: dict[str, int] = field(default_factory=dict)

    def add(self, cidr: str, count: int) -> None:
        self.blocks[cidr] = self.blocks.get(cidr, 0) + count

    def remove(self, cidr: str, count: int) -> None:
        left = self.blocks.get(cidr, 0) - count
        if left > 0:
            self.blocks[cidr] = left
        else:
            self.blocks.pop(cidr, None)

    def total(self) -> int:
        return sum(self.blocks.values())

    def to_json(self) -> bytes:
        return _dump({"handleID": self.handle_id, "block": self.blocks, "deleted": False})

    @classmethod
    def from_json(cls, raw: bytes) -> HandleRecord:
        doc = _load(raw, "IPAM handle")
        try:
            return cls(doc["handleID"], {str(k): int(v) for k, v in (doc.get("block") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"IPAM handle record is not valid: {exc}") from exc


@dataclass(frozen=True)
class AffinityRecord:
    node: str
    cidr: str
    state: str = "confirmed"

    def to_json(self) -> bytes:
        return _dump({"node": self.node, "cidr": self.cidr, "state": self.state, "deleted": False})

    @classmethod
    def from_json(cls, raw: bytes) -> AffinityRecord:
        doc = _load(raw, "IPAM affinity")
        try:
            return cls(doc["node"], doc["cidr"], doc.get("state", "confirmed"))
        except (KeyError, TypeError) as exc:
            raise CorruptRecord(f"IPAM affinity record is not valid: {exc}") from exc


@dataclass(frozen=True)
class IPAMConfig:
    strict_affinity: bool = False
    max_blocks_per_host: int = 0
    auto_allocate_blocks: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.max_blocks_per_host < 0:
            problems.append(("maxBlocksPerHost", "must be >= 0"))
        if self.max_blocks_per_host > 0 and not self.strict_affinity:
            problems.append(("maxBlocksPerHost", "a positive value requires strictAffinity: true"))
        if problems:
            raise ValidationError(problems, subject="IPAMConfig")

    @property
    def effective_max_blocks(self) -> int:
        return self.max_blocks_per_host or DEFAULT_MAX_BLOCKS_PER_HOST

    def to_json(self) -> bytes:
        return _dump(
            {
                "strictAffinity": self.strict_affinity,
                "maxBlocksPerHost": self.max_blocks_per_host,
                "autoAllocateBlocks": self.auto_allocate_blocks,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> IPAMConfig:
        doc = _load(raw, "IPAM config")
        return cls(
            strict_affinity=bool(doc.get("strictAffinity", False)),
            max_blocks_per_host=int(doc.get("maxBlocksPerHost", 0)),
            auto_allocate_blocks=bool(doc.get("autoAllocateBlocks", True)),
        )
