"""The service map (calc.service_map): nodes, edges and counts from flows, DOT and HTML text.

The demo is three tiers in namespace ``demo`` (frontend: 2 pods → Service demo/api → api: 2 pods →
db), a denied frontend → db, an outside client of the frontend and cluster DNS in ``kube-system``,
written as event-ring records and turned into flows by :func:`podnet.calc.flows.flow_of`.
``tests/unit/cli/test_service_map_render.py`` draws the same demo (:func:`demo_flows`).
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from podnet.calc import service_map
from podnet.calc.flows import flow_of
from podnet.calc.service_map import COLOURS, build, summary, to_dot, to_html

PODS = {
    "demo/frontend-1": "frontend",
    "demo/frontend-2": "frontend",
    "demo/api-1": "api",
    "demo/api-2": "api",
    "demo/db-0": "db",
    "kube-system/coredns-1": "coredns",
}
ADDRESSES = {
    "demo/frontend-1": "10.244.1.5",
    "demo/frontend-2": "10.244.2.5",
    "demo/api-1": "10.244.1.7",
    "demo/api-2": "10.244.2.7",
    "demo/db-0": "10.244.3.9",
    "kube-system/coredns-1": "10.244.3.2",
}
OUTSIDE = "198.51.100.7"
DB_POLICY = {"kind": "NetworkPolicy", "namespace": "demo", "name": "db", "tier": "default", "rule": ""}


def describe(key: str) -> dict[str, Any] | None:
    workload = PODS.get(key)
    if workload is None:
        return None
    return {"labels": {"app": workload}, "workload": workload, "workloadKind": "Deployment"}


def at(second: float) -> str:
    return f"2026-11-25T10:00:{second:09.6f}Z"


def record(kind: str, second: float, src: str | None, dst: str, dport: int, **extra: Any) -> dict[str, Any]:
    """An event-ring record from pod (or outside address) ``src`` to pod ``dst``."""
    out = {
        "type": kind,
        "time": at(second),
        "node": "node-1",
        "protocol": "TCP",
        "src": ADDRESSES.get(src or "", src or OUTSIDE),
        "srcPod": src if src in PODS else None,
        "dst": ADDRESSES[dst],
        "dstPod": dst,
        "dport": dport,
        "direction": "egress",
    }
    out.update(extra)
    return out


def demo_records() -> list[dict[str, Any]]:
    records = [
        # an outside client of the frontend: 2 connections
        record("trace", 0, OUTSIDE, "demo/frontend-1", 8080, sport=51000, direction="ingress"),
        record("trace", 4, OUTSIDE, "demo/frontend-2", 8080, sport=51001, direction="ingress"),
    ]
    # frontend → Service demo/api → api, through the L7 proxy: 4 connections, one seen by both nodes
    pairs = [("demo/frontend-1", "demo/api-1"), ("demo/frontend-1", "demo/api-2")]
    pairs += [("demo/frontend-2", "demo/api-1"), ("demo/frontend-2", "demo/api-2")]
    for i, (src, dst) in enumerate(pairs):
        traffic = {
            "packets_sent": 10,
            "bytes_sent": 1000 * (i + 1),
            "packets_received": 9,
            "bytes_received": 5000,
        }
        extra = {"sport": 40000 + i, "service": "demo/api", "verdict": "REDIRECTED", "traffic": traffic}
        records.append(record("trace", 1 + i, src, dst, 8080, **extra))
    again = dict(records[-1], node="node-2", traffic={"bytes_sent": 3000, "bytes_received": 5000})
    records.append(again)  # the same connection from the other node, an earlier byte count
    # 40 HTTP requests over the 20 s: 30 answered 200, 10 refused by the proxy (403)
    for i in range(40):
        src, dst = ("demo/frontend-1", "demo/api-1") if i % 2 else ("demo/frontend-2", "demo/api-2")
        refused = i % 4 == 3
        extra = {
            "protocol": "http",
            "sport": 40000 + i % 4,
            "service": "demo/api",
            "method": "GET",
            "url": "/admin" if refused else "/items",
            "status": 403 if refused else 200,
            "verdict": "DENIED" if refused else "FORWARDED",
            "latencyMs": 2.5,
        }
        records.append(record("l7", 0.5 * i, src, dst, 8080, **extra))
    # api → db: 3 connections allowed; a policy verdict and a Calico log record that must not count
    for i, src in enumerate(["demo/api-1", "demo/api-2", "demo/api-1"]):
        records.append(record("trace", 6 + i, src, "demo/db-0", 5432, sport=33000 + i))
    records.append(
        record("policy-verdict", 6, "demo/api-1", "demo/db-0", 5432, sport=33000, verdict="ALLOWED")
    )
    records.append(record("log", 6, "demo/api-1", "demo/db-0", 5432, sport=33000))
    # frontend → db denied: a SYN retried three times (one connection), then another connection
    drop = {"prefix": "pnd:ep9:in", "direction": "ingress", "policies": [DB_POLICY], "tcpFlags": 0x02}
    for second, sport in [(10, 45000), (11, 45000), (13, 45000), (20, 45001)]:
        records.append(record("drop", second, "demo/frontend-1", "demo/db-0", 5432, sport=sport, **drop))
    # cluster DNS: UDP through Service kube-system/kube-dns
    for i, src in enumerate(["demo/frontend-1", "demo/frontend-2", "demo/api-1"]):
        dns = {"protocol": "UDP", "sport": 53000 + i, "service": "kube-system/kube-dns"}
        records.append(record("trace", 2 + i, src, "kube-system/coredns-1", 53, **dns))
    return records


def demo_flows() -> list[dict[str, Any]]:
    """The demo's flows, as ``hubble observe -o json`` prints them."""
    return [flow_of(r, describe) for r in demo_records()]


