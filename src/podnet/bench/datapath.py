"""The seed article's benchmark table, reproduced per profile against a hand-built kernel baseline.

    python -m podnet.bench.datapath [--profiles calico-ipip,cilium-vxlan] [--repeats 3]
                                    [--duration 10] [--quick] [--json PATH]

Five profiles, each a 2-node podnet lab (client pod ``bench/client`` on node-1, server pod
``bench/server`` on node-2, and ``bench/server-pol`` on node-2 that a NetworkPolicy selects and
opens to the client on nginx's port), and three baselines, one per data path, built by hand with no podnet
at all (:class:`podnet.bench.throughput.HandBuilt`: fabric bridge, two node namespaces, a pod
namespace behind a veth on each; plain routes, a VXLAN device, or the bench's own minimal tc-eBPF
IPIP, :mod:`podnet.bench.min_ipip`, independent of podnet's)::

    profile                   LabSpec                                        data path  baseline
    calico-ipip               calico, ipip                                   ipip       by hand, ipip
    calico-ipip-crosssubnet   calico, ipip-crosssubnet, subnets=2            ipip       by hand, ipip
    calico-bgp                calico, none, bgp (BIRD mesh)                  direct     by hand, none
    cilium-vxlan              cilium, vxlan                                  vxlan      by hand, vxlan
    cilium-direct             cilium, none (native routing)                  direct     by hand, none

With 2 subnets node-1 is in subnet 0 and node-2 in subnet 1 (``topology.node_subnet``), so
CrossSubnet encapsulates this pod pair; the lab routes it through ``pn-router`` (one more forwarding
hop than the single-bridge baseline, which has no router: part of what that ratio shows).

Scenarios (one sample per repeat; warm-up runs are discarded)::

    tcp_1, tcp_4          Gbit/s    iperf3 client pod -> server pod, 1 stream / -P 4
    cpu_per_gbit          CPU s     whole-machine busy CPU (/proc/stat: total - idle - iowait)
                          per Gbit  during the tcp_1 run, over the Gbit it moved
    latency_p50/_p99      ms        wrk keep-alive against nginx in the server pod at a fixed rate:
                                    Debian's wrk has no -R, so a Lua ``delay()`` makes each of
                                    PACED_CONNECTIONS connections wait PACED_DELAY_MS between a
                                    response and its next request: 10 x 1000/5 ms = 2,000 req/s
                                    at most (a little less: each request's own latency adds up)
    latency_sat_p50/_p99  ms        the same, unpaced: SATURATION_CONNECTIONS keep-alive connections
    conn_rate             conn/s    wrk with ``Connection: close``: every request a new TCP connection
    conntrack_entries     entries   right after it: netfilter conntrack entries between the client
                                    and the server on both nodes (0 when pod traffic is untracked)
    conn_rate_policy      conn/s    the same against ``server-pol`` (its node tracks what a policy
    conntrack_entries_policy        selects); a hand-built path has no policy: its server again

nginx and wrk come from :mod:`podnet.bench.services` (its config, ``start_nginx`` for a lab pod's
netns *and* cgroup, ``wrk_command``, ``parse_wrk``). The clients (iperf3, wrk, curl) join the client
pod's cgroup before entering its netns, as a pod's own processes are: a Cilium-style lab's
``connect()`` hooks then see them, which is part of the cost being measured. The hand-built pods are
plain namespaces: no cgroup.

Interleaving. Timings on a shared 2-core machine drift, so every figure is a ratio to a baseline
measured in the same run, interleaved. For each data path in turn, its hand-built baseline and every
requested profile lab that uses it are up *together* (at most one baseline and two 2-node labs:
light), and each round runs every scenario on every side before the next scenario::

    round r, scenario s: baseline, profile A, profile B    (order rotated by one each round)

so a drift hits all sides of a comparison within seconds of each other. The alternative, bringing
each lab up once per round, would cost a lab start (seconds of agent, etcd and BIRD work, which
itself disturbs the machine) per round and side for no gain in fairness; idle labs left up cost
every side the same. When a path's rounds are done its labs and baseline are torn down before the
next path's are built. A lab that fails to come up fails the run; everything is removed either way.

The result (``run``) is the schema the report and the CLI build on::

    {"machine": {"cpus", "kernel", "python"},
     "settings": {"repeats", "duration", "quick", ...pacing and wrk settings},
     "baselines": {PATH: {"pod_mtu", "scenarios": {SCENARIO: {"samples": [...], "unit": "..."}}}},
     "profiles": {NAME: {"path", "spec": LabSpec as dict, "pod_mtu",
                         "scenarios": {SCENARIO: {"samples": [...], "unit": "..."}}}},
     "wall_s": seconds}

(latency scenarios also carry ``rate_per_s``, the request rate wrk achieved, one per sample).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from podnet.bench.services import NGINX_PORT, WrkResult, nginx_command, nginx_config, parse_wrk, start_nginx
from podnet.bench.services import check_tools as check_wrk_nginx
from podnet.bench.services import wrk_command as services_wrk_command
from podnet.bench.stats import rotate
from podnet.bench.throughput import HandBuilt
from podnet.dataplane.policy import kernel_untracks
from podnet.lab.naming import MARKER_ENV, LabNames
from podnet.lab.netns import IP, Spawned, join_cgroup, spawn
from podnet.lab.topology import LabSpec, node_subnet, random_underlay

BENCH_PREFIX = "pndp-"  # each lab adds 4 hex digits: pndpXXXX-; hand-built processes carry one too
NAMESPACE = "bench"
CLIENT, CLIENT_NODE = "client", "node-1"
SERVER, SERVER_NODE = "server", "node-2"
POLICY_SERVER = "server-pol"  # on SERVER_NODE, selected by POLICY
CLIENT_LABELS = {"role": "client"}
POLICY_LABELS = {"app": POLICY_SERVER}

PATHS = ("direct", "vxlan", "ipip")
HANDBUILT_MODE = {"direct": "none", "vxlan": "vxlan", "ipip": "ipip"}  # data path -> HandBuilt mode


@dataclass(frozen=True)
class Profile:
    spec: dict[str, Any]  # LabSpec keyword arguments (nodes and underlay are added per run)
    path: str  # the data path between the two pods: direct | vxlan | ipip


PROFILES: dict[str, Profile] = {
    "calico-ipip": Profile({"profile": "calico", "encapsulation": "ipip"}, "ipip"),
    "calico-ipip-crosssubnet": Profile(
        {"profile": "calico", "encapsulation": "ipip-crosssubnet", "subnets": 2}, "ipip"
    ),
    "calico-bgp": Profile({"profile": "calico", "encapsulation": "none", "bgp": True}, "direct"),
    "cilium-vxlan": Profile({"profile": "cilium", "encapsulation": "vxlan"}, "vxlan"),
    "cilium-direct": Profile({"profile": "cilium", "encapsulation": "none"}, "direct"),
}

SCENARIOS: dict[str, str] = {  # key -> unit, in report order
    "tcp_1": "Gbit/s",
    "tcp_4": "Gbit/s",
    "latency_p50": "ms",
    "latency_p99": "ms",
    "latency_sat_p50": "ms",
    "latency_sat_p99": "ms",
    "conn_rate": "conn/s",
    "conntrack_entries": "entries",
    "conn_rate_policy": "conn/s",
    "conntrack_entries_policy": "entries",
    "cpu_per_gbit": "CPU s/Gbit",
}
# One measurement run yields one or more scenarios' samples.
MEASUREMENTS: dict[str, tuple[str, ...]] = {
    "tcp_1": ("tcp_1", "cpu_per_gbit"),
    "tcp_4": ("tcp_4",),
    "paced": ("latency_p50", "latency_p99"),
    "saturated": ("latency_sat_p50", "latency_sat_p99"),
    "conn_rate": ("conn_rate", "conntrack_entries"),
    "conn_rate_policy": ("conn_rate_policy", "conntrack_entries_policy"),
}

PACED_RATE = 2000  # requests/s aimed at by the fixed-rate latency run
PACED_CONNECTIONS = 10
SATURATION_CONNECTIONS = 16
CONN_RATE_CONNECTIONS = 16
WRK_THREADS = 1  # two cores: one for wrk, one for nginx (and the kernel's softirqs on both)
STREAMS = {"tcp_1": 1, "tcp_4": 4}
DEFAULTS = {"repeats": 3, "duration": 10.0}
QUICK = {"repeats": 1, "duration": 2.0}
READY_TIMEOUT = 60.0

ProgressFn = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------ pure parts


def profile_spec(name: str, underlay: str | None = None) -> LabSpec:
    """The 2-node LabSpec of profile ``name`` (random throw-away underlay unless given), flow
    records off: the data path itself against the bare kernel; what flows add is
    :mod:`podnet.bench.flows`' measurement (with them on the Calico profile tracks every
    connection, and the policy rows' tracked/untracked contrast would be gone)."""
    return LabSpec(nodes=2, underlay=underlay or random_underlay(), flows=False, **PROFILES[name].spec)


