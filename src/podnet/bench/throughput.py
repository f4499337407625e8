"""Pod-to-pod TCP throughput per mode, next to a hand-built baseline measured in the same run.

    python -m podnet.bench.throughput [--modes none,vxlan] [--repeats 3] [--duration 3] [-o json]

For each mode: a 2-node podnet lab (its own prefix and underlay) with one pod per node, and the
same path built by hand without podnet (fabric bridge, two node namespaces, a pod namespace behind
a veth on each, plain routes or a VXLAN device with static FDB/neighbour entries). iperf3 runs
pod → pod (1 stream), ``--repeats`` times per side, interleaved (podnet, baseline, podnet, …);
the median of each, and podnet/baseline as a ratio: the figure that compares across machines.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import subprocess
import time
from contextlib import ExitStack

from podnet.dataplane.ipip import IPIPTunnel
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.vxlan import VTEP, VXLANTunnel, vtep_mac
from podnet.lab import cluster
from podnet.lab.naming import LabNames
from podnet.lab.netns import create_netns, delete_netns, spawn
from podnet.lab.topology import LabSpec, random_underlay

MTU = {"none": 1500, "vxlan": 1450, "ipip": 1480}


def iperf(client_ns: str, server_ns: str, server_ip: str, duration: float) -> float:
    """Gbit/s of one iperf3 TCP stream from ``client_ns`` to a server started in ``server_ns``."""
    port = str(random.randint(20000, 40000))
    server = spawn(["iperf3", "-s", "-1", "-p", port], netns=server_ns)
    try:
        time.sleep(0.3)
        cmd = [
            "ip",
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            server_ip,
            "-p",
            port,
            "-t",
            str(duration),
            "-J",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
        doc = json.loads(out.stdout or "{}")
        if "error" in doc or "end" not in doc:
            raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: {doc.get('error', out.stderr.strip())}")
        return doc["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.stop()


class HandBuilt:
    """Two nodes and two pods wired by hand (no podnet agent, IPAM or CNI): the baseline."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        tag = secrets.token_hex(2)
        self.ns = {k: f"pnhb{tag}-{k}" for k in ("fabric", "n1", "n2", "p1", "p2")}
        self.pod_ip = {"p1": "10.250.1.2", "p2": "10.250.2.2"}
        self.tunnels: list[IPIPTunnel] = []

    def __enter__(self) -> HandBuilt:
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        ns = self.ns
        for name in ns.values():
            create_netns(name)
            with Netlink.open(name) as nl:
                nl.link_set("lo", up=True)
        with Netlink.open(ns["fabric"]) as nl:
            nl.link_add("br0", "bridge")
            nl.link_set("br0", up=True)
        node_ip = {"n1": "10.251.0.1", "n2": "10.251.0.2"}
        for node, pod in (("n1", "p1"), ("n2", "p2")):
            with Netlink.open(ns["fabric"]) as nl:
                nl.link_add_veth(node, "eth0", peer_netns=f"/run/netns/{ns[node]}", mtu=1500)
                nl.link_set(node, master="br0", up=True)
            with Netlink.open(ns[node]) as nl:
                nl.link_set("eth0", up=True)
                nl.addr_add("eth0", f"{node_ip[node]}/24")
                nl.link_add_veth("veth0", "eth0", peer_netns=f"/run/netns/{ns[pod]}", mtu=MTU[self.mode])
                nl.link_set("veth0", up=True)
                nl.addr_add("veth0", "169.254.1.1/32")  # the pod's gateway, answered by plain ARP
                nl.route_add(f"{self.pod_ip[pod]}/32", dev="veth0", scope="link")
                nl.sysctl_set("net/ipv4/ip_forward", 1)
            with Netlink.open(ns[pod]) as nl:
                nl.link_set("eth0", up=True)
                nl.addr_add("eth0", f"{self.pod_ip[pod]}/32")
                nl.route_add("169.254.1.1/32", dev="eth0", scope="link")
                nl.route_add("0.0.0.0/0", gateway="169.254.1.1", dev="eth0")
        for node, other, other_pod in (("n1", "n2", "p2"), ("n2", "n1", "p1")):
            if self.mode == "vxlan":
                tunnel_ip = {"n1": "10.250.1.0", "n2": "10.250.2.0"}
                t = VXLANTunnel("vxlan0", local_ip=node_ip[node], mtu=1450, netns=ns[node])
                t.ensure(tunnel_ip[node], vtep_mac(ns[node]))
                t.sync({other: VTEP(tunnel_ip[other], vtep_mac(ns[other]), node_ip[other])})
                with Netlink.open(ns[node]) as nl:
                    nl.route_add(
                        f"{self.pod_ip[other_pod]}/32", gateway=tunnel_ip[other], dev="vxlan0", onlink=True
                    )
            elif self.mode == "ipip":  # the same eBPF encapsulation, driven by hand
                tunnel = IPIPTunnel(
                    local_ip=node_ip[node],
                    mtu=1480,
                    netns=ns[node],
                    pin_dir=f"/sys/fs/bpf/{ns[node]}",
                    cache_dir="/var/cache/podnet/bpf",
                )
                tunnel.ensure()
                tunnel.sync({f"{self.pod_ip[other_pod]}/32": node_ip[other]}, peers=[node_ip[other]])
                self.tunnels.append(tunnel)
                with Netlink.open(ns[node]) as nl:
                    nl.route_add(
                        f"{self.pod_ip[other_pod]}/32", gateway=node_ip[other], dev="tunl0", onlink=True
                    )
            else:
                with Netlink.open(ns[node]) as nl:
                    nl.route_add(f"{self.pod_ip[other_pod]}/32", gateway=node_ip[other], dev="eth0")

    def __exit__(self, *exc: object) -> None:
        for tunnel in self.tunnels:
            tunnel.remove()
        for name in self.ns.values():
            delete_netns(name)


