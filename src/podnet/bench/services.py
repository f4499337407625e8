"""New connections per second through a ClusterIP vs straight to a pod, per profile, in one run.

    python -m podnet.bench.services [--quick] [--profiles calico,cilium] [--repeats 3] [--duration 5]
                                    [--threads 1] [--connections 16] [--json PATH]

Per profile (the Calico one load-balances with the nftables proxier, DNAT + conntrack in the client's
node; the Cilium one with eBPF socket load balancing at ``connect()``, no NAT on the packets): a
private 2-node lab (its own prefix and underlay, torn down and cleaned at the end whatever happens):

- two backend pods ``web-1``, ``web-2`` on **node-2** and client pods on node-1. Both backends sit
  on the same (remote) node, so every connection crosses the same node-to-node path whichever backend
  the service picks, and the direct baseline (to ``web-1``) takes that very path: the ratio isolates
  the load-balancing step. With one backend per node, half the service's connections would stay on
  node-1 (shorter path) and flatter the service against a cross-node baseline.
- **nginx** in each backend pod (the lab's Python podserver is far too slow to measure connection
  rates): started with :func:`podnet.lab.netns.spawn` in the pod's cgroup and netns, with its own
  minimal config under the lab's state dir (port 8081, which no pod declares as a containerPort;
  ``return 200``; one worker; no access log), recorded in the lab state so ``teardown``/``clean``
  stop it like any lab process.
- a ClusterIP Service ``web``: port 80 → targetPort 8081 (numeric: every selected pod); and
  ``web-one``, the same with ``web-1`` as its only backend: the load-balancing step alone, without
  the spreading over two nginx processes (which on a 2-core machine changes the scheduling too).
  Each nginx answers with its pod's name: before measuring, curl checks the backends of each.
- **wrk** from inside a client pod (joining the pod's cgroup first, then ``ip netns exec``: a
  process that only entered the netns would bypass socket load balancing), ``--latency``:
  with ``Connection: close`` every request is a new TCP connection, so requests/s = connections/s.
  A warm-up run per target, then ``--repeats`` rounds, each: ``web``:80, ``web-one``:80 and web-1's
  IP:8081 with ``Connection: close``, then the three with keep-alive (for context); the order rotates
  per round so drift on the shared machine hits every target alike. Reported: median/min/max per
  target, the ratio ClusterIP / pod of the medians (and 1-backend ClusterIP / pod), the latency
  distribution, wrk's errors and the client's SYN retransmits (each one a 1 s stall).

**One client pod per target**, ``client-svc``, ``client-one`` and ``client-pod``, all on node-1.
Measured from one client, the targets poison each other: the client reuses source ports at
this rate (28k ephemeral ports, about 10k connections/s) and ``web-1`` keeps every connection it
closed in TIME_WAIT, so a new connection often arrives with the 4-tuple of an old one. That is fine
while the TCP timestamps keep rising, but Linux offsets a connection's timestamps by a hash of the
addresses *the client connected to*: the ClusterIP for one target, the pod IP for the other. A SYN
whose timestamps come from the other offset fails PAWS against the TIME_WAIT socket, is not answered
and is resent a second later: measured, thousands of SYN retransmits and the rate of *both* targets
falling 3-5x within a few rounds. From separate client addresses no tuple is shared (and the SYN
retransmits, reported per target, stay at 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from podnet.bench.stats import ratio
from podnet.lab.naming import LabNames

PROFILES = ("calico", "cilium")
BENCH_PREFIX = "pnsv-"  # each run adds 2 hex digits: pnsvXXXX-
NAMESPACE = "bench"
BACKENDS = ("web-1", "web-2")
BACKEND_NODE = "node-2"
# One client pod per target (same node, same path): see "Two clients" in the module docstring.
CLIENTS = {"service": "client-svc", "service1": "client-one", "direct": "client-pod"}
CLIENT_NODE = "node-1"
NGINX_PORT = 8081  # not a declared containerPort: the service's numeric targetPort reaches it anyway
SERVICE_PORT = 80
PODSERVER_PORT = 8080  # the lab podserver's (declared containerPort "http"); not measured
WEB = {"app": "web"}
TOOLS = ("wrk", "nginx")
MODES = ("close", "keepalive")
# service: the 2-backend ClusterIP (the headline); direct: web-1's own address (the baseline);
# service1: a ClusterIP whose only backend is web-1: the load-balancing step alone, without spreading.
TARGETS = ("service", "service1", "direct")
SERVICES = {"service": "web", "service1": "web-one"}


# ------------------------------------------------------------------------------- nginx config


def nginx_config(directory: str, port: int = NGINX_PORT, body: str = "ok") -> str:
    """A self-contained nginx config: everything it writes (pid, error log, temp dirs) under
    ``directory``, in the foreground, one worker, no access log, ``return 200 body`` on ``port``."""
    if not os.path.isabs(directory) or any(c in directory for c in " ;{}\"'\n\\"):
        raise ValueError(f"nginx dir must be an absolute path without spaces or quotes: {directory!r}")
    if not re.fullmatch(r"[A-Za-z0-9_./-]*", body):
        raise ValueError(f"body must be plain text: {body!r}")
    temps = "\n".join(
        f"    {kind}_temp_path {directory}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# podnet.bench.services: one backend of the ClusterIP benchmark
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temps}
    keepalive_requests 1000000;
    server {{
        listen {port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}\\n";
        }}
    }}
}}
"""


