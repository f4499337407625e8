"""The Cilium profile's BPF map layouts (ipcache, policy, endpoints) as bytes, and the order in which
a map is moved from one content to another without ever allowing more than both allow.

Both lookup maps are LPM tries (``BPF_MAP_TYPE_LPM_TRIE``): a key is a host-order ``u32`` prefix
length followed by data compared bit by bit from its first byte, so what may be a wildcard comes
last, in network order::

    ipcache key   prefixlen | pad u16 | pad u8 | family u8 | address[16]     prefixlen = 32 + bits
    ipcache value identity u32 | flags u32 (1: a pod address, forwarded past the stack)
    policy key    prefixlen | endpoint be16 | direction u8 | pad u8 | identity be32 |
                  protocol u8 | pad u8 | port be16                          prefixlen = 64 (any
                  protocol), or 80 + port prefix (a protocol, its port prefix)
    policy value  flags u8 (1 deny) | pad u8 | proxy port u16 | entry id u32
    endpoint      key: host ifindex u32; value: endpoint id u16 | flags u8 (1 ingress enforced,
                  2 egress enforced, 4 not ready) | pad u8 | identity u32 | IPv4 be32 | pod MAC[6] |
                  host veth MAC[6]
    local IPs     key: IPv4 be32; value: host ifindex u32
    control       key: IPv4 be32 (0: any of this node's) | protocol u8 | pad u8 | port be16; value u32
    conntrack     key: saddr | daddr | sport | dport (be) | protocol u8 | direction u8 | endpoint u16;
                  value: packets, bytes forward; packets, bytes reply (u64) | expiry second u32 |
                  created u32 | peer identity u32 | entry id u32 | flags u16 | proxy port u16 |
                  TCP flags forward, reply u8 | pad u16
    event         type u8 (1 drop, 2 policy verdict) | reason u8 | direction u8 | verdict u8 |
                  endpoint u16 | protocol u8 | TCP flags u8 | ifindex u32 | source identity u32 |
                  destination identity u32 | entry id u32 | saddr | daddr | sport | dport (be) |
                  length u32 | time ns u64 | match u8 | pad[7]

The tc programs look a policy key up twice (the peer's identity, then 0): that and the deny rule
are :func:`podnet.calc.policymap.datapath_verdict`; ``test_cilium_maps`` checks that the bytes'
prefix match is the model's ``covers``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from podnet.calc.policymap import ANY_PROTOCOL, EGRESS, INGRESS, PolicyEntry, PolicyKey

DIRECTIONS = {INGRESS: 0, EGRESS: 1}
FAMILIES = {4: 4, 6: 6}
DENY = 1
INGRESS_ENFORCED, EGRESS_ENFORCED, NOT_READY = 1, 2, 4
IPCACHE_POD = 1
_IPCACHE_KEY = struct.Struct("=I2xxB16s")
_IPCACHE_VALUE = struct.Struct("=II")
_POLICY_KEY = struct.Struct("=I")  # prefixlen; the data follows in network order
_POLICY_DATA = struct.Struct("!HBxIBxH")
_POLICY_VALUE = struct.Struct("=BxHI")
_ENDPOINT_VALUE = struct.Struct("=HBxI4s6s6s")
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


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":")) if mac else b"\0" * 6


def endpoint_value(
    endpoint: int,
    identity: int,
    ipv4: str,
    mac: str,
    ingress_enforced: bool,
    egress_enforced: bool,
    host_mac: str = "",
    *,
    ready: bool = True,
) -> bytes:
    """An endpoint record; ``ready`` False: wired, its policy not computed yet (every new
    connection refused but the node's own)."""
    flags = (INGRESS_ENFORCED if ingress_enforced else 0) | (EGRESS_ENFORCED if egress_enforced else 0)
    flags |= 0 if ready else NOT_READY
    return _ENDPOINT_VALUE.pack(
        endpoint, flags, identity, ipaddress.IPv4Address(ipv4).packed, mac_bytes(mac), mac_bytes(host_mac)
    )


@dataclass(frozen=True)
class EndpointValue:
    endpoint: int
    identity: int
    ipv4: str
    mac: str
    host_mac: str
    ingress_enforced: bool
    egress_enforced: bool
    ready: bool


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def decode_endpoint_value(raw: bytes) -> EndpointValue:
    endpoint, flags, identity, ipv4, mac, host_mac = _ENDPOINT_VALUE.unpack_from(raw)
    return EndpointValue(
        endpoint,
        identity,
        str(ipaddress.IPv4Address(ipv4)),
        _mac_text(mac),
        _mac_text(host_mac),
        bool(flags & INGRESS_ENFORCED),
        bool(flags & EGRESS_ENFORCED),
        not flags & NOT_READY,
    )


def u32_key(value: int) -> bytes:
    """A host-order ``u32`` key (ifindex, endpoint id, entry id, array index)."""
    return struct.pack("=I", value)


def local_ip_key(ipv4: str) -> bytes:
    return ipaddress.IPv4Address(ipv4).packed


def decode_ipcache_key(raw: bytes) -> str:
    length, family, address = _IPCACHE_KEY.unpack_from(raw)
    if family == FAMILIES[6]:
        return f"{ipaddress.IPv6Address(address)}/{length - 32}"
    return f"{ipaddress.IPv4Address(address[:4])}/{length - 32}"


def decode_ipcache_value(raw: bytes) -> tuple[int, int]:
    """(identity, flags)."""
    identity, flags = _IPCACHE_VALUE.unpack_from(raw)
    return identity, flags


def decode_policy_value(raw: bytes) -> tuple[bool, int, int]:
    """(deny, proxy port, entry id)."""
    flags, proxy_port, entry_id = _POLICY_VALUE.unpack_from(raw)
    return bool(flags & DENY), proxy_port, entry_id


_CT_KEY = struct.Struct("=4s4sHHBBH")
_CT_VALUE = struct.Struct("=QQQQIIIIHHBB2x")
CT_FLAGS = {1: "FIN_FWD", 2: "FIN_REV", 4: "RST", 8: "SEEN_REPLY", 16: "BYPASS", 32: "PROXY"}


@dataclass(frozen=True)
class CtEntry:
    """One conntrack entry, as ``podnet bpf ct list`` shows it (``dir``: the endpoint's direction
    of the connection's first packet; ``expires``: CLOCK_MONOTONIC second)."""

    endpoint: int
    direction: str
    protocol: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    packets_fwd: int
    bytes_fwd: int
    packets_rev: int
    bytes_rev: int
    expires: int
    created: int
    peer_identity: int
    entry_id: int
    flags: tuple[str, ...]
    tcp_flags_fwd: int
    tcp_flags_rev: int


def decode_ct(key: bytes, value: bytes) -> CtEntry:
    saddr, daddr, sport, dport, protocol, direction, endpoint = _CT_KEY.unpack_from(key)
    pf, bf, pr, br, expires, created, peer, entry_id, flags, _proxy, tf, tr = _CT_VALUE.unpack_from(value)
    return CtEntry(
        endpoint,
        INGRESS if direction == DIRECTIONS[INGRESS] else EGRESS,
        protocol,
        str(ipaddress.IPv4Address(saddr)),
        socket_port(sport),
        str(ipaddress.IPv4Address(daddr)),
        socket_port(dport),
        pf,
        bf,
        pr,
        br,
        expires,
        created,
        peer,
        entry_id,
        tuple(name for bit, name in CT_FLAGS.items() if flags & bit),
        tf,
        tr,
    )


def socket_port(raw: int) -> int:
    """A port read host-order from network-order bytes, back to its number."""
    return socket.ntohs(raw)


EVENT_DROP, EVENT_VERDICT, EVENT_TRACE = 1, 2, 3
VERDICT_ALLOWED, VERDICT_DENIED, VERDICT_REDIRECTED = 1, 2, 3
_EVENT = struct.Struct("=BBBBHBBIIII4s4sHHIQB7x")
EVENT_SIZE = _EVENT.size
MATCHES = {0: "none", 1: "identity", 2: "any identity", 3: "host", 4: "not enforced"}


class Event(NamedTuple):
    """One ring-buffer event of the tc programs (``ts``: CLOCK_MONOTONIC ns). A named tuple: one
    is made per new connection while flows are on, and a frozen dataclass costs five times more."""

    type: int
    reason: int
    direction: str
    verdict: int
    endpoint: int
    protocol: int
    tcp_flags: int
    ifindex: int
    src_identity: int
    dst_identity: int
    entry_id: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    length: int
    ts: int
    match: str


def decode_event(raw: bytes) -> Event:
    (kind, reason, direction, verdict, endpoint, protocol, tcp_flags, ifindex, src, dst, entry_id,
     saddr, daddr, sport, dport, length, ts, match) = _EVENT.unpack_from(raw)  # fmt: skip
    return Event(
        kind,
        reason,
        INGRESS if direction == DIRECTIONS[INGRESS] else EGRESS,
        verdict,
        endpoint,
        protocol,
        tcp_flags,
        ifindex,
        src,
        dst,
        entry_id,
        socket.inet_ntoa(saddr),  # ipaddress's str() costs ten times more, per event
        socket.inet_ntoa(daddr),
        socket_port(sport),
        socket_port(dport),
        length,
        ts,
        MATCHES.get(match, str(match)),
    )


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


#: Cilium's drop reasons the tc programs use (``pkg/monitor/api/drop.go``; 203 is podnet's text).
DROP_REASONS = {
    130: "Invalid source mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    139: "Unsupported L3 protocol",
    155: "CT: Map insertion failed",
    175: "Fragmented packet entry not found",
    181: "Policy denied by denylist",
    203: "Endpoint not ready (its policy is not computed yet)",
    230: "Node control plane closed to pods",
    231: "No path to the L7 proxy (a redirect met past the routing step)",
}
DROP_CONTROL_PLANE = 230
DROP_NO_PROXY_PATH = 231
_CONTROL_KEY = struct.Struct("!4sBxH")
L4_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


def control_key(address: str | None, protocol: str, port: int) -> bytes:
    """A ``pn_control`` key: ``address`` None stands for any address of this node."""
    packed = ipaddress.IPv4Address(address).packed if address else b"\0" * 4
    return _CONTROL_KEY.pack(packed, L4_NUMBERS[protocol.lower()], port)


#: pn_stats slots (``enum STAT_*`` of lxc.c), in order.
STATS = (
    "events_lost",
    "ct_created",
    "ct_create_failed",
    "redirect_peer",
    "redirect_fib",
    "redirect_neigh",
    "to_stack",
    "no_endpoint",
    "to_proxy",
)
CONFIG_VERDICT_EVENTS = 1
CONFIG_TRACE_EVENTS = 2


def config_value(flags: int) -> bytes:
    return struct.pack("=II", flags, 0)


_EP_STATS = struct.Struct("=8Q")


def decode_endpoint_stats(values: list[bytes]) -> dict[str, dict[str, int]]:
    """Per-CPU ``struct ep_stats`` summed: direction -> packets, bytes, drop_packets, drop_bytes."""
    total = [0] * 8
    for raw in values:
        for i, n in enumerate(_EP_STATS.unpack_from(raw)):
            total[i] += n
    out = {}
    for name, index in DIRECTIONS.items():
        out[name] = {
            "packets": total[index],
            "bytes": total[2 + index],
            "drop_packets": total[4 + index],
            "drop_bytes": total[6 + index],
        }
    return out
