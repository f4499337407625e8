"""GlobalNetworkPolicy on a Calico HostEndpoint with real traffic (calico profile, BGP, 2 nodes).

node-1's uplink ``eth0`` is a host endpoint labelled ``role=edge``. A GlobalNetworkPolicy
selecting it allows TCP to port 8081 of node-1's host from node-2 only: 8081 opens for node-2, the
host endpoint's default deny keeps 8082 closed (and 8081 for the external host), the failsafe port
22 stays open. Deleting the policy closes 8081 again (22 still open). With ``applyOnForward`` a
policy on the same host endpoint also filters traffic forwarded in through eth0 to node-1's pod;
without it, forwarded traffic is untouched; a pod's own connection out through eth0 still gets its
replies (pod traffic stays tracked on that node). A ``preDNAT`` policy (not run) is reported in the
status and fails closed, the failsafe port still open. Every step is fenced on node-1's policy
status.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from lab_support import policy_applied, until
from tcp_check import TcpServer, connect
from test_lab_host_endpoint import pod, running

from podnet.cni import agent_api as api
from podnet.datastore.etcd import EtcdDatastore
from podnet.datastore.resources import ResourceStore
from podnet.errors import NotFoundError
from podnet.lab import cluster
from podnet.lab.cleanup import clean
from podnet.lab.naming import LabNames
from podnet.lab.topology import LabSpec, random_underlay
from podnet.model import lookup, parse_resource

pytestmark = [pytest.mark.root, pytest.mark.etcd]

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

ALLOWED, CLOSED, SSH = 8081, 8082, 22  # on node-1's host; 22 is a failsafe inbound port
POD_OPEN, POD_OTHER = 8080, 8090  # on pod b (node-1)
HEP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "HostEndpoint",
    "metadata": {"name": "node-1-eth0", "labels": {"role": "edge"}},
    "spec": {"node": "node-1", "interfaceName": "eth0"},
}


def gnp(name: str, **spec: object) -> dict:
    return {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"selector": "role == 'edge'", "types": ["Ingress"], **spec},
    }


def applied(store: ResourceStore, *docs: dict) -> Any:
    """Apply ``docs``, wait until node-1's kernel ruleset has them; node-1's policy report."""
    results = store.apply([parse_resource(d) for d in docs])
    revision = max(int(r.resource.metadata.resource_version) for r in results)
    return policy_applied(store, ["node-1"], revision)["node-1"]


def deleted(store: ResourceStore, name: str) -> None:
    policy_applied(store, ["node-1"], store.delete(lookup("globalnetworkpolicies"), name))


def drop_naming(names: LabNames, policy: str, port: int) -> dict:
    """A drop node-1 logged for ``port`` whose reason names GlobalNetworkPolicy ``policy``."""

    def found() -> dict | None:
        answer = api.call(names.agent_socket("node-1"), {"verb": "DROPS", "since": 0}, timeout=10)
        for drop in answer.get("drops", []):
            if drop["dport"] == port and any(p["name"] == policy for p in drop["policies"]):
                return drop
        return None

    return until(f"a drop of port {port} explained by {policy}", found)


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabNames, object, ResourceStore, dict[str, str]]]:
    names = LabNames(f"pnt{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=2, bgp=True, underlay=random_underlay())
    try:
        info = cluster.up(spec, names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hep"}}]
        store.apply([parse_resource(d) for d in [*docs, pod("b", "node-1"), pod("c", "node-2")]])
        yield names, info.topology, store, running(store, 2)
    finally:
        cluster.teardown(names)
        clean(names)


def test_global_network_policy_on_host_endpoint(lab):
    names, topo, store, ips = lab
    node1, node2, ext = topo.node("node-1"), topo.node("node-2"), topo.external
    servers = [TcpServer(node1.netns, node1.ip, port) for port in (ALLOWED, CLOSED, SSH)]
    b, c = names.pod_ns("hep", "b"), names.pod_ns("hep", "c")
    servers += [TcpServer(b, ips["b"], port) for port in (POD_OPEN, POD_OTHER)]
    servers.append(TcpServer(c, ips["c"], POD_OTHER))
    allow = gnp(
        "edge-web",
        order=10,
        ingress=[
            {
                "action": "Allow",
                "protocol": "TCP",
                "source": {"nets": [f"{node2.ip}/32"]},
                "destination": {"ports": [ALLOWED]},
            }
        ],
    )
    try:
        for port in (ALLOWED, CLOSED):  # the probe's positive control: open before anything
            assert connect(node2.netns, node1.ip, port) == "ok", port

        applied(store, HEP, allow)
        assert connect(node2.netns, node1.ip, ALLOWED) == "ok"  # the policy's Allow
        assert connect(node2.netns, node1.ip, CLOSED) == "timeout"  # the host endpoint's default deny
        drop = drop_naming(names, "edge-web", CLOSED)  # monitor: the end-of-tier deny, explained
        assert drop["prefix"].startswith("pnd:") and drop["direction"] == "ingress", drop
        if ext is not None:  # not from node-2: the Allow's source does not match
            assert connect(ext.netns, node1.ip, ALLOWED) == "timeout"
        assert connect(node2.netns, node1.ip, SSH) == "ok"  # failsafe
        # forwarded traffic: no applyOnForward policy, untouched
        assert connect(c, ips["b"], POD_OTHER) == "ok"

        # applyOnForward: forwarded in via eth0 to pod b walks the policy too (only 8080 allowed)
        forward = gnp(
            "edge-forward",
            order=20,
            applyOnForward=True,
            ingress=[{"action": "Allow", "protocol": "TCP", "destination": {"ports": [POD_OPEN]}}],
        )
        applied(store, forward)
        assert connect(c, ips["b"], POD_OPEN) == "ok"
        assert connect(c, ips["b"], POD_OTHER) == "timeout"
        # pod b's own connection out via eth0: its replies come in as established, so pod
        # traffic stays tracked on a node with forward host policy (calc.conntrack)
        assert connect(b, ips["c"], POD_OTHER) == "ok"
        assert connect(node2.netns, node1.ip, CLOSED) == "timeout"  # host traffic: still denied
        deleted(store, "edge-forward")
        assert connect(c, ips["b"], POD_OTHER) == "ok"  # forwarded traffic open again

        # preDNAT is not run: reported, and it fails closed after the failsafe ports
        pre_dnat = gnp(
            "edge-prednat", order=1, preDNAT=True, applyOnForward=True, ingress=[{"action": "Allow"}]
        )
        report = applied(store, pre_dnat)
        assert "does not run preDNAT" in report.compile_errors.get("GlobalNetworkPolicy:edge-prednat", ""), (
            report
        )
        assert connect(node2.netns, node1.ip, ALLOWED) == "timeout"  # never a silent allow
        assert connect(node2.netns, node1.ip, SSH) == "ok"  # never a lockout
        deleted(store, "edge-prednat")
        assert connect(node2.netns, node1.ip, ALLOWED) == "ok"

        # positive control: without the policy, 8081 is closed again; the failsafe port is not
        deleted(store, "edge-web")
        assert connect(node2.netns, node1.ip, ALLOWED) == "timeout"
        assert connect(node2.netns, node1.ip, SSH) == "ok"
    finally:
        for name in ("edge-prednat", "edge-forward", "edge-web"):
            with contextlib.suppress(NotFoundError):
                store.delete(lookup("globalnetworkpolicies"), name)
        with contextlib.suppress(NotFoundError):
            store.delete(lookup("hostendpoints"), "node-1-eth0")
        for server in servers:
            server.close()
