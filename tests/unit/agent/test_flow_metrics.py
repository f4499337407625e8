"""The node's flow metrics (agent.flow_metrics): kernel counters at each scrape, records as they come,
Cilium's names beside podnet's on Cilium nodes only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from podnet.agent.flow_metrics import FlowMetrics


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_cilium_counts_come_from_the_kernel_and_have_ciliums_names_too() -> None:
    registry = CollectorRegistry()
    m = FlowMetrics(registry)
    m.use_kernel(
        lambda: {"egress": (10, 15000), "ingress": (8, 900)},
        lambda: {(133, "ingress"): (3, 180)},
        cilium=True,
        lost=lambda: 2,
        parse_errors=lambda: 1,
    )
    m.observe(
        [
            {"type": "trace", "direction": "ingress", "match": "identity", "verdict": "ALLOWED"},
            {"type": "trace", "direction": "egress", "match": "not enforced", "verdict": "ALLOWED"},
            {"type": "drop", "direction": "ingress", "dropReason": 133},
            {
                "type": "l7",
                "protocol": "http",
                "method": "PUT",
                "status": 403,
                "verdict": "DENIED",
                "latencyMs": 2.0,
            },
            {
                "type": "l7",
                "protocol": "http",
                "method": "GET",
                "status": 200,
                "verdict": "FORWARDED",
                "latencyMs": 1.0,
            },
        ]
    )
    got = scrape(registry)
    assert got['podnet_forward_bytes_total{direction="egress"}'] == 15000
    assert got['cilium_forward_bytes_total{direction="EGRESS"}'] == 15000
    assert got['podnet_drop_count_total{direction="ingress",reason="POLICY_DENIED"}'] == 3
    assert got['cilium_drop_count_total{direction="INGRESS",reason="Policy denied"}'] == 3
    assert got['podnet_policy_verdict_total{action="allowed",direction="ingress",match="identity"}'] == 1
    assert got['podnet_policy_verdict_total{action="denied",direction="ingress",match="none"}'] == 1
    assert not any("not enforced" in k for k in got)  # no policy judged it: no verdict
    assert got['cilium_policy_verdict_total{action="allowed",direction="ingress",match="identity"}'] == 1
    assert got['podnet_policy_l7_total{rule="received"}'] == 2
    assert (
        got['podnet_policy_l7_total{rule="denied"}'],
        got['podnet_policy_l7_total{rule="forwarded"}'],
    ) == (1, 1)
    assert got['podnet_policy_l7_total{rule="parse_errors"}'] == 1
    assert got['cilium_policy_l7_total{rule="denied"}'] == 1
    assert got['podnet_http_requests_total{method="PUT",status="403"}'] == 1
    assert got['podnet_http_request_duration_seconds_count{method="GET"}'] == 1
    assert got["podnet_flows_lost_total"] == 2
    assert got['podnet_flows_processed_total{type="trace",verdict="FORWARDED"}'] == 2


def test_calico_counts_drops_from_the_records_and_has_no_cilium_names() -> None:
    registry = CollectorRegistry()
    m = FlowMetrics(registry)
    m.use_kernel(lambda: {"ingress": (5, 500)}, None, cilium=False)
    m.observe([{"type": "drop", "direction": "ingress", "prefix": "pnd:x:in", "length": 60}] * 2)
    m.observe([{"type": "log", "direction": "ingress", "prefix": "pnl:x"}])  # a Log rule: no drop
    got = scrape(registry)
    assert got['podnet_drop_count_total{direction="ingress",reason="POLICY_DENIED"}'] == 2
    assert got['podnet_drop_bytes_total{direction="ingress",reason="POLICY_DENIED"}'] == 120
    assert got['podnet_forward_count_total{direction="ingress"}'] == 5
    assert not any(k.startswith("cilium_") for k in got)


def test_a_failing_kernel_read_leaves_its_families_empty_and_the_scrape_whole() -> None:
    registry = CollectorRegistry()
    m = FlowMetrics(registry)

    def broken() -> dict:
        raise OSError("map gone")

    m.use_kernel(broken, broken, cilium=True)
    got = scrape(registry)
    assert not any(k.startswith("podnet_forward_bytes") for k in got)
    assert 'podnet_policy_l7_total{rule="received"}' in got
