"""``python -m podnet.bench.services --quick`` on real labs (both profiles): every figure is there and
positive, and nothing is left behind: no lab namespace, no nginx or wrk of ours."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

import pytest

from podnet.bench.services import BENCH_PREFIX, MODES, PROFILES, TARGETS, main
from podnet.lab.naming import LabNames

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture(autouse=True)
def _need_wrk_and_nginx():  # on top of the directory's conftest (root, ip, nft, etcd, ...)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} is not installed (Debian: apt-get install wrk nginx-light; scripts/setup.sh)"
            )


def _leftovers() -> list[str]:
    """Lab namespaces, processes and cgroups of any bench.services lab. Every nginx and wrk the bench
    starts lives in a pod cgroup under ``podnet-lab-pnsvXXXX``: no such cgroup, none of them left
    (a cgroup can only be removed once empty); the bench also checks its nginx pids one by one."""
    stem = BENCH_PREFIX[:-1]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    procs = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    ours = [p for p in procs if f"/podnet-lab/{stem}" in p or f"--lab-prefix={stem}" in p]
    cgroups = glob.glob(os.path.join(LabNames(BENCH_PREFIX).cgroup_root, f"podnet-lab-{stem}*"))
    return [n.split()[0] for n in netns if n.startswith(stem)] + ours + cgroups


def test_quick_run_reports_every_figure(tmp_path, capsys):
    before = set(_leftovers())
    out = tmp_path / "services.json"
    assert main(["--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "to ClusterIP conn/s" in table and "keep-alive" in table

    assert r["params"]["repeats"] == 1 and r["params"]["duration_s"] == 2
    assert list(r["profiles"]) == list(PROFILES)
    for profile, pr in r["profiles"].items():
        assert pr["nginx_processes"] >= 4, profile  # a master and a worker per backend, seen and checked
        assert set(pr["cluster_ips"]) == {"service", "service1"}
        for mode in MODES:
            fig = pr[mode]
            for target in TARGETS:
                t = fig[target]
                assert t["per_s"]["n"] == 1 and 0 < t["per_s"]["min"] <= t["per_s"]["median"], (
                    profile,
                    mode,
                    target,
                )
                assert t["requests"] > 0 and t["latency_ms"]["p50"] > 0 and t["latency_ms"]["p99"] > 0
                assert t["errors"] <= 0.01 * t["requests"], (profile, mode, target, t["errors"])
            assert fig["ratio"] > 0 and fig["ratio_one_backend"] > 0
            assert fig["ratio"] == round(
                fig["service"]["per_s"]["median"] / fig["direct"]["per_s"]["median"], 3
            )
        assert pr["leftovers"] == [], profile
        assert table.count(f"\n{profile} ") >= 1
    assert r["leftovers"] == [] and r["wall_s"] > 0
    assert set(_leftovers()) <= before
