"""The policy tools as a user runs them, on a lab with real traffic: ``podnet policy test`` agrees
with ``explain``, ``podnet policy explain`` names the rule or the default deny, ``podnet get netpol
-o yaml`` shows where the policy is programmed, and a transaction nft refuses (a set tampered with
out of band) is retried as a full resync that restores the whole table."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from lab_support import podnet, until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PORTS = [{"name": "web", "containerPort": 8080}]
POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-from-friends", "namespace": "np"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": "web"}]}
        ],
    },
}


def nft_json(names: LabNames, node: str) -> list[dict]:
    out = subprocess.run(
        ["ip", "netns", "exec", names.node_ns(node), "nft", "-j", "list", "table", "inet", "podnet_policy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["nftables"]


def set_elements(names: LabNames, node: str) -> dict[str, list]:
    sets = {}
    for item in nft_json(names, node):
        if "set" in item:
            sets[item["set"]["name"]] = item["set"].get("elem", [])
    return sets


def test_policy_test_explain_status_and_a_refused_transaction_repaired():
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    cluster.up(LabSpec(nodes=3, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([cluster.running_endpoint(names)]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}}]
        layout = (
            ("api", "node-1", {"app": "api"}),
            ("friend", "node-2", {"role": "friend"}),
            ("far", "node-3", {}),
        )
        for name, node, labels in layout:
            spec = {"nodeName": node, "containers": [{"name": "c", "ports": PORTS}]}
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "spec": spec,
                    "metadata": {"name": name, "namespace": "np", "labels": labels},
                }
            )
        store.apply([parse_resource(d) for d in docs])
        podnet(names, "lab", "wait", "--timeout", "30")
        ips = {p.metadata.name: p.status.pod_ip for p in store.list(lookup("pods"), "np")}
        store.apply([parse_resource(POLICY)])

        # 1. podnet policy test: the probed table and explain's agree, and it is the policy's table.
        def agreed():  # type: ignore[no-untyped-def]
            proc = podnet(names, "policy", "test", "--port", "8080/TCP", "-o", "json", check=False)
            return json.loads(proc.stdout) if proc.returncode == 0 else None

        report = until("policy test to agree with explain", agreed)
        pairs = {(p["from"], p["to"]): p for p in report["ports"][0]["pairs"]}
        assert pairs[("np/far", "np/api")]["probed"] is False
        assert pairs[("np/friend", "np/api")]["probed"] is True
        assert pairs[("np/friend", "np/api")]["rules"] == ["NetworkPolicy np/api-from-friends ingress rule 0"]
        text = podnet(names, "policy", "test", "--port", "8080/TCP,8080/UDP").stdout
        assert "9/9 pairs agree" in text and "18/18 probes agree with explain" in text

        # 2. podnet policy explain names the rule, or the policy whose default deny dropped.
        explain = ("policy", "explain", "--to", "np/api", "--port", "8080/TCP", "--from")
        out = podnet(names, *explain, "np/far").stdout
        assert "DENIED (decided by ingress)" in out and "NetworkPolicy np/api-from-friends" in out
        out = podnet(names, *explain, "np/friend").stdout
        assert "ALLOWED (decided by ingress)" in out
        assert 'NetworkPolicy np/api-from-friends ingress rule 0: {"from":[{"podSelector"' in out
        bad = podnet(names, *explain, "np/nobody", check=False)
        assert bad.returncode == 3 and 'pod "np/nobody" not found' in bad.stderr
        assert "Traceback" not in bad.stderr

        # 3. get -o yaml: programmed on every node.
        def programmed():  # type: ignore[no-untyped-def]
            out = podnet(names, "get", "netpol", "api-from-friends", "-n", "np", "-o", "yaml").stdout
            doc = yaml.safe_load(out)
            accepted = {c["type"]: c for c in doc["status"]["conditions"]}["Accepted"]
            return accepted if accepted["status"] == "True" else None

        accepted = until("the policy to be reported programmed", programmed)
        assert accepted["reason"] == "Programmed" and "node-1, node-2, node-3" in accepted["message"]

        # 4. Tamper with node-1's friends set so that the next partial transaction is refused
        # (an interval overlapping the element it will add), then make "far" a friend.
        friends = [
            n
            for n, elems in set_elements(names, "node-1").items()
            if any(
                e == ips["friend"]
                or (isinstance(e, dict) and "prefix" in e and e["prefix"]["addr"] == ips["friend"])
                for e in elems
            )
        ]
        assert len(friends) == 1, set_elements(names, "node-1")
        cover = ipaddress.ip_network(f"{ips['far']}/31", strict=False)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                names.node_ns("node-1"),
                "nft",
                "add",
                "element",
                "inet",
                "podnet_policy",
                friends[0],
                f"{{ {cover} }}",
            ],
            check=True,
        )
        store.patch(lookup("pods"), "far", {"metadata": {"labels": {"role": "friend"}}}, "np")
        log = os.path.join(names.node_log_dir("node-1"), "agent.log")
        until(
            "the refused transaction in the agent log",
            lambda: "interval overlaps" in Path(log).read_text(),
            timeout=10,
        )
        report = until("policy test to agree again after the full resync", agreed)
        pairs = {(p["from"], p["to"]): p for p in report["ports"][0]["pairs"]}
        assert pairs[("np/far", "np/api")]["probed"] is True
        # the full resync rebuilt the table: the out-of-band interval is gone, far is its own /32
        elements = set_elements(names, "node-1").get(friends[0], [])
        flat = json.dumps(elements)
        assert str(cover.network_address) + '", "len": 31' not in flat
        until("the policy reported programmed again", programmed)
    finally:
        cluster.teardown(names)
        clean(names)
