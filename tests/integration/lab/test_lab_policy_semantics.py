"""The NetworkPolicy truth-table suite: Kubernetes semantics checked with real TCP and UDP traffic.

One 3-node lab per profile (calico, cilium) (namespaces ``a`` {team: x}, ``b`` {team: y}, ``c`` {}; nine
pods spread over the nodes, each serving its containerPorts, with the same port NAME on different
numbers; one hostNetwork pod per node, in kube-system, standing for the node's own services).
Every scenario is its own test: it applies its policies, then probes every source (each pod and
each node's own network namespace) to every (pod, served port) target, all at once, until
the real table equals the table the reference evaluator (``tests/netpol_reference.py``, Kubernetes
semantics written independently of podnet) predicts, within :data:`SETTLE` seconds. It also checks
that :func:`podnet.calc.policy.explain` (compiled with ``local_pods=all_pods``) predicts the same;
on any disagreement the three tables are printed. The policies are deleted at the end of every test
and the next one starts from an unpoliced cluster (the nodes' tables hold no isolation any more).

A few hand-written cells per scenario ("spots") guard the reference itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
from lab_support import Port, pod_doc

from netpol_reference import reference_allowed
from podnet.calc.policy import PodInfo, compile_policies
from podnet.calc.policy_explain import explain
from podnet.dataplane.lxc import pinned_endpoints, pinned_ipcache, pinned_policy
from podnet.dataplane.netns import netns_exists
from podnet.dataplane.policy import NOTRACK_SETS
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabError, LabNames
from podnet.lab.probe import Probe, render_matrix, run_probes
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource
from podnet.model.k8s_policy import NetworkPolicy

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NODES = ("node-1", "node-2", "node-3")
NAMESPACES: dict[str, dict[str, str]] = {"a": {"team": "x"}, "b": {"team": "y"}, "c": {}}
POD_CIDR = "10.244.0.0/16"  # the lab's IP pool
SETTLE = 6.0  # a policy change must show in the traffic within this many seconds
PROBE_TIMEOUT = 0.7  # a denied probe ends in this timeout

DNS: Port = ("dns", 5353, "UDP")
DNS_TCP: Port = ("dns-tcp", 5353, "TCP")


def web(number: int) -> Port:
    return ("web", number, "TCP")


#: pod -> (node, labels, containerPorts). "web" is 8080 on some pods and 8081 on others; a/db serves
#: 8080 and 8081 under OTHER names; a/range serves 9000-9003 unnamed.
LAYOUT: dict[str, tuple[str, dict[str, str], tuple[Port, ...]]] = {
    "a/web1": ("node-1", {"app": "web", "tier": "front"}, (web(8080), DNS, DNS_TCP)),
    "a/web2": ("node-2", {"app": "web", "tier": "back"}, (web(8081), DNS, DNS_TCP)),
    "a/db": ("node-3", {"app": "db", "tier": "back"}, (("http", 8080, "TCP"), ("alt", 8081, "TCP"), DNS)),
    "a/range": ("node-1", {"app": "range"}, (*((None, p, "TCP") for p in range(9000, 9004)), web(8081))),
    "b/web3": ("node-3", {"app": "web", "tier": "front"}, (web(8080), DNS, DNS_TCP)),
    "b/client": ("node-2", {"role": "client"}, (web(8081), DNS)),
    "b/tool": ("node-1", {"role": "tool", "tier": "ops"}, (("http", 8080, "TCP"), DNS)),
    "c/client": ("node-1", {"role": "client"}, (web(8080), DNS)),
    "c/api": ("node-3", {"app": "api", "tier": "front"}, (web(8081), DNS, DNS_TCP)),
}

#: one hostNetwork pod per node (in kube-system, which no policy here selects): its node's services.
#: Host-network pods are their node (Kubernetes leaves them to the implementation; podnet, like Calico
#: and Cilium, ignores them in selectors): the evaluators see only the node's address.
HOST_LAYOUT = {
    f"kube-system/host-{n[-1]}": (
        n,
        {"app": "node-agent"},
        (("probe", 7070, "TCP"), ("probe-udp", 7070, "UDP")),
    )
    for n in NODES
}

WEB = ((8080, "TCP"), (8081, "TCP"))
UDP = ((5353, "UDP"),)
TCP_5353 = ((5353, "TCP"),)
RANGE = tuple((p, "TCP") for p in range(9000, 9004))
HOST = ((7070, "TCP"), (7070, "UDP"))


# ----------------------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    names: LabNames
    store: ResourceStore
    node_ips: dict[str, str]
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: dict[str, PodInfo] = field(default_factory=dict)
    hosts: dict[str, PodInfo] = field(default_factory=dict)  # hostNetwork pods (not pods to policy)
    policies: dict[str, NetworkPolicy] = field(default_factory=dict)  # "ns/name" -> applied
    profile: str = "calico"

    def lxc_pins(self, node: str) -> str:
        """The Cilium profile's datapath pins of ``node`` (dataplane.lxc)."""
        return os.path.join(self.names.state_dir, "bpf", node, "lxc")

    def pod_netns(self, key: str) -> str:
        return self.names.pod_ns(*key.split("/", 1))


