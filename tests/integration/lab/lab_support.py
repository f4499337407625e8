"""What lab tests share: the ``podnet`` CLI run as a user runs it against one lab, and fencing on
a condition (never a fixed sleep), such as every node's policy status reaching a revision."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from podnet.calc.policy_status import PolicyReport
from podnet.datastore.resources import ResourceStore
from podnet.lab.naming import LabNames

T = TypeVar("T")
Port = tuple[str | None, int, str]  # a container port: (name or None, number, protocol)


def podnet(
    names: LabNames, *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``podnet ARGS`` in a subprocess, on the lab ``names`` (PODNET_LAB_PREFIX)."""
    env = {**os.environ, "PODNET_LAB_PREFIX": names.prefix}
    env.pop("PODNET_ETCD_ENDPOINTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"podnet {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def until(what: str, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.2) -> T:
    """Poll ``predicate()`` until it returns something truthy (returned); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def policy_report(store: ResourceStore, node: str) -> PolicyReport | None:
    """The policy status ``node``'s agent last wrote (None before its first policy sync)."""
    kv = store.store.get(store.layout.policy_status(node))
    return PolicyReport.from_json(kv.value) if kv else None


def policy_applied(store: ResourceStore, nodes: list[str], revision: int, timeout: float = 30.0) -> dict:
    """Wait until every node's kernel ruleset includes datastore ``revision``; their reports."""

    def check() -> dict[str, PolicyReport] | None:
        reports = {n: policy_report(store, n) for n in nodes}
        done = all(r is not None and r.applied_revision >= revision for r in reports.values())
        return reports if done else None  # type: ignore[return-value]

    return until(f"{', '.join(nodes)} applying revision {revision}", check, timeout)


def agent_metric(netns: str, name: str) -> float:
    """The sum of the samples of metric ``name`` (e.g. ``podnet_dataplane_syncs_total{``) that the
    agent of the node whose namespace is ``netns`` serves on 127.0.0.1:9099/metrics."""
    import urllib.request

    from podnet.dataplane.netns import in_netns

    with in_netns(netns):
        text = urllib.request.urlopen("http://127.0.0.1:9099/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def pod_doc(
    key: str,
    node: str,
    labels: dict[str, str],
    ports: tuple[Port, ...],
    account: str | None = None,
    host_network: bool = False,
) -> dict:
    """A Pod ``namespace/name`` on ``node`` with these labels and container ports (the lab's pod
    server serves each), its ServiceAccount, or on the host's network."""
    namespace, name = key.split("/", 1)
    container_ports = [
        {"containerPort": number, "protocol": protocol, **({"name": port_name} if port_name else {})}
        for port_name, number, protocol in ports
    ]
    spec: dict = {"nodeName": node, "containers": [{"name": "c", "ports": container_ports}]}
    if account:
        spec["serviceAccountName"] = account
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }
