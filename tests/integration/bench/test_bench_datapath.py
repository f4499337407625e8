"""``podnet.bench.datapath.run`` on a real lab (one profile, quick): every scenario has a positive
sample for the profile and for its hand-built baseline, and nothing is left behind."""

from __future__ import annotations

import os
import shutil

import pytest

from podnet.bench.datapath import BENCH_PREFIX, SCENARIOS, run
from podnet.lab.naming import MARKER_ENV
from podnet.lab.netns import (
    all_pids,
    list_netns,
    netns_id,
    proc_cgroup,
    proc_cmdline,
    proc_environ,
    proc_netns_id,
)

pytestmark = [pytest.mark.root, pytest.mark.etcd]

STEM = BENCH_PREFIX[:-1]  # labs are pndpXXXX-, the hand-built side's processes carry pndpXXXX- too
HAND_STEM = "pnhb"  # podnet.bench.throughput.HandBuilt's namespaces
TOOLS = ("iperf3", "nginx", "wrk")


@pytest.fixture(autouse=True)
def _need_wrk_and_nginx():
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install wrk nginx-light)")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _leftovers() -> set[str]:
    """Namespaces of a bench lab or a hand-built baseline, and processes that belong to this bench:
    its marker (environment), its lab prefix or temp dir (command line), its labs' cgroups, or a tool
    left in a network namespace nobody names any more (an nginx worker renames itself and overwrites
    its environment with that title, so neither marker shows on it). Other engineers' labs and tools
    running at the same time are not ours."""
    out = {f"netns {n}" for n in list_netns(STEM) + list_netns(HAND_STEM)}
    named = {netns_id(n) for n in list_netns()} | {netns_id("/proc/1/ns/net")}
    for pid in all_pids():
        if pid == os.getpid():
            continue
        cmd = " ".join(proc_cmdline(pid))
        ours = (
            proc_environ(pid).get(MARKER_ENV, "").startswith(STEM)
            or f"--lab-prefix={STEM}" in cmd
            or f"/podnet-lab/{STEM}" in cmd
            or "podnet-bench-datapath" in cmd
            or f"/podnet-lab-{STEM}" in (proc_cgroup(pid) or "")
        )
        orphan = _comm(pid) in TOOLS and proc_netns_id(pid) not in named
        if ours or orphan:
            out.add(f"process {pid} {cmd[:120]}")
    return out


def test_quick_run_of_one_profile_measures_every_scenario_and_cleans_up():
    before = _leftovers()
    steps: list[tuple[str, int, int]] = []
    r = run(["calico-ipip"], 1, 1.0, quick=True, progress=lambda m, d, t: steps.append((m, d, t)))

    assert r["settings"] == r["settings"] | {"repeats": 1, "duration": 1.0, "quick": True}
    assert r["machine"]["cpus"] >= 1 and r["machine"]["kernel"] and r["machine"]["python"]
    assert set(r["baselines"]) == {"ipip"} and set(r["profiles"]) == {"calico-ipip"}
    prof = r["profiles"]["calico-ipip"]
    assert prof["path"] == "ipip"
    assert prof["spec"]["profile"] == "calico" and prof["spec"]["encapsulation"] == "ipip"
    assert prof["spec"]["nodes"] == 2
    assert prof["pod_mtu"] == r["baselines"]["ipip"]["pod_mtu"] == 1480  # same MTU: a fair comparison
    for side in (prof, r["baselines"]["ipip"]):
        assert set(side["scenarios"]) == set(SCENARIOS)
        for key, unit in SCENARIOS.items():
            sc = side["scenarios"][key]
            assert sc["unit"] == unit
            assert len(sc["samples"]) == 1 and sc["samples"][0] > 0, (key, sc)
        s = side["scenarios"]
        assert s["latency_p50"]["samples"][0] <= s["latency_p99"]["samples"][0]
        paced, saturated = s["latency_p50"]["rate_per_s"][0], s["latency_sat_p50"]["rate_per_s"][0]
        assert 0 < paced <= r["settings"]["paced"]["target_per_s"] * 1.1 and paced < saturated

    assert steps[-1][1] == steps[-1][2] and [d for _, d, _ in steps] == list(range(len(steps)))
    assert _leftovers() <= before
