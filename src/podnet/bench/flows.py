"""What flow records cost: the same pods with ClusterConfiguration ``flows`` on and off, per profile.

One 2-node lab per profile: ``client`` on node-1, ``server`` on node-2 (nginx, and an iperf3
server per run). Each round switches flows on or off (interleaved, the order alternating) and
fences on every agent's ``/healthz`` saying the datapath applies it (Cilium: the tc programs are
asked for a trace event per new connection or not; Calico: the policy table tracks every
connection and conntrack's events are read, or the untracked fast path is back) and on the agents
being idle again, then measures:

- ``tcp_1``: one iperf3 TCP stream client → server (Gbit/s);
- ``conn_s``: wrk with 16 connections, ``Connection: close``: new connections per second, each
  one a flow record on both nodes while flows are on.

Ratios are on / off of the medians (goal: at least 0.95 for both). Beside them: the flow records
the agents took in per second while flows were on, and the events the kernel could not hand over
(Cilium: the ring buffer full; Calico: conntrack events the socket could not hold), counted and
shown. The metrics counters (``pn_metrics``, ``table inet podnet_counters``) are part of the
datapath on both sides: what they cost is inside both figures.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from podnet.bench.agent_quiet import agent_cpu, wait_agents_quiet
from podnet.bench.stats import rotate
from podnet.lab.naming import LabNames

BENCH_PREFIX = "pnfl-"
PROFILES = ("calico", "cilium")
NAMESPACE = "bench"
CLIENT, SERVER = "client", "server"
SCENARIOS = {"tcp_1": "Gbit/s", "conn_s": "conn/s"}
GOAL_RATIO = 0.95
READY_TIMEOUT = 60.0
WRK_CONNECTIONS = 16
IPERF_CONNECTIONS = 2  # iperf3's control connection and its one stream


@dataclass
class Options:
    repeats: int = 5
    duration: int = 5  # seconds per run


QUICK = Options(repeats=1, duration=1)


def _pods() -> list[dict]:
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for pod, node in ((CLIENT, "node-1"), (SERVER, "node-2")):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE, "labels": {"app": pod}},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            }
        )
    return docs


def health(node_ns: str) -> dict[str, Any]:
    """The agent's ``/healthz`` document, asked inside the node's namespace."""
    from podnet.dataplane.netns import in_netns

    with in_netns(node_ns):
        try:
            return json.loads(urllib.request.urlopen("http://127.0.0.1:9099/healthz", timeout=5).read())
        except urllib.error.HTTPError as exc:  # 503 while not in sync: the document says why
            return json.loads(exc.read() or b"{}")


def _wait(what: str, check, timeout: float = READY_TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"flows bench: {what} not within {timeout:g} s")
        time.sleep(0.2)


def _counts(nodes: list[str]) -> tuple[int, int]:
    """(records the agents' rings took so far, events lost so far), summed over ``nodes``."""
    records = lost = 0
    for node_ns in nodes:
        doc = health(node_ns)
        records += int((doc.get("dropMonitor") or {}).get("seq") or 0)
        lost += int((doc.get("flows") or {}).get("lost") or 0)
    return records, lost


def _settled(nodes: list[str], quiet: float = 1.0, timeout: float = 20.0) -> tuple[int, int]:
    """:func:`_counts` once the agents have taken in what the run made (no new record for
    ``quiet`` seconds): a loaded agent reads its events in batches, some after the run."""
    last = _counts(nodes)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _counts(nodes)
        if now == last:
            return now
        last = now
    return last


def _profile(profile: str, opts: Options, step) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from podnet.bench.datapath import Side, iperf
    from podnet.bench.services import NGINX_PORT, start_nginx, wrk_in_pod
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import lookup, parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    samples: dict[str, dict[str, list[float]]] = {
        "on": {s: [] for s in SCENARIOS},
        "off": {s: [] for s in SCENARIOS},
    }
    rates: list[float] = []
    completeness: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}  # the agents' CPU seconds per second
    lost_during: dict[str, int] = {"on": 0, "off": 0}
    try:
        step(f"{profile}: lab up")
        info = cluster.up(LabSpec(nodes=2, profile=profile, underlay=random_underlay()), names)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        store.apply([parse_resource(d) for d in _pods()])
        nodes = [names.node_ns(n) for n in ("node-1", "node-2")]

        def running() -> dict[str, Any] | None:
            pods = {p.metadata.name: p for p in store.list(lookup("pods"), NAMESPACE)}
            ok = len(pods) == 2 and all(p.status and p.status.phase == "Running" for p in pods.values())
            return pods if ok else None

        _wait("the bench pods Running", lambda: running() is not None)
        pods = running() or {}
        server_ip = pods[SERVER].status.pod_ip
        client_cg = names.pod_cgroup("node-1", pods[CLIENT].metadata.uid)
        server_cg = names.pod_cgroup("node-2", pods[SERVER].metadata.uid)
        client_ns, server_ns = names.pod_ns(NAMESPACE, CLIENT), names.pod_ns(NAMESPACE, SERVER)
        start_nginx(names, SERVER, server_ns, server_cg)
        side = Side(profile, names.prefix, client_ns, server_ns, server_ip, client_cg, server_cg)
        config = cluster.cluster_resources(info.topology)[0]
        url = f"http://{server_ip}:{NGINX_PORT}/"

        def switch(on: bool) -> None:
            doc = {**config, "spec": {**config["spec"], "flows": on}}
            store.apply([parse_resource(doc)])
            _wait(
                f"flows {'on' if on else 'off'} on every node",
                lambda: all(bool((health(n).get("flows") or {}).get("on")) == on for n in nodes),
            )
            wait_agents_quiet(names, READY_TIMEOUT)  # the sync the switch started

        for r in range(opts.repeats):
            for state in rotate(["on", "off"], r):
                step(f"{profile}: round {r + 1}/{opts.repeats}, flows {state}")
                switch(state == "on")
                wrk_in_pod(client_ns, client_cg, url, 1, 1, 1, True)  # warm: nginx and the path
                before, lost_before = _counts(nodes)
                started, cpu_before = time.monotonic(), agent_cpu(names)
                samples[state]["tcp_1"].append(iperf(side, opts.duration).gbps)
                result = wrk_in_pod(client_ns, client_cg, url, opts.duration, 1, WRK_CONNECTIONS, True)
                samples[state]["conn_s"].append(result.requests_per_s)
                ended = time.monotonic()
                cpu[state].append((agent_cpu(names) - cpu_before) / (ended - started))
                after, lost_after = _settled(nodes)
                lost_during[state] += lost_after - lost_before
                # every connection is a record on each node while flows are on: iperf3's two, wrk's
                made = 2 * (result.requests + IPERF_CONNECTIONS)
                completeness[state].append((after - before) / made)
                if state == "on":
                    rates.append((after - before) / (ended - started))
    finally:
        step(f"{profile}: lab down")
        cluster.remove(names)
    medians = {state: {s: statistics.median(v) for s, v in by.items()} for state, by in samples.items()}
    return {
        "samples": samples,
        "medians": medians,
        "ratios": {s: round(medians["on"][s] / medians["off"][s], 3) for s in SCENARIOS},
        "records_per_s": round(statistics.median(rates), 1) if rates else 0.0,
        # records / (2 x connections): 1.0 with flows on (none missing), 0.0 with them off
        "records_complete": {state: round(min(v), 3) if v else 0.0 for state, v in completeness.items()},
        "events_lost": lost_during,
        "agent_cpu": {state: round(statistics.median(v), 3) if v else 0.0 for state, v in cpu.items()},
    }