def nginx_command(directory: str) -> list[str]:
    conf = os.path.join(directory, "nginx.conf")
    return ["nginx", "-p", directory, "-e", os.path.join(directory, "error.log"), "-c", conf]


# --------------------------------------------------------------------------------- wrk output

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_DURATION_RE = re.compile(r"^([\d.]+)(us|ms|s|m|h)$")


def duration_ms(text: str) -> float:
    """A wrk duration (``593.00us``, ``1.35ms``, ``2.00s``, ``1.00m``) in milliseconds."""
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_netstat(text: str) -> dict[str, int]:
    """``/proc/net/netstat`` (or ``/proc/net/snmp``): ``{"TcpExt.TCPSynRetrans": n, ...}``."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        hname, *keys = header.split()
        vname, *nums = values.split()
        if hname != vname or len(keys) != len(nums):
            raise ValueError(f"not a netstat table pair: {header[:40]!r} / {values[:40]!r}")
        out.update({f"{hname.rstrip(':')}.{k}": int(v) for k, v in zip(keys, nums, strict=True)})
    return out


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: requests/s, how many in how long, the latency distribution, the errors."""

    requests_per_s: float
    requests: int
    seconds: float
    latency_ms: dict[str, float]  # "p50", "p75", "p90", "p99"; empty without --latency
    errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    non_2xx: int = 0
    syn_retrans: int | None = None  # the client's SYN retransmits during the run (set by wrk_in_pod)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + self.non_2xx


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's text output (with or without ``--latency``)."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in ([\d.]+(?:us|ms|s|m|h)),", text, re.M)
    if not rps or not total:
        raise ValueError(f"not wrk output: {text.strip()[-300:]!r}")
    latency: dict[str, float] = {}
    dist = re.search(r"Latency Distribution\n((?:\s+[\d.]+%\s+\S+\n?)+)", text)
    if dist:
        for pct, value in re.findall(r"([\d.]+)%\s+(\S+)", dist.group(1)):
            latency[f"p{float(pct):g}"] = round(duration_ms(value), 3)
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: (.*)", text)
    if sock:
        errors = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", sock.group(1))}
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        float(rps.group(1)),
        int(total.group(1)),
        round(duration_ms(total.group(2)) / 1e3, 3),
        latency,
        errors,
        int(non.group(1)) if non else 0,
    )


