"""Regenerate scenarios.yaml and scenarios_cnp.yaml from a checkout of network-policy-api's
conformance suite (see READING.md)::

    git -C <mirror> archive v0.1.8 conformance | tar -x -C /tmp/np
    python tests/integration/lab/anp_conformance/regenerate.py /tmp/np/conformance

The connectivity assertions are parsed from the Go tests (every ``PokeServer`` call, with the
server pod the test fetched last into the variable it probes); the mid-test changes are the table
:data:`MUTATIONS`, written by hand from the same files and checked against them (one ``Patch`` or
``Delete`` per entry, in the subtest that makes it). Subtests of one upstream test share the
cluster, so each scenario (one subtest) first replays the changes earlier subtests made.
"""

from __future__ import annotations

import copy
import itertools
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
TAG = "v0.1.8"
TAG_COMMIT = "5a62954284765fb16f2e601f11907ca0b839b89f"
CNP_COMMIT = "0eec1b0e5fa92715b4c0f4c48d3c8d2913ed2159"
# suite.go's default host-network port range at v0.1.8 (34345 .. 34345+8-1).
HOST_NETWORK_PORTS = list(range(34345, 34353))
CNP_BASELINE_PRIORITY = 10  # what upstream main gives its BANPs turned ClusterNetworkPolicies

# (ShortName, subtest index) -> the changes that subtest makes, in order. Ops:
#   ("swap", direction, i, j)            swap spec.<direction>[i] and [j]
#   ("action", direction, i, action)     set spec.<direction>[i].action
#   ("ports", direction, i, ports)       set spec.<direction>[i].ports
#   ("priority", value)                  set spec.priority
#   ("prepend", direction, rule)         insert a rule at spec.<direction>[0]
#   ("delete",)                          delete the object
# Each op names its target: (kind, namespace or None, name).
ANP, BANP, NP = "AdminNetworkPolicy", "BaselineAdminNetworkPolicy", "NetworkPolicy"
SWAPS = {2: [(0, 1)], 4: [(0, 2)], 5: [(3, 4)]}


def _anp_gress_swaps(policy: str, directions: tuple[str, ...]) -> dict[int, list]:
    return {
        sub: [((ANP, None, policy), [("swap", d, i, j) for d in directions]) for i, j in pairs]
        for sub, pairs in SWAPS.items()
    }


# The rule both inline-CIDR tests insert; upstream builds it from the two pods' IPs (+ "/32" for IPv4).
POD_IP_RULE = {
    "name": "allow-egress-to-specific-podIPs",
    "action": "Allow",
    "to": [
        {
            "networks": [
                "${podIP:network-policy-conformance-ravenclaw/luna-lovegood-0}/32",
                "${podIP:network-policy-conformance-hufflepuff/cedric-diggory-0}/32",
            ]
        }
    ],
}


MUTATIONS: dict[str, dict[int, list]] = {
    **{
        f"AdminNetworkPolicy{d.capitalize()}{p}": _anp_gress_swaps(f"{d}-{p.lower()}", (d,))
        for d in ("ingress", "egress")
        for p in ("TCP", "UDP", "SCTP")
    },
    "AdminNetworkPolicyGress": _anp_gress_swaps("gress-rules", ("egress", "ingress")),
    "AdminNetworkPolicyIntegration": {
        2: [((ANP, None, "pass-example"), [("action", "ingress", 0, "Pass")])],
        3: [((ANP, None, "pass-example"), [("action", "egress", 0, "Pass")])],
        4: [
            (
                (NP, "network-policy-conformance-gryffindor", "allow-gress-from-to-slytherin-to-gryffindor"),
                [("delete",)],
            )
        ],
    },
    "AdminNetworkPolicyPriorityField": {
        2: [((ANP, None, "old-priority-60-new-priority-40-example"), [("priority", 40)])]
    },
    "AdminNetworkPolicyEgressInlineCIDRPeers": {
        1: [((ANP, None, "inline-cidr-as-peers-example"), [("prepend", "egress", POD_IP_RULE)])]
    },
    "AdminNetworkPolicyIngressNamedPort": {
        0: [((ANP, None, "ingress-udp"), [("ports", "ingress", 5, [{"namedPort": "dns"}])])]
    },
    "AdminNetworkPolicyEgressNamedPort": {
        0: [((ANP, None, "egress-tcp"), [("ports", "egress", 5, [{"namedPort": "web"}])])]
    },
    "AdminNetworkPolicyEgressNodePeers": {},
    **{
        f"BaselineAdminNetworkPolicy{d.capitalize()}{p}": {
            2: [((BANP, None, "default"), [("swap", d, 0, 1)])]
        }
        for d in ("ingress", "egress")
        for p in ("TCP", "UDP", "SCTP")
    },
    "BaselineAdminNetworkPolicyGress": {
        2: [((BANP, None, "default"), [("swap", d, 0, 1) for d in ("egress", "ingress")])]
    },
    "BaselineAdminNetworkPolicyEgressInlineCIDRPeers": {
        1: [((BANP, None, "default"), [("prepend", "egress", POD_IP_RULE)])]
    },
    "BaselineAdminNetworkPolicyIngressNamedPort": {
        0: [((BANP, None, "default"), [("ports", "ingress", 3, [{"namedPort": "web"}])])]
    },
    "BaselineAdminNetworkPolicyEgressNamedPort": {
        0: [((BANP, None, "default"), [("ports", "egress", 3, [{"namedPort": "dns"}])])]
    },
    "BaselineAdminNetworkPolicyEgressNodePeers": {},
}

