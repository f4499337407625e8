"""The lab kubelet runs each node's agent as a DaemonSet's kubelet runs its pod: it starts the
agent, sees it exit, and starts it again with back-off.

    lab up ── meta.agents[NODE].spec ──▶ kubelet: AgentSupervisor ── spawn (its child) ──▶ agent-NODE
                                                  │ waitpid: exit code or signal
                                                  ▼
                      exited → wait the back-off → start again, restarts += 1

Back-off has the shape of Kubernetes' CrashLoopBackOff: the first restart after a good run is
immediate, each next one waits twice as long (10 s, 20 s, … capped at 5 min) and 10 min of running
resets it. The lab uses the same shape on a tenth of the clock (1 s doubling to 30 s, reset after
60 s of running): ``BACKOFF_SCALE``.

Hold: whoever stops an agent on purpose (``cluster.stop_process`` of an agent, which the chaos
scenarios use) holds that node first, and the kubelet leaves it down; ``cluster.start_process``
asks for a start (now, no back-off, not counted as a restart) and lifts the hold. Everything is in
the lab state (``meta.agents``), so ``podnet lab status`` shows it and any process can hold.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podnet.agent.log import kv
from podnet.lab.naming import LabError, LabNames
from podnet.lab.netns import Spawned, proc_alive, spawn
from podnet.lab.state import LabState, ProcessRecord

log = logging.getLogger("podnet.lab.supervisor")

META_KEY = "agents"
KUBELET = "kubelet"  # its process record
#: Kubernetes' kubelet: 10 s initial back-off, 5 min cap, reset after 10 min of running.
K8S_BACKOFF_BASE, K8S_BACKOFF_CAP, K8S_BACKOFF_RESET = 10.0, 300.0, 600.0
BACKOFF_SCALE = 0.1
BACKOFF_BASE = K8S_BACKOFF_BASE * BACKOFF_SCALE
BACKOFF_CAP = K8S_BACKOFF_CAP * BACKOFF_SCALE
BACKOFF_RESET = K8S_BACKOFF_RESET * BACKOFF_SCALE
POLL_SECONDS = 0.1


def process_name(node: str) -> str:
    return f"agent-{node}"


def new_entry(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``meta.agents[node]`` for an agent not started yet: ``spec`` is {cmd, netns, cgroup, log}."""
    return {
        "spec": dict(spec),
        "held": False,
        "start": False,  # a start asked for by hand (start_process): now, no back-off, not a restart
        "restarts": 0,
        "backoff": 0.0,  # the wait before the restart after the next exit
        "next_start": None,  # wall clock: when the kubelet starts it again
        "started_at": None,
        "exited_at": None,
        "exited_pid": None,
        "last_exit": None,
    }


def plan_restart(backoff: float, ran_for: float) -> tuple[float, float]:
    """After an exit: (seconds to wait before starting again, the back-off after that start).

    ``backoff`` is the current one (0 after a good run), ``ran_for`` how long the process ran."""
    if ran_for >= BACKOFF_RESET:
        backoff = 0.0
    return backoff, min(BACKOFF_CAP, max(BACKOFF_BASE, 2 * backoff))


def start_due(entry: Mapping[str, Any], now: float) -> bool:
    """Whether the kubelet starts the agent now: asked to, never started, or its back-off is over."""
    if entry.get("held"):
        return False
    if entry.get("start"):
        return True
    next_start = entry.get("next_start")
    if next_start is None:
        return entry.get("started_at") is None
    return bool(next_start <= now)


def describe_exit(returncode: int | None) -> str:
    """``exit code 1``, ``signal 9 (SIGKILL)``; ``unknown`` when this kubelet did not start it."""
    if returncode is None:
        return "unknown (not started by this kubelet)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"signal {-returncode} ({name})"
    return f"exit code {returncode}"


@dataclass(frozen=True)
class AgentStatus:
    node: str
    state: str  # running | back-off | held | starting
    pid: int | None
    restarts: int
    last_exit: str | None
    exited_ago: float | None  # seconds
    backoff: float  # the wait before the restart after the next exit
    next_start_in: float | None  # seconds, while in back-off


def agent_status(state: LabState, now: float | None = None) -> list[AgentStatus]:
    """Every supervised agent of the lab, as ``podnet lab status`` shows it."""
    now = time.time() if now is None else now
    doc = state.load()
    records = {p["name"]: ProcessRecord.from_dict(p) for p in doc["processes"]}
    out = []
    for node, entry in (doc["meta"].get(META_KEY) or {}).items():
        rec = records.get(process_name(node))
        alive = rec is not None and proc_alive(rec.pid, rec.start_time)
        next_start = entry.get("next_start")
        if entry.get("held"):
            what = "held"
        elif alive:
            what = "running"
        elif next_start is not None and next_start > now:
            what = "back-off"
        else:
            what = "starting"
        exited_at = entry.get("exited_at")
        out.append(
            AgentStatus(
                node=node,
                state=what,
                pid=rec.pid if alive and rec else None,
                restarts=int(entry.get("restarts", 0)),
                last_exit=entry.get("last_exit"),
                exited_ago=None if exited_at is None else max(0.0, now - exited_at),
                backoff=float(entry.get("backoff", 0.0)),
                next_start_in=max(0.0, next_start - now) if what == "back-off" else None,
            )
        )
    return out


def hold(state: LabState, node: str) -> bool:
    """Hold the supervision of ``node``'s agent: the kubelet leaves it as it is, down or up.
    False if the lab does not supervise that node's agent."""
    return _update_entry(state, node, held=True)


