"""The drop monitor: the node's policy drops, annotated and kept for ``podnet monitor --type drop``.

Every drop of the policy table is logged to NFLOG group :data:`~podnet.dataplane.policy.NFLOG_GROUP`
(see :mod:`podnet.dataplane.policy`). Only one socket per network namespace can bind a group, so
the agent reads it (in its own namespace) and serves the drops on its API::

    kernel ──NFLOG 7──▶ DropMonitor thread ──annotate──▶ ring buffer (seq 1, 2, …) ◀── DROPS request
                          pods by address (watch cache)                              since=N, wait=S
                          reasons from the PolicyPlan in force

A request ``{"verb": "DROPS", "since": N, "wait": S}`` answers the drops with ``seq > N`` (at most
``limit``), waiting up to ``S`` seconds for the first one (long poll), and ``next``: the ``since``
of the following request. ``missed`` counts the drops that left the ring before they were asked
for. A ``since`` beyond the newest drop (the agent restarted, its numbering starts again) is
answered from the start of the ring.

When the group cannot be bound (``EBUSY``: another process reads it), the agent keeps running; the
monitor logs a warning, says so in its :meth:`status` and on DROPS, and tries again every
:data:`RETRY_SECONDS`.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from podnet.agent.log import kv
from podnet.calc.policy import PodInfo, PolicyPlan, Provenance
from podnet.dataplane.nflog import Drop, NflogReader
from podnet.dataplane.policy import deny_reasons, endpoint_hash, log_reasons

log = logging.getLogger("podnet.agent.drops")

CAPACITY = 4096
MONITOR_TYPES = ("drop", "log", "policy-verdict", "l7")  # what DROPS answers unless asked for types
MAX_WAIT = 30.0  # seconds a DROPS request may wait
MAX_LIMIT = 4096
DEFAULT_LIMIT = 1000
RETRY_SECONDS = 10.0
INDEX_SECONDS = 1.0  # the address → pod index is rebuilt at most this often (unless the plan changes)
SPOOF_REASON = "anti-spoofing: source address is not the pod's"
MAC_SPOOF_REASON = "anti-spoofing: source MAC is not the pod's own"
CONTROL_REASON = "node control plane (BGP, agent metrics, datastore): closed to pods"
_DIRECTIONS = {"in": "ingress", "eg": "egress"}
ERR_BAD_REQUEST, ERR_TRY_AGAIN = 6, 11  # CNI error codes, as the rest of the API uses


class Reader(Protocol):
    def read(self, timeout: float = 1.0) -> list[Drop]: ...

    def close(self) -> None: ...


def describe(deniers: Iterable[Provenance]) -> str:
    """``default deny of NetworkPolicy np/a, NetworkPolicy np/b`` (the direction is said apart)."""
    names = sorted({f"{p.kind} {p.namespace}/{p.name}" for p in deniers})
    return f"default deny of {', '.join(names)}" if names else "default deny (no policy known for it)"


class LazyRecord(dict):
    """A record whose other fields are computed only when it is read (:meth:`DropMonitor.query`
    calls :meth:`materialize`): a trace per new connection is mostly never asked for, so its
    annotation waits. What the observers need (type, direction, verdict, match) is there from the
    start."""

    __slots__ = ("_fill",)

    def __init__(self, fields: dict[str, Any], fill: Callable[[], dict[str, Any]]) -> None:
        super().__init__(fields)
        self._fill: Callable[[], dict[str, Any]] | None = fill

    def materialize(self) -> LazyRecord:
        fill, self._fill = self._fill, None
        if fill is not None:
            self.update(fill())
        return self


class Evicted:
    """The increasing numbers of records a ring let go, the last ``keep`` of them:
    :meth:`after` counts those numbered after ``since`` (a lower bound once older ones are
    forgotten)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._seqs = array("q")

    def add(self, seq: int) -> None:
        self._seqs.append(seq)
        if len(self._seqs) > 2 * self.keep:
            del self._seqs[: len(self._seqs) - self.keep]

    def after(self, since: int) -> int:
        return len(self._seqs) - bisect.bisect_right(self._seqs, since)


