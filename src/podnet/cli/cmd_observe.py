"""``podnet observe [FILTERS] [--since T] [--last N] [--follow] [-o compact|json|table]``: the
flows of every node, like ``hubble observe`` through Hubble Relay; ``podnet observe map``: the
service map they draw.

Each node's agent keeps its recent flows (new connections, drops, policy verdicts, L7 requests;
:mod:`podnet.agent.flows`) and filters them itself; this command asks every node of the lab (verb
``FLOWS`` on the agents' API sockets) and merges the answers by time. A node that does not answer
is named on standard error and the others are still shown (exit status 1 then).

Filters, as ``hubble observe`` (:mod:`podnet.calc.flow_filter`): ``--verdict``, ``--type
drop|trace|l7|policy-verdict|log``, ``--protocol``, ``--pod``/``--from-pod``/``--to-pod
[ns/]name``, ``-n NAMESPACE``, ``--label``/``--from-label``/``--to-label``, ``--ip``/``--from-ip``/
``--to-ip``, ``--port``/``--from-port``/``--to-port``, ``--node-name``, ``--http-status``,
``--http-method``, ``--http-path``; a flag given twice is ORed, different flags ANDed; ``--not``
negates the filter after it. Without ``--follow``, ``--last`` or ``--since``: the last 20 flows.

Output: ``compact`` (Hubble's line: ``Dec  7 12:00:00.123: demo/frontend-1:40312 (ID:4001) ->
demo/api-1:8080 (ID:4002) to-endpoint FORWARDED (TCP Flags: SYN)``), ``json`` (one flow per line,
``hubble observe -o json``'s shape) or ``table``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from podnet.errors import PodnetError

DEFAULT_LAST = 20
FILTER_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--verdict",), "verdict", "FORWARDED, DROPPED, REDIRECTED or AUDIT"),
    (("-t", "--type"), "type", "drop, trace, l7, policy-verdict or log"),
    (("--protocol",), "protocol", "tcp, udp, icmp, sctp, http or dns"),
    (("--pod",), "pod", "[namespace/]pod-name prefix, either side (no namespace: default)"),
    (("--from-pod",), "from-pod", "[namespace/]pod-name prefix of the source"),
    (("--to-pod",), "to-pod", "[namespace/]pod-name prefix of the destination"),
    (("-n", "--namespace"), "namespace", "either side's namespace"),
    (("-l", "--label"), "label", "key=value (or key) on either side"),
    (("--from-label",), "from-label", "key=value (or key) on the source"),
    (("--to-label",), "to-label", "key=value (or key) on the destination"),
    (("--ip",), "ip", "address or CIDR, either side"),
    (("--from-ip",), "from-ip", "source address or CIDR"),
    (("--to-ip",), "to-ip", "destination address or CIDR"),
    (("--port",), "port", "L4 port, either side"),
    (("--from-port",), "from-port", "source port"),
    (("--to-port",), "to-port", "destination port"),
    (("--node-name",), "node-name", "the node that saw it (wildcards: node-*)"),
    (("--http-status",), "http-status", "403, or a class: 4+"),
    (("--http-method",), "http-method", "GET, PUT, ..."),
    (("--http-path",), "http-path", "regular expression, full match of the path"),
)


class _Filter(argparse.Action):
    """Appends ``(negated, key, value)`` in command-line order; a ``--not`` before it negates it."""

    def __init__(self, option_strings, dest, key: str = "", **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.key = key
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        terms = list(getattr(namespace, "filters", None) or [])
        terms.append((bool(getattr(namespace, "negate_next", False)), self.key, str(values)))
        namespace.filters = terms
        namespace.negate_next = False


class _Not(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        namespace.negate_next = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what", nargs="?", choices=["map"], help="map: draw the service map of the flows instead"
    )
    parser.set_defaults(filters=[], negate_next=False)
    for flags, key, text in FILTER_FLAGS:
        parser.add_argument(*flags, action=_Filter, key=key, dest=f"filter_{key}", metavar="X", help=text)
    parser.add_argument("--not", action=_Not, dest="negate", help="negate the filter that follows")
    parser.add_argument("--since", help="flows since: a duration (30s, 5m, 1h) or an RFC 3339 time")
    parser.add_argument("--last", type=int, help=f"the last N flows (default {DEFAULT_LAST})")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new flows until Ctrl-C")
    parser.add_argument("--node", help="ask only this lab node's agent")
    parser.add_argument("--print-node-name", action="store_true", help="compact: the node before each line")
    parser.add_argument("--lab-prefix", help="the lab's prefix (default: $PODNET_LAB_PREFIX or pn-)")
    parser.add_argument(
        "-o",
        "--output",
        choices=["compact", "json", "table", "svg", "png", "html"],
        help="flows: compact (default), json, table; map: svg (default), png, html, json (the graph)",
    )
    parser.add_argument("--file", help="map: write the picture here instead of standard output")


# ----------------------------------------------------------------------------------------- helpers


def since_time(text: str, now: dt.datetime | None = None) -> str:
    """``--since``: ``90s``/``5m``/``2h``/``1d`` ago, or an RFC 3339 time, as an RFC 3339 UTC time."""
    now = now or dt.datetime.now(dt.UTC)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h|d)", text.strip())
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        stamp = now - dt.timedelta(seconds=seconds)
    else:
        try:
            stamp = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise PodnetError(
                f"--since {text}: neither a duration nor a time",
                hint="--since 5m, --since 2026-12-07T12:00:00Z",
            ) from None
        stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _clock(stamp: str) -> str:
    """``Dec  7 12:00:00.123`` (Hubble's compact time), UTC."""
    try:
        t = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{t.microsecond // 1000:03d}"


def _port(flow: Mapping[str, Any], side: str) -> int | None:
    l4 = next(iter((flow.get("l4") or {}).values()), {})
    return l4.get(f"{side}_port")


def endpoint_text(flow: Mapping[str, Any], side: str) -> str:
    """``demo/web-1:8080 (ID:4001)``; outside the cluster ``10.0.0.1:53 (world)``."""
    ep = flow.get("source" if side == "source" else "destination") or {}
    address = (flow.get("IP") or {}).get("source" if side == "source" else "destination", "?")
    port = _port(flow, side if side == "source" else "destination")
    name = f"{ep['namespace']}/{ep['pod_name']}" if ep.get("pod_name") else address
    where = f"{name}:{port}" if port else name
    if ep.get("identity"):
        return f"{where} (ID:{ep['identity']})"
    return where if ep.get("pod_name") else f"{where} (world)"


def event_text(flow: Mapping[str, Any]) -> str:
    """Hubble's middle column: ``to-endpoint``, ``Policy denied``, ``policy-verdict:L3-L4 INGRESS
    ALLOWED``, ``http-response``..."""
    kind = (flow.get("event_type") or {}).get("type", "")
    direction = str(flow.get("traffic_direction", ""))
    if kind == "trace":
        return "to-endpoint" if direction == "INGRESS" else "to-network"
    if kind == "drop":
        return str(flow.get("drop_reason_desc", "drop")).replace("_", " ").capitalize()
    if kind == "policy-verdict":
        return f"policy-verdict:L3-L4 {direction}"
    if kind == "log":
        return "policy-log"
    if kind == "l7":
        return "dns-response" if "dns" in (flow.get("l7") or {}) else "http-response"
    return kind


def compact(response: Mapping[str, Any], node_name: bool = False) -> str:
    flow = response["flow"]
    head = f"{_clock(str(response.get('time', '')))}"
    if node_name:
        head += f" [{response.get('node_name', '?')}]"
    return (
        f"{head}: {endpoint_text(flow, 'source')} -> {endpoint_text(flow, 'destination')} "
        f"{event_text(flow)} {flow.get('verdict', '?')} ({flow.get('Summary', '')})"
    )


TABLE_COLUMNS = ("TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def table(responses: list[Mapping[str, Any]]) -> str:
    rows = [
        (
            _clock(str(r.get("time", ""))),
            str(r.get("node_name", "")),
            endpoint_text(r["flow"], "source"),
            endpoint_text(r["flow"], "destination"),
            event_text(r["flow"]),
            str(r["flow"].get("verdict", "")),
            str(r["flow"].get("Summary", "")),
        )
        for r in responses
    ]
    widths = [
        max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(TABLE_COLUMNS)
    ]
    lines = ["   ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip()]
    lines += ["   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _print(responses: list[Mapping[str, Any]], output: str, node_name: bool) -> None:
    if output == "table":
        print(table(responses))
        return
    for r in responses:
        print(json.dumps(r) if output == "json" else compact(r, node_name))


# --------------------------------------------------------------------------------------------- agents


def ask(node: str, path: str, request: dict[str, Any], wait: float = 0.0) -> dict[str, Any]:
    """One FLOWS request; a :class:`PodnetError` naming the node when it fails."""
    from podnet.cli.cmd_monitor import HINT
    from podnet.cni import agent_api as api

    try:
        reply = api.call(path, {"verb": api.FLOWS, **request, "wait": wait}, timeout=wait + 10.0)
    except api.AgentUnavailable as exc:
        raise PodnetError(f"{node}: {exc}", hint=HINT) from None
    except ValueError as exc:
        raise PodnetError(f"{node}: the agent at {path} answered nonsense: {exc}") from None
    if not reply.get("ok"):
        msg = str(reply.get("msg", reply))
        old = "FLOWS" in msg and "verb" in msg.lower()  # an agent from before the flows API
        hint = "restart the lab with this podnet (its agent has no flows API)" if old else None
        raise PodnetError(f"{node}: {msg}", hint=hint)
    return reply


def collect(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, int], list[PodnetError], dict]:
    """Every node's matching flows merged by time, each node's next ``since``, the nodes that
    failed, and the sockets."""
    from podnet.cli.cmd_monitor import _natural, agent_sockets

    sockets = agent_sockets(args.lab_prefix, args.node)
    if not sockets:
        raise PodnetError("the lab has no nodes")
    request: dict[str, Any] = {"filters": [list(t) for t in args.filters]}
    if args.since:
        request["since_time"] = since_time(args.since)
    last = args.last if args.last is not None else (0 if args.follow or args.since else DEFAULT_LAST)
    if last:
        request["last"] = last
    flows: list[dict[str, Any]] = []
    start: dict[str, int] = {}
    failures: list[PodnetError] = []
    for node, path in sockets.items():
        try:
            reply = ask(node, path, {**request, "since": 0})
        except PodnetError as exc:
            failures.append(exc)
            continue
        flows += reply["flows"]
        start[node] = int(reply["next"])
        if reply.get("lost"):
            print(
                f"warning: {node}: {reply['lost']} datapath events lost so far (ring buffer full)",
                file=sys.stderr,
            )
    flows.sort(key=lambda f: (f.get("time", ""), _natural(f.get("node_name", ""))))
    if last:
        flows = flows[-last:]
    return flows, start, failures, sockets


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.follow:
            return 0
        raise


def _run(args: argparse.Namespace) -> int:
    from podnet.calc.flow_filter import FilterError, validate

    if getattr(args, "negate_next", False):
        raise PodnetError(
            "--not must be followed by a filter", hint="podnet observe --not --verdict FORWARDED"
        )
    try:
        validate(args.filters)
    except FilterError as exc:
        raise PodnetError(str(exc), hint="podnet observe --help lists the filters") from None
    if args.what == "map":
        return _map(args)
    output = args.output or "compact"
    if output not in ("compact", "json", "table"):
        raise PodnetError(f"-o {output} draws a map", hint="podnet observe map -o svg|png|html")
    flows, start, failures, sockets = collect(args)
    if failures and len(failures) == len(sockets):
        raise failures[0]
    _print(flows, output, args.print_node_name)
    sys.stdout.flush()
    for exc in failures:
        print(f"error: {exc.message} (its flows are not shown)", file=sys.stderr)
    if not args.follow:
        return 1 if failures else 0
    from podnet.cli.cmd_monitor import follow

    request = {"filters": [list(t) for t in args.filters]}

    def fetch(node: str, path: str, since: int, wait: float) -> dict[str, Any]:
        return ask(node, path, {**request, "since": since}, wait)

    live = {node: path for node, path in sockets.items() if node in start}
    for kind, value in follow(live, start, fetch=fetch, items="flows"):
        if kind == "drop":
            _print([value], "compact" if output == "table" else output, args.print_node_name)
            sys.stdout.flush()
        else:
            print(f"warning: {value}", file=sys.stderr, flush=True)
    return 0


def _map(args: argparse.Namespace) -> int:
    from podnet.calc.service_map import build, summary, to_dot
    from podnet.cli.service_map_render import render

    output = args.output or "svg"
    if output not in ("svg", "png", "html", "json"):
        raise PodnetError(
            f"-o {output} is for flows; a map is svg, png, html or json", hint="podnet observe map -o png"
        )
    if args.follow:
        raise PodnetError("a map is drawn once: no --follow", hint="podnet observe map --since 5m -o png")
    args.last = args.last or 0
    if args.since is None:
        args.since = "5m"
    flows, _, failures, sockets = collect(args)
    if failures and len(failures) == len(sockets):
        raise failures[0]
    drawn = build(flows)
    if output == "json":  # the graph itself: nodes, edges and their counts
        picture = (json.dumps(summary(drawn), indent=2) + "\n").encode()
    else:
        picture = render(to_dot(drawn), output)
    if args.file:
        with open(args.file, "wb") as f:
            f.write(picture)
        print(f"{args.file}: {len(flows)} flows drawn", file=sys.stderr)
    else:
        sys.stdout.buffer.write(picture)
        sys.stdout.flush()
    for exc in failures:
        print(f"error: {exc.message} (its flows are not drawn)", file=sys.stderr)
    return 1 if failures else 0