# ----------------------------------------------------------------------------------- figures


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """``{n, median, min, max}`` of requests/s samples (rounded to 0.1)."""
    if not samples:
        raise ValueError("no samples")
    return {
        "n": len(samples),
        "median": round(statistics.median(samples), 1),
        "min": round(min(samples), 1),
        "max": round(max(samples), 1),
    }


def mode_figures(runs: dict[str, list[WrkResult]]) -> dict[str, Any]:
    """Per target (``service``, ``direct``): requests/s summary, median latency percentiles over the
    runs, total errors; and ``ratio`` = median service / median direct."""
    out: dict[str, Any] = {}
    for target, results in runs.items():
        keys = sorted({k for r in results for k in r.latency_ms}, key=lambda k: float(k[1:]))
        out[target] = {
            "per_s": summarize([r.requests_per_s for r in results]),
            "latency_ms": {
                k: round(statistics.median(r.latency_ms[k] for r in results if k in r.latency_ms), 3)
                for k in keys
            },
            "requests": sum(r.requests for r in results),
            "errors": sum(r.error_count for r in results),
            "syn_retrans": sum(r.syn_retrans or 0 for r in results),
            "samples": [asdict(r) for r in results],
        }
    out["ratio"] = ratio(out["service"]["per_s"]["median"], out["direct"]["per_s"]["median"]).number
    if "service1" in out:
        out["ratio_one_backend"] = ratio(
            out["service1"]["per_s"]["median"], out["direct"]["per_s"]["median"]
        ).number
    return out


def round_order(index: int) -> tuple[str, ...]:
    """The targets' order in round ``index``: alternating, so neither always goes first."""
    k = index % len(TARGETS)
    return TARGETS[k:] + TARGETS[:k]


def _cell(per_s: dict[str, float]) -> str:
    return f"{per_s['median']:9.0f} ({per_s['min']:.0f}-{per_s['max']:.0f})"


def _lat(fig: dict) -> str:
    lat = fig["latency_ms"]
    return f"{lat.get('p50', float('nan')):.2f}/{lat.get('p99', float('nan')):.2f}"


def render(r: dict) -> str:
    p = r["params"]
    head = (
        f"new connections/s, wrk -t{p['threads']} -c{p['connections']} 'Connection: close', "
        f"median (min-max) of {p['repeats']} x {p['duration_s']} s, interleaved; "
        f"2 backends on {BACKEND_NODE}, clients on {CLIENT_NODE}"
    )
    cols = f"{'to ClusterIP conn/s':>25} | {'to pod conn/s':>25} | {'ratio':>6} | {'1-backend ClusterIP':>25}"
    lines = [head, "", f"{'profile':8} | {cols} | {'ratio':>6}"]
    lines.append("-" * len(lines[-1]))
    for profile, pr in r["profiles"].items():
        c = pr["close"]
        cells = f"{_cell(c['service']['per_s']):>25} | {_cell(c['direct']['per_s']):>25} | {c['ratio']:6.3f}"
        lines.append(
            f"{profile:8} | {cells} | {_cell(c['service1']['per_s']):>25} | {c['ratio_one_backend']:6.3f}"
        )
    lines += [
        "",
        "wrk latency p50/p99 ms, request sent -> response (connect not included), Connection: close:",
    ]
    for profile, pr in r["profiles"].items():
        c = pr["close"]
        lines.append(
            f"  {profile:8} ClusterIP {_lat(c['service'])}, "
            f"1-backend ClusterIP {_lat(c['service1'])}, pod {_lat(c['direct'])}"
        )
    lines.append(
        "keep-alive requests/s (context: 16 connections reused), ClusterIP / 1-backend / pod = ratio:"
    )
    for profile, pr in r["profiles"].items():
        k = pr["keepalive"]
        med = [k[t]["per_s"]["median"] for t in ("service", "service1", "direct")]
        lines.append(f"  {profile:8} {med[0]:.0f} / {med[1]:.0f} / {med[2]:.0f} = {k['ratio']:.3f}")
    for key, label in (
        ("syn_retrans", "client SYN retransmits (1 s stalls)"),
        ("errors", "wrk errors (socket + non-2xx)"),
    ):
        found = {
            f"{profile} {mode} {target}": pr[mode][target].get(key)
            for profile, pr in r["profiles"].items()
            for mode in MODES
            for target in TARGETS
            if pr[mode][target].get(key)
        }
        if found:
            lines.append(f"{label}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    left = f"; LEFT BEHIND: {r['leftovers']}" if r.get("leftovers") else "; nothing left behind"
    lines.append(f"wall time {r['wall_s']} s{left}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the run


@dataclass
class Options:
    profiles: tuple[str, ...] = PROFILES
    repeats: int = 3
    duration: int = 5  # seconds per wrk run
    warmup: int = 1  # seconds of the discarded warm-up run per target
    threads: int = 1
    connections: int = 16
    timeout: float = 60.0  # for pods Running and the service answering


def check_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed (Debian: apt-get install wrk nginx-light)")


def _pod_doc(name: str, node: str, labels: dict) -> dict:
    meta = {"name": name, "namespace": NAMESPACE, "labels": labels}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": PODSERVER_PORT}]}],
        },
    }


