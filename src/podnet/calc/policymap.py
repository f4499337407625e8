"""The Cilium profile's per-endpoint policy map (pure): its keys, entries, and deny precedence.

Cilium's policymap: per endpoint and direction, keys (peer identity, protocol, destination port or
port prefix) -> allow, deny or redirect to a proxy port. Identity 0 is the wildcard ("any peer"),
protocol 0 the wildcard ("any protocol", port wildcard too), and a port range is a set of port
prefixes (:func:`port_prefixes`). The tc program makes two longest-prefix lookups for a new
connection, one with the peer's identity and one with identity 0, and decides (:func:`datapath_verdict`):

- a deny found by either lookup: denied (deny wins over every allow of every kind);
- else an allow found by either: allowed (a redirect carries its proxy port);
- else no entry: the direction's default (deny once a policy selects the endpoint).

A longest-prefix lookup returns only the most specific entry of its identity, so a broad deny
with a narrower allow under it (deny TCP, allow TCP/80, same peer) would let port 80 through.
:func:`materialize` closes that gap before the map is written: an allow nested in a deny of the
same identity becomes a deny (its provenance keeps both), which is what Cilium's policy
computation does too. Across identities nothing is needed: both lookups always run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INGRESS, EGRESS = "ingress", "egress"
ANY_IDENTITY = 0
ANY_PROTOCOL = 0
PORT_BITS = 16
PROTOCOL_BITS = 8


def port_prefixes(first: int, last: int) -> list[tuple[int, int]]:
    """The range ``first``..``last`` as (port, prefix length) pairs, fewest first-to-last (a
    range of 0..65535 is one pair of length 0; a single port is length 16)."""
    if not 0 <= first <= last <= 0xFFFF:
        raise ValueError(f"port range {first}-{last} is outside 0-65535")
    out: list[tuple[int, int]] = []
    start = first
    while start <= last:
        size = start & -start if start else 1 << PORT_BITS  # the largest block aligned at start
        while start + size - 1 > last:
            size >>= 1
        out.append((start, PORT_BITS - size.bit_length() + 1))
        start += size
    return out


@dataclass(frozen=True, order=True)
class PolicyKey:
    """One key of an endpoint's map. ``protocol`` 0: any protocol and any port (``port`` 0,
    ``prefix`` 0); else ``port``/``prefix``: the destination ports whose first ``prefix`` bits
    equal ``port``'s (16: one port, 0: all)."""

    direction: str
    identity: int
    protocol: int = ANY_PROTOCOL
    port: int = 0
    prefix: int = 0

    def __post_init__(self) -> None:
        if self.direction not in (INGRESS, EGRESS):
            raise ValueError(f"direction {self.direction!r}")
        if self.protocol == ANY_PROTOCOL and (self.port or self.prefix):
            raise ValueError("a key of any protocol covers every port (port 0, prefix 0)")
        if not 0 <= self.prefix <= PORT_BITS or self.port & ~_mask(self.prefix):
            raise ValueError(f"port {self.port}/{self.prefix} is not a port prefix")

    @property
    def lpm_length(self) -> int:
        """Bits of (protocol, port) the key fixes: 0 for any protocol, 8 + prefix otherwise."""
        return 0 if self.protocol == ANY_PROTOCOL else PROTOCOL_BITS + self.prefix

    def covers(self, protocol: int, port: int) -> bool:
        if self.protocol == ANY_PROTOCOL:
            return True
        return self.protocol == protocol and port & _mask(self.prefix) == self.port

    def contains(self, other: PolicyKey) -> bool:
        """Whether every (protocol, port) ``other`` covers is covered by this key (same direction
        and identity)."""
        if (self.direction, self.identity) != (other.direction, other.identity):
            return False
        if self.protocol == ANY_PROTOCOL:
            return True
        return (
            other.protocol == self.protocol
            and other.prefix >= self.prefix
            and other.port & _mask(self.prefix) == self.port
        )


def _mask(prefix: int) -> int:
    return (0xFFFF << (PORT_BITS - prefix)) & 0xFFFF


@dataclass(frozen=True)
class PolicyEntry:
    """What a key decides, and which rules said so (``provenance``: rule descriptions, sorted)."""

    deny: bool = False
    proxy_port: int = 0
    provenance: tuple[str, ...] = field(default=())


PolicyMap = dict[PolicyKey, PolicyEntry]


def add_entry(entries: PolicyMap, key: PolicyKey, entry: PolicyEntry) -> None:
    """Merge ``entry`` into ``entries[key]``: deny wins, a redirect wins over a plain allow (the
    lowest proxy port if two redirect), provenance is the union."""
    old = entries.get(key)
    if old is None:
        entries[key] = entry
        return
    deny = old.deny or entry.deny
    proxies = [e.proxy_port for e in (old, entry) if e.proxy_port and not e.deny]
    entries[key] = PolicyEntry(
        deny, 0 if deny or not proxies else min(proxies), tuple(sorted({*old.provenance, *entry.provenance}))
    )


def materialize(entries: Mapping[PolicyKey, PolicyEntry]) -> PolicyMap:
    """``entries`` with every allow nested in a deny of the same direction and identity turned
    into that deny (see the module docstring): what the map holds."""
    denies: dict[tuple[str, int], list[PolicyKey]] = {}
    for key, entry in entries.items():
        if entry.deny:
            denies.setdefault((key.direction, key.identity), []).append(key)
    out: PolicyMap = {}
    for key, entry in entries.items():
        if not entry.deny and (key.direction, key.identity) in denies:
            covering = [d for d in denies[(key.direction, key.identity)] if d.contains(key)]
            if covering:
                reasons = {*entry.provenance, *(p for d in covering for p in entries[d].provenance)}
                entry = PolicyEntry(True, 0, tuple(sorted(reasons)))
        out[key] = entry
    return out


def lookup(
    entries: Mapping[PolicyKey, PolicyEntry], direction: str, identity: int, protocol: int, port: int
) -> tuple[PolicyKey, PolicyEntry] | None:
    """The datapath's longest-prefix lookup for one identity: (key, entry) or None."""
    best: tuple[PolicyKey, PolicyEntry] | None = None
    for key, entry in entries.items():
        mine = key.direction == direction and key.identity == identity and key.covers(protocol, port)
        if mine and (best is None or key.lpm_length > best[0].lpm_length):
            best = (key, entry)
    return best


def datapath_verdict(
    entries: Mapping[PolicyKey, PolicyEntry], direction: str, identity: int, protocol: int, port: int
) -> PolicyEntry | None:
    """What the tc program decides from the map: the two lookups combined (module docstring);
    None when neither finds an entry."""
    found = [
        hit[1]
        for hit in (
            lookup(entries, direction, identity, protocol, port),
            lookup(entries, direction, ANY_IDENTITY, protocol, port),
        )
        if hit is not None
    ]
    denied = [e for e in found if e.deny]
    if denied:
        return denied[0]
    return found[0] if found else None


def reference_verdict(
    entries: Iterable[tuple[PolicyKey, PolicyEntry]], direction: str, identity: int, protocol: int, port: int
) -> bool | None:
    """The policy's meaning, entry by entry (no lookups): denied if any matching entry denies,
    allowed if any allows, None if none matches."""
    matching = [
        entry
        for key, entry in entries
        if key.direction == direction
        and key.identity in (identity, ANY_IDENTITY)
        and key.covers(protocol, port)
    ]
    if any(e.deny for e in matching):
        return False
    return True if matching else None
