"""A lab with a 3-member etcd cluster: each member in its own namespace, every endpoint given to
the agents, the kubelet and the CLI; the three member scenarios in a quick size (0 acknowledged
writes lost on any member, the policy written meanwhile enforced within
:data:`~podnet.lab.etcd_chaos.ENFORCE_WITHIN` s, IPAM under fire with 0 duplicates and 0 leaks);
``up`` failing after the members started leaves nothing behind."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from podnet.dataplane.netns import netns_exists
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster, etcd_chaos, etcd_cluster
from podnet.lab.chaos import ChaosLab
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import all_pids, proc_cmdline
from podnet.lab.state import LabState
from podnet.lab.topology import LabSpec, random_underlay

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.lab]

PODS = 40  # IPAM under fire per scenario: quick, a few ipam check samples


def _spec() -> LabSpec:
    return LabSpec(nodes=3, etcd_members=3, dns=False, underlay=random_underlay())


@pytest.fixture(scope="module")
def lab() -> Iterator[ChaosLab]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(_spec(), names)
        assert len(info.etcd_endpoint.split(",")) == 3  # the CLI: one proxy listener per member
        yield ChaosLab(names, ResourceStore(EtcdDatastore(info.etcd_endpoint)))
    finally:
        cluster.remove(names)
        assert not any(netns_exists(names.etcd_member_ns(i)) for i in (1, 2, 3))


def test_members_leader_and_endpoints(lab: ChaosLab) -> None:
    healthy = etcd_cluster.wait_healthy(lab.names, 10.0)
    assert sorted(healthy) == ["etcd", "etcd-2", "etcd-3"]
    assert len({s.member_id for s in healthy.values()}) == 3
    assert sum(s.is_leader for s in healthy.values()) == 1
    agent = next(p for p in LabState(lab.names.state_dir).processes() if p.name == "agent-node-1")
    endpoints = agent.cmd[agent.cmd.index("--etcd-endpoints") + 1].split(",")
    assert endpoints == [m.endpoint for m in etcd_cluster.members(lab.names)]


@pytest.mark.parametrize("scenario", etcd_chaos.SCENARIOS)
def test_member_fault(lab: ChaosLab, scenario: str) -> None:
    report = etcd_chaos.run_scenario(lab, scenario, pods=PODS, dwell=1.0)
    print("\n" + etcd_chaos.render(report))
    assert etcd_chaos.problems(report) == [], report
    writes = report["writes"]
    # the writer ran through the fault (20/s; a write caught by a leader kill can wait out its
    # timeout, so how many land varies: the claim is that none of those acknowledged was lost)
    assert writes["acknowledged"] >= 10
    assert all(lost == [] for lost in writes["lost_per_member"].values())
    assert writes["control_missing_on"] == ["etcd", "etcd-2", "etcd-3"]  # the read-back sees a loss
    assert report["policy_enforced_seconds"] <= etcd_chaos.ENFORCE_WITHIN
    ipam = report["ipam"]
    assert ipam["pods_done"] == PODS and ipam["duplicates"] == [] and ipam["leaks_before_gc"] == []
    assert ipam["leak_control_seen"]
    if scenario == "etcd-leader-kill":
        assert report["leader_during_fault"] not in (None, report["member"])


def test_an_etcd_outage_stops_every_member(lab: ChaosLab) -> None:
    """``etcd-outage`` on a cluster is the datastore out, not one member of three: a CNI ADD
    meanwhile is told to try again later (with one member down it would succeed), traffic and
    kernel state stay as they are, and the three members come back as one cluster."""
    from podnet.lab.chaos import problems, render, run_scenario

    report = run_scenario(lab, "etcd-outage", seconds=3.0)
    print("\n" + render(report))
    assert problems(report) == [], report
    add = report["cni_add_during_outage"]
    assert add["code"] == 11 and "datastore" in add["message"], add
    assert report["witness"]["interrupted_flows"] == 0, report["flows"]
    healthy = etcd_cluster.wait_healthy(lab.names, 20.0)
    assert sorted(healthy) == ["etcd", "etcd-2", "etcd-3"]
    assert sum(s.is_leader for s in healthy.values()) == 1


def test_up_failing_after_the_members_started_leaves_nothing(monkeypatch) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    started: list[int] = []

    def fail(names_: LabNames, timeout: float = 30.0) -> None:
        started.extend(p.pid for p in LabState(names_.state_dir).processes() if p.name.startswith("etcd"))
        raise LabError("injected: the cluster never became healthy")

    monkeypatch.setattr(etcd_cluster, "wait_healthy", fail)
    try:
        with pytest.raises(LabError, match="injected"):
            cluster.up(_spec(), names)
        assert len(started) == 4  # three members and the proxy had been started and recorded
        alive = [pid for pid in started if os.path.exists(f"/proc/{pid}")]
        ours = [pid for pid in alive if names.state_dir in " ".join(proc_cmdline(pid))]
        assert ours == [], "an etcd member or the proxy outlived the failed up"
        assert not [pid for pid in all_pids() if names.marker in proc_cmdline(pid)]
        assert not any(netns_exists(names.etcd_member_ns(i)) for i in (1, 2, 3))
        assert not os.path.exists(names.state_dir)
    finally:
        clean(names)