def edges_of(flows: list[dict[str, Any]], **kwargs: Any) -> dict[tuple[str, str, int | None, str], dict]:
    return {
        (e["source"], e["destination"], e["port"], e["protocol"]): e
        for e in summary(build(flows, **kwargs))["edges"]
    }


FRONTEND, API, DB = "workload:demo/frontend", "workload:demo/api", "workload:demo/db"
API_SVC, DNS_SVC, COREDNS = "service:demo/api", "service:kube-system/kube-dns", "workload:kube-system/coredns"


# ------------------------------------------------------------------------------------------- graph


def test_nodes_are_workloads_services_and_the_world_grouped_by_namespace() -> None:
    nodes = summary(build(demo_flows()))["nodes"]
    assert [(n["id"], n["kind"], n["namespace"], n["name"], n["pods"], n["addresses"]) for n in nodes] == [
        (API_SVC, "service", "demo", "api", [], []),
        (DNS_SVC, "service", "kube-system", "kube-dns", [], []),
        (API, "workload", "demo", "api", ["api-1", "api-2"], []),
        (DB, "workload", "demo", "db", ["db-0"], []),
        (FRONTEND, "workload", "demo", "frontend", ["frontend-1", "frontend-2"], []),
        (COREDNS, "workload", "kube-system", "coredns", ["coredns-1"], []),
        ("world:in", "world", "", "world", [], [OUTSIDE]),
    ]


