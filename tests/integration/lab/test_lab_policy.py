"""Kubernetes NetworkPolicy enforced by the agents, with real TCP and UDP traffic across nodes:
isolation by a policy, an allow by label on a named port, a label change after the pods exist,
and the policy's removal (first slice of the truth-table suite)."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import probe_all, truth_table
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PORTS = [{"name": "web", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]
FRIENDS = {"podSelector": {"matchLabels": {"role": "friend"}}}
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-from-friends", "namespace": "np"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [{"from": [FRIENDS], "ports": [{"port": "web"}]}],
    },
}


def expected(pods: list[str], friends: set[str], policy: bool) -> dict:
    """TCP truth table: only friends (and the api pod itself) reach api; everything else is open."""
    return {s: {d: not policy or d != "np/api" or s in friends or s == d for d in pods} for s in pods}


def wait_table(names, pods, port, proto, want, timeout=5.0) -> None:
    sources = {k: names.pod_ns(*k.split("/")) for k in pods}
    deadline = time.monotonic() + timeout
    while True:
        got = truth_table(probe_all(sources, pods, port, proto, 1.0))
        if got == want:
            return
        assert time.monotonic() < deadline, f"{proto}: got {got}, want {want}"
        time.sleep(0.2)


def test_policy_isolates_allows_by_label_follows_relabels_and_goes_away():
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=3, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}]
        layout = [
            ("api", "node-1", {"app": "api"}),
            ("near", "node-1", {}),
            ("friend", "node-2", {"role": "friend"}),
            ("far", "node-3", {}),
        ]
        for name, node, labels in layout:
            spec = {"nodeName": node, "containers": [{"name": "c", "ports": PORTS}]}
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
            if len(running) == 4:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        keys = sorted(running)
        wait_table(names, running, 8080, "TCP", expected(keys, set(), policy=False))
        store.apply([parse_resource(POLICY)])
        wait_table(names, running, 8080, "TCP", expected(keys, {"np/friend"}, policy=True))
        # UDP 5353 is not in the policy's ports: nobody but api itself reaches api over UDP.
        wait_table(names, running, 5353, "UDP", expected(keys, set(), policy=True))
        # A label added after the fact: "far" becomes a friend within a second or so.
        store.patch(lookup("pods"), "far", {"metadata": {"labels": {"role": "friend"}}}, "np")
        wait_table(names, running, 8080, "TCP", expected(keys, {"np/friend", "np/far"}, policy=True))
        store.delete(lookup("netpol"), "api-from-friends", "np")
        wait_table(names, running, 8080, "TCP", expected(keys, set(), policy=False))
    finally:
        cluster.teardown(names)
        clean(names)
