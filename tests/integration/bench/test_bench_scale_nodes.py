"""``podnet.bench.scale_nodes`` at a small size on a real lab: the simulated nodes reach the real
agents (a route and an FDB entry per simulated node in each kernel), BIRD accepts every rendered
configuration with the route-reflector topology, the joined node's route appears on every real
node, and the lab leaves nothing behind. Timings are the bench's job, not asserted here."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from podnet.bench import scale_nodes
from podnet.bench.node_growth import SERIES, series

pytestmark = [pytest.mark.root, pytest.mark.etcd]
SIZES = (4, 12)


def _leftovers() -> list[str]:
    stem = scale_nodes.BENCH_PREFIX[:-1]  # "pnnd": every lab of this bench is pnnd<hex>-
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [n for n in netns if n.startswith(stem)] + [p for p in procs if f"--lab-prefix={stem}" in p]


def test_quick_nodes_section(tmp_path) -> None:
    if shutil.which("bird") is None:
        pytest.skip("bird is not installed")
    before = set(_leftovers())
    steps: list[str] = []
    result = scale_nodes.run(step=steps.append, sizes=SIZES)
    assert set(_leftovers()) <= before
    assert any("one node joins" in s for s in steps)

    samples = result["samples"]
    assert sorted(int(n) for n in samples["sizes"]) == list(SIZES)
    for size in SIZES:
        s = samples["sizes"][str(size)]
        assert set(s["agents"]) == {"node-1", "node-2", "node-3"}
        for node, agent in s["agents"].items():
            assert agent["bird_conf"]["accepted"], (size, node, agent["bird_conf"]["message"])
            assert agent["kernel"]["routes"] == size, (size, node)  # one VXLAN route per simulated block
            assert agent["kernel"]["fdb"] == size + 2, (size, node)  # and the two other real nodes
            reflector = node in scale_nodes.REFLECTORS
            assert agent["bird_conf"]["peerings"] == (size + 2 if reflector else 2), (size, node)
            assert agent["bird"] is not None and agent["agent"]["rss_mib"] > 10
        for node, steps_of in s["compute"]["nodes"].items():
            assert steps_of["bird"]["accepted"], steps_of["bird"]["message"]
            assert steps_of["bird"]["peerings"] == s["agents"][node]["bird_conf"]["peerings"]
            assert steps_of["fdb"]["fdb"] == size + 2
            assert steps_of["policy"]["endpoints"] == 30  # the node's datastore-only pods
        join = s["join"]
        assert set(join["route_s"]) == {"node-1", "node-2", "node-3"}
        for change in ("node_add", "pod_add"):
            assert join[change]["by_kind"]["status/policy"]["events"] >= 3
        assert join["node_add"]["by_kind"]["nodes"]["events"] == 1
        assert join["node_add"]["by_kind"]["ipam/blocks"]["events"] == 1
        assert join["pod_add"]["by_kind"]["pods"]["events"] == 1
    assert all(v is not None for values in series(samples).values() for v in values.values()), series(samples)

    rows = result["rows"]
    accepted = [r for r in rows if "accepted by bird -p" in r.figure]
    assert len(accepted) == len(SIZES) and all(r.met for r in accepted)
    assert {f"growth: {name}" for name in SERIES} <= {r.figure for r in rows}
    assert samples["growth"]["dominates"].startswith(f"At {SIZES[-1]:,} nodes")

    from podnet.bench.scale import write

    doc = {"order": ["nodes"], "nodes": {"rows": [r.to_dict() for r in rows], "samples": samples}}
    write(doc, str(tmp_path))
    assert (tmp_path / "bench.json").exists() and (tmp_path / "nodes_growth.png").exists()
