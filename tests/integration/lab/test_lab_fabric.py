"""A 2-subnet, 4-node lab for real: links, routes, sysctls, etcd through the fabric and the proxy,
pod servers, probe matrices and spawned processes in their cgroup and namespace."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from podnet.dataplane.netns import in_netns, run_in_netns
from podnet.dataplane.sysctl import read as read_sysctl
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.etcd_server import EtcdServer
from podnet.lab.etcd_proxy import start_etcd_proxy
from podnet.lab.netns import create_cgroup, netns_id, proc_cgroup, proc_netns_id, proc_start_time, spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.probe import probe, probe_all, probe_matrix, truth_table
from podnet.lab.state import ProcessRecord

pytestmark = [pytest.mark.root, pytest.mark.etcd]  # its etcd fixture runs a real etcd in the lab


@pytest.fixture(scope="module")
def etcd(lab4):
    """A real etcd in the lab's etcd namespace, recorded in the lab state."""
    topo, names = lab4.topo, lab4.names
    server = EtcdServer(
        host=topo.etcd.ip,
        client_port=topo.etcd_client_port,
        peer_port=topo.etcd_peer_port,
        netns=topo.etcd.netns,
        data_dir=os.path.join(names.state_dir, "etcd"),
        log_path=os.path.join(names.log_dir, "etcd.log"),
    )
    with in_netns(topo.etcd.netns):  # its readiness check must connect from inside the lab
        server.start()
    assert server.process is not None
    pid = server.process.pid
    lab4.state.record_process(ProcessRecord("etcd", pid, proc_start_time(pid) or 0, topo.etcd.netns))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(lab4, etcd):
    topo, names = lab4.topo, lab4.names
    spawned, endpoint = start_etcd_proxy(
        upstream=f"{topo.etcd.ip}:{topo.etcd_client_port}",
        netns=topo.etcd.netns,
        lab_prefix=names.prefix,
        log=os.path.join(names.log_dir, "etcd-proxy.log"),
    )
    lab4.state.record_process(ProcessRecord.of("etcd-proxy", spawned))
    lab4.state.set_meta(etcd_endpoint=endpoint)
    yield endpoint
    spawned.stop()


@pytest.fixture(scope="module")
def podservers(lab4):
    """A podserver on every node: 8080/TCP, 8053/UDP, answering with the node's name."""
    names = lab4.names
    for node in lab4.topo.nodes:
        ready = os.path.join(names.node_dir(node.name), "podserver.ready")
        sp = spawn(
            podserver_command(node.name, ["8080/TCP", "8053/UDP"], names.prefix, ready),
            netns=node.netns,
            log=os.path.join(names.node_log_dir(node.name), "podserver.log"),
            lab_prefix=names.prefix,
        )
        lab4.state.record_process(ProcessRecord.of(f"podserver:{node.name}", sp))
        deadline = time.monotonic() + 10
        while not os.path.exists(ready):
            assert sp.alive() and time.monotonic() < deadline
            time.sleep(0.01)
    return {n.name: n.ip for n in lab4.topo.nodes}


