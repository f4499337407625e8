"""The Calico profile's flows: conntrack's events on the node, as ``trace`` records of the event
ring (the Cilium profile's come from its tc programs, :mod:`podnet.agent.bpf_events`)::

    conntrack (node netns) ──NEW──▶ ConntrackFlows thread ──▶ trace records ──▶ event ring
                           ──DESTROY (counters)──▶ the records' ``traffic``, final
    FLOWS request ──▶ refresh(): a conntrack dump ──▶ the open connections' ``traffic`` so far

A NEW event comes when conntrack confirms a connection's first packet, after every hook passed it:
what policy dropped never gets one (NFLOG reports those). A connection between a local pod and
anything is one record per local end, as the Cilium profile does: ``egress`` from a local pod,
``ingress`` to one. Through a Service the reply tuple names the backend: the record's destination
is the backend, ``service`` the Service of the ClusterIP. The node's own connections and traffic
passing through are not pod flows and make no record. Events the socket could not hold are
counted (:attr:`ConntrackFlows.lost`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from podnet.agent.log import kv
from podnet.calc.explain_cilium import PROTOCOL_NAMES
from podnet.calc.policy import PodInfo, PolicyPlan
from podnet.calc.policy_explain import Packet, walk

log = logging.getLogger("podnet.agent.ct_flows")

OPEN_LIMIT = 65536  # connections whose records still wait for their final counts
MEMO_LIMIT = 16384  # remembered walks (source, destination, port) of the plan in force
RETRY_SECONDS = 5.0
BATCH_SECONDS = 0.05  # after a batch, events gather this long on the socket before the next read
RCVBUF = 32 << 20  # the socket holds ~1 s of events at 10,000 connections/s (a message costs ~2 KiB)

Services = Callable[[], Mapping[tuple[str, str, int], str]]  # (ip, protocol, port) -> "ns/name"


def allowed_by(plan: PolicyPlan | None, endpoint: str, direction: str, packet: Packet) -> dict[str, Any]:
    """What let the connection through this end: the Allow rule that matched (``policies``) and a
    ``reason``, from the plan in force (the walk the nftables chains made)."""
    policy = plan.endpoints.get(endpoint) if plan is not None else None
    if policy is None or not policy.tiers(direction):
        return {
            "match": "not enforced",
            "reason": "allowed: no policy selects the endpoint in this direction",
        }
    assert plan is not None
    allowed, steps, rules = walk(plan, policy, direction, packet)
    if not allowed:  # the plan changed since the kernel judged it
        return {"reason": "allowed by a rule no longer in the plan"}
    return {
        "match": "rule" if rules else "profile",
        "reason": "allowed: " + " → ".join(str(step) for step in steps),
        "policies": [
            {"kind": p.kind, "namespace": p.namespace, "name": p.name, "tier": p.tier, "rule": p.rule}
            for p in rules
        ],
    }


def traffic_of(event: Any) -> dict[str, int]:
    """The connection's packets and bytes both ways, from its initiator."""
    return {
        "packets_sent": event.packets_orig,
        "bytes_sent": event.bytes_orig,
        "packets_received": event.packets_reply,
        "bytes_received": event.bytes_reply,
    }


