"""Faults with the traffic witness running, on a lab per profile (``podnet lab chaos`` does the
same by hand): kill -9 one agent, all agents, an in-place restart with a changed configuration,
etcd stopped, etcd black-holed for the agents while a policy is written (10 s here;
``PODNET_LONG=1`` makes both the issue's 60 s), and kill -9 inside a policy sync.

Each must interrupt no flow (pod→pod across nodes and through a ClusterIP, a request every 50 ms),
leave every route, FDB/neighbour entry, nftables object and BPF map of podnet's untouched (the
kernel's own change monitors see nothing, and each of them reported a change made on purpose
before and after the fault; the policy scenarios change the policy table on purpose), and keep
its scenario's promise (:func:`podnet.lab.chaos.problems`): agents idle while etcd is away, the
last good state kept, a policy written meanwhile enforced within 5 s of etcd's return, a policy
batch never half in the kernel and complete after the restart. A monitor killed before the fault
fails the scenario."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator

import pytest
from previous_release import previous_release_or_skip

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.chaos import ChaosLab, problems, render, run_scenario
from podnet.lab.cleanup import clean
from podnet.lab.kernel_watch import MONITORS, KernelWatch
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

OUTAGE = 60.0 if os.environ.get("PODNET_LONG") else 10.0
GAP_BOUND_MS = 1000.0  # a broken path shows as seconds (TCP retransmission); the figures are reported


PROFILES = [("calico", "ipip"), ("cilium", "vxlan")]


@pytest.fixture(scope="module", params=PROFILES, ids=["calico-ipip", "cilium-vxlan"])
def lab(request) -> Iterator[ChaosLab]:  # type: ignore[no-untyped-def]
    profile, encapsulation = request.param
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(
            LabSpec(nodes=3, profile=profile, encapsulation=encapsulation, underlay=random_underlay()), names
        )
        chaos = ChaosLab(names, ResourceStore(EtcdDatastore([info.etcd_endpoint])))
        chaos.ensure_workload()
        yield chaos
    finally:
        cluster.teardown(names)
        clean(names)


SCENARIOS = [
    "kill-agent",
    "kill-all-agents",
    "agent-upgrade",
    "etcd-outage",
    "etcd-blackhole",
    "kill-agent-mid-policy-sync",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fault_leaves_traffic_and_kernel_state_alone(lab: ChaosLab, scenario: str) -> None:
    report = run_scenario(lab, scenario, seconds=OUTAGE)
    print("\n" + render(report))
    assert problems(report) == [], report
    assert report["witness"]["flows"] >= 4 and report["witness"]["replies"] > 0
    assert report["witness"]["interrupted_flows"] == 0, report["flows"]
    assert report["witness"]["max_gap_ms"] < GAP_BOUND_MS, report["flows"]
    assert not any(report["kernel_changes"].values()), report["kernel_changes"]
    assert report["bpf_maps_changed"] == [] and report["bpf_maps_checked"] > 0
    if scenario in ("etcd-outage", "etcd-blackhole"):
        assert all(cpu < 10 for cpu in report["agent_cpu_percent_during_outage"].values()), report
        add = report["cni_add_during_outage"]  # kubelet creating a pod meanwhile: "try again later"
        assert add["code"] == 11 and "datastore" in add["message"] and add["seconds"] < 5.0, add
    if scenario == "etcd-blackhole":
        assert report["policy_open_at_end_of_outage"] and report["policy_enforced_seconds"] <= 5.0
    if scenario == "kill-agent-mid-policy-sync":
        assert len(report["rounds"]) == 3 and report["policy_changes"] > 0


def test_every_monitor_killed_before_the_fault_fails_the_scenario(lab: ChaosLab) -> None:
    """The scenario's verdict names each kernel monitor killed before the fault: one of every kind,
    each on another node, and each named on its own (every scenario goes through the same watch:
    tests/unit/lab/test_lab_chaos_report.py)."""
    killed = []

    def kill(watch: KernelWatch) -> None:
        for i, kind in enumerate(MONITORS):
            ns = lab.names.node_ns(lab.nodes[i % len(lab.nodes)])
            victim = next(m for m in watch.monitors if m.kind == kind and m.ns == ns)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim)

    report = run_scenario(lab, "kill-agent", before_fault=kill)
    died = [
        f"kernel monitor: `{' '.join(MONITORS[v.kind])}` in {v.ns} (pid {v.pid}) died (killed by SIGKILL)"
        for v in killed
    ]
    assert len(killed) == len(MONITORS) and sorted(problems(report)) == sorted(died), report
    assert report["witness"]["interrupted_flows"] == 0  # the fault itself held its promise


def test_agent_downgrade_then_upgrade_interrupts_no_flow(lab: ChaosLab) -> None:
    """Every agent rolled to the previous release and back, one by one with SIGTERM, under the
    witness: no flow interrupted (flows through a Service too), routes, neighbours, FDB and BPF
    maps untouched; only the policy and services tables, which the two versions render
    differently, are replaced (in one transaction each time).
    The previous release comes from this checkout's history, or, a shallow clone, from its origin;
    only a shallow clone whose origin cannot give it skips (loudly), as the README says."""
    previous_release_or_skip(lab.names.state_dir)  # exported once; the scenario reuses it
    report = run_scenario(lab, "agent-downgrade-upgrade")
    print("\n" + render(report))
    assert problems(report) == [], report
    assert not any(report["kernel_changes"].values()) and report["bpf_maps_changed"] == []
    assert report["policy_changes"] > 0  # the two rewrites, seen (the monitors listened: problems)
    if lab.profile == "calico":  # (the Cilium profile's table holds only NodePorts: none here)
        assert report["services_table_changes"] > 0  # map → numgen cascade and back, seen too
    assert any("svc/" in label for label in report["flows"])  # a witness flow went through it
    assert report["witness"]["flows"] >= 4 and report["witness"]["replies"] > 0
    assert report["witness"]["max_gap_ms"] < GAP_BOUND_MS, report["flows"]
    ran = report["agents_ran_from"]
    assert set(ran["downgraded"]) == set(lab.nodes)
    assert all("/versions/" in path for path in ran["downgraded"].values())
    assert set(ran["upgraded"].values()) == {""}  # back on this checkout


def test_bird_restart_keeps_routes_and_traffic() -> None:
    """BIRD on the servers' node stops with a graceful restart; its agent starts it again; its
    peers keep its routes meanwhile: no flow interrupted, no route deleted, sessions back."""
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(LabSpec(nodes=3, bgp=True, underlay=random_underlay()), names)
        lab = ChaosLab(names, ResourceStore(EtcdDatastore([info.etcd_endpoint])))
        report = run_scenario(lab, "bird-restart")
        print("\n" + render(report))
        assert report["witness"]["interrupted_flows"] == 0, report["flows"]
        assert report["witness"]["max_gap_ms"] < GAP_BOUND_MS, report["flows"]
        assert report["routes_deleted"] == 0, report["kernel_changes"]
        assert problems(report) == [], report
        assert report["sessions_up_seconds"] < 60
    finally:
        cluster.teardown(names)
        clean(names)