def nodes_cross_subnets(spec: LabSpec) -> bool:
    """Whether the client's node (node-1) and the server's (node-2) are in different subnets."""
    return node_subnet(spec, 1) != node_subnet(spec, 2)


def paced_delay_ms(rate: float, connections: int) -> int:
    """The per-connection pause (whole ms, wrk's timer unit) that paces ``connections`` keep-alive
    connections to about ``rate`` requests/s in total."""
    if rate <= 0 or connections < 1:
        raise ValueError("rate and connections must be positive")
    return max(1, round(connections * 1000 / rate))


def paced_rate(connections: int, delay_ms: float, latency_ms: float = 0.0) -> float:
    """Requests/s of ``connections`` connections that each wait ``delay_ms`` after a response that
    took ``latency_ms``: the ceiling (latency 0) and what to expect."""
    return connections * 1000 / (delay_ms + latency_ms)


PACED_DELAY_MS = paced_delay_ms(PACED_RATE, PACED_CONNECTIONS)


def pacing_script(delay_ms: int) -> str:
    """A wrk Lua script: each connection waits ``delay_ms`` before each request."""
    return (
        "-- podnet.bench.datapath: fixed-rate pacing (wrk has no -R)\n"
        f"function delay()\n  return {int(delay_ms)}\nend\n"
    )


