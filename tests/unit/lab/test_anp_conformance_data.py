"""The network-policy-api conformance scenarios (tests/integration/lab/anp_conformance/) hold
together, without root: every expectation names a pod of base.yaml and a port that pod declares
with that protocol; every change names an object the scenario has; SCTP is never probed; the
ClusterNetworkPolicy file is the same scenarios, step for step, with each AdminNetworkPolicy /
BaselineAdminNetworkPolicy state rewritten to v1alpha2 (checked by a rewrite written here, not the
generator's); and every document podnet has a model for parses, after every change too."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from podnet.model import RESOURCE_TYPES, parse_resource

DATA = Path(__file__).resolve().parents[2] / "integration" / "lab" / "anp_conformance"
ANP, BANP, CNP = "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy"
V1ALPHA1, V1ALPHA2 = "policy.networking.k8s.io/v1alpha1", "policy.networking.k8s.io/v1alpha2"
PROTOCOLS = {"TCP", "UDP", "SCTP"}
PLACEHOLDER = re.compile(r"\$\{podIP:([^}]+)\}")


def load(name: str) -> Any:
    return yaml.safe_load((DATA / name).read_text())


BASE = [d for d in yaml.safe_load_all((DATA / "base.yaml").read_text()) if d]
ANP_FILE = load("scenarios.yaml")
CNP_FILE = load("scenarios_cnp.yaml")
PODS = {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in BASE if d["kind"] == "Pod"}
ORDER = sorted(PODS)  # a stand-in address per pod (the runner fills in the real ones)
NAMESPACES = {d["metadata"]["name"]: d for d in BASE if d["kind"] == "Namespace"}


def container_ports(pod: dict) -> list[dict]:
    return [p for c in pod["spec"]["containers"] for p in c.get("ports") or []]


def expectations(scenario: dict) -> list[dict]:
    return [e for step in scenario["steps"] for e in step.get("expect", [])]


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def ref(doc_or_step: dict) -> tuple:
    meta = doc_or_step.get("metadata", doc_or_step)
    return (doc_or_step["kind"], meta.get("namespace"), meta["name"])


def states(scenario: dict) -> list[list[dict]]:
    """The scenario's objects after apply and after each step (asserting every change names an
    object that exists at that point)."""
    docs = {ref(d): copy.deepcopy(d) for d in scenario["apply"]}
    out = [list(docs.values())]
    for step in scenario["steps"]:
        ((verb, body),) = step.items()
        assert verb in ("mutate", "delete", "expect"), verb
        if verb == "mutate":
            assert ref(body) in docs, f"{scenario['name']}: mutate of a missing {ref(body)}"
            docs[ref(body)] = merge(docs[ref(body)], body["merge_patch"])
        elif verb == "delete":
            assert docs.pop(ref(body), None), f"{scenario['name']}: delete of a missing {ref(body)}"
        out.append(list(docs.values()))
    return out


def podnet_knows(doc: dict) -> bool:
    return any(rt.kind == doc["kind"] and doc["apiVersion"] in rt.versions for rt in RESOURCE_TYPES)


# ------------------------------------------------------------------------------------ base.yaml


def test_base_parses_with_podnet_models():
    for doc in BASE:
        parse_resource(doc)
    assert {n["metadata"]["labels"]["conformance-house"] for n in NAMESPACES.values()} == {
        "gryffindor",
        "slytherin",
        "hufflepuff",
        "ravenclaw",
        "forbidden-forrest",
    }


def test_base_pods_are_upstreams_and_spread():
    houses = {"gryffindor": "harry-potter", "slytherin": "draco-malfoy", "hufflepuff": "cedric-diggory"}
    houses |= {"ravenclaw": "luna-lovegood", "forbidden-forrest": "centaur"}
    expected = {f"network-policy-conformance-{h}/{s}-{i}" for h, s in houses.items() for i in (0, 1)}
    assert set(PODS) == expected
    for key, pod in PODS.items():
        namespace = NAMESPACES[key.split("/")[0]]
        assert pod["metadata"]["labels"] == {
            "conformance-house": namespace["metadata"]["labels"]["conformance-house"]
        }
    nodes = {pod["spec"]["nodeName"] for pod in PODS.values()}
    assert nodes == {"node-1", "node-2", "node-3"}
    for house, stem in houses.items():
        pair = [PODS[f"network-policy-conformance-{house}/{stem}-{i}"]["spec"]["nodeName"] for i in (0, 1)]
        assert pair[0] != pair[1], f"{stem}: both replicas on {pair[0]}"


def test_base_ports_as_upstream_serves_them():
    for key, pod in PODS.items():
        ports = {(p["containerPort"], p["protocol"]): p.get("name") for p in container_ports(pod)}
        if "centaur" in key:
            assert pod["spec"]["hostNetwork"] is True
            assert set(ports) == {
                (34345, "TCP"),
                (34346, "TCP"),
                (34347, "UDP"),
                (34349, "UDP"),
                (34351, "SCTP"),
                (34352, "SCTP"),
            }
        else:
            assert not pod["spec"].get("hostNetwork")
            assert ports == {
                (80, "TCP"): "web",
                (8080, "TCP"): None,
                (5353, "UDP"): None,
                (53, "UDP"): "dns",
                (9003, "SCTP"): None,
                (9005, "SCTP"): None,
            }


# ------------------------------------------------------------------------------------ scenarios


@pytest.mark.parametrize("data", [ANP_FILE, CNP_FILE], ids=["anp", "cnp"])
def test_every_scenario_is_complete(data):
    names = [s["name"] for s in data]
    assert len(names) == len(set(names))
    for scenario in data:
        assert scenario["upstream"].startswith("conformance/tests/")
        assert scenario["upstream"].endswith(":" + scenario["name"].split("/", 1)[0])
        assert scenario["channel"] in ("standard", "experimental")
        assert scenario["apply"], scenario["name"]
        assert expectations(scenario), f"{scenario['name']}: no expectation"


@pytest.mark.parametrize("data", [ANP_FILE, CNP_FILE], ids=["anp", "cnp"])
def test_expectations_name_declared_ports(data):
    for scenario in data:
        for e in expectations(scenario):
            where = f"{scenario['name']}: {e}"
            assert set(e) <= {"from", "to", "port", "protocol", "allowed", "probe"}, where
            assert e["from"] in PODS and e["to"] in PODS, where
            assert not PODS[e["from"]]["spec"].get("hostNetwork"), where
            assert e["protocol"] in PROTOCOLS and isinstance(e["allowed"], bool), where
            declared = {(p["containerPort"], p["protocol"]) for p in container_ports(PODS[e["to"]])}
            assert (e["port"], e["protocol"]) in declared, where
            # SCTP is modelled, never probed here; everything else is probed
            assert e.get("probe", True) is (e["protocol"] != "SCTP"), where


@pytest.mark.parametrize("data", [ANP_FILE, CNP_FILE], ids=["anp", "cnp"])
def test_changes_name_existing_objects_and_podnet_parses_every_state(data):
    for scenario in data:
        for docs in states(scenario):
            for doc in docs:
                if podnet_knows(doc):
                    # the runner fills each ${podIP:ns/pod} with the pod's address
                    filled = PLACEHOLDER.sub(
                        lambda m: f"10.244.0.{ORDER.index(m.group(1)) + 1}", json.dumps(doc)
                    )
                    parse_resource(json.loads(filled))


@pytest.mark.parametrize("data", [ANP_FILE, CNP_FILE], ids=["anp", "cnp"])
def test_named_ports_and_pod_ip_placeholders_resolve(data):
    names = {p.get("name") for pod in PODS.values() for p in container_ports(pod)} - {None}
    text = yaml.safe_dump(data)
    used = set(re.findall(r"(?:namedPort|destinationNamedPort): (\S+)", text))
    assert used == {"web", "dns"} and used <= names
    placeholders = set(PLACEHOLDER.findall(text))
    assert placeholders and placeholders <= set(PODS)


def test_anp_file_uses_v1alpha1_kinds_only():
    kinds = {(d["apiVersion"], d["kind"]) for s in ANP_FILE for state in states(s) for d in state}
    assert kinds == {(V1ALPHA1, ANP), (V1ALPHA1, BANP), ("networking.k8s.io/v1", "NetworkPolicy")}
    for scenario in ANP_FILE:
        for docs in states(scenario):
            for doc in docs:
                if doc["kind"] == BANP:
                    assert doc["metadata"]["name"] == "default"  # the singleton
                    actions = {r["action"] for d in ("ingress", "egress") for r in doc["spec"].get(d, [])}
                    assert actions <= {"Allow", "Deny"}, scenario["name"]


# ----------------------------------------------------------------------------- the CNP rewrite


def cnp_protocols(ports: list[dict]) -> list[dict]:
    out = []
    for port in ports:
        ((form, value),) = port.items()
        if form == "namedPort":
            out.append({"destinationNamedPort": value})
        elif form == "portNumber":
            out.append({value["protocol"].lower(): {"destinationPort": {"number": value["port"]}}})
        else:
            assert form == "portRange"
            span = {"start": value["start"], "end": value["end"]}
            out.append({value["protocol"].lower(): {"destinationPort": {"range": span}}})
    return out


def as_cnp(doc: dict) -> dict:
    """An AdminNetworkPolicy or BaselineAdminNetworkPolicy as a v1alpha2 ClusterNetworkPolicy."""
    if doc["kind"] not in (ANP, BANP):
        return doc
    spec = doc["spec"]
    admin = doc["kind"] == ANP
    new = {"tier": "Admin" if admin else "Baseline", "priority": spec["priority"] if admin else 10}
    new["subject"] = spec["subject"]
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        if direction in spec:
            new[direction] = []
            for rule in spec[direction]:
                out = {
                    "name": rule["name"],
                    "action": {"Allow": "Accept"}.get(rule["action"], rule["action"]),
                }
                out[peers] = rule[peers]
                if "ports" in rule:
                    out["protocols"] = cnp_protocols(rule["ports"])
                new[direction].append(out)
    return {"apiVersion": V1ALPHA2, "kind": CNP, "metadata": doc["metadata"], "spec": new}


def test_cnp_file_is_the_same_scenarios_rewritten():
    assert [s["name"] for s in CNP_FILE] == [s["name"] for s in ANP_FILE]
    for anp, cnp in zip(ANP_FILE, CNP_FILE, strict=True):
        for key in ("upstream", "subtest", "channel", "features", "manifest"):
            assert anp[key] == cnp[key], (anp["name"], key)
        assert [list(s) for s in anp["steps"]] == [list(s) for s in cnp["steps"]], anp["name"]
        assert expectations(anp) == expectations(cnp), anp["name"]
        for a_state, c_state in zip(states(anp), states(cnp), strict=True):
            by_name = {ref(d): d for d in c_state}
            assert len(by_name) == len(c_state) == len(a_state), anp["name"]
            for doc in a_state:
                want = as_cnp(doc)
                assert by_name[ref(want)] == want, (anp["name"], ref(doc))


def test_cnp_documents_follow_the_v1alpha2_schema():
    one_of_peer = {"namespaces", "pods", "nodes", "networks", "domainNames"}
    for scenario in CNP_FILE:
        for docs in states(scenario):
            for doc in (d for d in docs if d["kind"] == CNP):
                spec = doc["spec"]
                assert doc["apiVersion"] == V1ALPHA2
                assert spec["tier"] in ("Admin", "Baseline") and 0 <= spec["priority"] <= 1000
                assert len(spec["subject"]) == 1 and set(spec["subject"]) <= {"namespaces", "pods"}
                for direction, peers in (("ingress", "from"), ("egress", "to")):
                    for rule in spec.get(direction, []):
                        assert rule["action"] in ("Accept", "Deny", "Pass")
                        assert 1 <= len(rule[peers]) <= 25
                        for peer in rule[peers]:
                            allowed = one_of_peer if direction == "egress" else {"namespaces", "pods"}
                            assert len(peer) == 1 and set(peer) <= allowed, peer
                        for proto in rule.get("protocols", []):
                            assert len(proto) == 1 and set(proto) <= {
                                "tcp",
                                "udp",
                                "sctp",
                                "destinationNamedPort",
                            }
                            port = next(iter(proto.values()))
                            if isinstance(port, dict):
                                assert len(port["destinationPort"]) == 1
