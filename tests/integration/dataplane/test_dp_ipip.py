"""The eBPF IPIP tunnel against a real kernel: pods on nodes in two subnets, a router between them.

    pa 10.244.1.5 ─ A 10.0.1.2 ┐                         ┌ B 10.0.2.2 ─ pb 10.244.2.5
                               ├ br1 10.0.1.1 ─ router ─ rb 10.0.2.1
    pc 10.244.3.5 ─ C 10.0.1.3 ┘   (ra, rc: ports)

Each node runs an ``IPIPTunnel`` (tunl0 + tc programs) with map entries for the other nodes' pod
blocks and Calico's routes ``<block> via <node> dev tunl0 onlink``. A↔B crosses the router, A↔C
shares a subnet. Everything lives in namespaces named ``pntip<hex>-*`` and pins under
``/sys/fs/bpf/pntip<hex>-*``; both are removed when the module ends, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from podnet.dataplane import bpf
from podnet.dataplane.endpoint import CALICO_GATEWAY, EndpointSpec, endpoint_routes, wire_endpoint
from podnet.dataplane.ipip import TC_PREF, IPIPTunnel
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import in_netns
from podnet.dataplane.routes import Route, RouteManager
from podnet.dataplane.sysctl import NODE_SYSCTLS, write_many
from podnet.lab.netns import create_netns, delete_netns, list_netns

pytestmark = pytest.mark.root

PREFIX = f"pntip{secrets.token_hex(2)}-"
POD_MTU = 1480
TOOLS = ("ip", "tc", "bpftool", "clang", "tcpdump")


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    block: str
    pod_ns: str
    pod_ip: str
    tunnel: IPIPTunnel
    routes: list[Route] = field(default_factory=list)  # the node's desired podnet routes


@dataclass
class Lab:
    router: str
    nodes: dict[str, Node]
    pin_root: str

    def tunnel_routes(self, node: Node) -> list[Route]:
        return [
            Route(other.block, gateway=other.ip, dev="tunl0", onlink=True)
            for other in self.nodes.values()
            if other is not node
        ]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    _ip("-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    _ip("-n", ns_a, "link", "set", name_a, "up")
    _ip("-n", ns_b, "link", "set", name_b, "up")


def _cleanup(pin_root: str) -> None:
    for ns in list_netns(PREFIX):
        delete_netns(ns)
    bpf.unpin_tree(pin_root)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, tc and BPF")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")
    pin_root = f"{bpf.BPFFS}/{PREFIX}lab"
    cache = str(tmp_path_factory.mktemp("bpf-cache"))
    try:
        router = f"{PREFIX}r"
        create_netns(router)
        _ip("-n", router, "link", "set", "lo", "up")
        _ip("-n", router, "link", "add", "br1", "type", "bridge")
        _ip("-n", router, "addr", "add", "10.0.1.1/24", "dev", "br1")
        _ip("-n", router, "link", "set", "br1", "up")
        write_many({"net/ipv4/ip_forward": "1"}, router)
        nodes: dict[str, Node] = {}
        specs = (
            ("a", "10.0.1.2", "10.244.1.0/26", "10.244.1.5", "ra"),
            ("c", "10.0.1.3", "10.244.3.0/26", "10.244.3.5", "rc"),
            ("b", "10.0.2.2", "10.244.2.0/26", "10.244.2.5", "rb"),
        )
        for name, ip, block, pod_ip, port in specs:
            ns, pod_ns = f"{PREFIX}{name}", f"{PREFIX}p{name}"
            create_netns(ns)
            create_netns(pod_ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _veth(ns, "eth0", router, port)
            if name == "b":
                _ip("-n", router, "addr", "add", "10.0.2.1/24", "dev", port)
                gateway, plen = "10.0.2.1", 24
            else:
                _ip("-n", router, "link", "set", port, "master", "br1")
                gateway, plen = "10.0.1.1", 24
            _ip("-n", ns, "addr", "add", f"{ip}/{plen}", "dev", "eth0")
            _ip("-n", ns, "route", "add", "default", "via", gateway)
            write_many(NODE_SYSCTLS, ns)
            wired = wire_endpoint(
                EndpointSpec(
                    f"/run/netns/{pod_ns}", "eth0", "cali0", (pod_ip,), POD_MTU, "calico", CALICO_GATEWAY
                ),
                host_netns=ns,
            )
            tunnel = IPIPTunnel(
                uplink="eth0", netns=ns, pin_dir=f"{pin_root}/{name}", cache_dir=cache, mode="bpf"
            )
            nodes[name] = Node(name, ns, ip, block, pod_ns, pod_ip, tunnel, list(endpoint_routes(wired)))
        lab = Lab(router, nodes, pin_root)
        for node in nodes.values():
            node.tunnel.ensure()
            node.tunnel.sync({o.block: o.ip for o in nodes.values() if o is not node})
            diff = RouteManager(node.ns).apply(node.routes + lab.tunnel_routes(node))
            assert diff.ok, diff.failed
        yield lab
    finally:
        _cleanup(pin_root)
    assert not list_netns(PREFIX)
    assert not os.path.exists(pin_root)


# ---------------------------------------------------------------------- traffic helpers


class EchoServer:
    """TCP and UDP echo on one port inside a pod netns (sockets opened there, served by threads)."""

    def __init__(self, netns: str, port: int) -> None:
        with in_netns(netns):
            self.tcp = socket.create_server(("0.0.0.0", port), reuse_port=True)
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("0.0.0.0", port))
        self.tcp.settimeout(0.2)
        self.udp.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=fn, daemon=True) for fn in (self._accept, self._udp)]
        for t in self.threads:
            t.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    def _udp(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.udp.recvfrom(1 << 16)
            except TimeoutError:
                continue
            self.udp.sendto(data, peer)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.tcp.close()
        self.udp.close()


@contextlib.contextmanager
def echo_server(netns: str, port: int) -> Iterator[EchoServer]:
    server = EchoServer(netns, port)
    try:
        yield server
    finally:
        server.close()


def tcp_connect(netns: str, dst: str, port: int) -> socket.socket:
    with in_netns(netns):
        sock = socket.create_connection((dst, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return bytes(buf)


def tcp_echo(netns: str, dst: str, port: int, payload: bytes) -> bytes:
    """Send ``payload`` and read its echo at the same time (a large one would fill both windows)."""
    with tcp_connect(netns, dst, port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        try:
            return recv_exactly(sock, len(payload))
        finally:
            sender.join(timeout=5)


def udp_echo(netns: str, dst: str, port: int, payload: bytes, *, df: bool = True) -> bytes:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        if df:
            sock.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
        sock.settimeout(0.5)
        for _ in range(6):
            sock.sendto(payload, (dst, port))
            with contextlib.suppress(TimeoutError):
                return sock.recvfrom(1 << 16)[0]
    raise TimeoutError(f"no UDP echo from {dst}:{port}")


def tcp_retransmits(netns: str) -> int:
    with in_netns(netns), open("/proc/thread-self/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


# ---------------------------------------------------------------------- capture


@dataclass
class Frame:
    eth_src: str
    outer: dict
    inner: dict
    wire_len: int  # the frame's length on the wire (Ethernet header included)


def _ipv4(raw: bytes) -> dict:
    ver_ihl, tos, tot_len, ident, frag, ttl, proto, _csum = struct.unpack_from("!BBHHHBBH", raw)
    ihl = (ver_ihl & 0xF) * 4
    header = raw[:ihl]
    total = sum(struct.unpack(f"!{ihl // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return {
        "version": ver_ihl >> 4,
        "ihl": ihl,
        "tos": tos,
        "tot_len": tot_len,
        "id": ident,
        "df": bool(frag & 0x4000),
        "frag": frag & 0x3FFF,
        "ttl": ttl,
        "proto": proto,
        "csum_ok": total == 0xFFFF,
        "src": socket.inet_ntoa(raw[12:16]),
        "dst": socket.inet_ntoa(raw[16:20]),
        "l4": raw[ihl:],
    }


def read_ipip_pcap(path: str) -> list[Frame]:
    """IPv4-in-IPv4 frames of an Ethernet pcap (snaplen >= the headers)."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    assert struct.unpack_from(endian + "I", data, 20)[0] == 1, "not an Ethernet capture"
    frames, off = [], 24
    while off + 16 <= len(data):
        _, _, incl, orig = struct.unpack_from(endian + "IIII", data, off)
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if struct.unpack_from("!H", pkt, 12)[0] != 0x0800:
            continue
        outer = _ipv4(pkt[14:])
        if outer["proto"] != 4:
            continue
        inner = _ipv4(outer["l4"])
        sport, dport = struct.unpack_from("!HH", inner["l4"]) if inner["proto"] in (6, 17) else (0, 0)
        inner.update(sport=sport, dport=dport)
        frames.append(Frame(pkt[6:12].hex(":"), outer, inner, orig))
    return frames


