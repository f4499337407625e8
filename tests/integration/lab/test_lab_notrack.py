"""Pod traffic that no policy and no NAT concerns creates no conntrack entry (calc.conntrack), on a
2-node lab, with real TCP/UDP/ICMP from the pods' own processes, counted in each node's
``/proc/net/nf_conntrack``. The Calico profile:

- no policy: pod → pod on one node and across nodes leaves 0 entries, while pods behind a
  ClusterIP (same node and across nodes) still answer through it and are tracked (the counter's
  positive control, and the DNAT that needs it);
- both ends isolated in both directions, only a → c:8080 allowed: the connection works (its
  replies pass by ``ct state established`` only), is tracked on both nodes, and the policy is in
  force (c → a and b → c fail);
- policies gone: new flows are untracked again.

The Cilium profile: pod-to-pod traffic never meets netfilter (its tc programs track connections
in their own map and deliver past the stack), whatever the policy: 0 entries without policy,
through a ClusterIP (the socket LB connects straight to the backend), and under policy, while the
eBPF conntrack map holds the connections; the node's own connections to a pod are tracked by
netfilter as usual (the counter's positive control).
"""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest
from lab_support import until

from podnet.dataplane.lxc import pinned_ct, pinned_endpoints
from podnet.dataplane.policy import kernel_untracks
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.netns import IP
from podnet.lab.probe import probe_in_pod
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

NS = "ct"
PORTS = [
    {"name": "plain", "containerPort": 8080},
    {"name": "svc", "containerPort": 8081},
    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
]
PODS = {  # a, b, c: plain pods; s1, s2: Service backends (tracked, whatever the port)
    "a": ("node-1", {"role": "client"}),
    "b": ("node-1", {"app": "b"}),
    "c": ("node-2", {"app": "c"}),
    "s1": ("node-1", {"app": "s1"}),
    "s2": ("node-2", {"app": "s2"}),
}


def pod(name: str) -> dict:
    node, labels = PODS[name]
    meta = {"name": name, "namespace": NS, "labels": labels}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": PORTS}]},
    }


def service(name: str, app: str) -> dict:
    ports = [{"name": "http", "port": 80, "targetPort": 8081}]
    spec = {"selector": {"app": app}, "ports": ports}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS}, "spec": spec}


