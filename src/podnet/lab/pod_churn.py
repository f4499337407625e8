"""Pod churn under faults: sandboxes wired through a node's real CNI chain while agents and etcd die.

Two scenarios on a running lab (:class:`~podnet.lab.chaos.ChaosLab`); neither needs a pod server
nor a Pod resource: a sandbox is a network namespace plus CNI ADD/DEL, run the way kubelet runs
them (``ip netns exec <node> podnet-cni → portmap → bandwidth``, see :class:`ChurnSandbox`)::

    kubelet model, per sandbox              faults (one thread)            checks (afterwards)
    ─────────────────────────────           ───────────────────            ───────────────────
    netns → ADD ─ok──▶ hold ─▶ DEL ─▶ rm    kill -9 an agent, restart       no address held twice at once
            │fail                            kill -9 every agent             (:func:`overlaps` over the
            ▼                                stop etcd, start it again       windows ADD ok → DEL start)
            DEL (retried) → back-off → ADD   …at chosen moments              ipam check: no leak/duplicate
                                                                             no host veth, /32 route,
                                                                             endpoint record, queued DEL
                                                                             or libcni cache entry left

- :func:`kill_agent_mid_cni`: many concurrent ADDs on one node; its agent is killed (``kill -9``)
  while ADDs are in flight, several times, and restarted; the kubelet side retries; every sandbox
  that came up is CNI CHECKed (no half-wired sandbox), then everything is deleted (one more kill
  during the DELs).
- :func:`ipam_under_fire`: ``pods`` sandboxes created and deleted over every node (a thread pool),
  with a fault schedule (agent kills on different nodes, all agents at once, etcd stopped for a few
  seconds), a sampler running ``ipam check`` for duplicates during the run, then the GC path.

An address is *held* from the moment its ADD returned success until its DEL starts: two holds of the
same address that overlap are a duplicate (a reuse is only legal after the DEL). Each pod is also
CNI CHECKed just before its DEL (still wired, IPAM still holds its address for it).

Faults (:func:`inject`): ``kill:<node>``, ``kill-all``, ``etcd:<seconds>``, and
``kill-in-outage:<node>:<seconds>`` (an agent killed while etcd is down: the DELs the plugin queues
meanwhile cannot be served when the agent starts; it found the stale-queued-DEL bug fixed in
:mod:`podnet.agent.delete_queue`). By hand, on a lab that is up::

    podnet lab chaos kill-agent-mid-cni [--pods 30] [--outage-seconds 14]
    podnet lab chaos ipam-under-fire [--pods 1000] [--fault kill:node-2 ...]
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from podnet.lab import cluster
from podnet.lab.chaos import ChaosLab, Sandbox
from podnet.lab.naming import LabError, LabNames
from podnet.lab.state import LabState
from podnet.stats import percentile

IFNAME = "eth0"
ERR_TRY_AGAIN = 11
PODNET_RTPROTO = "112"
ADD_ATTEMPTS = 12  # kubelet retries a failed sandbox for ever; bounded here so a bug ends the run
DEL_ATTEMPTS = 40
BACKOFF_START, BACKOFF_MAX = 0.1, 2.0


# ---------------------------------------------------------------------- holds and overlaps (pure)


@dataclass(frozen=True)
class Hold:
    """``address`` held by ``pod`` from ``start`` (its ADD returned) to ``end`` (its DEL started)."""

    address: str
    pod: str
    start: float
    end: float = math.inf


def overlaps(holds: Iterable[Hold]) -> list[tuple[Hold, Hold]]:
    """Pairs of holds of one address that overlap in time (touching ends are not an overlap)."""
    by_address: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_address[hold.address].append(hold)
    found: list[tuple[Hold, Hold]] = []
    for address_holds in by_address.values():
        address_holds.sort(key=lambda h: (h.start, h.end))
        latest: Hold | None = None  # the earlier hold that ends last
        for hold in address_holds:
            if latest is not None and hold.start < latest.end:
                found.append((latest, hold))
            if latest is None or hold.end > latest.end:
                latest = hold
    return found


def max_concurrent(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` intervals open at one instant."""
    spans = list(intervals)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def fault_schedule(nodes: Sequence[str], etcd_seconds: float = 4.0) -> list[str]:
    """The full run's faults: each node's agent killed, every agent once, etcd stopped, one more kill."""
    kills = [f"kill:{n}" for n in nodes]
    return [kills[0], f"etcd:{etcd_seconds:g}", *kills[1:2], "kill-all", *kills[2:], kills[0]]