def start_pods(
    lab: Lab, layout: dict[str, tuple[str, dict[str, str], tuple[Port, ...]]], host_network: bool = False
) -> None:
    """Create the pods and wait until each is Running with an address (recorded in ``lab.pods``, or
    ``lab.hosts`` for hostNetwork pods)."""
    lab.store.apply([parse_resource(pod_doc(k, *v, host_network=host_network)) for k, v in layout.items()])
    deadline = time.monotonic() + 30
    while True:
        running = {
            f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip
            for p in lab.store.list(lookup("pods"))
            if p.status and p.status.phase == "Running" and p.status.pod_ip
        }
        if all(k in running for k in layout):
            break
        assert time.monotonic() < deadline, f"pods not running: {sorted(set(layout) - set(running))}"
        time.sleep(0.05)
    for key, (node, labels, ports) in layout.items():
        namespace, name = key.split("/", 1)
        info = PodInfo(namespace, name, dict(labels), (running[key],), node, ports)
        (lab.hosts if host_network else lab.pods)[key] = info


def delete_pod(lab: Lab, key: str) -> None:
    namespace, name = key.split("/", 1)
    lab.store.delete(lookup("pods"), name, namespace)
    lab.pods.pop(key)
    deadline = time.monotonic() + 15
    while netns_exists(lab.pod_netns(key)):
        assert time.monotonic() < deadline, f"{key}: the pod's netns outlived the pod"
        time.sleep(0.05)


def relabel_pod(lab: Lab, key: str, labels: dict[str, str | None]) -> None:
    """Merge-patch the pod's labels (None removes a label)."""
    namespace, name = key.split("/", 1)
    lab.store.patch(lookup("pods"), name, {"metadata": {"labels": labels}}, namespace)
    merged = {**lab.pods[key].labels, **labels}
    lab.pods[key] = replace(lab.pods[key], labels={k: v for k, v in merged.items() if v is not None})


def relabel_namespace(lab: Lab, namespace: str, labels: dict[str, str | None]) -> None:
    lab.store.patch(lookup("namespaces"), namespace, {"metadata": {"labels": labels}})
    merged = {**lab.namespaces[namespace], **labels}
    lab.namespaces[namespace] = {k: v for k, v in merged.items() if v is not None}


