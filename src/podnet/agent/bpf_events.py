"""The Cilium profile's datapath events, read from the ``pn_events`` ring buffer and annotated for
``podnet monitor`` like the nftables drops (:mod:`podnet.agent.drops`, whose ring they join):

    tc programs ──bpf_ringbuf──▶ BpfEvents thread ──annotate──▶ DropMonitor ring ◀── DROPS request
                 (full: counted     pods by address (watch cache)
                  in events_lost,   rules by entry id (dataplane.lxc), default deny by the
                  never waits)      policies enforcing the endpoint's direction

A drop names what decided it, as Cilium's reasons do: ``Policy denied`` (133) with the policies whose
default deny it is, ``Policy denied by denylist`` (181) with the deny rule, anti-spoofing (130/132),
the node control plane (230), an endpoint not ready yet (203). A policy verdict (``type
policy-verdict``; only while someone asks for them, :meth:`BpfEvents.want_verdicts`) says which
rule allowed a new connection. With flows on (ClusterConfiguration ``flows``, the default) the
programs send a trace event per new connection instead (``type trace``: a flow, FORWARDED or
REDIRECTED, the rule that allowed it), which also stands for the verdict while verdicts are asked
for. Events the ring could not take are counted (``lost``).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from podnet.agent.drops import LazyRecord
from podnet.agent.log import kv
from podnet.calc.explain_cilium import PROTOCOL_NAMES, describe_key, parse_provenance, policy_text
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import EndpointMap
from podnet.calc.policymap import PolicyKey

log = logging.getLogger("podnet.agent.bpf_events")

POLL_SECONDS = 0.5
VERDICT_LEASE = 60.0  # verdict events stay on this long after the last request that wanted them
SPOOF_REASONS = {
    130: "Invalid source mac (anti-spoofing: source MAC is not the pod's own)",
    132: "Invalid source ip (anti-spoofing: source address is not the pod's)",
}


#: drop reason -> the kind of the nftables log prefix (agent.drops) that stands for the same
#: decision, so scripts reading ``podnet monitor -o json`` see one vocabulary in both profiles
PREFIX_KINDS = {130: "pns", 132: "pns", 230: "pnc", 133: "pnd", 181: "pnx", 203: "pnr"}
#: a verdict's result: REDIRECTED is allowed to the L7 proxy (Hubble's verdict of that name)
VERDICTS = {1: "ALLOWED", 3: "REDIRECTED"}


def prefix_of(event: Any, verdict: bool = False) -> str:
    """``pnd:ep7:in`` (a default deny of endpoint 7's ingress), ``pns:ep7:mac`` / ``pns:ep7:spoof``
    (anti-spoofing by MAC / IP, as the nftables prefixes say), ``pnv:ep7:eg`` (a
    verdict), ``bpf:134`` (another reason): what decided, in the drop monitor's prefix terms."""
    from podnet.dataplane import cilium_maps as cm

    side = "in" if event.direction == "ingress" else "eg"
    if event.type == cm.EVENT_VERDICT or verdict:
        return f"pnv:ep{event.endpoint}:{side}"
    if event.type == cm.EVENT_TRACE:
        return f"pnt:ep{event.endpoint}:{side}"
    kind = PREFIX_KINDS.get(event.reason)
    if kind is None:
        return f"bpf:{event.reason}"
    tail = {130: "mac", 132: "spoof", 230: "control"}.get(event.reason, side)
    return f"{kind}:ep{event.endpoint}:{tail}"


class BpfEvents:
    """Reads the ring buffer in a daemon thread and hands annotated records to ``sink``."""

    def __init__(
        self,
        node: str,
        events_path: str,
        pods: Callable[[], Iterable[PodInfo]],
        endpoint_map: Callable[[int], EndpointMap | None],
        entry: Callable[[int], tuple[str, PolicyKey, Any] | None],
        sink: Callable[[list[dict[str, Any]]], None],
        set_events: Callable[[bool, bool], None],
        lost: Callable[[], int],
        traces: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node = node
        self.events_path = events_path
        self._pods = pods
        self._endpoint_map = endpoint_map  # endpoint id -> its map (enforcers of a default deny)
        self._entry = entry  # entry id -> (pod key, key, entry with provenance)
        self._sink = sink
        self._set_events = set_events
        self._traces = traces  # flows on: a trace event per new connection (ClusterConfiguration)
        self._lost = lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_ip: dict[str, str] = {}
        self._index_at = 0.0
        self._verdicts_until = 0.0
        self.error: str | None = None
        self.read = 0
        self.traces_on = False  # the programs were last asked for trace events
        self._offset, self._offset_at = 0.0, float("-inf")  # wall clock - monotonic clock

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bpf-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def want_verdicts(self) -> None:
        """Someone asks for policy verdicts: the programs send them for :data:`VERDICT_LEASE` s."""
        self._verdicts_until = time.monotonic() + VERDICT_LEASE

    def status(self) -> dict[str, Any]:
        try:
            lost = self._lost()
        except Exception:
            lost = None
        return {"read": self.read, "lost": lost, "error": self.error, "verdicts": self._verdicts_on()}

    def _verdicts_on(self) -> bool:
        return time.monotonic() < self._verdicts_until

    def _run(self) -> None:
        from podnet.dataplane import cilium_maps as cm
        from podnet.dataplane.ringbuf import RingBuffer

        ring = None
        asked: tuple[bool, bool] | None = None
        while not self._stop.is_set():
            try:
                if ring is None:
                    ring = RingBuffer(self.events_path)
                    self.error = None
                wanted = (self._verdicts_on(), bool(self._traces()))
                if wanted != asked:
                    self._set_events(*wanted)
                    asked = wanted
                    self.traces_on = wanted[1]
                raws = ring.poll(POLL_SECONDS)
            except Exception as exc:
                if self.error != str(exc):
                    kv(log, logging.WARNING, "datapath events not readable", error=str(exc))
                self.error = str(exc)
                if ring is not None:
                    ring.close()
                    ring = None
                self._stop.wait(1.0)
                continue
            if raws:
                self.read += len(raws)
                self._sink(self.records([cm.decode_event(raw) for raw in raws]))
        if ring is not None:
            ring.close()

    def _index(self) -> None:
        now = time.monotonic()
        if now - self._index_at < 1.0:
            return
        self._index_at = now
        self._by_ip = {ip: pod.key for pod in self._pods() for ip in pod.ips}

    def _wall(self, ts_ns: int) -> str:
        """The RFC 3339 wall time of a CLOCK_MONOTONIC stamp (the clocks' offset taken once per
        second: a trace per new connection makes this a hot path)."""
        now = time.monotonic()
        if now - self._offset_at > 1.0:
            self._offset = time.time() - now
            self._offset_at = now
        wall = dt.datetime.fromtimestamp(ts_ns / 1e9 + self._offset, dt.UTC)
        return wall.isoformat(timespec="microseconds").replace("+00:00", "Z")

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one monitor per agent, kept for its life)
    def _allowed(self, matched: Any, verdict: int, match: str) -> tuple[tuple[dict[str, Any], ...], str]:
        """(policies, reason) of a judged connection: the same entry judges many connections."""
        from podnet.dataplane import cilium_maps as cm

        policies = tuple(parse_provenance(p) for p in matched[2].provenance) if matched is not None else ()
        if match == "not enforced":
            reason = "allowed: no policy selects the endpoint in this direction"
        elif match == "host":
            reason = "allowed: the node reaches its own pods (host identity)"
        elif policies:
            how = "redirected to the L7 proxy" if verdict == cm.VERDICT_REDIRECTED else "allowed"
            reason = f"{how} by {', '.join(policy_text(p) for p in policies)}"
        else:
            reason = "allowed"
        if matched is not None:
            reason += f" ({describe_key(matched[1])})"
        return policies, reason

    def records(self, events: Iterable[Any]) -> list[dict[str, Any]]:
        """The ring's records of ``events``: a trace event is a ``trace`` record, and also a
        ``policy-verdict`` one while someone asks for verdicts and policy judged the connection."""
        from podnet.dataplane import cilium_maps as cm

        out: list[dict[str, Any]] = []
        verdicts = self._verdicts_on()
        for event in events:
            if event.type == cm.EVENT_TRACE and not verdicts:
                out.append(self._lazy(event))
                continue
            record = self.annotate(event)
            out.append(record)
            if event.type == cm.EVENT_TRACE and verdicts and event.match != "not enforced":
                out.append({**record, "type": "policy-verdict", "prefix": prefix_of(event, verdict=True)})
        return out

    def _lazy(self, event: Any) -> LazyRecord:
        """A trace record annotated when read; what it depends on that may change (the policy
        entry, the pods by address) is taken now."""
        self._index()
        matched = self._entry(event.entry_id) if event.entry_id else None
        src_pod, dst_pod = self._by_ip.get(event.saddr), self._by_ip.get(event.daddr)
        fields = {
            "type": "trace",
            "direction": event.direction,
            "match": event.match,
            "verdict": VERDICTS.get(event.verdict, "ALLOWED"),
        }
        return LazyRecord(fields, lambda: self.annotate(event, (matched,), (src_pod, dst_pod)))

    def annotate(
        self, event: Any, entry: tuple[Any] | None = None, pods: tuple[str | None, str | None] | None = None
    ) -> dict[str, Any]:
        """One event as the DROPS API returns it (``type`` drop, trace or policy-verdict);
        ``entry`` and ``pods``: the policy entry and the pods as they were when it came."""
        from podnet.dataplane import cilium_maps as cm

        wall = self._wall(event.ts)
        if entry is None:
            matched = self._entry(event.entry_id) if event.entry_id else None
        else:
            (matched,) = entry
        if pods is None:
            self._index()
            pods = (self._by_ip.get(event.saddr), self._by_ip.get(event.daddr))
        reason_text = cm.DROP_REASONS.get(event.reason, f"drop reason {event.reason}")
        judged = event.type in (cm.EVENT_VERDICT, cm.EVENT_TRACE)
        if judged:
            kind = "policy-verdict" if event.type == cm.EVENT_VERDICT else "trace"
            policies, reason = self._allowed(matched, event.verdict, event.match)
            policies = [dict(p) for p in policies]
        else:
            policies = [parse_provenance(p) for p in matched[2].provenance] if matched is not None else []
            kind = "drop"
            if event.reason == 133:
                endpoint = self._endpoint_map(event.endpoint)
                names = endpoint.enforced_by.get(event.direction, ()) if endpoint else ()
                policies = [parse_provenance(n) for n in names]
                which = ", ".join(policy_text(p) for p in policies) or "no policy known for it"
                reason = f"{reason_text}: default deny of {which}"
            elif event.reason == 181:
                rules = ", ".join(policy_text(p) for p in policies) or "a deny rule no longer in the map"
                reason = f"{reason_text}: {rules}"
            elif event.reason in SPOOF_REASONS:
                reason = SPOOF_REASONS[event.reason]
            else:
                reason = reason_text
        src_pod, dst_pod = pods
        return {
            "time": wall,
            "node": self.node,
            "protocol": PROTOCOL_NAMES.get(event.protocol, str(event.protocol)),
            "src": event.saddr,
            "srcPod": src_pod,
            "srcIdentity": event.src_identity,
            "dst": event.daddr,
            "dstPod": dst_pod,
            "dstIdentity": event.dst_identity,
            "sport": event.sport,
            "dport": event.dport,
            "direction": event.direction,
            "reason": reason,
            "dropReason": None if judged else event.reason,
            "verdict": VERDICTS.get(event.verdict, "ALLOWED") if judged else "DENIED",
            "tcpFlags": event.tcp_flags,
            "length": event.length,
            "match": event.match,
            "endpoint": event.endpoint,
            "policies": policies,
            "prefix": prefix_of(event),
            "type": kind,
        }