# ---------------------------------------------------------------------- the kubelet side


class ChurnSandbox(Sandbox):
    """:class:`~podnet.lab.chaos.Sandbox` with the kubelet's retry rules and the ADD's address."""

    def __init__(self, names: LabNames, node: str) -> None:
        super().__init__(names, node)
        self.node = node
        self.pod = self.args["K8S_POD_NAME"]
        self.address = ""
        self.failed_adds: list[tuple[int, str]] = []  # (code, message) of each failed ADD
        self.failed_dels = 0
        self.deleted = False  # the last DEL succeeded

    def add_once(self) -> tuple[float, int, str]:
        """One ADD through the chain: seconds, code (0: success, the address is kept), message."""
        from podnet.lab.cni_runtime import CNIError

        started = time.monotonic()
        try:
            result = self.runtime.add(self.id, self.path, IFNAME, self.args)
        except CNIError as exc:
            return time.monotonic() - started, exc.code or -1, exc.msg
        except (OSError, subprocess.SubprocessError) as exc:
            return time.monotonic() - started, -1, f"{type(exc).__name__}: {exc}"
        self.address = str(result["ips"][0]["address"]).split("/")[0]
        return time.monotonic() - started, 0, ""

    def delete(self, attempts: int = DEL_ATTEMPTS) -> bool:
        """DEL until it succeeds (the runtime must), with back-off; False when every attempt failed."""
        from podnet.lab.cni_runtime import CNIError

        delay = BACKOFF_START
        for _ in range(attempts):
            try:
                self.runtime.delete(self.id, self.path, IFNAME, self.args)
                self.deleted = True
                return True
            except (CNIError, OSError, subprocess.SubprocessError):
                self.failed_dels += 1
                time.sleep(delay)
                delay = min(BACKOFF_MAX, delay * 2)
        return False

    def check(self, attempts: int = DEL_ATTEMPTS) -> str:
        """CNI CHECK of podnet (veth, addresses, routes, IPAM): '' when fully wired, else the error.

        Only the chain's first plugin: Debian's ``bandwidth`` CHECK panics (nil pointer) on a
        sandbox without a bandwidth limit."""
        from podnet.lab.cni_runtime import CNIError, CNIRuntime

        conflist = dict(self.runtime.conflist, plugins=self.runtime.conflist["plugins"][:1])
        runtime = CNIRuntime(
            None, self.runtime.cni_path, self.runtime.cache_dir, self.runtime.prefix, conflist=conflist
        )
        delay = BACKOFF_START
        for _ in range(attempts):
            try:
                runtime.check(self.id, self.path, IFNAME, self.args)
                return ""
            except CNIError as exc:
                if exc.code != ERR_TRY_AGAIN:
                    return str(exc)[:300]
                problem = str(exc)[:300]
            except OSError as exc:
                return str(exc)[:300]
            time.sleep(delay)  # agent or datastore down: ask again, as a runtime would
            delay = min(BACKOFF_MAX, delay * 2)
        return problem

    def close(self) -> None:
        """Remove the netns (after DEL)."""
        from podnet.lab.netns import delete_netns

        delete_netns(self.netns)
        LabState(self.names.state_dir).forget_netns(self.netns)


