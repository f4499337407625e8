"""Calico policy semantics with real TCP, UDP and ICMP traffic on a 3-node calico-profile lab.

One lab for the module: namespaces ``shop`` {team: shop} and ``ops`` {team: ops}, six pods over the
three nodes (below), two ServiceAccounts with labels, a Service ``shop/web-svc`` over the web pods
(named targetPort ``web``), user Tiers ``security`` (order 100, Deny), ``audit`` (150, Pass) and
``platform`` (200, Deny), and routes in the lab's ``ext`` namespace (a client outside the cluster)
to every pod through the pod's node.

Every test applies its Calico objects, fences on every node's policy status reaching the revision
written (never a fixed sleep), then probes all its cells at once (:func:`run_probes`). Each cell
says what Calico's documentation makes of it; the probe AND :func:`podnet.calc.policy_explain.explain`
(compiled by :func:`podnet.cli.cmd_policy.load`, as ``podnet policy explain`` does) must both say
the same, and a denied connection must end in a timeout (a drop, not a refusal). Some cells also
name the step of the walk that decides them. Each test removes what it applied (fenced too).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from lab_support import Port, pod_doc, podnet, policy_applied, until

from podnet.calc.policy_explain import explain
from podnet.cli.cmd_policy import load
from podnet.dataplane.netlink import Netlink
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabError, LabNames
from podnet.lab.probe import Probe, run_probes
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource
from podnet.model.resource import Resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

NODES = ["node-1", "node-2", "node-3"]
POD_CIDR = "10.244.0.0/16"  # the lab's IP pool
PROBE_TIMEOUT = 0.6  # a denied probe ends in this timeout
LOG_DELAY = dt.timedelta(seconds=0.5)  # a logged packet reaches the agent's monitor within this
CALICO = "projectcalico.org/v3"
#: No lab node has this interface: podnet puts a host endpoint's interface under default deny
#: (policies selecting host endpoints are not applied yet), so the HostEndpoints of the global()
#: test name it and only their labels and expectedIPs matter (what global() matches).
ABSENT_INTERFACE = "hep-absent0"

DNS: Port = ("dns", 5353, "UDP")

#: pod -> (node, labels, serviceAccountName, containerPorts). "web" is 8080 on web1 and 8081 on web2.
LAYOUT: dict[str, tuple[str, dict[str, str], str | None, tuple[Port, ...]]] = {
    "shop/web1": (
        "node-1",
        {"app": "web", "id": "web1"},
        None,
        (("web", 8080, "TCP"), ("alt", 8081, "TCP"), DNS),
    ),
    "shop/web2": (
        "node-2",
        {"app": "web", "id": "web2"},
        None,
        (("web", 8081, "TCP"), ("alt", 8080, "TCP"), DNS),
    ),
    "shop/db": (
        "node-3",
        {"app": "db", "id": "db"},
        None,
        (("pg", 5432, "TCP"), *((None, p, "TCP") for p in range(9000, 9004)), DNS),
    ),
    "shop/client": ("node-2", {"role": "client", "id": "client"}, "client-sa", (("web", 8080, "TCP"),)),
    "ops/tool": ("node-3", {"role": "tool", "id": "tool"}, "tool-sa", (("http", 8080, "TCP"),)),
    "ops/mon": ("node-1", {"role": "mon", "id": "mon"}, None, (("http", 8080, "TCP"), DNS)),
}
NAMESPACES = {"shop": {"team": "shop"}, "ops": {"team": "ops"}}
SERVICE_ACCOUNTS = {"shop/client-sa": {"trust": "high"}, "ops/tool-sa": {"trust": "low"}}
TIERS = {"security": (100, "Deny"), "audit": (150, "Pass"), "platform": (200, "Deny")}
W1, W2, DB, CL, TOOL, MON = "shop/web1", "shop/web2", "shop/db", "shop/client", "ops/tool", "ops/mon"


# ----------------------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    names: LabNames
    store: ResourceStore
    node_ips: dict[str, str]
    ext_ip: str
    pods: dict[str, str] = field(default_factory=dict)  # "ns/name" -> IP
    service_ip: str = ""
    applied: dict[str, Resource] = field(default_factory=dict)  # datastore key -> what a test wrote

    def netns(self, source: str) -> str:
        if source == "ext":
            return self.names.ext_ns
        if source in self.node_ips:
            return self.names.node_ns(source)
        return self.names.pod_ns(*source.split("/", 1))


def fence(lab: Lab, revision: int) -> dict:
    """Every node's kernel ruleset includes ``revision``: their policy reports."""
    return policy_applied(lab.store, NODES, revision)


def apply(lab: Lab, *docs: dict) -> dict:
    """Create or update (in place) ``docs``, remember them for the cleanup, fence; the reports."""
    results = lab.store.apply([parse_resource(d) for d in docs])
    for result in results:
        lab.applied[lab.store.key_of(result.resource)] = result.resource
    return fence(lab, max(int(r.resource.metadata.resource_version or 0) for r in results))