def ring_memory(count: int = 4096) -> dict[str, float]:
    """What ``count`` new-connection records cost an agent's ring (tracemalloc): Cilium trace
    events annotated as the agent does, each with its own addresses, ports and time."""
    import socket
    import struct
    import tracemalloc

    from podnet.agent.bpf_events import BpfEvents
    from podnet.agent.drops import DropMonitor
    from podnet.calc.policy import PodInfo
    from podnet.dataplane import cilium_maps as cm

    pods = [PodInfo("bench", f"client-{i}", {"app": "client"}, (f"10.244.1.{i}",)) for i in range(1, 200)]
    events = BpfEvents("node-1", "/nonexistent", lambda: pods, lambda e: None, lambda e: None,
                       lambda r: None, lambda v, t: None, lambda: 0)  # fmt: skip
    raws = [
        struct.pack(
            "=BBBBHBBIIII4s4sHHIQB7x",
            cm.EVENT_TRACE,
            0,
            0,
            1,
            7,
            6,
            2,
            9,
            300,
            301,
            0,
            socket.inet_aton(f"10.244.1.{1 + i % 199}"),
            socket.inet_aton("10.244.2.7"),
            socket.htons(30000 + i),
            socket.htons(8080),
            60,
            10**9 + i * 1000,
            4,
        )
        for i in range(count)
    ]
    tracemalloc.start()
    try:
        ring = DropMonitor("node-1", lambda: pods, lambda: None, open_reader=lambda: None, capacity=count)  # type: ignore[arg-type,return-value]
        before = tracemalloc.get_traced_memory()[0]
        for raw in raws:
            ring.add_records(events.records([cm.decode_event(raw)]))
        grown = tracemalloc.get_traced_memory()[0] - before
        ring.query(limit=count)  # read: every record annotated (what it holds after a podnet observe)
        read = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {
        "records": count,
        "mib": round(grown / 2**20, 2),
        "bytes_per_record": round(grown / count),
        "mib_read": round(read / 2**20, 2),
    }