@dataclass
class Tally:
    """What the kubelet side saw, shared by the worker threads (``lock`` guards it)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    holds: list[Hold] = field(default_factory=list)
    add_seconds: list[float] = field(default_factory=list)  # of successful ADDs
    failed_adds: int = 0
    failure_codes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    in_flight: int = 0  # CNI ADDs executing right now
    max_in_flight: int = 0
    alive: list[tuple[float, float]] = field(default_factory=list)  # sandbox lifetimes
    started: int = 0
    gave_up: list[str] = field(default_factory=list)

    def begin_add(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end_add(self, seconds: float, code: int) -> None:
        with self.lock:
            self.in_flight -= 1
            if code == 0:
                self.add_seconds.append(seconds)
            else:
                self.failed_adds += 1
                self.failure_codes[code] += 1


def add_until_up(sandbox: ChurnSandbox, tally: Tally, attempts: int = ADD_ATTEMPTS) -> bool:
    """ADD as kubelet does: on failure DEL (retried until done), back off, ADD again (bounded)."""
    delay = BACKOFF_START
    for _ in range(attempts):
        tally.begin_add()
        seconds, code, message = sandbox.add_once()
        tally.end_add(seconds, code)
        if code == 0:
            return True
        sandbox.failed_adds.append((code, message[:160]))
        if not sandbox.delete():
            break
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(BACKOFF_MAX, delay * 2)
    with tally.lock:
        tally.gave_up.append(f"{sandbox.pod} on {sandbox.node}: {sandbox.failed_adds[-1:]}")
    return False


# ---------------------------------------------------------------------- faults


def kill_agents(names: LabNames, nodes: Sequence[str]) -> float:
    """``kill -9`` the agents of ``nodes`` together, start them again; seconds until all answer."""
    records = [cluster.stop_process(names, f"agent-{n}", signal.SIGKILL) for n in nodes]
    started = time.monotonic()
    for record in records:
        cluster.start_process(names, record)
    for node in nodes:
        cluster.wait_agent(names, node, timeout=60.0)
    return time.monotonic() - started


def etcd_outage(names: LabNames, nodes: Sequence[str], seconds: float, kill: str | None = None) -> float:
    """Stop etcd (every member) for ``seconds``, start it again; seconds until every agent answers
    STATUS again.

    ``kill``: that node's agent is also ``kill -9``ed and started while etcd is down (it cannot
    sync): the DELs the plugin queues meanwhile cannot be served when it drains its queue."""
    with cluster.etcd_down(names):
        if kill is not None:
            agent = cluster.stop_process(names, f"agent-{kill}", signal.SIGKILL)
            time.sleep(min(0.5, seconds / 2))
            cluster.start_process(names, agent)
            seconds = max(0.0, seconds - 0.5)
        time.sleep(seconds)
    started = time.monotonic()
    for node in nodes:
        cluster.wait_agent(names, node, timeout=60.0)
    return time.monotonic() - started


FAULT_HINT = "kill:<node>, kill-all, etcd:<seconds> or kill-in-outage:<node>:<seconds>"


def inject(lab: ChaosLab, fault: str) -> dict[str, Any]:
    """One fault (:data:`FAULT_HINT`); returns what happened and how long the agents took to answer."""
    kind, _, arg = fault.partition(":")
    started = time.monotonic()
    if kind == "kill":
        back = kill_agents(lab.names, [arg])
    elif kind == "kill-all":
        back = kill_agents(lab.names, lab.nodes)
    elif kind == "etcd":
        back = etcd_outage(lab.names, lab.nodes, float(arg or 4))
    elif kind == "kill-in-outage":
        node, _, seconds = arg.partition(":")
        back = etcd_outage(lab.names, lab.nodes, float(seconds or 4), kill=node)
    else:
        raise LabError(f"unknown fault {fault!r}", hint=FAULT_HINT)
    return {"fault": fault, "seconds": round(time.monotonic() - started, 2), "back_seconds": round(back, 2)}


# ---------------------------------------------------------------------- checks afterwards


def _ip_json(netns: str, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def ipam_report(lab: ChaosLab) -> Any:
    """``podnet ipam check``'s report (the same library calls: cluster view, live handles, pools)."""
    from podnet.ipam import IPAM, pool_from_resource
    from podnet.ipam.liveness import ClusterView
    from podnet.model import lookup

    ipam = IPAM(lab.store.store, lab.store.layout)
    view = ClusterView.read(lab.store)
    live = view.live_handles(ipam.snapshot().allocations())
    pools = [pool_from_resource(p) for p in lab.store.list(lookup("ippools"))]
    return ipam.check(live, view.nodes, pools=pools)


