"""``podnet policy explain`` and the comparison table of ``podnet policy test``, over an in-memory
datastore (the probes themselves are exercised by the lab tests)."""

from __future__ import annotations

import json

import pytest

from podnet.cli import cmd_policy
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.errors import NotFoundError
from podnet.lab.probe import ProbeResult
from podnet.model import parse_resource

PORTS = [{"name": "web", "containerPort": 8080}]


def pod(name: str, ip: str, labels: dict, host_network: bool = False) -> dict:
    spec: dict = {"nodeName": "node-1", "containers": [{"name": "c", "ports": PORTS}]}
    if host_network:
        spec["hostNetwork"] = True
    meta = {"name": name, "namespace": "np", "labels": labels}
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


POLICY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "api-from-friends", "namespace": "np"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "api"}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": "web"}]}
        ],
    },
}
EGRESS_DENY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "no-egress", "namespace": "np"},
    "spec": {"podSelector": {"matchLabels": {"role": "friend"}}, "policyTypes": ["Egress"]},
}


@pytest.fixture
def view() -> cmd_policy.ClusterPolicy:
    store = ResourceStore(MemoryDatastore())
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}},
        pod("api", "10.244.1.2", {"app": "api"}),
        pod("friend", "10.244.2.2", {"role": "friend"}),
        pod("far", "10.244.3.2", {}),
        pod("host", "10.0.0.11", {"role": "friend"}, host_network=True),
        POLICY,
    ]
    store.apply([parse_resource(d) for d in docs])
    return cmd_policy.load(store)


def test_allowed_names_the_rule_and_its_text(view) -> None:  # type: ignore[no-untyped-def]
    src, dst = cmd_policy.resolve(view, "np/friend"), cmd_policy.resolve(view, "np/api")
    doc = cmd_policy.explain_doc(view, src, dst, 8080, "TCP")
    assert doc["verdict"] == "allowed" and doc["decidedBy"] == "ingress"
    assert doc["rules"] == ["NetworkPolicy np/api-from-friends ingress rule 0"]
    (rule,) = doc["ingress"]["rules"]
    assert json.loads(rule["spec"])["ports"] == [{"port": "web", "protocol": "TCP"}]
    text = cmd_policy.render_explain(doc, "np/friend", "np/api")
    assert "ALLOWED (decided by ingress)" in text
    assert "NetworkPolicy np/api-from-friends ingress rule 0: {" in text
    assert "egress  of np/friend: not isolated" in text


def test_denied_names_the_default_deny_and_the_direction(view) -> None:  # type: ignore[no-untyped-def]
    src, dst = cmd_policy.resolve(view, "np/far"), cmd_policy.resolve(view, "np/api")
    doc = cmd_policy.explain_doc(view, src, dst, 8080, "TCP")
    assert (doc["verdict"], doc["decidedBy"]) == ("denied", "ingress")
    assert doc["rules"] == ["NetworkPolicy np/api-from-friends default deny"]
    text = cmd_policy.render_explain(doc, "np/far", "np/api")
    assert (
        "DENIED (decided by ingress)" in text
        and "tier default: end of tier Deny; the end-of-tier deny of" in text
    )
    # the right port but the wrong number: the named port is 8080 only
    friend = cmd_policy.resolve(view, "np/friend")
    assert cmd_policy.explain_doc(view, friend, dst, 8081, "TCP")["verdict"] == "denied"


def test_host_network_pods_are_their_node_and_addresses_work(view) -> None:  # type: ignore[no-untyped-def]
    host = cmd_policy.resolve(view, "np/host")
    assert host == "10.0.0.11"  # not a pod podnet isolates; its label does not make it a friend
    doc = cmd_policy.explain_doc(view, host, cmd_policy.resolve(view, "np/api"), 8080, "TCP")
    assert doc["verdict"] == "denied"  # traffic from another node's address is filtered
    assert cmd_policy.resolve(view, "192.168.1.1") == "192.168.1.1"
    with pytest.raises(NotFoundError):
        cmd_policy.resolve(view, "np/nobody")


