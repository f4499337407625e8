"""The Cilium datapath's counters in the agent's /metrics (events lost stay visible)."""

from __future__ import annotations

from prometheus_client import generate_latest

from podnet.agent.metrics import AgentMetrics


def scrape(metrics: AgentMetrics) -> list[str]:
    return [
        line for line in generate_latest(metrics.registry).decode().splitlines() if "bpf_datapath" in line
    ]


def test_datapath_counters_are_scraped_and_a_failing_read_only_hides_them() -> None:
    metrics = AgentMetrics()
    assert scrape(metrics) == []  # not a Cilium node: no family at all
    values = {"events_lost": 3, "ct_created": 10}
    metrics.watch_datapath(lambda: dict(values))
    assert 'podnet_bpf_datapath_total{counter="events_lost"} 3.0' in scrape(metrics)
    values["events_lost"] = 7  # read at each scrape
    assert 'podnet_bpf_datapath_total{counter="events_lost"} 7.0' in scrape(metrics)
    metrics.watch_datapath(lambda: 1 // 0)  # the maps unreadable: the scrape still answers
    assert not any("counter=" in line for line in scrape(metrics))
