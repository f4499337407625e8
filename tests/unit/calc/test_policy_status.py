"""NetworkPolicy status conditions from the node agents' reports."""

from __future__ import annotations

import dataclasses

from podnet.calc.policy import PodInfo, compile_policies
from podnet.calc.policy_status import POLICY_KINDS, PolicyReport, conditions_for, policy_ref
from podnet.model import parse_resource


def report(node: str, revision: int, applied: int, **kw) -> PolicyReport:  # type: ignore[no-untyped-def]
    return PolicyReport(
        node=node,
        time=f"2026-11-25T10:00:0{revision % 10}Z",
        revision=revision,
        applied_revision=applied,
        **kw,
    )


def by_type(conditions: list[dict]) -> dict[str, dict]:
    return {c["type"]: c for c in conditions}


def test_report_round_trips_through_json() -> None:
    r = report("node-1", 7, 5, error="boom", compile_errors={"a/b": "x"}, invalid={"a/c": "y"})
    assert PolicyReport.from_json(r.to_json()) == r


def test_programmed_on_every_node_once_each_reached_the_version() -> None:
    c = by_type(conditions_for("np/p", 10, [report("node-1", 12, 12), report("node-2", 10, 10)]))
    assert c["Accepted"]["status"] == "True" and c["Accepted"]["reason"] == "Programmed"
    assert "node-1, node-2" in c["Accepted"]["message"]
    assert set(c) == {"Accepted"}


def test_pending_names_the_nodes_behind() -> None:
    c = by_type(conditions_for("np/p", 10, [report("node-1", 12, 12), report("node-2", 9, 9)]))
    assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("False", "Pending")
    assert "not yet programmed on node-2" in c["Accepted"]["message"]


def test_nft_refusal_is_a_partial_failure_when_other_nodes_did_it() -> None:
    reports = [report("node-1", 12, 12), report("node-2", 12, 9, error="nft rejected: Error: x")]
    c = by_type(conditions_for("np/p", 10, reports))
    assert c["PartialFailure"]["reason"] == "ProgrammingFailed"
    assert "node-2: nft rejected: Error: x" in c["PartialFailure"]["message"]
    assert "previous ruleset stays in force" in c["PartialFailure"]["message"]
    assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("False", "ProgrammingFailed")
    # the same error on every node is a Failure
    both = [report("node-1", 12, 9, error="e"), report("node-2", 12, 9, error="e")]
    assert by_type(conditions_for("np/p", 10, both))["Failure"]["reason"] == "ProgrammingFailed"


def test_an_old_nft_error_does_not_taint_a_version_programmed_before_it() -> None:
    c = by_type(conditions_for("np/p", 5, [report("node-1", 12, 9, error="later trouble")]))
    assert "ProgrammingFailed" not in {x.get("reason") for x in c.values()} - {c["Accepted"]["reason"]}
    assert c["Accepted"]["reason"] == "Programmed"


def test_compile_errors_and_invalid_objects_are_failures_naming_the_policy_only() -> None:
    reports = [report("node-1", 12, 12, compile_errors={"np/p": "bad cidr"}, invalid={"np/q": "spec: extra"})]
    c = by_type(conditions_for("np/p", 10, reports))
    assert c["Failure"]["reason"] == "CompileFailed" and "bad cidr" in c["Failure"]["message"]
    assert "allows nothing" in c["Failure"]["message"]
    q = by_type(conditions_for("np/q", 10, reports))
    assert q["Failure"]["reason"] == "InvalidObject" and "last valid version" in q["Failure"]["message"]
    other = by_type(conditions_for("np/r", 10, reports))
    assert other["Accepted"]["status"] == "True"


def test_no_reports_is_unknown() -> None:
    (c,) = conditions_for("np/p", 1, [])
    assert (c["type"], c["status"], c["reason"]) == ("Accepted", "Unknown", "NoAgents")


