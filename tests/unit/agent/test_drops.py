"""The agent's drop monitor without a kernel: annotation, reasons, the ring and its long poll."""

from __future__ import annotations

import datetime as dt
import threading
import time

from podnet.agent import api_server
from podnet.agent.drops import CONTROL_REASON, MAC_SPOOF_REASON, SPOOF_REASON, DropMonitor
from podnet.calc.policy import (
    CompiledPolicy,
    EndpointPolicy,
    EndpointTier,
    Match,
    OrderedRule,
    PodInfo,
    PolicyPlan,
    Provenance,
)
from podnet.cni import agent_api as api
from podnet.dataplane.nflog import Drop
from podnet.dataplane.policy import control_prefix, deny_prefix, mac_spoof_prefix, rule_prefix, spoof_prefix

API = PodInfo("np", "api", {"app": "api"}, ("10.244.1.2",), "node-1")
FAR = PodInfo("np", "far", {}, ("10.244.3.4",), "node-3")
PODS = [API, FAR]
NOON = dt.datetime(2024, 5, 1, 17, 20, 1, 123456, tzinfo=dt.UTC)


def prov(name: str, direction: str = "ingress") -> Provenance:
    return Provenance("NetworkPolicy", "np", name, direction, -1)


def plan(*deniers: Provenance, egress: bool = False) -> PolicyPlan:
    policies = {
        f"np/{p.name}": CompiledPolicy(
            f"np/{p.name}", "NetworkPolicy", "np", p.name, "default", 1000.0, (), None
        )
        for p in deniers
    }
    ingress = (EndpointTier("default", tuple(policies), "Deny"),) if deniers else ()
    egress_tiers = ()
    if egress:
        policies["np/no-egress"] = CompiledPolicy(
            "np/no-egress", "NetworkPolicy", "np", "no-egress", "default", 1000.0, None, ()
        )
        egress_tiers = (EndpointTier("default", ("np/no-egress",), "Deny"),)
    endpoint = EndpointPolicy("np/api", API.ips, ingress, egress_tiers)
    return PolicyPlan(sets={}, endpoints={"np/api": endpoint}, errors={}, policies=policies)


class FakeReader:
    """Hands out queued batches, like NflogReader.read, until closed."""

    def __init__(self) -> None:
        self.batches: list[list[Drop]] = []
        self.closed = False
        self.lock = threading.Lock()

    def read(self, timeout: float = 1.0) -> list[Drop]:
        with self.lock:
            if self.batches:
                return self.batches.pop(0)
        time.sleep(min(timeout, 0.01))
        return []

    def close(self) -> None:
        self.closed = True


def monitor(current: PolicyPlan | None = None, **kwargs) -> DropMonitor:
    holder = {"plan": current}
    m = DropMonitor("node-1", lambda: PODS, lambda: holder["plan"], clock=lambda: NOON, **kwargs)
    m.holder = holder  # type: ignore[attr-defined]
    return m


def ingress_drop(dport: int = 8080) -> Drop:
    return Drop(deny_prefix("np/api", "ingress"), "10.244.3.4", "10.244.1.2", "TCP", dport)


def test_ingress_deny_names_pods_ports_and_the_policy():
    m = monitor(plan(prov("api-from-friends")))
    m.add([ingress_drop()])
    [record] = m.query()["drops"]
    assert record == {
        "seq": 1,
        "time": "2024-05-01T17:20:01.123456Z",
        "node": "node-1",
        "protocol": "TCP",
        "src": "10.244.3.4",
        "srcPod": "np/far",
        "dst": "10.244.1.2",
        "dstPod": "np/api",
        "dport": 8080,
        "direction": "ingress",
        "reason": "default deny of NetworkPolicy np/api-from-friends",
        "policies": [
            {
                "kind": "NetworkPolicy",
                "namespace": "np",
                "name": "api-from-friends",
                "tier": "default",
                "rule": -1,
            }
        ],
        "prefix": deny_prefix("np/api", "ingress"),
        "length": 0,
        "sport": None,
        "type": "drop",
    }


def _ordered_plan() -> tuple[PolicyPlan, Provenance, Provenance]:
    deny = Provenance("GlobalNetworkPolicy", "", "ops", "ingress", 0, "security")
    log = Provenance("GlobalNetworkPolicy", "", "ops", "ingress", 1, "security")
    rules = (OrderedRule("Deny", Match(protocol="UDP"), deny), OrderedRule("Log", Match(), log))
    policy = CompiledPolicy(
        "GlobalNetworkPolicy:ops", "GlobalNetworkPolicy", "", "ops", "security", 1.0, rules, None
    )
    endpoint = EndpointPolicy("np/api", API.ips, (EndpointTier("security", (policy.key,), "Pass"),))
    return PolicyPlan({}, {"np/api": endpoint}, {}, {policy.key: policy}), deny, log


