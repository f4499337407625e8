"""The data-path bench on a real lab, run once for the module as a user runs it (``podnet bench
--quick`` on one profile, data path only): every scenario has a positive sample for the profile and
for its hand-built baseline, the table has a ratio to the baseline on every data-path row,
``bench.json`` and the plots are written, and nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet.bench.datapath import BENCH_PREFIX, SCENARIOS
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


@dataclass
class BenchRun:
    proc: subprocess.CompletedProcess
    out: Path  # bench.json and the plots
    steps: list[tuple[int, int]]  # (done, total) of each data-path progress line
    left_behind: set[str]  # leftovers after the run that were not there before


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BenchRun]:
    """``podnet bench --quick --profiles calico-ipip`` (data path only), once for the module."""
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install wrk nginx-light)")
    out = tmp_path_factory.mktemp("bench")
    before = _leftovers()
    cmd = [sys.executable, "-m", "podnet.cli.main", "bench", "--quick", "--profiles", "calico-ipip"]
    cmd += [
        "--repeats",
        "1",
        "--duration",
        "1",
        "--skip-footprint",
        "--skip-control-plane",
        "--skip-flows",  # bench/test_bench_flows.py runs that phase
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    steps = [(int(m[1]), int(m[2])) for m in re.finditer(r"^\[(\d+)/(\d+)\] data path: ", proc.stderr, re.M)]
    # Processes the bench stopped may still be exiting (an nginx worker, a zombie not yet reaped):
    # what is left after 10 s is left behind.
    deadline = time.monotonic() + 10
    while (left := _leftovers() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    yield BenchRun(proc, out, steps, left)


def test_quick_run_of_one_profile_measures_every_scenario_and_cleans_up(bench_run: BenchRun) -> None:
    assert bench_run.proc.returncode == 0, bench_run.proc.stderr[-2000:]
    r = json.loads((bench_run.out / "bench.json").read_text())

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
            floor = 0 if key.startswith("conntrack_entries") else 1e-9  # counts: 0 is a result
            assert len(sc["samples"]) == 1 and sc["samples"][0] >= floor, (key, sc)
        s = side["scenarios"]
        assert s["latency_p50"]["samples"][0] <= s["latency_p99"]["samples"][0]
        paced, saturated = s["latency_p50"]["rate_per_s"][0], s["latency_sat_p50"]["rate_per_s"][0]
        assert 0 < paced <= r["settings"]["paced"]["target_per_s"] * 1.1 and paced < saturated

    # the bench runs with flow records off (bench.flows prices them): pod traffic no policy
    # concerns is untracked; the server a policy selects is tracked, and a hand-built path has no
    # conntrack at all
    prof_s, base_s = prof["scenarios"], r["baselines"]["ipip"]["scenarios"]
    assert prof_s["conntrack_entries"]["samples"] == [0]
    assert prof_s["conntrack_entries_policy"]["samples"][0] > 0
    assert base_s["conntrack_entries"]["samples"] == base_s["conntrack_entries_policy"]["samples"] == [0]

    steps = bench_run.steps
    assert steps and steps[-1][0] == steps[-1][1] and [d for d, _ in steps] == list(range(len(steps)))
    assert bench_run.left_behind == set()


def test_the_table_has_a_ratio_on_every_row_and_the_plots_are_written(bench_run: BenchRun) -> None:
    assert bench_run.proc.returncode == 0, bench_run.proc.stderr[-2000:]
    table = bench_run.proc.stdout
    for row in (
        "TCP bandwidth, 1 stream",
        "TCP bandwidth, 4 streams",
        "Latency P99, fixed rate",
        "Latency P99, saturation",
        "New connections/s",
        "New connections/s, policy selects the server",
        "CPU per Gbit",
    ):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert " x" in line, line  # the ratio to the baseline
    assert len(list(bench_run.out.glob("*.png"))) >= 8