def test_edges_count_connections_by_verdict_once_each() -> None:
    edges = edges_of(demo_flows())
    assert {k: e["connections"] for k, e in edges.items()} == {
        (API_SVC, API, 8080, "TCP"): {"REDIRECTED": 4},
        (DNS_SVC, COREDNS, 53, "UDP"): {"FORWARDED": 3},
        (API, DB, 5432, "TCP"): {"FORWARDED": 3},
        (API, DNS_SVC, 53, "UDP"): {"FORWARDED": 1},
        (FRONTEND, API_SVC, 8080, "TCP"): {"REDIRECTED": 4},
        (FRONTEND, DB, 5432, "TCP"): {"DROPPED": 2},  # 4 drops: a SYN retried, then another connection
        (FRONTEND, DNS_SVC, 53, "UDP"): {"FORWARDED": 2},
        ("world:in", FRONTEND, 8080, "TCP"): {"FORWARDED": 2},
    }
    denied = edges[(FRONTEND, DB, 5432, "TCP")]
    assert denied["status"] == "dropped"
    assert denied["drop_reasons"] == {"POLICY_DENIED": 2}
    assert denied["policies"] == ["NetworkPolicy demo/db"]
    assert [edges[k]["status"] for k in sorted(edges) if k[1] == API_SVC] == ["redirected"]


def test_policy_verdicts_and_log_records_are_not_counted() -> None:
    m = build(demo_flows())
    assert summary(m)["window"]["ignored"] == {"log": 1, "policy-verdict": 1}
    assert m.flows == len(demo_records()) - 2


def test_http_requests_are_counted_apart_from_connections() -> None:
    edges = edges_of(demo_flows())
    for key in [(FRONTEND, API_SVC, 8080, "TCP"), (API_SVC, API, 8080, "TCP")]:
        assert edges[key]["http"] == {
            "requests": 40,
            "by_class": {"2xx": 30, "4xx": 10},
            "errors": 10,
            "error_ratio": 0.25,
            "per_second": 2.0,  # 40 requests over 10:00:00 to 10:00:20
            "denied": 10,
        }
    assert edges[(API, DB, 5432, "TCP")]["http"] is None


def test_since_starts_the_window_and_leaves_older_flows_out() -> None:
    m = build(demo_flows(), since="2026-11-25T09:59:40Z")
    assert m.seconds == 40.0
    edges = edges_of(demo_flows(), since="2026-11-25T09:59:40Z")
    assert edges[(FRONTEND, API_SVC, 8080, "TCP")]["http"]["per_second"] == 1.0
    later = edges_of(demo_flows(), since="2026-11-25T10:00:12.5Z")
    assert later[(FRONTEND, DB, 5432, "TCP")]["connections"] == {"DROPPED": 2}  # the retry at :13, and :20
    assert (API, DB, 5432, "TCP") not in later
    with pytest.raises(ValueError, match="RFC 3339"):
        build(demo_flows(), since="5m")


def test_bytes_add_up_per_connection_taking_its_largest_report() -> None:
    edge = edges_of(demo_flows())[(FRONTEND, API_SVC, 8080, "TCP")]
    assert edge["bytes_sent"] == 1000 + 2000 + 3000 + 4000  # node-2's 3000 of the 4th is older
    assert edge["bytes_received"] == 4 * 5000
    assert edges_of(demo_flows())[(API, DB, 5432, "TCP")]["bytes_sent"] is None


def test_a_service_flow_without_a_backend_pod_stops_at_the_service() -> None:
    flow = flow_of(record("trace", 0, "demo/api-1", "demo/db-0", 80, sport=1, service="demo/web"), describe)
    flow["flow"]["destination"] = {"labels": ["reserved:world"]}
    assert list(edges_of([flow])) == [(API, "service:demo/web", 80, "TCP")]


def test_a_workload_is_its_pod_when_the_flow_names_no_workload() -> None:
    flow = flow_of(record("trace", 0, "lonely", "demo/db-0", 5432, sport=1), describe)
    flow["flow"]["source"] = {"namespace": "demo", "pod_name": "lonely"}
    assert (f"{service_map.WORKLOAD}:demo/lonely", DB, 5432, "TCP") in edges_of([flow])


