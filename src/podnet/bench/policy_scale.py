"""NetworkPolicy at scale on a lab: cold programming, change-to-enforcement, agent memory, throughput.

    python -m podnet.bench.policy_scale [--quick] [--pods 300] [--policies 1000] [--rules-per-policy 5]
                                        [--changes 30] [--repeats 3] [--duration 3] [--json PATH]

One private 3-node lab (its own prefix and underlay, removed at the end whatever happens):

1. **Pods**: ``--pods`` Pods in 10 namespaces (labels ``team``, ``env``), spread over the nodes by
   ``nodeName``, labels ``app``/``tier``/``pod`` so selectors pick different subsets, containerPorts
   ``http`` 8080 and ``metrics`` 9090 (named); applied in one go, timed until all are Running.
   Two more pods (``ctl`` namespace, never selected by a policy) are the throughput control pair.
2. **Idle**: agent RSS (``VmRSS`` of each node's agent) with the pods and no policy.
3. **Throughput and new connections/s without policies**: iperf3 pod → pod across nodes
   (``podnet.bench.throughput.iperf``) and wrk with ``Connection: close`` against nginx in the
   server pod (every request a new TCP connection; :mod:`podnet.bench.services`' nginx and wrk),
   the measured pair and the control pair interleaved, ``--repeats`` each.
4. **Cold program**: ``--policies`` NetworkPolicies of exactly ``--rules-per-policy`` rules each
   (ingress + egress; podSelector / namespaceSelector / ipBlock-with-except peers, numeric, named and
   ``endPort`` ports), generated from ``--seed``, applied in one ``ResourceStore.apply`` call; timed
   from the start of the apply until every node's ``inet podnet_policy`` holds the rules of the
   last applied policy that has rules on that node (which node holds what is computed with the
   agent's own compiler from the pods' addresses); then the kernel rules per node are counted.
5. **Change to enforcement**: ``--changes`` times, one policy gets a new ingress rule allowing one
   port from one specific pod; timed from the apply returning until ``nft monitor`` in each node
   that hosts a selected pod shows the rule (by its provenance comment): p50/p99 of the first node
   and of all nodes.
6. **Loaded**: agent RSS (and peak ``VmHWM``) with the policies, the agents' sync histogram
   (``podnet_dataplane_sync_seconds`` from ``/metrics`` in each node), and the throughput again,
   and the new connections/s, interleaved the same way: ratio loaded / no policies (same pair)
   and measured / control pair.

Policy 0 allows the measured pair's iperf3 ports (20000-40000, ``endPort``) and nginx's both ways it needs:
ingress on the server pod from the client pod, egress of the client pod to the server pod; both pods
are also selected by other generated policies, so their chains are full of rules.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from podnet.bench.monitor import LineMonitor
from podnet.bench.services import NGINX_PORT, start_nginx, wrk_in_pod
from podnet.bench.stats import latency_summary, ratio
from podnet.bench.throughput import iperf
from podnet.calc.policy import PodInfo, compile_policies
from podnet.dataplane.netns import run_in_netns
from podnet.dataplane.policy import QUALIFIED, match_lines, policy_chain_name, provenance_comment
from podnet.lab.naming import LabNames
from podnet.model import NetworkPolicy, parse_resource

NAMESPACES = 10
PODS_PER_APP = 3  # pods per (namespace, app): an app selector picks a few pods
TIERS = ("web", "api", "db", "cache")
TEAMS = ("red", "green", "blue")
CONTAINER_PORTS = [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]
IPERF_PORTS = (20000, 40000)  # podnet.bench.throughput.iperf picks its server port in this range
CHANGE_PORT_BASE = 41000  # change j allows port CHANGE_PORT_BASE + j
CONTROL_NS = "ctl"
BENCH_PREFIX = "pnps-"
_COMMENT_RE = re.compile(r'comment "((?:knp|np):(?:[^":/]+:)?[^"/]+/[^":]+:(?:ingress|egress):\d+)"')
#: The Calico form's tiers (``--tiers``): name, order, default action; then tier ``default``.
CALICO_TIERS = (("security", 100, "Pass"), ("platform", 200, "Pass"))


# ------------------------------------------------------------------------------------ the workload


@dataclass
class Workload:
    """Everything the benchmark applies, as Kubernetes-style documents (pure data)."""

    namespaces: list[dict]
    pods: list[dict]
    policies: list[dict]
    client: str  # "ns/name" of the measured iperf3 pair (selected by policies)
    server: str
    control: tuple[str, str]  # the control pair (no policy selects it)
    seed: int
    rules_per_policy: int
    tiers: list[dict] = field(default_factory=list)  # Calico form: the Tier objects

    @property
    def rule_count(self) -> int:
        return sum(count_rules(p) for p in self.policies)

    def all_docs(self) -> list[dict]:
        return self.tiers + self.namespaces + self.pods


def count_rules(policy: dict) -> int:
    """Ingress + egress rules of a policy document (either form)."""
    spec = policy["spec"]
    return len(spec.get("ingress") or []) + len(spec.get("egress") or [])


def _ns(i: int) -> str:
    return f"ps-{i:02d}"


def _pod_doc(name: str, namespace: str, node: str, labels: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": CONTAINER_PORTS}]},
    }


def _key(doc: dict) -> str:
    return f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"


def _ingress_rule(kind: int, rng: random.Random, apps: int) -> dict:
    if kind == 0:  # same-namespace pods by app, numeric port
        return {
            "from": [{"podSelector": {"matchLabels": {"app": f"a{rng.randrange(apps)}"}}}],
            "ports": [{"port": 8080}],
        }
    if kind == 1:  # pods of a tier in the namespaces of a team, named port
        return {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"team": rng.choice(TEAMS)}},
                    "podSelector": {"matchLabels": {"tier": rng.choice(TIERS)}},
                }
            ],
            "ports": [{"port": "http"}],
        }
    if kind == 2:  # an address block with a hole, a port range
        x = rng.randrange(1, 250)
        first = rng.randrange(9000, 9500)
        block = {"cidr": f"10.{x}.0.0/16", "except": [f"10.{x}.{rng.randrange(256)}.0/24"]}
        return {
            "from": [{"ipBlock": block}],
            "ports": [{"port": first, "endPort": first + rng.randrange(1, 100)}],
        }
    # every pod of the prod namespaces, a named port and a UDP port
    return {
        "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
        "ports": [{"port": "metrics"}, {"port": 5353, "protocol": "UDP"}],
    }


def _egress_rule(kind: int, rng: random.Random, apps: int) -> dict:
    if kind == 0:  # same-namespace pods of a tier, numeric port
        return {
            "to": [{"podSelector": {"matchLabels": {"tier": rng.choice(TIERS)}}}],
            "ports": [{"port": 5432}],
        }
    if kind == 1:  # DNS-like: an address block with a hole, UDP and TCP 53
        x = rng.randrange(16, 32)
        block = {"cidr": f"172.{x}.0.0/16", "except": [f"172.{x}.{rng.randrange(256)}.0/24"]}
        return {"to": [{"ipBlock": block}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}
    # an app in the namespaces of a team, named port (resolved per destination pod)
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"team": rng.choice(TEAMS)}},
                "podSelector": {"matchLabels": {"app": f"a{rng.randrange(apps)}"}},
            }
        ],
        "ports": [{"port": "http"}],
    }


def _split(rules: int) -> tuple[int, int]:
    """(ingress, egress) rule counts of one policy: 5 → 3 + 2; 1 → 1 + 0."""
    egress = rules // 2
    return rules - egress, egress


def generate_workload(
    pods: int = 300, policies: int = 1000, rules_per_policy: int = 5, *, nodes: int = 3, seed: int = 1
) -> Workload:
    """The pods and policies of one run, the same for the same arguments (``seed``)."""
    if pods < 2 * nodes or policies < 1 or rules_per_policy < 2 or nodes < 2:
        raise ValueError("need pods >= 2*nodes, policies >= 1, rules-per-policy >= 2 and nodes >= 2")
    rng = random.Random(seed)
    namespaces = min(NAMESPACES, pods // 2)
    apps = max(1, pods // (namespaces * PODS_PER_APP))
    ns_docs = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": _ns(i),
                "labels": {"team": TEAMS[i % len(TEAMS)], "env": "prod" if i % 2 == 0 else "dev"},
            },
        }
        for i in range(namespaces)
    ]
    ns_docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROL_NS}})
    pod_docs = []
    for i in range(pods):
        name = f"p{i:04d}"
        labels = {
            "app": f"a{(i // namespaces) % apps}",
            "tier": rng.choice(TIERS),
            "pod": name,
            "version": f"v{rng.randrange(3)}",
        }
        pod_docs.append(_pod_doc(name, _ns(i % namespaces), f"node-{i % nodes + 1}", labels))
    control = [_pod_doc(f"ctl-{k}", CONTROL_NS, f"node-{k + 1}", {"app": "ctl"}) for k in range(2)]
    # The measured pair: pods 0 and `namespaces` share namespace 0 and sit on nodes 1 and 2 (or so).
    client, server = pod_docs[0], pod_docs[namespaces]
    if client["spec"]["nodeName"] == server["spec"]["nodeName"]:
        server = next(
            p
            for p in pod_docs
            if p["metadata"]["namespace"] == client["metadata"]["namespace"]
            and p["spec"]["nodeName"] != client["spec"]["nodeName"]
        )
    n_in, n_eg = _split(rules_per_policy)
    low, high = IPERF_PORTS
    policy_docs = []
    for j in range(policies):
        namespace = _ns(j % namespaces)
        ingress = [_ingress_rule((j + r) % 4, rng, apps) for r in range(n_in)]
        egress = [_egress_rule((j + r) % 3, rng, apps) for r in range(n_eg)]
        selector: dict[str, Any] = {"matchLabels": {"app": f"a{rng.randrange(apps)}"}}
        if rng.random() < 0.3:
            selector["matchExpressions"] = [
                {"key": "tier", "operator": "NotIn", "values": [rng.choice(TIERS)]}
            ]
        if j == 0:  # the measured pair's iperf3 ports, both directions it needs
            namespace = client["metadata"]["namespace"]
            pair = [client["metadata"]["name"], server["metadata"]["name"]]
            selector = {"matchExpressions": [{"key": "pod", "operator": "In", "values": pair}]}
            ingress[0] = {
                "from": [{"podSelector": {"matchLabels": {"pod": pair[0]}}}],
                "ports": [{"port": low, "endPort": high}, {"port": NGINX_PORT}],
            }
            egress[0] = {
                "to": [{"podSelector": {"matchLabels": {"pod": pair[1]}}}],
                "ports": [{"port": low, "endPort": high}, {"port": NGINX_PORT}],
            }
        spec: dict[str, Any] = {
            "podSelector": selector,
            "policyTypes": ["Ingress", "Egress"] if egress else ["Ingress"],
            "ingress": ingress,
        }
        if egress:
            spec["egress"] = egress
        meta = {"name": f"np-{j:04d}", "namespace": namespace}
        policy_docs.append(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}
        )
    return Workload(
        ns_docs,
        pod_docs + control,
        policy_docs,
        _key(client),
        _key(server),
        (_key(control[0]), _key(control[1])),
        seed,
        rules_per_policy,
    )


def _calico_selector(labels: dict[str, str]) -> str:
    return " && ".join(f"{k} == '{v}'" for k, v in sorted(labels.items())) or "all()"


def _calico_peer(peer: dict) -> dict:
    """A Kubernetes peer as a Calico entity rule (selector, namespaceSelector, nets/notNets)."""
    if "ipBlock" in peer:
        out = {"nets": [peer["ipBlock"]["cidr"]]}
        if peer["ipBlock"].get("except"):
            out["notNets"] = list(peer["ipBlock"]["except"])
        return out
    out = {}
    if "podSelector" in peer:
        out["selector"] = _calico_selector(peer["podSelector"].get("matchLabels") or {})
    if "namespaceSelector" in peer:
        out["namespaceSelector"] = _calico_selector(peer["namespaceSelector"].get("matchLabels") or {})
    return out


def _calico_rules(rule: dict, direction: str, action: str) -> list[dict]:
    """One Kubernetes rule as Calico rules: one per peer and protocol (Calico rules have one of each)."""
    side, peers_key = ("source", "from") if direction == "ingress" else ("destination", "to")
    by_protocol: dict[str, list] = {}
    for port in rule.get("ports") or []:
        number = port.get("port")
        value = f"{number}:{port['endPort']}" if port.get("endPort") else number
        by_protocol.setdefault(port.get("protocol", "TCP"), []).append(value)
    out = []
    for peer in rule.get(peers_key) or [{}]:
        for protocol, ports in by_protocol.items() or [(None, None)]:
            calico: dict[str, Any] = {"action": action}
            entity = _calico_peer(peer)
            if protocol:
                calico["protocol"] = protocol
                calico["destination"] = {"ports": ports}
            if entity:
                calico[side] = entity
            out.append(calico)
    return out


def calico_form(workload: Workload) -> Workload:
    """The same workload as Calico NetworkPolicies in three tiers (pure): policy j goes to tier
    ``security``, ``platform`` or ``default`` by j % 3 (policy 0, the measured pair's, stays in
    ``default``), at order j. In the two user tiers (defaultAction Pass) an ``ipBlock`` rule becomes
    a Deny and the policy ends with a Pass; everything else is Allow."""
    tiers = [
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "Tier",
            "metadata": {"name": name},
            "spec": {"order": order, "defaultAction": action},
        }
        for name, order, action in CALICO_TIERS
    ]
    policies = []
    for j, doc in enumerate(workload.policies):
        tier = "default" if j == 0 else ("security", "platform", "default")[j % 3]
        spec = doc["spec"]
        out: dict[str, Any] = {
            "tier": tier,
            "order": j,
            "selector": _selector_text(spec["podSelector"]),
            "types": list(spec.get("policyTypes") or ["Ingress"]),
        }
        for direction in ("ingress", "egress"):
            rules = []
            for rule in spec.get(direction) or []:
                peers = rule.get("from" if direction == "ingress" else "to") or []
                # a Deny on an outside block (never the lab's pod pool: the measured pair must pass)
                blocks = any("ipBlock" in p and not p["ipBlock"]["cidr"].startswith("10.244.") for p in peers)
                action = "Deny" if blocks and tier != "default" else "Allow"
                rules += _calico_rules(rule, direction, action)
            if tier != "default" and rules:
                rules.append({"action": "Pass"})
            if rules:
                out[direction] = rules
        meta = {"name": f"{tier}.{doc['metadata']['name']}", "namespace": doc["metadata"]["namespace"]}
        policies.append(
            {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": meta, "spec": out}
        )
    return replace(workload, policies=policies, tiers=tiers)


def _selector_text(selector: dict) -> str:
    parts = [f"{k} == '{v}'" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        values = ", ".join(f"'{v}'" for v in e["values"])
        parts.append(f"{e['key']} {'in' if e['operator'] == 'In' else 'not in'} {{{values}}}")
    return " && ".join(parts) or "all()"


def selected_pods(policy: dict, pods: Iterable[dict]) -> list[dict]:
    """The pods a policy document selects (its namespace; its podSelector or Calico selector)."""
    model = parse_resource(policy)
    namespace = policy["metadata"]["namespace"]
    if isinstance(model, NetworkPolicy):
        matches = model.spec.pod_selector.matches
    else:
        matches = model.spec.parsed_selector().matches
    return [
        p
        for p in pods
        if p["metadata"]["namespace"] == namespace and matches(p["metadata"].get("labels") or {})
    ]


@dataclass(frozen=True)
class Change:
    """One policy edit of the change phase and how to recognise it in the kernel."""

    index: int
    policy: dict  # the edited document
    comment: str  # the provenance comment of the new rule
    port: int
    nodes: tuple[str, ...]  # the nodes that must show it (they host a pod the policy selects)


def plan_changes(workload: Workload, count: int) -> list[Change]:
    """``count`` edits, each on a different policy that selects some pod (not policy 0): a new ingress
    rule allowing port ``CHANGE_PORT_BASE + j`` from one specific pod of the policy's namespace."""
    rng = random.Random(workload.seed + 7)
    candidates = list(range(1, len(workload.policies)))
    rng.shuffle(candidates)
    changes: list[Change] = []
    for j in candidates:
        if len(changes) == count:
            break
        policy = workload.policies[j]
        chosen = selected_pods(policy, workload.pods)
        if not chosen:
            continue
        namespace = policy["metadata"]["namespace"]
        peers = [p for p in workload.pods if p["metadata"]["namespace"] == namespace]
        source = rng.choice(peers)["metadata"]["name"]
        port = CHANGE_PORT_BASE + len(changes)
        edited = json.loads(json.dumps(policy))
        ingress = edited["spec"].setdefault("ingress", [])
        if policy["kind"] == "NetworkPolicy" and policy["apiVersion"].startswith("networking.k8s.io"):
            ingress.append(
                {"from": [{"podSelector": {"matchLabels": {"pod": source}}}], "ports": [{"port": port}]}
            )
            comment = f"knp:{namespace}/{policy['metadata']['name']}:ingress:{len(ingress) - 1}"
        else:  # Calico form: before its closing Pass, so the new rule is reached
            rule = {
                "action": "Allow",
                "protocol": "TCP",
                "source": {"selector": f"pod == '{source}'"},
                "destination": {"ports": [port]},
            }
            at = len(ingress) - 1 if ingress and ingress[-1] == {"action": "Pass"} else len(ingress)
            ingress.insert(at, rule)
            if "Ingress" not in edited["spec"]["types"]:
                edited["spec"]["types"].append("Ingress")
            tier = edited["spec"]["tier"]
            comment = f"np:{tier}:{namespace}/{policy['metadata']['name']}:ingress:{at}"
        nodes = tuple(sorted({p["spec"]["nodeName"] for p in chosen}))
        changes.append(Change(len(changes), edited, comment, port, nodes))
    if len(changes) < count:
        raise ValueError(f"only {len(changes)} policies select a pod; cannot make {count} changes")
    return changes


