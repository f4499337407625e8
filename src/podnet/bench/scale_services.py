"""Scale section ``services``: 10,000 Services x 2 endpoints on a 3-node lab, per profile.

    python -m podnet.bench.scale_services [--quick] [--profiles calico,cilium] [--services N] [-o json]

Issue 18's figures (the Calico profile's nftables proxier, the Cilium profile's socket load
balancer), on a private 3-node lab per profile (prefix ``pnscXXXX-``, removed whatever happens):

- **cold sync**: N Services (N = 10,000; ``--quick`` 1,000) with 2 endpoints each written in
  big transactions (:meth:`ResourceStore.create_many`), until every node's kernel serves all N
  ClusterIPs. Goal ≤ 30 s (kube-proxy's nftables proxier: 3 min 14 s, kubernetes PR #126013).
- **one Service added at N**: one more Service whose 2 endpoints exist already, until its
  ClusterIP is in every node's kernel; repeated, median and max. Goal ≤ 100 ms (kube-proxy: 141 ms).
  Also the time until a deleted one is gone.
- **new connections/s through a ClusterIP with N Services / with 1**: the real service of
  :mod:`podnet.bench.services` (nginx ``web-1``, ``web-2`` on node-2; wrk with
  ``Connection: close`` from ``client-svc`` on node-1), measured with only that service, then with
  the N-1 others, round after round (the others deleted and written again in between: each
  rewrite is one more cold-sync sample). Goal: median ratio ≥ 0.95.
- **agent RSS** idle and with N Services, and its growth.

**The endpoints are datastore-only pods** (as in :mod:`podnet.bench.churn`): Pod objects written
``Running`` and Ready with an address of 100.64.0.0/10, annotated ``bench.podnet.io/churn:
datastore-only``, and scheduled to ``bench-elsewhere``, a node that is not in the lab (as
backends on the other nodes of a large cluster are), so the lab kubelet runs nothing for them and
no packet is ever sent to them. The agents compute a Service's backends from the Pods (selector,
Running, Ready): the Service ``s-00042`` selects ``svc=s-00042``, two pods carry that label.

**Fences are the kernel**: the ClusterIPs in ``service-ips`` of ``table ip podnet_services`` in each
node's netns, read with nf_tables netlink requests for that map alone
(:mod:`podnet.bench.nft_netlink`: ``nft get element`` loads nft's cache of the whole table and
took seconds at 10,000 services), or the keys of the socket load balancer's ``lb_services`` map
pinned under the lab's bpffs (a lookup for one service); polled, no fixed sleep.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.bench.scale import Row
from podnet.bench.services import BACKENDS, workload_docs
from podnet.bench.services import NAMESPACE as REAL_NS
from podnet.lab.naming import LabNames

BENCH_PREFIX = "pnsc-"  # each run adds 2 hex bytes: pnscXXXX-
NAMESPACE = "svc-scale"  # the N-1 datastore-only services and their pods
ELSEWHERE = "bench-elsewhere"  # the nodeName of the datastore-only pods: no lab node runs them
TARGET_PORT = 8080
COLD_GOAL_S = 30.0
ADD_GOAL_MS = 100.0
RATIO_GOAL = 0.95
POLL_S = 0.005  # one lookup per node every 5 ms: 3 pollers at 1 ms took CPU from the agents they time
REAL_SERVICE = "web"  # podnet.bench.services' 2-backend ClusterIP
REAL_CLIENT = "client-svc"


@dataclass
class Options:
    services: int = 10_000
    adds: int = 5  # one-service additions timed
    rounds: int = 3  # conn/s rounds (with 1, with N)
    duration: int = 5  # seconds per wrk run
    warmup: int = 1
    connections: int = 16
    timeout: float = 600.0  # per wait
    settle: float = 2.0  # before an RSS sample


QUICK = {"services": 1_000, "adds": 3, "rounds": 2, "duration": 3}


# ------------------------------------------------------------------------------ workload (pure)


def service_name(index: int) -> str:
    return f"s-{index:05d}"


def service_doc(index: int) -> dict:
    """Service ``index``: port 80 → 8080/TCP, selecting ``svc=<its name>``."""
    name = service_name(index)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "type": "ClusterIP",
            "selector": {"svc": name},
            "ports": [{"name": "http", "port": 80, "targetPort": TARGET_PORT}],
        },
    }


def endpoint_docs(index: int, per_service: int = 2) -> list[dict]:
    """The datastore-only pods behind service ``index`` (Running, Ready, 100.64/10 addresses)."""
    from podnet.bench.churn import VIRTUAL_ANNOTATION, VIRTUAL_VALUE, virtual_ip

    name = service_name(index)
    docs = []
    for j in range(per_service):
        ip = virtual_ip(0, index * per_service + j, 0)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{j}",
                    "namespace": NAMESPACE,
                    "labels": {"svc": name},
                    "annotations": {VIRTUAL_ANNOTATION: VIRTUAL_VALUE},
                },
                "spec": {"nodeName": ELSEWHERE, "containers": [{"name": "c"}]},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return docs


def real_docs() -> list[dict]:
    """podnet.bench.services' workload cut to one service (``web``), its 2 nginx backends and the
    one client that measures it."""
    keep = {REAL_NS, *BACKENDS, REAL_CLIENT, REAL_SERVICE}
    return [d for d in workload_docs() if d["metadata"]["name"] in keep]


# ------------------------------------------------------------------------------ kernel (parsers)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """``{n, median, max}`` of durations in milliseconds."""
    if not seconds:
        raise ValueError("no samples")
    ms = [s * 1e3 for s in seconds]
    return {"n": len(ms), "median": round(statistics.median(ms), 1), "max": round(max(ms), 1)}


def round_ratios(with_n: Sequence[float], with_one: Sequence[float]) -> list[float]:
    """conn/s with N / with 1, round by round."""
    if len(with_n) != len(with_one) or not with_n:
        raise ValueError("need as many rounds with N as with 1, at least one")
    return [round(n / one, 4) for n, one in zip(with_n, with_one, strict=True)]


# ------------------------------------------------------------------------------ kernel (readers)


class Kernel:
    """Which ClusterIPs each node's kernel serves: nftables (``calico``) or the socket LB map."""

    def __init__(self, profile: str, names: LabNames, node_ns: dict[str, str]) -> None:
        self.profile, self.names, self.node_ns = profile, names, node_ns

    def _pin(self, node: str) -> str:
        from podnet.dataplane.sock_lb import SERVICES_MAP

        return os.path.join(self.names.state_dir, "bpf", node, "sock_lb", SERVICES_MAP)

    def vips(self, node: str) -> set[str]:
        """Every ClusterIP (port 80/TCP) node ``node`` load-balances."""
        if self.profile == "cilium":
            from podnet.dataplane import bpf
            from podnet.dataplane.sock_lb import decode_service_key

            if not os.path.exists(self._pin(node)):
                return set()
            with bpf.BpfMap(self._pin(node)) as m:
                keys = [decode_service_key(k) for k in m.iter_keys()]
            return {ip for ip, port, proto in keys if (port, proto) == (80, "TCP")}
        from podnet.bench.nft_netlink import decode_key, set_keys
        from podnet.dataplane.netns import run_in_netns
        from podnet.dataplane.services_nft import SERVICE_IPS, TABLE

        keys = run_in_netns(self.node_ns[node], lambda: set_keys(TABLE, SERVICE_IPS))
        return {ip for ip, proto, port in map(decode_key, keys) if (proto, port) == ("tcp", 80)}

    def has(self, node: str, vip: str) -> bool:
        """Whether ``vip``:80/TCP is served on ``node`` (one lookup)."""
        if self.profile == "cilium":
            from podnet.dataplane import bpf
            from podnet.dataplane.sock_lb import encode_service_key

            with bpf.BpfMap(self._pin(node)) as m:
                return m.lookup(encode_service_key(vip, 80, "TCP")) is not None
        from podnet.bench.nft_netlink import encode_key, has_key
        from podnet.dataplane.netns import run_in_netns
        from podnet.dataplane.services_nft import SERVICE_IPS, TABLE

        key = encode_key(vip, "tcp", 80)
        return bool(run_in_netns(self.node_ns[node], lambda: has_key(TABLE, SERVICE_IPS, key)))

    def until_all(self, started: float, want: set[str], present: bool, timeout: float) -> dict[str, float]:
        """Seconds from ``started`` until each node serves all of ``want`` (``present``) or none of
        it; polled with full reads (about every 0.2 s)."""
        done: dict[str, float] = {}
        while len(done) < len(self.node_ns):
            for node in sorted(set(self.node_ns) - set(done)):
                vips = self.vips(node)
                if (want <= vips) if present else not (want & vips):
                    done[node] = round(time.perf_counter() - started, 3)
            if len(done) < len(self.node_ns):
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"nodes {sorted(set(self.node_ns) - set(done))}: not in {timeout:g}s")
                time.sleep(0.2)
        return done

    def until_one(self, started: float, vip: str, present: bool, timeout: float) -> dict[str, float]:
        """Seconds from ``started`` until ``vip`` is (or is no longer) served on each node: one
        polling thread per node, one lookup at a time."""
        done: dict[str, float] = {}

        def poll(node: str) -> None:
            while time.perf_counter() - started < timeout:
                if self.has(node, vip) == present:
                    done[node] = round(time.perf_counter() - started, 4)
                    return
                time.sleep(POLL_S)

        threads = [threading.Thread(target=poll, args=(n,)) for n in self.node_ns]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(done) < len(self.node_ns):
            raise TimeoutError(f"{vip} not {'in' if present else 'out of'} every kernel in {timeout:g}s")
        return done