@contextlib.contextmanager
def capture(netns: str, iface: str, path: str, expr: str = "ip proto 4") -> Iterator[None]:
    """tcpdump -w inside ``netns`` while the block runs, headers only (snaplen 128).

    ``--immediate-mode``: without it packets wait in the capture ring for up to a second and are
    lost when tcpdump is stopped; ``-Z root``: Debian's tcpdump otherwise drops to its own user,
    which cannot write into pytest's tmp_path.
    """
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-B",
            "16384",
            "-i",
            iface,
            "-nn",
            "-U",
            "-s",
            "128",
            "-w",
            path,
            expr,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on ...": the capture is armed
        assert "listening" in line, line
        yield
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tcpdump_text(path: str) -> str:
    return subprocess.run(["tcpdump", "-nn", "-v", "-r", path], capture_output=True, text=True).stdout


def assert_standard_ipip(frame: Frame, hops: int = 0) -> None:
    """The header Linux's ip_tunnel_xmit writes for Calico's tunl0 (ttl inherit, tos 0, nopmtudisc);
    ``hops``: routers the outer packet crossed before the capture point (each decrements its TTL)."""
    o, i = frame.outer, frame.inner
    assert (o["version"], o["ihl"], o["proto"]) == (4, 20, 4)
    assert o["csum_ok"], "outer IPv4 header checksum"
    assert o["tot_len"] == i["tot_len"] + 20
    assert o["ttl"] + hops == i["ttl"], "outer TTL inherited from the inner packet"
    assert o["df"] == i["df"], "DF copied from the inner packet"
    assert o["frag"] == 0 and i["frag"] == 0, "no fragments"
    assert o["tos"] == i["tos"] & 3, "outer TOS: the inner ECN bits only"
    assert i["csum_ok"]


