"""The netlink adapter against a real kernel, inside throw-away namespaces."""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import threading
import time

import pytest

from podnet.dataplane import sysctl
from podnet.dataplane.errors import KernelError, KernelExists, KernelNotFound, NetnsNotFound
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import run_in_netns
from podnet.errors import AlreadyExistsError, NotFoundError

pytestmark = pytest.mark.root


def ip_out(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", os.path.basename(netns), *args], capture_output=True, text=True).stdout


def test_open_by_name_path_and_proc_pid(make_netns, request):
    path = make_netns("a")
    name = os.path.basename(path)
    proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    for target in (name, path):
        with Netlink.open(target) as nl:
            assert [link.name for link in nl.links()] == ["lo"]
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, "sleep did not enter the netns"
        time.sleep(0.01)
    with Netlink.open(f"/proc/{proc.pid}/ns/net") as nl:
        nl.link_add_veth("va", "vb")
    assert "va@vb" in ip_out(path, "-br", "link")


def test_missing_netns_is_an_error_and_is_not_created():
    with pytest.raises(NetnsNotFound) as info:
        Netlink.open("pntest-dp-does-not-exist")
    assert isinstance(info.value, NotFoundError)
    assert not os.path.exists("/run/netns/pntest-dp-does-not-exist")


def test_links(make_netns):
    a, b = make_netns("a"), make_netns("b")
    with Netlink.open(a) as nl:
        pair = nl.link_add_veth(
            "v0", "p0", peer_netns=b, mtu=1400, mac="02:00:00:00:00:01", peer_mac="02:00:00:00:00:02"
        )
        v0 = nl.link_get("v0")
        assert (v0.index, v0.kind, v0.mtu, v0.mac, v0.up) == (
            pair.index,
            "veth",
            1400,
            "02:00:00:00:00:01",
            False,
        )
        nl.link_set("v0", up=True, mtu=1300, mac="02:00:00:00:00:03")
        v0 = nl.link_get(pair.index)
        assert (v0.up, v0.mtu, v0.mac) == (True, 1300, "02:00:00:00:00:03")
        nl.link_set("v0", up=False)
        nl.link_set("v0", name="v0-renamed")
        assert nl.link_find("v0") is None and nl.link_get("v0-renamed").index == pair.index
        assert {link.name for link in nl.links()} == {"lo", "v0-renamed"}
        # a same-netns pair, moved into the other netns
        nl.link_add_veth("m0", "m1")
        nl.link_set("m1", up=True)
        nl.link_set("m1", netns=b)
        assert nl.link_find("m1") is None
    with Netlink.open(b) as nl:
        p0 = nl.link_get("p0")
        assert (p0.index, p0.mtu, p0.mac) == (pair.peer_index, 1400, "02:00:00:00:00:02")
        assert not nl.link_get("m1").up  # a link arrives in its new netns down
    with Netlink.open(a) as nl:
        assert nl.link_del("v0-renamed") is True
        assert nl.link_del("v0-renamed", missing_ok=True) is False
    with Netlink.open(b) as nl:
        assert nl.link_find("p0") is None  # the peer went with it


def test_errors_keep_errno_and_say_what_failed(make_netns):
    a = make_netns("a")
    with Netlink.open(a) as nl:
        nl.link_add_veth("v0", "p0")
        with pytest.raises(KernelExists) as info:
            nl.link_add_veth("v0", "p1")
        assert info.value.errno == errno.EEXIST and isinstance(info.value, AlreadyExistsError)
        assert str(info.value) == f"add veth v0 <-> p1 in netns {a}: File exists (EEXIST)"
        with pytest.raises(KernelNotFound) as info:
            nl.link_get("nope")
        assert info.value.errno == errno.ENODEV and "get link nope" in str(info.value)
        with pytest.raises(KernelNotFound, match="delete link nope"):
            nl.link_del("nope")
        nl.link_set("v0", up=True)
        # the kernel's extended-ack text is part of the message, and the hint says what to do
        with pytest.raises(KernelError) as info:
            nl.route_add("10.8.0.0/16", gateway="10.99.0.1", dev="v0")
        assert info.value.errno == errno.ENETUNREACH
        assert str(info.value) == (
            f"add route 10.8.0.0/16 via 10.99.0.1 dev v0 in netns {a}: "
            "Network is unreachable: Nexthop has invalid gateway (ENETUNREACH)"
        )
        assert "onlink" in info.value.hint


def test_addresses_routes_neighbours(make_netns):
    a = make_netns("a")
    with Netlink.open(a) as nl:
        pair = nl.link_add_veth("v0", "p0", up=True)
        nl.link_set(pair.peer_index, up=True)
        nl.addr_add("v0", "10.1.0.1/24")
        nl.addr_add(pair.index, "10.2.0.1/32", scope="link")
        assert {(x.cidr, x.scope) for x in nl.addrs("v0", family=2)} == {
            ("10.1.0.1/24", "global"),
            ("10.2.0.1/32", "link"),
        }
        with pytest.raises(KernelExists):
            nl.addr_add("v0", "10.1.0.1/24")
        assert nl.addr_del("v0", "10.2.0.1/32") and not nl.addr_del("v0", "10.2.0.1/32", missing_ok=True)

        nl.route_add("10.9.0.0/16", kind="blackhole", protocol=112)
        nl.route_add("10.8.0.0/16", gateway="10.1.1.1", dev="v0", onlink=True, protocol=112)
        nl.route_add("10.7.0.0/16", gateway="10.1.0.2", protocol=112, table=100)
        nl.route_add("10.6.0.5/32", dev="v0", protocol=112)
        nl.route_add("10.5.0.0/16", gateway="10.1.0.2")  # boot protocol, main table
        mine = {(r.dst, r.gateway, r.kind, r.scope, r.onlink) for r in nl.routes(protocol=112)}
        assert mine == {
            ("10.9.0.0/16", None, "blackhole", "global", False),
            ("10.8.0.0/16", "10.1.1.1", "unicast", "global", True),
            ("10.6.0.5/32", None, "unicast", "link", False),
        }
        assert [r.dst for r in nl.routes(protocol=112, table=100)] == ["10.7.0.0/16"]
        assert {r.dst for r in nl.routes(table=None, protocol=112)} >= {"10.7.0.0/16", "10.9.0.0/16"}
        assert [r.protocol for r in nl.routes() if r.dst == "10.5.0.0/16"] == [3]

        nl.route_replace("10.8.0.0/16", gateway="10.1.0.3", dev="v0", protocol=112)
        [r8] = [r for r in nl.routes(protocol=112) if r.dst == "10.8.0.0/16"]
        assert (r8.gateway, r8.onlink) == ("10.1.0.3", False)
        with pytest.raises(KernelNotFound):  # a delete restricted to our protocol spares others
            nl.route_del("10.5.0.0/16", protocol=112)
        assert nl.route_del("10.5.0.0/16")
        assert not nl.route_del("10.5.0.0/16", missing_ok=True)
        assert nl.route_del("10.7.0.0/16", table=100, protocol=112)

        nl.neigh_replace("v0", "10.1.0.9", "02:00:00:00:00:09")
        nl.neigh_replace("v0", "10.1.0.9", "02:00:00:00:00:0a")
        with pytest.raises(KernelExists):
            nl.neigh_add("v0", "10.1.0.9", "02:00:00:00:00:0b")
        [n] = nl.neighs("v0")
        assert (n.address, n.lladdr, n.state) == ("10.1.0.9", "02:00:00:00:00:0a", "permanent")
        assert nl.neigh_del("v0", "10.1.0.9") and not nl.neigh_del("v0", "10.1.0.9", missing_ok=True)


def test_batch_sends_many_writes_and_reports_each(make_netns):
    a = make_netns("a")
    with Netlink.open(a) as nl:
        pair = nl.link_add_veth("v0", "p0", up=True)
        with nl.batch() as batch:
            for i in range(300):  # more than one write(2)
                batch.route_add(f"10.{i // 256}.{i % 256}.0/24", dev=pair.index, protocol=112)
        assert len(nl.routes(protocol=112)) == 300
        batch = nl.batch().route_add("10.0.0.0/24", dev=pair.index, protocol=112)
        batch.route_add("10.200.0.0/24", dev=pair.index, protocol=112)
        with pytest.raises(KernelExists, match=r"add route 10\.0\.0\.0/24"):
            batch.commit()
        assert [r is None for r in batch.results] == [False, True]  # the second still happened
        with pytest.raises(TypeError):
            nl.batch().route_add("10.1.0.0/24", dev="v0")


def test_handle_belongs_to_its_thread(make_netns):
    a = make_netns("a")
    nl = Netlink.open(a)
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_catch(nl.links)))
    thread.start()
    thread.join()
    nl.close()
    assert "opened on another thread" in str(errors[0])
    with pytest.raises(RuntimeError, match="closed"):
        nl.links()


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def test_sysctls_are_per_netns(make_netns):
    a, b = make_netns("a"), make_netns("b")
    with Netlink.open(a) as nl:
        nl.link_add_veth("v0", "p0")
        nl.sysctl_set_many({sysctl.iface_key("v0", "proxy_arp"): 1, "net.ipv4.ip_forward": 1})
        assert nl.sysctl_get("net/ipv4/conf/v0/proxy_arp") == "1"
    out = subprocess.run(
        ["ip", "netns", "exec", os.path.basename(a), "cat", "/proc/sys/net/ipv4/conf/v0/proxy_arp"],
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "1"
    assert sysctl.read("net.ipv4.ip_forward", a) == "1"
    assert sysctl.read("net.ipv4.ip_forward", b) == "0"  # a fresh netns starts with forwarding off
    assert not os.path.exists("/proc/sys/net/ipv4/conf/v0")  # not in the test process's netns
    with pytest.raises(KernelNotFound, match="write sysctl net/ipv4/conf/nope/proxy_arp=1"):
        sysctl.write(sysctl.iface_key("nope", "proxy_arp"), 1, a)


def test_netns_handle_open_cost(make_netns):
    """Median cost of a handle in another netns: ours (setns thread) vs pyroute2's IPRoute(netns=)."""
    from pyroute2 import IPRoute

    path = make_netns("a")
    name = os.path.basename(path)

    def median_ms(fn, n=20):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def ours():
        with Netlink.open(path) as nl:
            nl.link_del("nope", missing_ok=True)  # one round trip

    def ours_with_reads():
        with Netlink.open(path) as nl:
            nl.links()

    def pyroute2_netns():
        with IPRoute(netns=name, flags=0, groups=0) as ipr:
            ipr.link("dump")

    def setns_only():
        run_in_netns(path, lambda: None)

    results = {
        "setns thread alone": median_ms(setns_only),
        "Netlink.open + 1 write": median_ms(ours),
        "Netlink.open + pyroute2 read": median_ms(ours_with_reads),
        "pyroute2 IPRoute(netns=) + read": median_ms(pyroute2_netns),
    }
    print("\n" + "\n".join(f"  {k:34s} {v:6.2f} ms" for k, v in results.items()))
    assert results["Netlink.open + 1 write"] < results["pyroute2 IPRoute(netns=) + read"]
