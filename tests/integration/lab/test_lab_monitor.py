"""``podnet monitor --type drop`` against a real lab: a NetworkPolicy drop is read from NFLOG by the
node's agent and shown by the CLI (json and text) with the pods, the port and the policy; and
``--follow`` prints a drop made after it started, and leaves quietly on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import probe_all
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PODNET = os.path.join(os.path.dirname(sys.executable), "podnet")
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-deny-all", "namespace": "np"},
    "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"]},
}


def monitor(prefix: str, *extra: str) -> list[str]:
    cmd = [PODNET, "monitor", "--type", "drop", "--node", "node-1", "--lab-prefix", prefix, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def line_reader(proc: subprocess.Popen) -> queue.Queue[str]:
    """The process's output lines as they come, through a thread (``select`` on the pipe misses
    lines already read into the file object's buffer when several come in one write)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read_line(lines: queue.Queue[str], deadline: float) -> str | None:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return None


def test_monitor_shows_policy_drops_with_pods_port_and_policy():
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=2, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}]
        for name, node, labels in [("api", "node-1", {"app": "api"}), ("far", "node-2", {})]:
            spec = {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}
            meta = {"name": name, "namespace": "np", "labels": labels}
            docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        store.apply([parse_resource(d) for d in docs])
        deadline = time.monotonic() + 30
        while True:
            running = {
                f"np/{p.metadata.name}": p.status.pod_ip
                for p in store.list(lookup("pods"), "np")
                if p.status and p.status.phase == "Running"
            }
            if len(running) == 2:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        far = {"np/far": names.pod_ns("np", "far")}
        api = {"np/api": running["np/api"]}
        assert probe_all(far, api, 8080, "TCP", 1.0)["np/far"]["np/api"].ok  # open before the policy
        store.apply([parse_resource(POLICY)])
        # Until a probe is blocked AND its drop is in the monitor (a probe may also fail for a
        # reason of its own on a busy machine, before the policy is in force).
        deadline = time.monotonic() + 15
        mine: list[dict] = []
        while not mine:
            assert time.monotonic() < deadline, "the policy never blocked far -> api, or no drop was seen"
            if not probe_all(far, api, 8080, "TCP", 1.0)["np/far"]["np/api"].ok:
                records = [json.loads(line) for line in monitor(names.prefix, "-o", "json")]
                mine = [r for r in records if r["dport"] == 8080]
            time.sleep(0.2)
        drop = mine[-1]
        assert (drop["node"], drop["protocol"], drop["direction"]) == ("node-1", "TCP", "ingress")
        assert (drop["srcPod"], drop["src"]) == ("np/far", running["np/far"])
        assert (drop["dstPod"], drop["dst"]) == ("np/api", running["np/api"])
        assert drop["reason"] == "default deny of NetworkPolicy np/api-deny-all"
        assert drop["policies"] == [
            {
                "kind": "NetworkPolicy",
                "namespace": "np",
                "name": "api-deny-all",
                "tier": "default",
                "rule": -1,
            }
        ]

        lines = [line for line in monitor(names.prefix) if ":8080 " in line]
        assert lines
        print("\n".join(["text:", lines[-1], "json:", json.dumps(drop)]))
        assert f"node-1 DROP TCP np/far {running['np/far']} -> np/api {running['np/api']}:8080 " in lines[-1]
        assert lines[-1].endswith("ingress: default deny of NetworkPolicy np/api-deny-all")

        # --follow: a drop made after it started (another port) comes out as a line of its own.
        cmd = [
            PODNET,
            "monitor",
            "--type",
            "drop",
            "--node",
            "node-1",
            "--lab-prefix",
            names.prefix,
            "--follow",
            "-o",
            "json",
        ]
        env = dict(os.environ, PYTHONFAULTHANDLER="1")  # SIGABRT dumps every thread's stack
        # As from a terminal: SIGINT at its default (a test run started in the background inherits
        # it ignored, and Python then installs no KeyboardInterrupt: Ctrl-C would be ignored).
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            time.sleep(0.5)  # its long poll is in place (a drop before it would be buffered anyway)
            assert not probe_all(far, api, 9090, "TCP", 0.5)["np/far"]["np/api"].ok
            deadline = time.monotonic() + 15
            found = None
            lines = line_reader(proc)
            while found is None:
                line = read_line(lines, deadline)
                assert line, "no drop on port 9090 from podnet monitor --follow"
                record = json.loads(line)
                if record["dport"] == 9090:
                    found = record
            assert (found["srcPod"], found["dstPod"], found["protocol"]) == ("np/far", "np/api", "TCP")
            assert "np/api-deny-all" in found["reason"]
            proc.send_signal(signal.SIGINT)  # Ctrl-C: quiet, exit 0
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # show where it hung
                proc.send_signal(signal.SIGABRT)
                _, err = proc.communicate(timeout=10)
                raise AssertionError(f"monitor --follow ignored Ctrl-C for 10 s:\n{err}") from None
            assert proc.returncode == 0, err
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        cluster.teardown(names)
        clean(names)
