"""The chaos scenarios' verdict (``problems``: the CLI's exit status) and the datastore states a
policy batch passes through, without root."""

from __future__ import annotations

from podnet.lab.chaos import _whole_states, problems


def report(scenario: str = "kill-agent", **extra) -> dict:
    base = {
        "scenario": scenario,
        "witness": {"flows": 5, "replies": 100, "max_gap_ms": 60.0, "interrupted_flows": 0},
        "flows": {},
        "kernel_changes": {"node-1": []},
        "bpf_maps_changed": [],
        "bpf_maps_checked": 3,
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