def release(state: LabState, node: str, cmd: list[str] | None = None, *, start: bool = True) -> bool:
    """Lift the hold; ``start``: the kubelet starts the agent now if it is down (with ``cmd`` from
    then on), without back-off and without counting a restart."""
    fields: dict[str, Any] = {"held": False, "start": start}
    return _update_entry(state, node, cmd=cmd, **fields)


def _update_entry(state: LabState, node: str, cmd: list[str] | None = None, **fields: Any) -> bool:
    with state.update() as doc:
        entry = (doc["meta"].get(META_KEY) or {}).get(node)
        if entry is None:
            return False
        entry.update(fields)
        if cmd is not None:
            entry["spec"]["cmd"] = list(cmd)
    return True


def supervised(state: LabState, node: str) -> bool:
    """Whether the lab's kubelet supervises ``node``'s agent and runs (it is the one to start it)."""
    doc = state.load()
    if node not in (doc["meta"].get(META_KEY) or {}):
        return False
    kubelet = next((p for p in doc["processes"] if p["name"] == KUBELET), None)
    return kubelet is not None and proc_alive(kubelet["pid"], kubelet["start_time"])


class AgentSupervisor:
    """The kubelet's loop over ``meta.agents``: start, watch, restart with back-off."""

    def __init__(
        self,
        names: LabNames,
        stop: threading.Event,
        poll: float = POLL_SECONDS,
        state: LabState | None = None,
    ) -> None:
        self.names = names
        self.state = state or LabState(names.state_dir)
        self.stop = stop
        self.poll = poll
        self.children: dict[str, Spawned] = {}  # node -> the agent process this kubelet started

    def run(self) -> None:
        while not self.stop.wait(self.poll):
            try:
                self.step()
            except Exception:
                log.exception("agent supervision step failed")

    def step(self, now: float | None = None) -> None:
        """One pass: lock-free look first, and the lock only for a node that needs something."""
        now = time.time() if now is None else now
        doc = self.state.load()
        records = {p["name"]: ProcessRecord.from_dict(p) for p in doc["processes"]}
        for node, entry in (doc["meta"].get(META_KEY) or {}).items():
            if self._needs_action(entry, records.get(process_name(node)), now):
                with self.state.update() as locked:
                    self._act(node, locked, now)

    @staticmethod
    def _needs_action(entry: dict, rec: ProcessRecord | None, now: float) -> bool:
        if rec is not None and proc_alive(rec.pid, rec.start_time):
            return bool(entry.get("start"))
        if rec is not None and entry.get("exited_pid") != rec.pid:
            return True  # an exit not recorded yet
        return start_due(entry, now)

    def _act(self, node: str, doc: dict, now: float) -> None:
        """Under the state lock: record an exit, plan the restart, start when due."""
        entry = (doc["meta"].get(META_KEY) or {}).get(node)
        if entry is None:
            return
        name = process_name(node)
        rec = next((ProcessRecord.from_dict(p) for p in doc["processes"] if p["name"] == name), None)
        if rec is not None and proc_alive(rec.pid, rec.start_time):
            entry["start"] = False  # asked to start what runs: it runs
            return
        if rec is not None and entry.get("exited_pid") != rec.pid:
            self._record_exit(node, entry, rec, now)
        if start_due(entry, now):
            if not entry.get("start") and entry.get("started_at") is not None:
                entry["restarts"] = int(entry.get("restarts", 0)) + 1
            self._start(node, entry, doc, now)

    def _record_exit(self, node: str, entry: dict, rec: ProcessRecord, now: float) -> None:
        child = self.children.pop(node, None)
        code = None
        if child is not None and child.pid == rec.pid and child.popen is not None:
            code = child.popen.wait(timeout=5.0)  # dead (or a zombie): reaps it
        entry.update(exited_pid=rec.pid, exited_at=now, last_exit=describe_exit(code))
        crashed = not entry.get("held") and not entry.get("start")
        if crashed:
            ran_for = now - (entry.get("started_at") or now)
            wait, entry["backoff"] = plan_restart(float(entry.get("backoff", 0.0)), ran_for)
            entry["next_start"] = now + wait
        after = f"restart in {entry['next_start'] - now:.1f}s" if crashed else "held or asked: not a restart"
        kv(log, logging.WARNING, "agent exited", node=node, pid=rec.pid, exit=entry["last_exit"], then=after)

    def _start(self, node: str, entry: dict, doc: dict, now: float) -> None:
        spec = entry["spec"]
        try:
            child = spawn(
                spec["cmd"],
                netns=spec.get("netns"),
                cgroup=spec.get("cgroup"),
                lab_prefix=self.names.prefix,
                log=spec.get("log"),
            )
        except LabError as exc:  # e.g. its netns is gone: try again after the back-off
            wait, entry["backoff"] = plan_restart(float(entry.get("backoff", 0.0)), 0.0)
            entry.update(start=False, next_start=now + wait, exited_at=now, last_exit=f"not started: {exc}")
            kv(log, logging.WARNING, "agent not started", node=node, error=str(exc))
            return
        self.children[node] = child
        record = ProcessRecord.of(process_name(node), child, node=node)
        doc["processes"] = [p for p in doc["processes"] if p["name"] != record.name] + [record.to_dict()]
        entry.update(start=False, next_start=None, started_at=now)
        kv(log, logging.INFO, "agent started", node=node, pid=child.pid, restarts=entry["restarts"])
