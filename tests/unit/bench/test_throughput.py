"""The pure parts of ``podnet.bench.throughput`` and ``podnet.bench.min_ipip``: sides, rotated
schedule, guarded summary, the table, the peer map's encoding."""

from __future__ import annotations

import re
import struct

import pytest

from podnet.bench import throughput
from podnet.bench.min_ipip import encode_peer
from podnet.bench.throughput import render, schedule, sides_of, summarize


def test_a_tunnel_mode_is_also_measured_against_the_direct_path():
    assert sides_of("none") == ["podnet", "baseline"]
    assert sides_of("vxlan") == sides_of("ipip") == ["podnet", "baseline", "direct"]


def test_schedule_rotates_so_podnet_is_not_always_first():
    order = schedule(sides_of("ipip"), 4)
    assert [o[0] for o in order] == ["podnet", "baseline", "direct", "podnet"]
    assert all(sorted(o) == sorted(sides_of("ipip")) for o in order)
    assert [o[0] for o in schedule(sides_of("none"), 3)] == ["podnet", "baseline", "podnet"]


def test_summarize_gives_medians_and_both_ratios_of_medians_and_of_rounds():
    s = summarize({"podnet": [12.0, 13.0, 11.0], "baseline": [12.5, 12.5, 14.0], "direct": [15.0, 14.0]})
    assert s["gbps"] == {"podnet": 12.0, "baseline": 12.5, "direct": 14.5}
    assert s["ratio"] == 0.96
    pb, bd = s["ratios"]["podnet/baseline"], s["ratios"]["baseline/direct"]
    assert (pb["value"], pb["reason"]) == (0.96, None)
    assert pb["per_round"] == [0.96, 1.04, 0.786] and pb["median_of_rounds"] == 0.96
    assert pb["rounds_p25_p75"] == [0.873, 1.0]
    assert (bd["value"], bd["reason"]) == (0.862, None)
    assert bd["per_round"] == [0.833, 0.893] and bd["median_of_rounds"] == 0.863  # 2 rounds of direct


def test_summarize_with_a_zero_or_missing_baseline_reports_na_and_does_not_raise():
    s = summarize({"podnet": [12.0, 11.0], "baseline": [0.0, 2.0, 0.0], "direct": []})
    pb, bd = s["ratios"]["podnet/baseline"], s["ratios"]["baseline/direct"]
    assert s["ratio"] is None and (pb["value"], pb["reason"]) == (None, "baseline is 0")
    assert pb["per_round"] == [None, 5.5] and pb["median_of_rounds"] == 5.5
    assert (bd["value"], bd["reason"]) == (None, "no direct sample")
    assert bd["per_round"] == [] and bd["median_of_rounds"] is None and bd["rounds_p25_p75"] is None
    assert s["gbps"]["direct"] is None
    table = render({"ipip": s}, 3, 1.0)
    assert "11.50 x n/a" in table and "0.00 x n/a" in table
    assert "median of the per-round ratios: ipip podnet/baseline 5.50" in table
    assert "ipip podnet/baseline: n/a, baseline is 0" in table
    assert "ipip baseline/direct: n/a, no direct sample" in table


def test_render_writes_value_and_ratio_as_the_readme_table_does():
    results = {
        "none": summarize({"podnet": [14.5], "baseline": [15.1]}),
        "ipip": summarize({"podnet": [12.8], "baseline": [12.5], "direct": [14.0]}),
    }
    lines = render(results, 1, 3.0).splitlines()
    assert lines[0].startswith("pod -> pod TCP, 1 stream, Gbit/s: medians of 1 rounds x 3 s")
    assert re.split(r"\s{2,}", lines[1]) == [
        "mode",
        "podnet vs by hand",
        "by hand vs direct",
        "direct by hand",
    ]
    assert lines[2].split() == ["none", "14.50", "x0.96", "15.10", "-"]
    assert lines[3].split() == ["ipip", "12.80", "x1.02", "12.50", "x0.89", "14.00"]
    assert lines[4] == (
        "median of the per-round ratios: none podnet/baseline 0.96, ipip podnet/baseline 1.02, "
        "ipip baseline/direct 0.89"  # one round: no spread
    )
    assert len(lines) == 5  # no n/a note
    two = render({"ipip": summarize({"podnet": [1.0, 3.0], "baseline": [2.0, 2.0]})}, 2, 1.0)
    assert "ipip podnet/baseline 1.00 (p25-p75 0.75-1.25)" in two


def test_run_refuses_bad_arguments_before_building_anything():
    for args in ((["gre"],), (["ipip"], 0), (["ipip"], 1, 0.0)):
        with pytest.raises(ValueError):
            throughput.run(*args)


def test_peer_value_is_struct_peer_of_min_ipip_c():
    raw = encode_peer("10.251.0.1", "10.251.0.2", 7, "02:00:00:00:00:01", "0a:0b:0c:0d:0e:0f")
    assert len(raw) == 24  # 3 x __u32 + 2 x 6 bytes, no padding
    local, remote, ifindex, src, dst = struct.unpack("=4s4sI6s6s", raw)
    assert (local, remote) == (bytes([10, 251, 0, 1]), bytes([10, 251, 0, 2]))
    assert ifindex == 7
    assert src == bytes([2, 0, 0, 0, 0, 1]) and dst == bytes(range(10, 16))
