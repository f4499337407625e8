"""What may skip conntrack (calc.conntrack): the inputs, and the rule's decision flow by flow."""

from __future__ import annotations

import ipaddress

from podnet.calc.conntrack import NotrackPlan, notrack_plan
from podnet.calc.policy import EndpointPolicy, EndpointTier, PolicyPlan

POOLS = ["10.244.0.0/16", "fd00:244::/48", "10.246.0.0/17", "10.246.128.0/17"]
TIER = (EndpointTier("default", ("np/p",), "Deny"),)


def plan(**endpoints: EndpointPolicy) -> PolicyPlan:
    return PolicyPlan({}, {key.replace("_", "/"): ep for key, ep in endpoints.items()}, {})


def untracked(nt: NotrackPlan, src: str, dst: str, proto: str = "TCP", sport: int = 40000, dport: int = 80):
    """The prerouting rule (dataplane.policy.NOTRACK_RULE) evaluated on one packet."""

    def pooled(a: str) -> bool:
        return any(ipaddress.ip_address(a) in ipaddress.ip_network(p) for p in nt.pools)

    backend = set(nt.backends)
    return (
        pooled(src)
        and pooled(dst)
        and src not in nt.keep
        and dst not in nt.keep
        and (src, proto, sport) not in backend
        and (dst, proto, dport) not in backend
    )


def test_no_pool_nothing_untracked():
    assert notrack_plan(plan(), [], {}) == NotrackPlan()
    assert notrack_plan(plan(), ["fd00::/64"], {}) == NotrackPlan()  # IPv6 stays tracked


def test_pools_collapsed_ipv4_only():
    assert notrack_plan(plan(), POOLS, {}).pools == ("10.244.0.0/16", "10.246.0.0/16")


def test_isolated_local_endpoints_and_pool_node_addresses_stay_tracked():
    endpoints = {
        "ns_in": EndpointPolicy("ns/in", ("10.244.1.5", "fd00:244::5"), ingress=TIER),
        "ns_eg": EndpointPolicy("ns/eg", ("10.244.1.6",), egress=TIER),
        "ns_open": EndpointPolicy("ns/open", ("10.244.1.7",)),
    }
    nodes = ["10.77.0.11", None, "10.244.1.1", "10.244.2.1"]  # underlay IP, none, VTEP/router IPs
    nt = notrack_plan(plan(**endpoints), POOLS, {}, nodes)
    assert nt.keep == ("10.244.1.1", "10.244.1.5", "10.244.1.6", "10.244.2.1")


def test_backends_inside_pools_only_with_port_protocols():
    backends = {
        "svc/web": (("10.244.2.9", "TCP", 8080), ("10.244.1.9", "UDP", 53)),
        "svc/host": (("10.77.0.12", "TCP", 10250),),  # host network: outside the pools, tracked anyway
        "svc/v6": (("fd00:244::9", "TCP", 80),),
        "svc/none": (),
    }
    nt = notrack_plan(plan(), POOLS, backends)
    assert nt.backends == (("10.244.1.9", "UDP", 53), ("10.244.2.9", "TCP", 8080))
    assert notrack_plan(plan(), POOLS, [("10.244.2.9", "6", 8080)]).backends == (("10.244.2.9", "TCP", 8080),)


def test_each_flow_gets_one_decision_for_both_directions():
    a, b, iso, backend, vip, outside = (
        "10.244.1.5",
        "10.244.2.6",
        "10.244.1.7",
        "10.244.2.9",
        "10.96.0.10",
        "1.1.1.1",
    )
    endpoints = {"ns_iso": EndpointPolicy("ns/iso", (iso,), ingress=TIER)}
    nt = notrack_plan(plan(**endpoints), POOLS, {"svc/web": ((backend, "TCP", 8080),)})
    flows = {  # (src, dst, sport, dport) of the request -> expected untracked
        (a, b, 40000, 80): True,  # nobody isolated here: no entry
        (a, iso, 40000, 80): False,  # the isolated pod's replies need ct state established
        (iso, b, 40000, 80): False,
        (a, vip, 40000, 80): False,  # DNAT (a ClusterIP is outside the pools)
        (a, backend, 40000, 8080): False,  # after DNAT on another node: the backend's node tracks
        (a, outside, 40000, 443): False,  # natOutgoing
        (a, backend, 40000, 9999): True,  # another port of that pod: no Service
    }
    for (src, dst, sport, dport), expected in flows.items():
        assert untracked(nt, src, dst, "TCP", sport, dport) is expected, (src, dst, dport)
        if dst != vip:  # the reply of a DNATed flow comes from the backend, checked above
            assert untracked(nt, dst, src, "TCP", dport, sport) is expected, ("reply", src, dst, dport)
    # the backend's reply to a ClusterIP client (un-NATed on the client's node) is tracked
    assert not untracked(nt, backend, a, "TCP", 8080, 40000)
    assert untracked(nt, a, b, "ICMP", 0, 0)  # ICMP between open pods too
