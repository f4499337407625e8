"""RouteManager against a real kernel: exact ownership by protocol number, idempotent resync."""

from __future__ import annotations

import os
import subprocess

import pytest

from podnet.dataplane.netlink import Netlink
from podnet.dataplane.routes import PODNET_RTPROTO, Route, RouteManager

pytestmark = pytest.mark.root


def kernel_routes(netns: str) -> str:
    """Every route of every table and family, as ``ip`` prints them: the state to compare."""
    name = os.path.basename(netns)
    return "".join(
        subprocess.run(
            ["ip", "-n", name, f"-{v}", "route", "show", "table", "all"], capture_output=True, text=True
        ).stdout
        for v in (4, 6)
    )


@pytest.fixture
def host(node):
    """The node netns with a second device and some routes podnet does not own."""
    with Netlink.open(node.netns) as nl:
        pair = nl.link_add_veth("side0", "side1", up=True)
        nl.link_set(pair.peer_index, up=True)
        nl.addr_add("side0", "192.168.7.1/24")
        nl.route_add("172.16.0.0/16", gateway="10.0.0.2")  # proto boot, like `ip route add`
        nl.route_add("172.17.0.0/16", gateway="10.0.0.2", protocol=80)  # Felix's
        nl.route_add("172.18.0.0/16", kind="blackhole", protocol=12)  # BIRD's
    return node


DESIRED = [
    Route("10.244.2.0/24", gateway="10.0.0.2", dev="eth0"),
    Route("10.244.3.0/24", gateway="10.0.0.3", dev="eth0", onlink=True),
    Route("10.244.1.0/24", kind="blackhole"),
    Route("10.244.1.5/32", dev="side0", scope="link"),
    Route("10.96.0.0/12", dev="side0"),
    Route("fd00:244:2::/64", gateway="fe80::1", dev="eth0"),
]


def test_apply_then_restart_changes_nothing(host):
    first = RouteManager(netns=host.netns).apply(DESIRED)
    assert first.ok, first.failed
    assert (len(first.added), first.operations, first.unchanged) == (len(DESIRED), len(DESIRED), 0)
    before = kernel_routes(host.netns)
    assert "10.244.3.0/24 via 10.0.0.3 dev eth0 proto 112 onlink" in before
    assert "blackhole 10.244.1.0/24 proto 112" in before

    # an agent restart: a new manager, the same desired set -> zero writes, identical kernel state
    again = RouteManager(netns=host.netns).apply(list(reversed(DESIRED)))
    assert (again.operations, again.unchanged, again.failed) == (0, len(DESIRED), [])
    assert kernel_routes(host.netns) == before
    assert set(RouteManager(netns=host.netns).current()) == set(DESIRED)


def test_changes_are_minimal_and_foreign_routes_untouched(host):
    manager = RouteManager(netns=host.netns)
    manager.apply(DESIRED)
    foreign = [line for line in kernel_routes(host.netns).splitlines() if "proto 112" not in line]

    changed = [
        Route("10.244.2.0/24", gateway="10.0.0.9", dev="eth0", onlink=True),  # gateway + onlink
        Route("10.244.3.0/24", gateway="10.0.0.3", dev="eth0", onlink=True),  # same
        Route("10.244.1.0/24", dev="side0"),  # blackhole -> unicast
        Route("10.244.4.0/24", kind="blackhole"),  # new
    ]
    diff = manager.apply(changed)
    assert diff.ok, diff.failed
    assert {str(r) for r in diff.replaced} == {
        "10.244.2.0/24 via 10.0.0.9 dev eth0 onlink",
        "10.244.1.0/24 dev side0 scope link",
    }
    assert [str(r) for r in diff.added] == ["blackhole 10.244.4.0/24"]
    assert {r.dst for r in diff.deleted} == {"10.244.1.5/32", "10.96.0.0/12", "fd00:244:2::/64"}
    assert diff.unchanged == 1
    assert set(manager.current()) == set(changed)
    now = kernel_routes(host.netns)
    assert [line for line in now.splitlines() if "proto 112" not in line] == foreign

    assert manager.apply([]).operations == len(changed)
    assert "proto 112" not in kernel_routes(host.netns)
    assert [line for line in kernel_routes(host.netns).splitlines()] == foreign


