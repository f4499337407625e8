"""The services scale section's pure parts: the generated objects, the nft map parser, the figures."""

from __future__ import annotations

import ipaddress

import pytest

from podnet.bench import scale_services as ss
from podnet.bench.churn import VIRTUAL_NET, is_virtual
from podnet.calc.services import service_plan
from podnet.model import parse_resource


def test_each_service_selects_exactly_its_two_datastore_only_pods():
    services = []
    for i in (1, 2, 999):
        doc = ss.service_doc(i)
        doc["spec"]["clusterIP"] = f"10.96.0.{i % 250 + 1}"
        services.append(parse_resource(doc))
    pods = [parse_resource(d) for i in (1, 2, 999) for d in ss.endpoint_docs(i)]
    assert all(is_virtual(p) and p.spec.node_name == ss.ELSEWHERE for p in pods)
    addresses = [ipaddress.IPv4Address(p.status.pod_ip) for p in pods]
    assert len(set(addresses)) == 6 and all(a in VIRTUAL_NET for a in addresses)
    plan = service_plan("node-1", services, pods)
    by_service = plan.by_service()
    assert sorted(by_service) == [f"{ss.NAMESPACE}/{ss.service_name(i)}" for i in (1, 2, 999)]
    for i in (1, 2, 999):
        [frontend] = by_service[f"{ss.NAMESPACE}/{ss.service_name(i)}"]
        assert (frontend.port, frontend.protocol) == (80, "TCP")
        assert {b.pod for b in frontend.backends} == {
            f"{ss.NAMESPACE}/{ss.service_name(i)}-{j}" for j in (0, 1)
        }
        assert {b.port for b in frontend.backends} == {ss.TARGET_PORT}


def test_the_real_workload_is_one_service_two_backends_one_client():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in ss.real_docs())
    assert kinds == [
        ("Namespace", "bench"),
        ("Pod", "client-svc"),
        ("Pod", "web-1"),
        ("Pod", "web-2"),
        ("Service", "web"),
    ]


def test_nft_netlink_keys_round_trip_and_parse_a_setelem_message():
    from podnet.bench import nft_netlink as nl
    from podnet.dataplane.ctnetlink import nla

    key = nl.encode_key("10.96.1.2", "tcp", 80)
    assert len(key) == 12 and key[4] == 6 and key[8:10] == b"\x00\x50"
    assert nl.decode_key(key) == ("10.96.1.2", "tcp", 80)
    other = nl.encode_key("10.96.1.3", "udp", 53)

    def elem(raw: bytes) -> bytes:
        return nla(
            nl.NFTA_LIST_ELEM | nl.NLA_F_NESTED, nla(nl.NFTA_SET_ELEM_KEY | nl.NLA_F_NESTED, nla(1, raw))
        )

    payload = b"\x02\x00\x00\x00" + nla(1, b"podnet_services\0") + nla(2, b"service-ips\0")
    payload += nla(nl.NFTA_SET_ELEM_LIST_ELEMENTS | nl.NLA_F_NESTED, elem(key) + elem(other))
    assert nl.element_keys(payload) == [key, other]  # repeated attributes all kept
    assert nl.element_keys(b"\x02\x00\x00\x00") == []


def test_summaries_and_ratios():
    assert ss.summary_ms([0.05, 0.01, 0.2]) == {"n": 3, "median": 50.0, "max": 200.0}
    assert ss.round_ratios([900, 1000], [1000, 1000]) == [0.9, 1.0]
    with pytest.raises(ValueError):
        ss.round_ratios([1], [1, 2])
    with pytest.raises(ValueError):
        ss.summary_ms([])


def _sample(seconds: float = 12.0) -> dict:
    rss = {"node-1": {"rss_mib": 100.0, "peak_mib": 120.0}}
    cold = {"seconds": seconds, "write_s": 5.0, "agent_cpu_s": {"node-1": 3.0}, "agent_log": {}}
    return {
        "services": 10_000,
        "cold": [cold, {**cold, "seconds": 8.0}],
        "deletes": [{"seconds": 4.0}],
        "one_added": [{"add_s": 0.08, "delete_s": 0.07}, {"add_s": 0.2, "delete_s": 0.09}],
        "conn_per_s": {"with_1": [1000.0, 1100.0], "with_n": [990.0, 1000.0]},
        "rss_idle": {"node-1": {"rss_mib": 60.0, "peak_mib": 60.0}},
        "rss_loaded": rss,
    }


def test_rows_carry_goals_and_say_whether_they_are_met():
    rows = {r.figure: r for r in ss.rows("calico", _sample())}
    cold = rows["calico: cold sync, 10,000 services + pods"]
    assert (cold.value, cold.goal, cold.met) == (12.0, ss.COLD_GOAL_S, True)
    assert rows["calico: one service added at 10,000, median"].value == 140.0
    assert rows["calico: one service added at 10,000, max"].met is False
    ratio = rows["calico: conn/s via ClusterIP, 10,000 / 1 services"]
    assert ratio.op == ">=" and ratio.value == pytest.approx((0.99 + 1000 / 1100) / 2, abs=1e-3)
    assert rows["calico: agent RSS node-1, 10,000 services"].value == 100.0
    assert ss.rows("cilium", _sample(45.0))[0].met is False
    restarted = {**_sample(), "restart_cold": {"seconds": 3.5, "services": 10_000}}
    row = {r.figure: r for r in ss.rows("calico", restarted)}[
        "calico: cold sync, one agent restarted with 10,000 services in etcd"
    ]
    assert (row.value, row.goal, row.met) == (3.5, ss.COLD_GOAL_S, True)
    logged = {
        "slow_partial_applies": 2,
        "policy_ms_sum": 30.0,
        "services_ms_sum": 250.0,
        "nft_apply_ms_sum": 120.0,
    }
    phased = {**_sample(), "one_added": [{"add_s": 0.3, "delete_s": 0.2, "agent_log": {"node-1": logged}}]}
    row = {r.figure: r for r in ss.rows("calico", phased)}["calico: one service added at 10,000, median"]
    assert row.note.endswith("per agent: policy 30 ms, services 250 ms (nft table 120 ms)")
