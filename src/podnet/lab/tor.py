"""The lab's external router (a "top-of-rack" switch): GoBGP in its own namespace on the fabric.

::

      pn-node-1 … pn-node-N                      pn-tor (AS 64567)
     eth0 10.77.0.1x ──┐                     ┌── eth0 10.77.0.250/24
                       │   pn-fabric br0     │   lo   198.51.100.1/32   (the prefix it owns)
                       └─────────────────────┘   gobgpd   ── eBGP ──▶ every node's BIRD
                                                 fib-sync ── learned routes ─▶ kernel (proto 186)

Why GoBGP (Debian's ``gobgpd``) rather than FRR: one foreground process with one config file and a
gRPC API on the namespace's own loopback, so it runs in any namespace without systemd, sockets in
``/var/run/frr`` or a ``zebra`` beside it. GoBGP does not program the kernel by itself (that needs
FRR's zebra), so a second small process, ``python -m podnet.lab.tor fib-sync``, reads the best paths
of ``gobgp global rib`` every ``FIB_SYNC_INTERVAL`` and writes them into the namespace's main table
with protocol 186 (iproute2's ``bgp``), removing the ones that went away. (``dummy`` interfaces are
not available in this kernel, so owned addresses live on ``lo``, as router loopbacks do.)

``attach_tor(...)`` creates the namespace and its veth on a fabric bridge (recorded in the lab state
first, so ``podnet lab down`` removes it); ``start_tor(...)`` writes ``gobgpd.toml`` in ``workdir``,
starts both processes with :func:`podnet.lab.netns.spawn` (marker, optional state record), announces
``announce`` and returns a :class:`Tor` handle (``stop()``, ``learned_routes()``, ``neighbors()``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from podnet.dataplane.netns import netns_exists, run_in_netns
from podnet.dataplane.sysctl import write as write_sysctl
from podnet.lab.naming import LabError
from podnet.lab.netns import Spawned, create_netns, spawn
from podnet.lab.state import LabState, ProcessRecord

DEFAULT_ASN = 64567
API_PORT = 50051
RTPROT_BGP = 186  # iproute2's "bgp"
FIB_SYNC_INTERVAL = 0.3
GOBGPD = "gobgpd"
GOBGP = "gobgp"
SESSION_STATES = {
    0: "unknown",
    1: "idle",
    2: "connect",
    3: "active",
    4: "opensent",
    5: "openconfirm",
    6: "established",
}


def attach_tor(
    netns: str,
    fabric_ns: str,
    bridge: str,
    address: str,
    *,
    port: str = "tor",
    ifname: str = "eth0",
    mtu: int = 1500,
    state: LabState | None = None,
) -> None:
    """Create ``netns`` with ``ifname`` = ``address`` (CIDR) on ``bridge`` of the fabric namespace."""
    if state is not None:
        state.record_netns(netns, "other")
    create_netns(netns)

    def ip(*args: str, ns: str) -> None:
        proc = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LabError(f"ip -n {ns} {' '.join(args)}: {proc.stderr.strip()}")

    ip("link", "set", "lo", "up", ns=netns)
    ip(
        "link",
        "add",
        port,
        "mtu",
        str(mtu),
        "type",
        "veth",
        "peer",
        "name",
        ifname,
        "netns",
        netns,
        ns=fabric_ns,
    )
    ip("link", "set", port, "master", bridge, "up", ns=fabric_ns)
    ip("addr", "add", address, "dev", ifname, ns=netns)
    ip("link", "set", ifname, "mtu", str(mtu), "up", ns=netns)
    write_sysctl("net.ipv4.ip_forward", 1, netns)


def gobgp_config(
    address: str, asn: int, peers: Sequence[tuple], router_id: str | None = None, restart_time: int = 120
) -> str:
    """``gobgpd.toml``: one neighbour per ``(ip, asn[, port])``, IPv4 unicast, graceful restart."""
    lines = [
        "[global.config]",
        f"  as = {asn}",
        f'  router-id = "{router_id or address}"',
        "  port = 179",
        f'  local-address-list = ["{address}"]',
    ]
    for peer in sorted(peers, key=lambda p: ipaddress.ip_address(p[0])):
        ip, peer_as, *rest = peer
        lines += [
            "",
            "[[neighbors]]",
            "  [neighbors.config]",
            f'    neighbor-address = "{ip}"',
            f"    peer-as = {peer_as}",
        ]
        if rest and rest[0]:
            lines += ["  [neighbors.transport.config]", f"    remote-port = {rest[0]}"]
        lines += [
            "  [neighbors.graceful-restart.config]",
            "    enabled = true",
            f"    restart-time = {restart_time}",
            "  [[neighbors.afi-safis]]",
            "    [neighbors.afi-safis.config]",
            '      afi-safi-name = "ipv4-unicast"',
            "    [neighbors.afi-safis.mp-graceful-restart.config]",
            "      enabled = true",
        ]
    return "\n".join(lines) + "\n"


# -- reading GoBGP --------------------------------------------------------------------------------
def _gobgp(api_port: int, *args: str, netns: str | None = None, timeout: float = 10.0) -> str:
    cmd = [GOBGP, "-p", str(api_port), *args]
    proc = (
        run_in_netns(netns, cmd, timeout=timeout)
        if netns
        else subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    )
    if proc.returncode != 0:
        raise LabError(f"gobgp {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def best_paths(rib_json: str) -> dict[str, str]:
    """``gobgp -j global rib`` → ``{prefix: next hop}`` of the best learned paths (local ones left out)."""
    out: dict[str, str] = {}
    doc = json.loads(rib_json or "{}") or {}
    for prefix, paths in doc.items():
        for path in paths:
            if not path.get("best"):
                continue
            hops = [a.get("nexthop") for a in path.get("attrs", []) if a.get("type") == 3]
            if hops and hops[0] and hops[0] != "0.0.0.0":
                out[prefix] = hops[0]
    return out


def kernel_bgp_routes(netns: str | None = None, table: int = 254) -> dict[str, str]:
    """Routes of protocol 186 in ``table``: ``{prefix: gateway}``."""
    cmd = ["ip", "-j", "-4", "route", "show", "table", str(table), "proto", str(RTPROT_BGP)]
    proc = (
        run_in_netns(netns, cmd)
        if netns
        else subprocess.run(cmd, capture_output=True, text=True, check=False)
    )
    out = {}
    for route in json.loads(proc.stdout or "[]"):
        dst = route.get("dst", "")
        if dst == "default":
            dst = "0.0.0.0/0"
        elif "/" not in dst:
            dst += "/32"
        out[dst] = route.get("gateway", "")
    return out


def sync_fib_once(api_port: int, table: int = 254) -> tuple[int, int]:
    """One pass of fib-sync in the current namespace: ``(written, removed)``."""
    want = best_paths(_gobgp(api_port, "-j", "global", "rib", "-a", "ipv4"))
    have = kernel_bgp_routes(None, table)
    written = removed = 0
    for prefix, hop in sorted(want.items()):
        if have.get(prefix) != hop:
            route = [prefix, "via", hop, "proto", str(RTPROT_BGP), "table", str(table)]
            subprocess.run(["ip", "route", "replace", *route], capture_output=True, check=False)
            written += 1
    for prefix in sorted(set(have) - set(want)):
        route = [prefix, "proto", str(RTPROT_BGP), "table", str(table)]
        subprocess.run(["ip", "route", "del", *route], capture_output=True, check=False)
        removed += 1
    return written, removed


# -- the handle -----------------------------------------------------------------------------------
@dataclass
class Tor:
    """A running ToR: GoBGP plus its FIB sync, in ``netns``."""

    netns: str
    address: str
    asn: int
    workdir: str
    api_port: int = API_PORT
    processes: list[Spawned] = field(default_factory=list)
    announced: list[str] = field(default_factory=list)

    def gobgp(self, *args: str) -> str:
        return _gobgp(self.api_port, *args, netns=self.netns)

    def learned_routes(self) -> dict[str, str]:
        """Best paths learned from peers: ``{prefix: next hop}``."""
        return best_paths(self.gobgp("-j", "global", "rib", "-a", "ipv4"))

    def kernel_routes(self) -> dict[str, str]:
        """What fib-sync wrote into the namespace's kernel: ``{prefix: gateway}``."""
        return kernel_bgp_routes(self.netns)

    def neighbors(self) -> list[dict]:
        """``[{"address", "asn", "state"}]``, state as ``established``, ``active``, ..."""
        out = []
        for n in json.loads(self.gobgp("-j", "neighbor") or "[]") or []:
            st = n.get("state", {})
            out.append(
                {
                    "address": st.get("neighbor_address") or n.get("conf", {}).get("neighbor_address"),
                    "asn": st.get("peer_asn") or n.get("conf", {}).get("peer_asn"),
                    "state": SESSION_STATES.get(st.get("session_state", 0), "unknown"),
                }
            )
        return sorted(out, key=lambda n: ipaddress.ip_address(n["address"]))

    def wait_established(self, count: int | None = None, timeout: float = 30.0) -> list[dict]:
        """Wait until ``count`` (default: all) neighbours are established; returns the neighbours."""
        deadline = time.monotonic() + timeout
        while True:
            neighbors = self.neighbors()
            up = sum(n["state"] == "established" for n in neighbors)
            if up >= (len(neighbors) if count is None else count):
                return neighbors
            if time.monotonic() >= deadline:
                raise LabError(f"ToR sessions not established after {timeout}s: {neighbors}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return bool(self.processes) and all(p.alive() for p in self.processes)

    def stop(self) -> None:
        """Stop fib-sync and gobgpd (by their recorded pids); the namespace stays."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


def start_tor(
    netns: str,
    address: str,
    peers: Sequence[tuple],
    announce: Sequence[str] = ("198.51.100.0/24",),
    asn: int = DEFAULT_ASN,
    workdir: str = "/tmp",
    *,
    router_id: str | None = None,
    api_port: int = API_PORT,
    lab_prefix: str | None = None,
    state: LabState | None = None,
    timeout: float = 10.0,
) -> Tor:
    """Run GoBGP in ``netns`` (already attached: see :func:`attach_tor`) and announce ``announce``.

    ``address``: the ToR's address on the fabric (``10.77.0.250`` or with ``/24``); ``peers``:
    ``(ip, asn)`` or ``(ip, asn, port)``. Each announced prefix's first address is put on ``lo``.
    With ``state``, both processes are recorded in the lab state (``podnet lab down`` stops them).
    """
    if not netns_exists(netns):
        raise LabError(f"network namespace {netns} does not exist", hint="attach_tor() creates it")
    ip = address.split("/")[0]
    os.makedirs(workdir, exist_ok=True)
    conf = os.path.join(workdir, "gobgpd.toml")
    with open(conf, "w") as f:
        f.write(gobgp_config(ip, asn, peers, router_id))
    tor = Tor(netns, ip, asn, workdir, api_port, announced=list(announce))

    def launch(name: str, cmd: list[str]) -> None:
        proc = spawn(cmd, netns=netns, log=os.path.join(workdir, f"{name}.log"), lab_prefix=lab_prefix)
        tor.processes.append(proc)
        if state is not None:
            state.record_process(ProcessRecord.of(f"tor-{name}", proc))

    try:
        for prefix in announce:
            net = ipaddress.IPv4Network(prefix)
            host = next(net.hosts(), net.network_address)
            run_in_netns(netns, ["ip", "addr", "replace", f"{host}/32", "dev", "lo"], check=True)
        launch(
            "gobgpd",
            [GOBGPD, "-f", conf, "-t", "toml", f"--api-hosts=127.0.0.1:{api_port}", "--pprof-disable", "-p"],
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                tor.gobgp("global")
                break
            except LabError:
                if not tor.processes[0].alive() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        for prefix in announce:
            tor.gobgp("global", "rib", "add", "-a", "ipv4", str(ipaddress.IPv4Network(prefix)))
        marker = [f"--lab-prefix={lab_prefix}"] if lab_prefix else []
        launch(
            "fib-sync",
            [sys.executable, "-m", "podnet.lab.tor", "fib-sync", "--api-port", str(api_port), *marker],
        )
    except BaseException:
        tor.stop()
        raise
    return tor


# -- fib-sync, the process ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podnet.lab.tor", description="the lab ToR's helpers")
    sub = parser.add_subparsers(dest="command", required=True)
    sync = sub.add_parser("fib-sync", help="copy GoBGP's best paths into this namespace's kernel table")
    sync.add_argument("--api-port", type=int, default=API_PORT)
    sync.add_argument("--table", type=int, default=254)
    sync.add_argument("--interval", type=float, default=FIB_SYNC_INTERVAL)
    sync.add_argument("--lab-prefix", help="marker of the lab this process belongs to (for cleanup)")
    args = parser.parse_args(argv)
    while True:
        with contextlib.suppress(LabError, subprocess.SubprocessError, ValueError, OSError):
            written, removed = sync_fib_once(args.api_port, args.table)
            if written or removed:
                print(f"fib-sync: {written} written, {removed} removed", flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