class ConntrackFlows:
    """Reads conntrack's NEW and DESTROY events of the caller's netns in a daemon thread."""

    def __init__(
        self,
        node: str,
        pods: Callable[[], Iterable[PodInfo]],
        services: Services,
        sink: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        plan: Callable[[], PolicyPlan | None] = lambda: None,
        enabled: Callable[[], bool] = lambda: True,
        open_reader: Callable[[], Any] | None = None,
        dump: Callable[[], list[Any]] | None = None,
    ) -> None:
        from podnet.dataplane import ct_events

        self.node = node
        self._pods, self._services, self._sink, self._plan = pods, services, sink, plan
        self._enabled = enabled  # ClusterConfiguration flows: off, NEW events make no record
        self._open_reader = open_reader or (
            lambda: ct_events.CtEventReader(None, new=True, destroy=True, rcvbuf=RCVBUF)
        )
        self._dump = dump or (lambda: ct_events.dump(None))
        self._open: OrderedDict[int, list[dict[str, Any]]] = OrderedDict()  # conntrack id -> ring records
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Any = None
        self.error: str | None = None
        self.read = 0
        self._memo_plan: PolicyPlan | None = None
        self._memo: dict[tuple[str, str, Packet], dict[str, Any]] = {}

    @property
    def lost(self) -> int:
        return int(getattr(self._reader, "lost_overruns", 0) or 0)

    def start(self) -> None:
        from podnet.dataplane import ct_events

        ct_events.enable_accounting(None)
        self._thread = threading.Thread(target=self._run, name="ct-flows", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._reader is not None:
            self._reader.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._reader is None:
                    self._reader = self._open_reader()
                    self.error = None
                events = self._reader.read(0.5)
            except Exception as exc:
                if self.error != str(exc):
                    kv(log, logging.WARNING, "conntrack events not readable; no Calico flows", error=str(exc))
                self.error = str(exc)
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
                self._stop.wait(RETRY_SECONDS)
                continue
            if events:
                self.read += len(events)
                self.handle(events)
                self._stop.wait(BATCH_SECONDS)  # let the next ones queue: one wakeup per batch

    def handle(self, events: Iterable[Any]) -> None:
        """NEW events become records (handed to the ring, remembered by conntrack id until their
        DESTROY); DESTROY events give those records their final counts."""
        pods = list(self._pods())
        by_ip = {ip: pod for pod in pods for ip in pod.ips}
        services = self._services()
        # one stamp per batch: NEW events carry no time, and a batch is what ~50 ms brought
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        new: list[tuple[int, dict[str, Any]]] = []
        enabled = self._enabled()
        for event in events:
            if event.kind == "new" and enabled:
                new += [(event.id, r) for r in self.records(event, by_ip, services, now)]
            elif event.kind == "destroy":
                with self._lock:
                    records = self._open.pop(event.id, [])
                for record in records:
                    record["traffic"] = traffic_of(event)
        if not new:
            return
        added = self._sink([r for _, r in new])
        with self._lock:
            for (ct_id, _), record in zip(new, added, strict=True):
                self._open.setdefault(ct_id, []).append(record)
            while len(self._open) > OPEN_LIMIT:
                self._open.popitem(last=False)

    def records(
        self,
        event: Any,
        by_ip: Mapping[str, PodInfo],
        services: Mapping[tuple[str, str, int], str],
        now: str | None = None,
    ) -> list[dict[str, Any]]:
        """The records of one NEW event: one per local end of the connection."""
        protocol = PROTOCOL_NAMES.get(event.protocol, str(event.protocol))
        dst, dport = event.reply_src, event.reply_sport  # the backend, after any DNAT
        src_pod, dst_pod = by_ip.get(event.src), by_ip.get(dst)
        service = (
            services.get((event.dst, protocol, event.dport))
            if (dst, dport) != (event.dst, event.dport)
            else None
        )
        base = {
            "type": "trace",
            "time": now or dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "node": self.node,
            "protocol": protocol,
            "src": event.src,
            "srcPod": src_pod.key if src_pod else None,
            "dst": dst,
            "dstPod": dst_pod.key if dst_pod else None,
            "sport": event.sport,
            "dport": dport,
            "verdict": "ALLOWED",
            "ctId": event.id,
            **({"tcpFlags": 0x02} if event.protocol == 6 else {}),
            **({"service": service} if service else {}),
            **(
                {"icmpType": event.icmp_type, "icmpCode": event.icmp_code}
                if event.icmp_type is not None
                else {}
            ),
        }
        out = []
        plan = self._plan()
        if plan is not self._memo_plan:  # the walks below are memoised per plan (not per port)
            self._memo_plan, self._memo = plan, {}
        for direction, pod in (("egress", src_pod), ("ingress", dst_pod)):
            if pod is not None and pod.node == self.node:
                packet = Packet(event.src, dst, protocol, None if protocol == "ICMP" else dport)
                key = (pod.key, direction, packet)
                found = self._memo.get(key)
                if found is None:
                    if len(self._memo) > MEMO_LIMIT:
                        self._memo.clear()
                    found = self._memo[key] = allowed_by(plan, pod.key, direction, packet)
                out.append(
                    {**base, "direction": direction, **found, "policies": list(found.get("policies", ()))}
                )
        return out

    def refresh(self, records: list[dict[str, Any]]) -> int:
        """The open connections' counts so far, from a dump (a FLOWS request, before it answers);
        returns how many records were updated."""
        wanted = {r["ctId"] for r in records if r.get("type") == "trace" and "ctId" in r}
        if not wanted:
            return 0
        counted = {e.id: e for e in self._dump() if e.id in wanted}
        updated = 0
        for record in records:
            event = counted.get(record.get("ctId"))  # type: ignore[arg-type]
            same = event is not None and (event.src, event.sport) == (record.get("src"), record.get("sport"))
            if same and record.get("type") == "trace":  # an id the kernel gave again is not ours
                record["traffic"] = traffic_of(event)
                updated += 1
        return updated