def test_foreign_route_with_the_same_key_is_a_conflict_not_overwritten(host):
    manager = RouteManager(netns=host.netns)
    diff = manager.apply(
        [Route("172.17.0.0/16", gateway="10.0.0.9", dev="eth0"), Route("10.244.9.0/24", dev="side0")]
    )
    assert [str(r) for r in diff.added] == ["10.244.9.0/24 dev side0 scope link"]
    [(route, error)] = diff.failed
    assert route.dst == "172.17.0.0/16" and "owned by another protocol" in str(error)
    assert "172.17.0.0/16 via 10.0.0.2 dev eth0 proto 80" in kernel_routes(host.netns)


def test_missing_device_fails_one_route_only(host):
    diff = RouteManager(netns=host.netns).apply(
        [Route("10.244.1.7/32", dev="cali-gone"), Route("10.244.1.8/32", dev="side0")]
    )
    assert [r.dst for r in diff.added] == ["10.244.1.8/32"]
    [(route, error)] = diff.failed
    assert route.dst == "10.244.1.7/32" and "cali-gone" in str(error)


def test_a_route_of_ours_at_another_metric_is_removed(host):
    with Netlink.open(host.netns) as nl:
        nl.route_add("10.244.5.0/24", dev="side0", protocol=PODNET_RTPROTO, metric=7)
    manager = RouteManager(netns=host.netns)
    diff = manager.apply([Route("10.244.5.0/24", dev="side0")])
    assert (len(diff.added), len(diff.deleted), diff.ok) == (1, 1, True)
    assert manager.apply([Route("10.244.5.0/24", dev="side0")]).operations == 0


def test_other_table(host):
    manager = RouteManager(netns=host.netns, table=1000)
    assert manager.apply([Route("0.0.0.0/0", gateway="10.0.0.2", dev="eth0")]).operations == 1
    assert "default via 10.0.0.2 dev eth0 table 1000 proto 112" in kernel_routes(host.netns)
    assert RouteManager(netns=host.netns).current() == []  # the main table has none of ours
    assert manager.apply([Route("default", gateway="10.0.0.2", dev="eth0")]).operations == 0


def test_settling_destinations_are_left_alone(host):
    """A CNI ADD wired 10.244.1.6 and a DEL unwired 10.244.1.7 after the desired set was computed:
    the stale set neither deletes the new pod's route nor re-adds the old one, and is read only
    after the kernel (the callback sees what the kernel showed)."""
    manager = RouteManager(netns=host.netns)
    manager.apply([Route("10.244.1.5/32", dev="side0"), Route("10.244.1.7/32", dev="side0")])
    with Netlink.open(host.netns) as nl:  # what the CNI service does meanwhile
        nl.route_del("10.244.1.7/32", protocol=PODNET_RTPROTO)
        nl.route_add("10.244.1.6/32", dev="side0", scope="link", protocol=PODNET_RTPROTO)
    stale = [
        Route("10.244.1.5/32", dev="side0"),
        Route("10.244.1.7/32", dev="side1"),
        Route("10.244.9.0/24", kind="blackhole"),
    ]
    diff = manager.apply(stale, settling=lambda: {"10.244.1.6", "10.244.1.7/32"})
    assert {r.dst for r in diff.settling} == {"10.244.1.6/32", "10.244.1.7/32"}
    assert [r.dst for r in diff.added] == ["10.244.9.0/24"] and not diff.deleted and diff.ok
    assert {r.dst for r in manager.current()} == {"10.244.1.5/32", "10.244.1.6/32", "10.244.9.0/24"}
    # without the callback the same stale set is applied whole: the next apply's view
    diff = manager.apply(stale)
    assert [r.dst for r in diff.deleted] == ["10.244.1.6/32"]
    assert [r.dst for r in diff.added] == ["10.244.1.7/32"]
