"""The agent never fails open: a pod it wired stays under policy whatever its stored Pod says.

The stored Pod is corrupted behind the API's back (its ``spec.nodeName`` dropped, then pointing at
another node), as a buggy client or a hand edit of etcd would. The node's agent must report the
conflict in its policy status and keep the endpoint isolated; a label change made meanwhile is
the positive control (the policy still follows the Pod's labels, and the probe can see an allow).
"""

from __future__ import annotations

import json
import os

import pytest
from lab_support import policy_applied, until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.probe import probe_all, truth_table
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NS = "guard"
DENY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny", "namespace": NS},
    "spec": {"podSelector": {"matchLabels": {"role": "locked"}}, "policyTypes": ["Ingress"]},
}


def pod(name: str, node: str, labels: dict[str, str]) -> dict:
    spec = {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": spec,
    }


def test_corrupted_pod_keeps_its_endpoint_under_policy(lab_names):  # type: ignore[no-untyped-def]
    names = lab_names()
    info = cluster.up(LabSpec(nodes=2, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
        docs = [namespace, pod("srv", "node-1", {"role": "locked"}), pod("cli", "node-2", {})]
        store.apply([parse_resource(d) for d in docs])

        def running() -> dict[str, str]:
            pods = store.list(lookup("pods"), NS)
            up = {
                f"{NS}/{p.metadata.name}": p.status.pod_ip
                for p in pods
                if p.status and p.status.phase == "Running"
            }
            return up if len(up) == 2 else {}

        ips = until("both pods Running", running, timeout=30)
        sources = {"guard/cli": names.pod_ns(NS, "cli")}

        def reaches() -> bool:
            return truth_table(probe_all(sources, {"guard/srv": ips["guard/srv"]}, 80, "TCP", 1.0))[
                "guard/cli"
            ]["guard/srv"]

        until("cli reaching srv before any policy (the probe's positive control)", reaches, timeout=30)
        store.apply([parse_resource(DENY)])

        until("the deny policy isolating srv", lambda: not reaches())
        key = store.key(lookup("pods"), "srv", NS)

        def corrupt(change) -> int:  # type: ignore[no-untyped-def]
            """Rewrite the stored Pod behind the API (no apply semantics), return the put's revision."""
            doc = json.loads(store.store.get(key).value)
            change(doc)
            return store.store.put(key, json.dumps(doc).encode())

        # nodeName dropped (what `apply` of a manifest without it used to store)
        rev = corrupt(lambda d: d["spec"].pop("nodeName"))
        status = policy_applied(store, ["node-1"], rev)["node-1"]
        assert "claims no node" in status.endpoint_conflicts.get("guard/srv", ""), status
        assert not reaches(), "srv lost its policy when its Pod dropped nodeName"

        # the Pod claims the other node
        rev = corrupt(lambda d: d["spec"].update(nodeName="node-2"))
        status = policy_applied(store, ["node-1"], rev)["node-1"]
        assert "claims node 'node-2'" in status.endpoint_conflicts.get("guard/srv", ""), status
        assert not reaches(), "srv lost its policy when its Pod claimed node-2"

        # positive control: the labels still count; without role=locked, srv is open again
        corrupt(lambda d: d["metadata"]["labels"].pop("role"))
        until("srv open once its Pod no longer carries role=locked", reaches, timeout=30)
        rev = corrupt(lambda d: d["metadata"]["labels"].update(role="locked"))
        policy_applied(store, ["node-1"], rev)
        assert not reaches(), "srv not isolated again by its label while its Pod claims node-2"

        # repaired: the conflict is reported no more
        rev = corrupt(lambda d: d["spec"].update(nodeName="node-1"))
        status = policy_applied(store, ["node-1"], rev)["node-1"]
        assert status.endpoint_conflicts == {}, status
        assert not reaches()
    finally:
        cluster.teardown(names)  # the lab_names fixture then cleans by prefix
