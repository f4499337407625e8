"""Removing a lab: ``down`` from its state file, ``clean`` from its prefix after a crash.

``down(state_dir)``, from what the state recorded, in an order where nothing depends on what is
already removed and where "already gone" is never an error::

    1. processes     SIGTERM (to the process group each leads), wait, SIGKILL; a pid counts only
                     if its start time still matches the record (no pid-reuse accidents)
    2. stragglers    processes still inside a recorded namespace or cgroup (e.g. a child an agent
                     left behind) — exact, since those namespaces/cgroups are the lab's own
    3. namespaces    pods, nodes, router, etcd, fabric (deleting a namespace destroys its veths)
    4. cgroups       deepest first, each after killing its members
    5. files, dirs   then the state dir itself (last: a failed ``down`` can be run again)

``clean(names)`` for a lab whose state file is lost or corrupt: runs ``down`` if the state is
readable, then sweeps by the prefix: every ``/proc/PID`` whose network namespace is one of the
prefix's namespaces (inode of ``/proc/PID/ns/net`` against the ``/run/netns`` file), whose command
line carries the marker argument ``--lab-prefix=<prefix>`` as one whole argument, or whose
environment carries ``PODNET_LAB_MARKER=<prefix>``; never this process or its ancestors. Then the
namespaces, the cgroup tree and the state dir. No broad kills: nothing is matched by name.

``snapshot_host(names)`` returns what a test compares before ``up`` and after ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from podnet.lab.naming import MARKER_ENV, LabError, LabNames
from podnet.lab.netns import (
    all_pids,
    cgroup_pids,
    delete_netns,
    list_netns,
    netns_id,
    own_lineage,
    proc_cmdline,
    proc_environ,
    proc_netns_id,
    proc_start_time,
    remove_cgroup,
    stop_processes,
)
from podnet.lab.state import NETNS_ORDER, LabState, StateCorrupt


@dataclass
class CleanupReport:
    processes: list[str] = field(default_factory=list)  # "name pid" or "pid cmd"
    namespaces: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def empty(self) -> bool:
        return not (self.processes or self.namespaces or self.cgroups or self.files)

    def merge(self, other: CleanupReport) -> None:
        for key in ("processes", "namespaces", "cgroups", "files", "errors"):
            getattr(self, key).extend(getattr(other, key))

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = []
        for key in ("processes", "namespaces", "cgroups", "files"):
            items = getattr(self, key)
            if items:
                out.append(f"removed {len(items)} {key}: {', '.join(items)}")
        out += [f"error: {e}" for e in self.errors]
        return out or ["nothing to remove"]


def _netns_sort_key(kind: str) -> int:
    return NETNS_ORDER.index(kind) if kind in NETNS_ORDER else len(NETNS_ORDER)


def _safe_path(path: str) -> bool:
    """Refuse to delete ``/`` or a top-level directory, whatever a (corrupt) record says."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    return len(parts) >= 2


def _members(netns_ids: set[tuple[int, int]], cgroups: list[str], markers: tuple[str, str] | None) -> dict:
    """``{pid: (start_time, description)}`` of processes in the namespaces/cgroups or with the marker."""
    skip = own_lineage()
    out: dict[int, tuple[int | None, str]] = {}
    for root in cgroups:
        for dirpath, _dirs, _files in os.walk(root):
            for pid in cgroup_pids(dirpath):
                if pid not in skip:
                    out[pid] = (proc_start_time(pid), f"cgroup {dirpath}")
    for pid in all_pids():
        if pid in skip or pid in out:
            continue
        why = None
        if netns_ids and proc_netns_id(pid) in netns_ids:
            why = "in a lab netns"
        elif markers is not None:
            arg, prefix = markers
            if arg in proc_cmdline(pid):
                why = f"argument {arg}"
            elif proc_environ(pid).get(MARKER_ENV) == prefix:
                why = f"{MARKER_ENV}={prefix}"
        if why:
            start = proc_start_time(pid)
            if start is not None:
                out[pid] = (start, why)
    return out