def _service_doc(name: str, selector: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "nginx", "port": SERVICE_PORT, "targetPort": NGINX_PORT}],
        },
    }


def workload_docs() -> list[dict]:
    return (
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
        + [_pod_doc(b, BACKEND_NODE, {**WEB, "pod": b}) for b in BACKENDS]
        + [_pod_doc(c, CLIENT_NODE, {}) for c in CLIENTS.values()]
        + [_service_doc(SERVICES["service"], WEB), _service_doc(SERVICES["service1"], {"pod": BACKENDS[0]})]
    )


def wrk_command(url: str, duration: int, threads: int, connections: int, close: bool) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "2s"]
    return [*cmd, *(["-H", "Connection: close"] if close else []), url]


def wrk_in_pod(
    netns: str, cgroup: str, url: str, duration: int, threads: int, connections: int, close: bool
) -> WrkResult:
    """wrk from a process that joined the pod's cgroup and then entered its netns (as the pod's own
    processes do: socket load balancing sees its connects)."""
    from podnet.lab.netns import IP, join_cgroup

    cmd = [IP, "netns", "exec", netns, *wrk_command(url, duration, threads, connections, close)]
    before = syn_retransmits(netns)
    out = subprocess.run(
        cmd, capture_output=True, text=True, preexec_fn=join_cgroup(cgroup), timeout=duration + 30
    )
    if out.returncode != 0:
        raise RuntimeError(f"wrk {url} in {netns} failed: {(out.stderr or out.stdout).strip()[-500:]}")
    result = parse_wrk(out.stdout)
    if result.requests == 0:
        raise RuntimeError(f"wrk {url} in {netns}: no request answered\n{out.stdout}")
    return dataclasses.replace(result, syn_retrans=syn_retransmits(netns) - before)


def syn_retransmits(netns: str) -> int:
    """TcpExt.TCPSynRetrans of ``netns`` (``/proc/net`` follows the reader's netns)."""
    from podnet.dataplane.netns import run_in_netns

    proc = run_in_netns(netns, ["cat", "/proc/net/netstat"])
    return parse_netstat(proc.stdout).get("TcpExt.TCPSynRetrans", 0)


def curl_in_pod(netns: str, cgroup: str, url: str, count: int = 1) -> list[str]:
    """The bodies of ``count`` GETs of ``url``, each on a new connection (``Connection: close``),
    from the pod's cgroup and netns; [] when nothing answers."""
    from podnet.lab.netns import IP, join_cgroup

    cmd = [
        IP,
        "netns",
        "exec",
        netns,
        "curl",
        "-s",
        "--max-time",
        "2",
        "-H",
        "Connection: close",
        *[url] * count,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=join_cgroup(cgroup), timeout=30)
    return out.stdout.split()