# ---------------------------------------------------------------------- tests


def test_tcp_and_udp_cross_subnet_are_standard_ipip_on_the_wire(lab: Lab, tmp_path) -> None:
    a, b = lab.nodes["a"], lab.nodes["b"]
    pcap = str(tmp_path / "rb.pcap")
    with echo_server(b.pod_ns, 7001), capture(lab.router, "rb", pcap):
        assert tcp_echo(a.pod_ns, b.pod_ip, 7001, b"t" * 1400) == b"t" * 1400
        assert udp_echo(a.pod_ns, b.pod_ip, 7001, b"u" * 1200) == b"u" * 1200
        # host network -> remote pod: out through the tunnel, the answer comes back routed
        assert tcp_echo(a.ns, b.pod_ip, 7001, b"h" * 100) == b"h" * 100
    frames = read_ipip_pcap(pcap)
    for frame in frames:
        assert_standard_ipip(frame, hops=1 if frame.outer["src"] == a.ip else 0)  # captured behind the router
    pairs = {
        (f.outer["src"], f.outer["dst"], f.inner["src"], f.inner["dst"], f.inner["proto"]) for f in frames
    }
    for proto in (6, 17):
        assert (a.ip, b.ip, a.pod_ip, b.pod_ip, proto) in pairs, pairs
        assert (b.ip, a.ip, b.pod_ip, a.pod_ip, proto) in pairs, pairs
    assert any(
        f.inner["proto"] == 6 and f.inner["dport"] == 7001 and f.inner["tot_len"] >= 1400 for f in frames
    )
    text = tcpdump_text(pcap)
    assert "proto IPIP (4)" in text and "bad cksum" not in text
    assert f"{a.ip} > {b.ip}: IP" in text and f"{a.pod_ip}." in text
    for node in (a, b):
        stats = node.tunnel.stats()
        assert stats["encap_ok"] > 0 and stats["decap_ok"] > 0, stats
        assert stats["encap_error"] == stats["decap_error"] == 0, stats


