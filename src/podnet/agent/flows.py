"""The agent's flows API: the event ring's records as flows, filtered here (as Hubble's agent
does), for ``podnet observe``::

    event ring (agent.drops: drops, traces, verdicts, L7)──▶ traffic refreshed (conntrack)
        ──▶ calc.flows.flow_of (pods described from the watch cache) ──▶ calc.flow_filter ──▶ reply

A request ``{"verb": "FLOWS", "since": N, "wait": S, "filters": [[negated, key, value], ...],
"since_time": "RFC 3339", "last": K}`` answers ``{"ok": true, "flows": [...], "next":
N, "missed": M, "lost": E}``: the flows of records with ``seq > since`` that match (the last ``K``
of them when asked), waiting up to ``S`` seconds for new records (long poll; ``next`` advances
even when none matched). ``missed`` counts records that left the ring before they were asked for;
``lost`` the datapath's events the kernel could not hand over (a full ring buffer).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from podnet.calc.explain_cilium import PROTOCOLS
from podnet.calc.flow_filter import FilterError, matches, validate
from podnet.calc.flows import flow_of
from podnet.calc.policy import PodInfo

MAX_WAIT = 30.0
ERR_BAD_REQUEST = 6
WORKLOAD_LABELS = ("app.kubernetes.io/name", "app", "k8s-app")


def describe_pods(pods: Iterable[PodInfo]) -> dict[str, dict[str, Any]]:
    """``ns/name`` → labels and workload (the first of :data:`WORKLOAD_LABELS`, else the pod's name)."""
    out = {}
    for pod in pods:
        workload = next((pod.labels[k] for k in WORKLOAD_LABELS if pod.labels.get(k)), pod.name)
        out[pod.key] = {"labels": dict(pod.labels), "workload": workload}
    return out


def _parse_time(text: str) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


class FlowService:
    """Answers FLOWS from ``query`` (the ring's :meth:`~podnet.agent.drops.DropMonitor.query`)."""

    def __init__(
        self,
        query: Callable[..., dict[str, Any]],
        pods: Callable[[], Iterable[PodInfo]],
        refresh: Callable[[list[dict[str, Any]]], None] = lambda records: None,
        lost: Callable[[], int | None] = lambda: None,
        capacity: int = 4096,
    ) -> None:
        self._query, self._pods, self._refresh, self._lost = query, pods, refresh, lost
        self.capacity = capacity

    def handle(self, doc: dict) -> dict[str, Any]:
        try:
            since = int(doc.get("since") or 0)
            wait = float(doc.get("wait") or 0)
            last = int(doc.get("last") or 0)
            terms = validate(doc.get("filters") or [])
            since_time = _parse_time(str(doc["since_time"])) if doc.get("since_time") else None
            if since < 0 or not 0 <= wait <= MAX_WAIT or last < 0:
                raise ValueError(f"since >= 0, 0 <= wait <= {MAX_WAIT:g}, last >= 0")
        except FilterError as exc:
            return {"ok": False, "code": ERR_BAD_REQUEST, "msg": str(exc), "details": ""}
        except (TypeError, ValueError) as exc:
            return {"ok": False, "code": ERR_BAD_REQUEST, "msg": f"bad FLOWS request: {exc}", "details": ""}
        reply = self._query(since, wait, 2 * self.capacity)  # both rings: new connections, the rest
        records = reply["drops"]
        self._refresh(records)
        described = describe_pods(self._pods())
        flows = []
        for record in records:
            if since_time is not None and _parse_time(str(record.get("time", ""))) < since_time:
                continue
            flow = flow_of(record, described.get)
            if matches(flow["flow"], terms):
                flows.append(flow)
        if last:
            flows = flows[-last:]
        try:
            lost = self._lost()
        except Exception:
            lost = None
        return {"ok": True, "flows": flows, "next": reply["next"], "missed": reply["missed"], "lost": lost}


def traffic_from_ct(records: Iterable[dict[str, Any]], entries: Iterable[Any]) -> int:
    """Give each Cilium ``trace`` record the packets and bytes its conntrack entry counted (the
    connection's both ways, from its initiator: ``sent`` is what it sent). Returns how many were
    updated; a record whose entry is gone keeps what it was last given."""
    counted = {(e.endpoint, e.direction, e.saddr, e.sport, e.daddr, e.dport, e.protocol): e for e in entries}
    updated = 0
    for record in records:
        if record.get("type") != "trace" or record.get("endpoint") is None:
            continue
        key = (
            record["endpoint"],
            record.get("direction"),
            record.get("src"),
            record.get("sport"),
            record.get("dst"),
            record.get("dport"),
            PROTOCOLS.get(str(record.get("protocol")), -1),
        )
        entry = counted.get(key)
        if entry is None:
            continue
        record["traffic"] = {
            "packets_sent": entry.packets_fwd,
            "bytes_sent": entry.bytes_fwd,
            "packets_received": entry.packets_rev,
            "bytes_received": entry.bytes_rev,
        }
        updated += 1
    return updated
