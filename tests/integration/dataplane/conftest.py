"""Fixtures of the dataplane integration tests: throw-away network namespaces and real traffic.

Everything is created inside namespaces named ``pntest-dp-<session>-<test>-<label>``; nothing is
added to the root namespace. Each namespace is deleted by a finalizer (also when the test fails),
which takes its links and routes with it; a session fixture checks at the end that the root
namespace has the same links of the names these tests use as at the start, and that none of this
session's namespaces is left (other sessions running the same tests concurrently are ignored).

``ping(netns, dst)`` sends ICMP echoes from inside ``netns`` through a raw socket opened on a
thread that entered the namespace (the ``ping`` binary is not installed on these machines), so
the traffic never leaves the test namespaces.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from podnet.dataplane import sysctl
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import run_in_netns
from podnet.lab.probe import icmp_checksum

SESSION = secrets.token_hex(2)
PREFIX = f"pntest-dp-{SESSION}"  # unique per pytest session: concurrent runs do not see each other's
OUR_LINK_NAMES = re.compile(r"^(eth0|cali.*|lxc.*|cilium_.*|[vpm][0-9].*|side[0-9]|v[ab])$")


def _root_state() -> tuple[list[str], list[str]]:
    """Links of the root netns that look like ours, and this session's namespaces."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    ours = sorted(line.split()[0] for line in netns.splitlines() if line.startswith(PREFIX))
    return [n for n in names if OUR_LINK_NAMES.match(n)], ours


@pytest.fixture(scope="session", autouse=True)
def _root_namespace_untouched() -> Iterator[None]:
    """At the end: the root netns has the same links of our names, and no namespace of ours is left."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield
        return
    before = _root_state()
    yield
    time.sleep(0.05)  # netns teardown in the kernel is asynchronous
    after = _root_state()
    assert after == before, f"root namespace changed: before={before} after={after}"


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces (run the dataplane integration tests as root)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip to create network namespaces")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``make_netns(label)`` -> path of a fresh namespace with ``lo`` up; deleted after the test."""
    run_id = secrets.token_hex(3)

    def make(label: str) -> str:
        name = f"{PREFIX}-{run_id}-{label}"
        _ip("netns", "add", name)
        request.addfinalizer(lambda: subprocess.run(["ip", "netns", "del", name], capture_output=True))
        with Netlink.open(name) as nl:
            nl.link_set(1, up=True)
        return f"/run/netns/{name}"

    return make


@dataclass
class Node:
    netns: str
    ip: str  # underlay address on eth0
    pod_cidr: str
    router_ip: str  # cilium scheme: the cilium_host address


@pytest.fixture
def two_nodes(make_netns: Callable[[str], str]) -> tuple[Node, Node]:
    """Two "nodes" joined by a veth (eth0 <-> eth0, 10.0.0.1/24 and 10.0.0.2/24), forwarding on."""
    a = Node(make_netns("node-a"), "10.0.0.1", "10.244.1.0/24", "10.244.1.1")
    b = Node(make_netns("node-b"), "10.0.0.2", "10.244.2.0/24", "10.244.2.1")
    with Netlink.open(a.netns) as nl:
        nl.link_add_veth("eth0", "eth0", peer_netns=b.netns, mtu=1500, up=True)
        nl.addr_add("eth0", f"{a.ip}/24")
    with Netlink.open(b.netns) as nl:
        nl.link_set("eth0", up=True)
        nl.addr_add("eth0", f"{b.ip}/24")
    for node in (a, b):
        sysctl.write_many(sysctl.NODE_SYSCTLS, node.netns)
    return a, b


@pytest.fixture
def node(two_nodes: tuple[Node, Node]) -> Node:
    return two_nodes[0]


def icmp_ping(
    netns: str, dst: str, *, timeout: float = 2.0, size: int = 56, df: bool = False, interval: float = 0.2
) -> bool:
    """ICMP echo from inside ``netns`` to ``dst``, one request per ``interval`` (like ``ping -c1 -W``
    with retries, so a loaded machine does not fail a connectivity test); True on the first reply."""

    def body() -> bool:
        ident = secrets.randbits(16)
        payload = secrets.token_bytes(size)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            if df:
                s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            deadline = time.monotonic() + timeout
            seq = 0
            while (left := deadline - time.monotonic()) > 0:
                seq += 1
                header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
                packet = struct.pack("!BBHHH", 8, 0, icmp_checksum(header + payload), ident, seq) + payload
                try:
                    s.sendto(packet, (dst, 0))
                except OSError:
                    return False
                next_send = time.monotonic() + min(interval, left)
                while (wait := next_send - time.monotonic()) > 0:
                    s.settimeout(wait)
                    try:
                        data, (src, _) = s.recvfrom(65535)
                    except TimeoutError:
                        break
                    ihl = (data[0] & 0x0F) * 4
                    kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                    if kind == 0 and rid == ident and src == dst and data[ihl + 8 :] == payload:
                        return True
        return False

    return run_in_netns(netns, body)


@pytest.fixture
def ping() -> Callable[..., bool]:
    return icmp_ping
