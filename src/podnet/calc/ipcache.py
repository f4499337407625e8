"""The Cilium profile's ipcache (pure): address or prefix -> security identity, for every node.

The tc programs look the peer of a packet up here (longest prefix match) and judge it by the
identity found; what matches nothing is ``world`` (2), as in Cilium. Entries, most specific first:

- every pod address (/32, /128) -> its pod's identity, once the label set has a number in the
  datastore (a pod whose number is not known yet has no entry: it counts as world until then);
- this node's addresses (its IP, VTEP, router IP) -> ``host`` (1); other nodes' -> ``remote-node``
  (6);
- the kube-apiserver's addresses -> ``kube-apiserver`` (7) (the lab: the datastore's endpoints,
  the cluster's API);
- every CIDR a policy names -> a node-local CIDR identity (:func:`cidr_identities`). A pod or
  node address inside such a CIDR still resolves to its own /32 entry: CIDR rules do not select
  pods or nodes (Cilium's rule).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from podnet.calc.policy import PodInfo
from podnet.model.identity import LOCAL_CIDR_BASE, RESERVED

CIDR_SPACE = (1 << 24) - 1  # node-local CIDR identities: LOCAL_CIDR_BASE + 1 .. LOCAL_CIDR_BASE + CIDR_SPACE


@dataclass(frozen=True)
class IpcacheEntry:
    """One LPM entry: ``prefix`` (a CIDR) -> ``identity``, and where it comes from (``pod ns/name``,
    ``node NAME``, ``kube-apiserver``, ``cidr``)."""

    prefix: str
    identity: int
    source: str


@lru_cache(maxsize=65536)
def _host_prefix(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"{ip}/{ip.max_prefixlen}"


def cidr_identities(cidrs: Iterable[str]) -> dict[str, int]:
    """A node-local identity per CIDR: ``LOCAL_CIDR_BASE`` + a CRC32 of the canonical prefix folded
    into 24 bits, the next free number on a collision (in sorted order). Pure and stable: the same
    prefix gets the same number on every sync, whatever else changed, but for a colliding pair."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    canonical = sorted({str(ipaddress.ip_network(c, strict=False)) for c in cidrs})
    for prefix in canonical:
        slot = zlib.crc32(prefix.encode()) % CIDR_SPACE
        while slot + 1 in taken:
            slot = (slot + 1) % CIDR_SPACE
        taken.add(slot + 1)
        out[prefix] = LOCAL_CIDR_BASE + slot + 1
    return out


def ipcache(
    pods: Iterable[PodInfo],
    pod_identity: Mapping[str, int],
    nodes: Mapping[str, Iterable[str]],
    this_node: str,
    apiserver: Iterable[str] = (),
    cidrs: Mapping[str, int] | None = None,
) -> dict[str, IpcacheEntry]:
    """prefix -> entry (see the module docstring). ``pod_identity``: pod key -> number;
    ``nodes``: name -> addresses; ``cidrs``: prefix -> identity (:func:`cidr_identities`). A more
    specific source wins a tie on one prefix: pod over node over kube-apiserver over CIDR."""
    out: dict[str, IpcacheEntry] = {}
    for prefix, number in sorted((cidrs or {}).items()):
        out[str(ipaddress.ip_network(prefix, strict=False))] = IpcacheEntry(prefix, number, "cidr")
    for address in apiserver:
        prefix = _host_prefix(address)
        if prefix:
            out[prefix] = IpcacheEntry(prefix, RESERVED["kube-apiserver"], "kube-apiserver")
    for name, addresses in sorted(nodes.items()):
        number = RESERVED["host"] if name == this_node else RESERVED["remote-node"]
        for address in addresses:
            prefix = _host_prefix(address)
            if prefix:
                out[prefix] = IpcacheEntry(prefix, number, f"node {name}")
    for pod in pods:
        number = pod_identity.get(pod.key)
        if number is None:
            continue
        for address in pod.ips:
            prefix = _host_prefix(address)
            if prefix:
                out[prefix] = IpcacheEntry(prefix, number, f"pod {pod.key}")
    return dict(sorted(out.items()))


def lookup(entries: Mapping[str, IpcacheEntry], address: str) -> int:
    """What the datapath's longest-prefix lookup finds for ``address`` (world when nothing)."""
    ip = ipaddress.ip_address(address)
    best: tuple[int, int] | None = None
    for prefix, entry in entries.items():
        net = ipaddress.ip_network(prefix)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, entry.identity)
    return best[1] if best else RESERVED["world"]