def netpol(namespace: str, name: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def sel(**labels: str) -> dict:
    """A ``matchLabels`` selector."""
    return {"matchLabels": labels}


def expr(key: str, operator: str, *values: str) -> dict:
    """A selector with one ``matchExpressions`` entry."""
    requirement = {"key": key, "operator": operator, **({"values": list(values)} if values else {})}
    return {"matchExpressions": [requirement]}


def apply_policies(lab: Lab, *docs: dict) -> None:
    """Create or update (same name: in place) the policies."""
    policies = [parse_resource(d) for d in docs]
    lab.store.apply(policies)
    for policy in policies:
        assert isinstance(policy, NetworkPolicy)
        lab.policies[f"{policy.namespace}/{policy.name}"] = policy


def nft(lab: Lab, node: str, *args: str) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.names.node_ns(node), "nft", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def set_members(lab: Lab, node: str) -> dict[str, list[ipaddress.IPv4Network]]:
    """The node's policy sets as networks (nft prints /32s as addresses, merged runs as prefixes)."""
    data = json.loads(nft(lab, node, "-j", "list", "table", "inet", "podnet_policy"))
    sets: dict[str, list[ipaddress.IPv4Network]] = {}
    for item in data["nftables"]:
        if "set" not in item:
            continue
        members = sets.setdefault(item["set"]["name"], [])
        for elem in item["set"].get("elem", []):
            if isinstance(elem, str):
                members.append(ipaddress.IPv4Network(elem))
            elif "prefix" in elem:
                members.append(ipaddress.IPv4Network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}"))
            elif "range" in elem:
                first, last = map(ipaddress.IPv4Address, elem["range"])
                members.extend(ipaddress.summarize_address_range(first, last))
    return sets


def in_some_set(lab: Lab, node: str, ip: str) -> bool:
    """In a set some rule matches on (not the notrack set: it spans the pools, free addresses too);
    the Cilium profile: mapped by the node's ipcache to an identity some policy entry names."""
    if lab.profile == "cilium":
        identity = pinned_ipcache(lab.lxc_pins(node)).get(f"{ip}/32", (None, 0))[0]
        return identity is not None and any(
            e.key.identity == identity for e in pinned_policy(lab.lxc_pins(node))
        )
    address = ipaddress.IPv4Address(ip)
    sets = set_members(lab, node)
    return any(address in net for name, nets in sets.items() if name not in NOTRACK_SETS for net in nets)


def sctp_entries(lab: Lab, node: str, ip: str) -> set[tuple[str, int, int]]:
    """(direction, port, prefix) of the SCTP allows in the policy map of the endpoint with ``ip``."""
    ids = {r.endpoint for r in pinned_endpoints(lab.lxc_pins(node)).values() if r.ipv4 == ip}
    entries = pinned_policy(lab.lxc_pins(node))
    return {
        (e.key.direction, e.key.port, e.key.prefix)
        for e in entries
        if e.endpoint in ids and e.key.protocol == 132 and not e.deny
    }


def isolating(lab: Lab, node: str) -> bool:
    """Does ``node`` isolate some endpoint (nftables deny chains; Cilium: an enforced endpoint)?"""
    if lab.profile == "cilium":
        records = pinned_endpoints(lab.lxc_pins(node)).values()
        return any(r.ingress_enforced or r.egress_enforced for r in records)
    return "pnd:" in nft(lab, node, "list", "table", "inet", "podnet_policy")


def clear_policies(lab: Lab) -> None:
    """Delete every policy the test applied; wait until no node isolates anything any more."""
    for key in list(lab.policies):
        namespace, name = key.split("/", 1)
        with contextlib.suppress(Exception):
            lab.store.delete(lookup("netpol"), name, namespace)
        del lab.policies[key]
    deadline = time.monotonic() + SETTLE
    while True:
        busy = [n for n in NODES if isolating(lab, n)]
        if not busy:
            return
        assert time.monotonic() < deadline, f"isolation left on {busy} after the policies were deleted"
        time.sleep(0.1)


# -------------------------------------------------------------------------------------------- tables

Table = dict[str, dict[str, bool]]
Probes = tuple[tuple[int, str], ...]


def sources(lab: Lab) -> dict[str, tuple[str, PodInfo | str, str | None]]:
    """label -> (netns, the source as the evaluators see it, its node if it is a node)."""
    out: dict[str, tuple[str, PodInfo | str, str | None]] = {}
    for key, pod in sorted(lab.pods.items()):
        out[key] = (lab.pod_netns(key), pod, None)
    for node in NODES:
        out[node] = (lab.names.node_ns(node), lab.node_ips[node], node)
    return out


def targets(lab: Lab, probes: Probes) -> dict[str, tuple[PodInfo, int, str]]:
    """``"ns/pod:port/PROTO"`` -> (pod, port, protocol) for every probed port the pod serves."""
    out = {}
    for key, pod in [*sorted(lab.pods.items()), *sorted(lab.hosts.items())]:
        for port, protocol in probes:
            if any(number == port and proto == protocol for _, number, proto in pod.ports):
                out[f"{key}:{port}/{protocol}"] = (pod, port, protocol)
    return out


def cells(lab: Lab, probes: Probes) -> Iterator[tuple[str, str, tuple, tuple]]:
    for src_label, src in sources(lab).items():
        for dst_label, dst in targets(lab, probes).items():
            pod = dst[0]
            if pod.key == src_label or (pod.key in lab.hosts and pod.node == src_label):
                continue  # talking to itself: the traffic never leaves its netns
            yield src_label, dst_label, src, dst


def evaluated(lab: Lab, pod: PodInfo) -> PodInfo | str:
    """A destination as the evaluators see it: a hostNetwork pod is just its node's address."""
    return pod.ips[0] if pod.key in lab.hosts else pod


def real_table(lab: Lab, probes: Probes) -> Table:
    plan = list(cells(lab, probes))
    results = run_probes(
        [Probe(src[0], dst[0].ips[0], dst[1], dst[2], expect=dst[0].key) for _, _, src, dst in plan],
        PROBE_TIMEOUT,
    )
    table: Table = {}
    for (src_label, dst_label, _, _), result in zip(plan, results, strict=True):
        table.setdefault(src_label, {})[dst_label] = result.ok
    return table


def reference_table(lab: Lab, probes: Probes) -> Table:
    pods = list(lab.pods.values())
    policies = list(lab.policies.values())
    table: Table = {}
    for src_label, dst_label, (_, src, node), (pod, port, protocol) in cells(lab, probes):
        dst = evaluated(lab, pod)
        allowed = reference_allowed(src, dst, port, protocol, pods, lab.namespaces, policies, src_node=node)
        table.setdefault(src_label, {})[dst_label] = allowed
    return table


def explain_table(lab: Lab, probes: Probes) -> Table:
    pods = list(lab.pods.values())
    plan = compile_policies(pods, pods, lab.namespaces, list(lab.policies.values()))
    assert plan.errors == {}
    table: Table = {}
    for src_label, dst_label, (_, src, node), (pod, port, protocol) in cells(lab, probes):
        # A node's traffic to its own pods never meets the forward hook (the dataplane's concern).
        own = node is not None and pod.node == node
        allowed = own or explain(plan, src, evaluated(lab, pod), port, protocol).allowed
        table.setdefault(src_label, {})[dst_label] = allowed
    return table


def describe(real: Table, reference: Table, predicted: Table) -> str:
    lines = ["cells where real traffic, the reference and explain() disagree:"]
    for src, row in reference.items():
        for dst, want in row.items():
            got, said = real.get(src, {}).get(dst), predicted.get(src, {}).get(dst)
            if not got == want == said:
                lines.append(f"  {src} -> {dst}: real={got} reference={want} explain={said}")
    for title, table in (("REAL", real), ("REFERENCE", reference), ("EXPLAIN", predicted)):
        lines += [f"--- {title} ---", render_matrix(table)]
    return "\n".join(lines)


def expect_table(
    lab: Lab, probes: Probes, spots: dict[tuple[str, str], bool] | None = None, timeout: float = SETTLE
) -> Table:
    """Wait (bounded) until the real table equals the reference's; explain() must agree too."""
    reference = reference_table(lab, probes)
    for (src, dst), want in (spots or {}).items():
        assert reference[src][dst] is want, f"the reference says {src} -> {dst} is {not want}"
    deadline = time.monotonic() + timeout
    while True:
        real = real_table(lab, probes)
        if real == reference or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    predicted = explain_table(lab, probes)
    assert real == reference == predicted, describe(real, reference, predicted)
    return real


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=["calico", "cilium"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One lab per profile: the same semantics through either personality's table."""
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    try:
        info = cluster.up(LabSpec(nodes=3, underlay=random_underlay(), profile=request.param), names)
        the_lab = Lab(
            names,
            ResourceStore(EtcdDatastore([info.etcd_endpoint])),
            {h.name: h.ip for h in info.topology.nodes},
            profile=request.param,
        )
        the_lab.namespaces = {ns: dict(labels) for ns, labels in NAMESPACES.items()}
        the_lab.store.apply(
            [
                parse_resource(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
                )
                for ns, labels in NAMESPACES.items()
            ]
        )
        start_pods(the_lab, LAYOUT)
        start_pods(the_lab, HOST_LAYOUT, host_network=True)
        # Everything open, over every port served: the endpoints are wired on every node.
        expect_table(the_lab, WEB + UDP + TCP_5353 + RANGE + HOST, timeout=30.0)
        yield the_lab
    finally:
        with contextlib.suppress(LabError):
            cluster.teardown(names)
        clean(names)


@pytest.fixture(autouse=True)
def scenario(lab: Lab) -> Iterator[Lab]:
    """Each test starts without policies and removes its own."""
    yield lab
    clear_policies(lab)


# ----------------------------------------------------------------------------------------- scenarios


def test_default_deny_ingress(lab: Lab) -> None:
    apply_policies(lab, netpol("a", "deny-in", {"podSelector": {}, "ingress": []}))
    expect_table(
        lab,
        WEB + UDP,
        {
            ("b/client", "a/web1:8080/TCP"): False,
            ("a/web2", "a/web1:8080/TCP"): False,
            ("c/client", "a/db:5353/UDP"): False,
            ("a/web1", "b/web3:8080/TCP"): True,
            ("node-1", "a/web1:8080/TCP"): True,
            ("node-2", "a/web1:8080/TCP"): False,
        },
    )


def test_default_deny_egress(lab: Lab) -> None:
    apply_policies(lab, netpol("b", "deny-out", {"podSelector": {}, "policyTypes": ["Egress"]}))
    expect_table(
        lab,
        WEB + UDP,
        {
            ("b/client", "a/web1:8080/TCP"): False,
            ("b/tool", "c/api:5353/UDP"): False,
            ("a/web1", "b/web3:8080/TCP"): True,
            ("node-2", "b/client:8081/TCP"): True,
            ("node-1", "b/client:8081/TCP"): True,
        },
    )


def test_policy_types_defaulting(lab: Lab) -> None:
    apply_policies(
        lab,
        # egress rules, no policyTypes: Ingress AND Egress (no ingress rule: ingress denied)
        netpol(
            "a",
            "web-out-to-db",
            {"podSelector": sel(app="web"), "egress": [{"to": [{"podSelector": sel(app="db")}]}]},
        ),
        # policyTypes [Egress] only: ingress stays open
        netpol("c", "api-no-out", {"podSelector": sel(app="api"), "policyTypes": ["Egress"]}),
    )
    assert lab.policies["a/web-out-to-db"].spec.policy_types == ["Ingress", "Egress"]
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/web1", "a/db:8080/TCP"): True,
            ("a/web1", "b/web3:8080/TCP"): False,
            ("b/client", "a/web1:8080/TCP"): False,
            ("c/client", "c/api:8081/TCP"): True,
            ("c/api", "b/web3:8080/TCP"): False,
            ("a/db", "a/web2:8081/TCP"): False,
        },
    )


