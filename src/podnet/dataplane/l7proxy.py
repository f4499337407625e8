"""The node's L7 proxy: one HAProxy (master-worker) per node in the node's network namespace and in a
cgroup of its own, and the kernel plumbing that brings it the connections the policy maps redirect
(:mod:`podnet.calc.haproxy` renders its configuration).

Marks (``skb->mark``, the ``0x0F00`` nibble; podnet's other marks are ``0x4000`` for masquerade
and ``0x100000`` for Pass)::

    0x0A00  to the ingress listener   set by the tc programs on a redirect entry's packets
    0x0B00  to the egress listener
    0x0C00  from the proxy            its own packets (by its cgroup): already judged
    0x0D00  to a local proxy socket   tproxied packets, and answers to the proxy's transparent sockets

nftables table ``ip podnet_l7``: in ``prerouting`` (mangle), a packet of a socket HAProxy made
transparent (the client side it accepted, the server side it opened from the client's address)
gets ``0x0D00``; a packet marked for a listener is ``tproxy``-ed to it and gets ``0x0D00``, or
dropped when no listener is there (the proxy is down: redirected ports fail closed). In
``output``, the proxy's own packets get ``0x0C00``. Policy routing sends ``0x0D00`` to table
:data:`ROUTE_TABLE` (Cilium's proxy table number), where ``local 0.0.0.0/0 dev lo`` delivers it
to the local socket.

Configuration changes are checked (``haproxy -c``) before they are written: a configuration
HAProxy refuses leaves the running one in force, and the error is raised. A valid change is a
hitless reload: ``SIGUSR2`` to the master, which starts new workers on the same listening sockets
while the old ones finish their connections.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

from podnet.calc.haproxy import HttpPolicy, ProxySettings, ipcache_map, render_haproxy
from podnet.calc.l7_dns import DNS_PROXY_PORT
from podnet.calc.policymap import EGRESS, INGRESS
from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import join_cgroup
from podnet.dataplane.nft import TableSync

TABLE = "podnet_l7"
MARK_MASK = 0x0F00
TO_INGRESS_PROXY = 0x0A00
TO_EGRESS_PROXY = 0x0B00
FROM_PROXY = 0x0C00
TO_PROXY_SOCKET = 0x0D00
TO_DNS_PROXY = 0x0E00
ROUTE_TABLE = 2004
RULE_PRIORITY = 9  # before the main table (32766)
DNS = "dns"  # the DNS proxy's listener (the agent's, UDP and TCP), beside the HTTP proxy's two
DEFAULT_PORTS = {INGRESS: 15001, EGRESS: 15002, DNS: DNS_PROXY_PORT}
CGROUP2_MOUNT = "/sys/fs/cgroup"  # nft names a cgroup by its path below this


def _set(mark: int) -> str:
    return f"meta mark set meta mark & {~MARK_MASK & 0xFFFFFFFF:#010x} | {mark:#06x}"


def render_table(ports: Mapping[str, int], cgroup_path: str, cgroup_level: int) -> str:
    """The ``ip podnet_l7`` table as one transaction (pure)."""
    to_socket = _set(TO_PROXY_SOCKET)
    tproxy = []
    for direction, mark in ((INGRESS, TO_INGRESS_PROXY), (EGRESS, TO_EGRESS_PROXY), (DNS, TO_DNS_PROXY)):
        marked = f"meta mark & {MARK_MASK:#06x} == {mark:#06x}"
        protocols = "{ tcp, udp }" if direction == DNS else "tcp"
        tproxy.append(
            f"        meta l4proto {protocols} {marked} tproxy to :{ports[direction]} {to_socket} accept"
        )
        tproxy.append(f"        {marked} drop")  # no listener (the proxy is down): fail closed
    return "\n".join(
        [
            f"add table ip {TABLE}",
            f"delete table ip {TABLE}",
            f"table ip {TABLE} {{",
            "    chain prerouting {",
            "        type filter hook prerouting priority mangle; policy accept;",
            f"        meta l4proto {{ tcp, udp }} socket transparent 1 {to_socket} accept",
            *tproxy,
            "    }",
            "    chain output {",
            "        type route hook output priority mangle; policy accept;",
            f'        socket cgroupv2 level {cgroup_level} "{cgroup_path}" {_set(FROM_PROXY)}',
            "    }",
            "}",
            "",
        ]
    )


def cgroup_name(cgroup: str, mount: str = CGROUP2_MOUNT) -> tuple[str, int]:
    """How nft names ``cgroup`` (an absolute path below ``mount``): its path relative to ``mount``
    and its level in the cgroup v2 hierarchy (the number of directories below the v2 root; the
    root is found as the nearest ancestor with ``cgroup.procs`` but no parent that has one)."""
    real = os.path.realpath(cgroup)
    if not real.startswith(mount.rstrip("/") + "/"):
        raise DataplaneError(f"cgroup {cgroup} is not below {mount}")
    root = real
    while os.path.isfile(os.path.join(os.path.dirname(root), "cgroup.procs")):
        root = os.path.dirname(root)
    level = len(os.path.relpath(real, root).split(os.sep)) if real != root else 0
    return os.path.relpath(real, mount), level


class L7Proxy:
    """The node's HAProxy and its plumbing. ``cgroup``: a cgroup v2 directory of the proxy's own
    (created here); ``state_dir``: its configuration, map, sockets and log."""

    def __init__(
        self,
        state_dir: str,
        cgroup: str,
        ports: Mapping[str, int] = DEFAULT_PORTS,
        binary: str = "haproxy",
        exporter: str | None = None,
    ) -> None:
        self.state_dir, self.cgroup, self.ports, self.binary = state_dir, cgroup, dict(ports), binary
        self.settings = ProxySettings(
            self.ports,
            os.path.join(state_dir, "ipcache.map"),
            os.path.join(state_dir, "admin.sock"),
            os.path.join(state_dir, "records.sock"),
            os.path.join(state_dir, "haproxy.pid"),
            exporter=exporter,
        )
        self.config_path = os.path.join(state_dir, "haproxy.cfg")
        self.master_socket = os.path.join(state_dir, "master.sock")
        self.table: TableSync[str] = TableSync(
            "ip", TABLE, None, full=lambda script: script, what="L7 proxy redirection"
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._applied: tuple[str, str] | None = None  # (configuration, map) in force
        self.restarts = 0

    # ------------------------------------------------------------------ kernel plumbing

    def ensure_plumbing(self) -> None:
        """The nftables table, the policy-routing rule and its table (idempotent)."""
        os.makedirs(self.cgroup, exist_ok=True)
        path, level = cgroup_name(self.cgroup)
        self.table.sync(render_table(self.ports, path, level))
        mark = f"{TO_PROXY_SOCKET:#x}/{MARK_MASK:#x}"
        rules = _ip("rule", "show", "priority", str(RULE_PRIORITY))
        if f"fwmark {mark} lookup {ROUTE_TABLE}" not in rules:
            _ip("rule", "add", "priority", str(RULE_PRIORITY), "fwmark", mark, "lookup", str(ROUTE_TABLE))
        _ip("route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(ROUTE_TABLE))

    def remove_plumbing(self) -> None:
        self.table.remove()
        with contextlib.suppress(DataplaneError):
            _ip("rule", "del", "priority", str(RULE_PRIORITY))
        with contextlib.suppress(DataplaneError):
            _ip("route", "flush", "table", str(ROUTE_TABLE))

    # ------------------------------------------------------------------ the proxy

    def apply(self, policies: Iterable[HttpPolicy], ipcache: Mapping[str, int]) -> bool:
        """Make the proxy enforce ``policies`` (the ipcache: prefix -> identity, for the peers'
        identities); start it if it is not running. True when a new configuration went into force.
        A configuration HAProxy refuses raises :class:`DataplaneError` and changes nothing."""
        os.makedirs(self.state_dir, exist_ok=True)
        policies = list(policies)
        config = render_haproxy(policies, self.settings)
        mapping = ipcache_map(ipcache)
        if self._applied == (config, mapping) and self.running():
            return False
        new_map = self.settings.ipcache_map + ".new"
        _write(new_map, mapping)  # checked together with the configuration that reads it
        _write(
            self.config_path + ".new", render_haproxy(policies, replace(self.settings, ipcache_map=new_map))
        )
        check = subprocess.run(
            [self.binary, "-c", "-f", self.config_path + ".new"], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise DataplaneError(
                f"haproxy refused the L7 configuration: {(check.stderr or check.stdout).strip()[:2000]}"
            )
        os.replace(new_map, self.settings.ipcache_map)
        _write(self.config_path, config)
        if self.running():
            assert self._process is not None
            before = self.workers()
            self._process.send_signal(signal.SIGUSR2)  # hitless: new workers, the old ones drain
            self._wait_reloaded(before)
        else:
            self._start()
        self._applied = (config, mapping)
        return True

    def master(self, command: str, timeout: float = 2.0) -> str:
        """One command on the master's CLI (``-S``), its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.master_socket)
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:
                raise DataplaneError(f"the L7 proxy's master CLI: {command}: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def workers(self) -> set[int]:
        """The pids of the current workers (not the old ones still finishing their connections)."""
        section, found = "", set()
        for line in self.master("show proc", timeout=1.0).splitlines():
            if line.startswith("#"):
                section = line.strip("# ").lower()
            elif section == "workers" and line.split() and line.split()[0].isdigit():
                found.add(int(line.split()[0]))
        return found

    def _wait_reloaded(self, before: set[int], timeout: float = 5.0) -> None:
        """Until the workers of the new configuration have replaced ``before``, which then stop
        accepting and close their idle keep-alive connections (HAProxy's soft stop): from here on
        a request on an old connection is not judged by the old rules, beyond one in flight."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                now = self.workers()
            except DataplaneError:
                now = set()
            if now and not now & before:
                return
            if not self.running():
                raise DataplaneError(f"haproxy exited during a reload (see {self.state_dir}/haproxy.log)")
            if time.monotonic() > deadline:
                raise DataplaneError(f"haproxy's new workers did not take over in {timeout:g} s")
            time.sleep(0.01)

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart_if_dead(self) -> bool:
        """Start the proxy again if it died (its listeners went with it: redirected connections
        are refused meanwhile, never let through). True if it was restarted."""
        if self._applied is None or self.running():
            return False
        self._start()
        self.restarts += 1
        return True

    def _start(self) -> None:
        for stale in (self.settings.admin_socket, self.master_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        log = open(os.path.join(self.state_dir, "haproxy.log"), "ab")  # noqa: SIM115 (the child's)
        try:
            self._process = subprocess.Popen(
                [self.binary, "-W", "-S", f"{self.master_socket},mode,600", "-f", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=join_cgroup(self.cgroup),  # plain syscalls only
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 5.0
        while not os.path.exists(self.settings.admin_socket):  # listening once the socket is there
            if self._process.poll() is not None:
                raise DataplaneError(f"haproxy exited at start (see {self.state_dir}/haproxy.log)")
            if time.monotonic() > deadline:
                raise DataplaneError(f"haproxy did not start in 5 s (see {self.state_dir}/haproxy.log)")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the proxy (its workers with it) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5.0)
        self._applied = None
        self._empty_cgroup()

    def _empty_cgroup(self, timeout: float = 5.0) -> None:
        """Every process left in the proxy's cgroup (workers still exiting, or orphaned by a
        killed master) killed, then the cgroup removed once the kernel has let them go."""
        procs = os.path.join(self.cgroup, "cgroup.procs")
        deadline = time.monotonic() + timeout
        while os.path.isdir(self.cgroup):
            try:
                with open(procs) as f:
                    pids = [int(line) for line in f if line.strip()]
            except OSError:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup)
            if time.monotonic() > deadline:
                raise DataplaneError(f"the proxy's cgroup {self.cgroup} did not empty in {timeout:g} s")
            time.sleep(0.02)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataplaneError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout
