"""The Cilium profile's BPF map layouts (ipcache, policy, endpoints) as bytes, and the order in which
a map is moved from one content to another without ever allowing more than both allow.

Both lookup maps are LPM tries (``BPF_MAP_TYPE_LPM_TRIE``): a key is a host-order ``u32`` prefix
length followed by data compared bit by bit from its first byte, so what may be a wildcard comes
last, in network order::

    ipcache key   prefixlen | pad u16 | pad u8 | family u8 | address[16]     prefixlen = 32 + bits
    ipcache value identity u32 | flags u32
    policy key    prefixlen | endpoint be16 | direction u8 | pad u8 | identity be32 |
                  protocol u8 | pad u8 | port be16                          prefixlen = 64 (any
                  protocol), or 80 + port prefix (a protocol, its port prefix)
    policy value  flags u8 (1 deny) | pad u8 | proxy port u16 | entry id u32
    endpoint      key: host ifindex u32; value: endpoint id u16 | flags u8 (1 ingress enforced,
                  2 egress enforced) | pad u8 | identity u32 | IPv4 be32 | MAC[6] | pad u16

The tc programs look a policy key up twice (the peer's identity, then 0): that and the deny rule
are :func:`podnet.calc.policymap.datapath_verdict`; ``test_cilium_maps`` checks that the bytes'
prefix match is the model's ``covers``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from podnet.calc.policymap import ANY_PROTOCOL, EGRESS, INGRESS, PolicyEntry, PolicyKey

DIRECTIONS = {INGRESS: 0, EGRESS: 1}
FAMILIES = {4: 4, 6: 6}
DENY = 1
INGRESS_ENFORCED, EGRESS_ENFORCED = 1, 2
_IPCACHE_KEY = struct.Struct("=I2xxB16s")
_IPCACHE_VALUE = struct.Struct("=II")
_POLICY_KEY = struct.Struct("=I")  # prefixlen; the data follows in network order
_POLICY_DATA = struct.Struct("!HBxIBxH")
_POLICY_VALUE = struct.Struct("=BxHI")
_ENDPOINT_VALUE = struct.Struct("=HBxI4s6s2x")
POLICY_FIXED_BITS = 64  # endpoint, direction, pad, identity


def ipcache_key(prefix: str) -> bytes:
    net = ipaddress.ip_network(prefix, strict=False)
    address = net.network_address.packed.ljust(16, b"\0")
    return _IPCACHE_KEY.pack(32 + net.prefixlen, FAMILIES[net.version], address)


def ipcache_value(identity: int, flags: int = 0) -> bytes:
    return _IPCACHE_VALUE.pack(identity, flags)


def policy_key(endpoint: int, key: PolicyKey) -> bytes:
    # a protocol fixes it and the pad byte after it, then the port prefix
    length = POLICY_FIXED_BITS + (0 if key.protocol == ANY_PROTOCOL else 16 + key.prefix)
    data = _POLICY_DATA.pack(endpoint, DIRECTIONS[key.direction], key.identity, key.protocol, key.port)
    return _POLICY_KEY.pack(length) + data


def decode_policy_key(raw: bytes) -> tuple[int, PolicyKey]:
    """(endpoint id, key) of a policy map key."""
    (length,) = _POLICY_KEY.unpack_from(raw)
    endpoint, direction, identity, protocol, port = _POLICY_DATA.unpack_from(raw, _POLICY_KEY.size)
    name = INGRESS if direction == DIRECTIONS[INGRESS] else EGRESS
    if length == POLICY_FIXED_BITS:
        return endpoint, PolicyKey(name, identity)
    return endpoint, PolicyKey(name, identity, protocol, port, length - POLICY_FIXED_BITS - 16)


def policy_value(entry: PolicyEntry, entry_id: int) -> bytes:
    return _POLICY_VALUE.pack(DENY if entry.deny else 0, entry.proxy_port, entry_id)


def is_deny_value(raw: bytes) -> bool:
    return bool(_POLICY_VALUE.unpack_from(raw)[0] & DENY)


def endpoint_value(
    endpoint: int, identity: int, ipv4: str, mac: str, ingress_enforced: bool, egress_enforced: bool
) -> bytes:
    flags = (INGRESS_ENFORCED if ingress_enforced else 0) | (EGRESS_ENFORCED if egress_enforced else 0)
    mac_bytes = bytes(int(part, 16) for part in mac.split(":")) if mac else b"\0" * 6
    return _ENDPOINT_VALUE.pack(endpoint, flags, identity, ipaddress.IPv4Address(ipv4).packed, mac_bytes)


def lpm_matches(key: bytes, lookup: bytes) -> bool:
    """What the kernel's LPM trie asks of ``key`` for the full-length ``lookup`` key: its first
    prefixlen data bits equal the lookup's."""
    (length,) = struct.unpack_from("=I", key)
    data, probe = key[4:], lookup[4:]
    whole, rest = divmod(length, 8)
    if data[:whole] != probe[:whole]:
        return False
    if rest == 0:
        return True
    mask = (0xFF << (8 - rest)) & 0xFF
    return data[whole] & mask == probe[whole] & mask


@dataclass(frozen=True)
class MapOp:
    """One step of a map update: ``value`` None deletes ``key``."""

    key: bytes
    value: bytes | None


def map_ops(
    current: Mapping[bytes, bytes], desired: Mapping[bytes, bytes], is_deny: Callable[[bytes], bool]
) -> list[MapOp]:
    """The steps from ``current`` to ``desired`` in an order that never allows more than one of
    them does: new and changed denies first, then allows that go away, then new and changed
    allows, then denies that go away (a reader between two steps sees old and new denies over
    fewer allows)."""
    changed = {k: v for k, v in desired.items() if current.get(k) != v}
    gone = [k for k in current if k not in desired]
    ops = [MapOp(k, v) for k, v in sorted(changed.items()) if is_deny(v)]
    ops += [MapOp(k, None) for k in sorted(gone) if not is_deny(current[k])]
    ops += [MapOp(k, v) for k, v in sorted(changed.items()) if not is_deny(v)]
    ops += [MapOp(k, None) for k in sorted(gone) if is_deny(current[k])]
    return ops
