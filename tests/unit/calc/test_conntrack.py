"""What may skip conntrack (calc.conntrack): the set, and the rule's decision flow by flow."""

from __future__ import annotations

import ipaddress
import random

from podnet.calc.conntrack import NotrackPlan, forward_policy_here, notrack_plan, pools_minus
from podnet.calc.policy import EndpointPolicy, EndpointTier, PolicyPlan
from podnet.model import parse_resource

POOLS = ["10.244.0.0/16", "fd00:244::/48", "10.246.0.0/17", "10.246.128.0/17"]
TIER = (EndpointTier("default", ("np/p",), "Deny"),)


def plan(*endpoints: EndpointPolicy) -> PolicyPlan:
    return PolicyPlan({}, {ep.key: ep for ep in endpoints}, {})


def inside(nt: NotrackPlan, address: str) -> bool:
    return any(ipaddress.ip_address(address) in ipaddress.ip_network(c) for c in nt.pods)


def untracked(nt: NotrackPlan, src: str, dst: str) -> bool:
    """The prerouting rule (dataplane.policy.NOTRACK_RULE) on one packet."""
    return inside(nt, src) and inside(nt, dst)


def test_no_pool_nothing_untracked():
    assert notrack_plan(plan(), [], {}) == NotrackPlan()
    assert notrack_plan(plan(), ["fd00::/64"], {}) == NotrackPlan()  # IPv6 stays tracked


def test_pools_collapsed_ipv4_only():
    assert notrack_plan(plan(), POOLS, {}).pods == ("10.244.0.0/16", "10.246.0.0/16")


def test_pools_minus_is_exact_disjoint_and_minimal():
    pool = ipaddress.ip_network("10.244.0.0/22")
    rng = random.Random(7)
    for _ in range(50):
        out = [*rng.sample(list(pool), rng.randint(0, 12)), ipaddress.ip_address("10.9.9.9")]
        nets = pools_minus([pool], out)  # type: ignore[list-item]
        covered = {a for n in nets for a in n}
        assert covered == set(pool) - set(out)
        assert sum(n.num_addresses for n in nets) == len(covered)  # disjoint
        assert list(ipaddress.collapse_addresses(nets)) == nets  # nothing left to merge
    assert pools_minus([pool], [pool.network_address, pool.broadcast_address]) == [
        ipaddress.ip_network("10.244.0.1/32"),
        *ipaddress.summarize_address_range(
            ipaddress.ip_address("10.244.0.2"), ipaddress.ip_address("10.244.3.254")
        ),
    ]


def test_isolated_endpoints_backends_nodes_and_control_hosts_stay_tracked():
    endpoints = (
        EndpointPolicy("ns/in", ("10.244.1.5", "fd00:244::5"), ingress=TIER),
        EndpointPolicy("ns/eg", ("10.244.1.6",), egress=TIER),
        EndpointPolicy("ns/open", ("10.244.1.7",)),
    )
    backends = {
        "svc/web": (("10.244.2.9", "TCP", 8080),),
        "svc/host": (("10.77.0.12", "TCP", 10250),),  # host network: outside the pools anyway
        "svc/v6": (("fd00:244::9", "TCP", 80),),
    }
    also = ["10.77.0.11", None, "10.244.1.1", "10.246.0.1", "not-an-ip"]  # underlay, VTEP, router, ...
    nt = notrack_plan(plan(*endpoints), POOLS, backends, also)
    assert nt.tracked == ("10.244.1.1", "10.244.1.5", "10.244.1.6", "10.244.2.9", "10.246.0.1")
    assert not any(inside(nt, a) for a in nt.tracked)
    assert inside(nt, "10.244.1.7") and inside(nt, "10.246.200.1")
    assert notrack_plan(plan(), POOLS, [("10.244.2.9", "TCP", 8080)]).tracked == ("10.244.2.9",)


def test_each_flow_gets_one_decision_for_both_directions():
    a, b, iso, backend, vip, outside = (
        "10.244.1.5",
        "10.244.2.6",
        "10.244.1.7",
        "10.244.2.9",
        "10.96.0.10",
        "1.1.1.1",
    )
    nt = notrack_plan(
        plan(EndpointPolicy("ns/iso", (iso,), ingress=TIER)), POOLS, {"svc/web": ((backend, "TCP", 8080),)}
    )
    flows = {  # (src, dst) of the request -> expected untracked
        (a, b): True,  # nobody isolated here, no Service: no entry
        (a, iso): False,  # the isolated pod's replies need ct state established
        (iso, b): False,
        (a, vip): False,  # DNAT (a ClusterIP is outside the pools)
        (a, backend): False,  # after DNAT on another node: the backend's node tracks both ways
        (a, outside): False,  # natOutgoing
    }
    for (src, dst), expected in flows.items():
        assert untracked(nt, src, dst) is expected, (src, dst)
        assert untracked(nt, dst, src) is expected, ("reply", src, dst)
    assert not untracked(nt, backend, a)  # the backend's reply to a ClusterIP client: un-NATed


def _hep(node: str) -> object:
    meta = {"name": f"{node}-eth0", "labels": {"role": "edge"}}
    spec = {"node": node, "interfaceName": "eth0"}
    return parse_resource(
        {"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint", "metadata": meta, "spec": spec}
    )


def _gnp(forward: bool) -> object:
    spec = {"selector": "role == 'edge'", "applyOnForward": forward, "ingress": [{"action": "Allow"}]}
    meta = {"name": "edge"}
    return parse_resource(
        {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": meta, "spec": spec}
    )


def test_forward_host_policy_keeps_everything_tracked():
    heps, forward, host_only = [_hep("node-1")], [_gnp(True)], [_gnp(False)]
    assert forward_policy_here("node-1", heps, forward)
    assert not forward_policy_here("node-2", heps, forward)  # no host endpoint there
    assert not forward_policy_here("node-1", heps, host_only)  # host traffic only: never untracked
    assert not forward_policy_here("node-1", [], forward)
    assert notrack_plan(plan(), POOLS, {}, forward_policy=True) == NotrackPlan()
    assert notrack_plan(plan(), POOLS, {}).pods  # the control: the same plan untracks without it
