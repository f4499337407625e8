"""Network namespaces, processes and cgroups for the lab (standard library and
:mod:`podnet.dataplane.netns`, so fast to import).

- Namespace targets, ``in_netns``, ``run_in_netns`` and ``setns`` live in
  :mod:`podnet.dataplane.netns` (the one netns helper module); this module adds what only the lab
  does with namespaces: creating, listing and deleting them.
- ``create_netns``/``delete_netns`` run ``ip netns add/del`` (argument lists, no shell). Why not
  pyroute2's ``netns.create``: it forks the (possibly multi-threaded) interpreter to unshare, and
  ``ip netns`` is the reference for the ``/run/netns`` mount propagation dance that ``ip netns
  exec`` (used by ``spawn``) relies on; at ~2 ms per call it is not the bottleneck.
- ``spawn`` starts a lab process the way the design needs it::

      fork ─▶ preexec: write "0" to <cgroup>/cgroup.procs   (join the cgroup v2 first: …)
           ─▶ exec ip netns exec NS cmd…                     (… because this remounts /sys)
           ─▶ exec cmd                                       (same pid, own session)

  and returns a :class:`Spawned` with the pid and its start time (field 22 of /proc/PID/stat), the
  pair that identifies the process for cleanup even after the pid is reused.
- cgroup helpers: a cgroup directory can only be removed once empty, so ``remove_cgroup`` kills its
  members (``cgroup.kill``: the members of a lab-created cgroup are lab processes by construction),
  waits until it is unpopulated, then removes the tree bottom-up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from podnet.dataplane.netns import NETNS_RUN_DIR, join_cgroup, netns_exists, netns_path
from podnet.lab.naming import MARKER_ENV, LabError

IP = "ip"


# -- namespaces ---------------------------------------------------------------------------------
def list_netns(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def netns_id(name_or_path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the namespace, as ``/proc/PID/ns/net`` of its members shows it."""
    try:
        st = os.stat(netns_path(name_or_path))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def create_netns(name: str) -> str:
    """Create ``/run/netns/NAME`` and return its path; an existing one is an error."""
    if "/" in name:
        raise LabError(f"bad netns name {name!r}")
    if netns_exists(name):
        raise LabError(f"network namespace {name} already exists", hint="podnet lab clean removes leftovers")
    _ip(["netns", "add", name])
    return netns_path(name)


def delete_netns(name: str) -> bool:
    """Delete the namespace; False if it was already gone. Its veths are destroyed with it."""
    if not netns_exists(name):
        return False
    _ip(["netns", "del", name])
    return True


def _ip(args: list[str]) -> None:
    proc = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