def test_both_sides_are_shown_even_when_egress_decides() -> None:
    store = ResourceStore(MemoryDatastore())
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}},
        pod("api", "10.244.1.2", {"app": "api"}),
        pod("friend", "10.244.2.2", {"role": "friend"}),
        POLICY,
        EGRESS_DENY,
    ]
    store.apply([parse_resource(d) for d in docs])
    view = cmd_policy.load(store)
    doc = cmd_policy.explain_doc(view, view.pods["np/friend"], view.pods["np/api"], 8080, "TCP")
    assert (doc["verdict"], doc["decidedBy"]) == ("denied", "egress")
    assert doc["egress"]["allowed"] is False and doc["ingress"]["allowed"] is True


def test_comparison_marks_disagreements_and_counts_refused_as_reached(view) -> None:  # type: ignore[no-untyped-def]
    ok, refused, timeout = (
        ProbeResult(True, "answered", 0.01),
        ProbeResult(False, "refused", 0.01),
        ProbeResult(False, "timed out", 1.0),
    )
    probed = {
        "np/api": {"np/api": ok, "np/friend": ok, "np/far": refused},
        "np/friend": {"np/api": ok, "np/friend": ok, "np/far": ok},
        "np/far": {"np/api": ok, "np/friend": ok, "np/far": timeout},  # two disagreements
    }
    pairs = cmd_policy.compare(probed, view, 8080, "TCP")
    wrong = sorted((p["from"], p["to"]) for p in pairs if not p["agree"])
    assert wrong == [("np/far", "np/api"), ("np/far", "np/far")]
    text = cmd_policy.render_comparison(8080, "TCP", pairs)
    assert "7/9 pairs agree" in text
    assert "! np/far -> np/api: probed reached (answered), explain says denied (ingress:" in text
    assert "✓!" in text and "✗!" in text


def test_declared_ports(view) -> None:  # type: ignore[no-untyped-def]
    assert cmd_policy.declared_ports(view, sorted(view.pods)) == [(8080, "TCP")]


def test_calico_tiers_walk_and_icmp(capsys) -> None:  # type: ignore[no-untyped-def]
    """A GlobalNetworkPolicy in its own tier passes TCP on to tier default and denies ICMP there."""
    store = ResourceStore(MemoryDatastore())
    gnp = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "ops"},
        "spec": {
            "tier": "security",
            "order": 10,
            "selector": "app == 'api'",
            "ingress": [{"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}, {"action": "Pass"}],
        },
    }
    tier = {
        "apiVersion": "projectcalico.org/v3",
        "kind": "Tier",
        "metadata": {"name": "security"},
        "spec": {"order": 100},
    }
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "np"}},
        pod("api", "10.244.1.2", {"app": "api"}),
        pod("friend", "10.244.2.2", {"role": "friend"}),
        POLICY,
        tier,
        gnp,
    ]
    store.apply([parse_resource(d) for d in docs])
    view = cmd_policy.load(store)
    src, dst = cmd_policy.resolve(view, "np/friend"), cmd_policy.resolve(view, "np/api")
    doc = cmd_policy.explain_doc(view, src, dst, 8080, "TCP")
    assert doc["verdict"] == "allowed"
    assert doc["walk"] == [
        "ingress: tier security: GlobalNetworkPolicy ops ingress rule 1 Pass",
        "ingress: tier default: NetworkPolicy np/api-from-friends ingress rule 0 Allow",
    ]
    ping = cmd_policy.explain_doc(view, src, dst, 0, "ICMP")
    assert ping["verdict"] == "denied" and ping["rules"] == ["GlobalNetworkPolicy ops ingress rule 0"]
    (rule,) = ping["ingress"]["rules"]
    assert rule["tier"] == "security" and json.loads(rule["spec"])["action"] == "Deny"
    text = cmd_policy.render_explain(ping, "np/friend", "np/api")
    assert "denied: tier security: GlobalNetworkPolicy ops ingress rule 0 Deny" in text
