"""The Cilium datapath's events as ``podnet monitor`` shows them (agent.bpf_events, pure parts)."""

from __future__ import annotations

import time

from podnet.agent.bpf_events import BpfEvents
from podnet.agent.drops import DropMonitor, LazyRecord
from podnet.calc.explain_cilium import describe_key, parse_provenance, policy_text
from podnet.calc.flows import flow_of
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import EndpointMap
from podnet.calc.policymap import EGRESS, INGRESS, PolicyEntry, PolicyKey
from podnet.dataplane.cilium_maps import EVENT_DROP, EVENT_TRACE, EVENT_VERDICT, Event

PODS = [PodInfo("shop", "web", {}, ("10.244.1.5",)), PodInfo("shop", "client", {}, ("10.244.2.7",))]
ENTRY = PolicyEntry(True, 0, ("cnp:shop/no-client:ingressDeny:0", "knp:shop/web:ingress:1"))
WEB_MAP = EndpointMap("shop/web", True, False, {}, {INGRESS: ("ccnp:lockdown", "knp:shop/web")})


def event(kind: int, reason: int, entry_id: int = 0, match: str = "none", direction: str = INGRESS) -> Event:
    return Event(
        kind, reason, direction, 2, 7, 6, 0x02, 9, 300, 301, entry_id,
        "10.244.2.7", "10.244.1.5", 40000, 80, 60, time.monotonic_ns(), match,
    )  # fmt: skip


def monitor() -> BpfEvents:
    return BpfEvents(
        "node-1",
        "/nonexistent",
        lambda: PODS,
        lambda endpoint: WEB_MAP if endpoint == 7 else None,
        lambda entry_id: ("shop/web", PolicyKey(INGRESS, 300, 6, 80, 16), ENTRY) if entry_id == 5 else None,
        lambda records: None,
        lambda verdicts, traces: None,
        lambda: 0,
    )


def test_provenance_names_kind_policy_section_and_rule():
    assert parse_provenance("knp:shop/web:ingress:1") == {
        "kind": "NetworkPolicy",
        "namespace": "shop",
        "name": "web",
        "section": "ingress",
        "rule": 1,
    }
    assert policy_text(parse_provenance("ccnp:lockdown:egressDeny:0")) == (
        "CiliumClusterwideNetworkPolicy lockdown egressDeny[0]"
    )
    assert policy_text(parse_provenance("knp:shop/web")) == "NetworkPolicy shop/web"
    assert describe_key(PolicyKey(EGRESS, 0)) == "any identity, any protocol"
    assert describe_key(PolicyKey(INGRESS, 300, 6, 9000, 14)) == "identity 300, TCP port 9000/14"


def test_a_default_deny_names_the_policies_that_enforce_the_direction():
    record = monitor().annotate(event(EVENT_DROP, 133))
    assert record["type"] == "drop" and record["verdict"] == "DENIED"
    assert record["reason"] == (
        "Policy denied: default deny of CiliumClusterwideNetworkPolicy lockdown, NetworkPolicy shop/web"
    )
    assert (record["srcPod"], record["dstPod"], record["dport"]) == ("shop/client", "shop/web", 80)
    assert record["protocol"] == "TCP" and record["dropReason"] == 133


def test_a_deny_rule_drop_and_a_verdict_name_their_entry():
    record = monitor().annotate(event(EVENT_DROP, 181, entry_id=5, match="identity"))
    assert record["reason"].startswith(
        "Policy denied by denylist: CiliumNetworkPolicy shop/no-client ingressDeny[0]"
    )
    assert [p["kind"] for p in record["policies"]] == ["CiliumNetworkPolicy", "NetworkPolicy"]
    verdict = monitor().annotate(event(EVENT_VERDICT, 0, entry_id=5, match="identity"))
    assert verdict["type"] == "policy-verdict" and verdict["verdict"] == "ALLOWED"
    assert verdict["reason"].endswith("(identity 300, TCP port 80)")
    host = monitor().annotate(event(EVENT_VERDICT, 0, match="host"))
    assert host["reason"].startswith("allowed: the node reaches its own pods")


def test_anti_spoofing_control_plane_and_unknown_reasons():
    m = monitor()
    assert "anti-spoofing" in m.annotate(event(EVENT_DROP, 132, direction=EGRESS))["reason"]
    assert (
        m.annotate(event(EVENT_DROP, 230, direction=EGRESS))["reason"] == "Node control plane closed to pods"
    )
    assert m.annotate(event(EVENT_DROP, 250))["reason"] == "drop reason 250"


def test_records_carry_the_drop_monitors_prefix_kinds():
    m = monitor()
    assert m.annotate(event(EVENT_DROP, 133))["prefix"] == "pnd:ep7:in"
    assert m.annotate(event(EVENT_DROP, 130, direction=EGRESS))["prefix"] == "pns:ep7:mac"
    assert m.annotate(event(EVENT_DROP, 132, direction=EGRESS))["prefix"] == "pns:ep7:spoof"
    assert m.annotate(event(EVENT_DROP, 230, direction=EGRESS))["prefix"] == "pnc:ep7:control"
    assert m.annotate(event(EVENT_DROP, 181))["prefix"] == "pnx:ep7:in"
    assert m.annotate(event(EVENT_VERDICT, 0, match="host"))["prefix"] == "pnv:ep7:in"
    assert m.annotate(event(EVENT_DROP, 134))["prefix"] == "bpf:134"


def test_a_trace_is_a_flow_record_and_the_verdict_while_verdicts_are_asked_for():
    m = monitor()
    judged, unenforced = (
        event(EVENT_TRACE, 0, entry_id=5, match="identity"),
        event(EVENT_TRACE, 0, match="not enforced"),
    )
    records = m.records([judged, unenforced])
    assert [r["type"] for r in records] == ["trace", "trace"]  # nobody asked for verdicts
    # lazy: what the metrics need now, the rest when read (the ring's query materializes them)
    assert all(isinstance(r, LazyRecord) for r in records) and "prefix" not in records[0]
    assert (records[0]["direction"], records[0]["match"], records[0]["verdict"]) == (
        "ingress",
        "identity",
        "ALLOWED",
    )
    ring = DropMonitor("node-1", lambda: PODS, lambda: None, open_reader=lambda: None)  # type: ignore[arg-type,return-value]
    ring.add_records(records)
    records = ring.query()["drops"]
    assert [r["seq"] for r in records] == [1, 2] and records[0]["srcPod"] == "shop/client"
    assert records[0]["prefix"] == "pnt:ep7:in" and records[0]["tcpFlags"] == 0x02
    assert records[1]["reason"] == "allowed: no policy selects the endpoint in this direction"
    flow = flow_of(records[0])["flow"]
    assert flow["verdict"] == "FORWARDED" and flow["event_type"] == {"type": "trace"}
    assert flow["l4"]["TCP"]["flags"] == {"SYN": True} and "drop_reason" not in flow
    m.want_verdicts()
    records = m.records([judged, unenforced])
    assert [r["type"] for r in records] == ["trace", "policy-verdict", "trace"]  # policy judged one
    assert records[1]["prefix"] == "pnv:ep7:in" and records[1]["reason"].endswith(
        "(identity 300, TCP port 80)"
    )