def test_same_subnet_goes_straight_to_the_node(lab: Lab, tmp_path) -> None:
    a, c = lab.nodes["a"], lab.nodes["c"]
    pcap = str(tmp_path / "rc.pcap")
    with Netlink.open(a.ns) as nl:
        a_mac = nl.link_get("eth0").mac
    with echo_server(c.pod_ns, 7002), capture(lab.router, "rc", pcap):
        assert tcp_echo(a.pod_ns, c.pod_ip, 7002, b"s" * 1000) == b"s" * 1000
        assert udp_echo(a.pod_ns, c.pod_ip, 7002, b"v" * 100) == b"v" * 100
    frames = [f for f in read_ipip_pcap(pcap) if f.outer["src"] == a.ip]
    assert frames and all(f.outer["dst"] == c.ip for f in frames)
    for frame in frames:
        assert_standard_ipip(frame)
        assert frame.eth_src == a_mac, "bridged from A, not routed by the router"
        assert frame.outer["ttl"] == 63  # pod 64, decremented once by node A; no router hop
    assert {f.inner["proto"] for f in frames} == {6, 17}


def test_pod_mtu_sized_packets_cross_without_fragmentation(lab: Lab, tmp_path) -> None:
    """1400-byte and full pod-MTU (1480) packets cross; every frame on the wire is <= 1500 bytes.

    veth passes GSO packets whole, so node A's uplink is limited to one segment per packet
    (gso_max_size 1500): the kernel then segments the encapsulated GSO packets in software before
    transmitting them, as for a NIC without IPIP offload, and the capture sees the real frames.
    """
    a, b = lab.nodes["a"], lab.nodes["b"]
    pcap = str(tmp_path / "br1.pcap")
    bulk = os.urandom(1 << 20)
    _ip("-n", a.ns, "link", "set", "eth0", "gso_max_size", "1500")
    try:
        with echo_server(b.pod_ns, 7003), capture(lab.router, "br1", pcap, f"ip proto 4 and src host {a.ip}"):
            assert tcp_echo(a.pod_ns, b.pod_ip, 7003, b"x" * 1400) == b"x" * 1400
            # a full pod-MTU datagram: 1452 + 8 (UDP) + 20 (IP) = 1480 bytes, DF set
            assert udp_echo(a.pod_ns, b.pod_ip, 7003, b"m" * 1452) == b"m" * 1452
            assert tcp_echo(a.pod_ns, b.pod_ip, 7003, bulk) == bulk
    finally:
        _ip("-n", a.ns, "link", "set", "eth0", "gso_max_size", "65536")
    with in_netns(a.pod_ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, 10, 2)
        with pytest.raises(OSError, match="Message too long"):
            sock.sendto(b"m" * 1453, (b.pod_ip, 7003))  # the pod MTU stops it at the source
    frames = read_ipip_pcap(pcap)
    for frame in frames:
        assert_standard_ipip(frame)
        assert frame.wire_len - 14 <= 1500
    full = [f for f in frames if f.inner["tot_len"] == POD_MTU]
    assert {f.inner["proto"] for f in full} == {6, 17}, "full-size TCP segments and the 1480-byte datagram"
    assert sum(f.inner["proto"] == 6 for f in full) > 100, "the bulk transfer crossed in full-size segments"
    assert all(f.outer["tot_len"] == 1500 for f in full)


