"""Route normalisation and the pure route diff (no kernel, no root)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.dataplane.netlink import KernelRoute
from podnet.dataplane.routes import Route, RoutePlan, plan_routes, route_from_kernel
from podnet.errors import ValidationError


def test_route_is_normalised():
    assert Route("10.244.1.5", dev="cali1") == Route("10.244.1.5/32", dev="cali1", scope="link")
    assert Route("default", gateway="10.0.0.1").dst == "0.0.0.0/0"
    assert Route("10.0.0.0/24", gateway="10.0.0.1").scope == "global"
    assert Route("10.0.0.0/24", dev="eth0").scope == "link"
    assert Route("10.0.0.0/24", kind="blackhole").scope == "global"
    assert Route("fd00::/64", gateway="fd00::0001", dev="eth0").gateway == "fd00::1"
    assert str(Route("10.0.0.0/24", gateway="10.0.0.1", dev="eth0", onlink=True)) == (
        "10.0.0.0/24 via 10.0.0.1 dev eth0 onlink"
    )
    assert str(Route("10.9.0.0/16", kind="blackhole")) == "blackhole 10.9.0.0/16"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dst": "10.0.0.1/24", "dev": "x"}, "dst"),  # host bits set
        ({"dst": "nonsense", "dev": "x"}, "dst"),
        ({"dst": "10.0.0.0/24"}, "dev"),  # unicast without gateway or dev
        ({"dst": "10.0.0.0/24", "kind": "blackhole", "dev": "x"}, "kind"),
        ({"dst": "10.0.0.0/24", "kind": "multicast", "dev": "x"}, "kind"),
        ({"dst": "10.0.0.0/24", "gateway": "10.0.0.1", "onlink": True}, "onlink"),
        ({"dst": "10.0.0.0/24", "gateway": "fd00::1", "dev": "x"}, "gateway"),
        ({"dst": "10.0.0.0/24", "dev": "x", "scope": "site"}, "scope"),
    ],
)
def test_invalid_routes_name_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        Route(**kwargs)
    assert field in [path for path, _ in info.value.problems]


def test_plan_adds_replaces_deletes():
    a = Route("10.1.0.0/16", gateway="10.0.0.1", dev="eth0")
    b = Route("10.2.0.0/16", gateway="10.0.0.2", dev="eth0")
    b2 = Route("10.2.0.0/16", gateway="10.0.0.3", dev="eth0")
    c = Route("10.3.0.0/16", kind="blackhole")
    plan = plan_routes([a, b2], [b, c])
    assert plan == RoutePlan(add=(a,), replace=((b, b2),), delete=(c,), unchanged=0)
    assert plan.operations == 3
    assert plan_routes([a, b], [b, a]) == RoutePlan(unchanged=2)


def test_device_routes_are_written_before_routes_via_gateways_and_deleted_after():
    link = Route("10.0.0.9/32", dev="eth0")
    via = Route("10.244.0.0/16", gateway="10.0.0.9", dev="eth0")
    hole = Route("10.245.0.0/16", kind="blackhole")
    assert plan_routes([via, link, hole], []).add == (hole, link, via)
    assert plan_routes([], [link, hole, via]).delete == (via, link, hole)


def test_plan_rejects_two_desired_routes_for_one_destination():
    with pytest.raises(ValidationError, match=r"two desired routes for 10\.1\.0\.0/16"):
        plan_routes(
            [Route("10.1.0.0/16", dev="eth0"), Route("10.1.0.0/16", dev="eth1")],
            [],
        )
    assert plan_routes([Route("10.1.0.0/16", dev="eth0")] * 2, []).add == (Route("10.1.0.0/16", dev="eth0"),)


def test_plan_deletes_duplicate_current_routes():
    r = Route("10.1.0.0/16", dev="eth0")
    plan = plan_routes([r], [r, Route("10.1.0.0/16", dev="eth1")])
    assert (plan.add, plan.replace, plan.delete, plan.unchanged) == (
        (),
        (),
        (Route("10.1.0.0/16", dev="eth1"),),
        1,
    )


routes = st.builds(
    Route,
    dst=st.sampled_from([f"10.{i}.0.0/16" for i in range(8)] + ["fd00::/64", "0.0.0.0/0"]),
    gateway=st.none(),
    dev=st.sampled_from(["eth0", "eth1", "cali1"]),
    scope=st.sampled_from([None, "link", "global"]),
)
route_sets = st.lists(routes, max_size=8, unique_by=lambda r: r.dst)


@given(route_sets, route_sets)
def test_applying_the_plan_yields_the_desired_state(desired, current):
    plan = plan_routes(desired, current)
    state = {r.dst: r for r in current}
    for r in plan.delete:
        del state[r.dst]
    for old, new in plan.replace:
        assert state[old.dst] == old
        state[new.dst] = new
    for r in plan.add:
        assert r.dst not in state
        state[r.dst] = r
    assert state == {r.dst: r for r in desired}
    touched = [r.dst for r in plan.add] + [n.dst for _, n in plan.replace] + [r.dst for r in plan.delete]
    assert len(touched) == len(set(touched))  # each destination at most once
    assert plan.unchanged + len(plan.add) + len(plan.replace) == len(desired)


@given(route_sets)
def test_a_second_plan_is_empty(desired):
    assert plan_routes(desired, list(reversed(desired))).operations == 0


def kr(**kw):
    base = dict(
        dst="10.1.0.0/16",
        gateway=None,
        oif=2,
        table=254,
        protocol=112,
        scope="link",
        kind="unicast",
        onlink=False,
        metric=0,
        prefsrc=None,
    )
    return KernelRoute(**{**base, **kw})


def test_route_from_kernel():
    names = {2: "eth0"}
    assert route_from_kernel(kr(), names) == Route("10.1.0.0/16", dev="eth0")
    assert route_from_kernel(kr(kind="blackhole", oif=None, scope="global"), names) == Route(
        "10.1.0.0/16", kind="blackhole"
    )
    onlink = kr(gateway="10.0.0.1", scope="global", onlink=True)
    assert route_from_kernel(onlink, names) == Route(
        "10.1.0.0/16", gateway="10.0.0.1", dev="eth0", onlink=True
    )
    assert route_from_kernel(kr(oif=9), names).dev == "if9"  # unknown index: never equal to a desired route
