"""``podnet bench`` reporting on a fake result: statistics, ratios (both directions), the table in the
seed's layout with the seed column, the control-plane block, JSON round trip and the plots."""

from __future__ import annotations

import json
import math

import pytest

from podnet.bench import report
from podnet.bench.stats import sample_summary

UNITS = {
    "tcp_1": "Gbit/s",
    "tcp_4": "Gbit/s",
    "latency_p50": "ms",
    "latency_p99": "ms",
    "latency_sat_p50": "ms",
    "latency_sat_p99": "ms",
    "conn_rate": "conn/s",
    "conn_rate_policy": "conn/s",
    "conntrack_entries": "entries",
    "conntrack_entries_policy": "entries",
    "cpu_per_gbit": "CPU s/Gbit",
}


def _scenarios(**samples: list[float]) -> dict:
    return {name: {"samples": values, "unit": UNITS[name]} for name, values in samples.items()}


def _memory(agent: float, bird: float | None) -> dict:
    nodes = {}
    for i, extra in enumerate((0.0, 1.5, 3.0), start=1):
        a = {"rss_mib": agent + extra, "peak_mib": agent + extra + 2}
        b = {"rss_mib": bird, "peak_mib": bird} if bird is not None else None
        nodes[f"node-{i}"] = {"agent": a, "bird": b, "total_rss_mib": round(agent + extra + (bird or 0), 1)}
    return nodes


def _cp(convergence: float, first_pod: bool) -> dict:
    lat = {"n": 10, "p50_ms": 160.0, "p90_ms": 200.0, "p99_ms": 270.0, "max_ms": 270.0, "mean_ms": 170.0}
    return {
        "cni": [
            {
                "concurrency": c,
                "add_chain": lat,
                "del_chain": lat,
                "add_podnet": lat,
                "del_podnet": lat,
                "chain": ["podnet", "portmap", "bandwidth"],
            }
            for c in (10, 1)
        ],
        "ipam": {"allocations_per_s": 206.1, "assign_p99_ms": 48.0},
        "policy_change": {
            "all_nodes": {
                "n": 3,
                "p50_ms": 61.9,
                "p90_ms": 66.2,
                "p99_ms": 66.2,
                "max_ms": 66.2,
                "mean_ms": 62.7,
            }
        },
        "route_convergence": {
            "converged_after_pod_s": convergence if first_pod else None,
            "converged_after_node_s": convergence + 1.5,
            "block_claimed_by": "first pod" if first_pod else "agent start (router address)",
        },
    }


def fake_result() -> dict:
    """What datapath.run returns (two profiles, two baselines) plus a footprint for both."""
    return {
        "machine": {"cpus": 2, "kernel": "6.1.0-test"},
        "settings": {"repeats": 3, "duration": 10, "quick": False},
        "baselines": {
            "direct": {
                "scenarios": _scenarios(
                    tcp_1=[17.0, 18.0, 17.5],
                    tcp_4=[20.0, 21.0, 20.5],
                    latency_p50=[0.05, 0.05, 0.06],
                    latency_p99=[0.10, 0.12, 0.11],
                    latency_sat_p50=[0.2, 0.2, 0.2],
                    latency_sat_p99=[0.4, 0.5, 0.45],
                    conn_rate=[30000, 31000, 29000],
                    conn_rate_policy=[30000, 30500, 29500],
                    conntrack_entries=[0, 0, 0],
                    conntrack_entries_policy=[0, 0, 0],
                    cpu_per_gbit=[0.10, 0.11, 0.09],
                )
            },
            "vxlan": {
                "scenarios": _scenarios(
                    tcp_1=[15.0, 15.5, 14.5],
                    tcp_4=[18.0, 18.0, 18.0],
                    latency_p50=[0.06, 0.06, 0.06],
                    latency_p99=[0.15, 0.15, 0.15],
                    latency_sat_p50=[0.3, 0.3, 0.3],
                    latency_sat_p99=[0.6, 0.6, 0.6],
                    conn_rate=[25000, 25000, 25000],
                    cpu_per_gbit=[0.12, 0.12, 0.12],
                )
            },
        },
        "profiles": {
            "calico-bgp": {
                "path": "direct",
                "spec": {"profile": "calico", "bgp": True},
                "scenarios": _scenarios(
                    tcp_1=[16.0, 17.0, 16.5],
                    tcp_4=[19.0, 19.5, 20.0],
                    latency_p50=[0.06, 0.06, 0.07],
                    latency_p99=[0.20, 0.25, 0.22],
                    latency_sat_p50=[0.25, 0.25, 0.25],
                    latency_sat_p99=[0.5, 0.5, 0.5],
                    conn_rate=[20000, 21000, 22000],
                    conn_rate_policy=[18000, 18000, 18000],
                    conntrack_entries=[0, 0, 0],
                    conntrack_entries_policy=[36000, 36500, 37000],
                    cpu_per_gbit=[0.12, 0.12, 0.13],
                ),
            },
            "cilium-vxlan": {
                "path": "vxlan",
                "spec": {"profile": "cilium", "encapsulation": "vxlan"},
                "scenarios": _scenarios(
                    tcp_1=[13.0, 14.0, 13.5],
                    tcp_4=[16.0, 16.0, 17.0],
                    latency_p50=[0.07, 0.07, 0.07],
                    latency_p99=[0.30, 0.30, 0.30],
                    latency_sat_p50=[0.3, 0.35, 0.3],
                    latency_sat_p99=[0.75, 0.8, 0.7],
                    conn_rate=[18000, 19000, 20000],
                    cpu_per_gbit=[0.15, 0.16, 0.14],
                ),
            },
        },
        "footprint": {
            "settings": {
                "quick": False,
                "nodes": 3,
                "pods": 100,
                "policies": 1000,
                "rules_per_policy": 5,
                "changes": 20,
                "cni_sandboxes": 50,
                "ipam_allocations": 2000,
            },
            "profiles": {
                "calico-bgp": {
                    "memory": {"idle": _memory(57.5, 4.7), "loaded": _memory(64.0, 4.9)},
                    "workload": {"pods_running_s": 7.8, "policies_programmed_s": 0.9},
                    "control_plane": _cp(1.23, True),
                },
                "cilium-vxlan": {
                    "memory": {"idle": _memory(58.0, None), "loaded": _memory(66.0, None)},
                    "workload": {"pods_running_s": 8.1, "policies_programmed_s": 1.0},
                    "control_plane": _cp(0.45, False),
                },
            },
        },
    }


