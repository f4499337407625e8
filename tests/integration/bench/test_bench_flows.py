"""``podnet.bench.flows`` at ``--quick`` size on real labs of both profiles: the switch works both
ways (a record per connection end with flows on, none with them off: fenced by every agent's
health, checked by counting), both sides measure, the ratios are computed, the ring's memory is
measured, and the labs leave nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import flows

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    return [n for n in netns if n.startswith(flows.BENCH_PREFIX[:-1])]


def test_quick_flows_bench() -> None:
    before = set(_leftovers())
    r = flows.run(flows.QUICK)
    assert set(_leftovers()) <= before
    for profile in flows.PROFILES:
        p = r["profiles"][profile]
        for state in ("on", "off"):
            for scenario in flows.SCENARIOS:
                assert p["samples"][state][scenario] and min(p["samples"][state][scenario]) > 0, (profile, p)
        assert set(p["ratios"]) == set(flows.SCENARIOS)
        assert p["records_complete"]["on"] >= 0.9, (profile, p["records_complete"])  # none lost
        assert p["records_complete"]["off"] <= 0.05, (profile, p["records_complete"])  # the switch works
        assert p["records_per_s"] > 0
    assert 100 < r["ring_memory"]["bytes_per_record"] < 10_000
    assert "calico" in flows.render(r) and "MiB per 4,096" in flows.render(r)
