"""``podnet bpf endpoint|ipcache|policy|ct`` on a 2-node Cilium-profile lab with real traffic: the
endpoint records and ipcache of every node, the policy map of a pod (labels, a port range as a
prefix, the counters of the entry a connection matched) and the conntrack entry of that connection
naming the same entry."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
import yaml
from lab_support import podnet, until

from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PODS = (("api", "node-1", 8080), ("web", "node-2", 80), ("far", "node-2", 80))
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-from-web", "namespace": "np"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "api"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                "ports": [
                    {"protocol": "TCP", "port": 8080},
                    {"protocol": "TCP", "port": 9000, "endPort": 9003},
                ],
            }
        ],
    },
}


def documents() -> list[dict]:
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}]
    for name, node, port in PODS:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "np", "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": port}]}]},
            }
        )
    return [*docs, POLICY]


def as_json(names: LabNames, *args: str):  # type: ignore[no-untyped-def]
    return json.loads(podnet(names, "bpf", *args, "-o", "json").stdout)


def test_bpf_maps_of_a_cilium_lab(tmp_path: Path) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    cluster.up(LabSpec(nodes=2, profile="cilium", underlay=random_underlay()), names)
    try:
        manifest = tmp_path / "np.yaml"
        manifest.write_text(yaml.safe_dump_all(documents()))
        podnet(names, "apply", "-f", str(manifest))
        podnet(names, "lab", "wait", timeout=120)
        pods = {
            p["metadata"]["name"]: p
            for p in json.loads(podnet(names, "get", "pods", "-n", "np", "-o", "json").stdout)["items"]
        }
        ips = {name: pods[name]["status"]["podIP"] for name, _node, _port in PODS}

        def enforced() -> dict | None:
            doc = as_json(names, "policy", "get", "np/api")
            ports = {(e["protocol"], e["port"], e["prefix"]) for e in doc["entries"]}
            return doc if doc["ingress_enforced"] and {(6, 8080, 16), (6, 9000, 14)} <= ports else None

        policy = until("np/api's policy in its endpoint's map", enforced, timeout=30)
        assert policy["node"] == "node-1" and policy["ipv4"] == ips["api"] and not policy["egress_enforced"]
        web_entry = next(e for e in policy["entries"] if (e["protocol"], e["port"]) == (6, 8080))
        assert "k8s:app=web" in web_entry["labels"] and web_entry["ports"] == [8080, 8080]
        assert not web_entry["deny"] and web_entry["entry_id"] > 0
        before = web_entry["packets"] or 0
        text = podnet(names, "bpf", "policy", "get", "np/api").stdout
        assert "9000-9003/TCP" in text and "k8s:app=web" in text

        # every node's endpoints and ipcache (a NODE column), then --node alone
        endpoints = as_json(names, "endpoint", "list")
        assert sorted((e["node"], e["ipv4"]) for e in endpoints) == sorted(
            (node, ips[n]) for n, node, _ in PODS
        )
        assert all(e["ready"] for e in endpoints)
        assert [e["ipv4"] for e in as_json(names, "endpoint", "list", "--node", "node-1")] == [ips["api"]]
        assert podnet(names, "bpf", "endpoint", "list").stdout.startswith("NODE ")
        cache = {(r["node"], r["prefix"]): r for r in as_json(names, "ipcache", "list")}
        for node in ("node-1", "node-2"):
            assert all(cache[(node, f"{ip}/32")]["pod"] for ip in ips.values())

        # a connection the web entry allows: counted on the entry, tracked with its id
        out = podnet(names, "lab", "probe", "np/web", "np/api", "8080/TCP").stdout
        assert " ok " in out, out
        assert "FAILED" in podnet(names, "lab", "probe", "np/far", "np/api", "8080/TCP", check=False).stdout
        after = next(
            e
            for e in as_json(names, "policy", "get", "np/api")["entries"]
            if e["entry_id"] == web_entry["entry_id"]
        )
        assert after["packets"] == before + 1 and after["bytes"] > 0
        ct = as_json(names, "ct", "list", "node-1")
        tracked = [r for r in ct if (r["saddr"], r["daddr"], r["dport"]) == (ips["web"], ips["api"], 8080)]
        assert [(r["direction"], r["entry_id"], r["node"]) for r in tracked] == [
            ("ingress", web_entry["entry_id"], "node-1")
        ]
        assert tracked[0]["peer_identity"] == web_entry["identity"] and tracked[0]["packets_fwd"] >= 3
        assert not [r for r in ct if r["saddr"] == ips["far"]]  # refused: never tracked on node-1

        missing = podnet(names, "bpf", "ct", "list", "--pin-dir", str(tmp_path / "none"), check=False)
        assert (
            missing.returncode == 8 and f"no Cilium datapath pinned in {tmp_path / 'none'}" in missing.stderr
        )
    finally:
        cluster.teardown(names)
        clean(names)
