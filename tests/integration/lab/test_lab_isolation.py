"""Isolation with real traffic in a lab, both profiles: anti-spoofing by IP and MAC (frames forged
with an AF_PACKET socket inside a pod), the node control plane closed to pods (BGP, the agent's
metrics port, etcd) while nodes still reach it, and a pod reaching another node's host governed by
NetworkPolicy egress exactly as Kubernetes says (open, default deny, ipBlock allow)."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import secrets
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from tcp_check import TcpServer, connect, wait_connect

from podnet.calc.policy_status import PolicyReport, conditions_for
from podnet.cni import agent_api as api
from podnet.dataplane.netns import in_netns
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import probe
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource
from podnet.model.core import ANNOTATION_CILIUM_HOST

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

UDP_PORT = 7777
HOST_PORT = 8081  # a plain TCP server on the nodes (not control plane)
METRICS_PORT = 9099  # what the lab passes as --metrics (on 127.0.0.1; we also listen on the node IP)
LAYOUT = [("a", "node-1"), ("b", "node-1"), ("c", "node-2")]


# ---------------------------------------------------------------------------------------- helpers


def ip_json(*args: str) -> list[dict]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10, check=True)
    return json.loads(done.stdout or "[]")


def checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def frame(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP (checksum 0, allowed in IPv4), built by hand."""
    udp = struct.pack("!HHHH", 40000, UDP_PORT, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        17,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return (
        bytes.fromhex(dst_mac.replace(":", ""))
        + bytes.fromhex(src_mac.replace(":", ""))
        + b"\x08\x00"
        + header
        + udp
    )


def send_frames(netns: str, frames: list[bytes]) -> None:
    with in_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind(("eth0", 0))
        for data in frames:
            sock.send(data)


def udp_listener(netns: str) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", UDP_PORT))
    return sock


def received(sock: socket.socket, seconds: float) -> set[bytes]:
    got: set[bytes] = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.add(sock.recv(2048))
        except TimeoutError:
            break
    return got


def drops(names: LabNames, node: str) -> list[str]:
    answer = api.call(names.agent_socket(node), {"verb": "DROPS", "since": 0}, timeout=10)
    assert answer.get("ok"), answer
    return [d["prefix"] for d in answer["drops"]]


def wait_drop(names: LabNames, node: str, start: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.startswith(start) for p in drops(names, node)):
        assert time.monotonic() < deadline, f"no drop logged with {start!r}: {drops(names, node)}"
        time.sleep(0.2)


def netpol(name: str, egress: list | None) -> dict:
    spec: dict = {"podSelector": {}, "policyTypes": ["Egress"]}
    if egress is not None:
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "iso"},
        "spec": spec,
    }


def wait_programmed(store: ResourceStore, policy: str, nodes: list[str], timeout: float = 20.0) -> None:
    """Wait until ``iso/policy`` shows ``Accepted: True (Programmed)`` on exactly ``nodes``, as
    ``podnet get netpol -o yaml`` computes it from the agents' reports."""
    deadline = time.monotonic() + timeout
    while True:
        version = int(store.get(lookup("netpol"), policy, "iso").metadata.resource_version or 0)
        items, _ = store.store.list(store.layout.policy_status_prefix())
        reports = [PolicyReport.from_json(item.value) for item in items]
        accepted = {c["type"]: c for c in conditions_for(f"iso/{policy}", version, reports)}["Accepted"]
        if accepted["reason"] == "Programmed" and accepted["message"] == f"programmed on {', '.join(nodes)}":
            return
        assert time.monotonic() < deadline, f"iso/{policy} not programmed on {nodes}: {accepted}"
        time.sleep(0.1)


@contextlib.contextmanager
def policies(store: ResourceStore) -> Iterator[Callable[[str, list | None], None]]:
    """``apply(name, egress)`` applies an egress policy of ``iso``; each one applied is deleted at the
    end. A failed deletion never hides the test's own failure: it is added to it as a note."""
    applied: list[str] = []

    def apply(name: str, egress: list | None) -> None:
        store.apply([parse_resource(netpol(name, egress))])
        applied.append(name)

    try:
        yield apply
    except BaseException as failure:
        for name in applied:
            try:
                store.delete(lookup("netpol"), name, "iso")
            except Exception as exc:
                failure.add_note(f"cleanup could not delete policy iso/{name} either: {exc!r}")
        raise
    for name in applied:
        store.delete(lookup("netpol"), name, "iso")


# ------------------------------------------------------------------------------------------- lab


@pytest.fixture(scope="module", params=["calico", "cilium"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[LabNames, object, ResourceStore, dict[str, str]]]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=2, profile=request.param, underlay=random_underlay(), bgp=request.param == "calico")
    try:
        info = cluster.up(spec, names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "iso"}}]
        for name, node in LAYOUT:
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": "iso"},
                    "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                }
            )
        store.apply([parse_resource(d) for d in docs])
        deadline = time.monotonic() + 30
        while True:
            ips = {
                p.metadata.name: p.status.pod_ip
                for p in store.list(lookup("pods"), "iso")
                if p.status and p.status.phase == "Running" and p.status.pod_ip
            }
            if len(ips) == len(LAYOUT):
                break
            assert time.monotonic() < deadline, ips
            time.sleep(0.05)
        # routes between the nodes (BIRD's sessions come up a few seconds after lab up): every pod
        # pings every other before a test counts what arrived
        for src, dst in itertools.permutations(ips, 2):
            while not probe(names.pod_ns("iso", src), ips[dst], 0, "ICMP", timeout=0.5).ok:
                assert time.monotonic() < deadline + 30, f"{src} never reached {dst}"
        yield names, info.topology, store, ips
    finally:
        cluster.teardown(names)
        clean(names)