def test_pod_selector_labels_and_expressions(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web-from-back",
            {
                "podSelector": sel(app="web"),
                "ingress": [{"from": [{"podSelector": expr("tier", "In", "back")}]}],
            },
        ),
        netpol(
            "a",
            "not-web-from-tiered",
            {
                "podSelector": expr("app", "NotIn", "web", "range"),
                "ingress": [{"from": [{"podSelector": expr("tier", "Exists")}]}],
            },
        ),
        netpol(
            "a",
            "untiered-from-front",
            {
                "podSelector": expr("tier", "DoesNotExist"),
                "ingress": [{"from": [{"podSelector": sel(app="web", tier="front")}]}],
            },
        ),
        # NotIn also selects pods WITHOUT the label: b/client and b/tool are isolated, b/web3 is not
        netpol("b", "not-web-deny", {"podSelector": expr("app", "NotIn", "web")}),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/db", "a/web1:8080/TCP"): True,
            ("a/range", "a/web1:8080/TCP"): False,
            ("a/web1", "a/web2:8081/TCP"): False,
            ("a/web1", "a/db:8080/TCP"): True,
            ("a/range", "a/db:8080/TCP"): False,
            ("a/web1", "a/range:8081/TCP"): True,
            ("a/web2", "a/range:8081/TCP"): False,
            ("c/client", "b/client:8081/TCP"): False,
            ("c/client", "b/web3:8080/TCP"): True,
        },
    )


def test_namespace_selector_alone(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web1-from-team-y",
            {
                "podSelector": sel(app="web", tier="front"),
                "ingress": [{"from": [{"namespaceSelector": sel(team="y")}]}],
            },
        ),
        netpol(
            "a",
            "db-from-ns-c",
            {
                "podSelector": sel(app="db"),
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/metadata.name",
                                            "operator": "In",
                                            "values": ["c"],
                                        }
                                    ]
                                }
                            }
                        ]
                    }
                ],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("b/tool", "a/web1:8080/TCP"): True,
            ("a/web2", "a/web1:8080/TCP"): False,
            ("c/client", "a/web1:5353/UDP"): False,
            ("c/api", "a/db:8081/TCP"): True,
            ("b/client", "a/db:8080/TCP"): False,
            ("a/web1", "a/db:5353/UDP"): False,
        },
    )


