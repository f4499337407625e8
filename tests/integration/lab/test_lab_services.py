"""Services on a lab cluster, for both profiles, with real traffic from a pod's own processes:
the Calico profile through the nftables proxier, the Cilium profile through eBPF socket load
balancing (ClusterIP at connect()) plus nftables for NodePort from outside.

Each: a ClusterIP spreads over every backend (counting which pod answered), a named targetPort, UDP,
scaling down and up takes effect at once, session affinity keeps a client on one backend, NodePort
answers from the lab's external namespace, a service without backends refuses at once, and a
NetworkPolicy that denies the backends denies the service too."""

from __future__ import annotations

import collections
import os
import secrets
import time

import pytest
from lab_support import until

from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.probe import probe_in_pod
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

PORTS = [{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]
WEB = {"app": "web"}


def pod(name: str, node: str, labels: dict) -> dict:
    meta = {"name": name, "namespace": "svc", "labels": labels}
    spec = {"nodeName": node, "containers": [{"name": "c", "ports": PORTS}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def service(name: str, selector: dict, ports: list[dict], **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "svc"},
        "spec": {"selector": selector, "ports": ports, **spec},
    }


HTTP = {"name": "http", "port": 80, "targetPort": "http"}
DNS = {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}
DENY_WEB = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny-web", "namespace": "svc"},
    "spec": {"podSelector": {"matchLabels": WEB}, "policyTypes": ["Ingress"]},
}


class Client:
    """Probes from the client pod's own cgroup and netns."""

    def __init__(self, names: LabNames, store: ResourceStore) -> None:
        client = store.get(lookup("pods"), "client", "svc")
        self.netns = names.pod_ns("svc", "client")
        self.cgroup = names.pod_cgroup(client.spec.node_name, client.metadata.uid)

    def answers(self, ip: str, port: int, proto: str = "TCP", count: int = 30) -> collections.Counter:
        results = probe_in_pod(self.netns, self.cgroup, ip, port, proto, count, timeout=1.0)
        return collections.Counter(r.answer if r.ok else f"({r.detail})" for r in results)


def running(store: ResourceStore) -> set[str]:
    pods = store.list(lookup("pods"), "svc")
    return {p.metadata.name for p in pods if p.status and p.status.phase == "Running"}


@pytest.mark.parametrize("profile", ["calico", "cilium"])
def test_services(profile: str) -> None:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    info = cluster.up(LabSpec(nodes=3, profile=profile, underlay=random_underlay()), names)
    try:
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "svc"}},
            pod("web-1", "node-1", WEB),
            pod("web-2", "node-2", WEB),
            pod("web-3", "node-3", WEB),
            pod("client", "node-1", {}),
            service("web", WEB, [HTTP, DNS]),
            service("sticky", WEB, [HTTP], sessionAffinity="ClientIP"),
            service("np", WEB, [{**HTTP, "nodePort": 30080}], type="NodePort"),
            service("empty", {"app": "nobody"}, [HTTP, DNS]),
        ]
        store.apply([parse_resource(d) for d in docs])
        until("pods Running", lambda: running(store) == {"web-1", "web-2", "web-3", "client"}, timeout=30)
        vip = {s.metadata.name: s.spec.cluster_ip for s in store.list(lookup("services"), "svc")}
        client = Client(names, store)
        backends = {"svc/web-1", "svc/web-2", "svc/web-3"}

        # ClusterIP, named targetPort: every backend answers (45 connections, P(miss one) ~ 1e-8).
        until("the ClusterIP to spread", lambda: set(client.answers(vip["web"], 80, count=45)) == backends)
        # UDP through the service: every backend answers too.
        until("UDP to spread", lambda: set(client.answers(vip["web"], 53, "UDP", count=45)) == backends)

        # Scaling down: web-3 leaves the backends at once; up: web-4 joins.
        store.delete(lookup("pods"), "web-3", "svc")
        started = time.monotonic()
        rest = backends - {"svc/web-3"}
        until("web-3 to leave", lambda: set(client.answers(vip["web"], 80, count=20)) == rest)
        left = time.monotonic() - started
        store.apply([parse_resource(pod("web-4", "node-3", WEB))])
        until("web-4 Running", lambda: "web-4" in running(store), timeout=30)
        started = time.monotonic()
        until("web-4 to join", lambda: "svc/web-4" in client.answers(vip["web"], 80, count=30))
        joined = time.monotonic() - started
        print(f"{profile}: a deleted backend left in {left:.2f}s, a new Running one joined in {joined:.2f}s")
        assert left < 3 and joined < 3

        # Session affinity: one client, one backend.
        sticky = client.answers(vip["sticky"], 80, count=20)
        assert len(sticky) == 1 and next(iter(sticky)).startswith("svc/web-"), sticky

        # NodePort from outside the cluster (the lab's external namespace), on every node.
        for host in info.topology.nodes:
            got = probe_in_pod(names.ext_ns, None, host.ip, 30080, "TCP", 20, 1.0)
            answers = {r.answer for r in got if r.ok}
            assert answers and answers <= {"svc/web-1", "svc/web-2", "svc/web-4"}, (host.name, got[:3])

        # No backends: refused at once, TCP and UDP.
        for port, proto in ((80, "TCP"), (53, "UDP")):
            (result,) = probe_in_pod(client.netns, client.cgroup, vip["empty"], port, proto, 1, 2.0)
            assert not result.ok and result.detail == "refused" and result.elapsed < 0.5, (proto, result)

        # Policy applies to service traffic: denying the backends denies the service.
        store.apply([parse_resource(DENY_WEB)])

        def served() -> bool:
            return any(a.startswith("svc/") for a in client.answers(vip["web"], 80, count=10))

        until("the policy to deny the service", lambda: not served())
        store.delete(lookup("netpol"), "deny-web", "svc")
        until("the service back", served)
    finally:
        cluster.teardown(names)
        clean(names)