def test_edge_status_by_verdicts_and_requests() -> None:
    def status(*records: dict[str, Any]) -> str:
        (edge,) = summary(build(flow_of(r, describe) for r in records))["edges"]
        return edge["status"]

    ok = record("trace", 0, "demo/api-1", "demo/db-0", 5432, sport=1)
    redirected = record("trace", 0, "demo/api-1", "demo/db-0", 5432, sport=2, verdict="REDIRECTED")
    dropped = record("drop", 0, "demo/api-1", "demo/db-0", 5432, sport=3)
    http = {"protocol": "http", "status": 200}
    request = record("l7", 0, "demo/api-1", "demo/db-0", 5432, **http)
    refused = record("l7", 0, "demo/api-1", "demo/db-0", 5432, **http, verdict="DENIED")
    assert status(ok) == "forwarded"
    assert status(ok, redirected) == "forwarded"
    assert status(redirected) == "redirected"
    assert status(ok, dropped) == "mixed"
    assert status(dropped) == "dropped"
    assert status(request) == "redirected"  # requests only: they went through the proxy
    assert status(request, refused) == "mixed"
    assert status(refused) == "dropped"
    # the same connection forwarded on one node and dropped on the next is a dropped connection
    same = record("drop", 0, "demo/api-1", "demo/db-0", 5432, sport=1)
    (edge,) = summary(build(flow_of(r, describe) for r in (ok, same)))["edges"]
    assert edge["connections"] == {"DROPPED": 1}


def test_times_parse_to_nanoseconds_and_zones() -> None:
    assert service_map.parse_time("2026-11-25T10:00:01.123456789Z").microsecond == 123456
    assert service_map.parse_time("2026-11-25T12:00:00+02:00") == service_map.parse_time(
        "2026-11-25T10:00:00Z"
    )
    assert service_map.parse_time("yesterday") is None


# --------------------------------------------------------------------------------------------- DOT


def _node_ids(dot: str) -> dict[tuple[str, str], str]:
    """(name, shape) -> DOT node id, from the rendered text."""
    found = re.findall(
        r"^\s*(?:\{ rank=\w+; )?(n\d+) \[shape=(\w+),.*?label=<<B>(.*?)</B>", dot, re.MULTILINE
    )
    return {(name, shape): node_id for node_id, shape, name in found}


def _edge_line(dot: str, ids: dict[tuple[str, str], str], src: tuple[str, str], dst: tuple[str, str]) -> str:
    (line,) = [ln for ln in dot.splitlines() if ln.strip().startswith(f"{ids[src]} -> {ids[dst]} ")]
    return line


def test_dot_draws_clusters_shapes_colours_and_dashes() -> None:
    dot = to_dot(build(demo_flows()))
    assert dot.startswith("digraph service_map {") and "rankdir=LR" in dot
    assert 'subgraph "cluster_demo" {' in dot and 'subgraph "cluster_kube-system" {' in dot
    assert "label=<<B>namespace demo</B>>" in dot
    ids = _node_ids(dot)
    frontend, api, db = ("frontend", "box"), ("api", "box"), ("db", "box")
    api_svc, world = ("api", "hexagon"), ("world", "box3d")
    assert set(ids) == {frontend, api, db, api_svc, world, ("coredns", "box"), ("kube-dns", "hexagon")}
    cluster_demo = dot.split('subgraph "cluster_demo" {')[1].split("  }")[0]
    assert all(f"    {ids[n]} [" in cluster_demo for n in (frontend, api, db, api_svc))
    assert "2 pods" in dot and "1 pod<" in dot and OUTSIDE in dot

    denied = _edge_line(dot, ids, frontend, db)
    assert f'color="{COLOURS["dropped"]}"' in denied and 'style="dashed"' in denied
    assert "<B>5432/TCP</B>" in denied and "2 dropped" in denied and "POLICY_DENIED" in denied
    allowed = _edge_line(dot, ids, api, db)
    assert (
        f'color="{COLOURS["forwarded"]}"' in allowed and "dashed" not in allowed and "3 forwarded" in allowed
    )
    proxied = _edge_line(dot, ids, frontend, api_svc)
    assert f'color="{COLOURS["redirected"]}"' in proxied and "4 to L7 proxy" in proxied
    assert "HTTP 40 req, 2.0/s, err 25%" in proxied
    assert "10.0 kB sent, 20.0 kB back" in proxied
    assert _edge_line(dot, ids, api_svc, api)
    assert f'color="{COLOURS["forwarded"]}"' in _edge_line(dot, ids, world, frontend)
    assert f"{{ rank=source; {ids[world]} [" in dot