def test_sample_summary_median_min_max() -> None:
    s = sample_summary([3.0, 1.0, 2.0, 10.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (4, 2.5, 1.0, 10.0)
    empty = sample_summary([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_ratio_reads_the_same_way_on_every_row() -> None:
    higher = report.ratio(9.0, 10.0, higher_is_better=True)
    assert higher["ratio"] == pytest.approx(0.9) and higher["relative"] == pytest.approx(0.9)
    # latency 2 ms against a 1 ms baseline: twice as slow; relative 0.5 says "worse" like bandwidth does
    lower = report.ratio(2.0, 1.0, higher_is_better=False)
    assert lower["ratio"] == pytest.approx(2.0) and lower["relative"] == pytest.approx(0.5)
    assert report.ratio(0.5, 1.0, higher_is_better=False)["relative"] == pytest.approx(2.0)
    assert report.ratio(1.0, 0.0, True) == {"ratio": None, "relative": None}
    assert report.ratio(float("nan"), 1.0, True) == {"ratio": None, "relative": None}


def test_summary_compares_each_profile_with_the_baseline_of_its_path() -> None:
    s = report.summarize(fake_result())
    assert s["baselines"]["direct"]["tcp_1"]["median"] == 17.5
    bgp = s["profiles"]["calico-bgp"]
    assert bgp["tcp_1"]["baseline"] == "direct" and bgp["tcp_1"]["baseline_median"] == 17.5
    assert bgp["tcp_1"]["relative"] == pytest.approx(16.5 / 17.5)
    assert (bgp["tcp_1"]["min"], bgp["tcp_1"]["max"]) == (16.0, 17.0)
    assert bgp["latency_p99"]["better"] == "lower"
    assert bgp["latency_p99"]["ratio"] == pytest.approx(0.22 / 0.11)
    assert bgp["latency_p99"]["relative"] == pytest.approx(0.11 / 0.22)
    vx = s["profiles"]["cilium-vxlan"]
    assert vx["cpu_per_gbit"]["baseline"] == "vxlan"
    assert vx["cpu_per_gbit"]["relative"] == pytest.approx(0.12 / 0.15)
    assert s["footprint"]["calico-bgp"]["loaded_mib"]["max"] == pytest.approx(64.0 + 3.0 + 4.9)


def test_a_profile_without_its_baseline_has_no_ratio() -> None:
    result = fake_result()
    result["profiles"]["cilium-vxlan"]["path"] = "ipip"  # no ipip baseline in this result
    s = report.summarize(result)
    assert s["profiles"]["cilium-vxlan"]["tcp_1"]["relative"] is None
    assert "13.50" in report.render_table(result, s)


def test_table_has_the_seeds_rows_profile_columns_and_seed_column() -> None:
    text = report.render_table(fake_result())
    lines = text.splitlines()
    header = next(line for line in lines if "calico-bgp" in line and "cilium-vxlan" in line)
    assert "direct (by hand)" in header and report.SEED_HEADER in header
    assert any("Calico-IPIP / Cilium-VXLAN / Direct" in line for line in lines)

    def row(label: str) -> str:
        return next(line for line in lines if line.startswith(label))

    tcp = row("TCP bandwidth, 1 stream")
    assert "16.50 x0.94" in tcp and "13.50 x0.90" in tcp and "9.2 / 8.8 / 9.8 Gbps" in tcp
    assert "17.50" in tcp and "15.00" in tcp  # the baselines' own medians
    assert row("TCP bandwidth, 4 streams").rstrip().endswith("-")  # the seed has no such row
    assert "0.220 x0.50" in row("Latency P99, fixed rate")
    assert "0.8 / 1.1 / 0.3 ms" in row("Latency P99, saturation")
    assert "21.0k x0.70" in row("New connections/s") and "120k / 90k / 150k" in row("New connections/s")
    assert "18.0k x0.60" in row("New connections/s, policy")
    # conntrack entries: counts, no ratio to a baseline that has no conntrack (0)
    assert row("Netfilter conntrack entries").split()[-5:-1] == ["0", "-", "0", "-"]
    assert "36500 " in row("Conntrack entries, policy") and " x" not in row("Conntrack entries, policy")
    assert "18 / 23 / 12 % at 10 Gbps" in row("CPU per Gbit")
    memory = row("Agent memory per node")
    assert "65->72" in memory and "~150 / ~300 / - MB" in memory
    assert "1.00 = as good" in text and "baseline/podnet" in text
    assert "100 pods + 1000 NetworkPolicies" in text


def test_control_plane_block() -> None:
    text = report.render_control_plane(fake_result())
    lines = text.splitlines()
    assert lines[0].startswith("Control plane")

    def row(label: str) -> str:
        return next(line for line in lines if line.startswith(label))

    assert row("CNI ADD p50 / p99, 1 at a time").count("160.0 / 270.0") == 2
    assert "206" in row("IPAM allocations/s")
    assert "61.9 / 66.2" in row("Policy change -> kernel")
    assert "2.73" in row("Node joins: Node created") and "1.95" in row("Node joins: Node created")
    assert "first pod" in row("Node joins: its first block") and "agent start" in row("Node joins: its first")
    # where the block came with the agent, there is no "after the first pod" figure
    pod = row("Node joins: first pod applied")
    assert "1.23" in pod and pod.rstrip().endswith("-")
    bird = row("BIRD RSS loaded")
    assert "5" in bird and bird.rstrip().endswith("-")  # no BIRD in the cilium profile
    assert report.render_control_plane({"profiles": {}}) == ""


def test_json_round_trip_keeps_every_sample(tmp_path) -> None:
    result = fake_result()
    result["profiles"]["calico-bgp"]["scenarios"]["tcp_4"]["samples"] = []  # a scenario that got nothing
    path = report.write_json(result, str(tmp_path / "bench.json"))
    doc = report.read_json(path)
    assert doc["profiles"]["cilium-vxlan"]["scenarios"]["conn_rate"]["samples"] == [18000, 19000, 20000]
    assert doc["baselines"]["direct"]["scenarios"]["tcp_1"]["samples"] == [17.0, 18.0, 17.5]
    assert doc["summary"]["profiles"]["calico-bgp"]["tcp_1"]["relative"] == pytest.approx(16.5 / 17.5)
    assert doc["summary"]["profiles"]["calico-bgp"]["tcp_4"]["median"] is None  # NaN is not JSON
    assert doc["seed"]["tcp_1"]["values"] == [9.2, 8.8, 9.8]
    assert doc["metrics"]["latency_p99"]["better"] == "lower"
    assert doc["footprint"]["profiles"]["calico-bgp"]["memory"]["idle"]["node-1"]["bird"]["rss_mib"] == 4.7
    json.loads((tmp_path / "bench.json").read_text())  # strict JSON
    # the document renders the same table as the result it came from
    assert report.render_table(doc) == report.render_table(result)


def test_plots_one_png_per_metric(tmp_path) -> None:
    written = report.write_plots(fake_result(), str(tmp_path))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == sorted([f"{s}.png" for s in report.SCENARIOS] + ["agent_memory.png"])
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