class DropMonitor:
    """Reads NFLOG in a daemon thread, annotates each drop, keeps the last ``capacity`` of them."""

    other_sources = False  # records also come from add_records (the Cilium datapath): no NFLOG is fine

    def __init__(
        self,
        node: str,
        pods: Callable[[], Iterable[PodInfo]],
        plan: Callable[[], PolicyPlan | None],
        open_reader: Callable[[], Reader] = NflogReader,
        capacity: int = CAPACITY,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.node = node
        self._pods = pods
        self._plan = plan
        self._open_reader = open_reader
        self._clock = clock
        self.capacity = capacity
        self.observers: list[Callable[[list[dict[str, Any]]], None]] = []  # each batch added
        # two rings: a trace per new connection would push the rare drops out of a shared one
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)  # drops, logs, verdicts, L7
        self._traces: deque[dict[str, Any]] = deque(maxlen=capacity)  # new connections (flows)
        # the numbers of the records each ring let go, for ``missed`` (the last 4 x capacity)
        self._gone, self._gone_traces = Evicted(4 * capacity), Evicted(4 * capacity)
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Reader | None = None
        self.error: str | None = None  # why the group is not bound (None while reading)
        self.read_errors = 0
        # caches: reasons of the plan last seen; pods by address, by endpoint hash
        self._reasons_of: PolicyPlan | None = None
        self._reasons: dict[str, list[Provenance]] = {}  # this plan's and the previous one's
        self._logs: dict[str, Provenance] = {}
        self._current_reasons: dict[str, list[Provenance]] = {}
        self._current_logs: dict[str, Provenance] = {}
        self._previous: tuple[dict[str, list[Provenance]], dict[str, Provenance]] = ({}, {})
        self._index_plan: PolicyPlan | None = None
        self._index_at = float("-inf")
        self._by_ip: dict[str, str] = {}
        self._by_hash: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._bind()
        self._thread = threading.Thread(target=self._run, name="drop-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()  # long polls answer now
        if self._thread is not None:
            self._thread.join(timeout)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "reading": self._reader is not None,
                "error": self.error,
                "seq": self._seq,
                "readErrors": self.read_errors,
            }

    def _bind(self) -> bool:
        try:
            self._reader = self._open_reader()
        except Exception as exc:  # DataplaneError (EBUSY, EPERM) or OSError: the agent goes on
            if self.error != str(exc):
                kv(
                    log,
                    logging.WARNING,
                    "drop monitor cannot read NFLOG; no drops will be shown",
                    error=str(exc),
                    retry_seconds=RETRY_SECONDS,
                )
            self.error = str(exc)
            return False
        if self.error is not None:
            kv(log, logging.INFO, "drop monitor reads NFLOG now")
        self.error = None
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            reader = self._reader
            if reader is None:
                if not self._bind():
                    self._stop.wait(RETRY_SECONDS)
                continue
            try:
                drops = reader.read(0.5)
            except OSError as exc:  # ENOBUFS: the kernel dropped log messages; keep reading
                self.read_errors += 1
                kv(log, logging.DEBUG, "NFLOG read failed", error=str(exc))
                continue
            if drops:
                self.add(drops)

    # -- annotation --------------------------------------------------------------------------
    def _refresh(self, plan: PolicyPlan | None) -> None:
        if plan is not self._reasons_of:
            # A packet logged just before a plan change is read just after it: what the previous
            # plan alone had still explains it (the current plan first; two plans kept, no more).
            self._reasons_of = plan
            self._previous = (self._current_reasons, self._current_logs) if plan is not None else ({}, {})
            self._current_reasons = deny_reasons(plan) if plan is not None else {}
            self._current_logs = log_reasons(plan) if plan is not None else {}
            self._reasons = {**self._previous[0], **self._current_reasons}
            self._logs = {**self._previous[1], **self._current_logs}
        now = time.monotonic()
        if plan is self._index_plan and now - self._index_at < INDEX_SECONDS:
            return
        self._index_plan, self._index_at = plan, now
        by_ip: dict[str, str] = {}
        by_hash: dict[str, str] = {}
        for pod in self._pods():
            by_hash[endpoint_hash(pod.key)] = pod.key
            for ip in pod.ips:
                by_ip[ip] = pod.key
        self._by_ip, self._by_hash = by_ip, by_hash

    def annotate(self, drop: Drop, plan: PolicyPlan | None) -> dict[str, Any]:
        """One drop as the API returns it (without ``seq``), against ``plan``."""
        self._refresh(plan)
        kind, ep_hash, rest = [*drop.prefix.split(":", 2), "", ""][:3]
        owner = self._by_hash.get(ep_hash)
        src_pod, dst_pod = self._by_ip.get(drop.src), self._by_ip.get(drop.dst)
        policies: list[Provenance] = []
        if kind == "pns":
            direction, reason = "egress", MAC_SPOOF_REASON if rest == "mac" else SPOOF_REASON
            src_pod = owner  # the pod whose interface sent it (the address is not its own)
        elif kind == "pnc":
            direction, reason = "egress", CONTROL_REASON
            src_pod = owner
        elif kind == "pnd":
            direction = _DIRECTIONS.get(rest.split(":", 1)[0], "unknown")
            policies = self._reasons.get(drop.prefix, [])
            reason = describe(policies)
            if policies and policies[0].tier != "default":
                reason = f"tier {policies[0].tier}: end of tier Deny ({reason})"
            if owner is not None:
                if direction == "ingress":
                    dst_pod = owner
                elif direction == "egress":
                    src_pod = owner
        elif kind in ("pnx", "pne", "pnl"):
            found = self._logs.get(drop.prefix) if kind == "pnl" else None
            policies = [found] if found else self._reasons.get(drop.prefix, [])
            direction = policies[0].direction if policies else "unknown"
            if not policies:
                reason = f"rule no longer in the plan (prefix {drop.prefix!r})"
            elif kind == "pne":
                p = policies[0]
                reason = f"tier {p.tier}: {p.policy} cannot be compiled: it denies (fails closed)"
            else:
                p = policies[0]
                action = "Log" if kind == "pnl" else "Deny"
                reason = f"tier {p.tier}: {p.policy} {p.direction} rule {p.rule} {action}"
        else:
            direction, reason = "unknown", f"logged with prefix {drop.prefix!r}"
        return {
            "time": self._clock().isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "node": self.node,
            "protocol": drop.protocol,
            "src": drop.src,
            "srcPod": src_pod,
            "dst": drop.dst,
            "dstPod": dst_pod,
            "sport": drop.sport,
            "dport": drop.dport,
            "direction": direction,
            "reason": reason,
            "policies": [
                {"kind": p.kind, "namespace": p.namespace, "name": p.name, "tier": p.tier, "rule": p.rule}
                for p in policies
            ],
            "prefix": drop.prefix,
            "length": drop.length,
            "type": "log" if kind == "pnl" else "drop",
        }

    def add(self, drops: Iterable[Drop]) -> None:
        """Annotate ``drops`` against the plan in force now and append them to the ring."""
        plan = self._plan()
        self.add_records([self.annotate(d, plan) for d in drops])

    def add_records(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append records annotated elsewhere (the Cilium datapath's events, agent.bpf_events),
        then hand them to the :attr:`observers` (the flow metrics); returns the ring's records
        (numbered), which a source may complete later (a connection's final counts)."""
        added = []
        with self._cond:
            for record in records:
                self._seq += 1
                if isinstance(record, LazyRecord):
                    record["seq"] = self._seq  # numbered in place: it stays lazy
                    added.append(record)
                else:
                    added.append({"seq": self._seq, **record})
            for record in added:
                trace = record.get("type") == "trace"
                ring, gone = (self._traces, self._gone_traces) if trace else (self._ring, self._gone)
                if len(ring) == ring.maxlen:
                    gone.add(ring[0]["seq"])
                ring.append(record)
            self._cond.notify_all()
        for observe in self.observers:
            observe(added)
        return added

    # -- queries -----------------------------------------------------------------------------
    def query(
        self, since: int = 0, wait: float = 0.0, limit: int = DEFAULT_LIMIT, types: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The records with ``seq > since`` (of ``types``, when given; waiting up to ``wait`` s for
        one), ``next`` and ``missed`` (numbered after ``since`` and gone from the rings)."""
        wanted = set(types)
        with self._cond:
            if since > self._seq:
                since = 0  # numbered by an earlier agent: everything this one has is new
            if wait > 0 and since == self._seq:
                self._cond.wait_for(lambda: self._seq > since or self._stop.is_set(), timeout=wait)
            newer = [r for r in self._ring if r["seq"] > since]
            newer_traces = [r for r in self._traces if r["seq"] > since]
            if wanted == {"trace"}:
                chosen, gone = newer_traces, [self._gone_traces]
            elif wanted and "trace" not in wanted:
                chosen, gone = newer, [self._gone]
            else:
                chosen, gone = newer + newer_traces, [self._gone, self._gone_traces]
            if wanted:
                chosen = [r for r in chosen if r.get("type", "drop") in wanted]
            drops = sorted(chosen, key=lambda r: r["seq"])[:limit]
            missed = sum(seqs.after(since) for seqs in gone)
            next_seq = drops[-1]["seq"] if len(drops) == limit else self._seq
        for record in drops:
            if isinstance(record, LazyRecord):
                record.materialize()
        return {"ok": True, "drops": drops, "next": next_seq, "missed": missed}

    def handle(self, doc: dict) -> dict[str, Any]:
        """The API's DROPS verb: ``{"since": N, "wait": S, "limit": L}`` → :meth:`query`."""
        try:
            since = int(doc.get("since") or 0)
            wait = float(doc.get("wait") or 0)
            limit = int(doc.get("limit", DEFAULT_LIMIT))
            if since < 0 or not 0 <= wait <= MAX_WAIT or not 0 < limit <= MAX_LIMIT:
                raise ValueError(f"since >= 0, 0 <= wait <= {MAX_WAIT:g}, 0 < limit <= {MAX_LIMIT}")
        except (TypeError, ValueError) as exc:
            return {"ok": False, "code": ERR_BAD_REQUEST, "msg": f"bad DROPS request: {exc}", "details": ""}
        if self._reader is None and self.error is not None and not self.other_sources:
            return {
                "ok": False,
                "code": ERR_TRY_AGAIN,
                "msg": f"the drop monitor is not reading NFLOG: {self.error}",
                "details": "",
            }
        # the drop monitor's records; a trace per new connection is the flows API's (FLOWS)
        types = [str(t) for t in doc.get("types") or ()] or list(MONITOR_TYPES)
        return self.query(since, wait, limit, types)