def test_pod_and_namespace_selector_and_versus_or(lab: Lab) -> None:
    team_y = sel(team="y")
    apply_policies(
        lab,
        # one peer with both selectors: clients IN team-y namespaces
        netpol(
            "a",
            "web-and",
            {
                "podSelector": sel(app="web"),
                "ingress": [{"from": [{"namespaceSelector": team_y, "podSelector": sel(role="client")}]}],
            },
        ),
        # two peers: anything in team-y namespaces, OR front pods of the policy's own namespace
        netpol(
            "a",
            "db-or",
            {
                "podSelector": sel(app="db"),
                "ingress": [{"from": [{"namespaceSelector": team_y}, {"podSelector": sel(tier="front")}]}],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("b/client", "a/web1:8080/TCP"): True,
            ("b/web3", "a/web1:8080/TCP"): False,
            ("c/client", "a/web2:8081/TCP"): False,
            ("b/web3", "a/db:8080/TCP"): True,
            ("a/web1", "a/db:8081/TCP"): True,
            ("c/api", "a/db:8081/TCP"): False,
            ("a/web2", "a/db:8080/TCP"): False,
        },
    )


def test_empty_namespace_selector_means_every_namespace(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "c",
            "api-from-all-pods",
            {"podSelector": sel(app="api"), "ingress": [{"from": [{"namespaceSelector": {}}]}]},
        ),
        netpol(
            "b",
            "web3-from-clients",
            {
                "podSelector": sel(app="web"),
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": sel(role="client")}]}],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/db", "c/api:8081/TCP"): True,
            ("node-1", "c/api:8081/TCP"): False,
            ("node-3", "c/api:8081/TCP"): True,
            ("c/client", "b/web3:8080/TCP"): True,
            ("b/tool", "b/web3:8080/TCP"): False,
        },
    )


def test_ip_block_with_except(lab: Lab) -> None:
    client, db = lab.pods["b/client"].ips[0], lab.pods["a/db"].ips[0]
    apply_policies(
        lab,
        netpol(
            "a",
            "web1-from-pods-but-one",
            {
                "podSelector": sel(app="web", tier="front"),
                "ingress": [{"from": [{"ipBlock": {"cidr": POD_CIDR, "except": [f"{client}/32"]}}]}],
            },
        ),
        netpol(
            "c",
            "client-to-pods-but-db",
            {
                "podSelector": sel(role="client"),
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": POD_CIDR, "except": [f"{db}/32"]}}]}],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("b/client", "a/web1:8080/TCP"): False,
            ("b/tool", "a/web1:8080/TCP"): True,
            ("node-2", "a/web1:8080/TCP"): False,
            ("node-1", "a/web1:8080/TCP"): True,
            ("c/client", "a/db:8080/TCP"): False,
            ("c/client", "a/web2:5353/UDP"): True,
        },
    )


def test_numeric_port(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol("a", "web-8080", {"podSelector": sel(app="web"), "ingress": [{"ports": [{"port": 8080}]}]}),
    )
    expect_table(
        lab,
        WEB + UDP + TCP_5353,
        {
            ("c/client", "a/web1:8080/TCP"): True,
            ("c/client", "a/web1:5353/TCP"): False,
            ("c/client", "a/web2:8081/TCP"): False,
            ("c/client", "a/web2:5353/UDP"): False,
            ("c/client", "a/db:8081/TCP"): True,
        },
    )


def test_named_port_ingress_resolves_per_destination(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol("a", "web-by-name", {"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}),
        netpol(
            "b",
            "dns-by-name",
            {"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]},
        ),
        # "dns" is a UDP port on every pod: as TCP (the default protocol) the name resolves nowhere
        netpol("c", "dns-tcp-by-wrong-name", {"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}),
    )
    expect_table(
        lab,
        WEB + UDP + TCP_5353,
        {
            ("b/tool", "a/web1:8080/TCP"): True,
            ("b/tool", "a/web2:8081/TCP"): True,
            ("b/tool", "a/db:8080/TCP"): False,
            ("b/tool", "a/db:8081/TCP"): False,
            ("b/tool", "a/range:8081/TCP"): True,
            ("b/tool", "a/web1:5353/UDP"): False,
            ("a/web1", "b/web3:5353/UDP"): True,
            ("a/web1", "b/web3:8080/TCP"): False,
            ("a/web1", "b/web3:5353/TCP"): False,
            ("a/web1", "c/api:5353/TCP"): False,
            ("a/web1", "c/api:5353/UDP"): False,
        },
    )


def test_named_port_egress_resolves_per_destination(lab: Lab) -> None:
    web1 = lab.pods["a/web1"].ips[0]
    apply_policies(
        lab,
        netpol(
            "c",
            "clients-out-web",
            {
                "podSelector": sel(role="client"),
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "web"}]}],
            },
        ),
        netpol(
            "b",
            "tool-out-to-team-x",
            {
                "podSelector": sel(role="tool"),
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": sel(team="x")}],
                        "ports": [{"port": "web"}, {"port": "dns", "protocol": "UDP"}],
                    }
                ],
            },
        ),
        # a named port with an ipBlock peer: the pods inside the block that carry the name
        netpol(
            "a",
            "range-out-to-pods-but-web1",
            {
                "podSelector": sel(app="range"),
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"ipBlock": {"cidr": POD_CIDR, "except": [f"{web1}/32"]}}],
                        "ports": [{"port": "web"}],
                    }
                ],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/range", "a/web2:8081/TCP"): True,
            ("a/range", "a/web1:8080/TCP"): False,
            ("a/range", "b/web3:8080/TCP"): True,
            ("a/range", "a/db:8080/TCP"): False,
            ("a/range", "c/api:5353/UDP"): False,
            ("c/client", "a/web1:8080/TCP"): True,
            ("c/client", "a/web2:8081/TCP"): True,
            ("c/client", "a/db:8080/TCP"): False,
            ("c/client", "a/db:8081/TCP"): False,
            ("c/client", "c/api:8081/TCP"): True,
            ("c/client", "b/tool:8080/TCP"): False,
            ("c/client", "a/web1:5353/UDP"): False,
            ("b/tool", "a/web1:8080/TCP"): True,
            ("b/tool", "b/web3:8080/TCP"): False,
            ("b/tool", "a/db:5353/UDP"): True,
            ("b/tool", "b/web3:5353/UDP"): False,
            ("b/tool", "a/range:8081/TCP"): True,
        },
    )