def _kill_members(members: dict, report: CleanupReport, timeout: float) -> None:
    if not members:
        return
    for pid, (_st, why) in sorted(members.items()):
        cmd = " ".join(proc_cmdline(pid))[:80]
        report.processes.append(f"{pid} ({why}) {cmd}".rstrip())
    stop_processes([(pid, st) for pid, (st, _why) in members.items()], timeout)


def _delete_namespaces(items: list[tuple[str, str]], report: CleanupReport) -> None:
    for name, _kind in sorted(items, key=lambda nk: _netns_sort_key(nk[1])):
        try:
            if delete_netns(name):
                report.namespaces.append(name)
        except LabError as exc:
            report.errors.append(str(exc))


def _remove_cgroups(paths: list[str], report: CleanupReport, timeout: float) -> None:
    for path in sorted(paths, key=lambda p: -p.count("/")):
        try:
            report.cgroups.extend(remove_cgroup(path, timeout))
        except (LabError, OSError) as exc:
            report.errors.append(f"cgroup {path}: {exc}")


def _remove_path(path: str, report: CleanupReport) -> None:
    if not _safe_path(path):
        report.errors.append(f"refusing to remove {path}")
        return
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        report.files.append(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.errors.append(f"{path}: {exc}")


def _mount_points() -> list[str]:
    try:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f]
    except OSError:
        return []


