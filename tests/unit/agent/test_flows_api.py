"""The agents' FLOWS verb (agent.flows): the ring's records as filtered flows, bytes from conntrack."""

from __future__ import annotations

from podnet.agent.drops import DropMonitor
from podnet.agent.flows import FlowService, describe_pods, traffic_from_ct
from podnet.calc.policy import PodInfo
from podnet.dataplane.cilium_maps import CtEntry

PODS = [
    PodInfo("demo", "frontend-7d9", {"app": "frontend"}, ("10.244.1.5",)),
    PodInfo("demo", "api", {}, ("10.244.2.7",)),
]


def record(kind: str, time: str, src: str = "10.244.1.5", **extra) -> dict:
    return {
        "type": kind,
        "time": time,
        "node": "node-1",
        "protocol": "TCP",
        "src": src,
        "srcPod": {"10.244.1.5": "demo/frontend-7d9"}.get(src),
        "dst": "10.244.2.7",
        "dstPod": "demo/api",
        "sport": 40000,
        "dport": 8080,
        "direction": "egress",
        **extra,
    }


def service(records: list[dict], **kw) -> FlowService:  # type: ignore[no-untyped-def]
    ring = DropMonitor("node-1", lambda: PODS, lambda: None, open_reader=lambda: None)  # type: ignore[arg-type,return-value]
    ring.add_records(records)
    return FlowService(ring.query, lambda: PODS, **kw)


def test_flows_are_filtered_by_the_agent_and_the_last_ones_kept() -> None:
    api = service(
        [
            record("trace", "2026-12-07T12:00:00Z", verdict="ALLOWED", endpoint=3),
            record("drop", "2026-12-07T12:00:01Z", src="192.168.1.9", prefix="pnd:x:in"),
            record("trace", "2026-12-07T12:00:02Z", verdict="ALLOWED", endpoint=3),
        ]
    )
    reply = api.handle({"filters": [[False, "verdict", "FORWARDED"]]})
    assert reply["ok"] and [f["time"] for f in reply["flows"]] == [
        "2026-12-07T12:00:00Z",
        "2026-12-07T12:00:02Z",
    ]
    assert reply["next"] == 3 and reply["missed"] == 0
    assert reply["flows"][0]["flow"]["source"]["workloads"] == [{"name": "frontend", "kind": "Pod"}]
    assert [f["time"] for f in api.handle({"last": 1})["flows"]] == ["2026-12-07T12:00:02Z"]
    since = api.handle({"since_time": "2026-12-07T12:00:01Z"})["flows"]
    assert [f["flow"]["verdict"] for f in since] == ["DROPPED", "FORWARDED"]
    assert api.handle({"since": 2})["flows"][0]["time"] == "2026-12-07T12:00:02Z"  # follow: after seq 2
    outside = api.handle({"filters": [[False, "from-ip", "192.168.0.0/16"]]})["flows"]
    assert [f["flow"]["source"] for f in outside] == [{"labels": ["reserved:world"]}]


def test_a_bad_request_is_refused_naming_what_is_wrong() -> None:
    api = service([])
    bad = api.handle({"filters": [[False, "verdict", "MAYBE"]]})
    assert not bad["ok"] and bad["code"] == 6 and "--verdict MAYBE" in bad["msg"]
    assert "bad FLOWS request" in api.handle({"wait": 99})["msg"]
    assert "bad FLOWS request" in api.handle({"since_time": "yesterday"})["msg"]


def test_traces_take_their_bytes_from_their_conntrack_entry_and_keep_them() -> None:
    trace = record("trace", "t", verdict="ALLOWED", endpoint=3)
    entry = CtEntry(
        3, "egress", 6, "10.244.1.5", 40000, "10.244.2.7", 8080, 6, 500, 4, 9000, 0, 0, 0, 0, (), 0, 0
    )
    other = CtEntry(4, "egress", 6, "10.244.1.5", 40000, "10.244.2.7", 8080, 1, 1, 1, 1, 0, 0, 0, 0, (), 0, 0)
    assert traffic_from_ct([trace, record("drop", "t")], [other, entry]) == 1
    assert trace["traffic"] == {
        "packets_sent": 6,
        "bytes_sent": 500,
        "packets_received": 4,
        "bytes_received": 9000,
    }
    assert (
        traffic_from_ct([trace], []) == 0 and trace["traffic"]["bytes_received"] == 9000
    )  # entry gone: kept
    api = service([trace])
    assert api.handle({})["flows"][0]["flow"]["traffic"]["bytes_received"] == 9000


def test_workloads_from_the_usual_labels() -> None:
    pods = [
        PodInfo("a", "x-1", {"app.kubernetes.io/name": "shop", "app": "other"}),
        PodInfo("a", "y-1", {"k8s-app": "kube-dns"}),
        PodInfo("a", "z"),
    ]
    assert {k: v["workload"] for k, v in describe_pods(pods).items()} == {
        "a/x-1": "shop",
        "a/y-1": "kube-dns",
        "a/z": "z",
    }


def test_traces_have_a_ring_of_their_own_and_missed_counts_the_kind_asked_for() -> None:
    ring = DropMonitor("node-1", lambda: PODS, lambda: None, open_reader=lambda: None, capacity=4)  # type: ignore[arg-type,return-value]
    ring.add_records([record("drop", "t0")])
    ring.add_records([record("trace", f"t{i}") for i in range(1, 11)])  # 10 traces: 6 pushed out
    drops = ring.query(types=["drop"])
    assert [r["time"] for r in drops["drops"]] == ["t0"] and drops["missed"] == 0  # the drop stays
    traces = ring.query(types=["trace"])
    assert [r["time"] for r in traces["drops"]] == ["t7", "t8", "t9", "t10"] and traces["missed"] == 6
    everything = ring.query()
    assert [r["seq"] for r in everything["drops"]] == [1, 8, 9, 10, 11] and everything["missed"] == 6
    assert ring.query(since=9)["missed"] == 0 and ring.query(since=5, types=["trace"])["missed"] == 2
    limited = ring.query(limit=2)
    assert [r["seq"] for r in limited["drops"]] == [1, 8] and limited["next"] == 8
    assert ring.query(types=["l7"]) == {"ok": True, "drops": [], "next": 11, "missed": 0}


def test_full_rings_answer_the_newest_flows() -> None:
    ring = DropMonitor("node-1", lambda: PODS, lambda: None, open_reader=lambda: None, capacity=3)  # type: ignore[arg-type,return-value]
    ring.add_records([record("drop", f"2026-12-07T12:00:0{i}Z") for i in range(3)])
    ring.add_records([record("trace", f"2026-12-07T12:00:1{i}Z") for i in range(5)])
    api = FlowService(ring.query, lambda: PODS, capacity=3)
    times = [f["time"] for f in api.handle({})["flows"]]
    assert times[-1] == "2026-12-07T12:00:14Z" and len(times) == 6  # both rings whole, the newest last
