"""The kernel watch on a namespace of the test's own (no lab): it reports changes of each kind
made on purpose (routes of podnet's protocol, permanent neighbours, static FDB entries, podnet's
nft tables) and not its own marker changes; a monitor killed or stopped during the watch fails it,
named; nothing of the watch is left behind."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest

from podnet.lab.kernel_watch import MARKER_DEVICE, MONITORS, KernelWatch
from podnet.lab.netns import create_netns, delete_netns

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"pnt{secrets.token_hex(2)}-kwatch"
    create_netns(name)
    try:
        sh(name, "ip link set lo up", "ip link add pod0 type veth peer name pod1")
        yield name
    finally:
        delete_netns(name)


def sh(ns: str, *commands: str) -> None:
    for command in commands:
        subprocess.run(["ip", "netns", "exec", ns, *command.split()], check=True, capture_output=True)


def podnet_changes(ns: str) -> None:
    """One change of each kind podnet's state has, made and undone."""
    sh(
        ns,
        "ip route add 10.244.9.0/26 dev lo proto 112",
        "ip route del 10.244.9.0/26 dev lo proto 112",
        "ip neigh add 10.244.9.1 lladdr 66:1b:28:6c:8a:11 dev pod0 nud permanent",
        "ip neigh del 10.244.9.1 dev pod0",
        "bridge fdb add 66:1b:28:6c:8a:12 dev pod0 permanent",
        "bridge fdb del 66:1b:28:6c:8a:12 dev pod0 permanent",
        "nft add table inet podnet_policy",
        "nft delete table inet podnet_policy",
    )


def leftovers(ns: str) -> str:
    links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "-n", ns, "route", "show", "table", "all"], capture_output=True, text=True)
    return (
        "".join(line for line in links.splitlines() if MARKER_DEVICE in line)
        + routes.stdout.count("198.18.") * "marker route"
    )


def test_every_kind_of_change_is_reported_and_markers_are_not(ns: str) -> None:
    watch = KernelWatch([ns]).start()
    podnet_changes(ns)
    seen = watch.stop()
    assert seen.failures == [], seen
    events = seen.events[ns]
    kinds = {line.split(":")[0] for line in events}
    assert kinds == set(MONITORS), events
    assert any("10.244.9.0/26" in e and e.startswith("route: Deleted") for e in events)
    assert any("10.244.9.1" in e and "PERMANENT" in e for e in events)
    assert any(e.startswith("fdb: 66:1b:28:6c:8a:12") for e in events)
    assert "nft: delete table inet podnet_policy" in events
    assert not any("198.18." in e or MARKER_DEVICE in e or "kwatch" in e for e in events)
    assert seen.monitors == 4 and seen.ready_seconds < 5 and seen.closing_seconds < 5
    assert leftovers(ns) == ""


def test_a_quiet_namespace_shows_no_change(ns: str) -> None:
    seen = KernelWatch([ns]).start().stop()
    assert seen.failures == [] and seen.events == {ns: []}


@pytest.mark.parametrize("kind", list(MONITORS))
def test_a_killed_monitor_fails_the_watch_named(ns: str, kind: str) -> None:
    watch = KernelWatch([ns]).start()
    victim = next(m for m in watch.monitors if m.kind == kind)
    os.kill(victim.pid, signal.SIGKILL)
    seen = watch.stop()
    command = " ".join(MONITORS[kind])
    assert seen.failures == [f"`{command}` in {ns} (pid {victim.pid}) died (killed by SIGKILL)"]
    assert leftovers(ns) == ""


def test_a_deaf_monitor_fails_the_watch(ns: str) -> None:
    """A stopped monitor is alive but reads nothing: the closing control finds it out."""
    watch = KernelWatch([ns], timeout=1.0).start()
    victim = next(m for m in watch.monitors if m.kind == "neigh")
    os.kill(victim.pid, signal.SIGSTOP)
    seen = watch.stop()
    assert len(seen.failures) == 1, seen.failures
    assert seen.failures[0].startswith(
        f"`ip monitor neigh` in {ns} (pid {victim.pid}) is deaf: a neigh change"
    )
    assert victim.proc.returncode is not None  # stopped and continued, then terminated


def test_a_monitor_that_cannot_start_fails_the_start(ns: str, monkeypatch) -> None:
    monkeypatch.setitem(MONITORS, "fdb", ["bridge", "monitor", "no-such-object"])
    with pytest.raises(Exception, match="kernel monitor\\(s\\) not ready: `bridge monitor no-such-object`"):
        KernelWatch([ns], timeout=1.0).start()
    assert leftovers(ns) == ""
