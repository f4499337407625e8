"""Each way of crossing between nodes, end to end in a lab: pods on every node reach each other over
TCP and UDP, and a capture on the fabric shows what is on the wire."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from lab_support import agent_metric, until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import probe_all, truth_table
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)


def pods_on_every_node(store: ResourceStore, nodes: int, names: LabNames) -> dict:
    """One pod per node (TCP 8080, UDP 5353), Running, and the cluster converged on them."""
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "m"}}]
    ports = [{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]
    for i in range(nodes):
        spec = {"nodeName": f"node-{i + 1}", "containers": [{"name": "c", "ports": ports}]}
        docs.append(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": "m"}, "spec": spec}
        )
    store.apply([parse_resource(d) for d in docs])
    deadline = time.monotonic() + 30
    while True:
        pods = {f"m/{p.metadata.name}": p for p in store.list(lookup("pods"), "m")}
        if all(p.status and p.status.phase == "Running" for p in pods.values()) and len(pods) == nodes:
            break
        assert time.monotonic() < deadline, "pods not Running"
        time.sleep(0.05)
    # A pod is Running before every other node has programmed the route to its block (as in any
    # cluster): wait, bounded, until the nodes have converged; the tests then assert on fresh probes.
    sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
    targets = {k: p.status.pod_ip for k, p in pods.items()}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        table = truth_table(probe_all(sources, targets, 8080, "TCP", 1.0))
        if all(all(row.values()) for row in table.values()):
            break
        time.sleep(0.1)
    return pods


def capture(netns: str, device: str, bpf_filter: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "tcpdump",
            "-nn",
            "-v",
            "-l",
            "-i",
            device,
            "-c",
            str(count),
            bpf_filter,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@dataclass
class SharedLab:
    names: LabNames
    info: cluster.LabInfo
    store: ResourceStore
    made_pods: dict | None = None

    def pods(self) -> dict:
        """One pod per node (:func:`pods_on_every_node`), made by the first test that asks."""
        if self.made_pods is None:
            self.made_pods = pods_on_every_node(self.store, self.info.topology.spec.nodes, self.names)
        return self.made_pods


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[Callable[..., SharedLab]]:
    """``shared_lab(profile=, encapsulation=)``: a 3-node lab of that kind, shared by the module's
    tests that ask for the same kind (each leaves it working as it found it: a test that changes a
    lab for good builds its own); every lab is removed at the end of the module."""
    labs: dict[tuple[str, str], SharedLab] = {}
    made: list[LabNames] = []

    def get(profile: str = "calico", encapsulation: str = "none") -> SharedLab:
        if (profile, encapsulation) not in labs:
            names = LabNames(f"pnt{secrets.token_hex(2)}-")
            made.append(names)
            spec = LabSpec(nodes=3, profile=profile, encapsulation=encapsulation, underlay=random_underlay())
            info = cluster.up(spec, names)
            labs[profile, encapsulation] = SharedLab(
                names, info, ResourceStore(EtcdDatastore([info.etcd_endpoint]))
            )
        return labs[profile, encapsulation]

    yield get
    for names in made:  # each removed whatever happens to the others (a lab that failed to come up too)
        clean(names)
        clean(names)


@pytest.mark.parametrize(
    ("profile", "encapsulation", "wire_filter", "wire_text"),
    [
        ("calico", "none", "tcp port 8080", "10.244."),
        ("calico", "vxlan", "udp port 4789", "VXLAN"),
        ("cilium", "vxlan", "udp port 8472", ".8472"),
        ("calico", "ipip", "ip proto 4", "proto IPIP (4)"),
    ],
)
def test_mode_carries_pod_traffic(shared_lab, profile, encapsulation, wire_filter, wire_text):
    lab = shared_lab(profile, encapsulation)
    names, info = lab.names, lab.info
    pods = lab.pods()
    sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
    targets = {k: p.status.pod_ip for k, p in pods.items()}
    cap = capture(info.topology.fabric_ns, "br0", wire_filter, 3)
    time.sleep(0.5)
    for port, proto in ((8080, "TCP"), (5353, "UDP")):
        table = truth_table(probe_all(sources, targets, port, proto, 2.0, expect_names=True))
        assert all(all(row.values()) for row in table.values()), (proto, table)
    out, _ = cap.communicate(timeout=10)
    assert wire_text in out, out
    if encapsulation == "none":
        assert "VXLAN" not in out and "ipip" not in out.lower()
    # Pods get the MTU the mode leaves room for.
    mtu = {"vxlan": 1450, "ipip": 1480}.get(encapsulation, 1500)
    link = subprocess.run(
        ["ip", "netns", "exec", sources["m/p0"], "ip", "link", "show", "eth0"],
        capture_output=True,
        text=True,
    ).stdout
    assert f"mtu {mtu} " in link


SOURCE_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
while True:
    c, a = s.accept(); c.sendall(a[0].encode() + b"\\n"); c.close()
"""


