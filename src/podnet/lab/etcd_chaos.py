"""etcd member faults on a lab with an etcd cluster (``podnet lab up --etcd-members 3``).

Three scenarios (``podnet lab chaos NAME``), each one fault window with real work going on::

    witness flows (chaos workload, as the other scenarios)      ─────────────────────────────────▶
    writer: numbered keys through the CLI's datastore, 20/s      ──────────────────────────────▶
    THE FAULT  ──────────────────────────────────────────────────── heal/restart ── healthy ──┤
      1. a NetworkPolicy denying the guarded pod applied: time until real probes are refused
      2. IPAM under fire (pod_churn.ipam_under_fire, no fault of its own: the member is away)
    checks: every acknowledged key on every member (its own copy, a serializable read after it
    caught up); policy; IPAM: 0 overlapping holds, 0 leaks; no flow interrupted

- ``etcd-member-kill``: a follower (default: one an agent is connected to, if any) ``kill -9``,
  started again after the work.
- ``etcd-leader-kill``: the current leader ``kill -9``; a new leader must be elected among the
  others (checked), the old one rejoins as a follower.
- ``etcd-member-partition``: one member (default: the one the guarded pod's node agent talks to)
  cut off from everything — other members, agents, the CLI's proxy — by nftables inside its own
  namespace (every packet not on loopback dropped), then healed.

Every check has its positive control, so that it can fail: the read-back must find a key that
was acknowledged and then deleted on purpose missing on every member; the guarded pod must answer
before the policy and again after it is deleted; the IPAM run must have reused addresses and taken
``ipam check`` samples; the leader must change after the leader kill; the agent must have been
connected to the partitioned member before and to another one after.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import DatastoreUnavailable, PodnetError
from podnet.lab import cluster, etcd_cluster
from podnet.lab.chaos import NAMESPACE, ChaosLab, _delete_policies, _guarded_probe, _policy_doc, _wait
from podnet.lab.naming import LabError
from podnet.lab.witness import Witness, summarize

SCENARIOS = ("etcd-member-kill", "etcd-leader-kill", "etcd-member-partition")
ENFORCE_WITHIN = 10.0  # seconds from a policy's acknowledged write to its enforcement, a member away
WRITE_INTERVAL = 0.05
KEY_ROOT = "/podnet-chaos/writes/"
PARTITION_TABLE = "podnet_chaos_partition"


# ---------------------------------------------------------------------- the writer


@dataclass
class WriteLog:
    """What the writer's numbered writes came to."""

    acked: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # the datastore said: outcome unknown
    refused: list[str] = field(default_factory=list)  # failed cleanly (never applied)
    errors: list[str] = field(default_factory=list)


def classify_write_error(exc: PodnetError) -> str:
    """``unknown`` (the write may have been applied) or ``refused`` (it was not)."""
    return "unknown" if "outcome is unknown" in exc.message else "refused"


class Writer(threading.Thread):
    """Creates ``<prefix><n>`` (n = 0, 1, …) one after another until stopped; never retries a
    key whose outcome is unknown (the next number follows)."""

    def __init__(self, store: Any, prefix: str, interval: float = WRITE_INTERVAL) -> None:
        super().__init__(name="etcd-writer", daemon=True)
        self.store, self.prefix, self.interval = store, prefix, interval
        self.log = WriteLog()
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"{self.prefix}{n:06d}"
            try:
                self.store.create(key, str(n).encode())
                self.log.acked.append(key)
            except PodnetError as exc:
                kind = classify_write_error(exc)
                (self.log.unknown if kind == "unknown" else self.log.refused).append(key)
                if len(self.log.errors) < 5:
                    self.log.errors.append(f"{key}: {exc.message[:160]}")
            n += 1
            self.stop.wait(self.interval)


def lost_writes(acked: list[str], held: set[str]) -> list[str]:
    """The acknowledged keys a member does not hold."""
    return [k for k in acked if k not in held]


# ---------------------------------------------------------------------- faults


def _partition(lab: ChaosLab, member: etcd_cluster.Member, on: bool) -> None:
    """Every packet of the member's namespace that is not on loopback dropped (or let through
    again). Only ever inside that lab namespace."""
    from podnet.dataplane.nft import run_nft

    table = f"table inet {PARTITION_TABLE}"
    script = (
        f"{table} {{\n chain input {{ type filter hook input priority -10; policy accept;\n"
        f'  iifname != "lo" drop\n }}\n'
        f" chain output {{ type filter hook output priority -10; policy accept;\n"
        f'  oifname != "lo" drop\n }}\n}}\n'
        if on
        else ""
    )
    if not lab.names.owns_netns(member.netns):
        raise LabError(f"refusing to partition {member.netns}: not a namespace of this lab")
    run_nft(f"{table}\ndelete {table}\n{script}", member.netns, "partition")


