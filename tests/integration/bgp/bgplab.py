"""Helpers of the BGP integration tests (root): small labs whose nodes run real BIRD 2 sessions.

Each lab has its own ``pnbgp<3 hex>-`` prefix and a random 10.x.0.0/16 underlay, built with
:func:`podnet.lab.fabric.fabric_up` (fabric bridge, node namespaces, an unused etcd namespace).
Nodes get no agent: the test plays its part. On node ``i``::

    eth0 10.x.0.(10+i)/24                     the uplink (BIRD's direct protocol, session address)
    lo   10.244.i.1/32                        a "pod" address inside the node's block
    blackhole 10.244.i.0/26 proto 112         what podnet's agent installs for an affine block
    podserver :8080 (TCP)                     answers "pod-i"
    BIRD  <node dir>/bird.{conf,ctl,pid}      rendered by podnet.calc.bird, run by BirdManager

Every process is started with :func:`podnet.lab.netns.spawn` and recorded in the lab state; at the
end BIRDs and ToRs are stopped by their recorded pids, then ``down`` and ``clean`` remove the lab
(processes in its namespaces, namespaces, state dir), also when the test failed.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podnet.calc.bird import BgpNode, render_bird_config
from podnet.calc.cluster import BlockInfo
from podnet.dataplane.bird import RTPROT_BIRD, BirdManager
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import in_netns, run_in_netns
from podnet.lab.cleanup import clean, down
from podnet.lab.fabric import fabric_up
from podnet.lab.naming import LabNames
from podnet.lab.netns import spawn
from podnet.lab.podserver import podserver_command
from podnet.lab.state import LabState, ProcessRecord
from podnet.lab.topology import LabSpec, Topology, random_underlay
from podnet.lab.tor import Tor, attach_tor, start_tor
from podnet.model import parse_resource

POD_PORT = 8080
POOL_CIDR = "10.244.0.0/16"
AGENT_RTPROTO = 112


def resource(kind: str, name: str, **spec) -> object:
    return parse_resource(
        {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


POOL = resource("IPPool", "default-ipv4-ippool", cidr=POOL_CIDR)


@dataclass
class BgpLab:
    names: LabNames
    topo: Topology
    state: LabState
    birds: dict[str, BirdManager] = field(default_factory=dict)
    tors: list[Tor] = field(default_factory=list)

    # -- the cluster as the renderer sees it ------------------------------------------------------
    @property
    def node_names(self) -> list[str]:
        return [h.name for h in self.topo.nodes]

    def netns(self, node: str) -> str:
        return self.topo.node(node).netns

    def ip(self, node: str) -> str:
        return self.topo.node(node).ip

    @staticmethod
    def index(node: str) -> int:
        return int(node.rsplit("-", 1)[1])

    def block(self, node: str) -> str:
        return f"10.244.{self.index(node)}.0/26"

    def pod_ip(self, node: str) -> str:
        return f"10.244.{self.index(node)}.1"

    @property
    def subnet(self) -> str:
        return self.topo.subnets[0].cidr

    def bgp_nodes(
        self, labels: dict[str, dict] | None = None, rr: dict[str, str] | None = None
    ) -> list[BgpNode]:
        labels, rr = labels or {}, rr or {}
        return [
            BgpNode(n, self.ip(n), self.subnet, labels.get(n, {}), rr_cluster_id=rr.get(n))
            for n in self.node_names
        ]

    def blocks(self, extra: dict[str, list[str]] | None = None) -> list[BlockInfo]:
        out = [BlockInfo(self.block(n), n) for n in self.node_names]
        for node, cidrs in (extra or {}).items():
            out += [BlockInfo(c, node) for c in cidrs]
        return out

    # -- processes -------------------------------------------------------------------------------
    def spawner(self, name: str, netns: str) -> Callable[[list[str]], object]:
        def launch(cmd: list[str]) -> object:
            proc = spawn(
                cmd,
                netns=netns,
                log=os.path.join(self.names.log_dir, f"{name}.log"),
                lab_prefix=self.names.prefix,
            )
            self.state.record_process(ProcessRecord.of(name, proc))
            return proc

        return launch

    def bird(self, node: str) -> BirdManager:
        if node not in self.birds:
            self.birds[node] = BirdManager(
                self.names.node_dir(node),
                self.netns(node),
                spawn=self.spawner(f"bird-{node}", self.netns(node)),
            )
        return self.birds[node]

    def start_birds(self, nodes: list[BgpNode], config=None, peers=(), blocks=None) -> dict[str, str]:
        """Render and apply every node's config: ``{node: "started" | "reconfigured" | "unchanged"}``."""
        blocks = blocks if blocks is not None else self.blocks()
        return {
            n.name: self.bird(n.name).apply(
                render_bird_config(n.name, nodes, blocks, config, list(peers), [POOL])
            )
            for n in nodes
        }

    def attach_tor(self, host: int = 250) -> tuple[str, str]:
        netns = f"{self.names.prefix}tor"
        address = f"{self.subnet.rsplit('.', 1)[0]}.{host}"
        attach_tor(netns, self.topo.fabric_ns, "br0", f"{address}/24", state=self.state)
        return netns, address

    def start_tor(self, netns: str, address: str, peers: list[tuple]) -> Tor:
        tor = start_tor(
            netns,
            address,
            peers,
            workdir=os.path.join(self.names.state_dir, "tor"),
            lab_prefix=self.names.prefix,
            state=self.state,
        )
        self.tors.append(tor)
        return tor

    # -- observing -------------------------------------------------------------------------------
    def bird_routes(self, node: str) -> dict[str, tuple]:
        """Kernel routes written by BIRD (proto bird): ``{dst: (gateway, kind, metric)}``."""
        with Netlink.open(self.netns(node)) as nl:
            return {r.dst: (r.gateway, r.kind, r.metric) for r in nl.routes(protocol=RTPROT_BIRD)}

    def peer_states(self, node: str) -> dict[str, str]:
        """``{protocol name: info}`` of the node's BGP sessions."""
        return {p["name"]: p["info"] for p in self.bird(node).protocols() if p["proto"] == "BGP"}

    def wait_established(self, nodes: list[str] | None = None, timeout: float = 30.0) -> None:
        nodes = nodes or self.node_names
        deadline = time.monotonic() + timeout
        while True:
            states = {n: self.peer_states(n) for n in nodes}
            if all(s and all(v == "Established" for v in s.values()) for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"BGP sessions not established after {timeout}s: {states}")
            time.sleep(0.2)

    def expected_routes(self, node: str, blocks: list[BlockInfo] | None = None) -> dict[str, tuple]:
        blocks = blocks if blocks is not None else self.blocks()
        return {b.cidr: (self.ip(b.node), "unicast", 32) for b in blocks if b.node != node}

    def wait_routes(
        self, node: str, want: dict[str, tuple], timeout: float = 30.0, exact: bool = True
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.bird_routes(node)
            if (got == want) if exact else all(got.get(k) == v for k, v in want.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{node}: BIRD's kernel routes {got}, want {want}")
            time.sleep(0.2)


def tcp_from(netns: str, src: str, dst: str, port: int = POD_PORT, timeout: float = 2.0) -> str:
    """Connect from ``src`` (bound: the reply must find its way back to it) and read the answer."""
    with in_netns(netns), socket.socket() as s:
        s.settimeout(timeout)
        s.bind((src, 0))
        s.connect((dst, port))
        return s.recv(256).decode().strip()


def wait_tcp(netns: str, src: str, dst: str, expect: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = tcp_from(netns, src, dst)
            if last == expect:
                return
        except OSError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{src} ({netns}) -> {dst}:{POD_PORT}: {last!r}, want {expect!r}")
        time.sleep(0.1)


def prepare_node(lab: BgpLab, node: str) -> None:
    ns = lab.netns(node)
    run_in_netns(ns, ["ip", "addr", "add", f"{lab.pod_ip(node)}/32", "dev", "lo"], check=True)
    run_in_netns(
        ns, ["ip", "route", "add", "blackhole", lab.block(node), "proto", str(AGENT_RTPROTO)], check=True
    )
    name = f"pod-{lab.index(node)}"
    server = spawn(
        podserver_command(name, [f"{POD_PORT}/TCP"], lab.names.prefix),
        netns=ns,
        log=os.path.join(lab.names.log_dir, f"{name}.log"),
        lab_prefix=lab.names.prefix,
    )
    lab.state.record_process(ProcessRecord.of(name, server))


def new_lab(nodes: int = 3) -> BgpLab:
    """Fabric, pod addresses, blackholes and pod servers (see the module notes)."""
    names = LabNames(f"pnbgp{secrets.token_hex(2)[:3]}-")
    spec = LabSpec(nodes=nodes, underlay=random_underlay())
    topo, state, _ = fabric_up(spec, names)
    lab = BgpLab(names, topo, state)
    try:
        for node in lab.node_names:
            prepare_node(lab, node)
    except BaseException:
        remove_lab(lab)
        raise
    return lab


def remove_lab(lab: BgpLab) -> None:
    """Stop the lab's ToRs and BIRDs by their recorded pids, then ``down`` and ``clean``."""
    try:
        for tor in lab.tors:
            tor.stop()
        for bird in lab.birds.values():
            bird.stop()
    finally:
        down(lab.names.state_dir)
        clean(lab.names)


def node_status(*argv: str) -> int:
    """``podnet node status ARGV`` (the module directly: the lead registers the verb in the CLI)."""
    import argparse

    from podnet.cli import cmd_node

    parser = argparse.ArgumentParser(prog="podnet node")
    cmd_node.add_arguments(parser)
    return cmd_node.run(parser.parse_args(["status", *argv]))
