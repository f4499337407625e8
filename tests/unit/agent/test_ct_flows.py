"""The Calico profile's flows from conntrack events (agent.ct_flows): one record per local end,
the backend behind a ClusterIP, final counts on DESTROY, counts so far from a dump, provenance."""

from __future__ import annotations

from podnet.agent.ct_flows import ConntrackFlows
from podnet.agent.drops import DropMonitor
from podnet.calc.policy import PodInfo
from podnet.dataplane.ct_events import CtEvent

PODS = [
    PodInfo("demo", "frontend", {"app": "frontend"}, ("10.244.1.5",), node="node-1"),
    PodInfo("demo", "api", {"app": "api"}, ("10.244.1.7",), node="node-1"),
    PodInfo("demo", "db", {"app": "db"}, ("10.244.2.9",), node="node-2"),
]
SERVICES = {("10.96.0.20", "TCP", 80): "demo/api"}


def event(kind: str, dst: str, dport: int, backend: str | None = None, ident: int = 7, **counts) -> CtEvent:
    return CtEvent(
        kind, 6, "10.244.1.5", dst, 40000, dport,
        backend or dst, "10.244.1.5", 8080 if backend else dport, 40000, id=ident, **counts,
    )  # fmt: skip


def flows() -> tuple[ConntrackFlows, DropMonitor, list]:
    ring = DropMonitor("node-1", lambda: PODS, lambda: None, open_reader=lambda: None)  # type: ignore[arg-type,return-value]
    dumped: list = []
    source = ConntrackFlows("node-1", lambda: PODS, lambda: SERVICES, ring.add_records, dump=lambda: dumped)
    return source, ring, dumped


def test_a_connection_between_two_local_pods_through_a_service_is_two_records() -> None:
    source, ring, _ = flows()
    source.handle([event("new", "10.96.0.20", 80, backend="10.244.1.7")])
    records = ring.query()["drops"]
    assert [r["direction"] for r in records] == ["egress", "ingress"]
    for r in records:
        assert (r["type"], r["srcPod"], r["dstPod"], r["dst"], r["dport"]) == (
            "trace", "demo/frontend", "demo/api", "10.244.1.7", 8080,
        )  # fmt: skip
        assert r["service"] == "demo/api" and r["tcpFlags"] == 2 and r["ctId"] == 7
        assert r["match"] == "not enforced"  # no plan: no policy selects them


def test_destroy_gives_the_final_counts_and_a_dump_the_counts_so_far() -> None:
    source, ring, dumped = flows()
    source.handle([event("new", "10.244.2.9", 5432, ident=9)])  # db is on node-2: egress only here
    (record,) = ring.query()["drops"]
    assert record["direction"] == "egress" and record["dstPod"] == "demo/db"
    dumped.append(event("dump", "10.244.2.9", 5432, ident=9, packets_orig=3, bytes_orig=300))
    assert source.refresh(ring.query()["drops"]) == 1
    assert record["traffic"]["bytes_sent"] == 300
    dumped[:] = [CtEvent("dump", 6, "10.244.1.99", "x", 1, 2, "x", "y", 2, 1, id=9)]  # the id given again
    assert source.refresh(ring.query()["drops"]) == 0 and record["traffic"]["bytes_sent"] == 300
    source.handle([event("destroy", "10.244.2.9", 5432, ident=9, packets_reply=5, bytes_reply=7000)])
    assert ring.query()["drops"][0]["traffic"] == {
        "packets_sent": 0, "bytes_sent": 0, "packets_received": 5, "bytes_received": 7000,
    }  # fmt: skip


def test_the_nodes_own_and_passing_connections_make_no_record() -> None:
    source, ring, _ = flows()
    other = CtEvent(
        "new", 6, "10.77.0.11", "10.77.0.2", 5000, 2379, "10.77.0.2", "10.77.0.11", 2379, 5000, id=3
    )
    source.handle([other])
    assert ring.query()["drops"] == []
