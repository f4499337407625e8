"""The pure parts of the data-path benchmark: the profile table (checked against what the lab builds),
CPU and pacing arithmetic, the interleaved plan, the result's shape and the table (no root, no lab)."""

from __future__ import annotations

from collections import Counter

import pytest

from podnet.bench.datapath import (
    MEASUREMENTS,
    PACED_CONNECTIONS,
    PACED_DELAY_MS,
    PACED_RATE,
    PATHS,
    PROFILES,
    SCENARIOS,
    baseline_side,
    cpu_per_gbit,
    cpu_seconds,
    empty_scenarios,
    group_by_path,
    main,
    nodes_cross_subnets,
    paced_delay_ms,
    paced_rate,
    pacing_script,
    parse_proc_stat,
    plan,
    profile_spec,
    record,
    render,
    rotate,
)
from podnet.lab.cluster import cluster_resources
from podnet.lab.topology import build_topology

# ------------------------------------------------------------------------------- profile table


def lab_data_path(spec) -> str:
    """What the lab builds between node-1 and node-2, read from the resources it applies."""
    docs = {d["kind"]: d for d in cluster_resources(build_topology(spec))}
    config, pool = docs["ClusterConfiguration"]["spec"], docs["IPPool"]["spec"]
    if config["profile"] == "cilium":
        return "vxlan" if config["tunnel"] == "vxlan" else "direct"
    if pool["vxlanMode"] != "Never":
        return "vxlan"
    if pool["ipipMode"] == "Always" or (pool["ipipMode"] == "CrossSubnet" and nodes_cross_subnets(spec)):
        return "ipip"
    return "direct"


def test_the_five_profiles_of_the_issue():
    assert list(PROFILES) == [
        "calico-ipip",
        "calico-ipip-crosssubnet",
        "calico-bgp",
        "cilium-vxlan",
        "cilium-direct",
    ]
    assert {p.path for p in PROFILES.values()} == set(PATHS)


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_spec_is_a_2_node_lab_whose_data_path_is_the_declared_one(name):
    spec = profile_spec(name, underlay="10.150.0.0/16")
    assert spec.nodes == 2 and spec.underlay == "10.150.0.0/16"
    for key, value in PROFILES[name].spec.items():
        assert getattr(spec, key) == value
    assert lab_data_path(spec) == PROFILES[name].path


def test_crosssubnet_puts_the_two_pods_nodes_in_different_subnets():
    assert nodes_cross_subnets(profile_spec("calico-ipip-crosssubnet"))
    assert not nodes_cross_subnets(profile_spec("calico-ipip"))
    topo = build_topology(profile_spec("calico-ipip-crosssubnet", underlay="10.150.0.0/16"))
    assert [h.subnet for h in topo.nodes] == [0, 1] and topo.router is not None


def test_bgp_only_on_the_calico_bgp_profile():
    assert [n for n in PROFILES if PROFILES[n].spec.get("bgp")] == ["calico-bgp"]
    docs = cluster_resources(build_topology(profile_spec("calico-bgp")))
    assert any(d["kind"] == "BGPConfiguration" for d in docs)


def test_profile_spec_underlay_is_random_and_clear_of_pod_and_service_ranges():
    underlays = {profile_spec("cilium-direct").underlay for _ in range(20)}
    assert len(underlays) > 1
    for u in underlays:
        second = int(u.split(".")[1])
        assert second != 244 and not 96 <= second <= 111


# ------------------------------------------------------------------------------------- CPU math

PROC_STAT = """cpu  100 5 50 1000 20 3 7 2 40 0
cpu0 50 2 25 500 10 1 3 1 20 0
cpu1 50 3 25 500 10 2 4 1 20 0
intr 12345
"""


def test_parse_proc_stat_busy_is_total_minus_idle_and_iowait_guest_not_counted_twice():
    busy, total = parse_proc_stat(PROC_STAT)
    assert total == 100 + 5 + 50 + 1000 + 20 + 3 + 7 + 2  # guest (40) is inside user already
    assert busy == total - 1000 - 20