def test_deny_rule_and_log_rule_name_tier_policy_and_rule():
    current, deny, log = _ordered_plan()
    m = monitor(current)
    m.add(
        [
            Drop(rule_prefix(deny, "Deny"), "10.244.3.4", "10.244.1.2", "UDP", 53),
            Drop(rule_prefix(log, "Log"), "10.244.3.4", "10.244.1.2", "TCP", 80),
        ]
    )
    denied, logged = m.query()["drops"]
    assert denied["reason"] == "tier security: GlobalNetworkPolicy ops ingress rule 0 Deny"
    assert (denied["type"], denied["direction"], denied["srcPod"], denied["dstPod"]) == (
        "drop",
        "ingress",
        "np/far",
        "np/api",
    )
    assert denied["policies"] == [
        {"kind": "GlobalNetworkPolicy", "namespace": "", "name": "ops", "tier": "security", "rule": 0}
    ]
    assert logged["type"] == "log" and logged["reason"].endswith("ingress rule 1 Log")
    # read just after a plan change, a drop is still explained by the plan before...
    m.holder["plan"] = plan()  # type: ignore[attr-defined]
    m.add([Drop(rule_prefix(deny, "Deny"), "10.244.3.4", "10.244.1.2", "UDP", 53)])
    assert m.query(since=2)["drops"][0]["reason"].endswith("ingress rule 0 Deny")
    # ...but not by older ones: a rule two plans gone is said so, not guessed
    m.holder["plan"] = plan(prov("other"))  # type: ignore[attr-defined]
    m.add([Drop(rule_prefix(deny, "Deny"), "10.244.3.4", "10.244.1.2", "UDP", 53)])
    assert "no longer in the plan" in m.query(since=3)["drops"][0]["reason"]


def test_several_deniers_and_egress_and_unknown_addresses():
    m = monitor(plan(prov("b-deny"), prov("a-allow"), egress=True))
    m.add(
        [
            ingress_drop(),
            Drop(deny_prefix("np/api", "egress"), "10.244.1.2", "192.0.2.9", "UDP", 53),
            Drop(deny_prefix("np/api", "ingress"), "192.0.2.7", "10.244.1.2", "ICMP", None),
        ]
    )
    first, egress, icmp = m.query()["drops"]
    assert first["reason"] == "default deny of NetworkPolicy np/a-allow, NetworkPolicy np/b-deny"
    assert [p["name"] for p in first["policies"]] == ["b-deny", "a-allow"]
    assert (egress["direction"], egress["srcPod"], egress["dstPod"]) == ("egress", "np/api", None)
    assert egress["reason"] == "default deny of NetworkPolicy np/no-egress"
    assert (icmp["srcPod"], icmp["dstPod"], icmp["dport"], icmp["protocol"]) == (None, "np/api", None, "ICMP")


def test_reason_is_the_plan_in_force_when_read():
    m = monitor(plan(prov("old-policy")))
    m.add([ingress_drop()])
    m.holder["plan"] = plan(prov("new-policy"))  # type: ignore[attr-defined]
    m.add([ingress_drop()])
    m.holder["plan"] = None  # type: ignore[attr-defined]
    m.add([ingress_drop()])
    reasons = [d["reason"] for d in m.query()["drops"]]
    assert reasons == [
        "default deny of NetworkPolicy np/old-policy",
        "default deny of NetworkPolicy np/new-policy",
        "default deny (no policy known for it)",
    ]


def test_spoof_reason_names_the_sending_pod():
    m = monitor(plan())
    m.add([Drop(spoof_prefix("np/api"), "10.9.9.9", "10.244.3.4", "TCP", 80)])
    [record] = m.query()["drops"]
    assert record["reason"] == SPOOF_REASON == "anti-spoofing: source address is not the pod's"
    assert (record["direction"], record["srcPod"], record["dstPod"]) == ("egress", "np/api", "np/far")
    assert record["policies"] == []


def test_mac_spoof_and_control_plane_drops_name_the_sending_pod():
    m = monitor(plan())
    m.add(
        [
            Drop(mac_spoof_prefix("np/api"), "10.244.3.4", "10.244.1.2", "TCP", 80),
            Drop(control_prefix("np/api"), "10.244.3.4", "10.77.0.2", "TCP", 2379),
        ]
    )
    mac, control = m.query()["drops"]
    assert mac["reason"] == MAC_SPOOF_REASON and control["reason"] == CONTROL_REASON
    assert all((d["direction"], d["srcPod"]) == ("egress", "np/api") for d in (mac, control))