def parse_proc_stat(text: str) -> tuple[int, int]:
    """``(busy, total)`` jiffies of the whole machine from /proc/stat's ``cpu`` line: total = user +
    nice + system + idle + iowait + irq + softirq + steal (guest time is already in user), busy =
    total - idle - iowait."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:9]] + [0] * (8 - len(parts[1:9]))
            total = sum(values)
            return total - values[3] - values[4], total
    raise ValueError("no aggregate cpu line in /proc/stat")


def cpu_seconds(before: tuple[int, int], after: tuple[int, int], hz: int) -> float:
    """Busy CPU seconds (all CPUs together) between two ``parse_proc_stat`` readings."""
    return (after[0] - before[0]) / hz


def cpu_per_gbit(busy_seconds: float, gbps: float, seconds: float) -> float:
    """CPU seconds spent per Gbit moved at ``gbps`` for ``seconds``."""
    gbit = gbps * seconds
    if gbit <= 0:
        raise ValueError("no data moved")
    return busy_seconds / gbit


def baseline_side(path: str) -> str:
    return f"baseline/{path}"


@dataclass(frozen=True)
class Step:
    """One step of a run: ``baseline`` (build a path's hand baseline), ``lab`` (bring a profile up),
    ``warmup`` (a side, discarded), ``measure`` (a side, a measurement, a round), ``teardown`` (a
    path's labs and baseline)."""

    kind: str
    path: str
    side: str = ""
    measurement: str = ""
    round: int = -1

    def describe(self, repeats: int) -> str:
        if self.kind == "baseline":
            return f"build the hand-made {self.path} baseline"
        if self.kind == "lab":
            return f"bring up the {self.side} lab"
        if self.kind == "warmup":
            return f"warm up {self.side}"
        if self.kind == "measure":
            return f"round {self.round + 1}/{repeats}: {self.measurement} on {self.side}"
        return f"tear down the {self.path} labs and baseline"


def group_by_path(profiles: Sequence[str]) -> dict[str, list[str]]:
    """``{path: [profiles]}`` in PATHS order, profiles in the order given; paths nobody uses left out."""
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise ValueError(f"unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    groups: dict[str, list[str]] = {}
    for path in PATHS:
        members = [p for p in dict.fromkeys(profiles) if PROFILES[p].path == path]
        if members:
            groups[path] = members
    return groups


def plan(profiles: Sequence[str], repeats: int) -> list[Step]:
    """Every step of a run, in order (the progress total is its length)."""
    steps: list[Step] = []
    for path, members in group_by_path(profiles).items():
        sides = [baseline_side(path), *members]
        steps.append(Step("baseline", path, baseline_side(path)))
        steps += [Step("lab", path, m) for m in members]
        steps += [Step("warmup", path, s) for s in sides]
        for r in range(repeats):
            for measurement in MEASUREMENTS:
                steps += [Step("measure", path, s, measurement, r) for s in rotate(sides, r)]
        steps.append(Step("teardown", path))
    return steps


def median_or_nan(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


# --------------------------------------------------------------------------- running things


@dataclass
class Side:
    """One end-to-end pod pair: where the client runs, where the server runs, the server's IP;
    the server a policy selects (the same one on a hand-built path), the nodes' namespaces."""

    name: str
    marker: str  # PODNET_LAB_MARKER of every process started for it
    client_ns: str
    server_ns: str
    server_ip: str
    client_cgroup: str | None = None  # a lab pod's cgroup; None for the hand-built "pods"
    server_cgroup: str | None = None
    client_ip: str = ""
    policy_ip: str = ""  # "" = server_ip
    node_ns: tuple[str, ...] = ()


def policy_doc() -> dict:
    """The NetworkPolicy of the policy rows: it selects server-pol and opens nginx's port to the client."""
    ingress = [{"from": [{"podSelector": {"matchLabels": CLIENT_LABELS}}], "ports": [{"port": NGINX_PORT}]}]
    spec = {"podSelector": {"matchLabels": POLICY_LABELS}, "policyTypes": ["Ingress"], "ingress": ingress}
    meta = {"name": POLICY_SERVER, "namespace": NAMESPACE}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta, "spec": spec}


def count_entries(text: str, one: str, other: str) -> int:
    """Entries of a ``/proc/net/nf_conntrack`` listing whose original direction is between ``one``
    and ``other`` (either way round)."""
    count = 0
    for line in text.splitlines():
        fields = dict(t.split("=", 1) for t in line.split() if t.startswith(("src=", "dst=")) and "=" in t)
        # dict() keeps the LAST src=/dst=: the reply direction's, the original one reversed
        count += {fields.get("src"), fields.get("dst")} == {one, other}
    return count


def conntrack_entries(node_ns: Sequence[str], one: str, other: str) -> int:
    """Conntrack entries between ``one`` and ``other`` in the nodes' namespaces (0 where the
    namespace has no conntrack)."""
    total = 0
    for ns in node_ns:
        out = subprocess.run(
            [IP, "netns", "exec", ns, "cat", "/proc/net/nf_conntrack"], capture_output=True, text=True
        )
        total += count_entries(out.stdout, one, other) if out.returncode == 0 else 0
    return total


def run_client(side: Side, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` in the client pod: its cgroup first (if any), then its netns."""
    env = dict(os.environ, **{MARKER_ENV: side.marker})
    return subprocess.run(
        [IP, "netns", "exec", side.client_ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=join_cgroup(side.client_cgroup),
    )


def read_proc_stat() -> tuple[int, int]:
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


@dataclass(frozen=True)
class IperfResult:
    gbps: float
    seconds: float
    cpu_s: float  # busy CPU seconds of the whole machine while the client ran


def whole_seconds(duration: float) -> int:
    """iperf3 and wrk take whole seconds."""
    return max(1, round(duration))


def iperf(side: Side, duration: float, streams: int = 1) -> IperfResult:
    """iperf3 client pod -> server pod, ``streams`` parallel TCP streams."""
    port = str(random.randint(20000, 40000))
    server = spawn(
        ["iperf3", "-s", "-1", "-p", port],
        netns=side.server_ns,
        cgroup=side.server_cgroup,
        lab_prefix=side.marker,
    )
    try:
        time.sleep(0.2)
        cmd = [
            "iperf3",
            "-c",
            side.server_ip,
            "-p",
            port,
            "-t",
            str(whole_seconds(duration)),
            "-P",
            str(streams),
            "-J",
        ]
        for attempt in range(5):
            hz = os.sysconf("SC_CLK_TCK")
            before = read_proc_stat()
            out = run_client(side, cmd, whole_seconds(duration) + 30)
            after = read_proc_stat()
            doc = json.loads(out.stdout or "{}")
            if "error" in doc and "connect" in doc["error"] and attempt < 4:  # server not listening yet
                time.sleep(0.3)
                continue
            if "error" in doc or "end" not in doc:
                raise RuntimeError(
                    f"iperf3 {side.name} -> {side.server_ip}: {doc.get('error', out.stderr.strip())}"
                )
            received = doc["end"]["sum_received"]
            return IperfResult(
                received["bits_per_second"] / 1e9, received["seconds"], cpu_seconds(before, after, hz)
            )
        raise AssertionError("unreachable")
    finally:
        server.stop()


def wrk(
    side: Side,
    duration: float,
    connections: int,
    *,
    close: bool = False,
    script: str | None = None,
    server_ip: str = "",
) -> WrkResult:
    """wrk in the client pod against nginx in the server pod (or the one at ``server_ip``)."""
    url = f"http://{server_ip or side.server_ip}:{NGINX_PORT}/"
    cmd = services_wrk_command(url, whole_seconds(duration), WRK_THREADS, connections, close)
    if script:
        cmd = [*cmd[:-1], "-s", script, cmd[-1]]
    out = run_client(side, cmd, whole_seconds(duration) + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk {url} from {side.name} failed: {(out.stderr or out.stdout).strip()[-500:]}")
    result = parse_wrk(out.stdout)
    if result.requests == 0:
        raise RuntimeError(f"wrk {url} from {side.name}: no request answered\n{out.stdout}")
    return result


def wait_nginx(side: Side, timeout: float = READY_TIMEOUT, server_ip: str = "") -> None:
    """Until nginx in the server pod (or at ``server_ip``) answers the client pod (routes may
    still be converging)."""
    url = f"http://{server_ip or side.server_ip}:{NGINX_PORT}/"
    deadline = time.monotonic() + timeout
    while True:
        out = run_client(
            side, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url], 30
        )
        if out.stdout.strip() == "200":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nginx at {url} did not answer {side.name}'s client in {timeout:g}s")
        time.sleep(0.2)


def pod_mtu(netns: str) -> int:
    out = subprocess.run([IP, "-n", netns, "-j", "link", "show", "eth0"], capture_output=True, text=True)
    try:
        return int(json.loads(out.stdout)[0]["mtu"])
    except (ValueError, LookupError):
        return 0


def measure(side: Side, measurement: str, duration: float, script: str) -> dict[str, float]:
    """One measurement run on ``side``: ``{scenario: value}`` (one or two scenarios)."""
    if measurement in STREAMS:
        r = iperf(side, duration, STREAMS[measurement])
        if measurement == "tcp_1":
            return {"tcp_1": r.gbps, "cpu_per_gbit": cpu_per_gbit(r.cpu_s, r.gbps, r.seconds)}
        return {measurement: r.gbps}
    if measurement == "paced":
        w = wrk(side, duration, PACED_CONNECTIONS, script=script)
        return {
            "latency_p50": w.latency_ms["p50"],
            "latency_p99": w.latency_ms["p99"],
            "_rate": w.requests_per_s,
        }
    if measurement == "saturated":
        w = wrk(side, duration, SATURATION_CONNECTIONS)
        return {
            "latency_sat_p50": w.latency_ms["p50"],
            "latency_sat_p99": w.latency_ms["p99"],
            "_rate": w.requests_per_s,
        }
    if measurement in ("conn_rate", "conn_rate_policy"):
        server = side.policy_ip if measurement == "conn_rate_policy" and side.policy_ip else side.server_ip
        rate = wrk(side, duration, CONN_RATE_CONNECTIONS, close=True, server_ip=server).requests_per_s
        entries = "conntrack_entries" + measurement.removeprefix("conn_rate")
        return {measurement: rate, entries: conntrack_entries(side.node_ns, side.client_ip, server)}
    raise ValueError(f"unknown measurement {measurement!r}")


def warm_up(side: Side, seconds: float) -> None:
    """Discarded runs: neighbour and route caches, conntrack, nginx, CPU frequency."""
    iperf(side, seconds, 1)
    wrk(side, seconds, SATURATION_CONNECTIONS)


def empty_scenarios() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {k: {"samples": [], "unit": unit} for k, unit in SCENARIOS.items()}
    for key in ("latency_p50", "latency_p99", "latency_sat_p50", "latency_sat_p99"):
        out[key]["rate_per_s"] = []
    return out


def record(scenarios: dict[str, dict[str, Any]], values: dict[str, float]) -> None:
    rate = values.get("_rate")
    for key, value in values.items():
        if key == "_rate":
            continue
        scenarios[key]["samples"].append(round(value, 4))
        if rate is not None and "rate_per_s" in scenarios[key]:
            scenarios[key]["rate_per_s"].append(round(rate, 1))


# ------------------------------------------------------------------------------- the sides


def build_baseline(stack: ExitStack, path: str, workdir: str, marker: str) -> tuple[Side, int]:
    """The hand-built pod pair of ``path`` with nginx in its server "pod" (no cgroup)."""
    hand = stack.enter_context(HandBuilt(HANDBUILT_MODE[path]))
    directory = os.path.join(workdir, f"nginx-{path}")
    os.makedirs(os.path.join(directory, "tmp"), exist_ok=True)
    with open(os.path.join(directory, "nginx.conf"), "w") as f:
        f.write(nginx_config(directory, body=f"baseline-{path}"))
    nginx: Spawned = spawn(
        nginx_command(directory),
        netns=hand.ns["p2"],
        lab_prefix=marker,
        log=os.path.join(directory, "stdout.log"),
    )
    stack.callback(nginx.stop)  # runs before HandBuilt removes the namespaces
    side = Side(
        baseline_side(path),
        marker,
        hand.ns["p1"],
        hand.ns["p2"],
        hand.pod_ip["p2"],
        client_ip=hand.pod_ip["p1"],
        node_ns=(hand.ns["n1"], hand.ns["n2"]),
    )
    wait_nginx(side)
    return side, pod_mtu(hand.ns["p1"])


def untracked_here(node_ns: str, address: str) -> bool:
    """Whether the node's policy table lets ``address`` skip conntrack (no policy selects it)."""
    return kernel_untracks(node_ns, address)


def wait_selected(node_ns: str, selected: str, unselected: str, timeout: float = READY_TIMEOUT) -> None:
    """Until the node's policy table tracks ``selected`` (a policy selects it) and not
    ``unselected`` (the set is filled)."""
    deadline = time.monotonic() + timeout
    while untracked_here(node_ns, selected) or not untracked_here(node_ns, unselected):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{node_ns}: {selected} not tracked or {unselected} not untracked in {timeout:g}s"
            )
        time.sleep(0.1)


def build_lab(stack: ExitStack, name: str) -> tuple[Side, LabSpec, int]:
    """Profile ``name``'s lab with the two bench pods Running and nginx answering in the server."""
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.model import lookup, parse_resource

    spec = profile_spec(name)
    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    stack.callback(cluster.remove, names)
    info = cluster.up(spec, names)
    store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for pod, node, labels in (
        (CLIENT, CLIENT_NODE, CLIENT_LABELS),
        (SERVER, SERVER_NODE, {}),
        (POLICY_SERVER, SERVER_NODE, POLICY_LABELS),
    ):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": NAMESPACE, "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            }
        )
    docs.append(policy_doc())
    store.apply([parse_resource(d) for d in docs])
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        pods = {p.metadata.name: p for p in store.list(lookup("pods"), NAMESPACE)}
        if set(pods) == {CLIENT, SERVER, POLICY_SERVER} and all(
            p.status and p.status.phase == "Running" and p.status.pod_ip for p in pods.values()
        ):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the bench pods did not become Running in {READY_TIMEOUT:g}s")
        time.sleep(0.1)
    client_ns, server_ns = names.pod_ns(NAMESPACE, CLIENT), names.pod_ns(NAMESPACE, SERVER)
    server_cg = names.pod_cgroup(SERVER_NODE, pods[SERVER].metadata.uid)
    start_nginx(names, SERVER, server_ns, server_cg)  # recorded in the lab state: teardown stops it
    policy_cg = names.pod_cgroup(SERVER_NODE, pods[POLICY_SERVER].metadata.uid)
    start_nginx(names, POLICY_SERVER, names.pod_ns(NAMESPACE, POLICY_SERVER), policy_cg)
    side = Side(
        name,
        names.prefix,
        client_ns,
        server_ns,
        pods[SERVER].status.pod_ip,
        names.pod_cgroup(CLIENT_NODE, pods[CLIENT].metadata.uid),
        server_cg,
        client_ip=pods[CLIENT].status.pod_ip,
        policy_ip=pods[POLICY_SERVER].status.pod_ip,
        node_ns=(names.node_ns(CLIENT_NODE), names.node_ns(SERVER_NODE)),
    )
    wait_nginx(side)
    if spec.profile == "cilium":  # its policy is in the eBPF maps, not in the nftables table
        from podnet.bench.cilium_fence import lxc_pins, wait_enforced

        wait_enforced(lxc_pins(names.state_dir, SERVER_NODE), side.policy_ip, side.server_ip, READY_TIMEOUT)
    else:
        wait_selected(names.node_ns(SERVER_NODE), side.policy_ip, side.server_ip)
    wait_nginx(side, server_ip=side.policy_ip)  # the policy lets the client in
    return side, spec, pod_mtu(client_ns)


# ------------------------------------------------------------------------------------ the run


def check_tools() -> None:
    check_wrk_nginx()
    missing = [t for t in ("iperf3", "curl") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed")


def run(
    profiles: Sequence[str],
    repeats: int = DEFAULTS["repeats"],
    duration: float = DEFAULTS["duration"],
    quick: bool = False,
    progress: ProgressFn | None = None,
) -> dict:
    """Measure ``profiles`` and their baselines, interleaved; see the module docstring."""
    if repeats < 1 or duration <= 0:
        raise ValueError("repeats must be >= 1 and duration > 0")
    steps = plan(profiles, repeats)
    check_tools()
    report = progress or (lambda _m, _d, _t: None)
    warmup_s = 1.0 if quick else 2.0
    started = time.monotonic()
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": {
            "repeats": repeats,
            "duration": duration,
            "quick": quick,
            "run_seconds": whole_seconds(duration),
            "warmup_s": warmup_s,
            "paced": {
                "connections": PACED_CONNECTIONS,
                "delay_ms": PACED_DELAY_MS,
                "target_per_s": round(paced_rate(PACED_CONNECTIONS, PACED_DELAY_MS)),
            },
            "saturation_connections": SATURATION_CONNECTIONS,
            "conn_rate_connections": CONN_RATE_CONNECTIONS,
            "wrk_threads": WRK_THREADS,
        },
        "baselines": {},
        "profiles": {},
    }
    marker = f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-"  # the hand-built side's processes
    sides: dict[str, Side] = {}
    scenarios: dict[str, dict[str, dict[str, Any]]] = {}
    with ExitStack() as stack:
        workdir = tempfile.mkdtemp(prefix="podnet-bench-datapath-")
        stack.callback(shutil.rmtree, workdir, True)
        script = os.path.join(workdir, "paced.lua")
        with open(script, "w") as f:
            f.write(pacing_script(PACED_DELAY_MS))
        path_stack: ExitStack | None = None
        for done, step in enumerate(steps):
            report(step.describe(repeats), done, len(steps))
            if step.kind == "baseline":
                path_stack = stack.enter_context(ExitStack())
                side, mtu = build_baseline(path_stack, step.path, workdir, marker)
                sides[step.side] = side
                scenarios[step.side] = empty_scenarios()
                result["baselines"][step.path] = {"pod_mtu": mtu, "scenarios": scenarios[step.side]}
            elif step.kind == "lab":
                assert path_stack is not None
                side, spec, mtu = build_lab(path_stack, step.side)
                sides[step.side] = side
                scenarios[step.side] = empty_scenarios()
                result["profiles"][step.side] = {
                    "path": step.path,
                    "spec": spec.to_dict(),
                    "pod_mtu": mtu,
                    "scenarios": scenarios[step.side],
                }
            elif step.kind == "warmup":
                warm_up(sides[step.side], warmup_s)
            elif step.kind == "measure":
                record(scenarios[step.side], measure(sides[step.side], step.measurement, duration, script))
            else:  # teardown
                assert path_stack is not None
                path_stack.close()
                path_stack = None
        report("done", len(steps), len(steps))
    result["profiles"] = {p: result["profiles"][p] for p in dict.fromkeys(profiles)}  # the order asked
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


# ------------------------------------------------------------------------------------ the table

SHORT = {
    "tcp_1": "tcp 1",
    "tcp_4": "tcp 4",
    "latency_p50": "lat p50",
    "latency_p99": "lat p99",
    "latency_sat_p50": "sat p50",
    "latency_sat_p99": "sat p99",
    "conn_rate": "conn/s",
    "conntrack_entries": "ct ents",
    "conn_rate_policy": "conn/s+p",
    "conntrack_entries_policy": "ct ent+p",
    "cpu_per_gbit": "CPUs/Gb",
}


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def render(result: dict) -> str:
    """A plain table: medians per side, and each profile's ratio to its path's baseline."""
    s = result["settings"]
    head = (
        f"medians of {s['repeats']} x {s['run_seconds']} s, interleaved with the hand-built baseline "
        f"of the same data path; latency paced at {s['paced']['connections']} conn x "
        f"{s['paced']['delay_ms']} ms delay (<= {s['paced']['target_per_s']} req/s)"
    )
    width = 9
    cols = "".join(f"{SHORT[k]:>{width}}" for k in SCENARIOS)
    units = "".join(f"{SCENARIOS[k].split('/')[0][: width - 1]:>{width}}" for k in SCENARIOS)
    label = 36
    lines = [head, "", f"{'':{label}}{cols}", f"{'':{label}}{units}"]

    def row(text: str, values: list[float]) -> str:
        return f"{text:{label}}" + "".join(f"{_fmt(v):>{width}}" for v in values)

    for path, base in result["baselines"].items():
        bmed = [median_or_nan(base["scenarios"][k]["samples"]) for k in SCENARIOS]
        lines.append(row(f"baseline {path} (mtu {base.get('pod_mtu', '?')})", bmed))
        for name, prof in result["profiles"].items():
            if prof["path"] != path:
                continue
            pmed = [median_or_nan(prof["scenarios"][k]["samples"]) for k in SCENARIOS]
            lines.append(row(f"  {name} (mtu {prof.get('pod_mtu', '?')})", pmed))
            ratios = [p / b if b and b == b else float("nan") for p, b in zip(pmed, bmed, strict=True)]
            lines.append(
                f"{'    ratio to baseline':{label}}"
                + "".join(f"{(f'{r:.2f}' if r == r else '-'):>{width}}" for r in ratios)
            )
    rates = [
        f"{name} {median_or_nan(p['scenarios']['latency_p50'].get('rate_per_s', [])):.0f}"
        for name, p in [
            *((f"baseline {k}", v) for k, v in result["baselines"].items()),
            *result["profiles"].items(),
        ]
    ]
    lines += ["", "paced req/s achieved: " + ", ".join(rates)]
    lines.append(
        "ratios are profile / baseline: above 1 is better for tcp and conn/s, worse for latency "
        "and CPU per Gbit"
    )
    if "wall_s" in result:
        lines.append(f"wall time {result['wall_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.bench.datapath", description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: all five)")
    ap.add_argument("--repeats", type=int, help=f"rounds (default {DEFAULTS['repeats']}, quick 1)")
    ap.add_argument(
        "--duration", type=float, help=f"seconds per run (default {DEFAULTS['duration']:g}, quick 2)"
    )
    ap.add_argument("--quick", action="store_true", help="1 repeat x 2 s: a smoke run of a few minutes")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    bad = [p for p in profiles if p not in PROFILES]
    if bad or not profiles:
        ap.error(f"--profiles: choose from {', '.join(PROFILES)}")
    defaults = QUICK if args.quick else DEFAULTS
    repeats = args.repeats if args.repeats is not None else int(defaults["repeats"])
    duration = args.duration if args.duration is not None else float(defaults["duration"])
    if repeats < 1 or duration <= 0:
        ap.error("--repeats must be >= 1 and --duration > 0")

    def progress(message: str, done: int, total: int) -> None:
        print(f"[{done:3d}/{total}] {message}", flush=True)

    result = run(profiles, repeats, duration, quick=args.quick, progress=progress)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