def test_end_port_range(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "range-9000-9002",
            {"podSelector": sel(app="range"), "ingress": [{"ports": [{"port": 9000, "endPort": 9002}]}]},
        ),
        netpol(
            "c",
            "client-out-9001-9003",
            {"podSelector": sel(role="client"), "egress": [{"ports": [{"port": 9001, "endPort": 9003}]}]},
        ),
    )
    expect_table(
        lab,
        (*RANGE, (8081, "TCP")),
        {
            ("b/tool", "a/range:9000/TCP"): True,
            ("b/tool", "a/range:9002/TCP"): True,
            ("b/tool", "a/range:9003/TCP"): False,
            ("b/tool", "a/range:8081/TCP"): False,
            ("c/client", "a/range:9000/TCP"): False,
            ("c/client", "a/range:9001/TCP"): True,
            ("c/client", "a/range:9003/TCP"): False,
        },
    )


def test_udp_rules_versus_tcp_rules(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web-5353-tcp",
            {"podSelector": sel(app="web"), "ingress": [{"ports": [{"port": 5353, "protocol": "TCP"}]}]},
        ),
        netpol(
            "b",
            "web3-5353-udp",
            {"podSelector": sel(app="web"), "ingress": [{"ports": [{"port": 5353, "protocol": "UDP"}]}]},
        ),
        netpol(
            "c", "api-all-udp", {"podSelector": sel(app="api"), "ingress": [{"ports": [{"protocol": "UDP"}]}]}
        ),
    )
    expect_table(
        lab,
        UDP + TCP_5353 + WEB,
        {
            ("b/tool", "a/web1:5353/TCP"): True,
            ("b/tool", "a/web1:5353/UDP"): False,
            ("a/web1", "b/web3:5353/UDP"): True,
            ("a/web1", "b/web3:5353/TCP"): False,
            ("a/web1", "c/api:5353/UDP"): True,
            ("a/web1", "c/api:5353/TCP"): False,
            ("a/web1", "c/api:8081/TCP"): False,
        },
    )


def test_several_policies_select_one_pod_union(lab: Lab) -> None:
    db = sel(app="db")
    apply_policies(
        lab,
        netpol(
            "a",
            "db-from-web1-8080",
            {
                "podSelector": db,
                "ingress": [{"from": [{"podSelector": sel(tier="front")}], "ports": [{"port": 8080}]}],
            },
        ),
        netpol(
            "a",
            "db-from-b-client-8081",
            {
                "podSelector": db,
                "ingress": [
                    {
                        "from": [{"namespaceSelector": sel(team="y"), "podSelector": sel(role="client")}],
                        "ports": [{"port": 8081}],
                    }
                ],
            },
        ),
        netpol("a", "deny-all-in", {"podSelector": {}, "policyTypes": ["Ingress"]}),  # adds no allow
    )
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/web1", "a/db:8080/TCP"): True,
            ("a/web1", "a/db:8081/TCP"): False,
            ("b/client", "a/db:8081/TCP"): True,
            ("b/client", "a/db:8080/TCP"): False,
            ("b/client", "a/db:5353/UDP"): False,
            ("c/client", "a/db:8081/TCP"): False,
        },
    )


def test_egress_allowed_and_replies_pass_default_deny(lab: Lab) -> None:
    apply_policies(
        lab,
        # web1: ingress default deny, egress only to b/web3; its replies must still come back
        netpol(
            "a",
            "web1-out-to-web3",
            {
                "podSelector": sel(app="web", tier="front"),
                "policyTypes": ["Ingress", "Egress"],
                "egress": [{"to": [{"namespaceSelector": sel(team="y"), "podSelector": sel(app="web")}]}],
            },
        ),
        # web3: ingress from a's front pods only, egress default deny: its replies must still go out
        netpol(
            "b",
            "web3-in-from-a-front",
            {
                "podSelector": sel(app="web"),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"namespaceSelector": sel(team="x"), "podSelector": sel(tier="front")}]}
                ],
            },
        ),
    )
    expect_table(
        lab,
        WEB + UDP + TCP_5353,
        {
            ("a/web1", "b/web3:8080/TCP"): True,
            ("a/web1", "b/web3:5353/UDP"): True,
            ("a/web1", "b/web3:5353/TCP"): True,
            ("b/web3", "a/web1:8080/TCP"): False,
            ("a/web1", "c/api:8081/TCP"): False,
            ("c/api", "b/web3:8080/TCP"): False,
            ("b/web3", "c/api:8081/TCP"): False,
        },
    )


