"""``podnet.bench.l7`` at ``--quick`` size on a real Cilium lab: the proxy is in the L7 path only
(its 403 to a POST), both sides answer under load, the ratios are computed, and the lab leaves
nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import l7

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    stem = l7.BENCH_PREFIX[:-1]  # every lab of this bench is pnl7<hex>-
    return [n for n in netns if n.startswith(stem)]


def test_quick_l7_bench() -> None:
    before = set(_leftovers())
    r = l7.run(l7.QUICK)
    assert set(_leftovers()) <= before
    assert r["control"]["post_status"][l7.L7] == 403  # the proxy's answer
    assert r["control"]["post_status"][l7.L4] == 200  # nginx's
    for side in (l7.L4, l7.L7):
        for scenario in l7.SCENARIOS:
            figures = r["sides"][side][scenario]
            assert figures["rps"] > 0 and figures["errors"] == 0, (side, scenario, figures)
            assert len(figures["samples"]) == l7.QUICK.repeats
    assert set(r["ratios"]) == set(l7.SCENARIOS)
    assert "keepalive_1" in l7.render(r)
    for side in ("direct", "proxy"):  # both DNS sides answered, the proxy's through a DNS rule
        assert r["dns"][side]["lookups_per_s"] > 0, (side, r["dns"])
        assert len(r["dns"][side]["samples"]) == l7.QUICK.repeats
    assert r["control"]["dns_other_name"]["proxy"] == "REFUSED"
    assert r["dns"]["ratio"] > 0 and "DNS lookups/s" in l7.render(r)
