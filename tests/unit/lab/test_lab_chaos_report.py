"""The chaos scenarios' verdict (``problems``: the CLI's exit status), the datastore states a
policy batch passes through, and that every scenario runs under the same kernel watch, without
root."""

from __future__ import annotations

from typing import Any

import pytest

from podnet.lab import chaos
from podnet.lab.chaos import SCENARIOS, _whole_states, problems, render, run_scenario
from podnet.lab.kernel_watch import Watched
from podnet.lab.naming import LabNames


def report(scenario: str = "kill-agent", **extra) -> dict:
    base = {
        "scenario": scenario,
        "witness": {"flows": 5, "replies": 100, "max_gap_ms": 60.0, "interrupted_flows": 0},
        "flows": {},
        "kernel_changes": {"node-1": []},
        "bpf_maps_changed": [],
        "bpf_maps_checked": 3,
        "kernel_monitors": {
            "monitors": 12,
            "ready_seconds": 0.1,
            "closing_control_seconds": 0.05,
            "stderr": {},
        },
        "monitor_failures": [],
    }
    return {**base, **extra}


def test_a_clean_report_has_no_problem() -> None:
    assert problems(report()) == []


def test_interrupted_flows_kernel_changes_and_maps_are_problems() -> None:
    bad = report(kernel_changes={"node-2": ["route: Deleted 10.244.1.0/26"]}, bpf_maps_changed=["node-1/lb"])
    bad["witness"]["interrupted_flows"] = 2
    found = problems(bad)
    assert len(found) == 3 and "2 flow(s) interrupted" in found[0]


def test_bird_restart_counts_only_deleted_routes() -> None:
    reannounced = report(
        "bird-restart", kernel_changes={"node-2": ["route: 10.244.1.0/26 proto bird"]}, routes_deleted=0
    )
    assert problems(reannounced) == []
    assert problems({**reannounced, "routes_deleted": 1}) == ["1 route(s) deleted"]


def test_blackhole_promises_last_good_state_and_enforcement_within_5_s() -> None:
    ok = report("etcd-blackhole", policy_open_at_end_of_outage=True, policy_enforced_seconds=0.9)
    assert problems(ok) == []
    assert "last good state" in problems({**ok, "policy_open_at_end_of_outage": False})[0]
    assert "enforced after 7.5 s" in problems({**ok, "policy_enforced_seconds": 7.5})[0]
    assert "enforced after None s" in problems({**ok, "policy_enforced_seconds": None})[0]


def test_mid_sync_rounds_must_be_whole_and_complete() -> None:
    good = {
        "policies_in_kernel_at_kill": 128,
        "whole_datastore_state_at_kill": True,
        "rules_expected": 600,
        "complete_after_restart_seconds": 1.2,
    }
    assert problems(report("kill-agent-mid-policy-sync", rounds=[good])) == []
    half = {**good, "whole_datastore_state_at_kill": False}
    late = {**good, "complete_after_restart_seconds": None}
    found = problems(report("kill-agent-mid-policy-sync", rounds=[half, late]))
    assert len(found) == 2 and "never had" in found[0] and "not complete" in found[1]


def test_a_batch_passes_through_transaction_boundaries_only() -> None:
    assert _whole_states(300) == {0, 128, 256, 300}
    assert _whole_states(128) == {0, 128}
    assert _whole_states(5) == {0, 5}


def test_a_dead_or_deaf_monitor_is_a_problem_even_with_no_change_seen() -> None:
    dead = "`bridge monitor fdb` in pnt1-node-2 (pid 4242) died (killed by SIGKILL)"
    found = problems(report(monitor_failures=[dead]))
    assert found == [f"kernel monitor: {dead}"]
    assert "kernel monitors FAILED" in render(report(monitor_failures=[dead]))


def test_downgrade_promises_routes_fdb_and_maps_untouched() -> None:
    """The policy table's rewrites are split off by run_scenario (policy_changes); anything left
    in kernel_changes, and any BPF map change, breaks the promise."""
    assert problems(report("agent-downgrade-upgrade", policy_changes=120)) == []
    routes = report("agent-downgrade-upgrade", kernel_changes={"node-1": ["route: Deleted 10.244.1.0/26"]})
    assert problems(routes) == ["podnet's kernel state changed"]
    assert problems(report("agent-downgrade-upgrade", bpf_maps_changed=["ipip/routes"])) != []


class FakeWatch:
    """Stands for KernelWatch: records the calls, and reports one dead monitor."""

    calls: list[str] = []

    def __init__(self, netns: list[str]) -> None:
        self.netns = netns

    def start(self) -> FakeWatch:
        self.calls.append("start")
        return self

    def stop(self) -> Watched:
        self.calls.append("stop")
        events: dict[str, list[str]] = {ns: [] for ns in self.netns}
        events[self.netns[0]] = ["nft: delete rule inet podnet_policy forward handle 10"]
        return Watched(events, ["`ip monitor route` in x (pid 1) died (killed by SIGKILL)"], 12, 0.1, 0.1)

    def close(self) -> None:
        self.calls.append("close")


class FakeWitness:
    def __init__(self, *args: Any) -> None:
        pass

    def start(self, flows: list) -> None:
        pass

    def settle(self, seconds: float) -> None:
        pass

    def stop(self) -> dict:
        return {}


class FakeLab:
    names = LabNames("pnt0-")
    nodes = ["node-1", "node-2", "node-3"]

    def ensure_workload(self) -> None:
        pass

    def flows(self) -> list:
        return []


FAULTS = (
    "_kill_agents",
    "_downgrade_upgrade",
    "_etcd_outage",
    "_etcd_blackhole",
    "_kill_mid_policy_sync",
    "_bird_restart",
)


FIGURES = {"policy_open_at_end_of_outage": True, "policy_enforced_seconds": 1.0}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_runs_its_fault_inside_the_kernel_watch(monkeypatch, scenario: str) -> None:
    """The watch starts (with its readiness handshake) before the fault and is stopped (closing
    control, liveness) after it, for every scenario; a monitor failure reaches the verdict."""
    FakeWatch.calls = []
    monkeypatch.setattr(chaos, "KernelWatch", FakeWatch)
    monkeypatch.setattr(chaos, "Witness", FakeWitness)
    monkeypatch.setattr(chaos, "bpf_maps", lambda _: {"m": 1})
    monkeypatch.setattr(
        chaos, "summarize", lambda _: {"flows": 0, "replies": 0, "max_gap_ms": 0.0, "interrupted_flows": 0}
    )
    for name in FAULTS:
        monkeypatch.setattr(chaos, name, lambda *a, **k: FakeWatch.calls.append("fault") or dict(FIGURES))
    hook = lambda watch: FakeWatch.calls.append("before_fault")  # noqa: E731
    out = run_scenario(FakeLab(), scenario, settle=0.0, before_fault=hook)  # type: ignore[arg-type]
    assert FakeWatch.calls == ["start", "before_fault", "fault", "stop", "close"]
    found = problems(out)
    assert found[0] == "kernel monitor: `ip monitor route` in x (pid 1) died (killed by SIGKILL)"
    if scenario in chaos.REWRITES_POLICY_TABLE:  # the policy table's changes are split off
        assert out["policy_changes"] == 1 and found[1:] == []
    elif scenario != "bird-restart":  # (it counts deleted routes only)
        assert found[1:] == ["podnet's kernel state changed"]