def test_parse_proc_stat_short_line_and_missing_line():
    assert parse_proc_stat("cpu 1 2 3 4\n") == (6, 10)
    with pytest.raises(ValueError):
        parse_proc_stat("cpu0 1 2 3 4\n")


def test_cpu_seconds_and_per_gbit():
    assert cpu_seconds((1000, 5000), (1300, 5400), hz=100) == pytest.approx(3.0)
    # 3 CPU seconds while moving 10 Gbit/s for 2 s = 20 Gbit: 0.15 CPU s per Gbit
    assert cpu_per_gbit(3.0, 10.0, 2.0) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        cpu_per_gbit(1.0, 0.0, 2.0)


# ----------------------------------------------------------------------------------- pacing math


def test_paced_delay_gives_the_rate():
    assert paced_delay_ms(2000, 10) == 5
    assert paced_delay_ms(1000, 1) == 1
    assert paced_delay_ms(100_000, 1) == 1  # never 0: a 0 ms delay is no pacing at all
    assert paced_delay_ms(500, 4) == 8
    for bad in ((0, 10), (100, 0)):
        with pytest.raises(ValueError):
            paced_delay_ms(*bad)


def test_paced_rate_ceiling_and_with_latency():
    assert paced_rate(10, 5) == pytest.approx(2000)
    assert paced_rate(10, 5, latency_ms=0.25) == pytest.approx(10 * 1000 / 5.25)
    assert paced_rate(PACED_CONNECTIONS, PACED_DELAY_MS) == pytest.approx(PACED_RATE)


def test_pacing_script_defines_wrk_delay():
    script = pacing_script(PACED_DELAY_MS)
    assert "function delay()" in script and f"return {PACED_DELAY_MS}" in script
    assert script.rstrip().endswith("end")


# --------------------------------------------------------------------------------- interleaving


def test_rotate():
    sides = ["b", "x", "y"]
    assert rotate(sides, 0) == ["b", "x", "y"]
    assert rotate(sides, 1) == ["x", "y", "b"]
    assert rotate(sides, 2) == ["y", "b", "x"]
    assert rotate(sides, 3) == sides
    assert rotate([], 5) == []


def test_group_by_path_in_path_order_profiles_in_given_order_unknown_rejected():
    groups = group_by_path(["cilium-vxlan", "cilium-direct", "calico-ipip", "calico-bgp", "cilium-direct"])
    assert groups == {
        "direct": ["cilium-direct", "calico-bgp"],
        "vxlan": ["cilium-vxlan"],
        "ipip": ["calico-ipip"],
    }
    with pytest.raises(ValueError, match="nope"):
        group_by_path(["calico-ipip", "nope"])


def test_plan_interleaves_every_side_each_round_and_tears_down_per_path():
    repeats = 3
    steps = plan(list(PROFILES), repeats)
    kinds = [s.kind for s in steps]
    assert kinds.count("baseline") == kinds.count("teardown") == 3
    assert kinds.count("lab") == 5 and kinds.count("warmup") == 8
    assert kinds.count("measure") == repeats * len(MEASUREMENTS) * 8
    assert kinds[-1] == "teardown" and kinds[0] == "baseline"

    # per path: baseline, labs, warm-ups, the rounds, teardown; one path at a time
    order = [s.path for s in steps]
    assert order == sorted(order, key=PATHS.index)
    for path, members in group_by_path(list(PROFILES)).items():
        mine = [s for s in steps if s.path == path]
        sides = [baseline_side(path), *members]
        assert [s.kind for s in mine[: 1 + len(members)]] == ["baseline"] + ["lab"] * len(members)
        assert [s.side for s in mine if s.kind == "warmup"] == sides
        measures = [s for s in mine if s.kind == "measure"]
        assert Counter((s.side, s.measurement) for s in measures) == {
            (side, m): repeats for side in sides for m in MEASUREMENTS
        }
        for r in range(repeats):  # within a round, each measurement runs on every side back to back
            in_round = [s for s in measures if s.round == r]
            for i, m in enumerate(MEASUREMENTS):
                block = in_round[i * len(sides) : (i + 1) * len(sides)]
                assert {s.measurement for s in block} == {m}
                assert [s.side for s in block] == rotate(sides, r)
        # rounds in order
        assert [s.round for s in measures] == sorted(s.round for s in measures)


