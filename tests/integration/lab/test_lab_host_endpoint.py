"""Calico HostEndpoint with real traffic in a BGP lab: a host endpoint on node-1's uplink denies new
connections to node-1's own services from other hosts (node-2, ext) while the failsafe ports keep
the node's control traffic working: BGP sessions stay Established, the agent still reaches etcd (a
pod created afterwards gets Running), pod-to-pod across nodes is untouched (forwarded), SSH's port
22 stays open; deleting the host endpoint opens node-1 again."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator

import pytest
from tcp_check import TcpServer, connect, wait_connect

from podnet.cni import agent_api as api
from podnet.dataplane.bird import SOCKET_FILE, show_protocols
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

HOST_PORT = 8081  # a plain TCP server on node-1's host: not a failsafe port
SSH_PORT = 22  # failsafe inbound
POD_PORT = 8080
HEP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "HostEndpoint",
    "metadata": {"name": "node-1-eth0", "labels": {"role": "edge"}},
    "spec": {"node": "node-1", "interfaceName": "eth0"},
}


def wait_drop(names: LabNames, node: str, start: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        answer = api.call(names.agent_socket(node), {"verb": "DROPS", "since": 0}, timeout=10)
        if any(d["prefix"].startswith(start) for d in answer.get("drops", [])):
            return
        assert time.monotonic() < deadline, f"no drop logged with {start!r}: {answer}"
        time.sleep(0.2)


def pod(name: str, node: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "hep"},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
    }


def running(store: ResourceStore, count: int, timeout: float = 30.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        ips = {
            p.metadata.name: p.status.pod_ip
            for p in store.list(lookup("pods"), "hep")
            if p.status and p.status.phase == "Running" and p.status.pod_ip
        }
        if len(ips) >= count:
            return ips
        assert time.monotonic() < deadline, ips
        time.sleep(0.1)


def bgp_established(names: LabNames, node: str) -> list[str]:
    sock = os.path.join(os.path.dirname(os.path.abspath(names.agent_socket(node))), SOCKET_FILE)
    return [
        p["name"]
        for p in show_protocols(sock)
        if p.get("proto") == "BGP" and "Established" in p.get("info", "")
    ]


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabNames, object, ResourceStore]]:
    names = LabNames(f"pnh{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=2, bgp=True, underlay=random_underlay())
    try:
        info = cluster.up(spec, names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hep"}}, pod("a", "node-1")]
        store.apply([parse_resource(d) for d in [*docs, pod("c", "node-2")]])
        running(store, 2)
        yield names, info.topology, store
    finally:
        cluster.teardown(names)
        clean(names)


def test_host_endpoint_denies_host_traffic_but_keeps_failsafe(lab):
    names, topo, store = lab
    node1, node2, ext = topo.node("node-1"), topo.node("node-2"), topo.external
    outside = [node2] + ([ext] if ext is not None else [])
    servers = [TcpServer(node1.netns, node1.ip, port) for port in (HOST_PORT, SSH_PORT)]
    pod_servers: list[TcpServer] = []
    try:
        for origin in outside:  # before: node-1's host is open
            assert connect(origin.netns, node1.ip, HOST_PORT) == "ok", origin.name
        deadline = time.monotonic() + 30  # BIRD opens its sessions a few seconds after lab up
        while not (sessions := bgp_established(names, "node-1")):
            assert time.monotonic() < deadline, "no BGP session Established before the host endpoint"
            time.sleep(0.5)

        store.apply([parse_resource(HEP)])
        for origin in outside:  # (a) a non-failsafe port of node-1's host: denied, logged
            wait_connect(origin.netns, node1.ip, HOST_PORT, "timeout")
        wait_drop(names, "node-1", "pnh:")
        # (c) failsafe: SSH in, BGP both ways
        assert connect(node2.netns, node1.ip, SSH_PORT) == "ok"
        assert connect(node2.netns, node1.ip, 179) == "ok"
        assert connect(node1.netns, node2.ip, 179) == "ok"
        # (b) the node's own control traffic keeps working: BGP stays up, the agent reaches etcd
        store.apply([parse_resource(pod("b", "node-1"))])
        ips = running(store, 3)
        pod_servers = [TcpServer(names.pod_ns("hep", name), ips[name], POD_PORT) for name in ("b", "c")]
        assert connect(names.pod_ns("hep", "c"), ips["b"], POD_PORT) == "ok"  # forwarded: untouched
        assert connect(names.pod_ns("hep", "b"), ips["c"], POD_PORT) == "ok"
        assert connect(node1.netns, ips["b"], POD_PORT) == "ok"  # the host and its own pods
        time.sleep(2.0)
        assert sorted(bgp_established(names, "node-1")) == sorted(sessions)

        # (d) delete it: node-1's host is reachable again
        store.delete(lookup("hostendpoints"), "node-1-eth0")
        for origin in outside:
            wait_connect(origin.netns, node1.ip, HOST_PORT, "ok")
    finally:
        with contextlib.suppress(NotFoundError):
            store.delete(lookup("hostendpoints"), "node-1-eth0")
        for server in servers + pod_servers:
            server.close()
