"""Flows from the event ring's records (calc.flows) and Hubble's filters over them (calc.flow_filter)."""

from __future__ import annotations

import pytest

from podnet.calc.flow_filter import FilterError, matches, validate
from podnet.calc.flows import flow_of

PODS = {
    "demo/frontend-1": {"labels": {"app": "frontend"}, "workload": "frontend"},
    "demo/api-1": {"labels": {"app": "api", "tier": "back"}, "workload": "api"},
}

TRACE = {
    "type": "trace",
    "time": "2026-12-07T12:00:00.000001Z",
    "node": "node-1",
    "protocol": "TCP",
    "src": "10.244.1.5",
    "srcPod": "demo/frontend-1",
    "srcIdentity": 4001,
    "dst": "10.244.2.7",
    "dstPod": "demo/api-1",
    "dstIdentity": 4002,
    "sport": 40312,
    "dport": 8080,
    "tcpFlags": 0x02,
    "direction": "egress",
    "verdict": "ALLOWED",
    "service": "demo/api",
    "traffic": {"packets_sent": 10, "bytes_sent": 1500, "packets_received": 8, "bytes_received": 90000},
}
NFT_DROP = {
    "type": "drop",
    "time": "2026-12-07T12:00:01Z",
    "node": "node-2",
    "protocol": "UDP",
    "src": "192.168.50.3",
    "srcPod": None,
    "dst": "10.244.2.7",
    "dstPod": "demo/api-1",
    "dport": 53,
    "direction": "ingress",
    "reason": "default deny of NetworkPolicy demo/api",
    "policies": [
        {"kind": "NetworkPolicy", "namespace": "demo", "name": "api", "tier": "default", "rule": ""}
    ],
    "prefix": "pnd:abc:in",
}
HTTP = {
    "type": "l7",
    "time": "2026-12-07T12:00:02Z",
    "node": "node-2",
    "protocol": "http",
    "direction": "ingress",
    "src": "10.244.1.5",
    "sport": 40400,
    "dst": "10.244.2.7",
    "dport": 80,
    "srcPod": "demo/frontend-1",
    "dstPod": "demo/api-1",
    "method": "PUT",
    "url": "/api/v1/x?y=1",
    "status": 403,
    "latencyMs": 1.5,
    "verdict": "DENIED",
    "rule": "default-deny",
}


def describe(key: str):
    return PODS.get(key)


def test_a_trace_is_a_forwarded_flow_with_pods_labels_identities_service_and_bytes() -> None:
    out = flow_of(TRACE, describe)
    f = out["flow"]
    assert out["node_name"] == "node-1" and out["time"] == TRACE["time"]
    assert f["verdict"] == "FORWARDED" and f["Type"] == "L3_L4" and f["event_type"] == {"type": "trace"}
    assert f["IP"] == {"source": "10.244.1.5", "destination": "10.244.2.7", "ipVersion": "IPv4"}
    assert f["l4"] == {"TCP": {"source_port": 40312, "destination_port": 8080, "flags": {"SYN": True}}}
    assert f["source"]["pod_name"] == "frontend-1" and f["source"]["identity"] == 4001
    assert "k8s:app=frontend" in f["source"]["labels"]
    assert f["source"]["workloads"] == [{"name": "frontend", "kind": "Pod"}]
    assert f["destination_service"] == {"namespace": "demo", "name": "api"}
    assert f["traffic"]["bytes_received"] == 90000
    assert f["traffic_direction"] == "EGRESS" and f["is_reply"] is False
    assert f["Summary"] == "TCP Flags: SYN"


def test_an_nftables_drop_gets_cilium_reason_numbers_and_the_world_as_source() -> None:
    f = flow_of(NFT_DROP, describe)["flow"]
    assert f["verdict"] == "DROPPED"
    assert (f["drop_reason"], f["drop_reason_desc"]) == (133, "POLICY_DENIED")
    assert f["source"] == {"labels": ["reserved:world"]}
    assert f["policies"][0]["name"] == "api" and "default deny" in f["reason"]
    spoof = flow_of({**NFT_DROP, "prefix": "pns:abc:mac"})["flow"]
    assert spoof["drop_reason_desc"] == "INVALID_SOURCE_MAC"


def test_an_l7_denial_is_a_dropped_l7_flow() -> None:
    f = flow_of(HTTP, describe)["flow"]
    assert f["verdict"] == "DROPPED" and f["Type"] == "L7"
    assert f["l7"]["http"] == {"code": 403, "method": "PUT", "url": "/api/v1/x?y=1"}
    assert f["l7"]["latency_ns"] == 1_500_000
    assert "drop_reason" not in f  # the proxy answered: no packet was dropped
    assert f["Summary"].startswith("HTTP/1.1 403")


def _f(record: dict) -> dict:
    return flow_of(record, describe)["flow"]


@pytest.mark.parametrize(
    ("terms", "trace", "drop", "http"),
    [
        ([(False, "verdict", "DROPPED")], False, True, True),
        ([(False, "verdict", "DROPPED"), (False, "verdict", "FORWARDED")], True, True, True),
        ([(False, "type", "l7")], False, False, True),
        ([(False, "protocol", "http")], False, False, True),
        ([(False, "protocol", "udp")], False, True, False),
        ([(False, "pod", "demo/front")], True, False, True),
        ([(False, "from-pod", "demo/api")], False, False, False),
        ([(False, "to-pod", "demo/api")], True, True, True),
        ([(False, "pod", "api")], False, False, False),  # no namespace: default
        ([(False, "namespace", "demo")], True, True, True),
        ([(False, "label", "tier=back")], True, True, True),
        ([(False, "from-label", "app=frontend")], True, False, True),
        ([(False, "ip", "192.168.50.0/24")], False, True, False),
        ([(False, "port", "8080")], True, False, False),
        ([(False, "node-name", "node-2")], False, True, True),
        ([(False, "node-name", "node-*")], True, True, True),
        ([(False, "http-status", "4+")], False, False, True),
        ([(False, "http-status", "403")], False, False, True),
        ([(False, "http-status", "5+")], False, False, False),
        ([(False, "http-method", "put")], False, False, True),
        ([(False, "http-path", "/api/v1/.*")], False, False, True),
        ([(False, "http-path", "/api/v1")], False, False, False),
        ([(True, "verdict", "DROPPED")], True, False, False),
        ([(False, "to-pod", "demo/api"), (True, "protocol", "udp")], True, False, True),
        ([(False, "verdict", "DROPPED"), (False, "type", "drop")], False, True, False),
    ],
)
def test_filters_as_hubble_combines_them(terms, trace, drop, http) -> None:
    terms = validate(terms)
    got = (matches(_f(TRACE), terms), matches(_f(NFT_DROP), terms), matches(_f(HTTP), terms))
    assert got == (trace, drop, http)


@pytest.mark.parametrize(
    ("term", "says"),
    [
        ((False, "verdict", "OK"), "--verdict OK: one of"),
        ((False, "colour", "red"), "--colour: not a filter"),
        ((False, "ip", "10.0.0.300"), "not an address"),
        ((False, "port", "70000"), "a port number"),
        ((False, "http-status", "4xx"), "a status (403) or a class (4+)"),
        ((False, "http-path", "(["), "not a regular expression"),
        ((False, "type", "capture"), "--type capture: one of"),
    ],
)
def test_a_bad_filter_is_named(term, says) -> None:
    with pytest.raises(FilterError, match=None) as info:
        validate([term])
    assert says in str(info.value)