def processes_in(cgroup: str, comm: str) -> list[tuple[int, int]]:
    """``(pid, start_time)`` of the processes named ``comm`` in ``cgroup`` (nginx's master and its
    worker, which renames itself and carries no marker): to check afterwards that none survived."""
    from podnet.lab.netns import cgroup_pids, proc_start_time

    out = []
    for pid in cgroup_pids(cgroup):
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        start = proc_start_time(pid)
        if name == comm and start is not None:
            out.append((pid, start))
    return out


def survivors(procs: Sequence[tuple[int, int]]) -> list[str]:
    """``pid cmdline`` of those of ``procs`` still alive (same pid and start time)."""
    from podnet.lab.netns import proc_alive, proc_cmdline

    return [f"{pid} {' '.join(proc_cmdline(pid))}" for pid, start in procs if proc_alive(pid, start)]


def _until(what: str, predicate, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def start_nginx(names: LabNames, pod: str, netns: str, cgroup: str) -> str:
    """nginx in ``pod`` (its cgroup, then its netns), recorded in the lab state. Returns its dir."""
    from podnet.lab.netns import spawn
    from podnet.lab.state import LabState, ProcessRecord

    directory = os.path.join(names.state_dir, "bench-services", pod)
    os.makedirs(os.path.join(directory, "tmp"), exist_ok=True)
    with open(os.path.join(directory, "nginx.conf"), "w") as f:
        f.write(nginx_config(directory, body=f"{NAMESPACE}/{pod}"))
    state = LabState(names.state_dir)
    state.record_dir(os.path.join(names.state_dir, "bench-services"))
    spawned = spawn(
        nginx_command(directory),
        netns=netns,
        cgroup=cgroup,
        lab_prefix=names.prefix,
        log=os.path.join(directory, "stdout.log"),
    )
    state.record_process(ProcessRecord.of(f"bench-nginx-{pod}", spawned, pod=f"{NAMESPACE}/{pod}"))
    return directory


def _run_profile(profile: str, opts: Options) -> dict[str, Any]:
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import ResourceStore
    from podnet.lab import cluster
    from podnet.lab.netns import list_netns
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import lookup, parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    out: dict[str, Any] = {"lab_prefix": names.prefix}
    nginx: list[tuple[int, int]] = []  # (pid, start time) of every nginx process the bench started
    try:
        info = cluster.up(LabSpec(nodes=2, profile=profile, underlay=random_underlay()), names)
        out["lab_up_s"] = round(info.seconds, 2)
        store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        store.apply([parse_resource(d) for d in workload_docs()])

        def running() -> dict[str, Any] | None:
            pods = {p.metadata.name: p for p in store.list(lookup("pods"), NAMESPACE)}
            ok = all(p.status and p.status.phase == "Running" and p.status.pod_ip for p in pods.values())
            return pods if ok and set(pods) == {*BACKENDS, *CLIENTS.values()} else None

        pods = _until("the bench pods to be Running", running, opts.timeout)
        vips = {
            t: store.get(lookup("services"), name, NAMESPACE).spec.cluster_ip for t, name in SERVICES.items()
        }
        ips = {name: p.status.pod_ip for name, p in pods.items()}
        client = {
            t: (names.pod_ns(NAMESPACE, c), names.pod_cgroup(CLIENT_NODE, pods[c].metadata.uid))
            for t, c in CLIENTS.items()
        }
        backend_cg = {b: names.pod_cgroup(BACKEND_NODE, pods[b].metadata.uid) for b in BACKENDS}
        for backend in BACKENDS:
            start_nginx(names, backend, names.pod_ns(NAMESPACE, backend), backend_cg[backend])

        def answers(target: str, url: str, count: int) -> set[str]:
            return set(curl_in_pod(*client[target], url, count))

        for backend in BACKENDS:  # each nginx answers with its pod's name
            url = f"http://{ips[backend]}:{NGINX_PORT}/"
            _until(f"nginx in {backend}", lambda u=url: answers("direct", u, 1), opts.timeout)
            nginx += processes_in(backend_cg[backend], "nginx")  # master + worker
        urls = {t: f"http://{vip}:{SERVICE_PORT}/" for t, vip in vips.items()}
        urls["direct"] = f"http://{ips[BACKENDS[0]]}:{NGINX_PORT}/"
        want = {f"{NAMESPACE}/{b}" for b in BACKENDS}  # 30 connections: P(one backend missed) ~ 2e-9
        _until(
            "both backends behind the ClusterIP",
            lambda: answers("service", urls["service"], 30) == want,
            opts.timeout,
        )
        _until(
            "web-1 behind the 1-backend ClusterIP",
            lambda: answers("service1", urls["service1"], 4) == {f"{NAMESPACE}/{BACKENDS[0]}"},
            opts.timeout,
        )

        def wrk(target: str, duration: int, close: bool) -> WrkResult:
            return wrk_in_pod(*client[target], urls[target], duration, opts.threads, opts.connections, close)

        for target in TARGETS:  # warm-up: neighbours, conntrack, nginx, CPU frequency
            wrk(target, opts.warmup, True)
        runs: dict[str, dict[str, list[WrkResult]]] = {m: {t: [] for t in TARGETS} for m in MODES}
        for i in range(opts.repeats):
            for mode in MODES:
                for target in round_order(i):
                    runs[mode][target].append(wrk(target, opts.duration, mode == "close"))
        out.update(
            {
                "cluster_ips": vips,
                "pod_ips": ips,
                "urls": urls,
                "direct_backend": f"{NAMESPACE}/{BACKENDS[0]}",
            }
        )
        for mode in MODES:
            out[mode] = mode_figures(runs[mode])
    finally:
        cluster.remove(names)
    out["nginx_processes"] = len(nginx)
    cgroups = [names.cgroup_dir] if os.path.isdir(names.cgroup_dir) else []  # wrk ran in a pod cgroup
    out["leftovers"] = survivors(nginx) + list_netns(names.prefix) + cgroups
    return out


def run(opts: Options) -> dict:
    check_tools()
    wall = time.perf_counter()
    results: dict[str, Any] = {
        "params": {
            "profiles": list(opts.profiles),
            "repeats": opts.repeats,
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "threads": opts.threads,
            "connections": opts.connections,
            "backends": dict.fromkeys(BACKENDS, BACKEND_NODE),
            "clients": dict.fromkeys(CLIENTS.values(), CLIENT_NODE),
            "service_port": SERVICE_PORT,
            "target_port": NGINX_PORT,
        },
        "profiles": {},
    }
    for profile in opts.profiles:  # one lab at a time: they would compete for the 2 cores
        results["profiles"][profile] = _run_profile(profile, opts)
    results["leftovers"] = [x for pr in results["profiles"].values() for x in pr["leftovers"]]
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    return results


QUICK = {"repeats": 1, "duration": 2}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m podnet.bench.services", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1 repeat x 2 s per target, both profiles")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: both)")
    ap.add_argument("--repeats", type=int, help="rounds per target and mode (default 3, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 5, quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--connections", type=int, default=16, help="wrk connections kept busy")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    profiles = tuple(p.strip() for p in args.profiles.split(",") if p.strip())
    bad = [p for p in profiles if p not in PROFILES]
    if bad or not profiles:
        ap.error(f"--profiles: choose from {', '.join(PROFILES)}")
    defaults = QUICK if args.quick else {}
    opts = Options(profiles=profiles, threads=args.threads, connections=args.connections)
    for name in ("repeats", "duration"):
        value = getattr(args, name)
        setattr(opts, name, value if value is not None else defaults.get(name, getattr(opts, name)))
    if opts.repeats < 1 or opts.duration < 1:
        ap.error("--repeats and --duration must be >= 1")
    results = run(opts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
