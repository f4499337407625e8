"""The pure parts of the churn benchmark: growth statistics, the per-cycle workload, the nft set
reader and the checks (no root, no lab)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from podnet.bench.churn import (
    QUICK,
    VIRTUAL_ANNOTATION,
    VIRTUAL_NET,
    Options,
    count_addresses_in,
    cycle_checks,
    cycle_workload,
    growth,
    is_virtual,
    least_squares_slope,
    render,
    summarize,
    virtual_ip,
)
from podnet.bench.policy_scale import CONTROL_NS
from podnet.model import Pod, parse_resource


def test_least_squares_slope_of_a_line_and_of_noise() -> None:
    assert least_squares_slope([5.0, 7.0, 9.0, 11.0]) == pytest.approx(2.0)
    assert least_squares_slope([3.0, 3.0, 3.0]) == 0.0
    assert least_squares_slope([1.0, 3.0, 1.0, 3.0, 1.0]) == pytest.approx(0.0)
    assert least_squares_slope([4.0]) == 0.0


def test_growth_ignores_the_first_cycle() -> None:
    g = growth([50.0, 100.0, 101.0, 102.0, 103.0])  # a big first step, then 1 MiB a cycle
    assert g["slope_mib_per_cycle"] == pytest.approx(1.0)
    assert g["slope_pct_per_cycle"] == pytest.approx(1.0)
    assert g["max_delta_mib"] == pytest.approx(1.0)
    assert g["max_delta_pct"] == pytest.approx(1.0)


def test_growth_of_a_flat_then_falling_series() -> None:
    g = growth([60.0, 80.0, 80.0, 79.0])
    assert g["slope_pct_per_cycle"] < 0
    assert g["max_delta_mib"] == 0.0
    g = growth([60.0, 80.0, 79.0])
    assert g["max_delta_mib"] == -1.0  # it only fell


def test_growth_needs_two_cycles_after_the_first() -> None:
    assert all(v is None for v in growth([60.0, 61.0]).values())
    assert all(v is None for v in growth([]).values())


def test_summarize_reports_the_worst_node() -> None:
    s = summarize({"node-2": [50, 100, 100, 100], "node-1": [50, 100, 102, 104]})
    assert list(s["per_node"]) == ["node-1", "node-2"]
    assert s["worst_slope_pct_per_cycle"] == pytest.approx(2.0)
    assert s["worst_max_delta_pct"] == pytest.approx(2.0)
    assert s["bound_pct_per_cycle"] == 1.0


def test_virtual_addresses_are_unique_over_the_run_and_in_the_net() -> None:
    seen = {virtual_ip(c, i, 1000) for c in range(20) for i in range(1000)}
    assert len(seen) == 20_000
    assert all(ipaddress.ip_address(a) in VIRTUAL_NET for a in seen)
    with pytest.raises(ValueError):
        virtual_ip(10_000, 0, 1000)


def test_cycle_workload_renames_and_splits_real_from_datastore_only() -> None:
    opts = Options(pods=60, policies=20, real_pods=9)
    cw = cycle_workload(3, opts, {"node-1": "10.1.0.1"})
    pods, policies = cw.workload.pods, cw.workload.policies
    assert len(pods) == 60 and len(policies) == 20 and cw.virtual_count == 51
    assert all(p["metadata"]["name"].startswith("c03-") for p in pods + policies)
    assert not any(p["metadata"]["namespace"] == CONTROL_NS for p in pods)
    assert len(cw.real) == 9 and {p.split("/")[1] for p in cw.real} == {
        p["metadata"]["name"] for p in pods[:9]
    }
    assert {p["spec"]["nodeName"] for p in pods[:9]} == {"node-1", "node-2", "node-3"}
    models = [parse_resource(p) for p in pods + policies]  # all valid resources
    virtual = [m for m in models if isinstance(m, Pod) and is_virtual(m)]
    assert len(virtual) == 51
    for pod in virtual:
        assert pod.status.phase == "Running" and ipaddress.ip_address(pod.status.pod_ip) in VIRTUAL_NET
        assert pod.spec.node_name in {"node-1", "node-2", "node-3"}
    on_node_1 = [p for p in pods[9:] if p["spec"]["nodeName"] == "node-1"]
    assert on_node_1 and all(p["status"]["hostIP"] == "10.1.0.1" for p in on_node_1)
    assert all(VIRTUAL_ANNOTATION not in (p["metadata"].get("annotations") or {}) for p in pods[:9])
    other = cycle_workload(4, opts)
    assert {p["status"]["podIP"] for p in other.workload.pods[9:]}.isdisjoint(
        {p["status"]["podIP"] for p in pods[9:]}
    )
    assert json.dumps(other.workload.policies) != json.dumps(policies)  # the rules vary by cycle


def test_cycle_workload_refuses_more_real_pods_than_pods() -> None:
    with pytest.raises(ValueError):
        cycle_workload(0, Options(pods=10, policies=2, real_pods=11))


def test_count_addresses_in_reads_addresses_prefixes_and_ranges() -> None:
    doc = {
        "nftables": [
            {"metainfo": {}},
            {
                "set": {
                    "name": "a",
                    "elem": ["100.64.0.1", "10.244.0.2", {"prefix": {"addr": "100.64.1.0", "len": 30}}],
                }
            },
            {
                "set": {
                    "name": "b",
                    "elem": [
                        {"range": ["100.63.255.254", "100.64.0.1"]},
                        {"elem": {"val": "100.64.9.9", "timeout": 5}},
                    ],
                }
            },
            {"set": {"name": "empty"}},
            {"rule": {"expr": []}},
        ]
    }
    assert count_addresses_in(doc) == 1 + 4 + 2 + 1
    assert count_addresses_in({}) == 0


def _row(peak_virtual: int, trough_virtual: int, trough_rules: int = 0) -> dict:
    return {
        "cycle": 1,
        "up_s": 1.0,
        "down_s": 1.0,
        "rss_mib": {"node-1": 60.0},
        "rss_peak_mib": {"node-1": 61.0},
        "peak_kernel": {"node-1": {"policy_rules": 10, "virtual_addresses": peak_virtual}},
        "trough_kernel": {"node-1": {"policy_rules": trough_rules, "virtual_addresses": trough_virtual}},
    }


def test_cycle_checks() -> None:
    assert all(cycle_checks(_row(5, 0)).values())
    assert not cycle_checks(_row(0, 0))["peak_virtual_addresses_in_sets"]
    assert not cycle_checks(_row(5, 1))["trough_no_virtual_address"]
    assert not cycle_checks(_row(5, 0, trough_rules=3))["trough_no_policy_rule"]


def test_render_has_every_figure() -> None:
    rows = [_row(5, 0) | {"cycle": i + 1} for i in range(3)]
    results = {
        "params": {"cycles": 3, "pods": 10, "real_pods": 2, "policies": 4, "nodes": 1},
        "lab_up_s": 1.0,
        "rss_idle_mib": {"node-1": 55.0},
        "cycles": rows,
        "growth": summarize({"node-1": [60.0, 60.0, 60.5]}),
        "wall_s": 3.0,
    }
    text = render(results)
    assert "idle RSS" in text and "%/cycle" in text and "worst node" in text and "wall time" in text
    assert len([line for line in text.splitlines() if line.startswith("    ")]) == 3


def test_quick_is_small() -> None:
    assert QUICK["cycles"] * QUICK["pods"] <= 1000 and QUICK["real_pods"] <= QUICK["pods"]


def test_main_options_overlay_quick_then_command_line(tmp_path, capsys) -> None:
    import argparse

    from podnet.bench.policy_scale import emit, overlay

    opts = Options()
    args = argparse.Namespace(cycles=None, pods=200, policies=None, real_pods=None)
    overlay(opts, args, ("cycles", "pods", "policies", "real_pods"), QUICK)
    assert (opts.cycles, opts.pods, opts.policies, opts.real_pods) == (4, 200, 60, 15)
    opts = Options()
    overlay(opts, args, ("cycles", "pods", "policies"), {})
    assert (opts.cycles, opts.pods, opts.policies) == (20, 200, 500)
    path = tmp_path / "out.json"
    emit({"a": 1}, str(path), lambda r: f"table {r['a']}")
    assert json.loads(path.read_text()) == {"a": 1} and capsys.readouterr().out == "table 1\n"
