"""``podnet monitor --type drop|log|policy-verdict|l7 [--node N] [--follow]``: policy drops, like
``cilium monitor -t drop``, the packets Calico ``Log`` rules logged (``--type log``), or the Cilium
profile's policy verdicts of new connections (``--type policy-verdict``, like ``cilium monitor -t
policy-verdict``: the agents ask their tc programs for them while someone asks, a minute at a time),
or the HTTP requests the Cilium profile's L7 proxy handled (``--type l7``, like ``cilium monitor -t
l7``: ``... L7 http A -> B:80 ingress: PUT /api/v1 => 200 (1.2 ms) FORWARDED by <rule>``).

Each node's agent reads the drops its policy table logs (NFLOG) and keeps the last few thousand,
annotated with the pods and the policies (:mod:`podnet.agent.drops`); this command asks the agents
over their API sockets (verb ``DROPS``), every node of the lab or only ``--node``::

    17:20:01.123 node-1 DROP TCP np/far 10.244.3.4 -> np/api 10.244.1.2:8080 ingress: default deny of
    NetworkPolicy np/api-from-friends      (one line: time, node, protocol, source -> destination, reason)

Every drop names what decided it: the tier, policy and rule of a Deny rule, or the end-of-tier deny
and the policies whose selection brought it (:mod:`podnet.agent.drops`). ``--type log`` shows the
Log rules' entries instead (``LOG`` lines: the connection went on to the next rule).

Times are UTC. An address that is no pod's is shown alone. ``-o json`` prints the agent's record,
one JSON object per line. Without ``--follow`` it prints the drops buffered now (all nodes merged
by time) and exits; with ``--follow`` it prints those, then each new drop as it comes (one long
poll per node), until Ctrl-C. The lab: ``--lab-prefix`` or ``$PODNET_LAB_PREFIX`` (default ``pn-``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from podnet.errors import PodnetError

WAIT = 10.0  # seconds of one long poll (the agent caps it at 30)
RETRY = 1.0  # seconds between tries to reach an agent that went away while following
LIMIT = 1000
OLD_AGENT_HINT = "restart the lab with this podnet (its agent has no drop monitor)"
HINT = "podnet lab status shows the agents; --lab-prefix or $PODNET_LAB_PREFIX picks the lab"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        "--type",
        required=True,
        choices=["drop", "log", "policy-verdict", "l7"],
        help="the events to show: drop (policy drops), log (Calico Log rules), policy-verdict "
        "(Cilium profile: which rule allowed each new connection), l7 (each HTTP request the "
        "L7 proxy handled)",
    )
    parser.add_argument("--node", help="only this lab node (default: every node)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new drops until Ctrl-C")
    parser.add_argument("--lab-prefix", help="the lab's prefix (default: $PODNET_LAB_PREFIX or pn-)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


# ------------------------------------------------------------------------------------------ output


def _endpoint(pod: str | None, ip: str, port: int | None = None) -> str:
    address = f"{ip}:{port}" if port is not None else ip
    return f"{pod} {address}" if pod else address


def _clock(stamp: str) -> str:
    try:
        return dt.datetime.fromisoformat(stamp).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return stamp


def format_l7(record: dict[str, Any]) -> str:
    """One line: time (UTC), node, L7 http, source -> destination:port, direction, the request,
    its status and latency, the verdict and the rule."""
    src = _endpoint(record.get("srcPod"), record.get("src", "?"), record.get("sport"))
    dst = _endpoint(record.get("dstPod"), record.get("dst", "?"), record.get("dport"))
    if record.get("protocol") == "dns":  # a lookup the DNS proxy handled
        answer = " ".join([record.get("rcode", "?"), *record.get("addresses", [])])
        return (
            f"{_clock(record.get('time', ''))} {record.get('node', '?')} L7 dns {src} -> {dst} "
            f"{record.get('direction', 'egress')}: {record.get('qtype', '?')} {record.get('query', '?')} "
            f"=> {answer} ({record.get('latencyMs', 0):g} ms) "
            f"{record.get('verdict', '?')} by {record.get('rule', '?')}"
        )
    return (
        f"{_clock(record.get('time', ''))} {record.get('node', '?')} L7 {record.get('protocol', 'http')} "
        f"{src} -> {dst} {record.get('direction', 'unknown')}: {record.get('method', '?')} "
        f"{record.get('url', '?')} => {record.get('status', '?')} ({record.get('latencyMs', 0):g} ms) "
        f"{record.get('verdict', '?')} by {record.get('rule', '?')}"
    )


def format_text(drop: dict[str, Any]) -> str:
    """One line: time (UTC), node, protocol, source -> destination:port, direction and reason."""
    if drop.get("type") == "l7":
        return format_l7(drop)
    src = _endpoint(drop.get("srcPod"), drop.get("src", "?"))
    dst = _endpoint(drop.get("dstPod"), drop.get("dst", "?"), drop.get("dport"))
    verb = {"log": "LOG", "policy-verdict": "VERDICT"}.get(drop.get("type", "drop"), "DROP")
    return (
        f"{_clock(drop.get('time', ''))} {drop.get('node', '?')} {verb} {drop.get('protocol', '?')} "
        f"{src} -> {dst} {drop.get('direction', 'unknown')}: {drop.get('reason', '')}"
    )


def wanted(drop: dict[str, Any], kind: str) -> bool:
    """Is ``drop`` an event of ``--type kind``? (Records of agents before Log rules are drops.)"""
    return drop.get("type", "drop") == kind


def format_drop(drop: dict[str, Any], output: str) -> str:
    return json.dumps(drop) if output == "json" else format_text(drop)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------------ agents


def agent_sockets(prefix: str | None, node: str | None) -> dict[str, str]:
    """Node → its agent's socket: every node of the running lab, or only ``node``."""
    from podnet.lab.cluster import lab_names
    from podnet.lab.naming import LabError
    from podnet.lab.state import LabState

    names = lab_names(prefix)
    state = LabState(names.state_dir)
    if not state.exists():
        raise LabError(f"no lab with prefix {names.prefix} is up", hint=HINT)
    nodes = sorted(state.meta().get("nodes") or {}, key=_natural)
    if node is not None:
        if node not in nodes:
            raise LabError(f"no node {node} in the lab with prefix {names.prefix}", hint=HINT)
        nodes = [node]
    return {n: names.agent_socket(n) for n in nodes}