# --------------------------------------------------------------------- what each node must hold


def pod_infos(pods: Sequence[dict], ips: dict[str, str]) -> list[PodInfo]:
    """PodInfo (as the agents' cache builds it) from pod documents and their addresses."""
    out = []
    for doc in pods:
        ports = tuple(
            (p.get("name"), p["containerPort"], p.get("protocol", "TCP"))
            for c in doc["spec"]["containers"]
            for p in c.get("ports", [])
        )
        ip = ips.get(_key(doc))
        out.append(
            PodInfo(
                doc["metadata"]["namespace"],
                doc["metadata"]["name"],
                dict(doc["metadata"].get("labels") or {}),
                (ip,) if ip else (),
                doc["spec"]["nodeName"],
                ports,
            )
        )
    return out


@dataclass(frozen=True)
class NodeTarget:
    """What says a node is done: the provenance comment of the last applied policy that has rules
    there, in the chain of one of its endpoints; and how many policy rules the node should hold."""

    node: str
    policy: str  # ns/name
    chain: str
    comment: str
    rule_lines: int  # kernel rules carrying a knp: comment, expected


def node_targets(workload: Workload, ips: dict[str, str], nodes: Sequence[str]) -> dict[str, NodeTarget]:
    """Per node, compile the workload with the agents' own compiler (pure) and pick its target."""
    infos = pod_infos(workload.pods, ips)
    namespaces = {d["metadata"]["name"]: dict(d["metadata"].get("labels") or {}) for d in workload.namespaces}
    models = [parse_resource(p) for p in workload.policies]
    tiers = [parse_resource(t) for t in workload.tiers]
    order = {_key(p): i for i, p in enumerate(workload.policies)}
    targets = {}
    for node in nodes:
        plan = compile_policies([p for p in infos if p.node == node], infos, namespaces, models, tiers=tiers)
        best: tuple[int, str, str, str] | None = None
        lines = 0
        for policy in plan.policies.values():  # one chain per policy and direction on the node
            for direction in ("ingress", "egress"):
                for rule in policy.rules(direction):
                    lines += len(match_lines(rule.match))
                    p = rule.provenance
                    rank = order[f"{p.namespace}/{p.name}"]
                    if best is None or rank > best[0]:
                        best = (rank, policy.key, direction, provenance_comment(p))
        if best is not None:
            rank, key, direction, comment = best
            targets[node] = NodeTarget(
                node, _key(workload.policies[rank]), policy_chain_name(key, direction), comment, lines
            )
    return targets


