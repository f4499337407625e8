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