def test_pods_and_namespace_created_after_the_policy(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web-from-clients",
            {
                "podSelector": sel(app="web"),
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {}, "podSelector": sel(role="client")}],
                        "ports": [{"port": "web"}],
                    }
                ],
            },
        ),
        netpol(
            "a",
            "db-from-team-y",
            {"podSelector": sel(app="db"), "ingress": [{"from": [{"namespaceSelector": sel(team="y")}]}]},
        ),
        # egress on a named port: the new destination's own number joins the right set
        netpol(
            "c",
            "client-out-to-web",
            {
                "podSelector": sel(role="client"),
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": {}, "podSelector": sel(app="web")}],
                        "ports": [{"port": "web"}],
                    }
                ],
            },
        ),
    )
    expect_table(lab, WEB)
    late = {
        "a/late-web": ("node-3", {"app": "web"}, (web(8080), DNS)),
        "b/late-client": ("node-1", {"role": "client"}, (web(8081), DNS)),
        "d/newcomer": ("node-2", {"role": "client"}, (web(8081), DNS)),
    }
    try:
        lab.store.apply(
            [
                parse_resource(
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": "d", "labels": {"team": "y"}},
                    }
                )
            ]
        )
        lab.namespaces["d"] = {"team": "y"}
        start_pods(lab, late)
        expect_table(
            lab,
            WEB + UDP,
            {
                ("b/late-client", "a/late-web:8080/TCP"): True,
                ("b/late-client", "a/web2:8081/TCP"): True,
                ("b/tool", "a/late-web:8080/TCP"): False,
                ("b/late-client", "a/late-web:5353/UDP"): False,
                ("a/late-web", "b/late-client:8081/TCP"): True,
                ("c/client", "a/late-web:8080/TCP"): True,
                ("c/client", "a/db:8080/TCP"): False,
                ("d/newcomer", "a/db:8080/TCP"): True,
                ("d/newcomer", "a/late-web:8080/TCP"): True,
                ("c/api", "a/db:8081/TCP"): False,
            },
        )
    finally:
        for key in late:
            if key in lab.pods:
                delete_pod(lab, key)
        with contextlib.suppress(Exception):
            lab.store.delete(lookup("namespaces"), "d")
        lab.namespaces.pop("d", None)


def test_pod_relabelled_after_the_policy(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web-from-clients",
            {
                "podSelector": sel(app="web"),
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": sel(role="client")}]}],
            },
        ),
    )
    expect_table(lab, WEB, {("b/tool", "a/web1:8080/TCP"): False, ("b/tool", "a/web2:8081/TCP"): False})
    try:
        relabel_pod(lab, "b/tool", {"role": "client"})  # becomes a peer
        relabel_pod(lab, "a/web2", {"app": None})  # leaves the selection: no longer isolated
        expect_table(
            lab,
            WEB,
            {
                ("b/tool", "a/web1:8080/TCP"): True,
                ("a/db", "a/web2:8081/TCP"): True,
                ("a/db", "a/web1:8080/TCP"): False,
            },
        )
    finally:
        relabel_pod(lab, "b/tool", {"role": "tool"})
        relabel_pod(lab, "a/web2", {"app": "web"})


def test_namespace_relabelled_after_the_policy(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "db-from-team-y",
            {"podSelector": sel(app="db"), "ingress": [{"from": [{"namespaceSelector": sel(team="y")}]}]},
        ),
    )
    expect_table(lab, WEB + UDP, {("b/tool", "a/db:8080/TCP"): True, ("c/api", "a/db:8080/TCP"): False})
    try:
        relabel_namespace(lab, "c", {"team": "y"})
        relabel_namespace(lab, "b", {"team": "z"})
        expect_table(
            lab,
            WEB + UDP,
            {
                ("b/tool", "a/db:8080/TCP"): False,
                ("c/api", "a/db:8080/TCP"): True,
                ("c/client", "a/db:5353/UDP"): True,
            },
        )
    finally:
        relabel_namespace(lab, "c", {"team": None})
        relabel_namespace(lab, "b", {"team": "y"})


def test_deleted_pod_leaves_the_sets(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "db-from-clients",
            {
                "podSelector": sel(app="db"),
                "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": sel(role="client")}]}],
            },
        ),
    )
    db_node = lab.pods["a/db"].node
    try:
        start_pods(lab, {"c/gone": ("node-2", {"role": "client"}, (web(8080), DNS))})
        gone_ip = lab.pods["c/gone"].ips[0]
        expect_table(lab, WEB, {("c/gone", "a/db:8080/TCP"): True})
        assert in_some_set(lab, db_node, gone_ip)
    finally:
        if "c/gone" in lab.pods:
            delete_pod(lab, "c/gone")
    deadline = time.monotonic() + SETTLE
    while any(in_some_set(lab, node, gone_ip) for node in NODES):
        assert time.monotonic() < deadline, f"{gone_ip} is still in a policy set after its pod was deleted"
        time.sleep(0.1)
    assert in_some_set(lab, db_node, lab.pods["b/client"].ips[0])  # the other members stay
    expect_table(lab, WEB, {("b/client", "a/db:8080/TCP"): True})
    # A new pod without the label on the same node (the block the freed address came from): denied.
    try:
        start_pods(lab, {"c/reborn": ("node-2", {"role": "none"}, (web(8080), DNS))})
        expect_table(lab, WEB, {("c/reborn", "a/db:8080/TCP"): False})
        assert not in_some_set(lab, db_node, lab.pods["c/reborn"].ips[0])
    finally:
        if "c/reborn" in lab.pods:
            delete_pod(lab, "c/reborn")