# ------------------------------------------------------------------------------- kernel readers


def parse_comment(line: str) -> str | None:
    """``knp:ns/name:direction:N`` (or ``np:tier:ns/name:direction:N``) of an nft rule line, or None."""
    m = _COMMENT_RE.search(line)
    return m.group(1) if m else None


def count_kernel_rules(doc: dict) -> dict[str, int]:
    """From ``nft -j list table``: rules, rules with a policy comment, chains, sets and set elements."""
    out = {"rules": 0, "policy_rules": 0, "chains": 0, "sets": 0, "set_elements": 0}
    for item in doc.get("nftables", []):
        if "rule" in item:
            out["rules"] += 1
            if str(item["rule"].get("comment", "")).startswith(("knp:", "np:")):
                out["policy_rules"] += 1
        elif "chain" in item:
            out["chains"] += 1
        elif "set" in item:
            out["sets"] += 1
            out["set_elements"] += len(item["set"].get("elem", []))
    return out


def nft(netns: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run_in_netns(netns, ["nft", *args], timeout=timeout)


def kernel_rules(netns: str) -> dict[str, Any]:
    started = time.perf_counter()
    proc = nft(netns, "-j", "list", "table", *QUALIFIED.split())
    listed = time.perf_counter() - started
    counts = count_kernel_rules(json.loads(proc.stdout or "{}")) if proc.returncode == 0 else {}
    return counts | {"list_seconds": round(listed, 3)}


def chain_has(netns: str, chain: str, comment: str) -> bool:
    proc = nft(netns, "list", "chain", *QUALIFIED.split(), chain, timeout=30)
    return proc.returncode == 0 and f'"{comment}"' in proc.stdout


class RuleMonitor(LineMonitor):
    """``nft monitor rules`` in one node netns: the first time each policy comment appeared."""

    def __init__(self, netns: str) -> None:
        self.seen: dict[str, float] = {}
        super().__init__(netns, ["nft", "monitor", "rules"])

    def parse(self, line: str) -> str | None:
        return parse_comment(line) if line.startswith("add rule") else None

    def record(self, item: str, at: float) -> None:
        self.seen.setdefault(item, at)

    def wait_for(self, comment: str, timeout: float) -> float | None:
        """perf_counter() when ``comment`` was first seen (waits up to ``timeout``)."""
        return self.wait_until(lambda: self.seen.get(comment), timeout)


# -------------------------------------------------------------------------- agents: memory, metrics


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_mib": out.get("VmHWM", 0.0)}


def parse_sync_histogram(text: str) -> dict[str, float]:
    """``podnet_dataplane_sync_seconds`` count and sum from a Prometheus exposition."""
    out = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for suffix in ("count", "sum"):
            if line.startswith(f"podnet_dataplane_sync_seconds_{suffix} "):
                out[suffix] = float(line.split()[1])
    return out


def sync_histogram(netns: str) -> dict[str, float]:
    proc = run_in_netns(netns, ["curl", "-s", "--max-time", "5", "http://127.0.0.1:9099/metrics"])
    return parse_sync_histogram(proc.stdout)


def sync_delta(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Per node: syncs between two readings and their mean seconds."""
    out = {}
    for node, b in before.items():
        a = after[node]
        n = a["count"] - b["count"]
        out[node] = {
            "syncs": int(n),
            "mean_s": round((a["sum"] - b["sum"]) / n, 3) if n else 0.0,
            "total_s": round(a["sum"] - b["sum"], 2),
        }
    return out


# ------------------------------------------------------------------------------------- the run


@dataclass
class Options:
    pods: int = 300
    policies: int = 1000
    rules_per_policy: int = 5
    changes: int = 30
    repeats: int = 3
    duration: float = 3.0
    nodes: int = 3
    seed: int = 1
    timeout: float = 900.0
    tiers: bool = False  # the Calico form: Calico NetworkPolicies in three tiers


def _wait_running(store, workload: Workload, timeout: float) -> tuple[float, dict[str, str]]:
    from podnet.model import lookup

    want = {_key(p) for p in workload.pods}
    namespaces = sorted({p["metadata"]["namespace"] for p in workload.pods})
    started = time.perf_counter()
    while True:
        ips = {}
        for namespace in namespaces:
            for pod in store.list(lookup("pods"), namespace):
                if pod.status and pod.status.phase == "Running" and pod.status.pod_ip:
                    ips[f"{namespace}/{pod.metadata.name}"] = pod.status.pod_ip
        if want <= ips.keys():
            return time.perf_counter() - started, ips
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"only {len(want & ips.keys())}/{len(want)} pods Running after {timeout:g}s")
        time.sleep(0.5)


CONN_RATE_CONNECTIONS = 16  # wrk's connections for the new connections/s runs (as bench.datapath)


def _throughput(
    names: LabNames,
    ips: dict[str, str],
    pairs: dict[str, tuple[str, str]],
    repeats: int,
    duration: float,
    cgroups: dict[str, str],
) -> dict[str, dict[str, list[float]]]:
    """iperf3 Gbit/s and wrk new connections/s of each pair, ``repeats`` rounds interleaved: drift
    on the (shared) machine hits both pairs alike. ``cgroups``: pod key -> its cgroup."""
    runs: dict[str, dict[str, list[float]]] = {
        "gbps": {s: [] for s in pairs},
        "conn_rate": {s: [] for s in pairs},
    }
    for _ in range(repeats):
        for side, (client, server) in pairs.items():
            client_ns, server_ns = names.pod_ns(*client.split("/")), names.pod_ns(*server.split("/"))
            runs["gbps"][side].append(round(iperf(client_ns, server_ns, ips[server], duration), 3))
            url = f"http://{ips[server]}:{NGINX_PORT}/"
            rate = wrk_in_pod(
                client_ns, cgroups[client], url, max(1, round(duration)), 1, CONN_RATE_CONNECTIONS, True
            ).requests_per_s
            runs["conn_rate"][side].append(round(rate, 1))
    return runs


def _start_servers(names: LabNames, store: Any, pairs: dict[str, tuple[str, str]]) -> dict[str, str]:
    """nginx in each pair's server pod (recorded in the lab state: removed with the lab); returns
    every pair pod's cgroup (wrk joins its client's)."""
    from podnet.model import lookup

    cgroups = {}
    for client, server in pairs.values():
        for key in (client, server):
            namespace, name = key.split("/")
            pod = store.get(lookup("pods"), name, namespace)
            cgroups[key] = names.pod_cgroup(pod.spec.node_name, pod.metadata.uid)
        start_nginx(names, server.split("/")[1], names.pod_ns(*server.split("/")), cgroups[server])
    return cgroups


def pair_figures(before: dict[str, list[float]], after: dict[str, list[float]], digits: int = 2) -> dict:
    """One measure's medians (the measured and control pairs, without and with the policies) and
    its ratios: measured with / without, measured / control with the policies (pure)."""
    med = {
        f"{side}_{when}": statistics.median(runs[side])
        for when, runs in (("without", before), ("with", after))
        for side in ("measured", "control")
    }
    return {
        "median": {k: round(v, digits) for k, v in med.items()},
        "ratio_with_vs_without": ratio(med["measured_with"], med["measured_without"]).number,
        "ratio_with_vs_control": ratio(med["measured_with"], med["control_with"]).number,
        "samples": {"without": before, "with": after},
    }


def _memory(names: LabNames) -> dict[str, dict]:
    from podnet.lab.cluster import agent_pids

    return {node: proc_memory(pid) for node, pid in sorted(agent_pids(names).items())}


def run(opts: Options) -> dict:
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.topology import LabSpec, random_underlay

    workload = generate_workload(
        opts.pods, opts.policies, opts.rules_per_policy, nodes=opts.nodes, seed=opts.seed
    )
    if opts.tiers:
        workload = calico_form(workload)
    changes = plan_changes(workload, opts.changes)
    results: dict[str, Any] = {
        "params": {
            "pods": opts.pods,
            "control_pods": 2,
            "namespaces": len(workload.namespaces) - 1,
            "policies": len(workload.policies),
            "rules": workload.rule_count,
            "rules_per_policy": opts.rules_per_policy,
            "changes": opts.changes,
            "nodes": opts.nodes,
            "repeats": opts.repeats,
            "duration_s": opts.duration,
            "seed": opts.seed,
            "form": "calico tiers" if opts.tiers else "kubernetes",
            "tiers": [t["metadata"]["name"] for t in workload.tiers] + (["default"] if opts.tiers else []),
        },
    }
    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    wall = time.perf_counter()
    monitors: list[RuleMonitor] = []
    try:
        info = cluster.up(LabSpec(nodes=opts.nodes, underlay=random_underlay()), names)
        results["lab_up_s"] = round(info.seconds, 2)
        node_ns = {h.name: h.netns for h in info.topology.nodes}
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))

        # 1. pods
        started = time.perf_counter()
        store.apply([parse_resource(d) for d in workload.all_docs()])
        _, ips = _wait_running(store, workload, opts.timeout)
        results["pods_running_s"] = round(time.perf_counter() - started, 2)
        time.sleep(2.0)  # let the agents settle after the burst of endpoints

        # 2. idle memory; 3. throughput without policies
        results["memory_idle"] = _memory(names)
        pairs = {"measured": (workload.client, workload.server), "control": workload.control}
        cgroups = _start_servers(names, store, pairs)
        before = _throughput(names, ips, pairs, opts.repeats, opts.duration, cgroups)

        # 4. cold program
        targets = node_targets(workload, ips, list(node_ns))
        hist0 = {n: sync_histogram(ns) for n, ns in node_ns.items()}
        resources = [parse_resource(p) for p in workload.policies]
        started = time.perf_counter()
        store.apply(resources)
        applied = time.perf_counter() - started
        done: dict[str, float] = {}
        while len(done) < len(targets):
            for node, target in targets.items():
                if node not in done and chain_has(node_ns[node], target.chain, target.comment):
                    done[node] = time.perf_counter() - started
            if time.perf_counter() - started > opts.timeout:
                missing = sorted(set(targets) - set(done))
                raise TimeoutError(f"policies not programmed on {missing} after {opts.timeout:g}s")
            time.sleep(0.05)
        cold = max(done.values())
        hist1 = {n: sync_histogram(ns) for n, ns in node_ns.items()}
        kernel = {n: kernel_rules(ns) for n, ns in node_ns.items()}
        for node, counts in kernel.items():
            counts["expected_policy_rules"] = targets[node].rule_lines if node in targets else 0
        results["cold"] = {
            "apply_s": round(applied, 2),
            "programmed_s": round(cold, 2),
            "per_node_s": {n: round(s, 2) for n, s in sorted(done.items())},
            "kernel": kernel,
            "syncs": sync_delta(hist0, hist1),
        }

        # 5. change to enforcement
        monitors = [RuleMonitor(ns) for ns in node_ns.values()]
        by_node = dict(zip(node_ns, monitors, strict=True))
        time.sleep(0.5)
        first, last, apply_s = [], [], []
        for change in changes:
            resource = parse_resource(change.policy)
            t0 = time.perf_counter()
            store.apply([resource])
            t1 = time.perf_counter()
            seen = []
            for node in change.nodes:
                at = by_node[node].wait_for(change.comment, timeout=min(opts.timeout, 300))
                if at is None:
                    raise TimeoutError(f"change {change.index} ({change.comment}) never reached {node}")
                seen.append(max(0.0, at - t1))
            apply_s.append(t1 - t0)
            first.append(min(seen))
            last.append(max(seen))
            time.sleep(0.2)
        hist2 = {n: sync_histogram(ns) for n, ns in node_ns.items()}
        results["change"] = {
            "first_node": latency_summary(first),
            "all_nodes": latency_summary(last),
            "apply": latency_summary(apply_s),
            "syncs": sync_delta(hist1, hist2),
            "samples_ms": {
                "first_node": [round(x * 1e3, 1) for x in first],
                "all_nodes": [round(x * 1e3, 1) for x in last],
            },
        }
        for monitor in monitors:
            monitor.close()
        monitors = []

        # 6. loaded memory and throughput
        time.sleep(1.0)
        results["memory_loaded"] = _memory(names)
        after = _throughput(names, ips, pairs, opts.repeats, opts.duration, cgroups)
        results["throughput"] = {
            **pair_figures(before["gbps"], after["gbps"]),
            "pairs": {k: list(v) for k, v in pairs.items()},
        }
        results["conn_rate"] = pair_figures(before["conn_rate"], after["conn_rate"], digits=0)
    finally:
        for monitor in monitors:
            monitor.close()
        cluster.remove(names)
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    return results


def render(r: dict) -> str:
    p = r["params"]
    lines = [
        f"NetworkPolicy scale: {p['policies']} policies / {p['rules']} rules, {p['pods']} pods "
        f"(+2 control) in {p['namespaces']} namespaces on {p['nodes']} nodes (seed {p['seed']})",
        f"lab up {r['lab_up_s']} s; {p['pods'] + 2} pods applied -> all Running: {r['pods_running_s']} s",
        "",
    ]
    c = r["cold"]
    lines.append(f"{'cold program':44} {c['programmed_s']:>8.2f} s  (apply to etcd {c['apply_s']} s)")
    for node, k in sorted(c["kernel"].items()):
        s = c["syncs"][node]
        at = c["per_node_s"].get(node, float("nan"))
        lines.append(
            f"  {node:12} programmed {at:7.2f} s  rules {k.get('rules', 0):6} "
            f"(policy {k.get('policy_rules', 0)}, expected {k['expected_policy_rules']})  "
            f"sets {k.get('sets', 0)}  syncs {s['syncs']} x {s['mean_s']} s"
        )
    ch = r["change"]
    lines += ["", f"{'change -> kernel (ms)':32} {'n':>4} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for key, label in (
        ("first_node", "first node"),
        ("all_nodes", "all selected nodes"),
        ("apply", "the apply itself"),
    ):
        s = ch[key]
        cells = " ".join(f"{s[k]:8.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        lines.append(f"{label:32} {s['n']:4} {cells}")
    syncs = ", ".join(f"{n} {s['syncs']} x {s['mean_s']} s" for n, s in sorted(ch["syncs"].items()))
    lines.append(f"  agent syncs during the changes: {syncs}")
    lines += ["", f"{'agent memory (MiB)':16} {'idle RSS':>9} {'loaded RSS':>11} {'peak':>8}"]
    for node in sorted(r["memory_idle"]):
        idle, loaded = r["memory_idle"][node], r["memory_loaded"][node]
        lines.append(f"{node:16} {idle['rss_mib']:9.1f} {loaded['rss_mib']:11.1f} {loaded['peak_mib']:8.1f}")
    t, c = r["throughput"], r["conn_rate"]
    g, n = t["median"], c["median"]
    lines += [
        "",
        f"median of {p['repeats']} x {p['duration_s']} s, interleaved   no policies  with policies  "
        "with/without  measured/control",
        f"  measured pair {t['pairs']['measured'][0]} -> {t['pairs']['measured'][1]}",
        f"    throughput (Gbit/s)  {g['measured_without']:12.2f} {g['measured_with']:14.2f} "
        f"{t['ratio_with_vs_without']:13.3f} {t['ratio_with_vs_control']:17.3f}",
        f"    new connections/s    {n['measured_without']:12.0f} {n['measured_with']:14.0f} "
        f"{c['ratio_with_vs_without']:13.3f} {c['ratio_with_vs_control']:17.3f}",
        f"  control pair (never selected): {g['control_without']:.2f} / {g['control_with']:.2f} Gbit/s, "
        f"{n['control_without']:.0f} / {n['control_with']:.0f} conn/s",
        "",
        f"wall time {r['wall_s']} s",
    ]
    return "\n".join(lines)


def overlay(opts: Any, args: argparse.Namespace, names: Sequence[str], defaults: dict[str, Any]) -> None:
    """Each option in ``names`` from the command line, else from ``defaults`` (``--quick``), else
    the dataclass default (the focused benchmarks' ``main``)."""
    for name in names:
        value = getattr(args, name)
        setattr(opts, name, value if value is not None else defaults.get(name, getattr(opts, name)))


def emit(results: dict, json_path: str | None, render_fn: Callable[[dict], str]) -> None:
    """Write the results as JSON when asked, then print their table."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    print(render_fn(results))


QUICK = {"pods": 30, "policies": 100, "rules_per_policy": 5, "changes": 3, "repeats": 1, "duration": 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.policy_scale", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help="CI size: 30 pods, 100 policies, 3 changes, 1 short iperf"
    )
    ap.add_argument("--pods", type=int)
    ap.add_argument("--policies", type=int)
    ap.add_argument("--rules-per-policy", type=int)
    ap.add_argument("--changes", type=int)
    ap.add_argument("--repeats", type=int, help="iperf3 repeats per pair and phase")
    ap.add_argument("--duration", type=float, help="seconds per iperf3 run")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="per phase")
    ap.add_argument(
        "--tiers",
        action="store_true",
        help="Calico NetworkPolicies in three tiers (security, platform, default) with Allow, Deny and Pass",
    )
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    opts = Options(nodes=args.nodes, seed=args.seed, timeout=args.timeout, tiers=args.tiers)
    overlay(
        opts,
        args,
        ("pods", "policies", "rules_per_policy", "changes", "repeats", "duration"),
        QUICK if args.quick else {},
    )
    emit(run(opts), args.json, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