# ------------------------------------------------------------------------------ Go test parsing

TEST_RE = re.compile(r"var (\w+) = suite\.ConformanceTest\{")
SHORT_RE = re.compile(r'ShortName:\s*"(\w+)"')
FEATURES_RE = re.compile(r"Features: \[\]suite\.SupportedFeature\{(.*?)\}", re.S)
MANIFESTS_RE = re.compile(r'Manifests: \[\]string\{"([^"]+)"\}')
RUN_RE = re.compile(r't\.Run\("([^"]+)"')
POD_GET_RE = re.compile(r'client\.ObjectKey\{\s*Namespace:\s*"([^"]+)",\s*Name:\s*"([^"]+)",\s*\},\s*(\w+)\)')
POKE_RE = re.compile(
    r'PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "([^"]+)", "([^"]+)", "(\w+)",\s*'
    r"(\w+)\.Status\.PodIP, int32\(([^)]+\)?)\), s\.TimeoutConfig\.RequestTimeout, (true|false)\)"
)
CHANGE_RE = re.compile(r"s\.Client\.(Patch|Delete)\(")


def parse_tests(path: Path) -> list[dict]:
    """Every ConformanceTest in one Go file: its subtests, their probes and how many changes each
    makes (the ``Patch`` and ``Delete`` calls)."""
    text = path.read_text()
    starts = [m.start() for m in TEST_RE.finditer(text)] + [len(text)]
    tests = []
    for begin, end in itertools.pairwise(starts):
        body = text[begin:end]
        features = re.findall(r"suite\.(\w+)", FEATURES_RE.search(body).group(1))
        test = {
            "short": SHORT_RE.search(body).group(1),
            "file": f"conformance/tests/{path.name}",
            "features": [f.removeprefix("Support") for f in features],
            "manifest": MANIFESTS_RE.search(body).group(1),
            "subtests": [],
        }
        events = [(m.start(), "run", m) for m in RUN_RE.finditer(body)]
        events += [(m.start(), "get", m) for m in POD_GET_RE.finditer(body)]
        events += [(m.start(), "poke", m) for m in POKE_RE.finditer(body)]
        events += [(m.start(), "change", m) for m in CHANGE_RE.finditer(body)]
        assert len(re.findall(r"PokeServer\(", body)) == sum(e[1] == "poke" for e in events), path
        servers: dict[str, str] = {}
        for _, kind, m in sorted(events, key=lambda e: e[0]):
            if kind == "run":
                test["subtests"].append({"title": m.group(1), "probes": [], "changes": 0})
            elif kind == "get":
                servers[m.group(3)] = f"{m.group(1)}/{m.group(2)}"
            elif kind == "change":
                test["subtests"][-1]["changes"] += 1
            else:
                ns, pod, proto, var, port, expect = m.groups()
                hn = re.fullmatch(r"s\.HostNetworkPorts\[(\d)\]", port)
                test["subtests"][-1]["probes"].append(
                    {
                        "from": f"{ns}/{pod}",
                        "to": servers[var],
                        "port": HOST_NETWORK_PORTS[int(hn.group(1))] if hn else int(port),
                        "protocol": proto.upper(),
                        "allowed": expect == "true",
                    }
                )
        tests.append(test)
    return tests