def ipam_gc(lab: ChaosLab, interval: float = 0.5) -> dict[str, Any]:
    """``podnet ipam gc`` (two passes that must agree, grace 0); what it released."""
    from podnet.ipam import IPAM
    from podnet.ipam.liveness import ClusterView

    ipam = IPAM(lab.store.store, lab.store.layout)
    result = None
    for n in range(2):
        if n:
            time.sleep(interval)
        view = ClusterView.read(lab.store)

        def still_live(handle: str) -> bool:
            return handle in ClusterView.read(lab.store).live_handles(ipam.snapshot().allocations())

        live = view.live_handles(ipam.snapshot().allocations())
        result = ipam.gc(live, view.nodes, grace_seconds=0.0, is_live=still_live)
    assert result is not None
    return {
        "released_addresses": result.released_addresses,
        "released_handles": result.released_handles,
        "released_blocks": result.released_blocks,
        "skipped": result.skipped,
    }


def leftovers(
    lab: ChaosLab, sandboxes: Sequence[ChurnSandbox], addresses: Iterable[str]
) -> dict[str, list[str]]:
    """What the sandboxes left behind after their DEL: host veths, /32 routes (protocol 112) to their
    addresses, endpoint records, IPAM handles, queued DELs, libcni cache entries, netns."""
    from podnet.cni.agent_api import delete_queue_dir
    from podnet.dataplane.endpoint import host_ifname_for
    from podnet.dataplane.netns import netns_exists
    from podnet.ipam import IPAM

    meta = LabState(lab.names.state_dir).meta()["nodes"]
    ifnames = {host_ifname_for(p, "chaos", s.pod) for s in sandboxes for p in ("cali", "lxc")}
    wanted = set(addresses)
    out: dict[str, list[str]] = defaultdict(list)
    for node, info in meta.items():
        for link in _ip_json(info["netns"], "link", "show"):
            if link.get("ifname") in ifnames:
                out["host_veths"].append(f"{node}: {link['ifname']}")
        for route in _ip_json(info["netns"], "route", "show", "proto", PODNET_RTPROTO):
            dst = str(route.get("dst", ""))  # a pod's /32 shows without a length
            if dst.removesuffix("/32") in wanted and route.get("type", "unicast") == "unicast":
                out["routes"].append(f"{node}: {route.get('dst')} dev {route.get('dev')}")
        queue = delete_queue_dir(lab.names.agent_socket(node))
        with contextlib.suppress(FileNotFoundError):
            out["queued_dels"] += [f"{node}: {n}" for n in os.listdir(queue) if n.endswith(".delete")]
    ids = {s.id for s in sandboxes}
    kvs, _ = lab.store.store.list(lab.store.layout.endpoints_prefix())
    out["endpoint_records"] = [kv.key for kv in kvs if any(i in kv.key for i in ids)]
    handles = {a.handle_id for a in IPAM(lab.store.store, lab.store.layout).snapshot().allocations()}
    out["ipam_handles"] = sorted(h for h in handles if h.split(".")[-2:-1] and h.split(".")[-2] in ids)
    for s in sandboxes:
        if os.path.exists(s.runtime.cache_path(s.id, IFNAME)):
            out["cni_cache"].append(s.id)
        if netns_exists(s.netns):
            out["netns"].append(s.netns)
    return {k: v for k, v in out.items() if v}


def _issues(report: Any, kind: str) -> list[str]:
    return [str(i) for i in report.of_kind(kind)]


# ---------------------------------------------------------------------- scenario 1