def test_unknown_prefix_is_shown_as_is():
    m = monitor(None)
    m.add([Drop("something-else", "10.244.3.4", "10.244.1.2", "TCP", 1)])
    [record] = m.query()["drops"]
    assert record["direction"] == "unknown" and "something-else" in record["reason"]


def test_ring_buffer_since_next_missed_and_limit():
    m = monitor(plan(prov("p")), capacity=4)
    m.add([ingress_drop(port) for port in range(1, 7)])  # seq 1..6; the ring keeps 3..6
    reply = m.query(0)
    assert [d["seq"] for d in reply["drops"]] == [3, 4, 5, 6]
    assert [d["dport"] for d in reply["drops"]] == [3, 4, 5, 6]
    assert (reply["next"], reply["missed"]) == (6, 2)
    assert m.query(4)["drops"][0]["seq"] == 5 and m.query(4)["missed"] == 0
    assert m.query(6) == {"ok": True, "drops": [], "next": 6, "missed": 0}
    page = m.query(0, limit=2)
    assert [d["seq"] for d in page["drops"]] == [3, 4] and page["next"] == 4
    # A since from an earlier agent (numbering restarted): everything this one has.
    assert [d["seq"] for d in m.query(99)["drops"]] == [3, 4, 5, 6]


def test_long_poll_wakes_on_a_new_drop_and_on_stop():
    m = monitor(plan(prov("p")))
    started = time.monotonic()
    threading.Timer(0.2, lambda: m.add([ingress_drop()])).start()
    reply = m.query(0, wait=5.0)
    assert [d["seq"] for d in reply["drops"]] == [1]
    assert 0.1 < time.monotonic() - started < 2.0
    # Nothing new: it waits the full time, then answers empty.
    started = time.monotonic()
    assert m.query(1, wait=0.3)["drops"] == []
    assert time.monotonic() - started >= 0.25
    # stop() answers the waiting polls at once.
    threading.Timer(0.2, m.stop).start()
    started = time.monotonic()
    assert m.query(1, wait=10.0)["drops"] == []
    assert time.monotonic() - started < 2.0


def test_thread_reads_the_reader_and_stops_cleanly():
    reader = FakeReader()
    m = monitor(plan(prov("p")), open_reader=lambda: reader)
    m.start()
    try:
        with reader.lock:
            reader.batches.append([ingress_drop(), ingress_drop(9090)])
        reply = m.handle({"verb": "DROPS", "since": 0, "wait": 5})
        assert reply["ok"] and reply["drops"][0]["dport"] == 8080
        assert m.status()["reading"] is True
    finally:
        m.stop()
    assert reader.closed
    assert m._thread is not None and not m._thread.is_alive()


def test_bind_failure_is_a_warning_and_an_answer(caplog):
    def busy():
        raise OSError(16, "Device or resource busy")

    m = monitor(plan(), open_reader=busy)
    m.start()  # does not raise
    try:
        assert m.status()["reading"] is False and "busy" in m.status()["error"]
        reply = m.handle({"verb": "DROPS"})
        assert reply["ok"] is False and reply["code"] == 11 and "busy" in reply["msg"]
        assert any("cannot read NFLOG" in r.getMessage() for r in caplog.records)
    finally:
        m.stop()


def test_bad_requests():
    m = monitor(plan())
    for doc in ({"since": -1}, {"wait": 31}, {"since": "x"}, {"limit": 0}):
        reply = m.handle({"verb": "DROPS", **doc})
        assert reply["ok"] is False and reply["code"] == 6, doc


def test_over_the_agent_socket(tmp_path):
    """The wire format through the real API server, with the dispatch the agent uses."""
    m = monitor(plan(prov("api-from-friends")))
    m.add([ingress_drop()])

    def dispatch(doc: dict) -> dict:
        if doc.get("verb") == api.DROPS:
            return m.handle(doc)
        return {"ok": False, "code": 4, "msg": "unknown verb"}

    path = str(tmp_path / "agent.sock")
    server = api_server.serve(path, dispatch)
    try:
        reply = api.call(path, {"verb": "DROPS", "since": 0})
        assert reply["next"] == 1 and reply["drops"][0]["dstPod"] == "np/api"
        assert "DROPS" not in api.VERBS  # the CNI verbs stay the CNI verbs
    finally:
        server.shutdown()
        server.server_close()
