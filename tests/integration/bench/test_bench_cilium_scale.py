"""``podnet.bench.cilium_scale`` at ``--quick`` size on a real Cilium lab: identities from real and
datastore-only pods reach every ipcache, the CNPs every node's maps, each change its keys, and the
lab leaves nothing behind."""

from __future__ import annotations

import subprocess

import pytest

from podnet.bench import cilium_scale

pytestmark = [pytest.mark.root, pytest.mark.etcd]


def _leftovers() -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    stem = cilium_scale.BENCH_PREFIX[:-2]  # "pncs": every lab of this bench is pncs<hex>-
    return [n for n in netns if n.startswith(stem)]


def test_quick_cilium_scale() -> None:
    before = set(_leftovers())
    opts = cilium_scale.QUICK
    r = cilium_scale.run(opts)
    assert set(_leftovers()) <= before
    assert r["identities"] >= opts.identities  # real pods' and the simulated nodes' pods'
    assert r["params"]["pods"] + r["params"]["simulated_pods"] == opts.identities
    assert 0 < r["cold_programming_s"] < opts.timeout
    for node, maps in r["maps"].items():
        assert maps["pn_policy"]["elements"] > opts.policies, node  # several entries per policy
        assert maps["pn_ipcache"]["elements"] >= opts.identities, node  # every pod address
        assert maps["pn_policy"]["bytes_memlock"] > 0
    change = r["change"]
    assert change["all_nodes"]["n"] == opts.changes and len(change["samples_ms"]) == opts.changes
    assert 0 < change["first_node"]["p50_ms"] <= change["all_nodes"]["p99_ms"]
    for when in ("memory_idle", "memory_loaded"):
        assert {m["rss_mib"] > 10 for m in r[when].values()} == {True}
    assert "change -> map" in cilium_scale.render(r)