def agent_members(lab: ChaosLab, node: str) -> list[str]:
    """The etcd members (names) the node's agent has established connections to."""
    by_ip = {m.ip: m.name for m in etcd_cluster.members(lab.names)}
    out = subprocess.run(
        ["ip", "netns", "exec", lab.names.node_ns(node), "ss", "-Htn", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peers = {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
    return sorted(by_ip[ip] for ip in peers if ip in by_ip)


def pick_member(lab: ChaosLab, scenario: str, wanted: str | None, node: str) -> str:
    """The member a scenario takes away: ``wanted``; the leader (leader kill); a follower an
    agent talks to, else any follower (member kill); the guarded node's agent's member (partition)."""
    members = etcd_cluster.members(lab.names)
    if len(members) < 3:
        raise LabError(f"{scenario} needs an etcd cluster", hint="podnet lab up --etcd-members 3")
    leader = etcd_cluster.leader(lab.names)
    if scenario == "etcd-leader-kill":
        if wanted and wanted != leader:
            raise LabError(f"{wanted} is not the leader ({leader} is)")
        return leader
    if wanted:
        return etcd_cluster.member(lab.names, wanted).name
    used = agent_members(lab, node)
    if scenario == "etcd-member-partition" and used:
        return used[0]
    followers = [m.name for m in members if m.name != leader]
    return next((m for m in followers if m in used), followers[0])


# ---------------------------------------------------------------------- the scenario


def _leader_among_others(lab: ChaosLab, away: str, timeout: float = 15.0) -> tuple[str | None, float]:
    """The leader the members other than ``away`` agree on (None: none within ``timeout``), and
    when they did."""
    deadline = time.monotonic() + timeout
    while True:
        found = etcd_cluster.statuses(lab.names, timeout=1.0)
        answering = {k: v for k, v in found.items() if k != away and not isinstance(v, PodnetError)}
        name = etcd_cluster.leader_name(answering) if len(answering) == len(found) - 1 else None
        if name is not None or time.monotonic() > deadline:
            return name, time.monotonic()
        time.sleep(0.1)


def _apply_until_acked(lab: ChaosLab, doc: dict, timeout: float = 20.0) -> float:
    """Apply ``doc`` (idempotent: the same object again) until a write is acknowledged; returns
    when it was."""
    from podnet.model import parse_resource

    deadline = time.monotonic() + timeout
    while True:
        try:
            lab.store.apply([parse_resource(doc)])
            return time.monotonic()
        except DatastoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _read_back(lab: ChaosLab, prefix: str, revision: int, timeout: float = 30.0) -> dict[str, set[str]]:
    """Every member's own keys under ``prefix``, once it has caught up to ``revision``."""
    held = {}
    for m in etcd_cluster.members(lab.names):
        deadline = time.monotonic() + timeout
        while True:
            try:
                keys, at = etcd_cluster.member_keys(m, prefix)
            except PodnetError:
                keys, at = set(), -1
            if at >= revision:
                held[m.name] = keys
                break
            if time.monotonic() > deadline:
                raise LabError(
                    f"etcd member {m.name} did not catch up to revision {revision} in {timeout:g}s"
                )
            time.sleep(0.2)
    return held


def leak_control(lab: ChaosLab) -> bool:
    """Positive control of the leak check: an address allocated to a handle no pod has must be
    reported leaked by ``ipam check`` (then it is released)."""
    from podnet.ipam import IPAM, pool_from_resource
    from podnet.ipam.check import ISSUE_LEAKED
    from podnet.lab.pod_churn import ipam_report
    from podnet.model import lookup

    ipam = IPAM(lab.store.store, lab.store.layout)
    pools = [pool_from_resource(p) for p in lab.store.list(lookup("ippools"))]
    handle = f"chaos-leak-control-{uuid.uuid4().hex[:8]}"
    ipam.auto_assign(handle, lab.nodes[0], pools, {"namespace": NAMESPACE, "pod": handle})  # no such pod
    try:
        return any(i.handle == handle for i in ipam_report(lab).of_kind(ISSUE_LEAKED))
    finally:
        ipam.release_handle(handle)


def run_scenario(
    lab: ChaosLab,
    scenario: str,
    member: str | None = None,
    pods: int = 60,
    dwell: float = 2.0,
    concurrency: int = 4,
) -> dict[str, Any]:
    """One member fault with writes, a policy and IPAM churn during it (module docstring)."""
    from podnet.lab.pod_churn import ipam_under_fire
    from podnet.model import lookup

    if scenario not in SCENARIOS:
        raise LabError(f"unknown scenario {scenario!r}", hint=", ".join(SCENARIOS))
    lab.ensure_workload()
    guarded_node = lab.store.get(lookup("pods"), "guarded", NAMESPACE).spec.node_name
    target = etcd_cluster.member(lab.names, pick_member(lab, scenario, member, guarded_node))
    leader_before = etcd_cluster.leader(lab.names)
    agent_before = agent_members(lab, guarded_node)
    answers = _guarded_probe(lab)
    open_before = _wait(answers, 10.0) is not None
    prefix = f"{KEY_ROOT}{scenario}/{uuid.uuid4().hex[:8]}/"
    store = lab.store.store
    control = f"{prefix}control"
    store.create(control, b"deleted on purpose: every member must miss it")
    witness = Witness(os.path.join(lab.names.state_dir, "witness", scenario), lab.names.prefix)
    witness.start(lab.flows())
    writer = Writer(store, prefix)
    figures: dict[str, Any] = {}
    record = None
    try:
        witness.settle(1.0)
        writer.start()
        time.sleep(0.5)
        started = time.monotonic()
        if scenario == "etcd-member-partition":
            _partition(lab, target, True)
        else:
            record = cluster.stop_process(lab.names, target.name, signal.SIGKILL)
        try:
            figures["leader_during_fault"], elected = _leader_among_others(lab, target.name)
            figures["leader_seconds_into_fault"] = round(elected - started, 2)
            time.sleep(max(0.0, started + dwell - time.monotonic()))
            acked_at = _apply_until_acked(lab, _policy_doc("deny-guarded", []))
            enforced = _wait(lambda: not answers(), 60.0)
            figures["policy_enforced_seconds"] = None if enforced is None else round(enforced, 2)
            figures["policy_write_seconds_into_fault"] = round(acked_at - started, 2)
            figures["agent_members_during_fault"] = agent_members(lab, guarded_node)
            ipam = ipam_under_fire(lab, pods=pods, concurrency=concurrency, faults=[], seed=7)
            figures["ipam"] = {
                k: ipam[k]
                for k in (
                    "pods",
                    "pods_done",
                    "address_reuses",
                    "duplicates",
                    "ipam_duplicates_sampled",
                    "ipam_samples",
                    "leaks_before_gc",
                    "ipam_ok_after_gc",
                    "broken_before_del",
                    "leftovers",
                    "failed_adds",
                    "gave_up",
                    "add_p50_ms",
                    "add_p99_ms",
                    "wall_seconds",
                )
            }
            figures["ipam"]["leak_control_seen"] = leak_control(lab)
            figures["fault_seconds"] = round(time.monotonic() - started, 1)
        finally:
            healed = time.monotonic()
            if scenario == "etcd-member-partition":
                _partition(lab, target, False)
            elif record is not None:
                cluster.start_process(lab.names, record)
            etcd_cluster.wait_healthy(lab.names, 60.0)
            figures["member_back_seconds"] = round(time.monotonic() - healed, 2)
        time.sleep(1.0)  # writes go on to a whole cluster again
    finally:
        writer.stop.set()
        writer.join(10.0)
        flows = witness.stop()
    _delete_policies(lab, ["deny-guarded"])
    reopened = _wait(answers, 30.0) is not None
    store.delete(control)
    revision = store.revision()
    held = _read_back(lab, prefix, revision)
    log = writer.log
    landed = {name: sum(1 for k in log.unknown if k in keys) for name, keys in held.items()}
    return {
        "scenario": scenario,
        "member": target.name,
        "members": len(held),
        "leader_before": leader_before,
        "leader_after": etcd_cluster.leader(lab.names),
        "agent_members_before": agent_before,
        **figures,
        "writes": {
            "acknowledged": len(log.acked),
            "unknown_outcome": len(log.unknown),
            "refused": len(log.refused),
            "errors": log.errors,
            "lost_per_member": {name: lost_writes(log.acked, keys) for name, keys in held.items()},
            "unknown_landed_per_member": landed,
            "control_missing_on": sorted(name for name, keys in held.items() if control not in keys),
        },
        "policy_open_before": open_before,
        "policy_reopened_after_delete": reopened,
        "witness": summarize(flows),
    }


def problems(report: dict[str, Any]) -> list[str]:
    """What in a report breaks the scenario's promise (empty: it held) — the CLI's exit status."""
    out = []
    w = report["writes"]
    if w["acknowledged"] == 0:
        out.append("no write was acknowledged (the writer proves nothing)")
    for name, lost in w["lost_per_member"].items():
        if lost:
            out.append(f"member {name} lost {len(lost)} acknowledged write(s): {lost[:5]}")
    if w["control_missing_on"] != sorted(w["lost_per_member"]):
        missing = w["control_missing_on"]
        out.append(f"the deleted control key was not seen missing on every member: {missing}")
    if len(set(w["unknown_landed_per_member"].values())) > 1:
        out.append(f"members disagree on the unknown-outcome writes: {w['unknown_landed_per_member']}")
    if not report["policy_open_before"] or not report["policy_reopened_after_delete"]:
        out.append("the guarded pod did not answer before the policy / after its deletion (no control)")
    enforced = report.get("policy_enforced_seconds")
    if enforced is None or enforced > ENFORCE_WITHIN:
        out.append(
            f"the policy written during the fault was enforced after {enforced} s "
            f"(promise: {ENFORCE_WITHIN:g} s)"
        )
    out += _ipam_problems(report.get("ipam") or {})
    member, during = report["member"], report.get("leader_during_fault")
    if report["scenario"] == "etcd-leader-kill" and during in (None, member):
        out.append(f"no new leader was elected while {member} was down")
    if report["scenario"] == "etcd-member-partition":
        if member not in report["agent_members_before"]:
            out.append(f"the guarded node's agent was not connected to {member} before the partition")
        # its connections to the member stay "established" in its own view (nothing reaches it
        # to end them): what counts is that it opened one to another member
        if not set(report.get("agent_members_during_fault", [])) - {member}:
            out.append(f"the guarded node's agent reached no member but the partitioned {member}")
    if report["witness"]["interrupted_flows"]:
        out.append(f"{report['witness']['interrupted_flows']} flow(s) interrupted")
    return out


IPAM_MUST_BE_EMPTY = (
    "duplicates",
    "ipam_duplicates_sampled",
    "leaks_before_gc",
    "broken_before_del",
    "leftovers",
    "gave_up",
)


def _ipam_problems(ipam: dict[str, Any]) -> list[str]:
    out = [f"IPAM under fire: {k.replace('_', ' ')}: {ipam[k]}" for k in IPAM_MUST_BE_EMPTY if ipam.get(k)]
    if not ipam.get("ipam_ok_after_gc"):
        out.append("IPAM under fire: podnet ipam check is not clean")
    if not ipam.get("pods") or ipam.get("pods_done") != ipam.get("pods"):
        out.append(f"IPAM under fire: {ipam.get('pods_done')} of {ipam.get('pods')} pods went through")
    if not ipam.get("ipam_samples") or not ipam.get("leak_control_seen"):
        out.append("IPAM under fire: no ipam check sample, or the leak put there on purpose was not seen")
    return out


def render(report: dict[str, Any]) -> str:
    """The report as text."""
    w = report["writes"]
    lost = {k: len(v) for k, v in w["lost_per_member"].items()}
    ipam = report.get("ipam") or {}
    lines = [
        f"scenario {report['scenario']}: member {report['member']} ({report['members']} members); "
        f"leader {report['leader_before']} → during the fault {report.get('leader_during_fault')} "
        f"({report.get('leader_seconds_into_fault')} s in) → "
        f"after {report['leader_after']}",
        f"writes: {w['acknowledged']} acknowledged, {w['unknown_outcome']} outcome unknown "
        f"(landed per member {w['unknown_landed_per_member']}), {w['refused']} refused; "
        f"acknowledged but missing per member {lost}; control key missing on {w['control_missing_on']}",
        f"policy written {report.get('policy_write_seconds_into_fault')} s into the fault, enforced "
        f"{report.get('policy_enforced_seconds')} s after its write (promise {ENFORCE_WITHIN:g} s); "
        f"the guarded node's agent on {report['agent_members_before']} before, "
        f"{report.get('agent_members_during_fault')} during",
        f"IPAM under fire: {ipam.get('pods_done')}/{ipam.get('pods')} pods, {ipam.get('address_reuses')} "
        f"reuses, duplicates {len(ipam.get('duplicates') or [])}, sampled duplicates "
        f"{len(ipam.get('ipam_duplicates_sampled') or [])} in {ipam.get('ipam_samples')} samples, leaks "
        f"{len(ipam.get('leaks_before_gc') or [])} (control leak seen: {ipam.get('leak_control_seen')}), "
        f"ADD p50 {ipam.get('add_p50_ms')} ms p99 "
        f"{ipam.get('add_p99_ms')} ms",
        f"fault {report.get('fault_seconds')} s; member healthy again {report.get('member_back_seconds')} s "
        f"after the restart/heal; witness: {report['witness']}",
    ]
    if w["errors"]:
        lines.append("first write errors: " + " | ".join(w["errors"]))
    return "\n".join(lines)