def _prog_ids(node: Node) -> tuple[int | None, int | None]:
    egress = [f.prog_id for f in bpf.tc_filters("tunl0", "egress", node.ns) if f.pref == TC_PREF]
    ingress = [f.prog_id for f in bpf.tc_filters("eth0", "ingress", node.ns) if f.pref == TC_PREF]
    return (egress[0] if egress else None, ingress[0] if ingress else None)


class Stream:
    """A TCP connection pa -> pb echoing a small message every 2 ms; records the longest wait."""

    def __init__(self, a: Node, b: Node, port: int) -> None:
        self.sock = tcp_connect(a.pod_ns, b.pod_ip, port)
        self.stop = threading.Event()
        self.max_gap = 0.0
        self.count = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                start = time.monotonic()
                msg = self.count.to_bytes(8, "big") * 8
                self.sock.sendall(msg)
                assert recv_exactly(self.sock, len(msg)) == msg
                self.max_gap = max(self.max_gap, time.monotonic() - start)
                self.count += 1
                time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def test_ensure_sync_and_restart_do_not_interrupt_a_flow(lab: Lab) -> None:
    a, b = lab.nodes["a"], lab.nodes["b"]
    before = {n.name: _prog_ids(n) for n in (a, b)}
    entries = {n.name: n.tunnel.entries() for n in (a, b)}
    retrans = {n: tcp_retransmits(n) for n in (a.pod_ns, b.pod_ns)}
    with echo_server(b.pod_ns, 7004):
        stream = Stream(a, b, 7004)
        try:
            time.sleep(0.2)
            for node in (a, b):
                node.tunnel.ensure()
                node.tunnel.ensure()
                same = {o.block: o.ip for o in lab.nodes.values() if o is not node}
                assert node.tunnel.sync(same) == dict.fromkeys(
                    ("added", "updated", "deleted", "peers_added", "peers_deleted"), 0
                )
                # an agent restart: a new object over the same pins
                IPIPTunnel(
                    uplink="eth0",
                    netns=node.ns,
                    pin_dir=node.tunnel.pin_dir,
                    cache_dir=node.tunnel.cache_dir,
                    mode="bpf",
                ).ensure()
            assert {n.name: _prog_ids(n) for n in (a, b)} == before, "nothing was re-attached"
            # a new program (as after an upgrade): loaded, swapped in with one tc filter replace
            for node in (a, b):
                for entry in os.listdir(node.tunnel.pin_dir):
                    if entry.startswith("prog-"):
                        bpf.unpin_tree(os.path.join(node.tunnel.pin_dir, entry))
                node.tunnel.ensure()
            swapped = {n.name: _prog_ids(n) for n in (a, b)}
            assert all(swapped[n][0] != before[n][0] and swapped[n][1] != before[n][1] for n in before)
            # the pins lost entirely (bpffs remounted): the attached programs' maps are adopted
            bpf.unpin_tree(a.tunnel.pin_dir)
            a.tunnel.ensure()
            assert a.tunnel.entries() == entries["a"]
            time.sleep(0.2)
        finally:
            stream.close()
    assert stream.error is None, stream.error
    assert stream.count > 50
    assert stream.max_gap < 0.15, f"the flow stalled for {stream.max_gap * 1000:.0f} ms"
    assert {n: tcp_retransmits(n) for n in (a.pod_ns, b.pod_ns)} == retrans, "no segment was lost"
    assert {n.name: n.tunnel.entries() for n in (a, b)} == entries


