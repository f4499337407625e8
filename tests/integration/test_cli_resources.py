"""The CLI as a user runs it, against a real etcd: apply, get, patch, delete, errors, exit codes."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from podnet.cli.main import main

pytestmark = pytest.mark.etcd

EXAMPLES = Path(str(files("podnet") / "examples"))


SEED_POOL = (EXAMPLES / "seed-ippool-as-written.yaml.txt").read_text()
PATCH = '{"spec": {"ipipMode": "CrossSubnet", "natOutgoing": true}}'


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_seed_pool_as_written_is_rejected_naming_both_fields(podnet, tmp_path):
    code, _, err = podnet("apply", "-f", write(tmp_path, "seed.yaml", SEED_POOL))
    assert code == 2
    first, hint = err.splitlines()
    assert first.startswith("error: nothing was applied")
    assert "metadata.name: required" in first and "spec.cidr: required" in first
    assert hint.startswith("hint: ") and f"podnet patch ippool default-ipv4-ippool -p '{PATCH}'" in hint
    assert podnet("get", "ippools")[1].strip() == "No resources found."


def test_seed_pool_with_name_and_cidr_round_trips_and_patches(podnet, tmp_path):
    doc = yaml.safe_load(SEED_POOL)
    doc["metadata"] = {"name": "default-ipv4-ippool"}
    doc["spec"]["cidr"] = "192.168.0.0/16"
    code, out, _ = podnet("apply", "-f", write(tmp_path, "pool.yaml", yaml.safe_dump(doc)))
    assert (code, out.strip()) == (0, "ippools/default-ipv4-ippool created")

    code, out, _ = podnet("get", "ippools", "-o", "yaml")
    listed = yaml.safe_load(out)
    assert listed["kind"] == "List" and len(listed["items"]) == 1
    pool = listed["items"][0]
    assert pool["spec"]["ipipMode"] == "CrossSubnet" and pool["spec"]["natOutgoing"] is True
    assert pool["spec"]["cidr"] == "192.168.0.0/16" and pool["spec"]["blockSize"] == 26
    # What get prints applies back unchanged.
    assert podnet("apply", "-f", "-", stdin=out)[1].strip() == "ippools/default-ipv4-ippool unchanged"

    code, out, _ = podnet(
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "-p",
        '{"spec": {"ipipMode": "Always", "natOutgoing": false}}',
    )
    assert (code, out.strip()) == (0, "ippools/default-ipv4-ippool patched")
    spec = json.loads(podnet("get", "ippool", "default-ipv4-ippool", "-o", "json")[1])["spec"]
    assert (spec["ipipMode"], spec["natOutgoing"]) == ("Always", False)
    podnet("patch", "ippool", "default-ipv4-ippool", "-p", PATCH)
    spec = json.loads(podnet("get", "ippool", "default-ipv4-ippool", "-o", "json")[1])["spec"]
    assert (spec["ipipMode"], spec["natOutgoing"]) == ("CrossSubnet", True)


def test_malformed_document_rejects_the_whole_file(podnet, tmp_path):
    text = """