def test_a_mixed_edge_is_orange_and_dashed() -> None:
    records = [
        record("trace", 0, "demo/api-1", "demo/db-0", 5432, sport=1),
        record("drop", 1, "demo/api-2", "demo/db-0", 5432, sport=2),
    ]
    dot = to_dot(build(flow_of(r, describe) for r in records))
    (edge,) = [ln for ln in dot.splitlines() if " -> " in ln]
    assert f'color="{COLOURS["mixed"]}"' in edge and 'style="dashed"' in edge
    assert "1 forwarded" in edge and "1 dropped" in edge


def test_the_same_flows_in_any_order_give_the_same_text() -> None:
    flows = demo_flows()
    dot, data = to_dot(build(flows)), summary(build(flows))
    for seed in range(5):
        shuffled = list(flows)
        random.Random(seed).shuffle(shuffled)
        assert to_dot(build(shuffled)) == dot
        assert summary(build(shuffled)) == data
    assert to_dot(build(reversed(flows))) == dot


HOSTILE = 'we"ird\\app<b>&\\N'


def hostile_flows() -> list[dict[str, Any]]:
    """A flow whose workload, namespace and outside address are hostile text."""
    flow = flow_of(record("trace", 0, "demo/api-1", "demo/db-0", 5432, sport=1), describe)
    flow["flow"]["source"] = {
        "namespace": 'ns"x',
        "pod_name": "p\\1",
        "workloads": [{"name": HOSTILE, "kind": 'K"ind'}],
    }
    other = flow_of(record("trace", 0, "demo/api-1", "demo/db-0", 5432, sport=2), describe)
    other["flow"]["destination"] = {"labels": ["reserved:world"]}
    other["flow"]["IP"]["destination"] = '1.2.3.4"<x>'
    return [flow, other]


def test_hostile_names_are_escaped() -> None:
    dot = to_dot(build(hostile_flows()))
    two, four = "\\" * 2, "\\" * 4  # a literal backslash in a label / in a tooltip (dot 2.43)
    assert f"<B>we&quot;ird{two}app&lt;b&gt;&amp;{two}N</B>" in dot  # HTML-like label: entities
    assert "<B>namespace ns&quot;x</B>" in dot
    assert f'tooltip="K\\"ind ns\\"x/we\\"ird{four}app<b>&{four}N\\npods: p{four}1"' in dot  # quoted
    assert "1.2.3.4&quot;&lt;x&gt;" in dot
    assert 'subgraph "cluster_1" {' in dot  # a namespace that is not a plain name gets a number
    assert HOSTILE not in dot


# -------------------------------------------------------------------------------------------- HTML


def test_html_page_embeds_the_svg_with_a_legend_and_nothing_external() -> None:
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">\n<svg id="m"></svg>\n'
    )
    page = to_html(svg, 'map of "demo" <ns>')
    assert page.startswith("<!DOCTYPE html>") and '<svg id="m"></svg>' in page
    assert "<?xml" not in page and "DOCTYPE svg" not in page
    assert "<title>map of &quot;demo&quot; &lt;ns&gt;</title>" in page
    assert all(colour in page for colour in COLOURS.values() if colour != COLOURS["none"])
    assert 'stroke-dasharray="6 4"' in page
    assert not re.search(r"<script|<link|<img|src=|url\(|@import", page)
