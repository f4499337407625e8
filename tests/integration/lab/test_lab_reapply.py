"""Issue 13's reproduction through the CLI: re-applying an edited Pod manifest that names no node
keeps the pod bound, so its node's agent keeps it under the NetworkPolicy that now selects it
(before, the re-apply dropped ``spec.nodeName`` and the policy failed open)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from lab_support import podnet, policy_applied

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: srv, namespace: t, labels: {app: srv}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli, namespace: t}
spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: t}
spec: {podSelector: {matchLabels: {role: locked}}, policyTypes: [Ingress]}
"""


def test_reapplied_pod_manifest_keeps_its_node_and_its_policy(tmp_path: Path):
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    cluster.up(LabSpec(nodes=2, underlay=random_underlay()), names)
    try:
        path = tmp_path / "p.yaml"
        path.write_text(MANIFEST)
        podnet(names, "apply", "-f", str(path))
        podnet(names, "lab", "wait", "--timeout", "30")
        probe = ("lab", "probe", "t/cli", "t/srv", "80/TCP", "--timeout", "2")
        assert podnet(names, *probe, check=False).returncode == 0  # open before role=locked

        path.write_text(MANIFEST.replace("labels: {app: srv}", "labels: {app: srv, role: locked}"))
        out = podnet(names, "apply", "-f", str(path)).stdout.splitlines()
        assert out == [
            "namespaces/t unchanged",
            "pods/srv configured",
            "pods/cli unchanged",
            "networkpolicies/deny unchanged",
        ]
        listed = json.loads(podnet(names, "get", "pods", "-n", "t", "-o", "json").stdout)["items"]
        pods = {p["metadata"]["name"]: p for p in listed}
        node = pods["srv"]["spec"]["nodeName"]
        assert node and pods["cli"]["spec"].get("nodeName"), pods
        header, *rows = podnet(names, "get", "pods", "-n", "t", "-o", "wide").stdout.splitlines()
        column = header.split().index("NODE")
        assert {r.split()[0]: r.split()[column] for r in rows} == {
            name: p["spec"]["nodeName"] for name, p in pods.items()
        }

        store = ResourceStore(EtcdDatastore([cluster.running_endpoint(names)]))
        policy_applied(store, [node], int(pods["srv"]["metadata"]["resourceVersion"]))
        blocked = podnet(names, *probe, check=False)
        assert blocked.returncode == 1 and "FAILED" in blocked.stdout, blocked.stdout
        explain = podnet(names, "policy", "explain", "--from", "t/cli", "--to", "t/srv", "--port", "80/TCP")
        assert "DENIED" in explain.stdout
    finally:
        cluster.teardown(names)
        clean(names)
