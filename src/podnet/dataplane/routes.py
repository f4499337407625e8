"""Routes owned by podnet: desired state in, the smallest set of kernel writes out.

podnet marks every route it writes with its own routing protocol number, ``PODNET_RTPROTO``
(112, ``0x70``, "p"). The number is free in iproute2's ``rt_protos`` (0-18, 42, 99, 186-192), in the
kernel's ``RTPROT_*`` list, and among the daemons that share nodes with pod networks: Calico Felix
writes 80, BIRD 12, FRR 186-198 (0xbe = 190 is FRR's RIPng), systemd-networkd/dhcp 3/4/16. To see the
name in ``ip route`` add ``112 podnet`` to ``/etc/iproute2/rt_protos.d/podnet.conf``.

The protocol number is what makes ownership exact: ``RouteManager.apply`` reads only the kernel's
routes of that protocol (in one table), so it

- adds desired routes that are missing (``NLM_F_EXCL``: a route with the same key owned by anyone
  else is reported as a conflict, never overwritten),
- replaces its own routes whose gateway, device, type, scope or onlink flag changed,
- deletes its own routes that are no longer desired,
- never touches a route of another protocol,

and a second ``apply`` of the same desired set (e.g. after an agent restart) performs zero writes.

``plan_routes`` is the pure half (no I/O, unit tested); ``RouteManager`` the kernel half. Per-pod
/32 routes written by ``endpoint.wire_endpoint`` carry the same protocol, and ``endpoint_routes``
(in ``endpoint.py``) is the one definition of them, so the agent includes exactly those in its
desired set and a resync neither removes nor rewrites them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from podnet.dataplane.errors import KernelError, KernelExists, KernelNotFound, kernel_error
from podnet.dataplane.netlink import RT_TABLE_MAIN, KernelRoute, Netlink
from podnet.errors import ValidationError

log = logging.getLogger(__name__)

PODNET_RTPROTO = 112
ROUTE_KINDS = ("unicast", "blackhole")
ROUTE_SCOPES = ("global", "link", "host")
DEFAULT_METRIC = {socket.AF_INET: 0, socket.AF_INET6: 1024}  # what the kernel gives metric-less routes


@dataclass(frozen=True)
class Route:
    """One route. Normalised on creation, so equal routes compare equal.

    ``dst`` is a CIDR (``10.244.1.5`` means ``/32``); ``scope`` defaults like ip-route(8): ``link``
    for a unicast route with a device and no gateway, ``global`` otherwise.
    """

    dst: str
    gateway: str | None = None
    dev: str | None = None
    kind: str = "unicast"
    scope: str | None = None
    onlink: bool = False

    def __post_init__(self) -> None:
        problems: list[tuple[str, str]] = []
        try:
            net = ipaddress.ip_network("0.0.0.0/0" if self.dst == "default" else self.dst, strict=True)
            object.__setattr__(self, "dst", str(net))
        except ValueError as exc:
            raise ValidationError([("dst", str(exc))], subject="route") from None
        if self.gateway is not None:
            try:
                gw = ipaddress.ip_address(self.gateway)
                object.__setattr__(self, "gateway", str(gw))
                if gw.version != net.version:
                    problems.append(("gateway", f"{gw} is not of the family of {net}"))
            except ValueError as exc:
                problems.append(("gateway", str(exc)))
        if self.kind not in ROUTE_KINDS:
            problems.append(("kind", f"must be one of {', '.join(ROUTE_KINDS)}"))
        elif self.kind == "blackhole":
            if self.gateway or self.dev or self.onlink:
                problems.append(("kind", "a blackhole route has no gateway, device or onlink"))
        elif self.gateway is None and self.dev is None:
            problems.append(("dev", "a unicast route needs a gateway or a device"))
        if self.onlink and (self.gateway is None or self.dev is None):
            problems.append(("onlink", "onlink needs both gateway and dev"))
        scope = self.scope
        if scope is None:
            scope = "link" if self.kind == "unicast" and self.gateway is None else "global"
        elif scope == "universe":
            scope = "global"
        if scope not in ROUTE_SCOPES:
            problems.append(("scope", f"must be one of {', '.join(ROUTE_SCOPES)}"))
        object.__setattr__(self, "scope", scope)
        if problems:
            raise ValidationError(problems, subject=f"route {self.dst}")

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.dst else socket.AF_INET

    def __str__(self) -> str:
        parts = [self.dst if self.kind == "unicast" else f"{self.kind} {self.dst}"]
        if self.gateway:
            parts.append(f"via {self.gateway}")
        if self.dev:
            parts.append(f"dev {self.dev}")
        if self.scope != "global":
            parts.append(f"scope {self.scope}")
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts)


@dataclass(frozen=True)
class RoutePlan:
    """What ``apply`` must do: ``replace`` holds ``(old, new)`` pairs."""

    add: tuple[Route, ...] = ()
    replace: tuple[tuple[Route, Route], ...] = ()
    delete: tuple[Route, ...] = ()
    unchanged: int = 0

    @property
    def operations(self) -> int:
        return len(self.add) + len(self.replace) + len(self.delete)


@dataclass
class RouteDiff:
    """What ``apply`` did. ``operations`` counts kernel writes that succeeded."""

    added: list[Route] = field(default_factory=list)
    replaced: list[Route] = field(default_factory=list)
    deleted: list[Route] = field(default_factory=list)
    unchanged: int = 0
    failed: list[tuple[Route, KernelError]] = field(default_factory=list)
    settling: list[Route] = field(default_factory=list)  # left alone: their owner was changing them

    @property
    def operations(self) -> int:
        return len(self.added) + len(self.replaced) + len(self.deleted)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        text = (
            f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged"
        )
        text += f", {len(self.settling)} left to their CNI request" if self.settling else ""
        return text + (f", {len(self.failed)} failed" if self.failed else "")


def plan_routes(desired: Iterable[Route], current: Iterable[Route]) -> RoutePlan:
    """Pure diff keyed by destination: the kernel key of a podnet route (one table, default metric).

    Two desired routes for one destination are an error; two current ones (cannot happen for
    routes podnet wrote) keep the first and delete the rest. Order matters to the kernel, which
    checks that a gateway is reachable when a route via it is written: adds and replaces put routes
    without a gateway (device and blackhole routes) first, deletes put them last.
    """
    want: dict[str, Route] = {}
    for route in desired:
        if route.dst in want and want[route.dst] != route:
            raise ValidationError(
                [("dst", f"two desired routes for {route.dst}: {want[route.dst]} and {route}")],
                subject="routes",
            )
        want[route.dst] = route
    have: dict[str, Route] = {}
    delete: list[Route] = []
    for route in current:
        if route.dst in have or route.dst not in want:
            delete.append(route)
        else:
            have[route.dst] = route
    add = [r for dst, r in want.items() if dst not in have]
    replace = [(have[dst], r) for dst, r in want.items() if dst in have and have[dst] != r]
    unchanged = sum(1 for dst, r in want.items() if have.get(dst) == r)
    return RoutePlan(
        add=tuple(sorted(add, key=_write_order)),
        replace=tuple(sorted(replace, key=lambda pair: _write_order(pair[1]))),
        delete=tuple(sorted(delete, key=_write_order, reverse=True)),
        unchanged=unchanged,
    )


def _write_order(route: Route) -> tuple[bool, int, int, str]:
    net = ipaddress.ip_network(route.dst)
    return (route.gateway is not None, net.version, net.prefixlen, route.dst)


def route_from_kernel(kr: KernelRoute, names: dict[int, str]) -> Route:
    """The ``Route`` a kernel route reads back as (device index -> name through ``names``)."""
    kind = kr.kind if kr.kind in ROUTE_KINDS else "unicast"
    if kind == "blackhole":
        return Route(dst=kr.dst, kind="blackhole", scope=kr.scope if kr.scope in ROUTE_SCOPES else None)
    dev = names.get(kr.oif) if kr.oif is not None else None
    if dev is None and kr.oif is not None:
        dev = f"if{kr.oif}"
    if dev is None and kr.gateway is None:  # e.g. a multipath route: cannot be one of ours as is
        dev = "?"
    return Route(
        dst=kr.dst,
        gateway=kr.gateway,
        dev=dev,
        kind=kind,
        scope=kr.scope if kr.scope in ROUTE_SCOPES else "global",
        onlink=kr.onlink and kr.gateway is not None and dev is not None,
    )


class RouteManager:
    """Keeps the routes of one protocol in one table of one netns equal to a desired set.

    Each call opens its own netlink handle (~0.1 ms; reads build a pyroute2 ``IPRoute``, ~0.4 ms),
    so a manager holds no kernel resources and may be used from any thread, one call at a time.
    All writes of an ``apply`` go out as one batch (128 requests per ``write(2)``).
    """

    def __init__(self, netns: str | None = None, protocol: int = PODNET_RTPROTO, table: int = RT_TABLE_MAIN):
        if not 0 < protocol < 256 or protocol in (1, 2):
            raise ValueError(f"route protocol {protocol} is reserved or out of range")
        self.netns = netns
        self.protocol = protocol
        self.table = table

    def _current(self, nl: Netlink, names: dict[int, str]) -> list[tuple[Route, KernelRoute]]:
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for kr in nl.routes(table=self.table, protocol=self.protocol, family=family):
                out.append((route_from_kernel(kr, names), kr))
        return out

    def current(self) -> list[Route]:
        """podnet's routes as the kernel has them now."""
        with Netlink.open(self.netns) as nl:
            names = {link.index: link.name for link in nl.links()}
            return [r for r, _ in self._current(nl, names)]

    def plan(self, desired: Iterable[Route]) -> RoutePlan:
        """What ``apply`` would do now (routes at a foreign metric included in ``delete``)."""
        with Netlink.open(self.netns) as nl:
            names = {link.index: link.name for link in nl.links()}
            plan, odd = self._plan(nl, names, list(desired))
            return RoutePlan(plan.add, plan.replace, plan.delete + tuple(r for r, _ in odd), plan.unchanged)

    def _plan(
        self, nl: Netlink, names: dict[int, str], desired: list[Route]
    ) -> tuple[RoutePlan, list[tuple[Route, int]]]:
        """The plan, and the routes of ours to delete at a metric other than the default.

        podnet writes the kernel's default metric only (0 for IPv4, 1024 for IPv6); a route of its
        protocol at another metric was written by someone else with podnet's number: deleted.
        """
        current = self._current(nl, names)
        normal = [r for r, kr in current if kr.metric == DEFAULT_METRIC[r.family]]
        odd = [(r, kr.metric) for r, kr in current if kr.metric != DEFAULT_METRIC[r.family]]
        return plan_routes(desired, normal), odd

    @staticmethod
    def _spare(
        plan: RoutePlan, odd: list[tuple[Route, int]], dsts: Collection[str], diff: RouteDiff
    ) -> tuple[RoutePlan, list[tuple[Route, int]]]:
        """``plan`` without any write to the destinations in ``dsts`` (recorded in ``diff``)."""
        hold = {str(ipaddress.ip_network(d, strict=False)) for d in dsts}
        if not hold:
            return plan, odd
        diff.settling = [r for r in (*plan.add, *(r for _, r in plan.replace), *plan.delete) if r.dst in hold]
        return RoutePlan(
            add=tuple(r for r in plan.add if r.dst not in hold),
            replace=tuple(pair for pair in plan.replace if pair[1].dst not in hold),
            delete=tuple(r for r in plan.delete if r.dst not in hold),
            unchanged=plan.unchanged,
        ), [(r, m) for r, m in odd if r.dst not in hold]

    def apply(
        self, desired: Iterable[Route], settling: Callable[[], Collection[str]] | None = None
    ) -> RouteDiff:
        """Make the kernel match ``desired`` in one netlink batch.

        Failures (a missing device, a route with the same key owned by another protocol) are
        collected in ``RouteDiff.failed`` and logged, not raised: the other routes still apply.

        ``settling`` names destinations another writer is changing while ``desired`` may be
        stale about them (the agent: pod routes a CNI ADD or DEL is wiring now, or has wired since
        ``desired`` was computed). It is called after the kernel is read, so a route written
        before the read is either in the answer or was already desired; those destinations are
        neither added, replaced nor deleted (``RouteDiff.settling``), and the next apply sees them.
        """
        diff = RouteDiff()
        with Netlink.open(self.netns) as nl:
            links = nl.links()
            plan, odd = self._plan(nl, {link.index: link.name for link in links}, list(desired))
            if settling is not None:
                plan, odd = self._spare(plan, odd, settling(), diff)
            index = {link.name: link.index for link in links}
            diff.unchanged = plan.unchanged
            batch = nl.batch()
            actions: list[tuple[Route, list[Route], str]] = []
            writes = [(r, diff.added, "add") for r in plan.add]
            writes += [(r, diff.replaced, "replace") for _, r in plan.replace]
            for route, done, command in writes:
                if route.dev is not None and route.dev not in index:
                    missing = kernel_error(f"{command} route {route}", errno.ENODEV, netns=nl.netns)
                    diff.failed.append((route, missing))
                    continue
                write = batch.route_add if command == "add" else batch.route_replace
                write(
                    route.dst,
                    gateway=route.gateway,
                    dev=None if route.dev is None else index[route.dev],
                    kind=route.kind,
                    scope=route.scope,
                    onlink=route.onlink,
                    table=self.table,
                    protocol=self.protocol,
                )
                actions.append((route, done, command))
            deletes = [(r, DEFAULT_METRIC[r.family]) for r in plan.delete] + odd
            for route, metric in deletes:
                batch.route_del(route.dst, table=self.table, protocol=self.protocol, metric=metric)
                actions.append((route, diff.deleted, "delete"))
            results = batch.commit(raise_first=False)
        for (route, done, command), error in zip(actions, results, strict=True):
            if error is None or (command == "delete" and isinstance(error, KernelNotFound)):
                done.append(route)
            elif command == "add" and isinstance(error, KernelExists):
                detail = f"a route for {route.dst} owned by another protocol exists and is left alone"
                diff.failed.append(
                    (route, KernelExists(error.op, error.errno, netns=error.netns, detail=detail))
                )
            else:
                diff.failed.append((route, error))
        if diff.operations or diff.failed or diff.settling:
            log.info("routes in %s: %s", self.netns or "own netns", diff)
        for route, exc in diff.failed:
            log.warning("route %s: %s", route, exc)
        return diff
