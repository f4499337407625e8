"""The Cilium profile's eBPF datapath on one node (``bpf/lxc.c``): loaded and pinned once, attached
to every pod's host veth and to the node's uplink and VXLAN device, its maps kept by difference.

    CNI ADD ──▶ attach_endpoint: a "not ready" record first, then both tc hooks of the host veth
                (a pod never sends or receives a packet nobody judged)
    agent sync ──LxcEndpoint per local pod + ipcache entries──▶ sync:
        1. policy entries, in cilium_maps.map_ops order (denies first, allows that go away before
           new ones, denies last: no step allows more than the old or the new content)
        2. endpoint records (enforcement flags, identity): set after their entries exist
        3. local IPs, then the ipcache (new prefixes before stale ones go)
    attach_netdev: from_netdev on the uplink / VXLAN device (packets for local pods skip the stack)

**Ids.** Endpoint ids (1..4095) and policy entry ids (1..65535, the per-entry counters' index)
are this manager's: stable while the endpoint or entry lives, re-read from the pinned maps after
a restart, so counters and events keep their meaning. :meth:`entry` explains an entry id (the
pod, key and provenance), which is how a drop or verdict event names the rule that decided.

**Pins** are ``<pin_dir>/<map>`` and ``<pin_dir>/prog-<key>/<program>``; a restarted or upgraded
agent adopts them (``bpf.ensure_objects``): connections (``pn_ct``) and policy survive, and
``tc filter replace`` swaps a new program in atomically. A map of another layout is replaced by
an empty one (the sync refills it; an empty endpoint map refuses every packet: fail closed).

**Overflow.** A policy map that would hold more than its ``max_entries`` is never truncated: the
endpoints whose new entries do not fit keep their previous ones (the last good state), and
:attr:`LxcDatapath.overflow` names them for the policy status (cilium#9117).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from podnet.calc.ipcache import IpcacheEntry
from podnet.calc.policy import ControlPlane
from podnet.calc.policy_cilium import EndpointMap
from podnet.calc.policymap import PolicyEntry, PolicyKey
from podnet.dataplane import bpf
from podnet.dataplane import cilium_maps as cm

log = logging.getLogger(__name__)

SOURCE = "lxc.c"
IPCACHE, POLICY, ENDPOINTS, LOCAL_IPS = "pn_ipcache", "pn_policy", "pn_endpoints", "pn_local_ips"
CT, FRAGS, EVENTS, STATS = "pn_ct", "pn_frags", "pn_events", "pn_stats"
EP_STATS, ENTRY_STATS, CONFIG, CONTROL = "pn_ep_stats", "pn_entry_stats", "pn_config", "pn_control"
METRICS = "pn_metrics"
MAPS = (
    IPCACHE,
    POLICY,
    ENDPOINTS,
    LOCAL_IPS,
    CT,
    FRAGS,
    EVENTS,
    STATS,
    EP_STATS,
    ENTRY_STATS,
    CONFIG,
    CONTROL,
    METRICS,
)
FROM_CONTAINER, TO_CONTAINER, FROM_NETDEV = "from_container", "to_container", "from_netdev"
PROGRAMS = (FROM_CONTAINER, TO_CONTAINER, FROM_NETDEV)
TC_PREF = 30  # the tc filter priority of every hook (the IPIP program uses its own)
MAX_ENDPOINT_ID = 4095
MAX_ENTRY_ID = 65535
SYNCED = (CONTROL, POLICY, ENDPOINTS, LOCAL_IPS, IPCACHE)


class LxcError(bpf.BpfError):
    code = "bpf-lxc"


@dataclass(frozen=True)
class LxcEndpoint:
    """One local pod as the datapath sees it; ``policy`` None: not computed yet (not ready)."""

    key: str  # "namespace/name"
    ifindex: int
    ipv4: str
    mac: str
    host_mac: str
    identity: int
    policy: EndpointMap | None


@dataclass
class _Encoded:
    """One endpoint's policy entries as map bytes, kept while its EndpointMap is unchanged."""

    source: EndpointMap | None
    endpoint_id: int
    entries: dict[bytes, bytes] = field(default_factory=dict)


