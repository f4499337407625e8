"""Pod-to-pod TCP throughput per mode, next to hand-built baselines measured in the same run.

    python -m podnet.bench.throughput [--modes none,vxlan,ipip] [--repeats 3] [--duration 3] [--quick]
                                      [-o table|json]

For each mode: a 2-node podnet lab (its own prefix and underlay) with one pod per node, and the
same path built by hand without podnet (:class:`HandBuilt`: fabric bridge, two node namespaces, a
pod namespace behind a veth on each; plain routes, a VXLAN device with static FDB/neighbour
entries, or for IPIP the bench's own minimal tc-eBPF tunnel, :mod:`podnet.bench.min_ipip`, which
shares no code with podnet's). For a tunnel mode the hand-built direct path is measured too: the
tunnel's own cost. iperf3 runs pod → pod (1 stream), ``--repeats`` rounds, every side once per
round, the order rotated by one each round (``stats.rotate``: none is always first). Reported: the
median of each side, podnet / baseline (the figure that compares across machines) and, for a
tunnel, baseline / direct. A ratio whose sides are missing, zero or not finite is ``n/a`` with the
reason (``stats.ratio``). ``--quick``: 3 rounds x 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack

from podnet.bench.min_ipip import MinimalIPIP
from podnet.bench.stats import median_or_none, ratio, rotate
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.vxlan import VTEP, VXLANTunnel, vtep_mac
from podnet.lab import cluster
from podnet.lab.naming import LabNames
from podnet.lab.netns import create_netns, delete_netns, spawn
from podnet.lab.topology import LabSpec, random_underlay

MODES = ("none", "vxlan", "ipip")
MTU = {"none": 1500, "vxlan": 1450, "ipip": 1480}
DEFAULTS = {"repeats": 3, "duration": 3.0}
QUICK = {"repeats": 3, "duration": 1.0}


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
    """Two nodes and two pods wired by hand (no podnet agent, IPAM or CNI): the baseline.

    IPIP: :class:`MinimalIPIP` on each node, pod routes via ``tunl0``; rp_filter is off on the
    nodes (decapsulated packets arrive on eth0 with sources routed via tunl0), as in a fresh netns.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        tag = secrets.token_hex(2)
        self.ns = {k: f"pnhb{tag}-{k}" for k in ("fabric", "n1", "n2", "p1", "p2")}
        self.pod_ip = {"p1": "10.250.1.2", "p2": "10.250.2.2"}
        self.tunnels: list[MinimalIPIP] = []

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
            elif self.mode == "ipip":  # the bench's own one-peer tc program, not podnet's
                with Netlink.open(ns[other]) as nl:
                    peer_mac = nl.link_get("eth0").mac or ""
                tunnel = MinimalIPIP(ns[node], node_ip[node], node_ip[other], peer_mac, mtu=MTU["ipip"])
                self.tunnels.append(tunnel)
                tunnel.ensure()
                with Netlink.open(ns[node]) as nl:
                    nl.sysctl_set_many({"net/ipv4/conf/all/rp_filter": 0, "net/ipv4/conf/eth0/rp_filter": 0})
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


def sides_of(mode: str) -> list[str]:
    """The sides measured for ``mode``: podnet and its hand-built baseline, and for a tunnel the
    hand-built direct path as well (what the tunnel itself costs)."""
    return ["podnet", "baseline"] if mode == "none" else ["podnet", "baseline", "direct"]


def schedule(sides: Sequence[str], repeats: int) -> list[list[str]]:
    """The side order of every round: rotated by one each round."""
    return [rotate(sides, r) for r in range(repeats)]


PAIRS = {"podnet/baseline": ("podnet", "baseline"), "baseline/direct": ("baseline", "direct")}


def quartiles(values: Sequence[float]) -> list[float] | None:
    """``[p25, p75]`` (inclusive method), the spread of per-round ratios; None under 2 values."""
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [round(q1, 3), round(q3, 3)]


def summarize(runs: dict[str, list[float]]) -> dict:
    """Medians (Gbit/s, None without samples) and the guarded ratios of one mode's samples: of
    the medians (``value``), and per round (sample i of each side was taken in round i) with
    their median (``median_of_rounds``), which a drift between rounds does not move, and their
    spread (``rounds_p25_p75``)."""
    med = {side: median_or_none(values) for side, values in runs.items()}
    ratios = {}
    for name, (num, den) in PAIRS.items():
        if num not in runs or den not in runs:
            continue
        per_round = [ratio(a, b, names=(num, den)).value for a, b in zip(runs[num], runs[den], strict=False)]
        usable = [r for r in per_round if r is not None]
        ratios[name] = {
            **ratio(med[num], med[den], names=(num, den)).to_dict(),
            "per_round": per_round,
            "median_of_rounds": round(statistics.median(usable), 3) if usable else None,
            "rounds_p25_p75": quartiles(usable),
        }
    return {
        "gbps": {side: None if v is None else round(v, 2) for side, v in med.items()},
        "ratio": ratios["podnet/baseline"]["value"],
        "ratios": ratios,
    }


