"""When the Cilium profile's kernel holds a policy change: what the policy benches fence on for that
profile (the Calico profile's are nftables chains and ``nft monitor``).

- **Programmed** (cold load): every node's agent reports a policy sync that compiled the datastore
  at or after the apply's revision and that its maps accepted (``PolicyReport.applied_revision``,
  written after the maps).
- **One change in the kernel**: the node's pinned policy map answers the lookup of the new rule's
  key — (the selected pod's endpoint, ingress, the source pod's identity, TCP, the new port) —
  with another value than before the change (a new entry has its own entry id, so even a key that
  a broader entry already covered is seen). One ``bpf(2)`` lookup per poll: millisecond precision.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from podnet.calc.policy_status import PolicyReport
from podnet.calc.policymap import INGRESS, PolicyKey
from podnet.dataplane import bpf
from podnet.dataplane import cilium_maps as cm
from podnet.dataplane.lxc import POLICY, pinned_endpoints, pinned_ipcache

POLL_SECONDS = 0.001
TCP = 6


def lxc_pins(state_dir: str, node: str) -> str:
    """A lab node's pinned Cilium datapath (the agents' ``--bpf-dir`` is ``<state dir>/bpf``)."""
    return os.path.join(state_dir, "bpf", node, "lxc")


def applied_revisions(store) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """node -> the datastore revision its agent's maps last accepted."""
    items, _ = store.store.list(store.layout.policy_status_prefix())
    out = {}
    for item in items:
        try:
            report = PolicyReport.from_json(item.value)
        except (ValueError, KeyError, TypeError):
            continue
        out[report.node] = report.applied_revision
    return out


def wait_programmed(  # type: ignore[no-untyped-def]
    store, nodes: Iterable[str], since: float, timeout: float, keys: Iterable[str] = ()
) -> dict[str, float]:
    """Seconds from ``since`` (perf_counter) until each node's maps hold the revision that wrote
    ``keys`` (the applied objects' last write; not the datastore's revision now, which the agents'
    own status writes move past what any policy sync compiles)."""
    found = [store.store.get(k) for k in keys]
    revision = max((kv.mod_revision for kv in found if kv is not None), default=0) or store.store.revision()
    pending, done = set(nodes), {}
    while pending:
        applied = applied_revisions(store)
        now = time.perf_counter()
        for node in [n for n in pending if applied.get(n, 0) >= revision]:
            done[node] = now - since
            pending.discard(node)
        if pending and now - since > timeout:
            raise TimeoutError(f"policies not programmed on {sorted(pending)} after {timeout:g}s")
        time.sleep(0.02)
    return done


class ChangeWatch:
    """The policy map of one node, and the keys one change must bring."""

    def __init__(self, pins: str) -> None:
        self.pins = pins
        self.map = bpf.BpfMap(os.path.join(pins, POLICY))

    def keys_for(self, selected_ips: Iterable[str], source_ip: str, port: int) -> list[bytes]:
        """The new rule's key in the map of each selected pod's endpoint on this node."""
        endpoints = {e.ipv4: e.endpoint for e in pinned_endpoints(self.pins).values()}
        identity = pinned_ipcache(self.pins).get(f"{source_ip}/32", (None, 0))[0]
        if identity is None:
            raise ValueError(f"{source_ip} has no identity in {self.pins} yet")
        return [
            cm.policy_key(endpoints[ip], PolicyKey(INGRESS, identity, TCP, port, 16))
            for ip in selected_ips
            if ip in endpoints
        ]

    def values(self, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
        return {k: self.map.lookup(k) for k in keys}

    def wait_changed(self, before: Mapping[bytes, bytes | None], timeout: float) -> float | None:
        """perf_counter time when every key's value differs from ``before`` (None: timed out)."""
        deadline = time.perf_counter() + timeout
        pending = dict(before)
        while time.perf_counter() < deadline:
            for key in [k for k, old in pending.items() if self.map.lookup(k) != old]:
                pending.pop(key)
            if not pending:
                return time.perf_counter()
            time.sleep(POLL_SECONDS)
        return None

    def close(self) -> None:
        self.map.close()


@dataclass(frozen=True)
class MapChange:
    """One policy edit and what it must bring: an ingress allow of ``port`` from ``source_ip`` to
    the pods at ``selected`` (node -> their addresses on it)."""

    policy: dict
    selected: Mapping[str, tuple[str, ...]]
    source_ip: str
    port: int


def time_changes(store, pins: Mapping[str, str], changes: Iterable[MapChange], timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Apply each change and time it until the first and the last node concerned show it in their
    policy map: p50/p99 of both, and the last node's samples (ms)."""
    from podnet.bench.stats import latency_summary
    from podnet.model import parse_resource

    watches = {node: ChangeWatch(pin) for node, pin in pins.items()}
    try:
        first, last = [], []
        for change in changes:
            keys = {
                node: watches[node].keys_for(ips, change.source_ip, change.port)
                for node, ips in change.selected.items()
            }
            before = {node: watches[node].values(k) for node, k in keys.items()}
            store.apply([parse_resource(change.policy)])
            applied = time.perf_counter()
            seen = []
            for node in keys:
                at = watches[node].wait_changed(before[node], timeout)
                if at is None:
                    name = change.policy["metadata"]["name"]
                    raise TimeoutError(f"the change of {name} (port {change.port}) never reached {node}")
                seen.append(max(0.0, at - applied))
            first.append(min(seen))
            last.append(max(seen))
            time.sleep(0.2)
    finally:
        for watch in watches.values():
            watch.close()
    return {
        "first_node": latency_summary(first),
        "all_nodes": latency_summary(last),
        "samples_ms": [round(x * 1e3, 1) for x in last],
    }


def wait_enforced(pins: str, selected: str, unselected: str, timeout: float) -> None:
    """Until the node's datapath enforces ingress on the endpoint at ``selected`` (a policy selects
    it) and holds the one at ``unselected`` ready and open: the Cilium form of the benches' fence
    on the policy table's notrack set."""
    from podnet.dataplane.lxc import pinned_endpoints

    deadline = time.monotonic() + timeout
    while True:
        by_ip = {e.ipv4: e for e in pinned_endpoints(pins).values()}
        chosen, other = by_ip.get(selected), by_ip.get(unselected)
        if (
            chosen
            and chosen.ready
            and chosen.ingress_enforced
            and other
            and other.ready
            and not other.ingress_enforced
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{pins}: {selected} not enforced or {unselected} not ready and open in {timeout:g}s"
            )
        time.sleep(0.1)