def test_policy_updated_in_place(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "changing",
            {"podSelector": sel(app="web"), "ingress": [{"from": [{"podSelector": sel(tier="back")}]}]},
        ),
    )
    expect_table(lab, WEB, {("a/db", "a/web1:8080/TCP"): True, ("a/range", "a/web1:8080/TCP"): False})
    apply_policies(
        lab,
        netpol(
            "a",
            "changing",
            {
                "podSelector": sel(app="db"),
                "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 8081}]}],
            },
        ),
    )
    expect_table(
        lab,
        WEB,
        {
            ("a/range", "a/web1:8080/TCP"): True,
            ("c/api", "a/db:8081/TCP"): True,
            ("c/api", "a/db:8080/TCP"): False,
        },
    )
    # the same policy turned into egress-only: db's ingress opens, its egress closes
    apply_policies(lab, netpol("a", "changing", {"podSelector": sel(app="db"), "policyTypes": ["Egress"]}))
    expect_table(
        lab,
        WEB + UDP,
        {
            ("c/api", "a/db:8080/TCP"): True,
            ("a/db", "a/web1:8080/TCP"): False,
            ("a/db", "c/api:5353/UDP"): False,
        },
    )


def test_node_reaches_its_own_pods_under_default_deny(lab: Lab) -> None:
    apply_policies(lab, *(netpol(ns, "deny-in", {"podSelector": {}}) for ns in NAMESPACES))
    expect_table(
        lab,
        WEB + UDP,
        {
            ("node-1", "a/web1:8080/TCP"): True,
            ("node-1", "c/client:5353/UDP"): True,
            ("node-2", "a/web1:8080/TCP"): False,
            ("node-2", "a/web2:8081/TCP"): True,
            ("node-3", "a/web2:8081/TCP"): False,
            ("a/range", "a/web1:8080/TCP"): False,
            ("c/client", "a/web1:8080/TCP"): False,
        },
    )


def test_sctp_ports_are_compiled(lab: Lab) -> None:
    apply_policies(
        lab,
        netpol(
            "a",
            "web1-sctp",
            {
                "podSelector": sel(app="web", tier="front"),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"ports": [{"port": 9999, "protocol": "SCTP"}]}],
                "egress": [{"ports": [{"port": 9997, "endPort": 9998, "protocol": "SCTP"}]}],
            },
        ),
    )
    node = lab.pods["a/web1"].node
    deadline = time.monotonic() + SETTLE
    while True:
        if lab.profile == "cilium":  # web1's policy map: SCTP (132) keys, the range as port prefixes
            ruleset = sctp_entries(lab, node, lab.pods["a/web1"].ips[0])
            ingress = ("ingress", 9999, 16) in ruleset
            egress = {("egress", 9997, 16), ("egress", 9998, 16)} <= ruleset
        else:
            ruleset = nft(lab, node, "list", "table", "inet", "podnet_policy")
            ingress = re.search(r"sctp .*dport 9999 .*accept", ruleset)
            egress = re.search(r"sctp .*dport 9997-9998 .*accept", ruleset)
        if ingress and egress:
            break
        assert time.monotonic() < deadline, f"no SCTP rules on {node}:\n{ruleset}"
        time.sleep(0.1)
    # The TCP and UDP sides: web1 accepts and sends nothing but SCTP.
    expect_table(
        lab,
        WEB + UDP,
        {
            ("a/web2", "a/web1:8080/TCP"): False,
            ("a/web1", "a/web2:8081/TCP"): False,
            ("node-1", "a/web1:5353/UDP"): True,
        },
    )


def test_egress_policy_covers_traffic_to_the_pods_own_node(lab: Lab) -> None:
    """Egress isolation applies to every destination, the pod's own node (its hostNetwork pods,
    kubelet, node services) included; only replies to what the node opened pass."""
    node1 = lab.node_ips["node-1"]
    apply_policies(
        lab,
        netpol("b", "deny-out", {"podSelector": {}, "policyTypes": ["Egress"]}),
        netpol(
            "c",
            "client-to-node-1-tcp",
            {
                "podSelector": sel(role="client"),
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": f"{node1}/32"}}], "ports": [{"port": 7070}]}],
            },
        ),
    )
    h1, h2 = "kube-system/host-1:7070", "kube-system/host-2:7070"
    expect_table(
        lab,
        HOST + WEB,
        {
            ("b/tool", f"{h1}/TCP"): False,
            ("b/tool", f"{h1}/UDP"): False,  # b/tool runs on node-1
            ("b/client", f"{h1}/TCP"): False,
            ("b/client", f"{h2}/TCP"): False,  # b/client on node-2
            ("c/client", f"{h1}/TCP"): True,
            ("c/client", f"{h1}/UDP"): False,
            ("c/client", f"{h2}/TCP"): False,
            ("a/web1", f"{h1}/UDP"): True,
            ("node-1", "b/tool:8080/TCP"): True,
            ("node-2", "b/tool:8080/TCP"): True,
        },
    )