def podnet_side(stack: ExitStack, mode: str) -> tuple[str, str, str]:
    """A 2-node podnet lab in ``mode`` with pods t1 (node-1) and t2 (node-2) Running:
    ``(client netns, server netns, server IP)``. Torn down when ``stack`` closes."""
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.model import lookup, parse_resource

    names = LabNames(f"pntp{secrets.token_hex(2)}-")
    spec = LabSpec(nodes=2, encapsulation=mode, underlay=random_underlay())
    stack.callback(cluster.remove, names)  # also what a lab that failed half-way left
    info = cluster.up(spec, names)
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
    return names.pod_ns("default", "t1"), names.pod_ns("default", "t2"), pods["t2"].status.pod_ip


def run(
    modes: Sequence[str], repeats: int = DEFAULTS["repeats"], duration: float = DEFAULTS["duration"]
) -> dict:
    """``{mode: {"gbps", "ratio", "ratios", "samples", "order"}}``; see the module docstring."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or repeats < 1 or duration <= 0:
        raise ValueError(f"modes from {MODES} (not {unknown}), repeats >= 1 and duration > 0")
    results = {}
    for mode in modes:
        with ExitStack() as stack:
            paths = {"podnet": podnet_side(stack, mode)}
            hand = stack.enter_context(HandBuilt(mode))
            paths["baseline"] = (hand.ns["p1"], hand.ns["p2"], hand.pod_ip["p2"])
            if "direct" in sides_of(mode):
                direct = stack.enter_context(HandBuilt("none"))
                paths["direct"] = (direct.ns["p1"], direct.ns["p2"], direct.pod_ip["p2"])
            order = schedule(sides_of(mode), repeats)
            runs: dict[str, list[float]] = {side: [] for side in paths}
            for sides in order:  # interleaved, so drift on the machine hits every side alike
                for side in sides:
                    runs[side].append(iperf(*paths[side], duration))
            results[mode] = {**summarize(runs), "samples": runs, "order": order}
    return results


def _cell(gbps: float | None, r: dict | None = None) -> str:
    if gbps is None:
        return "-"
    if r is None:
        return f"{gbps:.2f}"
    return f"{gbps:.2f} " + (f"x{r['value']:.2f}" if r["value"] is not None else "x n/a")


def render(results: dict, repeats: int, duration: float) -> str:
    """The table: Gbit/s medians, each with its ratio as the README's bench table writes them
    (``12.80 x0.98``: podnet vs the baseline, the baseline vs the hand-built direct path)."""
    head = ("mode", "podnet vs by hand", "by hand vs direct", "direct by hand")
    rows = []
    notes: list[str] = []
    rounds: list[str] = []
    for mode, r in results.items():
        ratios = r["ratios"]
        rows.append(
            (
                mode,
                _cell(r["gbps"].get("podnet"), ratios["podnet/baseline"]),
                _cell(r["gbps"].get("baseline"), ratios.get("baseline/direct")),
                _cell(r["gbps"].get("direct")),
            )
        )
        notes += [f"{mode} {name}: n/a, {x['reason']}" for name, x in ratios.items() if x["value"] is None]
        rounds += [
            f"{mode} {name} {x['median_of_rounds']:.2f}"
            + (" (p25-p75 {:.2f}-{:.2f})".format(*x["rounds_p25_p75"]) if x["rounds_p25_p75"] else "")
            for name, x in ratios.items()
            if x["median_of_rounds"] is not None
        ]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        f"pod -> pod TCP, 1 stream, Gbit/s: medians of {repeats} rounds x {duration:g} s, "
        "side order rotated each round",
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *rows]
    ]
    if rounds:
        lines.append("median of the per-round ratios: " + ", ".join(rounds))
    return "\n".join([*lines, *notes])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.bench.throughput")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument(
        "--repeats", type=int, help=f"rounds (default {DEFAULTS['repeats']}, quick {QUICK['repeats']})"
    )
    ap.add_argument(
        "--duration", type=float, help=f"seconds per run (default {DEFAULTS['duration']:g}, quick 1)"
    )
    ap.add_argument("--quick", action="store_true", help=f"{QUICK['repeats']} rounds x 1 s")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    defaults = QUICK if args.quick else DEFAULTS
    repeats = args.repeats if args.repeats is not None else int(defaults["repeats"])
    duration = args.duration if args.duration is not None else float(defaults["duration"])
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: choose from {', '.join(MODES)}")
    if repeats < 1 or duration <= 0:
        ap.error("--repeats must be >= 1 and --duration > 0")
    results = run(modes, repeats, duration)
    if args.output == "json":
        print(json.dumps(results, indent=2))
    else:
        print(render(results, repeats, duration))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