def remove_applied(lab: Lab) -> None:
    """Delete what the test applied (newest first) and fence on the last delete."""
    revision = 0
    for key in reversed(list(lab.applied)):
        with contextlib.suppress(Exception):
            revision = max(revision, lab.store.store.delete(key))
        del lab.applied[key]
    if revision:
        fence(lab, revision)


def patch(lab: Lab, kind: str, name: str, body: dict, namespace: str | None = None) -> None:
    """Merge-patch a stored object (a pod's labels, a Tier's order) and fence."""
    patched = lab.store.patch(lookup(kind), name, body, namespace)
    fence(lab, int(patched.metadata.resource_version or 0))


def policy(
    name: str, selector: str, namespace: str | None = "shop", **spec: object
) -> dict:  # a Calico NetworkPolicy, or a GlobalNetworkPolicy when namespace is None
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": CALICO,
        "kind": "NetworkPolicy" if namespace else "GlobalNetworkPolicy",
        "metadata": metadata,
        "spec": {"selector": selector, **spec},
    }


def gnp(name: str, selector: str, **spec: object) -> dict:
    return policy(name, selector, None, **spec)


def rule(action: str, protocol: str | int | None = None, **fields: object) -> dict:
    return {"action": action, **({"protocol": protocol} if protocol is not None else {}), **fields}


def src(**fields: object) -> dict:
    return {"source": fields}


def dst(**fields: object) -> dict:
    return {"destination": fields}


