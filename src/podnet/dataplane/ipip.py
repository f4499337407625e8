"""The IPIP tunnel between nodes (Calico's ``tunl0``), in tc eBPF where the kernel has no ``ipip``.

Routes are Calico's exact shape, written by the agent (``routes.RouteManager``):
``<remote block> via <remote node IP> dev tunl0 onlink``. What carries them depends on the kernel:

**eBPF (kernels without the ipip module, e.g. these machines; the path the tests cover).**
``tunl0`` is a ``dummy`` device, or an ``ifb`` where the kernel has no dummy driver (both are
Ethernet-type, NOARP, up, and drop whatever reaches their xmit; MTU = underlay - 20). Two tc
programs from ``bpf/ipip.c`` do the work::

  pod 10.244.1.5 ─veth─▶ node A: route 10.244.2.0/26 via 10.0.2.2 dev tunl0 onlink
     tunl0 tc egress  ipip_encap: ETH|IP(pod→pod)|TCP
        ipip_routes (LPM) 10.244.2.5 → 10.0.2.2     miss: drop, counted as encap_miss
        adjust_room +20 (ENCAP_L3_IPV4, FIXED_GSO) → ETH|IP(10.0.1.2→10.0.2.2, proto 4)|IP|TCP
        bpf_redirect_neigh(eth0): the kernel's FIB picks the next hop (node B on the same subnet,
        the router otherwise) and its neighbour code resolves the MAC
  ── fabric: standard IP-in-IP (protocol 4), the bytes a Calico tunl0 sends ──▶
  node B: eth0 tc ingress  ipip_decap: proto 4, outer dst == 10.0.2.2, src in ipip_peers
        adjust_room -20 (DECAP_L3_IPV4, FIXED_GSO) → ETH|IP(pod→pod)|TCP, TC_ACT_OK
     → up the stack from eth0 → route 10.244.2.5 dev caliXXXX → pod

The outer header copies what the kernel's ``tunl0`` (ttl 0 = inherit, tos 0, nopmtudisc) writes:
TTL and DF from the inner header, ECN per RFC 6040, a fresh ID. IPIP from addresses that are not
in ``ipip_peers`` (the remote nodes of ``sync``) is dropped, as Felix drops IPIP from non-hosts.
GSO packets keep their MSS (FIXED_GSO): with pod MTU = underlay - 20 every segment fits.

Pinned layout under ``pin_dir`` (on a bpf filesystem)::

  ipip_routes ipip_peers ipip_config ipip_stats   the maps: survive reloads and agent restarts
  prog-<key>/ipip_encap, prog-<key>/ipip_decap    the programs of one compiled object

``ensure`` is idempotent and never interrupts traffic: the maps are reused (contents intact); a
program is loaded only for a new object (new source or clang) and then swapped in with one
``tc filter replace``; an identical one already attached is left alone. If the pins were lost but
the programs are still attached (bpffs remounted), the maps of the attached programs are re-pinned
("adopted") before anything is loaded. ``sync`` writes only the entries that differ.

**Operating notes (eBPF mode).** ``tcpdump -i tunl0`` shows nothing: packets leave tunl0 at tc
egress, before the device's taps; ``tcpdump -i eth0 ip proto 4`` shows the tunnel both ways, inner
packets decoded. ``ensure`` relaxes a strict ``rp_filter`` on the uplink to loose (2): decapsulated
packets arrive there with pod sources that are routed via tunl0. Traffic from the node itself to a
remote pod leaves with the uplink address as source and returns routed, unless the agent gives
tunl0 an address from the node's block (Calico's ``IPv4IPIPTunnelAddr``).

**Kernel ipip (where the module exists).** The module's fallback device ``tunl0`` (remote any,
local any), as Calico uses it: the kernel takes the outer destination from the route's gateway, so
the same routes work and ``sync`` only remembers the entries. Detected by ``kernel_has_ipip``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from podnet.dataplane import bpf
from podnet.dataplane.errors import DataplaneError, KernelError, KernelExists
from podnet.dataplane.netlink import Link, Netlink
from podnet.dataplane.sysctl import iface_key
from podnet.errors import ValidationError

log = logging.getLogger(__name__)

TUNNEL_DEVICE = "tunl0"
IPIP_OVERHEAD = 20
SOURCE = "ipip.c"
ENCAP_PROG = "ipip_encap"
DECAP_PROG = "ipip_decap"
ROUTES_MAP = "ipip_routes"
PEERS_MAP = "ipip_peers"
CONFIG_MAP = "ipip_config"
STATS_MAP = "ipip_stats"
MAPS = (ROUTES_MAP, PEERS_MAP, CONFIG_MAP, STATS_MAP)
#: Counter names, in the order of the ``STAT_*`` enum of ``bpf/ipip.c``.
STATS = (
    "encap_ok",
    "encap_miss",
    "encap_not_ipv4",
    "encap_no_config",
    "encap_error",
    "decap_ok",
    "decap_unknown_peer",
    "decap_fragment",
    "decap_error",
)
#: tc priority and handle of both programs (on tunl0 egress and on the uplink's ingress).
TC_PREF = 100
TC_HANDLE = 1
#: Device kinds that can stand in for tunl0 without the ipip module, in order of preference.
DEVICE_KINDS = ("dummy", "ifb")
MODES = ("auto", "bpf", "kernel")
DEFAULT_PIN_DIR = f"{bpf.BPFFS}/podnet/ipip"
DEFAULT_CACHE_DIR = "/var/cache/podnet/bpf"
PEER_VALUE = struct.pack("=I", 1)
_ROUTE_KEY = struct.Struct("=I4s")  # struct lpm_v4_key: prefixlen (host order), addr (network order)
_CONFIG = struct.Struct("=4sI")  # struct ipip_config: local (network order), uplink ifindex


# ---------------------------------------------------------------------- map encodings (pure)


def encode_route_key(cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr)
    return _ROUTE_KEY.pack(net.prefixlen, net.network_address.packed)


def decode_route_key(raw: bytes) -> str:
    prefixlen, addr = _ROUTE_KEY.unpack(raw)
    return str(ipaddress.IPv4Network((addr, prefixlen)))


def encode_addr(addr: str) -> bytes:
    return ipaddress.IPv4Address(addr).packed


def decode_addr(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw[:4]))


def encode_config(local_ip: str, uplink_ifindex: int) -> bytes:
    return _CONFIG.pack(encode_addr(local_ip), uplink_ifindex)


def decode_config(raw: bytes) -> tuple[str, int]:
    local, ifindex = _CONFIG.unpack(raw)
    return decode_addr(local), ifindex


def normalize_routes(routes: Mapping[str, str]) -> dict[str, str]:
    """``{block CIDR: node IPv4}`` in canonical form; ``ValidationError`` names every bad entry."""
    out: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for cidr, node in routes.items():
        try:
            net = ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            problems.append((str(cidr), f"not an IPv4 network: {exc}"))
            continue
        try:
            out[str(net)] = str(ipaddress.IPv4Address(node))
        except ValueError as exc:
            problems.append((str(cidr), f"node address: {exc}"))
    if problems:
        raise ValidationError(problems, subject="ipip routes")
    return out


@dataclass(frozen=True)
class MapPlan:
    add: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    delete: tuple[str, ...] = ()


def plan_map_sync(current: Mapping[str, str], desired: Mapping[str, str]) -> MapPlan:
    """Pure diff: which keys to add, overwrite and delete to turn ``current`` into ``desired``."""
    return MapPlan(
        add=tuple(sorted(k for k in desired if k not in current)),
        update=tuple(sorted(k for k, v in desired.items() if k in current and current[k] != v)),
        delete=tuple(sorted(k for k in current if k not in desired)),
    )


# ---------------------------------------------------------------------- detection


def kernel_has_ipip() -> bool:
    """True if the kernel has the ipip driver: loaded or built in, or a module ``modprobe`` can load."""
    if os.path.isdir("/sys/module/ipip"):
        return True
    try:
        with open("/proc/modules") as f:
            if any(line.split(" ", 1)[0] == "ipip" for line in f):
                return True
    except OSError:
        pass
    try:
        proc = subprocess.run(["modprobe", "-n", "-q", "ipip"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# ---------------------------------------------------------------------- the tunnel


class IPIPTunnel:
    """``tunl0`` of one node: device, programs, maps. See the module docstring.

    ``local_ip`` defaults to the uplink's first global IPv4 address, ``mtu`` to the uplink's MTU
    minus 20. ``netns`` is the node's network namespace (None: the caller's, as for the agent).
    ``mode``: ``auto`` (kernel ipip if the kernel has it, else eBPF), ``bpf`` or ``kernel``.
    """

    def __init__(
        self,
        uplink: str = "eth0",
        local_ip: str | None = None,
        mtu: int | None = None,
        pin_dir: str = DEFAULT_PIN_DIR,
        cache_dir: str = DEFAULT_CACHE_DIR,
        netns: str | None = None,
        *,
        mode: str = "auto",
        source: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if local_ip is not None:
            local_ip = str(ipaddress.IPv4Address(local_ip))
        self.uplink = uplink
        self.local_ip = local_ip
        self.mtu = mtu
        self.pin_dir = pin_dir
        self.cache_dir = cache_dir
        self.netns = netns
        self.source = source or bpf.source_path(SOURCE)
        self.mode = mode if mode != "auto" else ("kernel" if kernel_has_ipip() else "bpf")
        self._kernel_entries: dict[str, str] = {}

    @property
    def device(self) -> str:
        return TUNNEL_DEVICE

    def _pin(self, *parts: str) -> str:
        return os.path.join(self.pin_dir, *parts)

    def __repr__(self) -> str:
        return f"IPIPTunnel(mode={self.mode!r}, uplink={self.uplink!r}, netns={self.netns!r})"

    # ------------------------------------------------------------------ ensure

    def ensure(self) -> None:
        """Device up with the right MTU, programs attached, config written. Idempotent, hitless."""
        if self.mode == "kernel":
            self._ensure_kernel_device()
            return
        bpf.ensure_pin_dir(self.pin_dir)
        obj = bpf.compile_program(self.source, self.cache_dir)
        key = Path(obj).stem.rsplit("-", 1)[-1]
        with Netlink.open(self.netns) as nl:
            uplink = nl.link_get(self.uplink)
            local = self.local_ip or _uplink_address(nl, uplink)
            self._ensure_device(nl, self.mtu or uplink.mtu - IPIP_OVERHEAD)
            _relax_rp_filter(nl, self.uplink)
        progs = bpf.ensure_objects(
            obj, self.pin_dir, key, MAPS, (ENCAP_PROG, DECAP_PROG), self._attached_prog_ids
        )
        with bpf.BpfMap(self._pin(CONFIG_MAP)) as cfg:
            want = encode_config(local, uplink.index)
            if cfg.lookup(bytes(4)) != want:
                cfg.update(bytes(4), want)
        self._attach_all(progs)
        self._drop_stale(f"prog-{key}")

    def _ensure_device(self, nl: Netlink, mtu: int) -> Link:
        link = nl.link_find(TUNNEL_DEVICE)
        if link is None:
            for kind in DEVICE_KINDS:
                try:
                    nl.link_add(TUNNEL_DEVICE, kind, mtu=mtu)
                    log.info("created %s (%s, mtu %d)", TUNNEL_DEVICE, kind, mtu)
                    break
                except KernelError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                        raise
            else:
                raise bpf.BpfError(
                    f"cannot create {TUNNEL_DEVICE}: the kernel has none of the drivers {DEVICE_KINDS}",
                    hint="enable CONFIG_DUMMY or CONFIG_IFB, or the ipip module",
                )
            link = nl.link_get(TUNNEL_DEVICE)
        elif link.kind not in DEVICE_KINDS:
            raise DataplaneError(
                f"{TUNNEL_DEVICE} exists as a {link.kind or 'plain'} device, not one of {DEVICE_KINDS}",
                hint=f"delete it (ip link del {TUNNEL_DEVICE}) or run the tunnel in kernel mode",
            )
        if link.mtu != mtu or not link.up:
            nl.link_set(link.index, mtu=mtu, up=True)
        return link

    def _ensure_kernel_device(self) -> None:
        with Netlink.open(self.netns) as nl:
            uplink = nl.link_get(self.uplink)
            mtu = self.mtu or uplink.mtu - IPIP_OVERHEAD
            link = nl.link_find(TUNNEL_DEVICE)
            if link is None:
                with contextlib.suppress(KernelExists):  # loading the module creates tunl0 itself
                    nl.link_add(TUNNEL_DEVICE, "ipip")
                link = nl.link_get(TUNNEL_DEVICE)
            if link.kind != "ipip":
                raise DataplaneError(f"{TUNNEL_DEVICE} exists as a {link.kind or 'plain'} device, not ipip")
            if link.mtu != mtu or not link.up:
                nl.link_set(link.index, mtu=mtu, up=True)

    def _attached_prog_ids(self) -> list[int]:
        """Our programs attached to the tunnel's hooks (their maps outlive lost pins)."""
        hooks = ((TUNNEL_DEVICE, "egress", ENCAP_PROG), (self.uplink, "ingress", DECAP_PROG))
        return [
            flt.prog_id
            for dev, direction, name in hooks
            for flt in bpf.tc_filters(dev, direction, self.netns)
            if flt.pref == TC_PREF and flt.prog_name == name and flt.prog_id is not None
        ]

    def _attach_all(self, progs: dict[str, str]) -> None:
        """Attach what is not attached yet; refuse (before touching anything) a foreign program."""
        todo = []
        hooks = ((TUNNEL_DEVICE, "egress", progs[ENCAP_PROG]), (self.uplink, "ingress", progs[DECAP_PROG]))
        for dev, direction, prog in hooks:
            want = bpf.prog_info(pinned=prog)
            current = next(
                (
                    f
                    for f in bpf.tc_filters(dev, direction, self.netns)
                    if (f.pref, f.handle) == (TC_PREF, TC_HANDLE)
                ),
                None,
            )
            if current is not None and current.prog_id == want.id:
                continue  # the same program is attached: nothing to do
            if current is not None and current.prog_name not in (ENCAP_PROG, DECAP_PROG):
                raise bpf.BpfError(
                    f"tc {direction} pref {TC_PREF} on {dev} holds a foreign program {current.prog_name!r}",
                    hint="remove it, or move it to another pref",
                )
            todo.append((dev, direction, prog, want))
        for dev, direction, prog, want in todo:
            bpf.attach_tc(dev, direction, prog, pref=TC_PREF, handle=TC_HANDLE, netns=self.netns)
            log.info("attached %s to %s %s (id %d)", want.name, dev, direction, want.id)

    def _drop_stale(self, keep: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.pin_dir):
                if (entry.startswith("prog-") and entry != keep) or entry.startswith("load-"):
                    bpf.unpin_tree(self._pin(entry))

    # ------------------------------------------------------------------ maps

    def sync(self, routes: Mapping[str, str], peers: Iterable[str] = ()) -> dict[str, int]:
        """Make the routes map equal ``routes`` ({remote block: remote node}); writes only differences.

        The peers map (sources whose IPIP is accepted) becomes the set of route targets plus
        ``peers`` (e.g. nodes without blocks). Peers are added before and removed after the routes.
        """
        desired = normalize_routes(routes)
        want_peers = set(desired.values()) | {str(ipaddress.IPv4Address(p)) for p in peers}
        if self.mode == "kernel":
            plan = plan_map_sync(self._kernel_entries, desired)
            self._kernel_entries = desired
            return {"added": len(plan.add), "updated": len(plan.update), "deleted": len(plan.delete)}
        with bpf.BpfMap(self._pin(ROUTES_MAP)) as rmap, bpf.BpfMap(self._pin(PEERS_MAP)) as pmap:
            have_peers = {decode_addr(k) for k in pmap.iter_keys()}
            for peer in sorted(want_peers - have_peers):
                pmap.update(encode_addr(peer), PEER_VALUE)
            current = {decode_route_key(k): decode_addr(v) for k, v in rmap.items()}
            plan = plan_map_sync(current, desired)
            for cidr in plan.add + plan.update:
                rmap.update(encode_route_key(cidr), encode_addr(desired[cidr]))
            for cidr in plan.delete:
                rmap.delete(encode_route_key(cidr))
            for peer in sorted(have_peers - want_peers):
                pmap.delete(encode_addr(peer))
        result = {
            "added": len(plan.add),
            "updated": len(plan.update),
            "deleted": len(plan.delete),
            "peers_added": len(want_peers - have_peers),
            "peers_deleted": len(have_peers - want_peers),
        }
        if plan.add or plan.update or plan.delete:
            log.info("ipip map sync: %s", result)
        return result

    def entries(self) -> dict[str, str]:
        """The routes map: {remote block CIDR: remote node IP}."""
        if self.mode == "kernel":
            return dict(self._kernel_entries)
        with bpf.BpfMap(self._pin(ROUTES_MAP)) as rmap:
            return {decode_route_key(k): decode_addr(v) for k, v in rmap.items()}

    def peers(self) -> set[str]:
        if self.mode == "kernel":
            return set(self._kernel_entries.values())
        with bpf.BpfMap(self._pin(PEERS_MAP)) as pmap:
            return {decode_addr(k) for k in pmap.iter_keys()}

    def config(self) -> tuple[str, int] | None:
        """(local IP, uplink ifindex) as the programs see them; None before ``ensure``."""
        if self.mode == "kernel" or not os.path.exists(self._pin(CONFIG_MAP)):
            return None
        with bpf.BpfMap(self._pin(CONFIG_MAP)) as cfg:
            raw = cfg.lookup(bytes(4))
        return decode_config(raw) if raw else None

    def stats(self) -> dict[str, int]:
        """Packet counters of the programs, summed over CPUs (empty in kernel mode)."""
        if self.mode == "kernel":
            return {}
        return bpf.percpu_counters(self._pin(STATS_MAP), STATS)

    # ------------------------------------------------------------------ remove

    def remove(self) -> None:
        """Detach the programs, delete tunl0 and unpin everything (kernel mode: tunl0 down)."""
        with Netlink.open(self.netns) as nl:
            link = nl.link_find(TUNNEL_DEVICE)
            if self.mode == "kernel":
                if link is not None and link.kind == "ipip":
                    nl.link_set(link.index, up=False)  # the fallback device cannot be deleted
                return
            for flt in bpf.tc_filters(self.uplink, "ingress", self.netns):
                if flt.pref == TC_PREF and flt.prog_name == DECAP_PROG:
                    bpf.detach_tc(self.uplink, "ingress", pref=TC_PREF, handle=flt.handle, netns=self.netns)
            if nl.link_find(self.uplink) is not None:
                bpf.delete_clsact_if_empty(self.uplink, self.netns)
            if link is not None and link.kind in DEVICE_KINDS:
                nl.link_del(link.index, missing_ok=True)  # takes its egress filter along
        bpf.unpin_tree(self.pin_dir)


# ---------------------------------------------------------------------- helpers


def _uplink_address(nl: Netlink, uplink: Link) -> str:
    for addr in nl.addrs(uplink.index, family=socket.AF_INET):
        if addr.scope == "global":
            return addr.address
    raise DataplaneError(
        f"{uplink.name} has no global IPv4 address to use as the tunnel source",
        hint="pass local_ip= (the node's InternalIP)",
    )


def _relax_rp_filter(nl: Netlink, uplink: str) -> None:
    """Decapsulated packets arrive on the uplink from pod sources routed via tunl0: strict
    reverse-path filtering (1) would drop them. Loose mode (2) still checks that a route exists."""
    key, all_key = iface_key(uplink, "rp_filter"), "net/ipv4/conf/all/rp_filter"
    values = nl.sysctl_get_many([key, all_key])
    if max(int(values[key]), int(values[all_key])) == 1:
        nl.sysctl_set(key, 2)
        log.info("rp_filter on %s set to 2 (loose): decapsulated packets arrive there", uplink)
