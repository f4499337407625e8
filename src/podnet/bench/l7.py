"""What an L7 policy costs: HTTP through the node's L7 proxy against the same pods under the
policy's L3/L4 part only (Cilium profile).

    python -m podnet.bench.l7 [--repeats 5] [--duration 5] [--quick] [--json PATH]

One private 2-node Cilium lab (its own prefix, removed at the end whatever happens): ``client`` on
node-1; ``server-l4`` and ``server-l7`` on node-2, each running nginx (:mod:`podnet.bench.services`).
Two CiliumNetworkPolicies let the client reach nginx's port: on ``server-l4`` at L3/L4 only, on
``server-l7`` with the seed's kind of HTTP rule (``GET`` on any path), which redirects every
connection to node-2's HAProxy. Before measuring, a ``POST`` to ``server-l7`` must get the proxy's
403 (the proxy is in the path) and one to ``server-l4`` nginx's answer (it is not).

Scenarios, each a wrk run from the client pod (its cgroup, then its netns), interleaved per round
(the two servers' order rotated each round), ``--repeats`` rounds after a discarded warm-up::

    keepalive_1    one keep-alive connection (-c1): requests/s, p50, p99
    keepalive_16   16 keep-alive connections: requests/s, p99
    close_16       16 connections, each request a new one (Connection: close): requests/s

Ratios are L7 / L3-L4 of the medians. Goals (issue 15): with one keep-alive connection, L7 keeps
at least half the requests/s, and its p99 is at most 1 ms above.

DNS: sequential lookups of a cluster name for ``--duration`` seconds from ``client`` (its lookups
go straight to the cluster DNS) and from ``client-dns`` (a DNS rule allowing that name sends them
through node-1's DNS proxy), interleaved: lookups/s and p99. Control: another name is REFUSED to
``client-dns`` only (the proxy is in its path, not in ``client``'s).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from podnet.bench.services import NGINX_PORT, start_nginx, wrk_in_pod
from podnet.bench.stats import rotate
from podnet.lab.naming import LabNames

BENCH_PREFIX = "pnl7-"
NAMESPACE = "bench"
CLIENT, L4, L7 = "client", "server-l4", "server-l7"
DNS_CLIENT = "client-dns"  # its lookups go through the DNS proxy (a DNS rule); CLIENT's go direct
DNS_NAME = "kube-dns.kube-system.svc.cluster.local."  # answered by the cluster DNS itself
DNS_CONTROL_NAME = "kubernetes.default.svc.cluster.local."  # not allowed by the DNS rule
SCENARIOS = {  # name -> (connections, Connection: close)
    "keepalive_1": (1, False),
    "keepalive_16": (16, False),
    "close_16": (16, True),
}
GOAL_RPS_RATIO = 0.5
GOAL_P99_EXTRA_MS = 1.0
READY_TIMEOUT = 60.0


@dataclass
class Options:
    repeats: int = 5
    duration: int = 5  # seconds per wrk run (wrk takes whole seconds)


QUICK = Options(repeats=1, duration=1)


def policies() -> list[dict]:
    """The two CNPs: the same L3/L4 part, one with an HTTP rule."""

    def cnp(name: str, server: str, rules: dict | None) -> dict:
        port: dict[str, Any] = {"ports": [{"port": str(NGINX_PORT), "protocol": "TCP"}]}
        if rules is not None:
            port["rules"] = rules
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": server}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": CLIENT}}], "toPorts": [port]}],
            },
        }

    dns = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "dns", "namespace": NAMESPACE},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": DNS_CLIENT}},
            "egress": [
                {
                    "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}}],
                    "toPorts": [
                        {
                            "ports": [{"port": "53", "protocol": "ANY"}],
                            "rules": {"dns": [{"matchName": DNS_NAME.rstrip(".")}]},
                        }
                    ],
                }
            ],
        },
    }
    return [cnp("l4", L4, None), cnp("l7", L7, {"http": [{"method": "GET", "path": "/.*"}]}), dns]


#: one process in a client pod: sequential lookups for DURATION seconds; prints count and p99 (ms)
LOOKUP_LOOP = """
import sys, time, dns.resolver
name, duration = sys.argv[1], float(sys.argv[2])
resolver = dns.resolver.Resolver()
latencies = []
end = time.monotonic() + duration
while time.monotonic() < end:
    started = time.monotonic()
    resolver.resolve(name, "A", search=False, lifetime=2)
    latencies.append(time.monotonic() - started)
