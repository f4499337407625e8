"""``down`` and ``clean`` leave the host exactly as before; a failed build rolls back; timings."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest

from podnet.dataplane.netns import netns_exists
from podnet.lab.cleanup import clean, down, snapshot_host
from podnet.lab.etcd_proxy import start_etcd_proxy
from podnet.lab.fabric import fabric_up
from podnet.lab.naming import LabError
from podnet.lab.netns import create_cgroup, create_netns, delete_netns, spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.probe import probe_all, truth_table
from podnet.lab.state import LabState, ProcessRecord, StateCorrupt

pytestmark = pytest.mark.root


def _populate(names, topo, state, tmp_path) -> dict:
    """What a running lab has: pod netns, pod servers, a pod process in its cgroup, the etcd proxy,
    root-namespace helpers marked only by their environment or only by the marker argument, and a
    file outside the state dir."""
    n1, n2 = topo.nodes[0], topo.nodes[1]
    pod_ns = names.pod_ns("default", "web-1")
    state.record_netns(pod_ns, "pod")
    create_netns(pod_ns)
    procs = {}
    for node in (n1, n2):
        procs[node.name] = spawn(
            podserver_command(node.name, ["8080/TCP"], names.prefix),
            netns=node.netns,
            lab_prefix=names.prefix,
        )
    cgroup = create_cgroup(names.pod_cgroup(n1.name, "uid-1"))
    procs["pod"] = spawn(["sleep", "300"], netns=pod_ns, cgroup=cgroup, lab_prefix=names.prefix)
    procs["proxy"], _ = start_etcd_proxy(
        upstream=f"{topo.etcd.ip}:2379", netns=topo.etcd.netns, lab_prefix=names.prefix
    )
    procs["helper"] = spawn(["sleep", "300"], lab_prefix=names.prefix)  # root netns, env marker only
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)", names.marker]
    procs["marked"] = spawn(sleeper)  # root netns, argument marker only
    for name, sp in procs.items():
        state.record_process(ProcessRecord.of(name, sp))
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    state.record_file(str(outside))
    return procs


def test_down_leaves_the_host_as_before(lab_names, lab_spec, tmp_path):
    names = lab_names()
    before = snapshot_host(names)
    topo, state, _ = fabric_up(lab_spec(nodes=3, subnets=2), names)
    procs = _populate(names, topo, state, tmp_path)
    during = snapshot_host(names)
    assert len(during.netns) == 3 + 4 + 1 and during.processes and during.cgroups  # nodes, infra, pod
    removed = down(names.state_dir)
    assert removed.ok, removed.errors
    assert len(removed.processes) == len(procs) and len(removed.namespaces) == 8
    assert not any(sp.alive() for sp in procs.values())
    assert not (tmp_path / "outside.txt").exists()
    assert snapshot_host(names).diff(before) == {}
    assert down(names.state_dir).empty  # idempotent


@pytest.mark.parametrize("crash", ["state-deleted", "state-corrupt"])
def test_clean_after_a_crash(lab_names, lab_spec, tmp_path, crash):
    names = lab_names()
    before = snapshot_host(names)
    topo, state, _ = fabric_up(lab_spec(nodes=2), names)
    procs = _populate(names, topo, state, tmp_path)
    os.kill(procs["node-1"].pid, signal.SIGKILL)  # a process died with the crash
    if crash == "state-deleted":
        os.unlink(state.path)
    else:
        with open(state.path, "w") as f:
            f.write('{"version": 1, "namesp')
        with pytest.raises(StateCorrupt):
            down(names.state_dir)
    removed = clean(names)
    assert removed.ok, removed.errors
    assert len(removed.namespaces) == 1 + 1 + 2 + 1 + 1  # fabric, etcd, ext, nodes, pod
    alive = [name for name, sp in procs.items() if sp.alive()]
    assert alive == []
    assert any("PODNET_LAB_MARKER" in p for p in removed.processes)  # the env-marked helper
    assert any(f"argument {names.marker}" in p for p in removed.processes)  # the arg-marked helper
    assert snapshot_host(names).diff(before) == {}
    assert clean(names).empty


def test_a_failed_build_rolls_back(lab_names, lab_spec):
    names = lab_names()
    before = snapshot_host(names)
    squatter = names.node_ns("node-2")
    create_netns(squatter)
    try:
        with pytest.raises(LabError, match="already exist"):
            fabric_up(lab_spec(nodes=3), names)
        assert netns_exists(squatter)  # not ours this time: left alone
        assert not os.path.exists(names.state_dir)
    finally:
        delete_netns(squatter)
    assert snapshot_host(names).diff(before) == {}


def test_a_build_that_fails_halfway_removes_what_it_made(lab_names, lab_spec, monkeypatch):
    import podnet.lab.fabric as fabric

    names = lab_names()
    before = snapshot_host(names)

    def boom(*args, **kwargs):
        raise OSError("injected failure")

    monkeypatch.setattr(fabric, "create_cgroup", boom)  # the last step
    with pytest.raises(OSError, match="injected"):
        fabric_up(lab_spec(nodes=2), names)
    assert snapshot_host(names).diff(before) == {}


def test_state_records_the_lab(make_lab):
    lab = make_lab(nodes=2)
    doc = LabState(lab.names.state_dir).load()
    assert doc["prefix"] == lab.names.prefix
    kinds = {n["kind"] for n in doc["namespaces"]}
    assert kinds == {"fabric", "etcd", "ext", "node"}
    assert doc["cgroups"] == [lab.names.cgroup_dir]
    assert doc["meta"]["topology"]["etcd"]["endpoint"] == lab.topo.etcd_endpoint
    json.dumps(doc)


def test_fabric_build_time_three_nodes(make_lab):
    lab = make_lab(nodes=3)
    print(f"\nfabric build, 3 nodes: {lab.report.elapsed * 1000:.0f} ms")
    assert lab.report.elapsed < 2.0


def test_nine_by_nine_matrix_takes_about_one_timeout(make_lab):
    lab = make_lab(nodes=9)
    print(f"\nfabric build, 9 nodes: {lab.report.elapsed * 1000:.0f} ms")
    names = lab.names
    for node in lab.topo.nodes:
        sp = spawn(
            podserver_command(node.name, ["80/TCP", "53/UDP"], names.prefix),
            netns=node.netns,
            lab_prefix=names.prefix,
        )
        lab.state.record_process(ProcessRecord.of(f"podserver:{node.name}", sp))
    sources = {n.name: n.netns for n in lab.topo.nodes}
    targets = {n.name: n.ip for n in lab.topo.nodes}
    deadline = time.monotonic() + 10
    while not all(truth_table(probe_all(sources, targets, 80, "TCP", 0.5))["node-1"].values()):
        assert time.monotonic() < deadline, "pod servers did not come up"
    timeout = 1.0
    for proto, port in (("TCP", 80), ("UDP", 53)):
        t0 = time.perf_counter()
        table = truth_table(probe_all(sources, targets, port, proto, timeout, expect_names=True))
        all_ok = time.perf_counter() - t0
        assert all(all(row.values()) for row in table.values())
        ghost = lab.topo.subnets[0].cidr.rsplit(".", 1)[0] + ".250"
        t0 = time.perf_counter()
        table = truth_table(probe_all(sources, targets | {"ghost": ghost}, port, proto, timeout))
        with_ghost = time.perf_counter() - t0
        assert [row["ghost"] for row in table.values()] == [False] * 9
        print(
            f"9x9 {proto}: all reachable {all_ok * 1000:.0f} ms; with a black hole {with_ghost * 1000:.0f} ms"
        )
        assert with_ghost < timeout + 0.5
