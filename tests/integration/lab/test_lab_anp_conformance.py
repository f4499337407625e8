"""The network-policy-api conformance suite (v0.1.8, read in ``anp_conformance/READING.md``) in the lab.

One 3-node calico-profile lab runs the suite's base: five namespaces, ten pods, and the centaur
hostNetwork pods. The ``anp_conformance/`` data holds every upstream subtest as a scenario:

- ``scenarios.yaml`` in AdminNetworkPolicy / BaselineAdminNetworkPolicy form;
- ``scenarios_cnp.yaml`` rewritten as v1alpha2 ClusterNetworkPolicy.

Each scenario is its own test and runs the way upstream does:

1. Apply the manifests, with ``${podIP:ns/pod}`` filled in with the pod's address.
2. For each step, either merge-patch an object or delete one, or check expectations.
3. Before probing, wait until every node's agent has applied the datastore's revision (the policy
   status fence).
4. Probe every TCP and UDP expectation at once. SCTP is modelled but not probed: this kernel has no
   SCTP sockets.

An allowed connection must get the pod's answer. A denied one must time out: a reset or an ICMP
error fails the test, as upstream's ``TIMEOUT`` check does. A test ends by deleting what it applied
and waiting until no node isolates anything.

Probes are retried for a few seconds after the fence, and the first probe's result is kept as
evidence. The fence already guarantees the rules are in the kernel.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab_support import policy_applied

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabError, LabNames
from podnet.lab.probe import Probe, run_probes
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource
from podnet.model.registry import lookup_kind

pytestmark = [pytest.mark.root, pytest.mark.etcd]

DATA = Path(__file__).parent / "anp_conformance"
NODES = ["node-1", "node-2", "node-3"]
PLACEHOLDER = re.compile(r"\$\{podIP:([^}]+)\}")
PROBE_TIMEOUT = 0.8  # a denied probe ends in this timeout
SETTLE = 5.0  # probes are retried this long after the fence before a disagreement counts
POLICY_KINDS = ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "ClusterNetworkPolicy", "NetworkPolicy")


def load(name: str) -> Any:
    return yaml.safe_load((DATA / name).read_text())


BASE = list(yaml.safe_load_all((DATA / "base.yaml").read_text()))
SCENARIOS = {"anp": load("scenarios.yaml"), "cnp": load("scenarios_cnp.yaml")}


@dataclass
class Lab:
    names: LabNames
    store: ResourceStore
    ips: dict[str, str] = field(default_factory=dict)  # "ns/pod" -> address

    def fence(self, revision: int) -> None:
        """Wait until every node's kernel has the policy of datastore ``revision`` (our last write:
        the datastore's own revision moves on with the agents' status writes)."""
        policy_applied(self.store, NODES, revision)


def rtype(doc: dict[str, Any]) -> Any:
    (found,) = [t for t in lookup_kind(doc["kind"]) if doc["apiVersion"] in t.versions]
    return found


def fill(doc: dict[str, Any], lab: Lab) -> dict[str, Any]:
    """``doc`` with each ``${podIP:ns/pod}`` replaced by the pod's address (a deep copy)."""
    text = PLACEHOLDER.sub(lambda m: lab.ips[m.group(1)], json.dumps(doc))
    return json.loads(text)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(LabSpec(nodes=3, underlay=random_underlay()), names)
        the_lab = Lab(names, ResourceStore(EtcdDatastore([info.etcd_endpoint])))
        the_lab.store.apply([parse_resource(doc) for doc in BASE])
        pods = {f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in BASE if d["kind"] == "Pod"}
        deadline = time.monotonic() + 60
        while True:
            running = {
                f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip
                for p in the_lab.store.list(lookup("pods"))
                if p.status and p.status.phase == "Running" and p.status.pod_ip
            }
            if pods <= set(running):
                break
            assert time.monotonic() < deadline, f"pods not running: {sorted(pods - set(running))}"
            time.sleep(0.1)
        the_lab.ips = {key: running[key] for key in pods}
        yield the_lab
    finally:
        with contextlib.suppress(LabError):
            cluster.teardown(names)
        clean(names)


def clear(lab: Lab) -> None:
    """Delete every policy object of the suite's kinds; wait until every node has applied that."""
    revision = 0
    for kind in POLICY_KINDS:
        for resource_type in lookup_kind(kind):
            if resource_type.group not in ("networking.k8s.io", "policy.networking.k8s.io"):
                continue  # Calico's NetworkPolicy: not the suite's
            for obj in lab.store.list(resource_type):
                namespace = getattr(obj, "namespace", None) or None
                revision = lab.store.delete(resource_type, obj.name, namespace)
    if revision:
        lab.fence(revision)


def probe(lab: Lab, expectations: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each probed expectation with what happened: "ok", "timeout", or the error seen."""
    probes = [
        Probe(lab.names.pod_ns(*e["from"].split("/", 1)), lab.ips[e["to"]], e["port"], e["protocol"])
        for e in expectations
    ]
    results = run_probes(probes, PROBE_TIMEOUT)
    return [(e, "ok" if r.ok else r.detail) for e, r in zip(expectations, results, strict=True)]


def wrong(outcomes: list[tuple[dict[str, Any], str]]) -> list[str]:
    bad = []
    for e, outcome in outcomes:
        want = "ok" if e["allowed"] else "timeout"
        if not outcome.startswith(want):
            bad.append(f"{e['from']} -> {e['to']} {e['port']}/{e['protocol']}: want {want}, got {outcome}")
    return bad


def check(lab: Lab, expectations: list[dict[str, Any]]) -> None:
    probed = [e for e in expectations if e.get("probe", True)]
    if not probed:
        return
    first = wrong(probe(lab, probed))
    deadline = time.monotonic() + SETTLE
    bad = first
    while bad and time.monotonic() < deadline:
        time.sleep(0.3)
        bad = wrong(probe(lab, probed))
    assert not bad, "\n".join(["disagreements:", *bad, "first probe:", *first])


def run_scenario(lab: Lab, scenario: dict[str, Any]) -> None:
    applied = {(d["kind"], d["metadata"]["name"]): d for d in map(copy.deepcopy, scenario["apply"])}
    results = lab.store.apply([parse_resource(fill(doc, lab)) for doc in applied.values()])
    lab.fence(max(int(r.resource.metadata.resource_version) for r in results))
    for step in scenario["steps"]:
        if "mutate" in step:
            change = step["mutate"]
            doc = applied[(change["kind"], change["name"])]
            resource_type = rtype(doc)
            namespace = doc["metadata"].get("namespace")
            patched = lab.store.patch(
                resource_type, change["name"], fill(change["merge_patch"], lab), namespace
            )
            lab.fence(int(patched.metadata.resource_version))
        elif "delete" in step:
            change = step["delete"]
            doc = applied.pop((change["kind"], change["name"]))
            lab.fence(lab.store.delete(rtype(doc), change["name"], doc["metadata"].get("namespace")))
        else:
            check(lab, step["expect"])


def _cases() -> list[Any]:
    return [
        pytest.param(form, scenario, id=f"{form}:{scenario['name']}")
        for form, scenarios in SCENARIOS.items()
        for scenario in scenarios
        if any(e.get("probe", True) for step in scenario["steps"] for e in step.get("expect", []))
    ]


@pytest.mark.parametrize(("form", "scenario"), _cases())
def test_conformance(lab: Lab, form: str, scenario: dict[str, Any]) -> None:
    try:
        run_scenario(lab, scenario)
    finally:
        clear(lab)