def test_nat_outgoing_masquerades_only_traffic_that_leaves_the_pools(shared_lab):
    """An "external" host (TEST-NET-3, 203.0.113.1) on the lab's fabric: pods reach it with their
    node's address while the pool has natOutgoing, not at all without (it has no route back), and
    pod-to-pod traffic keeps the pod's address."""
    import sys

    from podnet.dataplane.netlink import Netlink
    from podnet.lab.netns import spawn
    from podnet.lab.probe import probe

    lab = shared_lab("calico", "none")
    names, info, store = lab.names, lab.info, lab.store
    pods = lab.pods()
    ext = names.ext_ns  # the lab's client outside the cluster, on the nodes' subnet
    ext_ip = info.topology.external.ip
    with Netlink.open(ext) as nl:
        nl.addr_add("lo", "203.0.113.1/32")
    for host in info.topology.nodes:
        with Netlink.open(host.netns) as nl:
            nl.route_add("203.0.113.0/24", gateway=ext_ip, dev="eth0")
    servers = [
        spawn([sys.executable, "-c", SOURCE_SERVER, "9000"], netns=ext),
        spawn([sys.executable, "-c", SOURCE_SERVER, "9000"], netns=names.pod_ns("m", "p1")),
    ]
    try:
        time.sleep(0.5)
        src = names.pod_ns("m", "p0")
        node1 = info.topology.node("node-1").ip
        out = probe(src, "203.0.113.1", 9000, "TCP", 2.0)
        assert out.ok and out.answer.strip() == node1, out
        inside = probe(src, pods["m/p1"].status.pod_ip, 9000, "TCP", 2.0)
        assert inside.ok and inside.answer.strip() == pods["m/p0"].status.pod_ip, inside
        store.patch(lookup("ippools"), "default-ipv4-ippool", {"spec": {"natOutgoing": False}})
        deadline = time.monotonic() + 5
        while probe(src, "203.0.113.1", 9000, "TCP", 0.5).ok:
            assert time.monotonic() < deadline, "natOutgoing: false did not take effect"
        store.patch(lookup("ippools"), "default-ipv4-ippool", {"spec": {"natOutgoing": True}})
        deadline = time.monotonic() + 5
        while not probe(src, "203.0.113.1", 9000, "TCP", 0.5).ok:
            assert time.monotonic() < deadline, "natOutgoing: true did not come back"
    finally:
        for server in servers:
            server.stop()