def isolate(name: str, labels: dict, ingress: list, egress: list) -> dict:
    spec = {
        "podSelector": {"matchLabels": labels},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": ingress,
        "egress": egress,
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


ONLY_8080 = [{"protocol": "TCP", "port": 8080}]
POLICIES = [  # a may open c:8080 and nothing else; nothing may open a; only a may open c:8080
    isolate(
        "a",
        {"role": "client"},
        [],
        [{"to": [{"podSelector": {"matchLabels": {"app": "c"}}}], "ports": ONLY_8080}],
    ),
    isolate(
        "c",
        {"app": "c"},
        [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": ONLY_8080}],
        [],
    ),
]


def conntrack(names: LabNames, node: str) -> list[list[str]]:
    """The node's conntrack table: one token list per entry."""
    text = subprocess.run(
        [IP, "netns", "exec", names.node_ns(node), "cat", "/proc/net/nf_conntrack"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split() for line in text.splitlines()]


def original(entry: list[str]) -> dict[str, str]:
    """The original direction's fields (the first src=, dst=, sport=, dport=) and the protocol."""
    out = {"proto": entry[2]}
    for token in entry:
        key, _, value = token.partition("=")
        if key in ("src", "dst", "sport", "dport") and key not in out:
            out[key] = value
    return out


def entries(names: LabNames, node: str, one: str, other: str, proto: str = "tcp", port: str = "") -> int:
    """Entries between ``one`` and ``other`` (either direction) of ``proto`` to ``port`` if given."""
    count = 0
    for entry in conntrack(names, node):
        o = original(entry)
        if {o.get("src"), o.get("dst")} == {one, other} and o["proto"] == proto:
            count += not port or port in (o.get("dport"), o.get("sport"))
    return count


def untracked_here(names: LabNames, node: str, address: str) -> bool:
    """Whether ``node``'s policy table lets ``address`` skip conntrack."""
    return kernel_untracks(names.node_ns(node), address)


class Pods:
    def __init__(self, names: LabNames, store: ResourceStore) -> None:
        self.names, self.store = names, store
        self.ip = {p.metadata.name: p.status.pod_ip for p in store.list(lookup("pods"), NS)}

    def probe(self, src: str, dst: str, port: int, proto: str = "TCP", count: int = 10, timeout: float = 1.0):
        p = self.store.get(lookup("pods"), src, NS)
        cgroup = self.names.pod_cgroup(p.spec.node_name, p.metadata.uid)
        return probe_in_pod(self.names.pod_ns(NS, src), cgroup, dst, port, proto, count, timeout)

    def answered(
        self, src: str, dst: str, port: int, proto: str = "TCP", count: int = 10, timeout: float = 1.0
    ) -> set:
        return {
            r.answer if r.ok else f"({r.detail})" for r in self.probe(src, dst, port, proto, count, timeout)
        }

    def blocked(self, src: str, dst: str, port: int) -> bool:
        """A dropped connection: it times out (a policy drop), neither refused nor answered."""
        return all(
            not r.ok and r.detail.startswith("timeout")
            for r in self.probe(src, dst, port, count=1, timeout=0.5)
        )


def running(store: ResourceStore) -> bool:
    pods = store.list(lookup("pods"), NS)
    return len(pods) == len(PODS) and all(
        p.status and p.status.phase == "Running" and p.status.pod_ip for p in pods
    )


@pytest.mark.parametrize("profile", ["calico"])
def test_pod_traffic_untracked_unless_policy_or_nat_needs_it(profile: str) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    # flows off: with flow records on, the Calico profile tracks every connection (its flows and
    # bytes come from conntrack); the untracked fast path is what flows off buys
    info = cluster.up(LabSpec(nodes=2, profile=profile, underlay=random_underlay(), flows=False), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
        docs += [pod(n) for n in PODS] + [service("svc-1", "s1"), service("svc-2", "s2")]
        store.apply([parse_resource(d) for d in docs])
        until("pods Running", lambda: running(store), timeout=30)
        pods = Pods(names, store)
        a, b, c, s1, s2 = (pods.ip[n] for n in ("a", "b", "c", "s1", "s2"))
        vip = {s.metadata.name: s.spec.cluster_ip for s in store.list(lookup("services"), NS)}
        for node in ("node-1", "node-2"):  # fence: both nodes track both backends, and not a, b, c
            until(
                f"{node}'s notrack set",
                lambda n=node: not untracked_here(names, n, s1) and not untracked_here(names, n, s2),
            )
            assert all(untracked_here(names, node, ip) for ip in (a, b, c)), node

        # No policy: pod -> pod (same node, across nodes; TCP, UDP, ICMP) answers, and nothing is tracked.
        assert pods.answered("a", b, 8080) == {f"{NS}/b"}
        assert pods.answered("a", c, 8080) == {f"{NS}/c"}
        assert pods.answered("a", c, 5353, "UDP", count=3) == {f"{NS}/c"}
        assert all(r.ok for r in pods.probe("a", c, 0, "ICMP", count=3))
        for node in ("node-1", "node-2"):
            for peer in (b, c):
                assert entries(names, node, a, peer, "tcp") == 0, (node, peer, conntrack(names, node)[:5])
            assert entries(names, node, a, c, "udp") == 0 and entries(names, node, a, c, "icmp") == 0
        # Through a ClusterIP, same node and across nodes: it works, and is tracked (the counter's
        # positive control): Calico DNATs; Cilium connects straight to the backend, tracked as one.
        assert pods.answered("a", vip["svc-1"], 80) == {f"{NS}/s1"}
        assert pods.answered("a", vip["svc-2"], 80) == {f"{NS}/s2"}
        ends = {"calico": (vip["svc-1"], vip["svc-2"], "80"), "cilium": (s1, s2, "8081")}[profile]
        assert entries(names, "node-1", a, ends[0], "tcp", ends[2]) >= 10
        assert entries(names, "node-1", a, ends[1], "tcp", ends[2]) >= 10
        assert entries(names, "node-2", a, s2, "tcp", "8081") >= 10  # the backend's node tracks both ways

        # Both ends isolated both ways, only a -> c:8080 allowed.
        store.apply([parse_resource(p) for p in POLICIES])
        until(
            "a and c tracked",
            lambda: not untracked_here(names, "node-1", a) and not untracked_here(names, "node-2", c),
            timeout=30,
        )
        until("the policies in force", lambda: pods.blocked("b", c, 8080))
        assert pods.answered("a", c, 8080, count=20) == {f"{NS}/c"}  # replies pass as established
        assert pods.blocked("c", a, 8080)  # nothing may open a
        assert pods.blocked("a", b, 8080)  # a may open c only
        assert entries(names, "node-1", a, c, "tcp", "8080") >= 20
        assert entries(names, "node-2", a, c, "tcp", "8080") >= 20
        assert entries(names, "node-1", b, c, "tcp") == 0  # b and c's node: c is isolated on node-2 only

        # Policies gone: new flows are untracked again (no UDP between a and c was tracked before).
        for p in POLICIES:
            store.delete(lookup("netpol"), p["metadata"]["name"], NS)
        until(
            "a and c untracked again",
            lambda: untracked_here(names, "node-1", a) and untracked_here(names, "node-2", c),
            timeout=30,
        )
        assert pods.answered("a", c, 5353, "UDP", count=3) == {f"{NS}/c"}
        assert entries(names, "node-1", a, c, "udp") == 0 and entries(names, "node-2", a, c, "udp") == 0
    finally:
        cluster.teardown(names)
        clean(names)


def lxc_pins(names: LabNames, node: str) -> str:
    return os.path.join(names.state_dir, "bpf", node, "lxc")


def ready_endpoints(names: LabNames, node: str) -> set[str]:
    """The pod addresses whose endpoint ``node``'s datapath holds with its policy computed."""
    return {e.ipv4 for e in pinned_endpoints(lxc_pins(names, node)).values() if e.ready}


def bpf_tracked(names: LabNames, node: str, src: str, dst: str, dport: int) -> int:
    """Connections ``src`` -> ``dst``:``dport`` in ``node``'s eBPF conntrack map."""
    return sum(
        1 for e in pinned_ct(lxc_pins(names, node)) if (e.saddr, e.daddr, e.dport) == (src, dst, dport)
    )


def test_cilium_pod_traffic_never_meets_netfilter_conntrack() -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=2, profile="cilium", underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
        docs += [pod(n) for n in PODS] + [service("svc-1", "s1"), service("svc-2", "s2")]
        store.apply([parse_resource(d) for d in docs])
        until("pods Running", lambda: running(store), timeout=30)
        pods = Pods(names, store)
        a, b, c, s1, s2 = (pods.ip[n] for n in ("a", "b", "c", "s1", "s2"))
        on = {"node-1": {a, b, s1}, "node-2": {c, s2}}
        for node, ips in on.items():  # fence: each node's datapath judges its pods
            until(f"{node}'s endpoints ready", lambda n=node, i=ips: i <= ready_endpoints(names, n))
        vip = {s.metadata.name: s.spec.cluster_ip for s in store.list(lookup("services"), NS)}

        # No policy, then through a ClusterIP: answered, nothing in netfilter's table ...
        assert pods.answered("a", b, 8080) == {f"{NS}/b"}
        assert pods.answered("a", c, 8080) == {f"{NS}/c"}
        assert pods.answered("a", c, 5353, "UDP", count=3) == {f"{NS}/c"}
        assert all(r.ok for r in pods.probe("a", c, 0, "ICMP", count=3))
        assert pods.answered("a", vip["svc-1"], 80) == {f"{NS}/s1"}
        assert pods.answered("a", vip["svc-2"], 80) == {f"{NS}/s2"}
        for node in ("node-1", "node-2"):
            for peer in (b, c, s1, s2):
                for proto in ("tcp", "udp", "icmp"):
                    assert entries(names, node, a, peer, proto) == 0, (node, peer, conntrack(names, node)[:5])
        # ... while the eBPF map holds them (each end's node, each direction of the endpoint)
        assert bpf_tracked(names, "node-1", a, c, 8080) >= 10
        assert bpf_tracked(names, "node-2", a, c, 8080) >= 10
        assert bpf_tracked(names, "node-2", a, s2, 8081) >= 10  # the backend itself, no VIP
        # The counter's positive control: the node's own connections to a pod are netfilter's.
        node_ns = names.node_ns("node-1")
        subprocess.run(
            [IP, "netns", "exec", node_ns, "python3", "-c",
             f"import socket; socket.create_connection(('{b}', 8080), 2).close()"],
            check=True, timeout=10,
        )  # fmt: skip
        until(
            "the node's connection in netfilter's table",
            lambda: any(
                original(e).get("dst") == b and original(e).get("dport") == "8080"
                for e in conntrack(names, "node-1")
            ),
        )

        # Policy: only a -> c:8080, enforced, and still nothing in netfilter's table.
        store.apply([parse_resource(p) for p in POLICIES])
        until("the policies in force", lambda: pods.blocked("b", c, 8080))
        assert pods.answered("a", c, 8080, count=20) == {f"{NS}/c"}
        assert pods.blocked("c", a, 8080) and pods.blocked("a", b, 8080)
        for node in ("node-1", "node-2"):
            assert entries(names, node, a, c, "tcp") == 0 and entries(names, node, b, c, "tcp") == 0
        assert bpf_tracked(names, "node-2", a, c, 8080) >= 30
        assert bpf_tracked(names, "node-2", b, c, 8080) == 0  # refused before it was tracked
    finally:
        cluster.teardown(names)
        clean(names)
