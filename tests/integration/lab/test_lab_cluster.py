"""A whole lab cluster, used the way a user uses it: pods applied as YAML, real traffic between
them across nodes, CNI chaining (portmap, bandwidth), CHECK, deletion, and ``down`` leaving the
machine exactly as it was."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from lab_support import agent_metric, until

from podnet.dataplane.netns import run_in_netns
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.ipam import IPAM
from podnet.ipam.liveness import ClusterView
from podnet.lab import cluster
from podnet.lab.cleanup import clean, snapshot_host
from podnet.lab.cni_runtime import CNIError, CNIRuntime
from podnet.lab.naming import LabNames
from podnet.lab.netns import spawn
from podnet.lab.probe import probe, probe_all, truth_table
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)


def pod(name: str, node: str | None = None, ports=((8080, "TCP"), (5353, "UDP")), **extra) -> dict:
    spec: dict = {
        "containers": [
            {
                "name": "c",
                "image": "agnhost",
                "ports": [
                    {"containerPort": p, "protocol": proto, **extra.get("port", {})} for p, proto in ports
                ],
            }
        ]
    }
    if node:
        spec["nodeName"] = node
    meta = {"name": name, "namespace": "t", "labels": {"app": "echo"}}
    meta.update(extra.get("meta", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[cluster.LabInfo, ResourceStore]]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    before = snapshot_host(names)
    spec = LabSpec(nodes=3, underlay=random_underlay())
    info = cluster.up(spec, names)
    store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
    try:
        yield info, store
    finally:
        report = cluster.teardown(names)
        leftovers = clean(names)
        after = snapshot_host(names)
        assert report.ok, report.errors
        assert leftovers.empty, leftovers.lines()
        assert before.diff(after) == {}, before.diff(after)


def wait_running(store: ResourceStore, keys: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pods = {f"{p.metadata.namespace}/{p.metadata.name}": p for p in store.list(lookup("pods"))}
        ready = {k: p for k, p in pods.items() if k in keys and p.status and p.status.phase == "Running"}
        if len(ready) == len(keys):
            return ready
        assert time.monotonic() < deadline, f"not Running: {sorted(keys - set(ready))}"
        time.sleep(0.05)


def test_pods_on_every_node_reach_each_other_over_tcp_and_udp(lab):
    info, store = lab
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}]
    docs += [pod(f"p{i}", f"node-{1 + i % 3}") for i in range(6)]
    docs += [pod("floating")]  # no nodeName: the lab schedules it
    docs += [pod("sctp", "node-1", ports=((8080, "TCP"), (9999, "SCTP")))]
    store.apply([parse_resource(d) for d in docs])
    keys = {f"t/p{i}" for i in range(6)} | {"t/floating", "t/sctp"}
    pods = wait_running(store, keys)
    assert pods["t/floating"].spec.node_name in {"node-1", "node-2", "node-3"}
    assert "SCTP" in (pods["t/sctp"].status.message or "")
    assert len({p.status.pod_ip for p in pods.values()}) == len(pods), "pod IPs must be unique"
    for p in pods.values():
        assert p.status.pod_ip.startswith("10.244.") and p.status.host_ip

    sources = {k: info.names.pod_ns(*k.split("/")) for k in pods}
    targets = {k: p.status.pod_ip for k, p in pods.items()}
    for port, proto in ((8080, "TCP"), (5353, "UDP")):
        if proto == "UDP":
            targets_udp = {k: v for k, v in targets.items() if k != "t/sctp"}
            table = truth_table(probe_all(sources, targets_udp, port, proto, 2.0, expect_names=True))
        else:
            table = truth_table(probe_all(sources, targets, port, proto, 2.0, expect_names=True))
        failed = [(s, d) for s, row in table.items() for d, ok in row.items() if not ok]
        assert not failed, f"{proto} failed: {failed}"

    # The CLI's matrix, as a script would use it.
    env = dict(os.environ, PODNET_ETCD_ENDPOINTS=info.etcd_endpoint, PODNET_LAB_PREFIX=info.names.prefix)
    out = subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", "lab", "probe", "--matrix", "8080/TCP", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["port"] == 8080 and doc["protocol"] == "TCP"
    assert all(all(row.values()) for row in doc["results"].values()) and len(doc["results"]) == len(pods)


def test_deleting_a_pod_removes_its_network_and_releases_its_address(lab):
    info, store = lab
    store.apply([parse_resource(pod("gone", "node-2"))])
    p = wait_running(store, {"t/gone"})["t/gone"]
    netns = info.names.pod_ns("t", "gone")
    assert os.path.exists(f"/run/netns/{netns}")
    store.delete(lookup("pods"), "gone", "t")
    deadline = time.monotonic() + 10
    ipam = IPAM(store.store, store.layout)
    while os.path.exists(f"/run/netns/{netns}") or ipam.allocation(p.status.pod_ip):
        assert time.monotonic() < deadline, "pod network not removed"
        time.sleep(0.05)
    view = ClusterView.read(store)
    report = ipam.check(view.live_handles(ipam.snapshot().allocations()), view.nodes)
    assert report.ok, report.summary()
    node_routes = run_in_netns("pnt" and info.topology.node("node-2").netns, ["ip", "route"]).stdout
    assert p.status.pod_ip not in node_routes


def test_host_port_and_bandwidth_through_chained_plugins(lab):
    info, store = lab
    limited = pod(
        "limited",
        "node-1",
        ports=((5201, "TCP"),),
        meta={"annotations": {"kubernetes.io/ingress-bandwidth": "10M"}},
    )
    hostport = pod("hostport", "node-3", ports=((8080, "TCP"),), port={"hostPort": 30080})
    store.apply([parse_resource(limited), parse_resource(hostport)])
    wait_running(store, {"t/limited", "t/hostport"})
    # portmap: node-3's address, port 30080, from another node, answered by the pod.
    node3 = info.topology.node("node-3")
    result = probe(info.topology.node("node-2").netns, node3.ip, 30080, "TCP", 2.0, expect="t/hostport")
    assert result.ok, result.detail
    # bandwidth: a TBF on the host side of the pod's veth, and a transfer into the pod held to ~10 Mbit/s.
    ns = info.names.pod_ns("t", "limited")
    ip = store.get(lookup("pods"), "limited", "t").status.pod_ip
    server = spawn(["iperf3", "-s", "-1", "-p", "5202"], netns=ns)
    try:
        time.sleep(0.3)
        out = run_in_netns(
            info.names.pod_ns("t", "p1"),
            ["iperf3", "-c", ip, "-p", "5202", "-t", "2", "-J"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        rate = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        assert rate < 15e6, f"ingress limit 10M not enforced: {rate / 1e6:.1f} Mbit/s"
    finally:
        server.stop()


def test_cni_check_notices_a_removed_address_and_route(lab):
    info, store = lab
    store.apply([parse_resource(pod("checked", "node-1"))])
    p = wait_running(store, {"t/checked"})["t/checked"]
    names = info.names
    with open(names.state_file) as f:
        state = json.load(f)
    container_id = state["meta"]["pods"]["t/checked"]["container_id"]
    runtime = CNIRuntime(
        names.cni_conf_dir("node-1"),
        [cluster.cni_bin_dir(names)],
        os.path.join(names.node_dir("node-1"), "cni", "cache"),
        netns_exec=info.topology.node("node-1").netns,
    )
    netns_path = f"/run/netns/{names.pod_ns('t', 'checked')}"
    args = {"K8S_POD_NAMESPACE": "t", "K8S_POD_NAME": "checked"}
    runtime_podnet_only = CNIRuntime(
        None,
        [cluster.cni_bin_dir(names)],
        runtime.cache_dir,
        netns_exec=info.topology.node("node-1").netns,
        conflist=dict(runtime.conflist, plugins=runtime.conflist["plugins"][:1]),
    )
    runtime_podnet_only.check(container_id, netns_path, "eth0", args)  # all as wired: no error
    run_in_netns(
        names.pod_ns("t", "checked"),
        ["ip", "addr", "del", f"{p.status.pod_ip}/32", "dev", "eth0"],
        check=True,
    )
    with pytest.raises(CNIError) as info_err:
        runtime_podnet_only.check(container_id, netns_path, "eth0", args)
    assert p.status.pod_ip in str(info_err.value)


def _node_state(netns: str) -> tuple[str, str]:
    routes = run_in_netns(
        netns, ["ip", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    links = run_in_netns(netns, ["ip", "-o", "link"], capture_output=True, text=True).stdout
    return routes, "\n".join(sorted(line.split(":")[1] for line in links.splitlines()))


def test_agent_kill_9_and_restart_changes_nothing_and_keeps_traffic(lab):
    info, store = lab
    store.apply([parse_resource(pod("steady", "node-1")), parse_resource(pod("peer", "node-2"))])
    pods = wait_running(store, {"t/steady", "t/peer"})
    netns = info.topology.node("node-1").netns
    before = _node_state(netns)
    seconds = cluster.restart_agent(info.names, "node-1")
    # The new agent synced and applied (at least once) without touching a single route.
    until(
        "the restarted agent applying its state", lambda: agent_metric(netns, "podnet_dataplane_syncs_total{")
    )
    assert agent_metric(netns, "podnet_route_operations_total{") == 0
    assert _node_state(netns) == before
    src = info.names.pod_ns("t", "peer")
    assert probe(src, pods["t/steady"].status.pod_ip, 8080, "TCP", 2.0, expect="t/steady").ok
    assert seconds < 10
    # And the restarted agent serves CNI: a new pod on that node comes up.
    store.apply([parse_resource(pod("after-restart", "node-1"))])
    wait_running(store, {"t/after-restart"})


def test_cni_gc_releases_attachments_not_in_the_valid_list(lab):
    info, store = lab
    store.apply([parse_resource(pod("keep", "node-3")), parse_resource(pod("collect", "node-3"))])
    pods = wait_running(store, {"t/keep", "t/collect"})
    names = info.names
    with open(names.state_file) as f:
        running = json.load(f)["meta"]["pods"]
    on_node3 = [p for p in running.values() if p["node"] == "node-3"]
    valid = [
        {"containerID": p["container_id"], "ifname": "eth0"} for p in on_node3 if p["key"] != "t/collect"
    ]
    with open(os.path.join(names.cni_conf_dir("node-3"), "10-podnet.conflist")) as f:
        podnet_conf = json.load(f)["plugins"][0]
    runtime = CNIRuntime(
        None,
        [cluster.cni_bin_dir(names)],
        str(info.names.state_dir) + "/gc-cache",
        netns_exec=info.topology.node("node-3").netns,
        conflist={"cniVersion": "1.1.0", "name": cluster.NETWORK_NAME, "plugins": [podnet_conf]},
    )
    runtime.gc(valid)
    # DEL after GC, twice: both succeed (the attachment is already gone; DEL is idempotent).
    collect = running["t/collect"]
    netns = f"/run/netns/{names.pod_ns('t', 'collect')}"
    for _ in range(2):
        runtime.delete(
            collect["container_id"], netns, "eth0", {"K8S_POD_NAMESPACE": "t", "K8S_POD_NAME": "collect"}
        )
    ipam = IPAM(store.store, store.layout)
    assert ipam.allocation(pods["t/collect"].status.pod_ip) is None
    assert ipam.allocation(pods["t/keep"].status.pod_ip) is not None
    src = info.names.pod_ns("t", "p0")
    assert probe(src, pods["t/keep"].status.pod_ip, 8080, "TCP", 2.0).ok
    assert not probe(src, pods["t/collect"].status.pod_ip, 8080, "TCP", 0.5).ok


def test_cilium_profile_wires_pods_through_the_nodes_router_address():
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=2, profile="cilium", underlay=random_underlay())
    info = cluster.up(spec, names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        store.apply(
            [parse_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}})]
            + [parse_resource(pod(f"c{i}", f"node-{1 + i % 2}")) for i in range(4)]
        )
        pods = wait_running(store, {f"t/c{i}" for i in range(4)})
        node1 = info.topology.node("node-1").netns
        router = (
            run_in_netns(
                node1,
                ["ip", "-4", "-o", "addr", "show", "dev", "cilium_host"],
                capture_output=True,
                text=True,
            )
            .stdout.split()[3]
            .split("/")[0]
        )
        inside = run_in_netns(names.pod_ns("t", "c0"), ["ip", "route"], capture_output=True, text=True).stdout
        assert f"default via {router} dev eth0" in inside
        assert "lxc" in run_in_netns(node1, ["ip", "-o", "link"], capture_output=True, text=True).stdout
        table = truth_table(
            probe_all(
                {k: names.pod_ns(*k.split("/")) for k in pods},
                {k: p.status.pod_ip for k, p in pods.items()},
                8080,
                "TCP",
                2.0,
            )
        )
        assert all(all(row.values()) for row in table.values()), table
    finally:
        cluster.teardown(names)
        clean(names)