def test_pool_mode_change_and_node_removal_take_effect_on_running_nodes():
    from podnet.dataplane.netns import run_in_netns

    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=3, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        pods = pods_on_every_node(store, 3, names)
        node1 = info.topology.node("node-1").netns

        def routes() -> str:
            return run_in_netns(node1, ["ip", "route"], capture_output=True, text=True).stdout

        def wait_for(check, what: str, timeout: float = 5.0) -> float:
            started = time.monotonic()
            while not check():
                assert time.monotonic() - started < timeout, f"{what} did not happen: {routes()}"
                time.sleep(0.02)
            return time.monotonic() - started

        # The seed's kind of tuning, live: the pool switches to VXLAN; no agent restarts.
        store.patch(lookup("ippools"), "default-ipv4-ippool", {"spec": {"vxlanMode": "Always"}})
        wait_for(lambda: routes().count("dev vxlan.calico") == 2, "switch to VXLAN")
        sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
        targets = {k: p.status.pod_ip for k, p in pods.items()}
        # node-1 has switched; the other nodes (their VTEPs, FDB entries) converge within moments
        deadline = time.monotonic() + 5.0
        while True:
            table = truth_table(probe_all(sources, targets, 8080, "TCP", 2.0, expect_names=True))
            if all(all(row.values()) for row in table.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(all(row.values()) for row in table.values()), table
        # A node removed from the datastore leaves every other node's routes and FDB quickly.
        node3_vtep = store.get(lookup("nodes"), "node-3").metadata.annotations[
            "projectcalico.org/IPv4VXLANTunnelAddr"
        ]
        store.delete(lookup("nodes"), "node-3")
        seconds = wait_for(lambda: node3_vtep not in routes(), "removal of node-3's routes", 2.0)
        fdb = run_in_netns(
            node1, ["bridge", "fdb", "show", "dev", "vxlan.calico"], capture_output=True, text=True
        ).stdout
        assert info.topology.node("node-3").ip not in fdb
        assert seconds < 2.0
    finally:
        cluster.teardown(names)
        clean(names)


def test_ipip_crosssubnet_encapsulates_only_between_subnets():
    """4 nodes in 2 subnets joined by a router: node-1 → node-2 (same subnet) is plain IP on br0,
    node-1 → node-3 (other subnet) is IP protocol 4 between the node addresses on br1."""
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=4, subnets=2, encapsulation="ipip-crosssubnet", underlay=random_underlay())
    info = cluster.up(spec, names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        pods = pods_on_every_node(store, 4, names)
        assert {info.topology.node(f"node-{i}").subnet for i in (1, 2)} != {
            info.topology.node(f"node-{i}").subnet for i in (3, 4)
        }
        sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
        targets = {k: p.status.pod_ip for k, p in pods.items()}
        for port, proto in ((8080, "TCP"), (5353, "UDP")):
            table = truth_table(probe_all(sources, targets, port, proto, 2.0, expect_names=True))
            assert all(all(row.values()) for row in table.values()), (proto, table)
        from podnet.lab.probe import probe

        same = capture(info.topology.fabric_ns, "br0", f"tcp port 8080 and host {targets['m/p1']}", 1)
        cross = capture(info.topology.fabric_ns, "br1", "ip proto 4", 1)
        time.sleep(0.5)
        assert probe(sources["m/p0"], targets["m/p1"], 8080, "TCP", 2.0).ok
        assert probe(sources["m/p0"], targets["m/p2"], 8080, "TCP", 2.0).ok
        same_out, _ = same.communicate(timeout=10)
        cross_out, _ = cross.communicate(timeout=10)
        assert targets["m/p1"] in same_out and "IPIP" not in same_out
        node1, node3 = info.topology.node("node-1").ip, info.topology.node("node-3").ip
        assert "proto IPIP (4)" in cross_out and node1 in cross_out and node3 in cross_out
        assert targets["m/p2"] in cross_out  # the inner packet, intact
    finally:
        cluster.teardown(names)
        clean(names)


@pytest.mark.parametrize("encapsulation", ["vxlan", "ipip"])
def test_agent_restart_keeps_tunnels_routes_and_flows(shared_lab, encapsulation):
    """kill -9 the agent of a node with a tunnel and start it again: no route written, the tunnel
    device, FDB/map entries and programs stay, and a TCP connection held open across it survives."""
    import socket as socketlib

    from podnet.dataplane.netns import in_netns, run_in_netns

    lab = shared_lab("calico", encapsulation)
    names, info = lab.names, lab.info
    pods = lab.pods()
    node1 = info.topology.node("node-1").netns

    def kernel_state() -> tuple[str, ...]:
        cmds = [
            ["ip", "route"],
            ["ip", "-d", "link", "show"],
            ["bridge", "fdb", "show"],
            ["tc", "filter", "show", "dev", "eth0", "ingress"],
        ]
        return tuple(run_in_netns(node1, c, capture_output=True, text=True).stdout for c in cmds)

    # A connection from node-1's pod to node-2's pod, open across the restart (once the nodes
    # have converged: a pod is Running before every other node has its block's route).
    deadline = time.monotonic() + 10
    while True:
        try:
            with in_netns(names.pod_ns("m", "p0")):
                conn = socketlib.create_connection((pods["m/p1"].status.pod_ip, 8080), timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "pods never reached each other"
            time.sleep(0.1)
    try:
        before = kernel_state()
        cluster.restart_agent(names, "node-1")
        netns = names.node_ns("node-1")
        until(
            "the restarted agent applying its state",
            lambda: agent_metric(netns, "podnet_dataplane_syncs_total{"),
        )
        assert kernel_state() == before
        assert conn.recv(64) == b"m/p1\n"  # the server answers after its 50 ms wait
    finally:
        conn.close()
    sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
    table = truth_table(probe_all(sources, {k: p.status.pod_ip for k, p in pods.items()}, 8080, "TCP", 2.0))
    assert all(all(row.values()) for row in table.values()), table


def _wait_bird_routes(netns: str, count: int, timeout: float = 20.0) -> str:
    from podnet.dataplane.netns import run_in_netns

    deadline = time.monotonic() + timeout
    while True:
        routes = run_in_netns(netns, ["ip", "route"], capture_output=True, text=True).stdout
        if routes.count("proto bird") >= count:
            return routes
        assert time.monotonic() < deadline, f"BIRD did not program {count} routes: {routes}"
        time.sleep(0.1)


@pytest.mark.parametrize("reflectors", [False, True])
def test_bgp_distributes_every_block(reflectors):
    """BIRD on every node, full mesh — or, with the mesh off, two route reflectors (nodes with a
    RouteReflectorClusterID) that every node peers with: every node learns every block (proto bird,
    plain next hop, no tunnel) and pods on all nodes reach each other over TCP and UDP."""
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=4, bgp=True, underlay=random_underlay())
    info = cluster.up(spec, names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        if reflectors:
            for node in ("node-1", "node-2"):
                store.patch(
                    lookup("nodes"),
                    node,
                    {
                        "metadata": {
                            "labels": {"route-reflector": "true"},
                            "annotations": {"projectcalico.org/RouteReflectorClusterID": "244.0.0.1"},
                        }
                    },
                )
            peer_spec = {"nodeSelector": "all()", "peerSelector": "route-reflector == 'true'"}
            store.apply(
                [
                    parse_resource(
                        {
                            "apiVersion": "projectcalico.org/v3",
                            "kind": "BGPPeer",
                            "metadata": {"name": "peer-with-rrs"},
                            "spec": peer_spec,
                        }
                    )
                ]
            )
            store.patch(lookup("bgpconfig"), "default", {"spec": {"nodeToNodeMeshEnabled": False}})
        pods = pods_on_every_node(store, 4, names)
        for host in info.topology.nodes:
            routes = _wait_bird_routes(host.netns, 3)
            assert "tunl0" not in routes and "vxlan" not in routes
        sources = {k: names.pod_ns("m", k.split("/")[1]) for k in pods}
        targets = {k: p.status.pod_ip for k, p in pods.items()}
        wire = capture(info.topology.fabric_ns, "br0", f"tcp port 8080 and host {targets['m/p3']}", 1)
        time.sleep(0.5)
        for port, proto in ((8080, "TCP"), (5353, "UDP")):
            table = truth_table(probe_all(sources, targets, port, proto, 2.0, expect_names=True))
            assert all(all(row.values()) for row in table.values()), (proto, table)
        seen, _ = wire.communicate(timeout=10)
        assert targets["m/p3"] in seen and "IPIP" not in seen  # BGP routes: plain pod packets on the wire
        out = subprocess.run(
            [sys.executable, "-m", "podnet.cli.main", "node", "status", "node-3"],
            capture_output=True,
            text=True,
            env=dict(os.environ, PODNET_LAB_PREFIX=names.prefix),
        ).stdout
        assert "Established" in out
        if reflectors:  # a client peers with the two reflectors only
            assert out.count("Established") == 2 and "node specific" in out and "mesh" not in out
        else:
            assert out.count("node-to-node mesh") == 3
    finally:
        cluster.teardown(names)
        clean(names)