def test_map_miss_and_unknown_peer_are_dropped_and_counted(lab: Lab) -> None:
    a, b = lab.nodes["a"], lab.nodes["b"]
    # a route via tunl0 without a map entry: the encap program drops (and counts) it
    with Netlink.open(a.ns) as nl:
        nl.route_add("10.244.9.0/26", gateway=b.ip, dev="tunl0", onlink=True)
    try:
        miss = a.tunnel.stats()["encap_miss"]
        with pytest.raises(TimeoutError):
            udp_echo(a.pod_ns, "10.244.9.5", 7005, b"lost")
        assert a.tunnel.stats()["encap_miss"] >= miss + 6
    finally:
        with Netlink.open(a.ns) as nl:
            nl.route_del("10.244.9.0/26")
    # IPIP to B from an address that is no node (the router): dropped before decapsulation
    unknown = b.tunnel.stats()["decap_unknown_peer"]
    inner = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28,
        1,
        0,
        64,
        17,
        0,
        socket.inet_aton("10.244.1.5"),
        socket.inet_aton(b.pod_ip),
    ) + struct.pack("!HHHH", 9, 7006, 8, 0)
    with in_netns(lab.router), socket.socket(socket.AF_INET, socket.SOCK_RAW, 4) as raw:
        raw.sendto(inner, (b.ip, 0))
    deadline = time.monotonic() + 2
    while b.tunnel.stats()["decap_unknown_peer"] == unknown and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.tunnel.stats()["decap_unknown_peer"] == unknown + 1


def test_tcp_throughput_tunnel_vs_plain_routing(lab: Lab) -> None:
    """iperf3 pa -> pb through the tunnel and with plain routing through the router, same pods."""
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3")
    a, b = lab.nodes["a"], lab.nodes["b"]
    with Netlink.open(lab.router) as nl:  # plain routing: the router knows the pod blocks
        nl.route_add(a.block, gateway=a.ip)
        nl.route_add(b.block, gateway=b.ip)
    server = subprocess.Popen(
        ["ip", "netns", "exec", b.pod_ns, "iperf3", "-s", "-p", "5299"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[float]] = {"tunnel": [], "plain": []}
    try:
        time.sleep(0.5)
        for _ in range(3):
            for mode in ("tunnel", "plain"):
                for node in (a, b):
                    routes = node.routes + (lab.tunnel_routes(node) if mode == "tunnel" else [])
                    assert RouteManager(node.ns).apply(routes).ok
                encap = a.tunnel.stats()["encap_ok"]
                client = ["iperf3", "-c", b.pod_ip, "-p", "5299", "-t", "1", "-J"]
                out = subprocess.run(
                    ["ip", "netns", "exec", a.pod_ns, *client],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                ).stdout
                results[mode].append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
                encapsulated = a.tunnel.stats()["encap_ok"] - encap
                assert (encapsulated > 1000) if mode == "tunnel" else (encapsulated == 0)
    finally:
        server.terminate()
        server.wait(timeout=10)
        for node in (a, b):
            RouteManager(node.ns).apply(node.routes + lab.tunnel_routes(node))
        with Netlink.open(lab.router) as nl:
            nl.route_del(a.block, missing_ok=True)
            nl.route_del(b.block, missing_ok=True)
    tunnel, plain = statistics.median(results["tunnel"]), statistics.median(results["plain"])
    print(
        f"\niperf3 pod->pod, median of 3 x 1 s: tunnel {tunnel:.2f} Gbit/s, plain {plain:.2f} Gbit/s, "
        f"ratio {tunnel / plain:.2f} (runs: {results})"
    )
    assert tunnel > 0.5 * plain
