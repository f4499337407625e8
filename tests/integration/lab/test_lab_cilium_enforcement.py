"""Cilium's policy enforcement mode (ClusterConfiguration ``policyEnforcementMode``) with real
traffic on a 2-node Cilium lab: ``default`` isolates a pod once a policy selects it, ``always``
every pod in both directions (the node still reaches its own), ``never`` none, whatever the
policies say."""

from __future__ import annotations

import os
import secrets

import pytest
from lab_support import until

from podnet.dataplane.lxc import pinned_endpoints
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import Probe, run_probes
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NS = "mode"
PORTS = [{"name": "http", "containerPort": 8080}]


def pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": PORTS}]},
    }


POLICY = {  # isolates "web": only "client" may reach it
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "web", "namespace": NS},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}],
    },
}


def test_enforcement_modes_default_always_never() -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=2, profile="cilium", underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
        docs += [pod("client", "node-1"), pod("web", "node-2"), pod("other", "node-2")]
        store.apply([parse_resource(d) for d in [*docs, POLICY]])

        def ips() -> dict[str, str]:
            return {p.metadata.name: p.status.pod_ip for p in store.list(lookup("pods"), NS) if p.status}

        until("pods Running", lambda: len([ip for ip in ips().values() if ip]) == 3, timeout=30)
        ip = ips()
        config = store.get(lookup("clusterconfigurations"), "default")

        def mode(value: str) -> None:
            doc = config.model_dump(mode="json", by_alias=True, exclude_none=True)
            doc["spec"]["policyEnforcementMode"] = value
            doc["metadata"].pop("resourceVersion", None)
            store.apply([parse_resource(doc)])

        def table() -> dict[tuple[str, str], bool]:
            cells = [("client", "web"), ("other", "web"), ("client", "other"), ("web", "other")]
            probes = [Probe(names.pod_ns(NS, s), ip[d], 8080, "TCP", expect=f"{NS}/{d}") for s, d in cells]
            node = Probe(names.node_ns("node-2"), ip["other"], 8080, "TCP", expect=f"{NS}/other")
            results = run_probes([*probes, node], 0.7)
            return {
                **{c: r.ok for c, r in zip(cells, results, strict=False)},
                ("node-2", "other"): results[-1].ok,
            }

        def enforced(name: str) -> bool:
            records = pinned_endpoints(os.path.join(names.state_dir, "bpf", "node-2", "lxc")).values()
            return any(r.ipv4 == ip[name] and r.ingress_enforced for r in records)

        expected = {  # mode -> the cells' verdicts
            "default": {("client", "web"): True, ("other", "web"): False, ("client", "other"): True},
            # both directions of every pod: client's egress too (no egress policy allows it)
            "always": {("client", "web"): False, ("other", "web"): False, ("client", "other"): False},
            "never": {("client", "web"): True, ("other", "web"): True, ("client", "other"): True},
        }
        for value in ("default", "always", "never", "default"):
            mode(value)
            until(
                f"{value}: other's ingress", lambda v=value: enforced("other") == (v == "always"), timeout=15
            )
            want = {**expected[value], ("web", "other"): value != "always", ("node-2", "other"): True}
            got = until(f"{value}: the table", lambda w=want: (t := table()) == w and t, timeout=10)
            assert got == want
    finally:
        cluster.teardown(names)
        clean(names)