# ------------------------------------------------------------------------------------- the lab


def _agent_log_applies(names: LabNames, offsets: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per node, the agent's ``services applied`` lines since ``offsets``: how many, their ms."""
    import re

    out = {}
    for node, offset in offsets.items():
        with open(os.path.join(names.node_log_dir(node), "agent.log"), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        ms = [float(m) for m in re.findall(r'msg="services applied".* ms=([\d.]+)', text)]
        lb = len(re.findall(r'msg="socket load balancer synced"', text))
        slow = re.findall(r'msg="partial apply".* policy_ms=([\d.]+) services_ms=([\d.]+)', text)
        out[node] = {
            "nft_applies": len(ms),
            "nft_apply_ms_sum": round(sum(ms), 1),
            "sock_lb_syncs": lb,
            "slow_partial_applies": len(slow),  # >= 100 ms, with their phases
            "policy_ms_sum": round(sum(float(p) for p, _ in slow), 1),
            "services_ms_sum": round(sum(float(v) for _, v in slow), 1),
        }
    return out


def _log_offsets(names: LabNames, nodes: Sequence[str]) -> dict[str, int]:
    return {n: os.path.getsize(os.path.join(names.node_log_dir(n), "agent.log")) for n in nodes}


class Scenario:
    """One profile's lab, with what the steps share."""

    def __init__(self, profile: str, opts: Options, names: LabNames, info, step) -> None:  # type: ignore[no-untyped-def]
        from podnet.datastore.etcd import EtcdDatastore
        from podnet.datastore.resources import ResourceStore

        self.profile, self.opts, self.names, self.step = profile, opts, names, step
        self.store = ResourceStore(EtcdDatastore([info.etcd_endpoint]))
        self.nodes = {h.name: h.netns for h in info.topology.nodes}
        self.kernel = Kernel(profile, names, self.nodes)
        self.vips: dict[str, str] = {}  # service name -> ClusterIP

    def pids(self) -> dict[str, int]:
        from podnet.lab.cluster import agent_pids

        return agent_pids(self.names)

    def rss(self) -> dict[str, dict[str, float]]:
        from podnet.bench.policy_scale import proc_memory

        return {node: proc_memory(pid) for node, pid in sorted(self.pids().items())}

    def cpu(self) -> dict[str, float]:
        from podnet.lab.state import cpu_seconds

        return {node: cpu_seconds(pid) for node, pid in self.pids().items()}

    def write_services(self, indexes: Sequence[int], with_pods: bool) -> dict[str, Any]:
        """Create services ``indexes`` (and their pods), until every kernel serves them all."""
        from podnet.model import parse_resource

        docs = [d for i in indexes for d in endpoint_docs(i)] if with_pods else []
        docs += [service_doc(i) for i in indexes]
        resources = [parse_resource(d) for d in docs]
        offsets, cpu = _log_offsets(self.names, self.nodes), self.cpu()
        started = time.perf_counter()
        results = self.store.create_many(resources)
        written = time.perf_counter() - started
        fresh = {
            r.resource.metadata.name: r.resource.spec.cluster_ip
            for r in results
            if r.resource.kind == "Service"
        }
        self.vips.update(fresh)
        nodes = self.kernel.until_all(started, set(fresh.values()), True, self.opts.timeout)
        after = self.cpu()
        return {
            "services": len(fresh),
            "pods": len(docs) - len(fresh),
            "write_s": round(written, 2),
            "kernel_s": nodes,
            "seconds": max(nodes.values()),
            "agent_cpu_s": {n: round(after[n] - cpu[n], 2) for n in after},
            "agent_log": _agent_log_applies(self.names, offsets),
        }

    def delete_services(self, indexes: Sequence[int]) -> dict[str, Any]:
        """Delete services ``indexes`` (their pods stay), until no kernel serves any of them."""
        from podnet.model import lookup

        names = [service_name(i) for i in indexes]
        gone = {self.vips.pop(n) for n in names}
        started = time.perf_counter()
        self.store.delete_many(lookup("services"), names, NAMESPACE)
        written = time.perf_counter() - started
        nodes = self.kernel.until_all(started, gone, False, self.opts.timeout)
        return {
            "services": len(names),
            "write_s": round(written, 2),
            "kernel_s": nodes,
            "seconds": max(nodes.values()),
        }

    def one_service(self, index: int) -> dict[str, float]:
        """Add service ``index`` (its pods exist): seconds until in every kernel; then delete it."""
        from podnet.model import lookup, parse_resource

        quiet = self.quiet()  # the last add's delete applied: this add alone is timed
        offsets = _log_offsets(self.names, self.nodes)
        started = time.perf_counter()
        [result] = self.store.create_many([parse_resource(service_doc(index))])
        vip = result.resource.spec.cluster_ip
        added = self.kernel.until_one(started, vip, True, self.opts.timeout)
        self.quiet()  # the add's apply finished and logged
        agent_log = _agent_log_applies(self.names, offsets)
        started = time.perf_counter()
        self.store.delete_many(lookup("services"), [service_name(index)], NAMESPACE)
        removed = self.kernel.until_one(started, vip, False, self.opts.timeout)
        return {
            "add_s": max(added.values()),
            "delete_s": max(removed.values()),
            "quiet_wait_s": quiet,
            "add_by_node_s": added,
            "agent_log": agent_log,
        }

    def restart_cold(self, node: str) -> dict[str, float]:
        """The Calico agent of ``node`` stopped, its services table deleted (the fence must then see
        no ClusterIP: its positive control), started again: seconds until that kernel serves every
        ClusterIP again. The cold sync with the objects already in the datastore (no bench write
        in the figure), as an agent that starts on a node of a large cluster does."""
        from podnet.dataplane.netns import run_in_netns
        from podnet.dataplane.services_nft import QUALIFIED
        from podnet.lab.cluster import held_agent, start_process, stop_process

        want = set(self.vips.values())
        with held_agent(self.names, node):
            record = stop_process(self.names, f"agent-{node}")
            proc = run_in_netns(self.nodes[node], ["nft", "delete", "table", *QUALIFIED.split()])
            left = self.kernel.vips(node)
            if proc.returncode != 0 or left:
                raise RuntimeError(
                    f"{node}: the services table not deleted ({proc.stderr.strip()}; {len(left)} left)"
                )
            started = time.perf_counter()
            start_process(self.names, record)
            kernel = Kernel(self.profile, self.names, {node: self.nodes[node]})
            seconds = kernel.until_all(started, want, True, self.opts.timeout)[node]
        return {"seconds": seconds, "services": len(want)}

    def quiet(self) -> float:
        """Seconds until the agents are idle (:mod:`podnet.bench.agent_quiet`)."""
        from podnet.bench.agent_quiet import wait_agents_quiet

        return round(wait_agents_quiet(self.names, self.opts.timeout), 2)

    def conn_per_s(self, real: RealService) -> float:
        """New connections/s through the real service, once no agent is still applying (a
        measurement right after a sync of N services measured the sync's CPU, not the table)."""
        self.quiet()
        return real.conn_per_s(self.opts)


@dataclass
class RealService:
    """The measured service: its URL and the client pod's (netns, cgroup)."""

    url: str
    client: tuple[str, str]

    def conn_per_s(self, opts: Options) -> float:
        from podnet.bench.services import wrk_in_pod

        wrk_in_pod(*self.client, self.url, opts.warmup, 1, opts.connections, True)
        return wrk_in_pod(*self.client, self.url, opts.duration, 1, opts.connections, True).requests_per_s


def _real_service(sc: Scenario) -> RealService:
    """podnet.bench.services' nginx backends behind ``web``, answering through the ClusterIP."""
    from podnet.bench.services import (
        BACKEND_NODE,
        CLIENT_NODE,
        NGINX_PORT,
        SERVICE_PORT,
        _until,
        curl_in_pod,
        start_nginx,
    )
    from podnet.model import lookup, parse_resource

    sc.store.apply([parse_resource(d) for d in real_docs()])

    def running() -> dict | None:
        pods = {p.metadata.name: p for p in sc.store.list(lookup("pods"), REAL_NS)}
        ok = all(p.status and p.status.phase == "Running" and p.status.pod_ip for p in pods.values())
        return pods if ok and set(pods) == {*BACKENDS, REAL_CLIENT} else None

    pods = _until("the real pods to be Running", running, sc.opts.timeout)
    for backend in BACKENDS:
        cgroup = sc.names.pod_cgroup(BACKEND_NODE, pods[backend].metadata.uid)
        start_nginx(sc.names, backend, sc.names.pod_ns(REAL_NS, backend), cgroup)
    client = (
        sc.names.pod_ns(REAL_NS, REAL_CLIENT),
        sc.names.pod_cgroup(CLIENT_NODE, pods[REAL_CLIENT].metadata.uid),
    )
    for backend in BACKENDS:
        url = f"http://{pods[backend].status.pod_ip}:{NGINX_PORT}/"
        _until(f"nginx in {backend}", lambda u=url: curl_in_pod(*client, u), sc.opts.timeout)
    vip = sc.store.get(lookup("services"), REAL_SERVICE, REAL_NS).spec.cluster_ip
    url = f"http://{vip}:{SERVICE_PORT}/"
    want = {f"{REAL_NS}/{b}" for b in BACKENDS}
    _until(
        "both backends behind the ClusterIP",
        lambda: set(curl_in_pod(*client, url, 30)) == want,
        sc.opts.timeout,
    )
    return RealService(url, client)


def measure(profile: str, opts: Options, step: Callable[[str], None]) -> dict[str, Any]:
    """Every figure of one profile on its own 3-node lab (removed at the end whatever happens)."""
    from podnet.lab import cluster
    from podnet.lab.netns import list_netns
    from podnet.lab.topology import LabSpec, random_underlay
    from podnet.model import parse_resource

    names = LabNames(f"{BENCH_PREFIX[:-1]}{secrets.token_hex(2)}-")
    out: dict[str, Any] = {"lab_prefix": names.prefix, "services": opts.services}
    n = opts.services
    others = range(1, n)  # the N-1 datastore-only services; index 0 is the real one
    extra = range(n, n + opts.adds)
    try:
        info = cluster.up(LabSpec(nodes=3, profile=profile, underlay=random_underlay()), names)
        sc = Scenario(profile, opts, names, info, step)
        sc.store.apply(
            [parse_resource({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})]
        )
        step(f"services {profile}: real service (nginx, wrk client)")
        real = _real_service(sc)
        time.sleep(opts.settle)
        out["rss_idle"] = sc.rss()
        with_one, with_n, cold, deletes = [], [], [], []
        step(f"services {profile}: round 1: conn/s with 1 service")
        with_one.append(sc.conn_per_s(real))
        step(f"services {profile}: cold sync of {n - 1} services + {2 * (n - 1 + opts.adds)} pods")
        extra_pods = [parse_resource(d) for i in extra for d in endpoint_docs(i)]
        cold.append(sc.write_services(others, with_pods=True) | {"with_pods": True})
        sc.store.create_many(extra_pods)  # the endpoints of the services added one at a time
        time.sleep(opts.settle)
        out["rss_loaded"] = sc.rss()
        if profile == "calico":  # the socket LB's maps are pinned: an agent restart adopts them
            step(f"services {profile}: one agent restarted with {n} services, its table deleted")
            out["restart_cold"] = sc.restart_cold("node-1")
        step(f"services {profile}: {opts.adds} x one service added at {n}")
        out["one_added"] = [sc.one_service(i) for i in extra]
        step(f"services {profile}: round 1: conn/s with {n} services")
        with_n.append(sc.conn_per_s(real))
        for r in range(2, opts.rounds + 1):
            step(f"services {profile}: round {r}: delete, conn/s with 1, write, conn/s with {n}")
            deletes.append(sc.delete_services(others))
            with_one.append(sc.conn_per_s(real))
            cold.append(sc.write_services(others, with_pods=False) | {"with_pods": False})
            with_n.append(sc.conn_per_s(real))
        out.update({"cold": cold, "deletes": deletes, "conn_per_s": {"with_1": with_one, "with_n": with_n}})
        out["kernel_services"] = {node: len(sc.kernel.vips(node)) for node in sc.nodes}
    finally:
        cluster.remove(names)
    out["leftovers"] = list_netns(names.prefix)
    return out


def _ints(values: Sequence[float]) -> list[int]:
    return [round(v) for v in values]


def _phases(adds: Sequence[dict[str, Any]]) -> str:
    """Where the agents' time for one added service went (medians over the adds and nodes of the
    slow applies' phases), as the agents logged it; "" without such lines."""
    logs = [a for add in adds for a in (add.get("agent_log") or {}).values()]
    if not any(a.get("slow_partial_applies") for a in logs):
        return ""
    policy = statistics.median(a["policy_ms_sum"] for a in logs)
    services = statistics.median(a["services_ms_sum"] for a in logs)
    nft = statistics.median(a["nft_apply_ms_sum"] for a in logs)
    return f"; per agent: policy {policy:.0f} ms, services {services:.0f} ms (nft table {nft:.0f} ms)"


def rows(profile: str, r: dict[str, Any]) -> list[Row]:
    n = r["services"]
    first = r["cold"][0]
    agent = first["agent_log"]
    cpu = ", ".join(f"{node} {s}" for node, s in sorted(first["agent_cpu_s"].items()))
    nft = sum(a["nft_applies"] for a in agent.values())
    note = f"write {first['write_s']} s; agent CPU s {cpu}"
    if nft:
        note += f"; {nft} nft applies, {sum(a['nft_apply_ms_sum'] for a in agent.values()):.0f} ms"
    later = [c["seconds"] for c in r["cold"][1:]]
    out = [Row(f"{profile}: cold sync, {n:,} services + pods", first["seconds"], "s", COLD_GOAL_S, note=note)]
    if later:
        out.append(
            Row(
                f"{profile}: cold sync, {n - 1:,} services again (pods there)",
                max(later),
                "s",
                COLD_GOAL_S,
                note=f"each: {later}",
            )
        )
    if "restart_cold" in r:
        cold = r["restart_cold"]
        out.append(
            Row(
                f"{profile}: cold sync, one agent restarted with {cold['services']:,} services in etcd",
                cold["seconds"],
                "s",
                COLD_GOAL_S,
                note="its table deleted first; no bench write in the figure",
            )
        )
    if r["deletes"]:
        out.append(
            Row(
                f"{profile}: {n - 1:,} services deleted, out of the kernel",
                max(d["seconds"] for d in r["deletes"]),
                "s",
            )
        )
    add = summary_ms([a["add_s"] for a in r["one_added"]])
    gone = summary_ms([a["delete_s"] for a in r["one_added"]])
    out.append(
        Row(
            f"{profile}: one service added at {n:,}, median",
            add["median"],
            "ms",
            ADD_GOAL_MS,
            note=f"max {add['max']} ms of {add['n']}{_phases(r['one_added'])}",
        )
    )
    out.append(Row(f"{profile}: one service added at {n:,}, max", add["max"], "ms", ADD_GOAL_MS))
    out.append(
        Row(
            f"{profile}: one service deleted at {n:,}, median",
            gone["median"],
            "ms",
            note=f"max {gone['max']} ms",
        )
    )
    conn = r["conn_per_s"]
    ratios = round_ratios(conn["with_n"], conn["with_1"])
    out.append(
        Row(
            f"{profile}: conn/s via ClusterIP, {n:,} / 1 services",
            round(statistics.median(ratios), 3),
            "",
            RATIO_GOAL,
            ">=",
            note=f"rounds {ratios}; conn/s with 1 {_ints(conn['with_1'])}, with N {_ints(conn['with_n'])}",
        )
    )
    for node in sorted(r["rss_loaded"]):
        idle, loaded = r["rss_idle"][node]["rss_mib"], r["rss_loaded"][node]
        out.append(
            Row(
                f"{profile}: agent RSS {node}, {n:,} services",
                loaded["rss_mib"],
                "MiB",
                note=f"idle {idle} MiB (+{loaded['rss_mib'] - idle:.1f}); peak {loaded['peak_mib']} MiB",
            )
        )
    return out


def run(
    quick: bool = False, step: Callable[[str], None] = lambda text: None, profiles=None, opts=None
) -> dict:  # type: ignore[no-untyped-def]
    from podnet.bench.services import check_tools

    check_tools()
    if opts is None:
        opts = Options(**(QUICK if quick else {}))
    chosen = profiles or ("calico", "cilium")
    samples, table = {}, []
    for profile in chosen:  # one lab at a time: they would compete for the 2 cores
        samples[profile] = measure(profile, opts, step)
        table += rows(profile, samples[profile])
    return {"rows": table, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    from podnet.bench.scale import render

    ap = argparse.ArgumentParser(
        prog="python -m podnet.bench.scale_services", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--quick", action="store_true", help=f"{QUICK['services']:,} services, fewer rounds")
    ap.add_argument("--profiles", default=None, help="comma-separated: calico,cilium (default both)")
    ap.add_argument("--services", type=int, help="N (default 10,000; quick 1,000)")
    ap.add_argument("--rounds", type=int, help="conn/s rounds, each with 1 and with N services")
    ap.add_argument("--json", metavar="PATH", help="also write rows and samples as JSON")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    opts = Options(**(QUICK if args.quick else {}))
    for name in ("services", "rounds"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    if opts.services < 2 or opts.rounds < 1:
        ap.error("--services must be >= 2 and --rounds >= 1")
    profiles = tuple(p for p in (args.profiles or "").split(",") if p) or None
    out = run(args.quick, step=lambda text: print(text, flush=True), profiles=profiles, opts=opts)
    doc = {
        "order": ["services"],
        "services": {"rows": [r.to_dict() for r in out["rows"]], "samples": out["samples"]},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    print(json.dumps(doc, indent=1) if args.output == "json" else render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