def run(modes: list[str], repeats: int = 3, duration: float = 3.0) -> dict:
    results = {}
    for mode in modes:
        names = LabNames(f"pntp{secrets.token_hex(2)}-")
        spec = LabSpec(nodes=2, encapsulation=mode, underlay=random_underlay())
        with ExitStack() as stack:
            info = cluster.up(spec, names)
            stack.callback(cluster.teardown, names)
            from podnet.datastore.etcd import EtcdDatastore
            from podnet.datastore.resources import ResourceStore
            from podnet.model import lookup, parse_resource

            store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
            store.apply(
                [
                    parse_resource(
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {"name": f"t{i}"},
                            "spec": {"nodeName": f"node-{i}", "containers": [{"name": "c"}]},
                        }
                    )
                    for i in (1, 2)
                ]
            )
            deadline = time.monotonic() + 30
            while True:
                pods = {p.metadata.name: p for p in store.list(lookup("pods"), "default")}
                if len(pods) == 2 and all(p.status and p.status.phase == "Running" for p in pods.values()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("bench pods not Running")
                time.sleep(0.05)
            hand = stack.enter_context(HandBuilt(mode))
            paths = {
                "podnet": (
                    names.pod_ns("default", "t1"),
                    names.pod_ns("default", "t2"),
                    pods["t2"].status.pod_ip,
                ),
                "baseline": (hand.ns["p1"], hand.ns["p2"], hand.pod_ip["p2"]),
            }
            runs: dict[str, list[float]] = {side: [] for side in paths}
            for _ in range(repeats):  # interleaved, so drift on the machine hits both sides alike
                for side, (client, server, ip) in paths.items():
                    runs[side].append(iperf(client, server, ip, duration))
            med = {k: statistics.median(v) for k, v in runs.items()}
            results[mode] = {
                "gbps": {k: round(v, 2) for k, v in med.items()},
                "ratio": round(med["podnet"] / med["baseline"], 3),
                "samples": runs,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.bench.throughput")
    ap.add_argument("--modes", default="none,vxlan,ipip")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    results = run(args.modes.split(","), args.repeats, args.duration)
    if args.output == "json":
        print(json.dumps(results, indent=2))
    else:
        print(f"{'mode':10} {'podnet Gbit/s':>14} {'by hand Gbit/s':>15} {'ratio':>7}")
        for mode, r in results.items():
            print(f"{mode:10} {r['gbps']['podnet']:14.2f} {r['gbps']['baseline']:15.2f} {r['ratio']:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