class LxcDatapath:
    """The node's Cilium datapath (module docstring). Thread-safe: CNI requests attach endpoints
    while the agent's sync loop writes maps."""

    def __init__(self, pin_dir: str, cache_dir: str, source: str | None = None) -> None:
        self.pin_dir = pin_dir
        self.cache_dir = cache_dir
        self.source = source or bpf.source_path(SOURCE)
        self.progs: dict[str, str] = {}
        self._maps: dict[str, bpf.BpfMap] = {}
        self._current: dict[str, dict[bytes, bytes]] = {}
        self._lock = threading.RLock()
        self._endpoint_ids: dict[int, int] = {}  # ifindex -> endpoint id
        self._entry_ids: dict[tuple[int, bytes], int] = {}  # (endpoint id, policy key) -> entry id
        self._entries: dict[int, tuple[str, PolicyKey, PolicyEntry]] = {}  # entry id -> meaning
        self._encoded: dict[int, _Encoded] = {}  # ifindex -> its encoded entries
        self._config_flags: int | None = None
        self._entry_hint = 1
        self._pods: dict[int, str] = {}  # endpoint id -> pod key (last sync)
        self.overflow: tuple[str, ...] = ()  # endpoints whose new policy did not fit (last sync)
        self._ipcache: tuple[object, dict[bytes, bytes]] = (None, {})  # (source, encoded)

    def __repr__(self) -> str:
        return f"LxcDatapath({self.pin_dir!r})"

    # ------------------------------------------------------------------ load, attach

    def ensure(self) -> None:
        """Maps pinned (adopted when present), programs loaded; the maps' contents read back."""
        with self._lock:
            bpf.ensure_pin_dir(self.pin_dir, LxcError)
            obj = bpf.compile_program(self.source, self.cache_dir)
            key = Path(obj).stem.rsplit("-", 1)[-1]
            self.progs = bpf.ensure_objects(obj, self.pin_dir, key, MAPS, PROGRAMS, self._attached_ids)
            self._drop_stale(f"prog-{key}")
            self._close_maps()
            self._maps = {name: bpf.BpfMap(os.path.join(self.pin_dir, name)) for name in MAPS}
            self._current = {name: dict(self._maps[name].items()) for name in SYNCED}
            self._adopt_ids()

    def _attached_ids(self) -> list[int]:
        ids = []
        for prog in bpf.list_programs():
            if prog.get("name") in PROGRAMS and prog.get("id") is not None:
                ids.append(int(prog["id"]))
        return ids

    def _drop_stale(self, keep: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.pin_dir):
                if (entry.startswith("prog-") and entry != keep) or entry.startswith("load-"):
                    bpf.unpin_tree(os.path.join(self.pin_dir, entry))

    def _adopt_ids(self) -> None:
        """Endpoint and entry ids of the pinned maps (a restarted agent keeps their numbering)."""
        self._endpoint_ids = {
            int.from_bytes(k, "little"): cm.decode_endpoint_value(v).endpoint
            for k, v in self._current[ENDPOINTS].items()
        }
        self._entry_ids = {}
        for k, v in self._current[POLICY].items():
            endpoint, _key = cm.decode_policy_key(k)
            entry_id = cm.decode_policy_value(v)[2]
            if entry_id:
                self._entry_ids[(endpoint, k)] = entry_id
        self._encoded = {}

    def attach_endpoint(self, ifname: str, ifindex: int, ipv4: str, mac: str, host_mac: str) -> None:
        """A freshly wired pod: its "not ready" record (unless it has one), then both hooks."""
        with self._lock:
            self._require_loaded()
            key = cm.u32_key(ifindex)
            if key not in self._current[ENDPOINTS]:
                endpoint_id = self._endpoint_id(ifindex)
                value = cm.endpoint_value(endpoint_id, 0, ipv4, mac, True, True, host_mac, ready=False)
                self._write(ENDPOINTS, key, value)
        self.hook(ifname)

    def hook(self, ifname: str) -> None:
        """This version's programs on both hooks of host veth ``ifname`` (clsact made if missing,
        each program an atomic replace; one netlink write)."""
        self._require_loaded()
        programs = {"ingress": self.progs[FROM_CONTAINER], "egress": self.progs[TO_CONTAINER]}
        bpf.attach_tc_programs(ifname, programs, pref=TC_PREF)

    def attach_netdev(self, dev: str) -> None:
        """from_netdev on ``dev``'s ingress (the uplink, the VXLAN device)."""
        self._require_loaded()
        bpf.attach_tc(dev, "ingress", self.progs[FROM_NETDEV], pref=TC_PREF)

    def detach_netdev(self, dev: str) -> None:
        with contextlib.suppress(bpf.BpfError):
            bpf.detach_tc(dev, "ingress", pref=TC_PREF)
            bpf.delete_clsact_if_empty(dev)

    def _require_loaded(self) -> None:
        if not self.progs or not self._maps:
            raise LxcError("the Cilium datapath is not loaded (ensure() first)")

    # ------------------------------------------------------------------ maps

    def _write(self, name: str, key: bytes, value: bytes | None) -> None:
        m = self._maps[name]
        if value is None:
            m.delete(key)
            self._current[name].pop(key, None)
        else:
            m.update(key, value)
            self._current[name][key] = value

    def _endpoint_id(self, ifindex: int) -> int:
        found = self._endpoint_ids.get(ifindex)
        if found:
            return found
        used = set(self._endpoint_ids.values())
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                self._endpoint_ids[ifindex] = candidate
                return candidate
        raise LxcError(f"no endpoint id left (at most {MAX_ENDPOINT_ID} pods per node)")

    def _entry_id(self, endpoint_id: int, key: bytes, used: set[int]) -> int:
        found = self._entry_ids.get((endpoint_id, key))
        if found:
            return found
        if len(used) >= MAX_ENTRY_ID:
            return 0  # past 65,535 entries on a node: enforced, not counted
        candidate = self._entry_hint
        while candidate in used:
            candidate = candidate % MAX_ENTRY_ID + 1
        used.add(candidate)
        self._entry_hint = candidate % MAX_ENTRY_ID + 1
        self._entry_ids[(endpoint_id, key)] = candidate
        return candidate

    def _encode(self, endpoint: LxcEndpoint, endpoint_id: int, used: set[int]) -> _Encoded:
        old = self._encoded.get(endpoint.ifindex)
        if old is not None and old.endpoint_id == endpoint_id and old.source == endpoint.policy:
            return old
        encoded = _Encoded(endpoint.policy, endpoint_id)
        for key, entry in (endpoint.policy.entries if endpoint.policy else {}).items():
            raw = cm.policy_key(endpoint_id, key)
            entry_id = self._entry_id(endpoint_id, raw, used)
            encoded.entries[raw] = cm.policy_value(entry, entry_id)
            if entry_id:
                self._entries[entry_id] = (endpoint.key, key, entry)
        return encoded

    def sync(
        self,
        endpoints: Iterable[LxcEndpoint],
        ipcache: Mapping[str, IpcacheEntry],
        control: ControlPlane | None = None,
    ) -> dict[str, int]:
        """Make the maps say ``endpoints``, ``ipcache`` and the closed ``control`` plane (module
        docstring for the order). Returns how many elements each map had written or deleted."""
        with self._lock:
            self._require_loaded()
            endpoints = list(endpoints)
            wanted = {e.ifindex for e in endpoints}
            for ifindex in [i for i in self._endpoint_ids if i not in wanted]:
                self._endpoint_ids.pop(ifindex)  # gone: its id is free once its entries are
            ids = {e.ifindex: self._endpoint_id(e.ifindex) for e in endpoints}
            live = set(ids.values())
            if set(self._pods) - live:  # endpoints gone: their entry ids are free
                self._entry_ids = {k: i for k, i in self._entry_ids.items() if k[0] in live}
            used = set(self._entry_ids.values())
            previous = self._encoded
            encoded = {e.ifindex: self._encode(e, ids[e.ifindex], used) for e in endpoints}
            for e in endpoints:  # entries an endpoint no longer has: their ids are free
                old = previous.get(e.ifindex)
                if old is not None and old is not encoded[e.ifindex] and old.endpoint_id == ids[e.ifindex]:
                    for raw in old.entries.keys() - encoded[e.ifindex].entries.keys():
                        self._entry_ids.pop((old.endpoint_id, raw), None)
            self._pods = {ids[e.ifindex]: e.key for e in endpoints}
            policy_ops = self._policy_ops(endpoints, encoded, previous)
            self._encoded = encoded
            if len(self._entries) > len(self._entry_ids):
                in_use = set(self._entry_ids.values())
                self._entries = {i: meaning for i, meaning in self._entries.items() if i in in_use}
            desired_endpoints = {
                cm.u32_key(e.ifindex): cm.endpoint_value(
                    ids[e.ifindex],
                    e.identity,
                    e.ipv4 or "0.0.0.0",
                    e.mac,
                    bool(e.policy and e.policy.ingress_enforced),
                    bool(e.policy and e.policy.egress_enforced),
                    e.host_mac,
                    ready=e.policy is not None,
                )
                for e in endpoints
            }
            local_ips = {cm.local_ip_key(e.ipv4): cm.u32_key(e.ifindex) for e in endpoints if e.ipv4}
            if ipcache is not self._ipcache[0]:  # encoded once per ipcache object (calc memoises it)
                self._ipcache = (
                    ipcache,
                    {
                        cm.ipcache_key(prefix): cm.ipcache_value(
                            entry.identity, cm.IPCACHE_POD if entry.source.startswith("pod ") else 0
                        )
                        for prefix, entry in ipcache.items()
                    },
                )
            cache = self._ipcache[1]
            control = control or ControlPlane()
            closed = {cm.control_key(None, proto, port): cm.u32_key(1) for proto, port in control.local}
            closed |= {cm.control_key(a, proto, port): cm.u32_key(1) for a, proto, port in control.remote}
            counts = {}
            counts[CONTROL] = self._apply(CONTROL, _upserts_then_deletes(self._current[CONTROL], closed))
            counts[POLICY] = self._apply(POLICY, policy_ops)
            counts[ENDPOINTS] = self._apply(
                ENDPOINTS, _upserts_then_deletes(self._current[ENDPOINTS], desired_endpoints)
            )
            counts[LOCAL_IPS] = self._apply(
                LOCAL_IPS, _upserts_then_deletes(self._current[LOCAL_IPS], local_ips)
            )
            counts[IPCACHE] = self._apply(IPCACHE, _upserts_then_deletes(self._current[IPCACHE], cache))
            return counts

    def _policy_ops(
        self, endpoints: list[LxcEndpoint], encoded: dict[int, _Encoded], previous: dict[int, _Encoded]
    ) -> list[cm.MapOp]:
        """The policy map's steps: only the entries of the endpoints whose encoding changed (keys
        carry the endpoint id: endpoints never share one) when the map fits, else the whole map
        through :meth:`_fit` (also after a restart, when nothing was encoded yet)."""
        if previous and not self.overflow:
            changed = [e.ifindex for e in endpoints if previous.get(e.ifindex) is not encoded[e.ifindex]]
            gone = [i for i in previous if i not in encoded]
            old_sub: dict[bytes, bytes] = {}
            for ifindex in [*changed, *gone]:
                if ifindex in previous:
                    old_sub.update(previous[ifindex].entries)
            new_sub: dict[bytes, bytes] = {}
            for ifindex in changed:
                new_sub.update(encoded[ifindex].entries)
            total = len(self._current[POLICY]) - len(old_sub) + len(new_sub)
            if total <= self._maps[POLICY].info.max_entries:
                return cm.map_ops(
                    {k: self._current[POLICY][k] for k in old_sub if k in self._current[POLICY]},
                    new_sub,
                    cm.is_deny_value,
                )
        return cm.map_ops(self._current[POLICY], self._fit(endpoints, encoded), cm.is_deny_value)

    def _fit(self, endpoints: list[LxcEndpoint], encoded: dict[int, _Encoded]) -> dict[bytes, bytes]:
        """The policy map's desired content; when it would overflow, the endpoints that grew keep
        their current entries (:class:`PolicyMapFull` after the rest is written)."""
        limit = self._maps[POLICY].info.max_entries
        desired: dict[bytes, bytes] = {}
        for e in endpoints:
            desired.update(encoded[e.ifindex].entries)
        if len(desired) <= limit:
            self.overflow = ()
            return desired
        current_by_ep: dict[int, dict[bytes, bytes]] = {}
        for k, v in self._current[POLICY].items():
            current_by_ep.setdefault(cm.decode_policy_key(k)[0], {})[k] = v
        kept, over = {}, []
        for e in sorted(endpoints, key=lambda x: len(encoded[x.ifindex].entries)):
            new = encoded[e.ifindex].entries
            old = current_by_ep.get(encoded[e.ifindex].endpoint_id, {})
            if len(kept) + len(new) <= limit:
                kept.update(new)
            else:
                kept.update(old)
                over.append(e.key)
                encoded[e.ifindex] = _Encoded(None, encoded[e.ifindex].endpoint_id, dict(old))
        self.overflow = tuple(sorted(over))
        return kept

    def _apply(self, name: str, ops: list[cm.MapOp]) -> int:
        for op in ops:
            self._write(name, op.key, op.value)  # a delete of a missing key is no error
        return len(ops)

    def set_events(self, verdicts: bool, traces: bool) -> None:
        """Ask the programs for a policy-verdict event per new connection, or a trace event per
        new connection (which carries the verdict too), or neither (drops are always sent)."""
        flags = (cm.CONFIG_VERDICT_EVENTS if verdicts else 0) | (cm.CONFIG_TRACE_EVENTS if traces else 0)
        with self._lock:
            self._require_loaded()
            if flags != self._config_flags:
                self._maps[CONFIG].update(cm.u32_key(0), cm.config_value(flags))
                self._config_flags = flags

    def entry(self, entry_id: int) -> tuple[str, PolicyKey, PolicyEntry] | None:
        """What entry ``entry_id`` is: (pod key, policy key, entry with its provenance)."""
        return self._entries.get(entry_id)

    def pod_of(self, endpoint_id: int) -> str | None:
        """The pod (``ns/name``) of endpoint ``endpoint_id`` at the last sync (None: not known)."""
        return self._pods.get(endpoint_id)

    # ------------------------------------------------------------------ reading

    def ct_entries(self) -> list[cm.CtEntry]:
        with self._lock:
            self._require_loaded()
            return [cm.decode_ct(k, v) for k, v in self._maps[CT].items()]

    def ct_gc(self, now: int | None = None) -> int:
        """Delete expired conntrack entries (the LRU evicts only when full); returns how many."""
        now = int(time.monotonic()) if now is None else now
        removed = 0
        with self._lock:
            self._require_loaded()
            ct = self._maps[CT]
            for key, value in ct.items():
                if cm.decode_ct(key, value).expires < now:
                    with contextlib.suppress(bpf.BpfError):
                        removed += ct.delete(key)
        return removed

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._require_loaded()
        return bpf.percpu_counters(os.path.join(self.pin_dir, STATS), cm.STATS)

    def endpoint_stats(self, endpoint_id: int) -> dict[str, dict[str, int]]:
        with self._lock:
            self._require_loaded()
            m = self._maps[EP_STATS]
            raw = m.lookup(cm.u32_key(endpoint_id)) or b""
            return cm.decode_endpoint_stats(m.percpu_values(raw))

    def entry_stats(self, entry_id: int) -> tuple[int, int]:
        """(new connections, bytes of their first packets) the entry decided."""
        with self._lock:
            self._require_loaded()
            m = self._maps[ENTRY_STATS]
            raw = m.lookup(cm.u32_key(entry_id)) or b""
            total = [0, 0]
            for value in m.percpu_values(raw):
                total[0] += int.from_bytes(value[:8], "little")
                total[1] += int.from_bytes(value[8:16], "little")
            return total[0], total[1]

    def metrics(self) -> dict[tuple[int, str], tuple[int, int]]:
        """(reason, direction) -> (packets, bytes) the programs counted, reason 0 being forwarded
        (Cilium's metricsmap); only the reasons the programs know, only those seen."""
        out = {}
        with self._lock:
            self._require_loaded()
            m = self._maps[METRICS]
            for reason in (0, *cm.DROP_REASONS):
                for direction, bit in cm.DIRECTIONS.items():
                    raw = m.lookup(cm.u32_key(reason << 1 | bit)) or b""
                    packets = octets = 0
                    for value in m.percpu_values(raw):
                        packets += int.from_bytes(value[:8], "little")
                        octets += int.from_bytes(value[8:16], "little")
                    if packets:
                        out[(reason, direction)] = (packets, octets)
        return out

    def contents(self, name: str) -> dict[bytes, bytes]:
        """The last written content of a synced map (``pn_policy``, ``pn_endpoints``, …)."""
        with self._lock:
            return dict(self._current.get(name, {}))

    def events_path(self) -> str:
        return os.path.join(self.pin_dir, EVENTS)

    def _close_maps(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps = {}

    def close(self) -> None:
        with self._lock:
            self._close_maps()


def _upserts_then_deletes(current: Mapping[bytes, bytes], desired: Mapping[bytes, bytes]) -> list[cm.MapOp]:
    ops = [cm.MapOp(k, v) for k, v in sorted(desired.items()) if current.get(k) != v]
    return ops + [cm.MapOp(k, None) for k in sorted(current) if k not in desired]


# ---------------------------------------------------------------------- reading pins (the CLI, tests)


def _pinned_items(pin_dir: str, name: str) -> list[tuple[bytes, bytes]]:
    path = os.path.join(pin_dir, name)
    if not os.path.exists(path):
        raise LxcError(
            f"no {name} pinned in {pin_dir}",
            hint="is this a Cilium-profile node whose agent has loaded its datapath?",
        )
    with bpf.BpfMap(path) as m:
        return m.items()


def pinned_endpoints(pin_dir: str) -> dict[int, cm.EndpointValue]:
    """host ifindex -> endpoint record."""
    return {
        int.from_bytes(k, "little"): cm.decode_endpoint_value(v) for k, v in _pinned_items(pin_dir, ENDPOINTS)
    }


def pinned_ipcache(pin_dir: str) -> dict[str, tuple[int, int]]:
    """prefix -> (identity, flags)."""
    return {cm.decode_ipcache_key(k): cm.decode_ipcache_value(v) for k, v in _pinned_items(pin_dir, IPCACHE)}


@dataclass(frozen=True)
class PinnedEntry:
    endpoint: int
    key: PolicyKey
    deny: bool
    proxy_port: int
    entry_id: int


def pinned_policy(pin_dir: str) -> list[PinnedEntry]:
    out = []
    for k, v in _pinned_items(pin_dir, POLICY):
        endpoint, key = cm.decode_policy_key(k)
        out.append(PinnedEntry(endpoint, key, *cm.decode_policy_value(v)))
    return sorted(out, key=lambda e: (e.endpoint, e.key))


def pinned_ct(pin_dir: str) -> list[cm.CtEntry]:
    return [cm.decode_ct(k, v) for k, v in _pinned_items(pin_dir, CT)]