# ----------------------------------------------------------------------------------------- tests


def test_pods_send_only_their_own_ip_and_mac(lab):
    names, _, _, ips = lab
    src_ns = names.pod_ns("iso", "a")
    own_mac = ip_json("-n", src_ns, "link", "show", "eth0")[0]["address"]
    gateway = ip_json("-n", src_ns, "route", "show", "default")[0]["gateway"]
    gw_mac = next(
        n["lladdr"] for n in ip_json("-n", src_ns, "neigh", "show", "dev", "eth0") if n["dst"] == gateway
    )
    fake_mac = "02:00:5e:10:20:30"
    for dst, impostor in (("b", "c"), ("c", "b")):  # same node, other node; impersonate the other pod
        listener = udp_listener(names.pod_ns("iso", dst))
        try:
            sent = {
                b"genuine": frame(gw_mac, own_mac, ips["a"], ips[dst], b"genuine"),
                b"spoofed-ip": frame(gw_mac, own_mac, ips[impostor], ips[dst], b"spoofed-ip"),
                b"spoofed-mac": frame(gw_mac, fake_mac, ips["a"], ips[dst], b"spoofed-mac"),
            }
            got: set[bytes] = set()
            for _ in range(3):  # the first genuine frame may wait for the destination's ARP
                send_frames(src_ns, list(sent.values()))
                got |= received(listener, 0.5)
                if b"genuine" in got:
                    break
            assert got == {b"genuine"}, f"to {dst}: received {got}"
        finally:
            listener.close()
    wait_drop(names, "node-1", "pns:")
    prefixes = drops(names, "node-1")
    assert any(p.endswith(":mac") for p in prefixes) and any(p.endswith(":spoof") for p in prefixes), prefixes


def router_ip(store: ResourceStore, node: str, timeout: float = 10.0) -> str:
    """The node's router IP as its agent published it (``network.cilium.io/ipv4-cilium-host``)."""
    deadline = time.monotonic() + timeout
    while True:
        annotations = store.get(lookup("nodes"), node).metadata.annotations or {}
        if annotations.get(ANNOTATION_CILIUM_HOST):
            return annotations[ANNOTATION_CILIUM_HOST]
        assert time.monotonic() < deadline, f"{node}'s agent never published its router IP"
        time.sleep(0.1)


def test_control_plane_closed_to_pods_but_not_to_nodes(lab):
    names, topo, store, _ = lab
    pod_ns = names.pod_ns("iso", "a")
    node1, node2 = topo.node("node-1"), topo.node("node-2")
    # the agent's API socket: root only (the CNI plugin, root, reached it to wire these pods)
    mode = stat.S_IMODE(os.stat(names.agent_socket("node-1")).st_mode)
    assert mode & 0o077 == 0, oct(mode)
    # metrics/health as an agent started with --metrics 0.0.0.0:9099 would serve it, and a harmless port
    servers = [TcpServer(h.netns, h.ip, port) for h in (node1, node2) for port in (METRICS_PORT, HOST_PORT)]
    try:
        targets = [(node1.ip, METRICS_PORT), (node2.ip, METRICS_PORT), (topo.etcd.ip, topo.etcd_client_port)]
        if topo.spec.bgp:
            targets += [(node1.ip, 179), (node2.ip, 179)]
        if topo.spec.profile == "cilium":  # each node's router IP (cilium_host), published as Cilium does
            for host in (node1, node2):
                router = router_ip(store, host.name)
                servers.append(TcpServer(host.netns, router, METRICS_PORT))
                targets.append((router, METRICS_PORT))
        for ip, port in targets:
            for origin in (node1, node2):  # the nodes themselves (own node and the other) reach it
                assert connect(origin.netns, ip, port) == "ok", (origin.name, ip, port)
            assert connect(pod_ns, ip, port) == "timeout", (ip, port)
        for node in (node1, node2):  # the rest of the nodes stays open to pods (no policy)
            assert connect(pod_ns, node.ip, HOST_PORT) == "ok"
        wait_drop(names, "node-1", "pnc:")
        # no NetworkPolicy opens it: allow all egress, the control plane stays closed
        with policies(store) as apply:
            apply("allow-all", [{}])
            wait_programmed(store, "allow-all", [node1.name, node2.name])
            for ip, port in targets:
                assert connect(pod_ns, ip, port) == "timeout", (ip, port)
    finally:
        for server in servers:
            server.close()


def test_other_nodes_hosts_follow_network_policy_egress(lab):
    names, topo, store, ips = lab
    pod_ns = names.pod_ns("iso", "a")
    nodes = [topo.node("node-1"), topo.node("node-2")]
    servers = [TcpServer(n.netns, n.ip, HOST_PORT) for n in nodes]
    try:
        with policies(store) as apply:
            for node in nodes:  # no policy: allowed (own node through input, the other through forward)
                wait_connect(pod_ns, node.ip, HOST_PORT, "ok")
            apply("deny-egress", None)
            for node in nodes:
                wait_connect(pod_ns, node.ip, HOST_PORT, "timeout")
            wait_drop(names, "node-1", "pnd:")
            underlay = str(ipaddress.ip_network(topo.spec.underlay, strict=False))
            apply("nodes", [{"to": [{"ipBlock": {"cidr": underlay}}]}])
            for node in nodes:
                wait_connect(pod_ns, node.ip, HOST_PORT, "ok")
            # pods are outside the ipBlock: still denied under the default deny
            wait_connect(pod_ns, ips["c"], UDP_PORT, "timeout", timeout=3)
    finally:
        for server in servers:
            server.close()
