"""``podnet metrics``: the lab's Prometheus (``podnet lab up --prometheus``), from the root namespace.

podnet metrics query 'PROMQL' [--time T] [-o table|json]
    an instant query (``/api/v1/query``): one line per series, its labels and value (a range
    selector such as ``x[1m]`` gives every sample, ``value @time``); ``-o json`` prints
    Prometheus's ``data`` (``resultType``, ``result``) as it came.
podnet metrics compare --before T1 --after T2 [--window 1m] [-o table|json]
    what the migration between profiles compares, per node, at two times: forwarded bytes/s by
    direction (``rate(podnet_forward_bytes_total[W])``), drops/s by reason
    (``rate(podnet_drop_count_total[W])``), and the HTTP p50/p99 latency through the L7 proxy
    (``histogram_quantile`` over ``podnet_http_request_duration_seconds_bucket``): before, after
    and after/before.

Times (``--time``, ``--before``, ``--after``): ``now``, relative to now (``-10m``, ``-1h30m``,
``-90s``), RFC 3339 (``2026-12-07T12:00:00Z``, ``...+01:00``) or Unix seconds. Prometheus is the
lab's (its state records the URL of the forwarder on root loopback: ``--lab-prefix`` or
``$PODNET_LAB_PREFIX``), or any at ``--prometheus URL`` / ``$PODNET_PROMETHEUS_URL``. A query
Prometheus refuses is an error carrying its message (exit 2 for one it cannot parse); a lab
without Prometheus says how to start one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from podnet.errors import ValidationError

_RELATIVE = re.compile(r"^-((?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+)$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PROMQL_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
TIME_HINT = "now, -10m (relative to now), 2026-12-07T12:00:00Z (RFC 3339) or Unix seconds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metrics_command", metavar="SUBCOMMAND")
    sub.required = True
    query = sub.add_parser("query", help="an instant PromQL query against the lab's Prometheus")
    query.add_argument("promql", metavar="PROMQL")
    query.add_argument("--time", help=f"evaluate at this time (default: now): {TIME_HINT}")
    compare = sub.add_parser(
        "compare", help="per node: forwarded bytes/s, drops/s, HTTP p50/p99 at two times, and their ratio"
    )
    compare.add_argument("--before", required=True, help=f"the first time: {TIME_HINT}")
    compare.add_argument("--after", required=True, help=f"the second time: {TIME_HINT}")
    compare.add_argument("--window", default="1m", help="the rates' range (PromQL duration; default 1m)")
    for p in (query, compare):
        # argparse reads "-10m" as an unknown option; let it read such a time as it reads "-10"
        # (its own private matcher; "--before=-10m" works whatever argparse does)
        p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|" + _RELATIVE.pattern[1:])
        p.add_argument("-o", "--output", choices=["table", "json"], default="table")
        p.add_argument("--lab-prefix", help="the lab's prefix (default: $PODNET_LAB_PREFIX or pn-)")
        p.add_argument(
            "--prometheus",
            metavar="URL",
            help="another Prometheus instead of the lab's (default: $PODNET_PROMETHEUS_URL)",
        )


def run(args: argparse.Namespace) -> int:
    return {"query": _query, "compare": _compare}[args.metrics_command](args)


def _api(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from podnet.lab.cluster import lab_names
    from podnet.lab.prometheus import PrometheusAPI, endpoint_of

    url = args.prometheus or os.environ.get("PODNET_PROMETHEUS_URL")
    return PrometheusAPI(url or endpoint_of(lab_names(args.lab_prefix)))


def _query(args: argparse.Namespace) -> int:
    at = parse_time(args.time, time.time()) if args.time else None
    data = _api(args).query(args.promql, at)
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        lines = render_query(data)
        print("\n".join(lines) if lines else "(no series)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    now = time.time()
    before, after = parse_time(args.before, now), parse_time(args.after, now)
    window = check_window(args.window)
    api = _api(args)
    rows = compare(lambda promql, at: api.query(promql, at)["result"], before, after, window)
    if args.output == "json":
        doc = {"before": _iso(before), "after": _iso(after), "window": window, "rows": rows}
        print(json.dumps(doc, indent=2))
    else:
        print(render_compare(rows, before, after, window))
    return 0


# ------------------------------------------------------------------------------------ times


def parse_time(text: str, now: float) -> float:
    """Unix seconds of ``text``: ``now``, ``-10m`` (relative to ``now``), RFC 3339 (a ``Z`` or an
    offset; without one, UTC) or Unix seconds."""
    text = text.strip()
    if text == "now":
        return now
    if m := _RELATIVE.match(text):
        return now - sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(m.group(1)))
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationError([("time", f"cannot read {text!r}")], hint=TIME_HINT) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def check_window(text: str) -> str:
    """``text`` if it is a PromQL duration (``1m``, ``90s``, ``1h30m``)."""
    if not _PROMQL_DURATION.match(text):
        raise ValidationError([("window", f"{text!r} is not a PromQL duration")], hint="e.g. 30s, 1m, 1h30m")
    return text


def _iso(at: float) -> str:
    """RFC 3339 in UTC, to the millisecond Prometheus is given (rounded, as the query's time is)."""
    ms = round(at * 1000)
    stamp = dt.datetime.fromtimestamp(ms // 1000, dt.UTC) + dt.timedelta(milliseconds=ms % 1000)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------------------------ query


def format_series(metric: Mapping[str, str]) -> str:
    """``name{label="value", ...}`` as Prometheus writes a series (labels sorted; ``{}`` when none)."""
    name = metric.get("__name__", "")
    labels = ", ".join(
        f'{k}="{_escape(v)}"' for k, v in sorted(metric.items()) if k != "__name__"
    )  # fmt: skip
    return f"{name}{{{labels}}}" if labels or not name else name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_number(text: str | float) -> str:
    """A sample value as Prometheus gives it (a string), integers without a fraction."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}" if math.isfinite(value) else str(text)


def render_query(data: Mapping[str, Any]) -> list[str]:
    """One line per series: its labels and value (a matrix: every ``value @time``); a scalar or
    string: its value and time."""
    kind, result = data.get("resultType"), data.get("result")
    if kind in ("scalar", "string"):
        at, value = result  # type: ignore[misc]
        return [f"{kind}  {format_number(value) if kind == 'scalar' else value} @{at}"]
    series = sorted(result or [], key=lambda s: format_series(s.get("metric", {})))
    names = [format_series(s.get("metric", {})) for s in series]
    width = max((len(n) for n in names), default=0)
    lines = []
    for name, s in zip(names, series, strict=True):
        if kind == "matrix":
            samples = ", ".join(f"{format_number(v)} @{t}" for t, v in s.get("values", []))
            lines.append(f"{name.ljust(width)}  {samples}")
        else:
            lines.append(f"{name.ljust(width)}  {format_number(s.get('value', [0, 'NaN'])[1])}")
    return lines


# ------------------------------------------------------------------------------------ compare

_LATENCY = (
    "histogram_quantile({q}, sum by (node, le) (rate(podnet_http_request_duration_seconds_bucket[{{w}}])))"
)
#: (metric, the labels besides node that tell its series apart, PromQL with {w} for the window)
COMPARED: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("forwarded bytes/s", ("direction",), "sum by (node, direction) (rate(podnet_forward_bytes_total[{w}]))"),
    ("drops/s", ("reason",), "sum by (node, reason) (rate(podnet_drop_count_total[{w}]))"),
    ("http p50 seconds", (), _LATENCY.format(q=0.5)),
    ("http p99 seconds", (), _LATENCY.format(q=0.99)),
)
NODES_QUERY = 'up{job="podnet-agent"}'

Query = Callable[[str, float], list[dict[str, Any]]]  # (PromQL, time) -> the vector's series


def _value(series: Mapping[str, Any]) -> float | None:
    try:
        value = float(series["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None  # NaN: a quantile of no requests


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def compare(query: Query, before: float, after: float, window: str) -> list[dict[str, Any]]:
    """The compared figures (:data:`COMPARED`) per node at ``before`` and ``after``: one row per
    node, metric and series (``labels``: the series' labels besides ``node``), ``before``/``after``
    None where it had no value then, and ``ratio`` = after/before where both are there and before is
    not 0. Every node Prometheus scrapes (``up``) at either time gets a row per metric: ``labels``
    None when it had no series of it at all (no drop ever counted, no HTTP request seen)."""
    nodes = {
        s["metric"].get("node", "")
        for at in (before, after)
        for s in query(NODES_QUERY, at)
        if s.get("metric")
    }
    rows: list[dict[str, Any]] = []
    for metric, keys, promql in COMPARED:
        text = promql.format(w=window)
        found: dict[tuple[str, tuple[tuple[str, str], ...]], list[float | None]] = {}
        for i, at in enumerate((before, after)):
            for s in query(text, at):
                labels = s.get("metric", {})
                key = (labels.get("node", ""), tuple((k, labels.get(k, "")) for k in keys))
                found.setdefault(key, [None, None])[i] = _value(s)
        for (node, labels), (b, a) in found.items():
            ratio = a / b if a is not None and b else None
            rows.append(
                {
                    "node": node,
                    "metric": metric,
                    "labels": dict(labels),
                    "before": b,
                    "after": a,
                    "ratio": ratio,
                }
            )
        for node in nodes - {node for node, _ in found}:
            rows.append(
                {"node": node, "metric": metric, "labels": None, "before": None, "after": None, "ratio": None}
            )
    order = {m: i for i, (m, _, _) in enumerate(COMPARED)}
    rows.sort(key=lambda r: (_natural(r["node"]), order[r["metric"]], sorted((r["labels"] or {}).items())))
    return rows


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def format_figure(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric.startswith("http"):
        return f"{value * 1000:.3g} ms"
    if metric.startswith("forwarded"):
        return _si(value, "B/s")
    return f"{value:.3g}/s"


def render_compare(rows: Sequence[Mapping[str, Any]], before: float, after: float, window: str) -> str:
    """The table: NODE, METRIC, SERIES (its labels), BEFORE, AFTER, AFTER/BEFORE."""
    table = [("NODE", "METRIC", "SERIES", "BEFORE", "AFTER", "AFTER/BEFORE")]
    for r in rows:
        labels = r["labels"]
        named = ",".join(f"{k}={v}" for k, v in (labels or {}).items()) or "-"
        series = "(no series)" if labels is None else named
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
        table.append(
            (
                r["node"],
                r["metric"],
                series,
                format_figure(r["metric"], r["before"]),
                format_figure(r["metric"], r["after"]),
                ratio,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    head = f"before {_iso(before)}, after {_iso(after)}, rates over {window}"
    return "\n".join(
        [head, *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)]
    )