def test_addresses_routes_and_sysctls(lab4):
    topo = lab4.topo
    n1, n4 = topo.node("node-1"), topo.node("node-4")
    assert (n1.subnet, n4.subnet) == (0, 1)
    out = run_in_netns(n4.netns, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert f"inet {n4.attachments[0].address}" in out
    assert f"default via {n4.gateway} dev eth0" in run_in_netns(n4.netns, ["ip", "route"]).stdout
    for host in (n1, n4, topo.router):
        assert read_sysctl("net.ipv4.ip_forward", host.netns) == "1"
        assert read_sysctl("net.ipv4.conf.all.rp_filter", host.netns) == "0"
    assert read_sysctl("net.ipv4.ip_forward", topo.etcd.netns) == "0"
    assert read_sysctl("net.ipv6.conf.all.disable_ipv6", topo.fabric_ns) == "1"
    bridge_ports = run_in_netns(topo.fabric_ns, ["ip", "-o", "link", "show", "master", "br1"]).stdout
    assert "node-3@" in bridge_ports and "node-4@" in bridge_ports and "router-1@" in bridge_ports
    assert read_sysctl("net.ipv4.ip_forward") in ("0", "1")  # the root namespace is only read


def test_ping_same_subnet_and_across_the_router(lab4):
    topo = lab4.topo
    n1, n2, n3, n4 = (topo.node(f"node-{i}") for i in range(1, 5))
    pairs = [
        (n1.netns, n2.ip),
        (n1.netns, n4.ip),
        (n4.netns, n3.ip),
        (n3.netns, n1.ip),
        (n4.netns, topo.etcd.ip),
    ]
    results = probe_matrix(pairs, 0, "ICMP", 2.0)
    assert [r.ok for r in results] == [True] * len(pairs), [r.detail for r in results]
    # Across subnets the path is via the router.
    assert (
        run_in_netns(n1.netns, ["ip", "route", "get", n4.ip]).stdout.split()[2]
        == topo.router.attachments[0].ip
    )


def test_etcd_reachable_from_nodes_of_both_subnets(lab4, etcd):
    for node in ("node-1", "node-4"):
        with in_netns(lab4.topo.node(node).netns):
            store = EtcdDatastore([lab4.topo.etcd_endpoint], timeout=2.0, retry_deadline=2.0)
            store.put(f"/test/{node}", node.encode())
            assert store.get(f"/test/{node}").value == node.encode()
            store.close()


def test_root_namespace_reaches_etcd_only_through_the_proxy(lab4, proxy):
    assert proxy.startswith("http://127.0.0.1:")
    store = EtcdDatastore([proxy], timeout=3.0, retry_deadline=3.0)
    t0 = time.perf_counter()
    rev = store.put("/proxy/a", b"1")
    assert store.get("/proxy/a").value == b"1"
    first = time.perf_counter() - t0

    # A watch streams through the proxy.
    watch = store.watch("/proxy/", rev + 1)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(e for _, e in zip(range(3), watch, strict=False)))
    reader.start()
    for i in range(3):
        store.put(f"/proxy/w{i}", str(i).encode())
    reader.join(10)
    watch.close()
    assert [e.key for e in seen] == ["/proxy/w0", "/proxy/w1", "/proxy/w2"]

    # Many clients at once.
    errors = []

    def client(i: int) -> None:
        s = EtcdDatastore([proxy], timeout=5.0, retry_deadline=5.0)
        try:
            for j in range(5):
                s.put(f"/proxy/c{i}/{j}", b"x")
            assert len(s.list(f"/proxy/c{i}/")[0]) == 5
        except Exception as exc:  # collected, asserted below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    t0 = time.perf_counter()
    for _ in range(50):
        store.get("/proxy/a")
    per_get = (time.perf_counter() - t0) / 50
    store.close()
    print(f"\netcd via proxy: first put+get {first * 1000:.1f} ms, get {per_get * 1000:.2f} ms")
    # The root namespace itself has no address or route into the lab.
    assert lab4.topo.etcd.ip not in run_in_netns(None, ["ip", "-4", "addr"]).stdout


def test_podserver_answers_tcp_and_udp(lab4, podservers):
    n1 = lab4.topo.node("node-1")
    for dst in ("node-2", "node-4"):
        tcp = probe(n1.netns, podservers[dst], 8080, "TCP", 1.0, expect=dst)
        udp = probe(n1.netns, podservers[dst], 8053, "UDP", 1.0, expect=dst)
        assert tcp.ok and udp.ok, (tcp, udp)
    curl = run_in_netns(n1.netns, ["curl", "-s", "-m", "2", f"http://{podservers['node-3']}:8080/"])
    assert json.loads(curl.stdout)["pod"] == "node-3"


@pytest.mark.parametrize("proto,port", [("TCP", 8080), ("UDP", 8053)])
def test_probe_matrix_truth_table_within_one_timeout(lab4, podservers, proto, port):
    topo = lab4.topo
    sources = {n.name: n.netns for n in topo.nodes}
    unreachable = str(topo.subnets[0].cidr).rsplit(".", 1)[0] + ".250"  # nobody has it: ARP fails
    targets = dict(podservers) | {"etcd": topo.etcd.ip, "ghost": unreachable}
    timeout = 1.0
    t0 = time.perf_counter()
    table = probe_all(sources, targets, port, proto, timeout, expect_names=True)
    elapsed = time.perf_counter() - t0
    expected = {s: {d: d in podservers for d in targets} for s in sources}
    assert truth_table(table) == expected
    assert table["node-1"]["etcd"].detail == "refused"  # no server there: answered at once
    assert "timeout" in table["node-1"]["ghost"].detail
    assert elapsed < timeout + 0.5, elapsed


def test_spawn_joins_cgroup_then_netns(lab4):
    names = lab4.names
    node = lab4.topo.node("node-2")
    cgroup = create_cgroup(names.pod_cgroup(node.name, "uid-1234"))
    sp = spawn(["sleep", "60"], netns=node.netns, cgroup=cgroup, lab_prefix=names.prefix)
    lab4.state.record_process(ProcessRecord.of("sleeper", sp))
    try:
        assert sp.alive() and sp.cmd == ["sleep", "60"] and sp.start_time > 0
        rel = "/" + os.path.relpath(cgroup, names.cgroup_root)
        deadline = time.monotonic() + 5
        while proc_netns_id(sp.pid) != netns_id(node.netns) and time.monotonic() < deadline:
            time.sleep(0.01)  # until `ip netns exec` has exec'd sleep
        assert proc_cgroup(sp.pid) == rel
        assert proc_netns_id(sp.pid) == netns_id(node.netns)
        assert os.getsid(sp.pid) == sp.pid  # own session
    finally:
        sp.stop()
    assert not sp.alive()