latencies.sort()
print(len(latencies), latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0)
"""


def lookups_in_pod(netns: str, cgroup: str, duration: int) -> tuple[float, float]:
    """(lookups/s, p99 ms) of :data:`LOOKUP_LOOP` in the pod (its cgroup, then its netns)."""
    import subprocess

    from podnet.lab.netns import IP, join_cgroup

    cmd = [IP, "netns", "exec", netns, sys.executable, "-c", LOOKUP_LOOP, DNS_NAME, str(duration)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=join_cgroup(cgroup), timeout=duration + 30
    )
    if out.returncode != 0:
        raise RuntimeError(f"L7 bench: lookups in {netns} failed: {out.stderr.strip()[-500:]}")
    count, p99 = out.stdout.split()
    return int(count) / duration, float(p99)


def _pods() -> list[dict]:
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for pod, node in ((CLIENT, "node-1"), (DNS_CLIENT, "node-1"), (L4, "node-2"), (L7, "node-2")):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE, "labels": {"app": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            }
        )
    return docs


def _status(netns: str, ip: str, method: str, timeout: float = 2.0) -> int | None:
    """One request's status from the client's netns (None: no answer)."""
    from podnet.dataplane.netns import in_netns
    from podnet.lab.probe import HttpProbe, http_request

    with in_netns(netns):
        return http_request(ip, NGINX_PORT, HttpProbe(method, "/"), timeout, attempts=1).http_status


def _wait(what: str, check, timeout: float = READY_TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"L7 bench: {what} not within {timeout:g} s")
        time.sleep(0.2)


def run(opts: Options, step=lambda text: None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.probe import dns_in_pod
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import lookup, parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    out: dict[str, Any] = {
        "params": {"repeats": opts.repeats, "duration_s": opts.duration},
        "goals": {"rps_ratio_keepalive_1": GOAL_RPS_RATIO, "p99_extra_ms_keepalive_1": GOAL_P99_EXTRA_MS},
        "sides": {L4: {}, L7: {}},
    }
    try:
        step("lab up")
        info = cluster.up(LabSpec(nodes=2, profile="cilium", underlay=random_underlay(), dns=True), names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        store.apply([parse_resource(d) for d in [*_pods(), *policies()]])

        def running() -> dict[str, Any] | None:
            pods = {p.metadata.name: p for p in store.list(lookup("pods"), NAMESPACE)}
            ok = len(pods) == 4 and all(p.status and p.status.phase == "Running" for p in pods.values())
            return pods if ok else None

        _wait("the bench pods Running", lambda: running() is not None)
        pods = running() or {}
        ips = {name: pods[name].status.pod_ip for name in pods}
        for server in (L4, L7):
            start_nginx(
                names,
                server,
                names.pod_ns(NAMESPACE, server),
                names.pod_cgroup("node-2", pods[server].metadata.uid),
            )
        client_ns = names.pod_ns(NAMESPACE, CLIENT)
        client_cg = names.pod_cgroup("node-1", pods[CLIENT].metadata.uid)
        step("the proxy in the L7 path only")
        _wait(
            "GET through both policies",
            lambda: _status(client_ns, ips[L4], "GET") == 200 and _status(client_ns, ips[L7], "GET") == 200,
        )
        post = {server: _status(client_ns, ips[server], "POST") for server in (L4, L7)}
        if post[L7] != 403 or post[L4] in (403, None):
            raise RuntimeError(f"L7 bench: POST answered {post}: the proxy is not (only) in the L7 path")
        out["control"] = {"post_status": post}
        for server in (L4, L7):  # warm-up, discarded
            wrk_in_pod(client_ns, client_cg, f"http://{ips[server]}:{NGINX_PORT}/", 1, 1, 1, False)
        samples: dict[str, dict[str, list[dict[str, float]]]] = {L4: {}, L7: {}}
        for r in range(opts.repeats):
            for scenario, (connections, close) in SCENARIOS.items():
                step(f"round {r + 1}/{opts.repeats}: {scenario}")
                for server in rotate([L4, L7], r):
                    result = wrk_in_pod(
                        client_ns,
                        client_cg,
                        f"http://{ips[server]}:{NGINX_PORT}/",
                        opts.duration,
                        1,
                        connections,
                        close,
                    )
                    samples[server].setdefault(scenario, []).append(
                        {
                            "rps": result.requests_per_s,
                            "p50_ms": result.latency_ms.get("p50", float("nan")),
                            "p99_ms": result.latency_ms.get("p99", float("nan")),
                            "errors": result.error_count,
                        }
                    )
        for server in (L4, L7):
            for scenario, runs in samples[server].items():
                out["sides"][server][scenario] = {
                    "samples": runs,
                    "rps": statistics.median(s["rps"] for s in runs),
                    "p50_ms": statistics.median(s["p50_ms"] for s in runs),
                    "p99_ms": statistics.median(s["p99_ms"] for s in runs),
                    "errors": sum(s["errors"] for s in runs),
                }
        step("DNS lookups: through the DNS proxy vs direct")
        dns_cg = names.pod_cgroup("node-1", pods[DNS_CLIENT].metadata.uid)
        dns_sides = {"direct": (client_ns, client_cg), "proxy": (names.pod_ns(NAMESPACE, DNS_CLIENT), dns_cg)}
        _wait("the DNS client's lookups", lambda: lookups_in_pod(*dns_sides["proxy"], 1)[0] > 0)
        other = {side: dns_in_pod(*where, DNS_CONTROL_NAME).detail for side, where in dns_sides.items()}
        if other["proxy"] != "REFUSED" or other["direct"] == "REFUSED":
            raise RuntimeError(
                f"L7 bench: {DNS_CONTROL_NAME} answered {other}: the DNS proxy is not (only) in its path"
            )
        out["control"]["dns_other_name"] = other
        lookups: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy": []}
        for r in range(opts.repeats):
            for side in rotate(["direct", "proxy"], r):
                lookups[side].append(lookups_in_pod(*dns_sides[side], opts.duration))
        out["dns"] = {
            side: {
                "samples": [{"lookups_per_s": n, "p99_ms": p} for n, p in runs],
                "lookups_per_s": statistics.median(n for n, _ in runs),
                "p99_ms": statistics.median(p for _, p in runs),
            }
            for side, runs in lookups.items()
        }
        out["dns"]["ratio"] = round(
            out["dns"]["proxy"]["lookups_per_s"] / out["dns"]["direct"]["lookups_per_s"], 3
        )
        out["ratios"] = {
            scenario: round(out["sides"][L7][scenario]["rps"] / out["sides"][L4][scenario]["rps"], 3)
            for scenario in SCENARIOS
            if out["sides"][L4][scenario]["rps"] > 0
        }
        one = out["sides"]
        out["p99_extra_ms"] = {
            scenario: round(one[L7][scenario]["p99_ms"] - one[L4][scenario]["p99_ms"], 3)
            for scenario in SCENARIOS
        }
    finally:
        step("lab down")
        cluster.remove(names)
    return out


def render(r: dict[str, Any]) -> str:
    lines = [
        f"L7 policy cost (HTTP through the node's proxy vs the L3/L4 part only), "
        f"{r['params']['repeats']} x {r['params']['duration_s']} s, medians",
        f"  {'scenario':<14}{'L3/L4 req/s':>13}{'L7 req/s':>11}{'ratio':>8}{'goal':>7}"
        f"{'L3/L4 p99':>11}{'L7 p99':>9}{'+p99':>8}{'goal':>8}",
    ]
    for scenario in SCENARIOS:
        l4, l7 = r["sides"][L4].get(scenario), r["sides"][L7].get(scenario)
        if not l4 or not l7:
            continue
        goal_ratio = f">={GOAL_RPS_RATIO:g}" if scenario == "keepalive_1" else ""
        goal_p99 = f"<=+{GOAL_P99_EXTRA_MS:g}" if scenario == "keepalive_1" else ""
        lines.append(
            f"  {scenario:<14}{l4['rps']:>13,.0f}{l7['rps']:>11,.0f}{r['ratios'].get(scenario, 0):>8.2f}"
            f"{goal_ratio:>7}{l4['p99_ms']:>9.2f}ms{l7['p99_ms']:>7.2f}ms{r['p99_extra_ms'][scenario]:>+8.2f}"
            f"{goal_p99:>8}"
        )
    dns = r.get("dns")
    if dns:
        lines.append(
            f"  DNS lookups/s (one client, sequential): direct {dns['direct']['lookups_per_s']:,.0f} "
            f"(p99 {dns['direct']['p99_ms']:.2f} ms), "
            f"through the DNS proxy {dns['proxy']['lookups_per_s']:,.0f} "
            f"(p99 {dns['proxy']['p99_ms']:.2f} ms): {dns['ratio']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podnet.bench.l7", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--duration", type=int, default=None, help="seconds per wrk run")
    parser.add_argument("--quick", action="store_true", help="CI size: one short round")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every sample here")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Options()
    opts = Options(args.repeats or base.repeats, args.duration or base.duration)
    result = run(opts, step=lambda text: print(f"[l7 bench] {text}", file=sys.stderr))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
