"""Calico NetworkPolicy and GlobalNetworkPolicy semantics of the compiled form (Calico's docs and
libcalico-go's rule conversion are the yardstick)."""

from __future__ import annotations

from typing import Any

from podnet.calc.policy import PodInfo, PolicyPlan, compile_policies
from podnet.calc.policy_explain import explain
from podnet.model import parse_resource

NAMESPACES = {"shop": {"team": "shop"}, "ops": {"team": "ops"}}
WEB = PodInfo("shop", "web", {"app": "web"}, ("10.0.0.1",), "n1", (("web", 8080, "TCP"),))
CLIENT = PodInfo("shop", "client", {"role": "client"}, ("10.0.0.2",), "n2")
TOOL = PodInfo("ops", "tool", {"role": "tool"}, ("10.0.1.1",), "n2")
PODS = [WEB, CLIENT, TOOL]
OUTSIDE = "192.168.5.5"


def calico(name: str, namespace: str | None, **spec: Any) -> Any:
    """A Calico NetworkPolicy in ``namespace``, or a GlobalNetworkPolicy (namespace None)."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    kind = "NetworkPolicy" if namespace else "GlobalNetworkPolicy"
    return parse_resource(
        {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": metadata, "spec": spec}
    )


def plan_for(*policies: Any) -> PolicyPlan:
    return compile_policies(PODS, PODS, NAMESPACES, list(policies))


def decided_by(plan: PolicyPlan, src: PodInfo | str, dst: PodInfo = WEB) -> str:
    return explain(plan, src, dst, 8080, "TCP").describe()


def test_equal_orders_go_by_name_across_kinds() -> None:
    """A GlobalNetworkPolicy ``a-…`` and a NetworkPolicy ``b-…`` of one order: ``a-…`` first, and
    the other way round with the names swapped (the kind does not decide)."""
    deny = {"action": "Deny", "protocol": "TCP"}
    allow = {"action": "Allow", "protocol": "TCP"}
    plan = plan_for(
        calico("a-deny", None, selector="app == 'web'", order=10, ingress=[deny]),
        calico("b-allow", "shop", selector="app == 'web'", order=10, ingress=[allow]),
    )
    assert decided_by(plan, CLIENT) == "tier default: GlobalNetworkPolicy a-deny ingress rule 0 Deny"
    assert not explain(plan, CLIENT, WEB, 8080, "TCP").allowed
    plan = plan_for(
        calico("b-deny", None, selector="app == 'web'", order=10, ingress=[deny]),
        calico("a-allow", "shop", selector="app == 'web'", order=10, ingress=[allow]),
    )
    assert decided_by(plan, CLIENT) == "tier default: CalicoNetworkPolicy shop/a-allow ingress rule 0 Allow"
    assert [t.policies for t in plan.endpoints["shop/web"].ingress] == [
        ("CalicoNetworkPolicy:shop/a-allow", "GlobalNetworkPolicy:b-deny")
    ]


def test_unset_order_comes_after_every_order() -> None:
    plan = plan_for(
        calico("aaa", "shop", selector="app == 'web'", ingress=[{"action": "Allow"}]),
        calico("zzz", "shop", selector="app == 'web'", order=1e9, ingress=[{"action": "Deny"}]),
    )
    assert decided_by(plan, CLIENT) == "tier default: CalicoNetworkPolicy shop/zzz ingress rule 0 Deny"


def test_not_selector_alone_is_scoped_to_a_network_policys_namespace() -> None:
    """libcalico-go scopes a NetworkPolicy's rule to its namespace as soon as a selector field,
    notSelector included, is used; a GlobalNetworkPolicy's notSelector also matches the outside."""
    rule = {"action": "Allow", "protocol": "TCP", "source": {"notSelector": "role == 'client'"}}
    namespaced = plan_for(calico("np", "shop", selector="app == 'web'", ingress=[rule]))
    assert [explain(namespaced, s, WEB, 8080).allowed for s in (CLIENT, TOOL, OUTSIDE)] == [False] * 3
    global_ = plan_for(calico("gnp", None, selector="app == 'web'", ingress=[rule]))
    assert [explain(global_, s, WEB, 8080).allowed for s in (CLIENT, TOOL, OUTSIDE)] == [False, True, True]


def test_pass_skips_the_rest_of_its_tier() -> None:
    plan = plan_for(
        calico("first", "shop", selector="app == 'web'", order=1, ingress=[{"action": "Pass"}]),
        calico("second", "shop", selector="app == 'web'", order=2, ingress=[{"action": "Deny"}]),
    )
    assert decided_by(plan, CLIENT) == (
        "tier default: CalicoNetworkPolicy shop/first ingress rule 0 Pass → "
        "no tier decided: namespace profile Allow"
    )