def test_plan_one_profile_and_descriptions():
    steps = plan(["calico-ipip"], 1)
    assert len(steps) == 1 + 1 + 2 + 2 * len(MEASUREMENTS) + 1
    texts = [s.describe(1) for s in steps]
    assert texts[0] == "build the hand-made ipip baseline"
    assert texts[1] == "bring up the calico-ipip lab"
    assert "round 1/1: tcp_1 on baseline/ipip" in texts
    assert texts[-1].startswith("tear down the ipip")


def test_measurements_cover_every_scenario_once():
    produced = [k for keys in MEASUREMENTS.values() for k in keys]
    assert sorted(produced) == sorted(SCENARIOS) and len(produced) == len(set(produced))
    assert SCENARIOS["tcp_1"] == SCENARIOS["tcp_4"] == "Gbit/s"
    assert all(SCENARIOS[k] == "ms" for k in SCENARIOS if k.startswith("latency"))


# ------------------------------------------------------------------------------ result and table


def test_record_fills_samples_and_rates():
    sc = empty_scenarios()
    assert set(sc) == set(SCENARIOS) and all(v["samples"] == [] for v in sc.values())
    record(sc, {"latency_p50": 0.31234, "latency_p99": 1.5, "_rate": 1912.34})
    record(sc, {"tcp_1": 12.345678, "cpu_per_gbit": 0.1})
    assert sc["latency_p50"] == {"samples": [0.3123], "unit": "ms", "rate_per_s": [1912.3]}
    assert sc["latency_p99"]["rate_per_s"] == [1912.3]
    assert sc["tcp_1"] == {"samples": [12.3457], "unit": "Gbit/s"}
    assert "_rate" not in sc


def _fake_result() -> dict:
    def sides(scale: float) -> dict:
        sc = empty_scenarios()
        for k in SCENARIOS:
            sc[k]["samples"] = [1.0 * scale, 2.0 * scale, 3.0 * scale]
        for k in ("latency_p50", "latency_p99"):
            sc[k]["rate_per_s"] = [1900.0, 1950.0, 1980.0]
        return sc

    return {
        "machine": {"cpus": 2, "kernel": "6.1", "python": "3.11"},
        "settings": {
            "repeats": 3,
            "duration": 2.0,
            "quick": True,
            "run_seconds": 2,
            "paced": {"connections": 10, "delay_ms": 5, "target_per_s": 2000},
        },
        "baselines": {"direct": {"pod_mtu": 1500, "scenarios": sides(1.0)}},
        "profiles": {"calico-bgp": {"path": "direct", "spec": {}, "pod_mtu": 1500, "scenarios": sides(0.5)}},
        "wall_s": 12.5,
    }


def test_render_shows_medians_and_ratios():
    text = render(_fake_result())
    assert "baseline direct (mtu 1500)" in text and "calico-bgp (mtu 1500)" in text
    ratio_line = next(line for line in text.splitlines() if "ratio to baseline" in line)
    assert ratio_line.split()[3:] == ["0.50"] * len(SCENARIOS)
    assert "wall time 12.5 s" in text and "calico-bgp 1950" in text


def test_render_copes_with_missing_samples():
    r = _fake_result()
    r["profiles"]["calico-bgp"]["scenarios"]["conn_rate"]["samples"] = []
    row = next(line for line in render(r).splitlines() if line.startswith("  calico-bgp"))
    assert row.split()[3:] == ["1"] * 6 + ["-"] + ["1"] * 4  # medians of 0.5, 1, 1.5; conn/s has none


def test_main_rejects_unknown_profiles_and_bad_numbers(capsys):
    for argv in (["--profiles", "calico"], ["--profiles", ","], ["--repeats", "0"], ["--duration", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
