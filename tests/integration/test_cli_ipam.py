"""``podnet ipam`` and ``podnet demo`` as a user runs them, against a real etcd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

pytestmark = pytest.mark.etcd

EXAMPLES = Path(str(files("podnet") / "examples"))


def test_check_reports_a_leak_made_on_purpose_and_gc_collects_it(podnet):
    assert podnet("apply", "-f", str(EXAMPLES))[0] == 0
    code, out, _ = podnet(
        "ipam", "assign", "--node", "node-1", "--pod", "shop/web-1", "--handle", "net.c1.eth0"
    )
    assert code == 0
    live_ip = out.strip()
    code, out, _ = podnet(
        "ipam", "assign", "--node", "node-2", "--pod", "shop/ghost", "--handle", "net.c2.eth0"
    )
    leaked_ip = out.strip()
    assert live_ip != leaked_ip

    code, out, _ = podnet("ipam", "check", "-o", "json")
    report = json.loads(out)
    assert code == 1 and report["counts"] == {"leaked-address": 1}
    assert report["issues"][0]["address"] == leaked_ip and report["issues"][0]["handle"] == "net.c2.eth0"

    code, out, _ = podnet("ipam", "gc", "--interval", "0.1")
    assert code == 0 and "net.c2.eth0" in out
    code, out, _ = podnet("ipam", "check")
    assert code == 0 and "no problems found" in out

    # Deleting the pod turns its address into a leak too; release by handle is idempotent.
    podnet("delete", "pod", "web-1", "-n", "shop")
    assert podnet("ipam", "check")[0] == 1
    assert live_ip in podnet("ipam", "release", "--handle", "net.c1.eth0")[1]
    assert "nothing" in podnet("ipam", "release", "--handle", "net.c1.eth0")[1]
    assert podnet("ipam", "check")[0] == 0


def test_show_counts_blocks_per_node(podnet):
    podnet("apply", "-f", str(EXAMPLES))
    for i in range(3):
        podnet("ipam", "assign", "--node", "node-1", "--handle", f"h{i}", "--pod", "shop/web-1")
    code, out, _ = podnet("ipam", "show", "--show-blocks", "-o", "json")
    [pool] = json.loads(out)
    assert pool["allocated"] == 3 and pool["size"] == 65536
    assert [(b["node"], b["allocated"]) for b in pool["blocks"]] == [("node-1", 3)]
    code, out, _ = podnet("ipam", "assign", "--node", "nope", "--handle", "x")
    assert code == 3


@pytest.mark.lab  # as root, part 2 of the demo builds a 3-node lab
def test_demo_runs_end_to_end_and_leaves_nothing_behind(tmp_path):
    """The README's main command (after setup): both parts, the lab under a prefix of its own."""
    import secrets

    from podnet.lab.cleanup import snapshot_host

    prefix = f"pnt{secrets.token_hex(2)}-"
    env = dict(os.environ, TMPDIR=str(tmp_path), PODNET_LAB_PREFIX=prefix)
    env.pop("PODNET_ETCD_ENDPOINTS", None)
    as_root = os.geteuid() == 0
    before = snapshot_host(prefix) if as_root else None
    cmd = [sys.executable, "-m", "podnet.cli.main", "demo"] + ([] if as_root else ["--skip-lab"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "metadata.name: required" in out and "spec.cidr: required" in out
    assert "1 leaked-address" in out and "no problems found" in out
    assert out.rstrip().endswith("demo finished: every step did what it should")
    assert not list(Path(tmp_path).glob("podnet-etcd-*")), "the demo must remove its etcd data"
    if as_root:
        assert "7 pods Running" in out  # six demo pods and the cluster DNS
        assert out.count("✓") == 2 * 36 and "✗" not in out, "every pod must reach every pod, TCP and UDP"
        flows = [
            line for line in out.splitlines() if "demo/echo-1:" in line and "-> demo/echo-5:8080" in line
        ]
        assert {"to-network FORWARDED", "to-endpoint FORWARDED"} <= {
            " ".join(line.split()[-5:-3]) for line in flows
        }, out[-2000:]  # the probe's connection, seen leaving node-1 and entering node-3
        assert snapshot_host(prefix).diff(before) == {}, "the lab must leave nothing behind"