# ------------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """A new connection from ``src`` (a pod, a node or ``ext``) to pod ``dst`` on ``port/proto``
    and what Calico makes of it. ``why``: a step the explained walk must contain. ``via``: probe
    this address and port instead (a ClusterIP); ``dst``/``port`` are then one backend after DNAT."""

    src: str
    dst: str
    port: int
    proto: str
    allowed: bool
    why: str | None = None
    via: tuple[str, int] | None = None


def cell(source: str, target: str, what: str, allowed: bool, why: str | None = None) -> Cell:
    """``what``: ``"8080/TCP"``, ``"5353/UDP"`` or ``"ICMP"`` (an echo request)."""
    if what == "ICMP":
        return Cell(source, target, 0, "ICMP", allowed, why)
    port, proto = what.split("/")
    return Cell(source, target, int(port), proto, allowed, why)


def check(lab: Lab, cells: list[Cell], backends: tuple[tuple[str, int], ...] = ()) -> None:
    """Probe every cell at once; probe, explain() and the cell must agree, denials must time out.
    ``backends``: every (pod, port) a ``via`` cell may reach (explain() must agree for each)."""
    probes = [
        Probe(
            lab.netns(c.src),
            c.via[0] if c.via else lab.pods[c.dst],
            c.via[1] if c.via else c.port,
            c.proto,
            expect=None if c.proto == "ICMP" or c.via else c.dst,
        )
        for c in cells
    ]
    results = run_probes(probes, PROBE_TIMEOUT)
    view = load(lab.store)
    lines, bad = [], 0
    for c, result in zip(cells, results, strict=True):
        source = view.pods[c.src] if "/" in c.src else lab.ext_ip if c.src == "ext" else lab.node_ips[c.src]
        targets = backends if c.via else ((c.dst, c.port),)
        verdicts = [explain(view.plan, source, view.pods[pod], port, c.proto) for pod, port in targets]
        walks = " | ".join(v.describe() for v in verdicts)
        ok = (
            result.ok is c.allowed
            and all(v.allowed is c.allowed for v in verdicts)
            and (c.allowed or result.detail.startswith("timeout"))
            and (c.why is None or c.why in walks)
        )
        bad += not ok
        where = f"{c.via[0]}:{c.via[1]}" if c.via else f"{c.port}/{c.proto}"
        lines.append(
            f"{'  ' if ok else '!!'} {c.src} -> {c.dst} {where}: want {c.allowed}, probe {result.ok} "
            f"({result.detail}), explain {[v.allowed for v in verdicts]}: {walks}"
            + (f" [must show {c.why!r}]" if c.why else "")
        )
    assert not bad, "cells where the probe, explain() and Calico's semantics disagree:\n" + "\n".join(lines)


# ------------------------------------------------------------------------------------------ fixtures


def _start(lab: Lab) -> None:
    ns_docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
        for ns, labels in NAMESPACES.items()
    ]
    accounts = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": key.split("/")[1], "namespace": key.split("/")[0], "labels": labels},
        }
        for key, labels in SERVICE_ACCOUNTS.items()
    ]
    tiers = [
        {
            "apiVersion": CALICO,
            "kind": "Tier",
            "metadata": {"name": name},
            "spec": {"order": o, "defaultAction": a},
        }
        for name, (o, a) in TIERS.items()
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web-svc", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "web"}]},
    }
    pods = [pod_doc(k, node, labels, ports, account) for k, (node, labels, account, ports) in LAYOUT.items()]
    docs = [*ns_docs, *accounts, *tiers, service, *pods]
    lab.store.apply([parse_resource(d) for d in docs])

    def running() -> dict[str, str] | None:
        found = {
            f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip
            for p in lab.store.list(lookup("pods"))
            if p.status and p.status.phase == "Running" and p.status.pod_ip
        }
        return found if all(k in found for k in LAYOUT) else None

    lab.pods = until("every pod Running", running, timeout=60)
    lab.service_ip = lab.store.get(lookup("services"), "web-svc", "shop").spec.cluster_ip
    with Netlink.open(lab.names.ext_ns) as nl:  # ext reaches each pod through the pod's node
        for key, ip in lab.pods.items():
            nl.route_add(f"{ip}/32", gateway=lab.node_ips[LAYOUT[key][0]], dev="eth0")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(LabSpec(nodes=3, underlay=random_underlay()), names)
        assert info.topology.external is not None
        the_lab = Lab(
            names,
            ResourceStore(EtcdDatastore([info.etcd_endpoint])),
            {h.name: h.ip for h in info.topology.nodes},
            info.topology.external.ip,
        )
        _start(the_lab)
        # Everything open (positive control for every later denial): pods, nodes and ext reach pods.
        everything = [
            cell(source, target, f"{port}/{proto}", True)
            for source in [*LAYOUT, "ext", "node-1"]
            for target in LAYOUT
            for _, port, proto in LAYOUT[target][3][:1]
            if source != target and not (source == "node-1" and LAYOUT[target][0] == "node-1")
        ]
        deadline = time.monotonic() + 30
        while True:
            try:
                check(the_lab, everything)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the endpoints are still being wired: poll again
        yield the_lab
    finally:
        with contextlib.suppress(LabError):
            cluster.teardown(names)
        clean(names)


@pytest.fixture(autouse=True)
def scenario(lab: Lab) -> Iterator[Lab]:
    """Each test starts without policies and removes what it applied."""
    yield lab
    remove_applied(lab)


# ----------------------------------------------------------------------------------------- scenarios

CLIENT = "role == 'client'"


def test_tier_order(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "sec-web",
            "app == 'web'",
            tier="security",
            ingress=[rule("Deny", "TCP", **src(selector=CLIENT), **dst(ports=[8080])), rule("Pass")],
        ),
        policy(
            "plat-web",
            "app == 'web'",
            tier="platform",
            ingress=[rule("Allow", **src(selector=CLIENT)), rule("Deny")],
        ),
    )
    check(
        lab,
        [
            cell(
                CL,
                W1,
                "8080/TCP",
                False,
                "tier security: CalicoNetworkPolicy shop/sec-web ingress rule 0 Deny",
            ),
            cell(CL, W2, "8080/TCP", False),
            cell(
                CL,
                W2,
                "8081/TCP",
                True,
                "tier platform: CalicoNetworkPolicy shop/plat-web ingress rule 0 Allow",
            ),
            cell(CL, W1, "5353/UDP", True),
            cell(
                TOOL,
                W1,
                "8081/TCP",
                False,
                "tier platform: CalicoNetworkPolicy shop/plat-web ingress rule 1 Deny",
            ),
            cell(DB, W2, "8081/TCP", False),
            cell(CL, DB, "5432/TCP", True),
        ],
    )
    # The same policies with the tiers' order swapped: platform decides first now.
    patch(lab, "tiers", "security", {"spec": {"order": 300}})
    try:
        check(
            lab,
            [
                cell(
                    CL,
                    W1,
                    "8080/TCP",
                    True,
                    "tier platform: CalicoNetworkPolicy shop/plat-web ingress rule 0 Allow",
                ),
                cell(
                    TOOL,
                    W1,
                    "8081/TCP",
                    False,
                    "tier platform: CalicoNetworkPolicy shop/plat-web ingress rule 1 Deny",
                ),
                cell(CL, W2, "8081/TCP", True),
            ],
        )
    finally:
        patch(lab, "tiers", "security", {"spec": {"order": TIERS["security"][0]}})


def test_policy_order_and_name_ties(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "db-deny-client", "id == 'db'", order=10, ingress=[rule("Deny", "TCP", **src(selector=CLIENT))]
        ),
        policy("db-allow", "id == 'db'", order=20, ingress=[rule("Allow", "TCP")]),
        policy("db-udp-deny", "id == 'db'", order=30, ingress=[rule("Deny", "UDP", **src(selector=CLIENT))]),
        policy("aaa-unordered", "id == 'db'", ingress=[rule("Allow", "UDP")]),  # no order: last
        # equal orders go by name: a-deny before b-allow, c-allow before d-deny
        policy("a-deny", "id == 'web1'", order=50, ingress=[rule("Deny", "TCP", **src(selector=CLIENT))]),
        policy("b-allow", "id == 'web1'", order=50, ingress=[rule("Allow", "TCP")]),
        policy("c-allow", "id == 'web2'", order=50, ingress=[rule("Allow", "TCP", **src(selector=CLIENT))]),
        policy("d-deny", "id == 'web2'", order=50, ingress=[rule("Deny", "TCP")]),
    )
    check(
        lab,
        [
            cell(CL, DB, "5432/TCP", False, "CalicoNetworkPolicy shop/db-deny-client ingress rule 0 Deny"),
            cell(TOOL, DB, "5432/TCP", True, "CalicoNetworkPolicy shop/db-allow ingress rule 0 Allow"),
            cell(W1, DB, "5432/TCP", True),
            cell(CL, DB, "5353/UDP", False, "CalicoNetworkPolicy shop/db-udp-deny ingress rule 0 Deny"),
            cell(TOOL, DB, "5353/UDP", True, "CalicoNetworkPolicy shop/aaa-unordered ingress rule 0 Allow"),
            cell(CL, W1, "8080/TCP", False, "CalicoNetworkPolicy shop/a-deny ingress rule 0 Deny"),
            cell(MON, W1, "8080/TCP", True, "CalicoNetworkPolicy shop/b-allow ingress rule 0 Allow"),
            cell(CL, W2, "8081/TCP", True, "CalicoNetworkPolicy shop/c-allow ingress rule 0 Allow"),
            cell(DB, W2, "8081/TCP", False, "CalicoNetworkPolicy shop/d-deny ingress rule 0 Deny"),
        ],
    )


def test_rule_order(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "w1-rules",
            "id == 'web1'",
            ingress=[
                rule("Allow", "TCP", **dst(ports=[8080])),
                rule("Deny", "TCP", **src(selector=CLIENT)),
                rule("Allow", "TCP"),
                rule(
                    "Allow",
                    notProtocol="TCP",
                    ipVersion=4,
                    **src(selector="role == 'mon'", namespaceSelector="all()"),
                ),
            ],
        ),
    )
    check(
        lab,
        [
            cell(MON, W1, "5353/UDP", True, "shop/w1-rules ingress rule 3 Allow"),
            cell(CL, W1, "8080/TCP", True, "shop/w1-rules ingress rule 0 Allow"),
            cell(CL, W1, "8081/TCP", False, "shop/w1-rules ingress rule 1 Deny"),
            cell(TOOL, W1, "8081/TCP", True, "shop/w1-rules ingress rule 2 Allow"),
            cell(CL, W1, "5353/UDP", False, "tier default: end of tier Deny"),
        ],
    )


def test_kubernetes_network_policy_is_order_1000_in_tier_default(lab: Lab) -> None:
    knp = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "knp-w1", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"id": "web1"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 8081}]}
            ],
        },
    }
    apply(
        lab,
        knp,
        policy("before-knp", "id == 'web1'", order=999, ingress=[rule("Deny", "TCP", **dst(ports=[8081]))]),
        policy(
            "after-knp",
            "id == 'web1'",
            order=1001,
            ingress=[
                rule("Allow", "TCP", **src(selector="role == 'mon'", namespaceSelector="team == 'ops'"))
            ],
        ),
    )
    check(
        lab,
        [
            cell(CL, W1, "8081/TCP", False, "CalicoNetworkPolicy shop/before-knp ingress rule 0 Deny"),
            cell(MON, W1, "8080/TCP", True, "CalicoNetworkPolicy shop/after-knp ingress rule 0 Allow"),
            cell(CL, W1, "8080/TCP", False, "tier default: end of tier Deny"),
            cell(TOOL, W1, "8080/TCP", False),
        ],
    )
    del knp["spec"]["ingress"][0]["ports"]  # now it allows the client on every port, before after-knp
    apply(lab, knp)
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", True, "NetworkPolicy shop/knp-w1 ingress rule 0 Allow"),
            cell(CL, W1, "8081/TCP", False, "CalicoNetworkPolicy shop/before-knp ingress rule 0 Deny"),
        ],
    )


def test_deny_before_allow_and_allow_before_deny(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "w1-deny-first",
            "id == 'web1'",
            ingress=[rule("Deny", "TCP", **src(selector=CLIENT)), rule("Allow", "TCP")],
        ),
        policy(
            "w2-allow-first",
            "id == 'web2'",
            ingress=[rule("Allow", "TCP", **src(selector=CLIENT)), rule("Deny", "TCP")],
        ),
    )
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", False, "ingress rule 0 Deny"),
            cell(MON, W1, "8080/TCP", True, "ingress rule 1 Allow"),
            cell(CL, W2, "8081/TCP", True, "ingress rule 0 Allow"),
            cell(DB, W2, "8081/TCP", False, "ingress rule 1 Deny"),
        ],
    )


def test_pass_to_the_next_tier_and_out_of_the_last(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "sec-pass",
            "app == 'web'",
            tier="security",
            order=1,
            ingress=[rule("Pass", **src(selector=CLIENT))],
        ),
        # after sec-pass in the same tier: a Pass skips it (the rest of the tier), others meet it
        policy("sec-after", "app == 'web'", tier="security", order=2, ingress=[rule("Deny", "UDP")]),
        # egress: Pass out of the only tier that selects ops/mon for egress goes to the profile
        gnp("sec-mon-out", "id == 'mon'", tier="security", types=["Egress"], egress=[rule("Pass", "TCP")]),
        policy("audit-w2", "id == 'web2'", tier="audit", ingress=[rule("Deny", "UDP")]),  # tier action Pass
        policy(
            "plat-w1", "id == 'web1'", tier="platform", ingress=[rule("Allow", "TCP", **dst(ports=[8080]))]
        ),
        policy("db-pass", "id == 'db'", ingress=[rule("Pass", **src(selector=CLIENT))]),  # tier default
    )
    check(
        lab,
        [
            cell(
                CL,
                W1,
                "8080/TCP",
                True,
                "tier platform: CalicoNetworkPolicy shop/plat-w1 ingress rule 0 Allow",
            ),
            cell(CL, W1, "5353/UDP", False, "tier platform: end of tier Deny"),
            cell(CL, W2, "8081/TCP", True, "tier audit: end of tier Pass"),
            cell(
                CL, W2, "5353/UDP", False, "tier audit: CalicoNetworkPolicy shop/audit-w2 ingress rule 0 Deny"
            ),
            cell(TOOL, W2, "8081/TCP", False, "tier security: end of tier Deny"),
            cell(CL, DB, "5432/TCP", True, "no tier decided: namespace profile Allow"),
            cell(TOOL, DB, "5432/TCP", False, "tier default: end of tier Deny"),
            cell(
                TOOL,
                W1,
                "5353/UDP",
                False,
                "tier security: CalicoNetworkPolicy shop/sec-after ingress rule 0 Deny",
            ),
            cell(
                MON,
                TOOL,
                "8080/TCP",
                True,
                "tier security: GlobalNetworkPolicy sec-mon-out egress rule 0 Pass",
            ),
            cell(MON, DB, "5353/UDP", False, "tier security: end of tier Deny"),
        ],
    )


def test_end_of_tier_deny_only_for_endpoints_the_tier_selects(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "sec-web-in",
            "app == 'web'",
            tier="security",
            types=["Ingress"],
            ingress=[rule("Allow", "TCP", **src(selector=CLIENT))],
        ),
    )
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", True),
            cell(TOOL, W1, "8080/TCP", False, "tier security: end of tier Deny"),
            cell(TOOL, DB, "5432/TCP", True),  # no security policy selects db: it passes the tier
            cell(W1, DB, "5432/TCP", True),  # web's egress: no policy of the tier selects it for egress
            cell(TOOL, MON, "8080/TCP", True),
        ],
    )


def _monitor(lab: Lab, since: dt.datetime) -> list[dict]:
    """``podnet monitor --type log`` and ``--type drop`` (``-o json``): the records of every node,
    annotated at ``since`` or later (each type only in its own listing)."""
    out = "".join(
        podnet(lab.names, "monitor", "--type", kind, "-o", "json").stdout for kind in ("log", "drop")
    )
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in records if dt.datetime.fromisoformat(r["time"]) >= since]


def test_log_rule_logs_and_the_connection_continues(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "log-w1",
            "id == 'web1'",
            ingress=[rule("Log", "TCP", **src(selector=CLIENT)), rule("Allow", "TCP", **dst(ports=[8080]))],
        ),
    )
    started = dt.datetime.now(dt.UTC)
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", True, "shop/log-w1 ingress rule 0 Log"),
            cell(CL, W1, "8081/TCP", False, "tier default: end of tier Deny"),
            cell(MON, W1, "8080/TCP", True),
        ],
    )
    client, web1 = lab.pods[CL], lab.pods[W1]

    def entries() -> tuple[list[dict], list[dict], list[dict]] | None:
        records = _monitor(lab, started)
        ours = [r for r in records if r["src"] == client and r["dst"] == web1]
        logs = [r for r in ours if r["type"] == "log" and r["dport"] == 8080]
        drops = [r for r in ours if r["type"] == "drop"]
        return (logs, drops, records) if logs and drops else None

    logs, drops, records = until("the Log rule's entry and the end-of-tier drop in podnet monitor", entries)
    assert logs[0]["policies"] == [
        {"kind": "CalicoNetworkPolicy", "namespace": "shop", "name": "log-w1", "tier": "default", "rule": 0}
    ], logs[0]
    assert logs[0]["node"] == "node-1", logs[0]
    assert logs[0]["reason"] == "tier default: CalicoNetworkPolicy shop/log-w1 ingress rule 0 Log", logs[0]
    # The Log rule matches the client's TCP to any port; 8081 then meets the end-of-tier deny.
    assert [(d["dport"], d["direction"], d["reason"]) for d in drops] == [
        (8081, "ingress", "default deny of CalicoNetworkPolicy shop/log-w1")
    ], drops
    # The agent reads each logged packet at once (it explains it by the plan in force when it reads).
    late = [r for r in (*logs, *drops) if dt.datetime.fromisoformat(r["time"]) - started > LOG_DELAY]
    assert not late, f"logged packets read more than {LOG_DELAY} after the probes: {late}"
    # The Log rule's selector does not match ops/mon: no log entry for it.
    assert not [r for r in records if r["type"] == "log" and r["src"] == lab.pods[MON]], records


def test_not_nets(lab: Lab) -> None:
    client, web2 = lab.pods[CL], lab.pods[W2]
    apply(
        lab,
        policy(
            "w1-notnets",
            "id == 'web1'",
            ingress=[rule("Allow", "TCP", **src(nets=[POD_CIDR], notNets=[f"{client}/32"]))],
        ),
        policy("cl-out", CLIENT, types=["Egress"], egress=[rule("Allow", **dst(notNets=[f"{web2}/32"]))]),
    )
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", False, "tier default: end of tier Deny"),
            cell(TOOL, W1, "8080/TCP", True),
            cell(DB, W1, "8080/TCP", True),
            cell("ext", W1, "8080/TCP", False),
            cell("node-3", W1, "8080/TCP", False),
            cell(CL, W2, "8081/TCP", False),
            cell(CL, DB, "5432/TCP", True),
            cell(CL, TOOL, "8080/TCP", True),
        ],
    )


def test_not_selector_matches_outside_the_cluster(lab: Lab) -> None:
    apply(
        lab,
        # A GlobalNetworkPolicy's notSelector alone: everything but those endpoints, outside too.
        gnp("gnp-not-client", "id == 'web1'", ingress=[rule("Allow", "TCP", **src(notSelector=CLIENT))]),
        # A NetworkPolicy's: the endpoints of its own namespace but those (Calico scopes it).
        policy("np-not-client", "id == 'web2'", ingress=[rule("Allow", "TCP", **src(notSelector=CLIENT))]),
    )
    check(
        lab,
        [
            cell("ext", W1, "8080/TCP", True, "GlobalNetworkPolicy gnp-not-client ingress rule 0 Allow"),
            cell("node-3", W1, "8080/TCP", True),
            cell(TOOL, W1, "8080/TCP", True),
            cell(CL, W1, "8080/TCP", False),
            cell("ext", W2, "8081/TCP", False),
            cell(TOOL, W2, "8081/TCP", False),
            cell(DB, W2, "8081/TCP", True),
            cell(CL, W2, "8081/TCP", False),
        ],
    )


def test_port_ranges(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "db-ranges",
            "id == 'db'",
            ingress=[
                rule("Allow", "TCP", **dst(ports=["9001:9002"])),
                rule("Allow", "UDP", **dst(ports=["5300:5400"])),
            ],
        ),
        policy("w2-not-range", "id == 'web2'", ingress=[rule("Allow", "TCP", **dst(notPorts=["8000:8080"]))]),
    )
    check(
        lab,
        [
            cell(CL, DB, "9000/TCP", False),
            cell(CL, DB, "9001/TCP", True),
            cell(CL, DB, "9002/TCP", True),
            cell(CL, DB, "9003/TCP", False),
            cell(CL, DB, "5432/TCP", False),
            cell(CL, DB, "5353/UDP", True),
            cell(CL, W2, "8081/TCP", True),
            cell(CL, W2, "8080/TCP", False),
        ],
    )


def test_named_ports(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "web-named",
            "app == 'web'",
            ingress=[rule("Allow", "TCP", **dst(ports=["web"])), rule("Allow", "UDP", **dst(ports=["dns"]))],
        ),
        policy("cl-to-pg", CLIENT, types=["Egress"], egress=[rule("Allow", "TCP", **dst(ports=["pg"]))]),
    )
    check(
        lab,
        [
            cell(TOOL, W1, "8080/TCP", True),
            cell(TOOL, W1, "8081/TCP", False),
            cell(DB, W2, "8081/TCP", True),
            cell(DB, W2, "8080/TCP", False),
            cell(TOOL, W1, "5353/UDP", True),
            cell(CL, DB, "5432/TCP", True),
            cell(CL, DB, "9000/TCP", False),
            cell(CL, TOOL, "8080/TCP", False),
        ],
    )


def test_icmp_type_and_code(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "w1-icmp",
            "id == 'web1'",
            ingress=[rule("Deny", "ICMP", icmp={"type": 8, "code": 0}), rule("Allow", "ICMP")],
        ),
        policy(
            "w2-icmp",
            "id == 'web2'",
            ingress=[
                rule("Deny", "ICMP", icmp={"type": 8, "code": 1}),
                rule("Deny", "ICMP", icmp={"type": 13}),
                rule("Allow", "ICMP", icmp={"type": 8}),
            ],
        ),
        policy("db-icmp", "id == 'db'", ingress=[rule("Allow", "ICMP", icmp={"type": 13})]),
        gnp("tool-icmp", "id == 'tool'", ingress=[rule("Allow", "ICMP", notICMP={"type": 8})]),
        gnp("mon-icmp", "id == 'mon'", ingress=[rule("Allow", 1, notICMP={"type": 8, "code": 1})]),
    )
    check(
        lab,
        [
            cell(CL, W1, "ICMP", False, "shop/w1-icmp ingress rule 0 Deny"),
            cell(CL, W2, "ICMP", True, "shop/w2-icmp ingress rule 2 Allow"),
            cell(CL, W2, "8081/TCP", False),
            cell(CL, DB, "ICMP", False, "tier default: end of tier Deny"),
            cell(CL, TOOL, "ICMP", False),
            cell(CL, MON, "ICMP", True, "GlobalNetworkPolicy mon-icmp ingress rule 0 Allow"),
            cell(W1, CL, "ICMP", True),  # the client is not selected: open
        ],
    )


def test_service_accounts(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "db-sa-names",
            "id == 'db'",
            ingress=[rule("Allow", "TCP", **src(serviceAccounts={"names": ["client-sa"]}))],
        ),
        gnp(
            "w1-sa-selector",
            "id == 'web1'",
            ingress=[rule("Allow", "TCP", **src(serviceAccounts={"selector": "trust == 'low'"}))],
        ),
        gnp(
            "sa-egress",
            "all()",
            serviceAccountSelector="trust == 'high'",
            types=["Egress"],
            egress=[rule("Deny", "UDP"), rule("Allow")],
        ),
    )
    check(
        lab,
        [
            cell(CL, DB, "5432/TCP", True, "shop/db-sa-names ingress rule 0 Allow"),
            cell(TOOL, DB, "5432/TCP", False),
            cell(W1, DB, "5432/TCP", False),
            cell(TOOL, W1, "8080/TCP", True, "GlobalNetworkPolicy w1-sa-selector ingress rule 0 Allow"),
            cell(CL, W1, "8080/TCP", False),
            cell(MON, W1, "8080/TCP", False),
            cell(CL, W2, "5353/UDP", False, "GlobalNetworkPolicy sa-egress egress rule 0 Deny"),
            cell(CL, W2, "8081/TCP", True),
            cell(TOOL, W2, "5353/UDP", True),
            cell(TOOL, MON, "8080/TCP", True),
        ],
    )
    # Relabel a ServiceAccount: ops/tool now trusts high (selected by sa-egress, not by w1-sa-selector).
    patch(lab, "serviceaccounts", "tool-sa", {"metadata": {"labels": {"trust": "high"}}}, "ops")
    try:
        check(
            lab,
            [
                cell(TOOL, W1, "8080/TCP", False),
                cell(TOOL, W2, "5353/UDP", False, "GlobalNetworkPolicy sa-egress egress rule 0 Deny"),
                cell(TOOL, MON, "8080/TCP", True, "GlobalNetworkPolicy sa-egress egress rule 1 Allow"),
            ],
        )
    finally:
        patch(lab, "serviceaccounts", "tool-sa", {"metadata": {"labels": {"trust": "low"}}}, "ops")


def test_namespace_selector_global_matches_host_endpoints(lab: Lab) -> None:
    def hep(name: str, node: str, role: str) -> dict:
        spec = {"node": node, "interfaceName": ABSENT_INTERFACE, "expectedIPs": [lab.node_ips[node]]}
        return {
            "apiVersion": CALICO,
            "kind": "HostEndpoint",
            "metadata": {"name": name, "labels": {"role": role}},
            "spec": spec,
        }

    apply(
        lab,
        hep("node-1-gw", "node-1", "gw"),
        hep("node-3-other", "node-3", "other"),
        gnp(
            "from-gw",
            "id == 'web2'",
            ingress=[rule("Allow", "TCP", **src(namespaceSelector="global()", selector="role == 'gw'"))],
        ),
        policy(
            "db-from-hosts", "id == 'db'", ingress=[rule("Allow", "TCP", **src(namespaceSelector="global()"))]
        ),
    )
    check(
        lab,
        [
            cell("node-1", W2, "8081/TCP", True, "GlobalNetworkPolicy from-gw ingress rule 0 Allow"),
            cell("node-3", W2, "8081/TCP", False),
            cell(TOOL, W2, "8081/TCP", False),
            cell(CL, W2, "8081/TCP", False),
            cell("node-1", DB, "5432/TCP", True),
            cell("node-2", DB, "5432/TCP", False),
            cell(CL, DB, "5432/TCP", False),
        ],
    )


def test_global_and_namespaced_policy_on_one_endpoint(lab: Lab) -> None:
    apply(
        lab,
        gnp(
            "gnp-db",
            "id == 'db'",
            order=10,
            ingress=[rule("Deny", "TCP", **src(namespaceSelector="team == 'ops'"))],
        ),
        policy("np-db", "id == 'db'", order=20, ingress=[rule("Allow", "TCP")]),
        policy("np-w1", "id == 'web1'", order=5, ingress=[rule("Allow", "TCP", **src(selector=CLIENT))]),
        gnp("gnp-web", "app == 'web'", order=10, ingress=[rule("Deny", "TCP")]),
        # one order, two kinds: by name
        gnp("a-gnp-w2", "id == 'web2'", order=7, ingress=[rule("Deny", "UDP")]),
        policy("b-np-w2", "id == 'web2'", order=7, ingress=[rule("Allow", "UDP")]),
    )
    check(
        lab,
        [
            cell(TOOL, DB, "5432/TCP", False, "GlobalNetworkPolicy gnp-db ingress rule 0 Deny"),
            cell(MON, DB, "5432/TCP", False),
            cell(CL, DB, "5432/TCP", True, "CalicoNetworkPolicy shop/np-db ingress rule 0 Allow"),
            cell(CL, W1, "8080/TCP", True, "CalicoNetworkPolicy shop/np-w1 ingress rule 0 Allow"),
            cell(CL, W2, "8081/TCP", False, "GlobalNetworkPolicy gnp-web ingress rule 0 Deny"),
            cell(TOOL, W1, "8080/TCP", False),
            cell(CL, W2, "5353/UDP", False, "GlobalNetworkPolicy a-gnp-w2 ingress rule 0 Deny"),
        ],
    )
    # Relabel a namespace: gnp-db's namespaceSelector no longer matches ops.
    patch(lab, "namespaces", "ops", {"metadata": {"labels": {"team": "ops2"}}})
    try:
        check(
            lab,
            [
                cell(TOOL, DB, "5432/TCP", True, "CalicoNetworkPolicy shop/np-db ingress rule 0 Allow"),
                cell(MON, DB, "5432/TCP", True),
            ],
        )
    finally:
        patch(lab, "namespaces", "ops", {"metadata": {"labels": {"team": "ops"}}})


def test_services_as_egress_destination(lab: Lab) -> None:
    apply(
        lab,
        policy(
            "cl-to-svc", CLIENT, types=["Egress"], egress=[rule("Allow", **dst(services={"name": "web-svc"}))]
        ),
    )
    via_service = Cell(CL, W1, 8080, "TCP", True, via=(lab.service_ip, 80))
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", True, "shop/cl-to-svc egress rule 0 Allow"),
            cell(CL, W2, "8081/TCP", True),
            cell(CL, W1, "8081/TCP", False),
            cell(CL, W2, "8080/TCP", False),
            cell(CL, DB, "5432/TCP", False),
            via_service,
        ],
        backends=((W1, 8080), (W2, 8081)),
    )


def test_policy_in_a_missing_tier_fails_closed(lab: Lab) -> None:
    reports = apply(lab, policy("ghost-w1", "id == 'web1'", tier="ghost", ingress=[rule("Allow")]))
    assert "tier 'ghost' does not exist" in reports["node-1"].compile_errors.get(
        "CalicoNetworkPolicy:shop/ghost-w1", ""
    ), reports["node-1"]
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", False),
            cell(TOOL, W1, "8080/TCP", False),
            cell("node-2", W1, "8080/TCP", False),
            cell(W1, DB, "5432/TCP", True),  # its egress: the policy is Ingress only
            cell(CL, W2, "8081/TCP", True),
        ],
    )
    apply(lab, {"apiVersion": CALICO, "kind": "Tier", "metadata": {"name": "ghost"}, "spec": {"order": 300}})
    check(
        lab,
        [
            cell(
                CL, W1, "8080/TCP", True, "tier ghost: CalicoNetworkPolicy shop/ghost-w1 ingress rule 0 Allow"
            )
        ],
    )


def test_changes_after_the_fact(lab: Lab) -> None:
    allow = policy(
        "allow-clients", "app == 'web'", order=10, ingress=[rule("Allow", "TCP", **src(selector=CLIENT))]
    )
    deny = policy("deny-rest", "app == 'web'", order=20, ingress=[rule("Deny", "TCP")])
    apply(lab, allow, deny)
    check(
        lab,
        [
            cell(CL, W1, "8080/TCP", True),
            cell(DB, W1, "8080/TCP", False, "shop/deny-rest ingress rule 0 Deny"),
            cell(DB, W2, "8081/TCP", False),
        ],
    )
    patch(lab, "pods", "db", {"metadata": {"labels": {"role": "client"}}}, "shop")
    try:
        check(
            lab,
            [
                cell(DB, W1, "8080/TCP", True),
                cell(DB, W2, "8081/TCP", True),
                cell(TOOL, W1, "8080/TCP", False),
            ],
        )
        deny["spec"]["order"] = 5
        apply(lab, deny)
        check(
            lab,
            [
                cell(CL, W1, "8080/TCP", False, "shop/deny-rest ingress rule 0 Deny"),
                cell(DB, W2, "8081/TCP", False),
            ],
        )
        deny["spec"]["ingress"] = [rule("Allow", "TCP")]
        apply(lab, deny)
        check(
            lab,
            [
                cell(CL, W1, "8080/TCP", True, "shop/deny-rest ingress rule 0 Allow"),
                cell(TOOL, W1, "8080/TCP", True),
                cell(TOOL, W1, "5353/UDP", False),
            ],
        )
    finally:
        patch(lab, "pods", "db", {"metadata": {"labels": {"role": None}}}, "shop")
