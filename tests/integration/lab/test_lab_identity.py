"""Cilium-profile identities on a 2-node lab: each pod's label set gets one cluster-wide number,
pods of the same labels share it across nodes, relabelling a pod gives it another, and what no pod
uses any more loses its references and is collected; the Calico profile allocates none."""

from __future__ import annotations

import json
import os
import secrets

import pytest
from lab_support import podnet, policy_applied, until

from podnet.calc.identity import identity_labels
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.identity_alloc import collect_garbage, list_identities, references
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource
from podnet.model.identity import LabelSet

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NS = "ident"
PODS = {"web-1": ("node-1", "web"), "web-2": ("node-2", "web"), "api": ("node-1", "api")}


def pod(name: str, node: str, app: str) -> dict:
    labels = {"app": app, "pod-template-hash": secrets.token_hex(3)}  # per pod: must not count
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
    }


def label_set(app: str) -> LabelSet:
    namespace = {"kubernetes.io/metadata.name": NS, "team": "blue"}
    return LabelSet.of(identity_labels({"app": app}, NS, namespace, "", "lab"))


@pytest.mark.parametrize("profile", ["cilium", "calico"])
def test_identities_follow_the_pods(profile: str) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=2, profile=profile, underlay=random_underlay()), names)
    try:
        raw = EtcdDatastore([info.etcd_endpoint])
        store = ResourceStore(raw)
        config = {
            "apiVersion": "podnet.io/v1",
            "kind": "ClusterConfiguration",
            "metadata": {"name": "default"},
        }
        config["spec"] = {"profile": profile, "clusterName": "lab"}
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NS, "labels": {"team": "blue"}},
        }
        store.apply([parse_resource(config), parse_resource(namespace)])
        store.apply([parse_resource(pod(n, node, app)) for n, (node, app) in PODS.items()])
        layout = store.layout

        def running() -> bool:
            pods = store.list(lookup("pods"), NS)
            return len(pods) == len(PODS) and all(p.status and p.status.phase == "Running" for p in pods)

        until("pods Running", running, timeout=60)
        if profile == "calico":  # the cilium case is the positive control of this one
            pods = raw.list(layout.resource_type_prefix("pods", NS))[0]
            policy_applied(store, ["node-1", "node-2"], max(kv.mod_revision for kv in pods))
            assert list_identities(raw, layout) == {}
            return
        web, api = label_set("web"), label_set("api")

        def allocated() -> dict:
            got = {labels: n for n, labels in list_identities(raw, layout).items()}
            refs = references(raw, layout)
            if web in got and api in got and sorted(refs.get(got[web], [])) == ["node-1", "node-2"]:
                return got
            return {}

        got = until("web and api allocated, web referenced by both nodes", allocated, timeout=30)
        assert got[web] != got[api]
        assert references(raw, layout)[got[api]] == ["node-1"]
        shown = json.loads(podnet(names, "identity", "get", str(got[web]), "-o", "json").stdout)
        assert shown["nodes"] == ["node-1", "node-2"]
        assert "k8s:io.cilium.k8s.policy.cluster=lab" in shown["labels"]
        assert "k8s:io.cilium.k8s.namespace.labels.team=blue" in shown["labels"]
        assert not any("pod-template-hash" in label for label in shown["labels"])

        # relabel api: it gets another identity; the old one loses its reference and is collected
        relabelled = pod("api", "node-1", "api-v2")
        current = store.get(lookup("pods"), "api", NS)
        relabelled["status"] = current.to_dict().get("status")
        store.apply([parse_resource(relabelled)])
        api2 = label_set("api-v2")
        until(
            "api-v2 allocated and the old api identity released",
            lambda: (
                api2 in {labels for labels in list_identities(raw, layout).values()}
                and got[api] not in references(raw, layout)
            ),
            timeout=30,
        )
        assert collect_garbage(raw, layout) == [got[api]]
        assert got[web] in list_identities(raw, layout)  # still used by both nodes: kept
    finally:
        clean(names)