def kill_agent_mid_cni(
    lab: ChaosLab,
    node: str | None = None,
    pods: int = 30,
    kills: int = 3,
    concurrency: int = 10,
    del_kills: int = 1,
    outage_seconds: float = 0.0,
    settle: float = 6.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """``pods`` concurrent ADDs on ``node``; its agent is killed ``kills`` times while ADDs are in
    flight (at varied moments), restarted; kubelet-style retries; CHECK every sandbox; DEL all
    (``del_kills`` more kills meanwhile); then the checks. Returns the report.

    ``outage_seconds`` > 0: the last ADD-phase kill happens with etcd stopped for that long (DELs
    queued meanwhile cannot be drained at the agent's start); the CHECKs then wait ``settle``
    seconds, past the agent's retry of its deletion queue."""
    rng = random.Random(seed)
    node = node or lab.nodes[0]
    started = time.monotonic()
    tally = Tally()
    kill_log: list[dict[str, Any]] = []
    sandboxes: list[ChurnSandbox] = []
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(ChurnSandbox, lab.names, node) for _ in range(pods)]:
                sandboxes.append(future.result())
        # phase 1: concurrent ADDs, kills while they are in flight
        done = threading.Event()

        def killer(phase: str, count: int, in_flight: Callable[[], bool]) -> None:
            for k in range(count):
                time.sleep(rng.uniform(0.02, 0.5))  # a different moment of the ADD each time
                while not in_flight() and not done.is_set():
                    time.sleep(0.005)
                if done.is_set():
                    return
                at = round(time.monotonic() - started, 3)
                busy = tally.in_flight
                entry: dict[str, Any] = {"at": at, "phase": phase, "adds_in_flight": busy}
                try:
                    if outage_seconds and phase == "ADD" and k == count - 1:
                        back = etcd_outage(lab.names, lab.nodes, outage_seconds, kill=node)
                    else:
                        back = kill_agents(lab.names, [node])
                    entry["back_seconds"] = round(back, 2)
                except Exception as exc:  # reported, not lost in the thread
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                kill_log.append(entry)

        thread = threading.Thread(
            target=killer, args=("ADD", kills, lambda: tally.in_flight > 0), daemon=True
        )
        thread.start()
        with ThreadPoolExecutor(concurrency) as pool:
            up = list(pool.map(lambda s: add_until_up(s, tally), sandboxes))
        done.set()
        thread.join()
        adds_done = time.monotonic()
        addresses = [s.address for s in sandboxes if s.address]
        duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
        if outage_seconds:
            time.sleep(settle)
        with ThreadPoolExecutor(concurrency) as pool:
            checks = list(pool.map(lambda s: s.check() if s.address else "", sandboxes))
        half_wired = [f"{s.pod}: {c}" for s, c in zip(sandboxes, checks, strict=True) if c]
        # phase 2: DEL everything (a kill meanwhile), as kubelet tears pods down
        del_flight = threading.Event()
        done.clear()
        thread = threading.Thread(target=killer, args=("DEL", del_kills, del_flight.is_set), daemon=True)
        thread.start()

        def teardown(s: ChurnSandbox) -> bool:
            del_flight.set()
            return s.delete()

        with ThreadPoolExecutor(concurrency) as pool:
            deleted = list(pool.map(teardown, sandboxes))
        done.set()
        thread.join()
    finally:
        for s in sandboxes:  # also when the run failed: no sandbox outlives it
            with contextlib.suppress(Exception):
                if s.address and not s.deleted:
                    s.delete(attempts=3)
            with contextlib.suppress(Exception):
                s.close()
    report = ipam_report(lab)
    left = leftovers(lab, sandboxes, addresses)
    return {
        "scenario": "kill-agent-mid-cni",
        "node": node,
        "pods": pods,
        "up": sum(up),
        "kills": kill_log,
        "failed_adds": tally.failed_adds,
        "failure_codes": dict(tally.failure_codes),
        "gave_up": tally.gave_up,
        "duplicates": duplicates,
        "half_wired": half_wired,
        "dels_failed": deleted.count(False),
        "failed_dels_retried": sum(s.failed_dels for s in sandboxes),
        "ipam_ok": report.ok,
        "ipam_issues": [str(i) for i in report.issues],
        "leftovers": left,
        "max_in_flight": tally.max_in_flight,
        "add_p50_ms": round(percentile(tally.add_seconds, 0.50) * 1e3, 1),
        "add_p99_ms": round(percentile(tally.add_seconds, 0.99) * 1e3, 1),
        "adds_seconds": round(adds_done - started, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
    }


# ---------------------------------------------------------------------- scenario 2


class _Sampler(threading.Thread):
    """``ipam check`` (duplicates only) every ``interval`` seconds while the run goes on."""

    def __init__(self, lab: ChaosLab, interval: float = 2.0) -> None:
        super().__init__(name="ipam-sampler", daemon=True)
        self.lab, self.interval = lab, interval
        self.stop = threading.Event()
        self.samples = 0
        self.duplicates: list[str] = []

    def run(self) -> None:
        from podnet.errors import PodnetError
        from podnet.ipam import IPAM
        from podnet.ipam.check import ISSUE_DUPLICATE

        ipam = IPAM(self.lab.store.store, self.lab.store.layout)
        while not self.stop.wait(self.interval):
            try:
                report = ipam.check(None, None)
            except PodnetError:
                continue  # etcd stopped on purpose
            self.samples += 1
            self.duplicates += _issues(report, ISSUE_DUPLICATE)


def ipam_under_fire(
    lab: ChaosLab,
    pods: int = 1000,
    concurrency: int = 8,
    faults: Sequence[str] | None = None,
    hold: tuple[float, float] = (0.0, 0.3),
    check: bool = True,
    seed: int | None = None,
) -> dict[str, Any]:
    """``pods`` sandboxes created and deleted over every node (``concurrency`` at once) while
    ``faults`` (default :func:`fault_schedule`) happen, evenly spread over the run; then the
    overlap check over every hold, ``ipam check``, the GC path, ``ipam check`` again, leftovers."""
    from podnet.ipam.check import ISSUE_DUPLICATE, ISSUE_LEAKED

    rng = random.Random(seed)
    nodes = lab.nodes
    faults = list(fault_schedule(nodes) if faults is None else faults)
    tally = Tally()
    fault_log: list[dict[str, Any]] = []
    broken: list[str] = []  # sandboxes whose CNI CHECK failed before their DEL
    sandboxes: list[ChurnSandbox] = []
    lifetimes = [rng.uniform(*hold) for _ in range(pods)]
    started = time.monotonic()
    finished = threading.Event()

    def one_pod(i: int) -> None:
        with tally.lock:
            tally.started += 1
        born = time.monotonic()
        sandbox = ChurnSandbox(lab.names, nodes[i % len(nodes)])
        with tally.lock:
            sandboxes.append(sandbox)
        try:
            if add_until_up(sandbox, tally):
                up = time.monotonic()
                time.sleep(lifetimes[i])
                problem = sandbox.check() if check else ""  # still wired, IPAM still holds the address
                end = time.monotonic()  # the DEL starts: from here the address may go to another pod
                with tally.lock:
                    tally.holds.append(Hold(sandbox.address, sandbox.pod, up, end))
                    if problem:
                        broken.append(f"{sandbox.pod} on {sandbox.node} ({sandbox.address}): {problem}")
                if not sandbox.delete():
                    with tally.lock:
                        tally.gave_up.append(f"DEL of {sandbox.pod} on {sandbox.node}")
        finally:
            sandbox.close()
            with tally.lock:
                tally.alive.append((born, time.monotonic()))

    def fault_thread() -> None:
        for k, fault in enumerate(faults):
            threshold = pods * (k + 1) / (len(faults) + 1)
            while tally.started < threshold and not finished.is_set():
                time.sleep(0.01)
            if finished.is_set():
                return
            entry = {
                "at": round(time.monotonic() - started, 2),
                "pods_started": tally.started,
                "in_flight": tally.in_flight,
            }
            try:
                entry.update(inject(lab, fault))
            except Exception as exc:  # reported (and failed on by the caller), not lost in a thread
                entry.update(fault=fault, error=f"{type(exc).__name__}: {exc}")
            fault_log.append(entry)

    sampler = _Sampler(lab)
    sampler.start()
    injector = threading.Thread(target=fault_thread, name="faults", daemon=True)
    injector.start()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(one_pod, i) for i in range(pods)]:
                future.result()
    finally:
        finished.set()
        injector.join()
        sampler.stop.set()
        sampler.join()
    wall = time.monotonic() - started
    for node in nodes:
        cluster.wait_agent(lab.names, node, timeout=60.0)
    doubles = overlaps(tally.holds)
    before = ipam_report(lab)
    gc = ipam_gc(lab)
    after = ipam_report(lab)
    left = leftovers(lab, sandboxes, {h.address for h in tally.holds})
    retried = sum(1 for s in sandboxes if s.failed_adds and s.address)
    return {
        "scenario": "ipam-under-fire",
        "pods": pods,
        "nodes": len(nodes),
        "concurrency": concurrency,
        "pods_done": len(tally.holds),
        "faults": fault_log,
        "failed_adds": tally.failed_adds,
        "failure_codes": dict(tally.failure_codes),
        "pods_up_after_retry": retried,
        "failed_dels_retried": sum(s.failed_dels for s in sandboxes),
        "gave_up": tally.gave_up,
        "broken_before_del": broken,
        "distinct_addresses": len({h.address for h in tally.holds}),
        "address_reuses": len(tally.holds) - len({h.address for h in tally.holds}),
        "duplicates": [
            f"{a.address}: {a.pod} [{a.start - started:.2f}, {a.end - started:.2f}] and "
            f"{b.pod} [{b.start - started:.2f}, {b.end - started:.2f}]"
            for a, b in doubles
        ],
        "ipam_duplicates_sampled": sampler.duplicates,
        "ipam_samples": sampler.samples,
        "leaks_before_gc": _issues(before, ISSUE_LEAKED),
        "ipam_issues_before_gc": [str(i) for i in before.issues],
        "gc": gc,
        "ipam_ok_after_gc": after.ok,
        "ipam_issues_after_gc": [str(i) for i in after.issues],
        "ipam_duplicates": _issues(after, ISSUE_DUPLICATE),
        "leftovers": left,
        "max_pods_alive": max_concurrent(tally.alive),
        "max_adds_in_flight": tally.max_in_flight,
        "wall_seconds": round(wall, 1),
        "add_p50_ms": round(percentile(tally.add_seconds, 0.50) * 1e3, 1),
        "add_p99_ms": round(percentile(tally.add_seconds, 0.99) * 1e3, 1),
    }