def test_every_policy_kind_is_named_as_the_compiler_names_it() -> None:
    """A report's compile error for an AdminNetworkPolicy reaches that policy's conditions."""
    anp = parse_resource(
        {
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": "ops"},
            "spec": {
                "priority": 5,
                "subject": {"namespaces": {}},
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            },
        }
    )
    pod = PodInfo("shop", "web", {}, ("10.0.0.1",))
    plan = compile_policies([pod], [pod], {"shop": {}}, [anp])
    assert set(plan.policies) == {policy_ref("adminnetworkpolicies.policy.networking.k8s.io", None, "ops")}
    assert (
        policy_ref("adminnetworkpolicies.policy.networking.k8s.io", None, "ops") == "AdminNetworkPolicy:ops"
    )
    assert policy_ref("networkpolicies.projectcalico.org", "shop", "web") == "CalicoNetworkPolicy:shop/web"
    assert policy_ref("networkpolicies.networking.k8s.io", "shop", "web") == "shop/web"
    assert policy_ref("pods", "shop", "web") is None
    assert set(POLICY_KINDS.values()) >= {"NetworkPolicy", "GlobalNetworkPolicy", "ClusterNetworkPolicy"}
    broken = report("node-1", 3, 3, compile_errors={"AdminNetworkPolicy:ops": "bad peer"})
    c = by_type(conditions_for("AdminNetworkPolicy:ops", 3, [broken]))
    assert c["Failure"]["reason"] == "CompileFailed" and "fails closed" in c["Failure"]["message"]


def test_cilium_policies_say_what_of_them_is_not_enforced_and_a_full_policy_map() -> None:
    from podnet.calc.policy_status import object_notes

    seed = parse_resource(
        {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "l7-rule", "namespace": "shop"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "sensitive-api"}},
                "ingress": [
                    {
                        "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                        "toPorts": [
                            {
                                "ports": [{"port": "80", "protocol": "TCP"}],
                                "rules": {"http": [{"method": "PUT", "path": "/api/v1/*"}]},
                            }
                        ],
                    },
                    {"fromNodes": [{"matchLabels": {"zone": "a"}}]},
                ],
            },
        }
    )
    ref = policy_ref("ciliumnetworkpolicies.cilium.io", "shop", "l7-rule")
    assert ref == "CiliumNetworkPolicy:shop/l7-rule"
    nodes = [report("node-1", 4, 4)]
    notes = object_notes("CiliumNetworkPolicy", seed, nodes)
    c = by_type(conditions_for(str(ref), 4, nodes, notes))
    assert c["Accepted"]["status"] == "True"  # programmed: the notes do not change it
    assert c["L7Enforced"]["reason"] == "NoProxy" and "toPorts[0].rules" in c["L7Enforced"]["message"]
    # the proxy runs on node-2, and fails on node-3: the failure is what the condition says
    nodes.append(dataclasses.replace(report("node-2", 4, 4), l7_proxy=True))
    c = by_type(conditions_for(str(ref), 4, nodes, object_notes("CiliumNetworkPolicy", seed, nodes)))
    assert (c["L7Enforced"]["status"], c["L7Enforced"]["reason"]) == ("True", "ProxyRedirect")
    assert "on node-2" in c["L7Enforced"]["message"]
    nodes.append(dataclasses.replace(report("node-3", 4, 4), l7_error="haproxy refused it"))
    c = by_type(conditions_for(str(ref), 4, nodes, object_notes("CiliumNetworkPolicy", seed, nodes)))
    assert (c["L7Enforced"]["status"], c["L7Enforced"]["reason"]) == ("False", "L7ProxyFailed")
    assert "node-3: haproxy refused it" in c["L7Enforced"]["message"]
    assert PolicyReport.from_json(nodes[2].to_json()) == nodes[2]
    assert c["Unsupported"]["reason"] == "NotCompiled" and "fromNodes" in c["Unsupported"]["message"]
    assert object_notes("NetworkPolicy", seed) == []
    full = report("node-2", 4, 4, policy_map_full=("shop/web",))
    c = by_type(conditions_for(str(ref), 4, [report("node-1", 4, 4), full]))
    assert c["Failure"]["reason"] == "PolicyMapFull" and "node-2: shop/web" in c["Failure"]["message"]
    assert c["Accepted"]["status"] == "False"
    calico = by_type(conditions_for("CalicoNetworkPolicy:shop/x", 4, [full]))
    assert set(calico) == {"Accepted"}  # a Calico policy is not in a Cilium policy map
    assert PolicyReport.from_json(full.to_json()) == full


def test_to_fqdns_that_can_learn_nothing_is_a_condition() -> None:
    ref = "CiliumNetworkPolicy:shop/fqdn"
    blind = dataclasses.replace(report("node-2", 4, 4), fqdn_without_dns={ref: ["shop/web"]})
    c = by_type(conditions_for(ref, 4, [report("node-1", 4, 4), blind]))
    assert (c["FQDNLearnable"]["status"], c["FQDNLearnable"]["reason"]) == ("False", "NoDNSRule")
    assert "node-2: shop/web" in c["FQDNLearnable"]["message"]
    assert "FQDNLearnable" not in by_type(conditions_for(ref, 4, [report("node-1", 4, 4)]))
    assert PolicyReport.from_json(blind.to_json()) == blind