# ------------------------------------------------------------------------------ manifests


def load_manifest(root: Path, rel: str) -> list[dict]:
    text = (root / rel).read_text()
    text = re.sub(
        r"\{\{ index \.HostNetworkPorts (\d) \}\}", lambda m: str(HOST_NETWORK_PORTS[int(m.group(1))]), text
    )
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict], target: tuple) -> dict:
    kind, namespace, name = target
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
            return doc
    raise KeyError(target)


def apply_op(doc: dict, op: tuple) -> dict:
    new = copy.deepcopy(doc)
    spec = new["spec"]
    if op[0] == "swap":
        _, d, i, j = op
        spec[d][i], spec[d][j] = spec[d][j], spec[d][i]
    elif op[0] == "action":
        spec[op[1]][op[2]]["action"] = op[3]
    elif op[0] == "ports":
        spec[op[1]][op[2]]["ports"] = copy.deepcopy(op[3])
    elif op[0] == "priority":
        spec["priority"] = op[1]
    elif op[0] == "prepend":
        spec[op[1]].insert(0, copy.deepcopy(op[2]))
    else:
        raise ValueError(op)
    return new


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) from ``old`` to ``new``: what controller-runtime's
    ``client.MergeFrom`` sends (lists are replaced whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch = {k: merge_patch(old[k], v) for k, v in new.items() if k in old and old[k] != v}
        patch.update({k: v for k, v in new.items() if k not in old})
        patch.update({k: None for k in old if k not in new})
        return patch
    return copy.deepcopy(new)


def describe(op: tuple) -> str:
    if op[0] == "swap":
        return f"swap spec.{op[1]}[{op[2]}] and spec.{op[1]}[{op[3]}]"
    if op[0] == "action":
        return f"spec.{op[1]}[{op[2]}].action = {op[3]}"
    if op[0] == "ports":
        return f"spec.{op[1]}[{op[2]}].ports = {op[3]}"
    if op[0] == "priority":
        return f"spec.priority = {op[1]}"
    if op[0] == "prepend":
        return f"insert rule {op[2]['name']!r} at spec.{op[1]}[0]"
    return "delete"


# ------------------------------------------------------------------------------ ANP/BANP -> CNP


def cnp_ports(ports: list[dict]) -> list[dict]:
    out = []
    for port in ports:
        if "namedPort" in port:
            out.append({"destinationNamedPort": port["namedPort"]})
        elif "portNumber" in port:
            p = port["portNumber"]
            out.append({p["protocol"].lower(): {"destinationPort": {"number": p["port"]}}})
        else:
            p = port["portRange"]
            rng = {"start": p["start"], "end": p["end"]}
            out.append({p["protocol"].lower(): {"destinationPort": {"range": rng}}})
    return out


def cnp_rule(rule: dict, peers: str) -> dict:
    out = {"name": rule["name"], "action": "Accept" if rule["action"] == "Allow" else rule["action"]}
    out[peers] = copy.deepcopy(rule[peers])
    if "ports" in rule:
        out["protocols"] = cnp_ports(rule["ports"])
    return out


def to_cnp(doc: dict) -> dict:
    if doc["kind"] not in (ANP, BANP):
        return copy.deepcopy(doc)
    spec = doc["spec"]
    tier, priority = (
        ("Admin", spec["priority"]) if doc["kind"] == ANP else ("Baseline", CNP_BASELINE_PRIORITY)
    )
    new_spec = {"tier": tier, "priority": priority, "subject": copy.deepcopy(spec["subject"])}
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        if direction in spec:
            new_spec[direction] = [cnp_rule(r, peers) for r in spec[direction]]
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": copy.deepcopy(doc["metadata"]),
        "spec": new_spec,
    }


def cnp_target(target: tuple) -> tuple:
    kind, namespace, name = target
    return ("ClusterNetworkPolicy", namespace, name) if kind in (ANP, BANP) else target


# ------------------------------------------------------------------------------ scenarios


