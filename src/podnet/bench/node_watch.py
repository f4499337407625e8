"""What one change costs on the wire and how fast it reaches the kernels (``nodes`` section).

- :class:`WatchTally`: one more watch stream on the datastore root, the same request every agent
  makes (:class:`~podnet.datastore.sync.PrefixSync` over ``<root>``), counting the bytes its socket
  receives (HTTP chunks of the etcd JSON gateway: per event the key and value in base64, create and
  mod revision, version; per response a header) and the events, by kind of key. Each agent's
  stream carries the same bytes, so etcd sends (agents + other watchers) x that per change.
- :func:`wait_routes`: one thread per lab node polls its namespace's main table (netlink dump)
  until a route to ``dst`` is there: the kernel is the fence, not a sleep.
- :func:`applied_times`: when each node's policy status (``<root>status/policy/<node>``) shows a
  revision applied without error: a full sync programs routes, VXLAN and BIRD before policy, so
  it bounds every kind of change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from podnet.calc.policy_status import PolicyReport
from podnet.datastore.etcd import EtcdDatastore, EtcdWatch
from podnet.datastore.keys import KeyLayout


class CountingWatch(EtcdWatch):
    """An :class:`EtcdWatch` that counts every byte its socket receives."""

    def __init__(self, store: EtcdDatastore, prefix: str, start_revision: int) -> None:
        self.received = 0
        super().__init__(store, prefix, start_revision)

    def _recv(self) -> bytes:
        data = super()._recv()
        self.received += len(data)
        return data


def key_kind(layout: KeyLayout, key: str) -> str:
    """``pods``, ``nodes``, ``ipam/blocks``, ``status/policy``, ...: what a watched key is."""
    rest = key.removeprefix(layout.root)
    if rest.startswith("resources/"):
        return rest.split("/")[1]
    return "/".join(rest.split("/")[:2])


@dataclass
class Seen:
    revision: int
    kind: str
    value_bytes: int
    received: int  # the stream's byte count once this event was decoded


@dataclass
class WatchTally:
    store: EtcdDatastore
    layout: KeyLayout
    events: list[Seen] = field(default_factory=list)
    error: str | None = None

    def start(self, revision: int) -> None:
        self.watch = CountingWatch(self.store, self.layout.root, revision)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._follow, name="nodes-watch-tally", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            for event in self.watch:
                with self.lock:
                    self.events.append(
                        Seen(
                            event.revision,
                            key_kind(self.layout, event.key),
                            len(event.value or b""),
                            self.watch.received,
                        )
                    )
        except Exception as exc:  # closed by stop(), or the stream broke: reported with the figures
            self.error = f"{type(exc).__name__}: {exc}"

    def mark(self) -> tuple[int, int]:
        """(bytes received so far, events so far): the start of one change's window."""
        with self.lock:
            return self.watch.received, len(self.events)

    def window(self, mark: tuple[int, int], last_revision: int, timeout: float = 10.0) -> dict:
        """Bytes and events from ``mark`` until the stream has delivered ``last_revision``."""
        started = time.perf_counter()
        while True:
            with self.lock:
                events = self.events[mark[1] :]
                if events and events[-1].revision >= last_revision:
                    break
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the watch did not deliver revision {last_revision} in {timeout:g}s")
            time.sleep(0.01)
        kinds: dict[str, dict[str, int]] = {}
        for e in events:
            k = kinds.setdefault(e.kind, {"events": 0, "value_bytes": 0})
            k["events"] += 1
            k["value_bytes"] += e.value_bytes
        return {"bytes": events[-1].received - mark[0], "events": len(events), "by_kind": kinds}

    def stop(self) -> None:
        self.watch.close()
        self.thread.join(timeout=5)


def applied_times(
    store: EtcdDatastore,
    layout: KeyLayout,
    nodes: Sequence[str],
    revision: int,
    started: float,
    timeout: float,
) -> tuple[dict[str, float], int]:
    """Seconds from ``started`` until each node's policy status applied ``revision``, and the
    highest mod revision of those status keys (the agents' last writes of this change)."""
    waiting, out, last = set(nodes), {}, 0
    while waiting:
        for node in sorted(waiting):
            kv = store.get(layout.policy_status(node))
            report = PolicyReport.from_json(kv.value) if kv else None
            if report and report.error is None and report.applied_revision >= revision:
                out[node] = round(time.perf_counter() - started, 3)
                last = max(last, kv.mod_revision)
                waiting.discard(node)
        if not waiting:
            break
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"agents {sorted(waiting)} did not apply revision {revision} in {timeout:g}s")
        time.sleep(0.02)
    return out, last


def wait_routes(netns: dict[str, str], dst: str, started: float, timeout: float) -> dict[str, float]:
    """Seconds from ``started`` until each node's main table (``netns``: node -> namespace) has a
    route to ``dst``; polled every 2 ms over netlink, one thread per node."""
    from podnet.dataplane.netlink import Netlink

    out: dict[str, float] = {}
    errors: dict[str, str] = {}

    def poll(node: str, ns: str) -> None:
        try:
            with Netlink.open(ns) as nl:
                while time.perf_counter() - started < timeout:
                    if any(r.dst == dst for r in nl.routes()):
                        out[node] = round(time.perf_counter() - started, 4)
                        return
                    time.sleep(0.002)
            errors[node] = f"no route to {dst} after {timeout:g}s"
        except Exception as exc:
            errors[node] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=poll, args=item, daemon=True) for item in sorted(netns.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise TimeoutError("; ".join(f"{n}: {e}" for n, e in sorted(errors.items())))
    return dict(sorted(out.items()))


def kernel_counts(netns: str, pool: str, device: str = "vxlan.calico") -> dict[str, int]:
    """Routes into ``pool`` (unicast) and permanent FDB entries on ``device`` in one namespace."""
    import ipaddress

    from podnet.dataplane.netlink import Netlink

    net = ipaddress.IPv4Network(pool)
    with Netlink.open(netns) as nl:
        routes = [
            r
            for r in nl.routes()
            if r.kind == "unicast" and r.dst != "0.0.0.0/0" and ipaddress.IPv4Network(r.dst).subnet_of(net)
        ]
        fdb = nl.fdbs(device) if nl.link_find(device) else []
    return {"routes": len(routes), "fdb": len([e for e in fdb if e.lladdr != "00:00:00:00:00:00"])}