def render(report: dict[str, Any]) -> str:
    """The report as text, one figure a line."""
    lines = [f"scenario {report['scenario']}"]
    for key, value in report.items():
        if key != "scenario":
            lines.append(f"  {key.replace('_', ' ')}: {value}")
    return "\n".join(lines)


SCENARIOS = ("kill-agent-mid-cni", "ipam-under-fire")


def run_scenario(
    lab: ChaosLab,
    scenario: str,
    node: str | None = None,
    pods: int | None = None,
    outage_seconds: float = 0.0,
    faults: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``podnet lab chaos kill-agent-mid-cni|ipam-under-fire``: one of the two, with its defaults."""
    if scenario == "kill-agent-mid-cni":
        return kill_agent_mid_cni(lab, node, pods=pods or 30, outage_seconds=outage_seconds)
    if scenario == "ipam-under-fire":
        return ipam_under_fire(lab, pods=pods or 1000, faults=faults)
    raise LabError(f"unknown scenario {scenario!r}", hint=", ".join(SCENARIOS))


def problems(report: dict[str, Any]) -> list[str]:
    """What in a report breaks the promise (empty: it held) — the CLI's exit status."""
    keys = (
        ("duplicates", "half_wired", "leftovers")
        if report["scenario"] == "kill-agent-mid-cni"
        else ("duplicates", "leaks_before_gc", "broken_before_del", "leftovers")
    )
    out = [f"{key.replace('_', ' ')}: {report[key]}" for key in keys if report.get(key)]
    clean = report.get("ipam_ok", report.get("ipam_ok_after_gc"))
    if not clean:
        out.append("podnet ipam check is not clean")
    return out
