"""``podnet policy test`` run the way users change labels: edit the manifest, ``podnet apply -f``
the whole file again, and compare the probed truth table with the one ``explain`` predicts.

The manifest's Pods carry no ``nodeName`` (the lab schedules them), so every re-apply is the
situation that used to turn policy off (issue 13). After each step the probed table must agree
with explain and with the table this test expects (so two equally wrong views cannot pass).
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from lab_support import podnet, policy_applied, until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NS = "re"
NODES = ["node-1", "node-2"]
PODS = ["a", "b", "c"]
POLICIES = [
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "locked", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"role": "locked"}}, "policyTypes": ["Ingress"]},
    },
    {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "api-from-friends", "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": 80}]}
            ],
        },
    },
]
# Each step: the labels of every pod, as the user edits them in the manifest.
STEPS: list[dict[str, dict[str, str]]] = [
    {"a": {"app": "api"}, "b": {}, "c": {}},
    {"a": {"app": "api"}, "b": {"role": "friend"}, "c": {}},
    {"a": {"app": "api"}, "b": {"role": "friend"}, "c": {"role": "locked"}},
    {"a": {"role": "locked"}, "b": {"role": "friend"}, "c": {"role": "locked"}},
    {"a": {"app": "api"}, "b": {}, "c": {}},
]


def manifest(labels: dict[str, dict[str, str]]) -> str:
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    for name in PODS:
        meta = {"name": name, "namespace": NS, "labels": labels[name]}
        spec = {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    return yaml.safe_dump_all([*docs, *POLICIES], sort_keys=False)


def allowed(labels: dict[str, dict[str, str]], src: str, dst: str) -> bool:
    """This test's own reading of the two policies (a pod always reaches itself)."""
    if src == dst:
        return True
    if labels[dst].get("role") == "locked":
        return False
    if labels[dst].get("app") == "api":
        return labels[src].get("role") == "friend"
    return True


def test_reapplied_manifest_keeps_probed_and_explained_tables_equal(lab_names, tmp_path):  # type: ignore[no-untyped-def]
    names = lab_names()
    info = cluster.up(LabSpec(nodes=len(NODES), underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        path = tmp_path / "app.yaml"
        for step, labels in enumerate(STEPS):
            path.write_text(manifest(labels))
            podnet(names, "apply", "-f", str(path))

            def running() -> bool:
                pods = store.list(lookup("pods"), NS)
                return len(pods) == len(PODS) and all(p.status and p.status.phase == "Running" for p in pods)

            until(f"step {step}: every pod Running", running, timeout=60)
            pods = store.list(lookup("pods"), NS)
            bound = {p.metadata.name: p.spec.node_name for p in pods}
            assert all(node in NODES for node in bound.values()), (
                f"step {step}: re-apply unbound pods: {bound}"
            )
            objects = [*pods, *store.list(lookup("netpol"), NS)]
            policy_applied(store, NODES, max(int(o.metadata.resource_version) for o in objects))
            proc = podnet(names, "policy", "test", "-n", NS, "--port", "80/TCP", "-o", "json", check=False)
            report = json.loads(proc.stdout)
            pairs = report["ports"][0]["pairs"]
            bad = [p for p in pairs if not p["agree"]]
            assert proc.returncode == 0 and report["disagreements"] == 0, f"step {step}: {bad}"
            probed = {(p["from"], p["to"]): p["probed"] for p in pairs}
            want = {(f"{NS}/{s}", f"{NS}/{d}"): allowed(labels, s, d) for s in PODS for d in PODS}
            assert probed == want, f"step {step}: probed {probed}, expected {want}"
    finally:
        cluster.teardown(names)  # the lab_names fixture then cleans by prefix
