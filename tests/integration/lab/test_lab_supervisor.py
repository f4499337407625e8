"""The lab kubelet restarts a dead agent with back-off, as a DaemonSet would, and shows it in
``podnet lab status``; a node's restarted agent keeps its policy and routes; ``podnet node status``
on a lab host shows every node's BGP sessions.

One 2-node BGP lab for the module: ``srv`` on node-1 admits only ``cli`` (NetworkPolicy), ``other``
is refused; both probes run before and after each kill (the refused one is the policy's control).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator

import pytest
import yaml
from lab_support import until

from podnet.cli.main import main
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster, supervisor
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.netns import proc_alive
from podnet.lab.probe import probe
from podnet.lab.state import LabState
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PORT = 8080


def pod(name: str, node: str, app: str) -> dict:
    container = {"name": "c", "image": "agnhost", "ports": [{"containerPort": PORT, "protocol": "TCP"}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "t", "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [container]},
    }


POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "srv-from-cli", "namespace": "t"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "srv"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}]}],
    },
}


class Lab:
    def __init__(self, info: cluster.LabInfo, store: ResourceStore) -> None:
        self.info, self.names, self.store = info, info.names, store
        self.ips: dict[str, str] = {}

    def cli(self, *args: str) -> tuple[int, str]:
        """``podnet ARGS`` in this process (a status poll costs milliseconds, not an interpreter)."""
        out = io.StringIO()
        env = {"PODNET_LAB_PREFIX": self.names.prefix, "PODNET_ETCD_ENDPOINTS": self.info.etcd_endpoint}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                code = main(list(args))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return code, out.getvalue()

    def agent_row(self, node: str) -> dict[str, str]:
        """``podnet lab status``'s row of ``node``'s agent: state, restarts, last exit, back-off."""
        code, out = self.cli("lab", "status")
        assert code == 0, out
        rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]
        (row,) = [r for r in rows if r[0] == node and len(r) == 5]
        return dict(zip(("node", "state", "restarts", "last_exit", "backoff"), row, strict=True))

    def reaches(self, client: str) -> bool:
        return probe(self.names.pod_ns("t", client), self.ips["srv"], PORT, "TCP", timeout=1.0).ok

    def policy_and_routes_hold(self) -> None:
        assert self.reaches("cli"), "cli -> srv (node-2 -> node-1) must connect"
        assert not self.reaches("other"), "other -> srv must stay refused by the policy"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(LabSpec(nodes=2, bgp=True, underlay=random_underlay()), names)
        lab = Lab(info, ResourceStore(EtcdDatastore([info.etcd_endpoint])))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}}, POLICY]
        docs += [pod("srv", "node-1", "srv"), pod("cli", "node-2", "cli"), pod("other", "node-2", "other")]
        lab.store.apply([parse_resource(d) for d in docs])

        def running() -> dict[str, str] | None:
            pods = [p for p in lab.store.list(lookup("pods")) if p.metadata.namespace == "t"]
            ok = {p.metadata.name: p.status.pod_ip for p in pods if p.status and p.status.phase == "Running"}
            return ok if len(ok) == 3 else None

        lab.ips = until("the pods to run", running, timeout=30.0)

        def programmed() -> bool:
            _, out = lab.cli("get", "netpol", "srv-from-cli", "-n", "t", "-o", "yaml")
            conditions = {c["type"]: c for c in yaml.safe_load(out)["status"]["conditions"]}
            return conditions["Accepted"]["status"] == "True"

        until("the policy to be programmed on every node", programmed, timeout=30.0)
        until("node-1's pod block routed on node-2 (BGP)", lambda: lab.reaches("cli"), timeout=30.0)
        lab.policy_and_routes_hold()
        yield lab
    finally:
        with contextlib.suppress(Exception):
            cluster.teardown(names)
        clean(names)


def test_lab_status_shows_every_agent_running(lab: Lab) -> None:
    for node in ("node-1", "node-2"):
        assert lab.agent_row(node) == {
            "node": node,
            "state": "running",
            "restarts": "0",
            "last_exit": "-",
            "backoff": "0s",
        }


def test_a_killed_agent_is_restarted_then_backed_off(lab: Lab) -> None:
    first = cluster.agent_pids(lab.names)["node-1"]
    os.kill(first, signal.SIGKILL)
    row = until(
        "node-1's agent restarted once",
        lambda: (r := lab.agent_row("node-1"))["restarts"] == "1" and r,
        timeout=30.0,
        interval=0.05,
    )
    assert row["last_exit"].startswith("signal 9 (SIGKILL)")
    second = cluster.agent_pids(lab.names)["node-1"]
    assert second != first
    cluster.wait_agent(lab.names, "node-1")
    lab.policy_and_routes_hold()

    # At once again: now it waits its back-off (1 s) before the second restart.
    os.kill(second, signal.SIGKILL)
    row = until(
        "node-1's agent in back-off",
        lambda: (r := lab.agent_row("node-1"))["state"].startswith("back-off") and r,
        timeout=30.0,
        interval=0.05,
    )
    assert row["restarts"] == "1" and row["last_exit"].startswith("signal 9 (SIGKILL)")
    row = until(
        "node-1's agent restarted twice",
        lambda: (r := lab.agent_row("node-1"))["restarts"] == "2" and r,
        timeout=30.0,
        interval=0.05,
    )
    assert row["state"] == "running" and row["backoff"] == "2s"
    entry = LabState(lab.names.state_dir).meta()[supervisor.META_KEY]["node-1"]
    assert entry["started_at"] - entry["exited_at"] >= supervisor.BACKOFF_BASE
    cluster.wait_agent(lab.names, "node-1")
    lab.policy_and_routes_hold()
    assert lab.agent_row("node-2")["restarts"] == "0"


def test_an_agent_stopped_on_purpose_is_held_not_restarted(lab: Lab) -> None:
    """What the chaos scenarios do (cluster.stop_process / start_process): the kubelet holds off."""
    record = cluster.stop_process(lab.names, "agent-node-2", signal.SIGKILL)
    assert lab.agent_row("node-2")["state"] == "held"
    deadline = time.monotonic() + supervisor.BACKOFF_BASE + 0.5  # longer than any restart would take
    while time.monotonic() < deadline:
        assert "node-2" not in cluster.agent_pids(lab.names) or not proc_alive(
            cluster.agent_pids(lab.names)["node-2"]
        )
        time.sleep(0.05)
    cluster.start_process(lab.names, record)
    cluster.wait_agent(lab.names, "node-2")
    row = lab.agent_row("node-2")
    assert (row["state"], row["restarts"]) == ("running", "0")
    assert cluster.restart_agent(lab.names, "node-2") < 30  # the chaos helper: still not a restart
    assert lab.agent_row("node-2")["restarts"] == "0"
    lab.policy_and_routes_hold()


def test_node_status_on_a_lab_host_shows_every_node(lab: Lab) -> None:
    ips = {h.name: h.ip for h in lab.info.topology.nodes}

    def established() -> str | None:
        code, out = lab.cli("node", "status")
        return out if code == 0 and out.count("| Established |") == 2 else None

    out = until("both nodes' BGP sessions established", established, timeout=60.0, interval=0.5)
    one, two = out.split("=== node-2 ===")
    assert one.startswith("=== node-1 ===\nCalico process is running.")
    assert ips["node-2"] in one and ips["node-1"] not in one
    assert ips["node-1"] in two and ips["node-2"] not in two
    # NODE still picks one node, and JSON maps each node to its BGP protocols
    code, out = lab.cli("node", "status", "node-2")
    assert code == 0 and out.startswith("Calico process is running.") and "===" not in out
    code, out = lab.cli("node", "status", "-o", "json")
    assert code == 0 and sorted(yaml.safe_load(out)) == ["node-1", "node-2"]