def _unmount_under(root: str, report: CleanupReport) -> None:
    """Detach every mount at or below ``root`` (deepest first), e.g. the lab's bpffs."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    root = os.path.abspath(root)
    points = [m for m in _mount_points() if m == root or m.startswith(root + "/")]
    for point in sorted(points, key=lambda p: -p.count("/")):
        if libc.umount2(os.fsencode(point), 2) != 0:  # MNT_DETACH
            report.errors.append(f"umount {point}: {os.strerror(ctypes.get_errno())}")
        else:
            report.files.append(f"{point} (unmounted)")


def down(state_dir: str, *, timeout: float = 5.0) -> CleanupReport:
    """Remove everything the state in ``state_dir`` recorded, then the state dir. Idempotent."""
    report = CleanupReport()
    state = LabState(state_dir)
    if not state.exists():
        return report
    doc = state.load()  # StateCorrupt → the caller falls back to clean()

    # 1. recorded processes: the kubelet first, so that it restarts no agent the rest stops
    procs = doc["processes"]
    for p in procs:
        if proc_start_time(p["pid"]) == p["start_time"]:
            report.processes.append(f"{p['name']} {p['pid']}")
    for batch in ([p for p in procs if p["name"] == "kubelet"], [p for p in procs if p["name"] != "kubelet"]):
        stop_processes([(p["pid"], p["start_time"]) for p in batch], timeout)

    # 2. stragglers in the lab's namespaces and cgroups
    ids = {i for n in doc["namespaces"] if (i := netns_id(n["name"])) is not None}
    _kill_members(_members(ids, [c for c in doc["cgroups"] if os.path.isdir(c)], None), report, timeout)

    # 3.-5.
    _unmount_under(state_dir, report)
    _delete_namespaces([(n["name"], n["kind"]) for n in doc["namespaces"]], report)
    for n in doc["namespaces"]:  # a pod's resolv.conf (the kubelet writes it, ip netns exec mounts it)
        if os.path.exists(etc := os.path.join(NETNS_ETC, n["name"])):
            _remove_path(etc, report)
    _remove_cgroups(doc["cgroups"], report, timeout)
    for path in doc["files"] + sorted(doc["dirs"], key=lambda p: -p.count("/")):
        _remove_path(path, report)
    if report.ok:
        _remove_path(state.dir, report)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(state.dir))  # /run/podnet-lab, if no other lab uses it
    # else: the state stays as it was; everything above is idempotent, so ``down`` can run again.
    return report


def clean(names: LabNames | str, *, timeout: float = 5.0) -> CleanupReport:
    """Remove whatever carries the prefix (``LabNames`` or ``"pn-"``): for a lab that crashed."""
    names = LabNames(names) if isinstance(names, str) else names
    report = CleanupReport()
    try:
        report.merge(down(names.state_dir, timeout=timeout))
    except (StateCorrupt, LabError) as exc:
        report.errors.append(f"state unusable, sweeping by prefix: {exc}")
    namespaces = list_netns(names.prefix)
    ids = {i for n in namespaces if (i := netns_id(n)) is not None}
    cgroups = [names.cgroup_dir] if os.path.isdir(names.cgroup_dir) else []
    _kill_members(_members(ids, cgroups, (names.marker, names.prefix)), report, timeout)
    _delete_namespaces([(n, names.netns_kind(n) or "other") for n in namespaces], report)
    _remove_cgroups(cgroups, report, timeout)
    for leftover in netns_etc_dirs(names.prefix):  # pods' resolv.conf (ip netns exec's /etc/netns)
        _remove_path(leftover, report)
    _unmount_under(names.state_dir, report)
    if os.path.exists(names.state_dir):
        _remove_path(names.state_dir, report)
    with contextlib.suppress(OSError):
        os.rmdir(names.run_root)
    # A state problem we recovered from is not a failure of clean.
    report.errors = [e for e in report.errors if not e.startswith("state unusable")]
    return report


NETNS_ETC = "/etc/netns"


def netns_etc_dirs(prefix: str) -> list[str]:
    """``/etc/netns/<name>`` directories of namespaces with ``prefix`` (what ``ip netns exec``
    mounts over ``/etc`` in them: the lab's pods' resolv.conf)."""
    try:
        return [os.path.join(NETNS_ETC, n) for n in sorted(os.listdir(NETNS_ETC)) if n.startswith(prefix)]
    except OSError:
        return []


# -- before/after comparison -------------------------------------------------------------------
@dataclass(frozen=True)
class HostSnapshot:
    links: tuple[str, ...]
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    netns: tuple[str, ...]
    processes: tuple[str, ...]
    files: tuple[str, ...]
    cgroups: tuple[str, ...]

    def diff(self, other: HostSnapshot) -> dict[str, dict[str, list[str]]]:
        """``{field: {"gone": [...], "new": [...]}}`` for every field that differs."""
        out = {}
        for key in self.__dataclass_fields__:
            a, b = set(getattr(self, key)), set(getattr(other, key))
            if a != b:
                out[key] = {"gone": sorted(a - b), "new": sorted(b - a)}
        return out


def _ip_json(args: list[str]) -> list[dict]:
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)


def _tree(root: str, *, dirs_only: bool = False) -> list[str]:
    out = [root] if os.path.exists(root) else []
    for dirpath, dirs, files in os.walk(root):
        out += [os.path.join(dirpath, n) for n in dirs + ([] if dirs_only else files)]
    return out


def snapshot_host(names: LabNames | str) -> HostSnapshot:
    """Root-namespace links, addresses and routes; the lab's namespaces, processes, files, cgroups.

    Run it from a thread in the root namespace (the normal case).
    """
    names = LabNames(names) if isinstance(names, str) else names
    links = [f"{link['ifindex']}:{link['ifname']}" for link in _ip_json(["link", "show"])]
    addresses = [
        f"{a['ifname']} {info['family']} {info['local']}/{info['prefixlen']}"
        for a in _ip_json(["addr", "show"])
        for info in a.get("addr_info", [])
    ]
    routes = [
        " ".join(str(r.get(k, "-")) for k in ("table", "type", "dst", "gateway", "dev", "protocol", "scope"))
        for family in ("-4", "-6")
        for r in _ip_json([family, "route", "show", "table", "all"])
    ]
    namespaces = list_netns(names.prefix)
    ids = {i for n in namespaces if (i := netns_id(n)) is not None}
    members = _members(
        ids, [names.cgroup_dir] if os.path.isdir(names.cgroup_dir) else [], (names.marker, names.prefix)
    )
    processes = [f"{pid} {' '.join(proc_cmdline(pid))}" for pid in members]
    return HostSnapshot(
        links=tuple(sorted(links)),
        addresses=tuple(sorted(addresses)),
        routes=tuple(sorted(routes)),
        netns=tuple(namespaces),
        processes=tuple(sorted(processes)),
        files=tuple(sorted([*_tree(names.state_dir), *netns_etc_dirs(names.prefix)])),
        cgroups=tuple(sorted(_tree(names.cgroup_dir, dirs_only=True))),
    )