def ask(node: str, path: str, since: int, wait: float = 0.0, types: tuple[str, ...] = ()) -> dict[str, Any]:
    """One DROPS request (``types``: the events wanted; policy verdicts are made only on request);
    a :class:`PodnetError` naming the node and socket when it fails."""
    from podnet.cni import agent_api as api

    try:
        reply = api.call(
            path,
            {"verb": api.DROPS, "since": since, "wait": wait, "limit": LIMIT, "types": list(types)},
            timeout=wait + 5.0,
        )
    except api.AgentUnavailable as exc:
        raise PodnetError(f"{node}: {exc}", hint=HINT) from None
    except ValueError as exc:  # not JSON
        raise PodnetError(f"{node}: the agent at {path} answered nonsense: {exc}") from None
    if not reply.get("ok"):
        msg = str(reply.get("msg", reply))
        old = "unknown verb" in msg  # an agent from before the drop monitor
        raise PodnetError(f"{node}: agent at {path}: {msg}", hint=OLD_AGENT_HINT if old else None)
    return reply


def buffered(node: str, path: str, types: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], int]:
    """Every drop the node's agent holds now, and the ``since`` that follows them."""
    drops: list[dict[str, Any]] = []
    since = 0
    while True:
        reply = ask(node, path, since, types=types)
        drops += reply["drops"]
        since = int(reply["next"])
        if len(reply["drops"]) < LIMIT:
            return drops, since


Emit = Callable[[str, Any], None]


Fetch = Callable[[str, str, int, float], dict[str, Any]]  # (node, socket, since, wait) -> reply


def _follow(
    node: str, path: str, since: int, emit: Emit, stop: threading.Event, fetch: Fetch, items: str
) -> None:
    down = False
    while not stop.is_set():
        try:
            reply = fetch(node, path, since, WAIT)
        except PodnetError as exc:
            if not down:
                emit("error", f"{exc.message} (retrying)")
            down = True
            stop.wait(RETRY)
            continue
        if down:
            emit("error", f"{node}: agent reachable again")
            down = False
        if reply.get("missed") and since:
            emit("error", f"{node}: {reply['missed']} {items} were missed (the agent's buffer is full)")
        since = int(reply["next"])
        for drop in reply[items]:
            emit("drop", drop)


def follow(
    sockets: dict[str, str],
    start: dict[str, int],
    wait: float = 0.5,
    types: tuple[str, ...] = (),
    fetch: Fetch | None = None,
    items: str = "drops",
) -> Iterator[tuple[str, Any]]:
    """``("drop", record)`` and ``("error", text)`` as they come from every node, until closed
    (``fetch``: one long poll of a node, by default a DROPS request for ``types``; ``items``: the
    reply's list)."""
    if fetch is None:

        def fetch(node: str, path: str, since: int, wait: float) -> dict[str, Any]:
            return ask(node, path, since, wait, types)

    import queue

    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def emit(kind: str, value: Any) -> None:
        events.put((kind, value))

    threads = [
        threading.Thread(
            target=_follow,
            args=(node, path, start[node], emit, stop, fetch, items),
            name=f"monitor-{node}",
            daemon=True,
        )
        for node, path in sockets.items()
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            try:
                yield events.get(timeout=wait)
            except queue.Empty:
                continue
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    """Print the buffered drops, then (``--follow``) new ones until Ctrl-C, which ends it quietly
    wherever it comes (also before the follow loop has started)."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.follow:
            return 0
        raise


def _run(args: argparse.Namespace) -> int:
    sockets = agent_sockets(args.lab_prefix, args.node)
    if not sockets:
        raise PodnetError("the lab has no nodes", hint=HINT)
    drops: list[dict[str, Any]] = []
    start: dict[str, int] = {}
    failures: list[PodnetError] = []
    for node, path in sockets.items():
        try:
            got, start[node] = buffered(node, path, (args.type,))
        except PodnetError as exc:
            if len(sockets) == 1 or args.follow:
                raise
            failures.append(exc)
            continue
        drops += got
    if failures and len(failures) == len(sockets):
        raise failures[0]
    ordered = sorted(drops, key=lambda d: (d.get("time", ""), _natural(d.get("node", "")), d.get("seq")))
    for drop in ordered:
        if wanted(drop, args.type):
            print(format_drop(drop, args.output))
    sys.stdout.flush()
    for exc in failures:
        print(f"error: {exc.message}", file=sys.stderr)
    if failures:
        return 1
    if not args.follow:
        return 0
    for kind, value in follow(sockets, start, types=(args.type,)):
        if kind == "drop":
            if wanted(value, args.type):
                print(format_drop(value, args.output), flush=True)
        else:
            print(f"warning: {value}", file=sys.stderr, flush=True)
    return 0
