"""Service load balancing at the socket (Cilium's socket-LB): cgroup v2 eBPF on connect/sendmsg.

ClusterIP and ExternalIP frontends of a :class:`~podnet.calc.services.ServicePlan` become entries
of pinned maps read by ``bpf/sock_lb.c``; its programs are attached to one cgroup (the node's: every
pod process of the node lives below it) and translate the service address once per socket::

    app: connect(10.96.0.10:80)                  (TCP, or UDP connect)
      cgroup/connect4 lb_connect4
        lb_services {10.96.0.10, 80, TCP} ─▶ {id 7, count 3, affinity 0}
        slot = 1 + random % 3 ─▶ lb_backends {7, 2} ─▶ 10.244.2.5:8080
        ctx.user_ip4/user_port := 10.244.2.5:8080     the kernel connects there: no NAT per packet
    app: sendto(10.96.0.10:53) (unconnected UDP)   cgroup/sendmsg4: the same, per datagram, and
        lb_revnat {socket cookie, 10.244.2.5:53} ─▶ 10.96.0.10:53
    app: recvfrom() ─▶ cgroup/recvmsg4: source 10.244.2.5:53 shown as 10.96.0.10:53
    app: getpeername() on a UDP socket ─▶ cgroup/getpeername4: the same (TCP shows the backend)

**What the application sees.** A frontend with no backend refuses at once: ``connect()`` (TCP and
UDP) and ``sendto()`` fail with ``ECONNREFUSED`` (the program sets the syscall's return value with
``bpf_set_retval``; kernels before 5.18 would say ``EPERM``). A service address that is not in the
map is left alone (the connect goes to the address as given). ``sessionAffinity: ClientIP`` is
kept per client network namespace (a pod; the netns cookie), refreshed on each use, for the
service's timeout; it is honoured only while the remembered slot still holds the same backend.
Only IPv4 TCP and UDP are translated (no connect6 programs yet; no SCTP sockets on these kernels);
NodePort frontends are left to the nftables table that serves traffic from outside the node.

**Maps** (pinned under ``pin_dir``; layouts mirrored by the ``encode_*``/``decode_*`` functions)::

  lb_services  hash      {vip, port(be), proto, 0} ─▶ {id, count, 0, affinity seconds}
  lb_backends  hash      {id, slot 1..count}      ─▶ {ip, port(be), 0}
  lb_affinity  LRU hash  {netns cookie, id, 0}    ─▶ {last used ns, slot, backend}
  lb_revnat    LRU hash  {socket cookie, backend} ─▶ {vip, port}         (UDP only)
  lb_stats     per-CPU array of counters (``STATS``)
  prog-<key>/lb_connect4 lb_sendmsg4 lb_recvmsg4 lb_getpeername4   one compiled object

**Sync without a torn service.** ``sync`` reads the maps (the kernel is the truth, so a restarted
agent or a sync cut short by a crash is repaired by the next one), diffs them against the plan
(``plan_sync``, pure) and writes only what differs, per service in this order: backend slots
first, then the service entry whose count makes them reachable, then the slots beyond the new
count. A connect therefore always finds a backend in every slot below the count it read. Later
syncs diff against the state the last good sync left (no map reads); the first one, one after a
failure, and ``sync(plan, full=True)`` read the maps again. Slots are
stable: a backend that stays keeps its slot (affinity survives), a removed one's slot is refilled
by a new or a moved backend. Service ids are never reused within one sync, so a deleted service's
connects cannot reach a new service's backends.

**Attach and restart.** ``ensure`` is idempotent, like the IPIP tunnel's: the maps are reused
(contents intact), programs are loaded only for a new object, attached with
``bpftool cgroup attach <cgroup> <hook> pinned <prog> multi`` (other programs on the cgroup are not
touched) and the previous version of each program is detached after its successor is attached,
so no connect goes untranslated during an upgrade (two versions in a row translate once: the
second sees a backend address). If the pins were lost while the programs stay attached, their maps
are re-pinned ("adopted") before anything is loaded. The root cgroup of a hierarchy is refused.

**Which sockets.** The hooks see sockets created by processes in the cgroup or below it, so a pod's
process must join its cgroup before it opens sockets (the lab's kubelet joins first, then enters
the pod's netns). An agent started by ``ip netns exec`` has a fresh ``/sys`` without the cgroup2
mount; ``ensure`` then mounts it again at the same path inside that private mount namespace
(``mount_cgroup2_privately``: only over an empty ``/sys/fs/cgroup``, so nothing is shadowed).

**Reading it.** ``podnet bpf lb list [--node N]`` prints the maps like ``cilium bpf lb list``
(``list_services``); ``stats`` sums the programs' counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podnet.calc.memo import ObjectMemo
from podnet.calc.services import NODE_PORT, Frontend, ServicePlan
from podnet.dataplane import bpf

log = logging.getLogger(__name__)

SOURCE = "sock_lb.c"
SERVICES_MAP = "lb_services"
BACKENDS_MAP = "lb_backends"
AFFINITY_MAP = "lb_affinity"
REVNAT_MAP = "lb_revnat"
STATS_MAP = "lb_stats"
MAPS = (SERVICES_MAP, BACKENDS_MAP, AFFINITY_MAP, REVNAT_MAP, STATS_MAP)
#: program name -> the bpftool name of its cgroup hook
HOOKS = {
    "lb_connect4": "connect4",
    "lb_sendmsg4": "sendmsg4",
    "lb_recvmsg4": "recvmsg4",
    "lb_getpeername4": "getpeername4",
}
#: bpftool's short hook names -> the attach type names ``bpftool cgroup show`` prints (libbpf's)
ATTACH_TYPES = {
    "connect4": "cgroup_inet4_connect",
    "sendmsg4": "cgroup_udp4_sendmsg",
    "recvmsg4": "cgroup_udp4_recvmsg",
    "getpeername4": "cgroup_inet4_getpeername",
}
#: Counter names, in the order of the ``STAT_*`` enum of ``bpf/sock_lb.c``.
STATS = (
    "lb_connect",
    "lb_sendmsg",
    "no_backend",
    "affinity_hit",
    "backend_miss",
    "revnat_recv",
    "revnat_peer",
    "revnat_update_error",
)
PROTOCOLS = {"TCP": 6, "UDP": 17}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}
MAX_BACKENDS = 0xFFFF  # count is a __u16
DEFAULT_PIN_DIR = f"{bpf.BPFFS}/podnet/sock_lb"
DEFAULT_CACHE_DIR = "/var/cache/podnet/bpf"
CGROUP2_SUPER_MAGIC = 0x63677270
#: Where the host mounts the cgroup v2 hierarchy (hybrid layout; ``podnet.lab.naming.CGROUP2_ROOT``)
CGROUP2_ROOT = "/sys/fs/cgroup/unified"

_SVC_KEY = struct.Struct("=4s2sBB")  # vip (be), port (be), proto, pad
_SVC_VALUE = struct.Struct("=IHHI")  # id, count, pad, affinity seconds
_BACKEND_KEY = struct.Struct("=II")  # id, slot
_BACKEND_VALUE = struct.Struct("=4s2sH")  # ip (be), port (be), pad

SvcKey = tuple[str, int, str]  # (vip, port, "TCP" | "UDP")
Addr = tuple[str, int]  # (ip, port)


class SockLBError(bpf.BpfError):
    """Socket load balancing could not be set up or read."""

    code = "sock-lb"


# ---------------------------------------------------------------------- map encodings (pure)


def encode_service_key(vip: str, port: int, protocol: str) -> bytes:
    return _SVC_KEY.pack(ipaddress.IPv4Address(vip).packed, port.to_bytes(2, "big"), PROTOCOLS[protocol], 0)


def decode_service_key(raw: bytes) -> SvcKey:
    vip, port, proto, _ = _SVC_KEY.unpack(raw)
    return str(ipaddress.IPv4Address(vip)), int.from_bytes(port, "big"), PROTOCOL_NAMES.get(proto, str(proto))


def encode_service_value(ident: int, count: int, affinity_seconds: int) -> bytes:
    return _SVC_VALUE.pack(ident, count, 0, affinity_seconds)


def decode_service_value(raw: bytes) -> tuple[int, int, int]:
    """``(id, count, affinity seconds)``."""
    ident, count, _, affinity = _SVC_VALUE.unpack(raw)
    return ident, count, affinity


def encode_backend_key(ident: int, slot: int) -> bytes:
    return _BACKEND_KEY.pack(ident, slot)


def decode_backend_key(raw: bytes) -> tuple[int, int]:
    ident, slot = _BACKEND_KEY.unpack(raw)
    return ident, slot


def encode_backend_value(ip: str, port: int) -> bytes:
    return _BACKEND_VALUE.pack(ipaddress.IPv4Address(ip).packed, port.to_bytes(2, "big"), 0)


def decode_backend_value(raw: bytes) -> Addr:
    ip, port, _ = _BACKEND_VALUE.unpack(raw)
    return str(ipaddress.IPv4Address(ip)), int.from_bytes(port, "big")


def format_service(key: SvcKey) -> str:
    return f"{key[0]}:{key[1]}/{key[2]}"


# ---------------------------------------------------------------------- desired state (pure)


@dataclass(frozen=True)
class DesiredService:
    backends: tuple[Addr, ...]
    affinity_seconds: int = 0
    name: str = ""  # "namespace/name:port name", for logs


Entry = tuple[SvcKey, DesiredService] | tuple[None, str]  # one frontend: its entry, or why skipped


def _entry(frontend: Frontend) -> Entry:
    label = f"{frontend.service}:{frontend.port_name or frontend.port} {frontend.kind} {frontend.ip}"
    if frontend.protocol not in PROTOCOLS:
        return None, f"{label}\0protocol {frontend.protocol} is not load-balanced at the socket"
    try:
        vip = str(ipaddress.IPv4Address(frontend.ip or ""))
    except ValueError:
        return None, f"{label}\0{frontend.ip!r} is not an IPv4 address (no connect6 programs)"
    backends: list[Addr] = []
    for backend in frontend.backends:
        try:
            addr = (str(ipaddress.IPv4Address(backend.ip)), backend.port)
        except ValueError:
            continue
        if addr not in backends:
            backends.append(addr)
    name = f"{frontend.service}:{frontend.port_name or frontend.port}"
    return (vip, frontend.port, frontend.protocol), DesiredService(
        tuple(backends), max(0, frontend.affinity_seconds), name
    )


def desired_services(
    plan: ServicePlan, memo: ObjectMemo[Entry] | None = None
) -> tuple[dict[SvcKey, DesiredService], dict[str, str]]:
    """What the maps must hold for ``plan``, and ``{frontend: why skipped}`` for what they cannot.

    ClusterIP and ExternalIP frontends over IPv4 TCP/UDP; NodePort is someone else's (skipped
    silently). Backends are deduplicated in plan order (a backend is an address, whatever pod).
    ``memo`` (kept between syncs): a frontend that is the same object as last time is not
    converted again (calc.services hands back unchanged services' frontends as they were).
    """
    out: dict[SvcKey, DesiredService] = {}
    skipped: dict[str, str] = {}
    names = set()
    for frontend in plan.frontends:
        if frontend.kind == NODE_PORT:
            continue
        if memo is None:
            key, value = _entry(frontend)
        else:
            name = (frontend.service, frontend.kind, frontend.ip, frontend.port, frontend.protocol)
            names.add(name)
            key, value = memo.get(name, frontend, None, lambda f=frontend: _entry(f))
        if key is None:
            label, why = str(value).split("\0", 1)
            skipped[label] = why
            continue
        assert isinstance(value, DesiredService)
        label = f"{frontend.service}:{frontend.port_name or frontend.port} {frontend.kind} {frontend.ip}"
        if key in out:
            skipped[label] = f"{format_service(key)} is already {out[key].name}"
            continue
        if len(value.backends) > MAX_BACKENDS:
            skipped[label] = f"{len(value.backends)} backends, only the first {MAX_BACKENDS} are used"
            value = DesiredService(value.backends[:MAX_BACKENDS], value.affinity_seconds, value.name)
        out[key] = value
    if memo is not None:
        memo.retain(names)
    return out, skipped


# ---------------------------------------------------------------------- diff (pure)


@dataclass
class MapState:
    """The two maps as data: services ``{key: (id, count, affinity)}``, backends ``{id: {slot: addr}}``."""

    services: dict[SvcKey, tuple[int, int, int]] = field(default_factory=dict)
    backends: dict[int, dict[int, Addr]] = field(default_factory=dict)


@dataclass(frozen=True)
class Op:
    """One map write. ``kind``: ``put_backend`` (id, slot, addr), ``put_service`` (key, id, count,
    affinity), ``del_backend`` (id, slot), ``del_service`` (key)."""

    kind: str
    key: SvcKey | None = None
    id: int = 0
    slot: int = 0
    addr: Addr | None = None
    count: int = 0
    affinity_seconds: int = 0


@dataclass(frozen=True)
class SyncPlan:
    ops: tuple[Op, ...] = ()
    added: int = 0
    updated: int = 0
    deleted: int = 0

    def summary(self) -> dict[str, int]:
        kinds = [op.kind for op in self.ops]
        return {
            "services_added": self.added,
            "services_updated": self.updated,
            "services_deleted": self.deleted,
            "backends_written": kinds.count("put_backend"),
            "backends_deleted": kinds.count("del_backend"),
        }


def assign_slots(live: Mapping[int, Addr], backends: Sequence[Addr]) -> dict[int, Addr]:
    """Pure: slot (1..n) of each of ``backends``, keeping every one that stays in its ``live`` slot.

    A slot whose backend left (or that lies beyond the new count) is refilled with a new backend,
    or with a staying backend from a slot beyond the new count, in the order of ``backends``.
    """
    n = len(backends)
    wanted = set(backends)
    layout = {slot: addr for slot, addr in live.items() if 1 <= slot <= n and addr in wanted}
    placed = set(layout.values())
    holes = (slot for slot in range(1, n + 1) if slot not in layout)
    for addr in backends:
        if addr not in placed:
            layout[next(holes)] = addr
            placed.add(addr)
    return dict(sorted(layout.items()))


def plan_sync(current: MapState, desired: Mapping[SvcKey, DesiredService]) -> SyncPlan:
    """Pure: the ordered writes that turn ``current`` into ``desired`` (see the module docstring).

    Per service: changed backend slots, then the service entry (only if its count or affinity
    changed, or it is new), then the slots beyond the new count. Then removed services (entry
    first, then their backends), then backends that belong to no service (a sync cut short).
    New services get the smallest ids that no service or backend entry uses.
    """
    used = {ident for ident, _, _ in current.services.values()} | set(current.backends)
    next_id = 1
    ops: list[Op] = []
    added = updated = deleted = 0
    for key in sorted(desired):
        want = desired[key]
        have = current.services.get(key)
        if have is None:
            while next_id in used:
                next_id += 1
            ident, count, affinity = next_id, 0, -1
            used.add(ident)
            present: dict[int, Addr] = {}
        else:
            ident, count, affinity = have
            present = current.backends.get(ident, {})
            if (
                (count, affinity) == (len(want.backends), want.affinity_seconds)
                and len(present) == count
                and set(present.values()) == set(want.backends)
                and all(1 <= slot <= count for slot in present)
            ):
                continue  # unchanged: every backend in a slot of 1..count, nothing beyond
        live = {slot: addr for slot, addr in present.items() if 1 <= slot <= count}
        layout = assign_slots(live, want.backends)
        writes = [
            Op("put_backend", id=ident, slot=slot, addr=addr)
            for slot, addr in layout.items()
            if present.get(slot) != addr
        ]
        ops.extend(writes)
        n = len(want.backends)
        if have is None or (count, affinity) != (n, want.affinity_seconds):
            ops.append(Op("put_service", key=key, id=ident, count=n, affinity_seconds=want.affinity_seconds))
        if have is None:
            added += 1
        elif writes or (count, affinity) != (n, want.affinity_seconds):
            updated += 1
        for slot in sorted(present):
            if slot not in layout:
                ops.append(Op("del_backend", id=ident, slot=slot))
    live_ids = set()
    for key in sorted(current.services):
        ident = current.services[key][0]
        if key in desired:
            live_ids.add(ident)
            continue
        deleted += 1
        ops.append(Op("del_service", key=key, id=ident))
    for key in sorted(current.services):
        if key not in desired:
            ident = current.services[key][0]
            if ident not in live_ids:
                ops.extend(
                    Op("del_backend", id=ident, slot=s) for s in sorted(current.backends.get(ident, {}))
                )
                live_ids.add(ident)  # deleted once, even if two keys shared an id
    for ident in sorted(set(current.backends) - live_ids):
        ops.extend(Op("del_backend", id=ident, slot=s) for s in sorted(current.backends[ident]))
    return SyncPlan(tuple(ops), added, updated, deleted)


def apply_ops(state: MapState, ops: Iterable[Op]) -> MapState:
    """Pure: ``state`` after ``ops`` (a new MapState; what the maps hold once a sync succeeded)."""
    out = MapState(dict(state.services), {ident: dict(slots) for ident, slots in state.backends.items()})
    for op in ops:
        if op.kind == "put_backend" and op.addr is not None:
            out.backends.setdefault(op.id, {})[op.slot] = op.addr
        elif op.kind == "put_service" and op.key is not None:
            out.services[op.key] = (op.id, op.count, op.affinity_seconds)
        elif op.kind == "del_backend":
            slots = out.backends.get(op.id, {})
            slots.pop(op.slot, None)
            if not slots:
                out.backends.pop(op.id, None)
        elif op.kind == "del_service" and op.key is not None:
            out.services.pop(op.key, None)
    return out


# ---------------------------------------------------------------------- reading the maps


def read_state(pin_dir: str) -> MapState:
    """The services and backends maps pinned under ``pin_dir`` as a :class:`MapState`."""
    services_pin, backends_pin = os.path.join(pin_dir, SERVICES_MAP), os.path.join(pin_dir, BACKENDS_MAP)
    if not (os.path.exists(services_pin) and os.path.exists(backends_pin)):
        raise SockLBError(
            f"no socket load-balancer maps pinned under {pin_dir}",
            hint="is the node's agent running with socket load balancing (the cilium profile)?",
        )
    state = MapState()
    with bpf.BpfMap(services_pin) as smap, bpf.BpfMap(backends_pin) as bmap:
        for raw_key, raw_value in smap.items():
            state.services[decode_service_key(raw_key)] = decode_service_value(raw_value)
        for raw_key, raw_value in bmap.items():
            ident, slot = decode_backend_key(raw_key)
            state.backends.setdefault(ident, {})[slot] = decode_backend_value(raw_value)
    return state


def list_services(pin_dir: str) -> list[dict[str, Any]]:
    """The services of the pinned maps as data (``podnet bpf lb list``), sorted by address.

    One dict per service: ``service`` ("vip:port/PROTO"), ``ip``, ``port``, ``protocol``, ``id``,
    ``count``, ``affinity_seconds`` and ``backends`` (``slot``, ``address``, ``ip``, ``port``) of
    the slots 1..count; slots beyond the count (being removed) are not listed.
    """
    state = read_state(pin_dir)
    out = []
    for key in sorted(state.services, key=lambda k: (ipaddress.IPv4Address(k[0]), k[1], k[2])):
        ident, count, affinity = state.services[key]
        slots = state.backends.get(ident, {})
        out.append(
            {
                "service": format_service(key),
                "ip": key[0],
                "port": key[1],
                "protocol": key[2],
                "id": ident,
                "count": count,
                "affinity_seconds": affinity,
                "backends": [
                    {"slot": slot, "address": f"{ip}:{port}", "ip": ip, "port": port}
                    for slot, (ip, port) in sorted(slots.items())
                    if 1 <= slot <= count
                ],
            }
        )
    return out


# ---------------------------------------------------------------------- the load balancer


def is_cgroup2(path: str) -> bool:
    """True if ``path`` is on a cgroup v2 filesystem."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first field (a long)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == CGROUP2_SUPER_MAGIC


def mount_cgroup2_privately(cgroup: str, root: str = CGROUP2_ROOT) -> bool:
    """Make ``root`` (the host's cgroup2 mount point) visible where ``/sys/fs/cgroup`` is empty.

    ``ip netns exec`` (how the lab starts an agent) gives the process its own mount namespace with a
    fresh ``/sys``, where ``/sys/fs/cgroup`` is an empty directory and ``root`` does not exist. Only
    then (nothing can be shadowed: a host always has something mounted there) a tmpfs on
    ``/sys/fs/cgroup`` and the cgroup2 hierarchy on ``root`` bring the same paths back; the mounts
    live and die with that mount namespace. True if mounted.
    """
    parent = os.path.dirname(root)
    if not cgroup.startswith(root + "/") or os.path.exists(root) or not os.path.isdir(parent):
        return False
    if os.listdir(parent):
        return False  # something is mounted there: not ours to cover
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(kind: bytes, target: str) -> None:
        if libc.mount(kind, os.fsencode(target), kind, 0, None) != 0:
            err = ctypes.get_errno()
            raise SockLBError(
                f"mount -t {kind.decode()} {kind.decode()} {target}: {os.strerror(err)}",
                hint=f"mount the cgroup v2 hierarchy at {root} in the agent's mount namespace",
            )

    mount(b"tmpfs", parent)  # the fresh sysfs cannot hold a new directory: make room for root
    os.makedirs(root, exist_ok=True)
    mount(b"cgroup2", root)
    log.info("mounted cgroup2 on %s in this mount namespace (it had none)", root)
    return True


def _is_hook(row: Mapping[str, Any], hook: str) -> bool:
    """A ``bpftool cgroup show`` row is on ``hook`` (short name, or libbpf's attach type name)."""
    return row.get("attach_type") in (hook, ATTACH_TYPES[hook])


class SocketLB:
    """The socket load balancer of one cgroup (a node's). See the module docstring."""

    def __init__(
        self,
        cgroup: str,
        pin_dir: str = DEFAULT_PIN_DIR,
        cache_dir: str = DEFAULT_CACHE_DIR,
        *,
        source: str | None = None,
    ) -> None:
        self.cgroup = cgroup
        self.pin_dir = pin_dir
        self.cache_dir = cache_dir
        self.source = source or bpf.source_path(SOURCE)
        self._state: MapState | None = None  # the maps as of the last good sync (None: read them)
        self._entries: ObjectMemo[Entry] = ObjectMemo()  # desired_services' memo, per frontend

    def __repr__(self) -> str:
        return f"SocketLB(cgroup={self.cgroup!r}, pin_dir={self.pin_dir!r})"

    def _pin(self, *parts: str) -> str:
        return os.path.join(self.pin_dir, *parts)

    # ------------------------------------------------------------------ ensure

    def ensure(self) -> None:
        """Maps pinned, programs loaded and attached to the cgroup. Idempotent; maps never flushed."""
        self._state = None  # maps may be replaced (new layout) or adopted: read them on the next sync
        self._check_cgroup()
        bpf.ensure_pin_dir(self.pin_dir, SockLBError)
        obj = bpf.compile_program(self.source, self.cache_dir)
        key = Path(obj).stem.rsplit("-", 1)[-1]
        progs = bpf.ensure_objects(
            obj, self.pin_dir, key, MAPS, tuple(HOOKS), self._attached_prog_ids, prog_type=None
        )
        self._attach_all(progs)
        self._drop_stale(f"prog-{key}")

    def _check_cgroup(self) -> None:
        if not os.path.exists(self.cgroup):
            mount_cgroup2_privately(self.cgroup)
        if not os.path.isfile(os.path.join(self.cgroup, "cgroup.procs")) or not is_cgroup2(self.cgroup):
            raise SockLBError(
                f"{self.cgroup} is not a cgroup v2 directory",
                hint="create the node's cgroup first; inside `ip netns exec` /sys is remounted, so the "
                "cgroup2 hierarchy must be mounted somewhere else that is visible",
            )
        parent = os.path.dirname(os.path.realpath(self.cgroup))
        if not is_cgroup2(parent) or os.path.realpath(self.cgroup) == parent:
            raise SockLBError(
                f"{self.cgroup} is the root of a cgroup v2 hierarchy: refusing to attach there",
                hint="attach to the node's own cgroup; the root one holds every process of the machine",
            )

    def _attached(self) -> list[dict[str, Any]]:
        """Programs attached directly to the cgroup (bpftool rows: id, attach_type, name, ...)."""
        out = bpf.run_tool([bpf.BPFTOOL, "-j", "cgroup", "show", self.cgroup])
        try:
            rows = json.loads(out) if out.strip() else []
        except ValueError as exc:
            raise SockLBError(f"bpftool cgroup show {self.cgroup} printed no JSON: {out[:200]!r}") from exc
        return [r for r in rows if isinstance(r, dict)]

    def _attached_prog_ids(self) -> list[int]:
        """Our programs attached to the cgroup (their maps outlive lost pins)."""
        try:
            rows = self._attached()
        except bpf.BpfError:
            return []
        return [int(row["id"]) for row in rows if row.get("name") in HOOKS and row.get("id") is not None]

    def _attach_all(self, progs: Mapping[str, str]) -> None:
        """Attach each program unless it is; then detach older versions of it (same name and hook)."""
        attached = self._attached()
        for name, hook in HOOKS.items():
            want = bpf.prog_info(pinned=progs[name]).id
            mine = [r for r in attached if _is_hook(r, hook) and r.get("name") == name]
            if not any(r.get("id") == want for r in mine):
                self._bpftool_cgroup("attach", hook, "pinned", progs[name], "multi")
                log.info("attached %s (id %d) to %s %s", name, want, self.cgroup, hook)
            for row in mine:
                if row.get("id") != want:
                    self._bpftool_cgroup("detach", hook, "id", str(row["id"]))
                    log.info("detached the previous %s (id %s) from %s", name, row["id"], self.cgroup)

    def _bpftool_cgroup(self, verb: str, hook: str, *prog: str) -> None:
        try:
            bpf.run_tool([bpf.BPFTOOL, "cgroup", verb, self.cgroup, hook, *prog])
        except bpf.BpfError as exc:
            raise SockLBError(
                f"cannot {verb} the {hook} program {'to' if verb == 'attach' else 'from'} {self.cgroup}: "
                f"{exc.message}",
                hint="needs root, a kernel with cgroup sock_addr hooks, and a cgroup v2 directory",
            ) from exc

    def _drop_stale(self, keep: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.pin_dir):
                if (entry.startswith("prog-") and entry != keep) or entry.startswith("load-"):
                    bpf.unpin_tree(self._pin(entry))

    # ------------------------------------------------------------------ maps

    def sync(self, plan: ServicePlan, *, full: bool = False) -> dict[str, int]:
        """Make the maps serve ``plan``'s ClusterIP and ExternalIP frontends; writes only differences.

        The diff is against the maps as the last successful sync left them (kept in memory); the
        first sync, one after ``ensure``, one after a failed sync, and ``full=True`` read the maps
        from the kernel instead (a full resync, as kube-proxy does after an error). Returns counts
        (services added/updated/deleted, backend slots written/deleted, frontends skipped).
        """
        desired, skipped = desired_services(plan, self._entries)
        for label, why in sorted(skipped.items()):
            log.warning("socket LB skips %s: %s", label, why)
        current = None if full else self._state
        self._state = None
        if current is None:
            try:
                current = read_state(self.pin_dir)
            except SockLBError as exc:
                raise SockLBError(exc.message, hint="call ensure() before sync()") from exc
        diff = plan_sync(current, desired)
        result = self._apply(diff)  # raises: the cache stays None, the next sync reads the maps
        self._state = apply_ops(current, diff.ops)
        result["skipped"] = len(skipped)
        return result

    def _apply(self, plan: SyncPlan) -> dict[str, int]:
        with bpf.BpfMap(self._pin(SERVICES_MAP)) as smap, bpf.BpfMap(self._pin(BACKENDS_MAP)) as bmap:
            for op in plan.ops:
                if op.kind == "put_backend" and op.addr is not None:
                    bmap.update(encode_backend_key(op.id, op.slot), encode_backend_value(*op.addr))
                elif op.kind == "put_service" and op.key is not None:
                    smap.update(
                        encode_service_key(*op.key),
                        encode_service_value(op.id, op.count, op.affinity_seconds),
                    )
                elif op.kind == "del_backend":
                    bmap.delete(encode_backend_key(op.id, op.slot))
                elif op.kind == "del_service" and op.key is not None:
                    smap.delete(encode_service_key(*op.key))
        result = plan.summary()
        if plan.ops:
            log.info("socket LB map sync: %s", result)
        return result

    def entries(self) -> list[dict[str, Any]]:
        """The services as the programs see them (``list_services``)."""
        return list_services(self.pin_dir)

    def stats(self) -> dict[str, int]:
        """The programs' counters, summed over CPUs."""
        return bpf.percpu_counters(self._pin(STATS_MAP), STATS)

    def flush_affinity(self, ids: Iterable[int] | None = None) -> int:
        """Forget remembered affinity (of the service ``ids``, or all). Returns entries removed."""
        wanted = None if ids is None else set(ids)
        removed = 0
        with bpf.BpfMap(self._pin(AFFINITY_MAP)) as amap:
            for raw in list(amap.iter_keys()):
                (ident,) = struct.unpack_from("=I", raw, 8)
                if (wanted is None or ident in wanted) and amap.delete(raw):
                    removed += 1
        return removed

    # ------------------------------------------------------------------ remove

    def detach(self, *, unpin: bool = True) -> None:
        """Detach our programs from the cgroup (all versions) and, with ``unpin``, remove the pins."""
        if os.path.isfile(os.path.join(self.cgroup, "cgroup.procs")):
            for row in self._attached():
                hook = HOOKS.get(str(row.get("name")))
                if hook is not None and _is_hook(row, hook):
                    self._bpftool_cgroup("detach", hook, "id", str(row["id"]))
        if unpin:
            bpf.unpin_tree(self.pin_dir)