def change_step(docs: list[dict], target: tuple, ops: list[tuple], convert: bool) -> dict:
    """Make one upstream ``Patch``/``Delete`` on ``docs`` (in place); return its step."""
    kind, namespace, name = cnp_target(target) if convert else target
    ref = {"kind": kind, "name": name, **({"namespace": namespace} if namespace else {})}
    old = find(docs, target)
    if ops == [("delete",)]:
        docs.remove(old)
        return {"delete": {**ref, "note": "delete"}}
    new = old
    for op in ops:
        new = apply_op(new, op)
    docs[docs.index(old)] = new
    patch = merge_patch(to_cnp(old), to_cnp(new)) if convert else merge_patch(old, new)
    return {"mutate": {**ref, "merge_patch": patch, "note": "; ".join(describe(op) for op in ops)}}


def noted(step: dict, origin: str) -> dict:
    """The step with its note prefixed by where it comes from (its merge patch stays shared)."""
    ((verb, body),) = step.items()
    return {verb: {**body, "note": f"{origin}: {body['note']}"}}


def scenarios(root: Path, convert: bool) -> tuple[list[dict], dict[int, str]]:
    """The scenarios, one per upstream subtest, and the names of the objects several of them share
    (a test's manifests; a change an earlier subtest made, replayed)."""
    out, names = [], {}
    for path in sorted((root / "tests").glob("*network-policy-*.go")):
        for test in parse_tests(path):
            table = MUTATIONS[test["short"]]
            docs = load_manifest(root, test["manifest"])
            experimental = any(f.endswith(("NamedPorts", "NodePeers")) for f in test["features"])
            applied = [to_cnp(d) if convert else d for d in docs]
            names[id(applied)] = test["short"]
            history: list[dict] = []  # the steps earlier subtests made, replayed
            for index, sub in enumerate(test["subtests"]):
                own = table.get(index, [])
                assert len(own) == sub["changes"], (test["short"], index, own, sub["changes"])
                made = [change_step(docs, target, ops, convert) for target, ops in own]
                for k, step in enumerate(made, 1):
                    names[id(step.get("mutate", {}).get("merge_patch"))] = f"{test['short']}-{index + 1}-{k}"
                probes = [
                    Flow(p, **({"probe": False} if p["protocol"] == "SCTP" else {})) for p in sub["probes"]
                ]
                out.append(
                    {
                        "name": f"{test['short']}/{sub['title']}",
                        "upstream": f"{test['file']}:{test['short']}",
                        "subtest": index + 1,
                        "channel": "experimental" if experimental else "standard",
                        "features": test["features"],
                        "manifest": test["manifest"],
                        "apply": applied,
                        "steps": [*history, *(noted(s, "this subtest") for s in made), {"expect": probes}],
                    }
                )
                history += [noted(s, f"replayed from subtest {index + 1}") for s in made]
    names.pop(id(None), None)
    return out, names


class Flow(dict):
    """A mapping written on one line (the expectations)."""


def dump(data: tuple[list[dict], dict[int, str]], header: str) -> str:
    """YAML with an anchor on each object several scenarios share (named in ``data``), no other
    alias, and one line per expectation."""
    scenarios_, names = data
    node_names: dict[Any, str] = {}

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, obj: Any) -> bool:
            return id(obj) not in names

        def represent_data(self, obj: Any) -> Any:
            node = super().represent_data(obj)
            if id(obj) in names:
                node_names[node] = names[id(obj)]
            return node

        def generate_anchor(self, node: Any) -> str:
            return node_names[node]

    Dumper.add_representer(
        Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True)
    )
    return header + yaml.dump(scenarios_, Dumper=Dumper, sort_keys=False, width=4096, allow_unicode=True)


def main(argv: list[str]) -> int:
    root = Path(argv[1])
    header = (
        f"# Generated by regenerate.py from kubernetes-sigs/network-policy-api {TAG} ({TAG_COMMIT}),\n"
        "# conformance/tests/*.go and conformance/base/**. Read READING.md before editing.\n"
    )
    (HERE / "scenarios.yaml").write_text(dump(scenarios(root, False), header))
    cnp_header = header + (
        "# Every AdminNetworkPolicy/BaselineAdminNetworkPolicy rewritten as\n"
        f"# policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy (apis/v1alpha2 at main {CNP_COMMIT}).\n"
    )
    (HERE / "scenarios_cnp.yaml").write_text(dump(scenarios(root, True), cnp_header))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
