"""NetworkPolicy enforced by ``table inet podnet_policy`` in a node netns, proven with real traffic.

One "node" namespace, three pods wired the Calico way, a podserver in each (8080/TCP, 5353/UDP,
9090/TCP). Policies are real ``networking.k8s.io/v1`` objects compiled by ``compile_policies``:

- ``web-default-deny``: web is isolated for ingress, allows nothing;
- ``web-allow-clients``: web admits pods labelled ``role=client`` on the named ports ``http``
  (8080/TCP) and ``dns`` (5353/UDP) only;
- ``db-no-egress``: db may send nothing (but replies of connections made to it still pass).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from podnet.calc.policy import (
    CompiledPolicy,
    EndpointPolicy,
    EndpointTier,
    Match,
    OrderedRule,
    PodInfo,
    PolicyPlan,
    PortMatch,
    Provenance,
    Side,
    compile_policies,
)
from podnet.dataplane import sysctl
from podnet.dataplane.endpoint import CALICO_GATEWAY, EndpointSpec, host_ifname_for, wire_endpoint
from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import in_netns
from podnet.dataplane.nflog import NflogReader
from podnet.dataplane.policy import PolicyManager, chain_name, deny_prefix, deny_reasons, policy_chain_name
from podnet.lab.probe import Probe, probe, run_probes
from podnet.model import parse_resource

pytestmark = pytest.mark.root

NODE_IP = "10.0.0.1"
PORTS = ("8080/TCP", "5353/UDP", "9090/TCP")
NAMED = (("http", 8080, "TCP"), ("dns", 5353, "UDP"), ("metrics", 9090, "TCP"))


def _policy(name: str, spec: dict) -> object:
    return parse_resource(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


POLICIES = [
    _policy("web-default-deny", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
    _policy(
        "web-allow-clients",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}],
                }
            ],
        },
    ),
    _policy("db-no-egress", {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]}),
]


@dataclass
class Pod:
    info: PodInfo
    netns: str
    host_ifname: str
    mac: str = ""

    @property
    def ip(self) -> str:
        return self.info.ips[0]


@dataclass
class Cluster:
    node: str  # netns name (for ip netns exec / PolicyManager)
    node_path: str
    pods: dict[str, Pod]

    def plan(self, pods: dict[str, PodInfo] | None = None) -> PolicyPlan:
        infos = list((pods or {k: p.info for k, p in self.pods.items()}).values())
        return compile_policies(infos, infos, {"default": {}}, POLICIES)

    def endpoints(self) -> dict[str, tuple[str, tuple[str, ...], str]]:
        return {p.info.key: (p.host_ifname, p.info.ips, p.mac) for p in self.pods.values()}

    def reach(self, src: str, dst: str, port: str) -> bool:
        number, proto = port.split("/")
        source = None if src == "node" else self.pods[src].netns
        target = self.pods[dst]
        return probe(source, target.ip, int(number), proto, timeout=0.6, expect=target.info.key).ok


@pytest.fixture
def cluster(make_netns: Callable[[str], str]) -> Iterator[Cluster]:
    node_path = make_netns("node")
    node = os.path.basename(node_path)
    sysctl.write_many(sysctl.NODE_SYSCTLS, node_path)
    with Netlink.open(node_path) as nl:
        nl.addr_add("lo", f"{NODE_IP}/32")  # the node's own address: source of node->pod traffic
    labels = {"client": {"role": "client"}, "db": {"app": "db"}, "web": {"app": "web"}, "other": {}}
    pods: dict[str, Pod] = {}
    procs: list[subprocess.Popen] = []
    try:
        for i, (name, pod_labels) in enumerate(labels.items()):
            path = make_netns(name)
            ip = f"10.244.1.{10 + i}"
            host_ifname = host_ifname_for("cali", "default", name)
            wired = wire_endpoint(
                EndpointSpec(path, "eth0", host_ifname, (ip,), 1500, "calico", CALICO_GATEWAY),
                host_netns=node_path,
            )
            info = PodInfo("default", name, pod_labels, (ip,), "node-1", NAMED)
            pods[name] = Pod(info, path, host_ifname, wired.mac)
            ready = f"/tmp/{os.path.basename(path)}.ready"
            cmd = [sys.executable, "-m", "podnet.lab.podserver", "--name", info.key, "--ready-file", ready]
            for port in PORTS:
                cmd += ["--port", port]
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", os.path.basename(path), *cmd],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 10
            while not os.path.exists(ready):
                assert time.monotonic() < deadline, f"podserver {name} did not start"
                time.sleep(0.02)
            os.unlink(ready)
        yield Cluster(node, node_path, pods)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _node_probe(c: Cluster, dst: str, port: str) -> bool:
    number, proto = port.split("/")
    return probe(c.node_path, c.pods[dst].ip, int(number), proto, timeout=0.6, expect=c.pods[dst].info.key).ok


def _truth(c: Cluster) -> dict[tuple[str, str, str], bool]:
    """Every pod pair on every port, probed concurrently (TCP connect + answer, UDP request + answer)."""
    cases = [(s, d, p) for s in c.pods for d in c.pods if s != d for p in PORTS]
    probes = []
    for s, d, p in cases:
        number, proto = p.split("/")
        probes.append(Probe(c.pods[s].netns, c.pods[d].ip, int(number), proto, c.pods[d].info.key))
    return {case: r.ok for case, r in zip(cases, run_probes(probes, timeout=0.8), strict=True)}


def _expected(clients: set[str]) -> dict[tuple[str, str, str], bool]:
    table = {}
    for s in ("client", "db", "web", "other"):
        for d in ("client", "db", "web", "other"):
            if s == d:
                continue
            for p in PORTS:
                if s == "db":
                    ok = False  # egress deny-all
                elif d == "web":
                    ok = s in clients and p in ("8080/TCP", "5353/UDP")
                else:
                    ok = True
                table[(s, d, p)] = ok
    return table


def _spoof_arrives(c: Cluster, src: str, dst: str, spoofed: str) -> bool:
    """A UDP datagram from ``src`` with source address ``spoofed`` to a fresh listener in ``dst``."""
    with in_netns(c.pods[dst].netns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(c.pods[src].netns):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("0.0.0.0", 7000))
        rx.settimeout(0.3)
        tx.bind((spoofed, 0))
        for _ in range(3):
            tx.sendto(b"spoof", (c.pods[dst].ip, 7000))
            try:
                data, (addr, _) = rx.recvfrom(100)
            except TimeoutError:
                continue
            return data == b"spoof" and addr == spoofed
    return False


def _mac_spoof_arrives(c: Cluster, src: str, dst: str, src_mac: str) -> bool:
    """A UDP datagram from ``src`` (its own IP) with Ethernet source ``src_mac``, written with an
    AF_PACKET socket, to a fresh listener in ``dst``."""
    with in_netns(c.pods[dst].netns):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with in_netns(c.pods[src].netns):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with rx, tx:
        rx.bind(("0.0.0.0", 7001))
        rx.settimeout(0.3)
        tx.bind(("eth0", 0))
        udp = struct.pack("!HHHH", 40000, 7001, 12, 0) + b"mac!"
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            0,
            0x4000,
            64,
            17,
            0,
            socket.inet_aton(c.pods[src].ip),
            socket.inet_aton(c.pods[dst].ip),
        )
        words = sum(struct.unpack("!10H", ip))
        words = (words >> 16) + (words & 0xFFFF)
        ip = ip[:10] + struct.pack("!H", ~(words + (words >> 16)) & 0xFFFF) + ip[12:]
        eth = bytes.fromhex("eeeeeeeeeeee") + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
        for _ in range(3):
            tx.send(eth + ip + udp)
            try:
                if rx.recv(100) == b"mac!":
                    return True
            except TimeoutError:
                continue
    return False


def _nft(c: Cluster, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", c.node, "nft", *args], capture_output=True, text=True, check=True
    ).stdout


def test_policy_truth_table_incremental_and_failure(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    c = cluster
    # Without the table everything is open, and a spoofed source would get through.
    assert all(_truth(c).values())
    spoofed = "10.244.1.99"
    with Netlink.open(c.pods["client"].netns) as nl:
        nl.addr_add("eth0", f"{spoofed}/32")
    assert _spoof_arrives(c, "client", "other", spoofed)

    manager = PolicyManager(c.node)
    try:
        result = manager.apply(c.plan(), c.endpoints())
        assert result["mode"] == "full"

        # The exact truth table, TCP and UDP (db->* fails on egress; *->db passing proves replies of
        # allowed connections leave db through conntrack although db's egress allows nothing).
        assert _truth(c) == _expected({"client"})
        # node -> pod is not filtered, even to isolated web on a port no policy allows
        for port in PORTS:
            assert _node_probe(c, "web", port)
            assert _node_probe(c, "db", port)
        # anti-spoofing: the same datagram is now dropped, and the spoof rule counted it
        assert not _spoof_arrives(c, "client", "other", spoofed)
        assert _spoof_arrives(c, "client", "other", c.pods["client"].ip)
        client_src = _nft(c, "list", "chain", "inet", "podnet_policy", chain_name("default/client", "source"))
        spoof_rule = next(line for line in client_src.splitlines() if "ip saddr !=" in line)
        assert "packets 0 " not in spoof_rule
        # MAC anti-spoofing: the pod's own address from another MAC is dropped, from its own MAC not
        assert _mac_spoof_arrives(c, "client", "other", c.pods["client"].mac)
        assert not _mac_spoof_arrives(c, "client", "other", "02:00:5e:01:02:03")
        client_src = _nft(c, "list", "chain", "inet", "podnet_policy", chain_name("default/client", "source"))
        mac_rule = next(line for line in client_src.splitlines() if "ether saddr !=" in line)
        assert "packets 0 " not in mac_rule
        # counters and provenance in the kernel
        # (the rules live in the policy's own chain, which the endpoint's tier chain jumps to)
        allow = policy_chain_name("default/web-allow-clients", "ingress")
        web_in = _nft(c, "list", "chain", "inet", "podnet_policy", allow)
        assert 'comment "knp:default/web-allow-clients:ingress:0"' in web_in
        assert "packets 0 " not in web_in.split("knp:", 1)[0].splitlines()[-1]  # it counted the allow

        # The drop is logged to NFLOG group 7 with the endpoint's deny prefix, which names the policies.
        reader = NflogReader(netns=c.node_path)
        try:
            assert not c.reach("other", "web", "9090/TCP")
            drops = [d for _ in range(5) for d in reader.read(0.5)]
        finally:
            reader.close()
        prefix = deny_prefix("default/web", "ingress")
        mine = [d for d in drops if d.prefix == prefix]
        assert mine, drops
        assert (mine[0].src, mine[0].dst, mine[0].protocol, mine[0].dport) == (
            c.pods["other"].ip,
            c.pods["web"].ip,
            "TCP",
            9090,
        )
        assert {p.name for p in deny_reasons(c.plan())[prefix]} == {"web-default-deny", "web-allow-clients"}

        # Incremental: "other" gets role=client -> one set element, one partial transaction.
        infos = {k: p.info for k, p in c.pods.items()}
        infos["other"] = replace(infos["other"], labels={"role": "client"})
        result = manager.apply(c.plan(infos), c.endpoints())
        assert result["mode"] == "partial"
        assert manager.last_script is not None
        assert manager.last_script.splitlines() == [
            f"add element inet podnet_policy {_client_set(c.plan(infos))} {{ 10.244.1.13/32 }}"
        ]
        assert _truth(c) == _expected({"client", "other"})
        assert manager.apply(c.plan(infos), c.endpoints())["mode"] == "noop"

        # Injected failure: the label goes away again, but the kernel rejects the transaction (a
        # delete of an element that does not exist, appended to the real diff). nft is atomic: the
        # previous ruleset (other may reach web) stays; the manager asks for a full resync.
        real_run = manager.table.run
        calls: list[str] = []

        def failing_once(script: str) -> None:
            calls.append(script)
            if len(calls) == 1:
                script += f"delete element inet podnet_policy {_client_set(c.plan())} {{ 192.0.2.1/32 }}\n"
            real_run(script)

        monkeypatch.setattr(manager.table, "run", failing_once)
        with pytest.raises(DataplaneError, match="podnet_policy"):
            manager.apply(c.plan(), c.endpoints())
        assert manager.needs_full_resync
        assert c.reach("other", "web", "8080/TCP")  # last good state in force
        result = manager.apply(c.plan(), c.endpoints())
        assert result["mode"] == "full"
        assert calls[1].startswith("add table inet podnet_policy\ndelete table inet podnet_policy\n")
        assert _truth(c) == _expected({"client"})

        # Removal leaves no trace; other tables are never touched.
        manager.remove()
        assert "podnet_policy" not in _nft(c, "list", "tables")
        assert c.reach("db", "web", "9090/TCP")
    finally:
        monkeypatch.undo()
        manager.remove()


def _client_set(plan: PolicyPlan) -> str:
    rule = plan.endpoint_rules("default/web", "ingress")[0]
    assert rule.match.src.sets
    return rule.match.src.sets[0]


def test_thousand_rule_plan_timing(make_netns: Callable[[str], str], capsys: pytest.CaptureFixture[str]):
    """1,000 rules over 200 endpoints (5 each, 200 sets): full apply, then a one-element partial apply."""
    node = os.path.basename(make_netns("scale"))
    sets: dict[str, frozenset[str]] = {}
    endpoints: dict[str, EndpointPolicy] = {}
    policies: dict[str, CompiledPolicy] = {}
    local: dict[str, tuple[str, tuple[str, ...]]] = {}
    for i in range(200):
        key = f"ns{i % 10}/pod-{i}"
        ip = f"10.244.{i // 250}.{i % 250 + 1}"
        rules = []
        for r in range(5):
            name = f"pn-s{(i * 5 + r) % 200:04d}"
            sets[name] = frozenset(
                f"10.{100 + (i * 5 + r) % 200 // 100}.{(i * 5 + r) % 100}.{m}/32" for m in range(5)
            )
            rules.append(
                OrderedRule(
                    "Allow",
                    Match(src=Side(sets=(name,)), dst=Side(ports=(PortMatch("TCP", 8000 + r, 8000 + r),))),
                    Provenance("NetworkPolicy", f"ns{i % 10}", f"pol-{i}", "ingress", r),
                )
            )
        policy_key = f"ns{i % 10}/pol-{i}"
        policies[policy_key] = CompiledPolicy(
            policy_key, "NetworkPolicy", f"ns{i % 10}", f"pol-{i}", "default", 1000.0, tuple(rules), None
        )
        endpoints[key] = EndpointPolicy(key, (ip,), (EndpointTier("default", (policy_key,), "Deny"),))
        local[key] = (f"cali{i:011d}", (ip,))
    plan = PolicyPlan(sets=sets, endpoints=endpoints, errors={}, policies=policies)
    manager = PolicyManager(node)
    full = manager.apply(plan, local)
    assert full["mode"] == "full"
    changed = dict(sets)
    changed["pn-s0007"] = sets["pn-s0007"] | {"10.200.0.1/32"}
    partial = manager.apply(
        PolicyPlan(sets=changed, endpoints=endpoints, errors={}, policies=policies), local
    )
    assert partial["mode"] == "partial" and partial["statements"] == 1
    rules = _count_rules(node)
    assert rules >= 1000
    with capsys.disabled():
        print(
            f"\n[policy timing] {rules} rules: full apply {full['seconds'] * 1000:.1f} ms,"
            f" partial apply {partial['seconds'] * 1000:.1f} ms"
        )
    assert full["seconds"] < 10 and partial["seconds"] < 2
    manager.remove()


def _count_rules(node: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", node, "nft", "list", "table", "inet", "podnet_policy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.count("counter packets")