# -- processes ---------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (None if there is no such process)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start_time``."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def proc_pgid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[2]) if fields else None


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def proc_environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    out = {}
    for item in items:
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def proc_netns_id(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def proc_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` (the ``0::`` line), relative to the cgroup2 mount."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def own_lineage() -> set[int]:
    """This process and its ancestors: never signalled by cleanup."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        fields = _stat_fields(pid)
        pid = int(fields[1]) if fields else 0
    return out


@dataclass
class Spawned:
    """A process started by :func:`spawn`: record ``pid`` + ``start_time`` in the lab state."""

    pid: int
    start_time: int
    cmd: list[str]
    netns: str | None = None
    cgroup: str | None = None
    log: str | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return proc_alive(self.pid, self.start_time)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL after ``timeout``; reap it if it is our child."""
        signal_process(self.pid, self.start_time, signal.SIGTERM, group=True)
        if not wait_gone([(self.pid, self.start_time)], timeout, self.popen):
            signal_process(self.pid, self.start_time, signal.SIGKILL, group=True)
            wait_gone([(self.pid, self.start_time)], 2.0, self.popen)


def spawn(
    cmd: Sequence[str],
    *,
    netns: str | None = None,
    cgroup: str | None = None,
    env: Mapping[str, str] | None = None,
    log: str | None = None,
    lab_prefix: str | None = None,
    cwd: str | None = None,
) -> Spawned:
    """Start ``cmd`` in its own session: join ``cgroup`` first, then enter ``netns``.

    ``env`` is added to this process's environment; ``lab_prefix`` also sets ``PODNET_LAB_MARKER``
    (a second marker besides ``--lab-prefix=...`` on the command line, which the caller adds where
    the program accepts it). ``log``: stdout and stderr are appended to that file (else discarded).
    """
    if cgroup is not None and not os.path.isfile(os.path.join(cgroup, "cgroup.procs")):
        raise LabError(f"cgroup {cgroup} does not exist", hint="create it first (create_cgroup)")
    if netns is not None and not netns_exists(netns):
        raise LabError(f"network namespace {netns} does not exist")
    full = [IP, "netns", "exec", netns, *cmd] if netns else list(cmd)
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    if lab_prefix:
        child_env[MARKER_ENV] = lab_prefix
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=join_cgroup(cgroup),
        )
    except subprocess.SubprocessError as exc:
        raise LabError(f"could not start {cmd[0]}: {exc}", hint=f"cgroup={cgroup} netns={netns}") from exc
    finally:
        if log:
            out.close()
    start = proc_start_time(popen.pid)
    if start is None:  # cannot happen before we reap it; keep the type honest
        raise LabError(f"{cmd[0]} (pid {popen.pid}) vanished at start")
    return Spawned(popen.pid, start, list(cmd), netns, cgroup, log, popen)


def signal_process(pid: int, start_time: int | None, sig: int, *, group: bool = False) -> bool:
    """Signal ``pid`` only if it is still the process that started at ``start_time``.

    With ``group`` and the process leading its own process group (as ``spawn`` makes it), the
    whole group is signalled: its members are its descendants (same session), e.g. an agent's BIRD.
    """
    if not proc_alive(pid, start_time):
        return False
    try:
        if group and proc_pgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(
    procs: Sequence[tuple[int, int | None]], timeout: float, popen: subprocess.Popen | None = None
) -> bool:
    """Wait until none of ``(pid, start_time)`` is alive; reap our own children on the way."""
    deadline = time.monotonic() + timeout
    while True:
        if popen is not None:
            popen.poll()
        for pid, _ in procs:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if not any(proc_alive(pid, st) for pid, st in procs):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_processes(procs: Sequence[tuple[int, int | None]], timeout: float = 5.0) -> list[int]:
    """SIGTERM (process groups where they lead one), wait, SIGKILL what is left. Returns signalled."""
    hit = [pid for pid, st in procs if signal_process(pid, st, signal.SIGTERM, group=True)]
    # SIGCONT too, so a stopped (paused) process can act on SIGTERM.
    for pid, st in procs:
        signal_process(pid, st, signal.SIGCONT, group=True)
    if hit and not wait_gone(procs, timeout):
        for pid, st in procs:
            signal_process(pid, st, signal.SIGKILL, group=True)
        wait_gone(procs, 2.0)
    return hit


# -- cgroup v2 ---------------------------------------------------------------------------------
def create_cgroup(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def cgroup_pids(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return any(line.strip() == "populated 1" for line in f)
    except OSError:
        return False


def remove_cgroup(path: str, timeout: float = 5.0) -> list[str]:
    """Kill every process in the cgroup tree, then remove it bottom-up. Returns removed dirs."""
    if not os.path.isdir(path):
        return []
    kill = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill):
        with open(kill, "w") as f:
            f.write("1")
    else:  # kernels before 5.14: signal members one by one, deepest first
        for root, _dirs, _files in os.walk(path, topdown=False):
            for pid in cgroup_pids(root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _populated(path) and time.monotonic() < deadline:
        for pid in cgroup_pids(path):  # reap our own children so they leave the cgroup
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    removed = []
    for root, _dirs, _files in os.walk(path, topdown=False):
        for attempt in range(50):
            try:
                os.rmdir(root)
                removed.append(root)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or attempt == 49:
                    raise LabError(f"cannot remove cgroup {root}: {exc}") from exc
                time.sleep(0.02)
    return removed