def run(opts: Options, profiles: tuple[str, ...] = PROFILES, step=lambda text: None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {
        "params": {"repeats": opts.repeats, "duration_s": opts.duration, "wrk_connections": WRK_CONNECTIONS},
        "goal_ratio": GOAL_RATIO,
        "ring_memory": ring_memory(),
        "profiles": {p: _profile(p, opts, step) for p in profiles},
    }


def render(r: dict[str, Any]) -> str:
    lines = [
        f"Flow records on vs off, {r['params']['repeats']} x {r['params']['duration_s']} s, medians",
        f"  {'profile':<9}{'scenario':<9}{'off':>12}{'on':>12}{'ratio':>8}{'goal':>8}",
    ]
    for profile, p in r["profiles"].items():
        for scenario, unit in SCENARIOS.items():
            off, on = p["medians"]["off"][scenario], p["medians"]["on"][scenario]
            fmt = "{:>12.2f}" if unit == "Gbit/s" else "{:>12,.0f}"
            lines.append(
                f"  {profile:<9}{scenario:<9}{fmt.format(off)}{fmt.format(on)}{p['ratios'][scenario]:>8.3f}"
                f"{'>=' + format(r['goal_ratio'], 'g'):>8}  {unit}"
            )
        lost = p["events_lost"]
        lines.append(
            f"  {profile:<9}flow records taken in while on: {p['records_per_s']:,.0f}/s, "
            f"{p['records_complete']['on']:.3f} of one per connection per node "
            f"({p['records_complete']['off']:.3f} with flows off); "
            f"events lost: {lost['on']} (on), {lost['off']} (off)"
        )
        lines.append(
            f"  {profile:<9}agents' CPU while measuring: {p['agent_cpu']['on']:.2f} s/s with flows on, "
            f"{p['agent_cpu']['off']:.2f} s/s off"
        )
    m = r["ring_memory"]
    lines.append(
        f"  the agent's ring: {m['mib']:.2f} MiB per {m['records']:,} new-connection records "
        f"({m['bytes_per_record']:,} bytes each; {m['mib_read']:.2f} MiB once read, every record annotated)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podnet.bench.flows", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--duration", type=int, default=None, help="seconds per run")
    parser.add_argument("--profile", choices=PROFILES, action="append", help="only this profile (repeatable)")
    parser.add_argument("--quick", action="store_true", help="CI size: one short round")
    parser.add_argument("--json", default=None, metavar="PATH", help="write every sample here")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Options()
    opts = Options(args.repeats or base.repeats, args.duration or base.duration)
    profiles = tuple(args.profile) if args.profile else PROFILES
    result = run(opts, profiles, step=lambda text: print(f"[flows bench] {text}", file=sys.stderr))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
