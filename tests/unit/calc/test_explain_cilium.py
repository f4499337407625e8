"""``podnet policy explain`` for the Cilium profile (calc.explain_cilium): both sides decided from
the endpoint maps as the tc programs decide, naming the deciding entry and its rules."""

from __future__ import annotations

from cilium_support import universe_of

from podnet.calc.explain_cilium import explain
from podnet.calc.ipcache import ipcache
from podnet.calc.policy import PodInfo
from podnet.calc.policy_cilium import compile_endpoint_maps
from podnet.calc.policy_inputs import CiliumPlan
from podnet.calc.policymap import EGRESS, INGRESS
from podnet.model import parse_resource
from podnet.model.identity import RESERVED

WEB = PodInfo("shop", "web", {"app": "web"}, ("10.244.1.5",), "node-1")
FRONT = PodInfo("shop", "front", {"app": "frontend"}, ("10.244.2.7",), "node-2")
OTHER = PodInfo("shop", "other", {"app": "other"}, ("10.244.2.8",), "node-2")
PODS = [WEB, FRONT, OTHER]
NODES = {"node-1": ["10.77.0.11"], "node-2": ["10.77.0.12"]}

CNP = parse_resource(
    {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "l7-rule", "namespace": "shop"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                    "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}],
                }
            ],
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}]}],
        },
    }
)


def plans():  # type: ignore[no-untyped-def]
    universe, ids = universe_of(PODS, {"shop": {}}, [])
    labels = {p.key: {"app": p.labels["app"], "io.kubernetes.pod.namespace": "shop"} for p in PODS}
    maps = compile_endpoint_maps(PODS, [], universe, "default", [CNP], labels)

    def plan_for(node: str | None) -> CiliumPlan:
        return CiliumPlan(maps, ipcache(PODS, ids, NODES, node or "node-1"), ids, universe)

    return plan_for, ids


def test_allowed_by_the_entry_denied_by_the_deny_rule_and_by_default():
    plan_for, ids = plans()
    egress, ingress = explain(plan_for, FRONT, WEB, 80)
    assert not egress.enforced and egress.allowed
    assert ingress.allowed and ingress.rules == ("cnp:shop/l7-rule:ingress:0",)
    assert ingress.key is not None and ingress.key.identity == ids["shop/front"]
    _, denied = explain(plan_for, OTHER, WEB, 80)
    assert not denied.allowed and denied.deny_entry and denied.reason == "Policy denied by denylist"
    assert denied.rules == ("cnp:shop/l7-rule:ingressDeny:0",)
    _, default = explain(plan_for, FRONT, WEB, 81)
    assert (
        not default.allowed and default.reason == "Policy denied" and default.rules == ("cnp:shop/l7-rule",)
    )


def test_addresses_resolve_through_the_ipcache_of_the_sides_node():
    plan_for, _ = plans()
    _, own_node = explain(plan_for, "10.77.0.11", WEB, 80)  # web's own node: host, allowed
    assert own_node.allowed and own_node.peer_identity == RESERVED["host"]
    _, other_node = explain(plan_for, "10.77.0.12", WEB, 80)
    assert not other_node.allowed and other_node.peer_identity == RESERVED["remote-node"]
    _, world = explain(plan_for, "198.51.100.1", WEB, 80)
    assert world.peer_identity == RESERVED["world"] and not world.allowed
    egress, _ = explain(plan_for, WEB, "198.51.100.1", 80)
    assert egress.direction == EGRESS and not egress.enforced
    assert explain(plan_for, FRONT, WEB, 80)[1].direction == INGRESS