apiVersion: v1
kind: Namespace
metadata: {name: first-ok}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: broken}
spec: {cidr: 10.9.0.0/16, ipipMode: Sometimes}
---
apiVersion: v1
kind: Namespace
metadata: {name: last-ok}
"""
    code, _, err = podnet("apply", "-f", write(tmp_path, "multi.yaml", text))
    assert code == 2
    assert "document 2" in err and "spec.ipipMode: must be one of Always, CrossSubnet, Never" in err
    assert podnet("get", "ns")[1].strip() == "No resources found."
    assert podnet("get", "ippools")[1].strip() == "No resources found."


def test_directory_apply_get_and_delete_by_file(podnet):
    code, out, _ = podnet("apply", "-f", str(EXAMPLES))
    assert code == 0 and "ciliumnetworkpolicies/sensitive-api-put-only created" in out
    code, out, _ = podnet("get", "pods", "-A", "-o", "wide")
    assert code == 0 and "web-1" in out and "node-1" in out and "app=web" in out
    code, out, _ = podnet("get", "netpol", "-n", "shop", "-o", "name")
    assert out.split() == ["networkpolicies/web-from-frontend"]
    assert podnet("get", "nodes", "-l", "topology.kubernetes.io/zone=zone-b", "-o", "name")[1].split() == [
        "nodes/node-3"
    ]
    code, out, _ = podnet("delete", "-f", str(EXAMPLES / "policies.yaml"))
    assert code == 0 and out.count("deleted") == 2
    assert podnet("get", "cnp", "-A")[1].strip() == "No resources found."


def test_errors_have_one_line_a_hint_and_an_exit_code(podnet):
    code, _, err = podnet("get", "ippool", "missing")
    assert code == 3 and err.startswith('error: IPPool "missing" not found') and "\nhint: " in err
    code, _, err = podnet("get", "ipool")
    assert code == 2 and "ippool" in err
    code, _, err = podnet("patch", "ippool", "missing", "-p", "{not json")
    assert code == 2
    code, _, err = podnet("--etcd-endpoints", "http://127.0.0.1:9", "get", "ippools")
    assert code == 6 and "http://127.0.0.1:9" in err


def test_stale_resource_version_conflicts(podnet, tmp_path):
    pool = write(
        tmp_path,
        "p.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.1.0.0/16}\n",
    )
    podnet("apply", "-f", pool)
    stale = podnet("get", "ippool", "p", "-o", "yaml")[1]
    podnet("patch", "ippool", "p", "-p", '{"spec": {"natOutgoing": true}}')
    code, _, err = podnet("apply", "-f", "-", stdin=stale)
    assert code == 5 and "modified" in err


def test_version():
    assert main(["version"]) == 0


REPRO = """\
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: srv, labels: {app: srv}}
spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli}
spec: {containers: [{name: c, image: nginx}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny}
spec: {podSelector: {matchLabels: {role: locked}}, policyTypes: [Ingress]}
"""


def test_reapply_keeps_the_bound_node_reports_unchanged_and_refuses_spec_changes(podnet, tmp_path):
    """The issue's reproduction on etcd: apply -n, the scheduler binds, the edited file re-applied."""
    path = write(tmp_path, "p.yaml", REPRO)
    code, out, _ = podnet("apply", "-n", "t", "-f", path)
    assert (code, out.split("\n")[:-1]) == (
        0,
        ["namespaces/t created", "pods/srv created", "pods/cli created", "networkpolicies/deny created"],
    )
    for pod, node in (("srv", "node-1"), ("cli", "node-2")):  # what the lab scheduler writes
        assert podnet("patch", "pod", pod, "-n", "t", "-p", json.dumps({"spec": {"nodeName": node}}))[0] == 0

    path = write(tmp_path, "p.yaml", REPRO.replace("labels: {app: srv}", "labels: {app: srv, role: locked}"))
    code, out, _ = podnet("apply", "-n", "t", "-f", path)
    assert (code, out.split("\n")[:-1]) == (
        0,
        [
            "namespaces/t unchanged",
            "pods/srv configured",
            "pods/cli unchanged",
            "networkpolicies/deny unchanged",
        ],
    )
    pods = json.loads(podnet("get", "pods", "-n", "t", "-o", "json")[1])["items"]
    assert {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods} == {"srv": "node-1", "cli": "node-2"}
    assert "role=locked" in podnet("get", "pods", "-n", "t", "-o", "wide")[1]

    code, _, err = podnet("apply", "-n", "t", "-f", write(tmp_path, "q.yaml", REPRO.replace("80", "8080")))
    first, hint = err.splitlines()
    assert code == 2 and first == (
        'error: The Pod "srv" is invalid: spec: Forbidden: pod updates may not change fields other than '
        "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
        "`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
        "(allow it to be set to 1 if it was previously negative)"
    )
    assert "spec.containers[0].ports[0].containerPort" in hint
    assert "80" in podnet("get", "pod", "srv", "-n", "t", "-o", "yaml")[1]


def test_apply_namespace_flag_as_kubectl(podnet, tmp_path):
    policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
    policy += "metadata: {name: d%s}\nspec: {podSelector: null}\n"
    code, out, _ = podnet("apply", "-n", "b", "-f", write(tmp_path, "p.yaml", policy % ""))
    assert (code, out.strip()) == (0, "networkpolicies/d created")
    assert podnet("get", "netpol", "-n", "b", "-o", "name")[1].split() == ["networkpolicies/d"]
    other = policy % ", namespace: a"
    code, out, err = podnet(
        "apply", "-n", "b", "-f", write(tmp_path, "q.yaml", (policy % "2") + "---\n" + other)
    )
    assert code == 2 and out == ""
    assert (
        'NetworkPolicy "d": the namespace from the provided object "a" does not match the namespace "b". '
        "You must pass '--namespace=a' to perform this operation." in err
    )
    assert podnet("get", "netpol", "-A", "-o", "name")[1].split() == ["networkpolicies/d"]  # d2 not written
    cluster_scoped = (
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.1.0.0/16}\n"
    )
    assert podnet("apply", "-n", "b", "-f", write(tmp_path, "r.yaml", cluster_scoped))[1].strip() == (
        "ippools/p created"
    )


def test_delete_namespace_flag_as_kubectl(podnet, tmp_path):
    """``podnet delete -n NS -f FILE`` deletes namespace-less manifests from NS, as kubectl does."""
    path = write(
        tmp_path,
        "p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        "metadata: {name: d}\nspec: {podSelector: {}}\n",
    )
    assert podnet("apply", "-n", "b", "-f", path)[0] == 0
    code, out, _ = podnet("delete", "-n", "a", "-f", path)
    assert code != 0 and out == ""  # not in a
    assert podnet("get", "netpol", "-A", "-o", "name")[1].split() == ["networkpolicies/d"]
    assert podnet("delete", "-n", "b", "-f", path)[:2] == (0, "networkpolicies/d deleted\n")
    assert podnet("get", "netpol", "-A", "-o", "name")[1].split() == []
