"""Services through ``table ip podnet_services`` in a node netns, proven with real traffic.

    ext netns (192.168.50.2)  ──veth──  node netns (eth0 192.168.50.1/24, default via ext)
                                          │ cali veths (Calico wiring)
        pod-a1 10.244.1.11   pod-a2 10.244.1.12   pod-a3 10.244.1.13   client 10.244.1.20

Each backend pod runs a podserver (8080/TCP and 5353/UDP answer with the pod's name); pod-a1 also
runs a tiny server thread on 9090/TCP that answers with the peer address it sees (to tell client
addresses from masqueraded ones). Frontends are built directly as :class:`Frontend`s (the
calculation has its own tests); the proxy is :class:`ServiceProxy` on the node netns.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import pytest

from podnet.calc.services import CLUSTER_IP, NODE_PORT, Backend, Frontend, ServicePlan
from podnet.dataplane import sysctl
from podnet.dataplane.endpoint import CALICO_GATEWAY, EndpointSpec, host_ifname_for, wire_endpoint
from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import in_netns
from podnet.dataplane.services_nft import ServiceProxy
from podnet.lab.probe import Probe, probe, run_probes

pytestmark = pytest.mark.root

NODE_IP, EXT_IP = "192.168.50.1", "192.168.50.2"
POD_CIDR = "10.244.0.0/16"
BACKENDS = {"a1": "10.244.1.11", "a2": "10.244.1.12", "a3": "10.244.1.13"}
CLIENT_IP = "10.244.1.20"
WEB, DNS, STICKY, EMPTY, PEER = "10.96.0.10", "10.96.0.53", "10.96.0.11", "10.96.0.99", "10.96.0.12"


def be(name: str, port: int = 8080) -> Backend:
    return Backend(BACKENDS[name], port, "node-1", f"default/{name}")


def fe(
    service: str,
    ip: str | None,
    port: int,
    proto: str = "TCP",
    backends: tuple[Backend, ...] = (),
    **kw: object,
) -> Frontend:
    kind = NODE_PORT if ip is None else CLUSTER_IP
    return Frontend(f"default/{service}", "", kind, ip, port, proto, backends, **kw)  # type: ignore[arg-type]


def services(
    web: tuple[str, ...] = ("a1", "a2", "a3"), dns: tuple[str, ...] = ("a1", "a2", "a3")
) -> ServicePlan:
    all3 = tuple(be(n) for n in ("a1", "a2", "a3"))
    peer = (be("a1", 9090),)
    fronts = [
        fe("web", WEB, 80, backends=tuple(be(n) for n in web)),
        fe("web", None, 30080, backends=tuple(be(n) for n in web)),
        fe("dns", DNS, 53, "UDP", tuple(be(n, 5353) for n in dns)),
        fe("sticky", STICKY, 80, backends=all3, affinity_seconds=600),
        fe("empty", EMPTY, 80),
        fe("empty", EMPTY, 53, "UDP"),
        fe("empty", None, 30099),
        fe("peer", PEER, 9090, backends=peer),
        fe("peer-local", None, 30090, backends=peer, local_only=True),
        fe("peer-cluster", None, 30091, backends=peer),
    ]
    return ServicePlan("node-1", tuple(sorted(fronts)), (NODE_IP,))


@dataclass
class Cluster:
    node: str  # netns name
    node_path: str
    ext: str  # netns path
    pods: dict[str, str]  # name -> netns path
    proxy: ServiceProxy = field(init=False)

    def __post_init__(self) -> None:
        self.proxy = ServiceProxy(self.node)

    def answers(self, src: str, ip: str, port: int, proto: str = "TCP", n: int = 60) -> collections.Counter:
        results = run_probes([Probe(src, ip, port, proto) for _ in range(n)], timeout=2.0)
        failed = [r.detail for r in results if not r.ok]
        assert not failed, failed[:5]
        return collections.Counter(r.answer for r in results)


def _peer_server(netns: str, port: int) -> tuple[socket.socket, threading.Thread]:
    """A TCP server in ``netns`` answering each connection with ``<peer address>\\n``."""
    with in_netns(netns):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, (peer, _) = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(f"{peer}\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.fixture
def cluster(make_netns: Callable[[str], str]) -> Iterator[Cluster]:
    node_path = make_netns("node")
    node = os.path.basename(node_path)
    ext = make_netns("ext")
    sysctl.write_many(sysctl.NODE_SYSCTLS, node_path)
    with Netlink.open(node_path) as nl:
        nl.link_add_veth("eth0", "eth0", peer_netns=ext, mtu=1500, up=True)
        nl.addr_add("eth0", f"{NODE_IP}/24")
    with Netlink.open(ext) as nl:
        nl.link_set("eth0", up=True)
        nl.addr_add("eth0", f"{EXT_IP}/24")
    # a real node has a default route: ClusterIPs are routed (then translated or refused) through it
    subprocess.run(["ip", "-n", node, "route", "add", "default", "via", EXT_IP], check=True)
    pods: dict[str, str] = {}
    procs: list[subprocess.Popen] = []
    listener = None
    try:
        for name, ip in [*BACKENDS.items(), ("client", CLIENT_IP)]:
            path = make_netns(name)
            wire_endpoint(
                EndpointSpec(
                    path,
                    "eth0",
                    host_ifname_for("cali", "default", name),
                    (ip,),
                    1500,
                    "calico",
                    CALICO_GATEWAY,
                ),
                host_netns=node_path,
            )
            pods[name] = path
            if name == "client":
                continue
            ready = f"/tmp/{os.path.basename(path)}.ready"
            cmd = [
                sys.executable,
                "-m",
                "podnet.lab.podserver",
                "--name",
                name,
                "--ready-file",
                ready,
                "--port",
                "8080/TCP",
                "--port",
                "5353/UDP",
            ]
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", os.path.basename(path), *cmd],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 10
            while not os.path.exists(ready):
                assert time.monotonic() < deadline, f"podserver {name} did not start"
                time.sleep(0.02)
            os.unlink(ready)
        listener, _ = _peer_server(pods["a1"], 9090)
        c = Cluster(node, node_path, ext, pods)
        yield c
        c.proxy.remove()
    finally:
        if listener is not None:  # shutdown wakes its blocked accept(); a bare close() would not,
            with contextlib.suppress(OSError):  # and the thread would accept() on a reused fd number
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_cluster_ip_spreads_over_backends_and_follows_scaling(cluster: Cluster) -> None:
    result = cluster.proxy.apply(services(), [POD_CIDR])
    assert result["mode"] == "full"
    client = cluster.pods["client"]
    spread = cluster.answers(client, WEB, 80)
    print("60 connections to the ClusterIP:", dict(spread))
    assert set(spread) == {"a1", "a2", "a3"}
    # from the node itself (a host-network process): nat output
    assert set(cluster.answers(cluster.node_path, WEB, 80, n=30)) <= {"a1", "a2", "a3"}

    down = cluster.proxy.apply(services(web=("a2",)), [POD_CIDR])
    assert down["mode"] == "partial"
    assert cluster.answers(client, WEB, 80, n=20) == {"a2": 20}
    up = cluster.proxy.apply(services(), [POD_CIDR])
    assert up["mode"] == "partial"
    assert set(cluster.answers(client, WEB, 80)) == {"a1", "a2", "a3"}
    assert cluster.proxy.apply(services(), [POD_CIDR])["mode"] == "noop"


def test_udp_service_spreads_and_a_removed_backend_loses_its_flows(cluster: Cluster) -> None:
    cluster.proxy.apply(services(), [POD_CIDR])
    client = cluster.pods["client"]
    spread = cluster.answers(client, DNS, 53, "UDP", n=45)
    print("45 UDP requests to the ClusterIP:", dict(spread))
    assert set(spread) == {"a1", "a2", "a3"}
    # one long-lived UDP socket (a resolver): its flow is pinned by conntrack to one backend
    with in_netns(client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(2.0)
        sock.connect((DNS, 53))

        def ask() -> str:
            sock.send(b"q\n")
            return sock.recv(100).decode().strip()

        first = ask()
        assert {ask() for _ in range(5)} == {first}
        rest = tuple(n for n in ("a1", "a2", "a3") if n != first)
        result = cluster.proxy.apply(services(dns=rest), [POD_CIDR])
        assert result["conntrack_deleted"] >= 1
        assert ask() in rest  # not stuck on the removed backend until the UDP timeout


def test_session_affinity_keeps_a_client_on_one_backend(cluster: Cluster) -> None:
    cluster.proxy.apply(services(), [POD_CIDR])
    for src in (cluster.pods["client"], cluster.pods["a3"]):
        answers = [probe(src, STICKY, 80, timeout=2.0).answer for _ in range(20)]
        assert len(set(answers)) == 1 and answers[0] in BACKENDS, answers
    # the same servers without affinity (WEB) spread: affinity is what pins
    assert len(cluster.answers(cluster.pods["client"], WEB, 80, n=30)) > 1


def test_nodeport_from_outside_the_node(cluster: Cluster) -> None:
    cluster.proxy.apply(services(), [POD_CIDR])
    spread = cluster.answers(cluster.ext, NODE_IP, 30080, n=45)
    print("45 connections to the NodePort from outside:", dict(spread))
    assert set(spread) == {"a1", "a2", "a3"}
    # externalTrafficPolicy Cluster: masqueraded (the backend sees the node); Local: the client
    assert probe(cluster.ext, NODE_IP, 30091, timeout=2.0).answer == NODE_IP
    assert probe(cluster.ext, NODE_IP, 30090, timeout=2.0).answer == EXT_IP
    # a pod and the node itself reach the NodePort on the node's address too
    assert probe(cluster.pods["client"], NODE_IP, 30080, timeout=2.0).ok
    assert probe(cluster.node_path, NODE_IP, 30080, timeout=2.0).ok
    # and the ClusterIP is not reachable from outside through the NodePort map (other port)
    assert not probe(cluster.ext, NODE_IP, 80, timeout=0.5).ok


def test_nodeport_only_serves_node_ports_but_not_cluster_ips(cluster: Cluster) -> None:
    proxy = ServiceProxy(cluster.node, nodeport_only=True)
    cluster.proxy = proxy
    proxy.apply(services(), [POD_CIDR])
    assert set(cluster.answers(cluster.ext, NODE_IP, 30080, n=30)) <= {"a1", "a2", "a3"}
    assert probe(cluster.ext, NODE_IP, 30099, timeout=0.5).detail == "refused"
    assert not probe(cluster.pods["client"], WEB, 80, timeout=0.3).ok  # left to the eBPF socket LB


def test_a_frontend_without_backends_refuses_at_once(cluster: Cluster) -> None:
    cluster.proxy.apply(services(), [POD_CIDR])
    cases = [
        ("pod TCP", Probe(cluster.pods["client"], EMPTY, 80, "TCP")),
        ("pod UDP", Probe(cluster.pods["client"], EMPTY, 53, "UDP")),
        ("node TCP", Probe(cluster.node_path, EMPTY, 80, "TCP")),
        ("node UDP", Probe(cluster.node_path, EMPTY, 53, "UDP")),
        ("external NodePort", Probe(cluster.ext, NODE_IP, 30099, "TCP")),
        ("pod NodePort", Probe(cluster.pods["client"], NODE_IP, 30099, "TCP")),
        ("ClusterIP, port not served", Probe(cluster.pods["client"], WEB, 81, "TCP")),
    ]
    for label, p in cases:
        result = run_probes([p], timeout=3.0)[0]
        print(f"{label}: {result.detail} in {result.elapsed * 1000:.1f} ms")
        # a datagram the node itself sends is rejected in OUTPUT: the kernel fails the send() with
        # EPERM (a dropped local packet) at once; everything else gets the TCP reset / ICMP error
        expected = ("refused", "Operation not permitted") if label == "node UDP" else ("refused",)
        assert result.detail in expected, (label, result)
        assert result.elapsed < 0.5, (label, result)
    # the same connect, in the plainest form: ECONNREFUSED from connect()
    with in_netns(cluster.pods["client"]):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(3.0)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            sock.connect((EMPTY, 80))
        assert time.monotonic() - started < 0.5
    # once it gets a backend, it answers
    plan = services()
    fronts = tuple(
        replace(f, backends=(be("a1"),)) if f.ip == EMPTY and f.port == 80 else f for f in plan.frontends
    )
    cluster.proxy.apply(replace(plan, frontends=fronts), [POD_CIDR])
    assert probe(cluster.pods["client"], EMPTY, 80, timeout=2.0).answer == "a1"


def test_hairpin_a_backend_reaches_its_own_service(cluster: Cluster) -> None:
    cluster.proxy.apply(services(), [POD_CIDR])
    a1 = cluster.pods["a1"]
    seen = probe(a1, PEER, 9090, timeout=2.0)
    assert seen.ok, seen
    assert seen.answer == NODE_IP  # masqueraded: a packet from itself would be a martian
    assert set(cluster.answers(a1, WEB, 80, n=30)) == {"a1", "a2", "a3"}
    # a client pod is not masqueraded: the backend sees the pod address
    assert probe(cluster.pods["client"], PEER, 9090, timeout=2.0).answer == CLIENT_IP
    # a host-network process is (it is outside the pod CIDR)
    assert probe(cluster.node_path, PEER, 9090, timeout=2.0).answer == NODE_IP


def test_nft_failure_raises_and_the_next_apply_is_a_full_resync(cluster: Cluster) -> None:
    proxy = cluster.proxy
    proxy.apply(services(), [POD_CIDR])
    plan = services()
    bad = replace(plan, frontends=(*plan.frontends, fe("x" * 300, "10.96.0.77", 80, backends=(be("a1"),))))
    with pytest.raises(DataplaneError, match="nft rejected"):
        proxy.apply(bad, [POD_CIDR])
    assert proxy.needs_full_resync
    assert probe(cluster.pods["client"], WEB, 80, timeout=2.0).ok  # the previous ruleset is in force
    assert proxy.apply(services(web=("a3",)), [POD_CIDR])["mode"] == "full"
    assert cluster.answers(cluster.pods["client"], WEB, 80, n=10) == {"a3": 10}
    proxy.remove()
    listing = subprocess.run(
        ["ip", "netns", "exec", cluster.node, "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "podnet_services" not in listing.stdout


def test_cost_of_1000_services(make_netns: Callable[[str], str]) -> None:
    node = os.path.basename(make_netns("scale"))
    fronts = []
    for i in range(1000):
        bs = tuple(
            Backend(f"10.244.{i // 250}.{(i % 250) + j}", 8080, "n", f"default/s{i}-{j}") for j in range(3)
        )
        fronts.append(
            Frontend(f"default/s{i}", "", CLUSTER_IP, f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP", bs)
        )
    plan = ServicePlan("n", tuple(sorted(fronts)), ())
    proxy = ServiceProxy(node)
    full = proxy.apply(plan, [POD_CIDR])
    changed = list(plan.frontends)
    changed[500] = replace(changed[500], backends=changed[500].backends[:2])
    partial = proxy.apply(replace(plan, frontends=tuple(changed)), [POD_CIDR])
    back = proxy.apply(plan, [POD_CIDR])
    print(
        f"\n1000 services x 3 backends: full apply {full['seconds'] * 1000:.0f} ms "
        f"({full['statements']} lines); one backend removed {partial['seconds'] * 1000:.0f} ms "
        f"({partial['statements']} statements); added back {back['seconds'] * 1000:.0f} ms"
    )
    assert (full["mode"], partial["mode"], back["mode"]) == ("full", "partial", "partial")
    assert partial["statements"] < 10
    proxy.remove()
