"""``podnet bench`` results as statistics, the seed article's table, JSON and plots (pure but for the
writers; no lab, no root).

Input: the dictionary of :func:`podnet.bench.datapath.run`, optionally with ``footprint`` (the
result of :func:`podnet.bench.footprint.run`) added::

    {"machine": {...}, "settings": {"repeats", "duration", "quick"},
     "baselines": {"direct"|"vxlan"|"ipip": {"scenarios": {SCENARIO: {"samples": [...], "unit": ...}}}},
     "profiles": {NAME: {"path": "direct"|"vxlan"|"ipip", "spec": {...},
                         "scenarios": {SCENARIO: {"samples": [...], "unit": ...}}}},
     "footprint": {"settings": {...}, "profiles": {NAME: {"memory": ..., "control_plane": ...}}}}

**Ratios.** Every podnet figure is compared with the hand-built kernel path of the same kind
(``path``), measured in the same run on the same machine: ``ratio`` = podnet median / baseline
median, as measured. Because some rows are "higher is better" (bandwidth, connections/s) and others
"lower is better" (latency, CPU per Gbit), the table shows ``relative``: the ratio turned so that
**1.00 means as good as the hand-built path and below 1.00 means worse on every row** (for the
lower-is-better rows it is baseline / podnet). Both are in ``bench.json``.

**The seed column** carries the article's own figures (8-core cloud hosts, 10 Gbit/s NICs, iperf3 +
wrk, not reproducible here): they are placed beside, never divided into, this machine's figures,
which come from network namespaces on one 2-core host where a veth pair, not a NIC, sets the ceiling.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from podnet.bench.stats import ratio as stats_ratio
from podnet.bench.stats import sample_summary


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    higher_is_better: bool

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"


SCENARIOS: dict[str, Metric] = {
    "tcp_1": Metric("TCP bandwidth, 1 stream", "Gbit/s", True),
    "tcp_4": Metric("TCP bandwidth, 4 streams", "Gbit/s", True),
    "latency_p50": Metric("Latency P50, fixed rate", "ms", False),
    "latency_p99": Metric("Latency P99, fixed rate", "ms", False),
    "latency_sat_p50": Metric("Latency P50, saturation", "ms", False),
    "latency_sat_p99": Metric("Latency P99, saturation", "ms", False),
    "conn_rate": Metric("New connections/s", "conn/s", True),
    "conntrack_entries": Metric("Netfilter conntrack entries from pod traffic", "entries", False),
    "conn_rate_policy": Metric("New connections/s, policy selects the server", "conn/s", True),
    "conntrack_entries_policy": Metric("Conntrack entries, policy selects the server", "entries", False),
    "cpu_per_gbit": Metric("CPU per Gbit", "CPU s/Gbit", False),
}
MEMORY = Metric("Agent memory per node", "MiB", False)
TABLE_ROWS = (
    "tcp_1",
    "tcp_4",
    "latency_p99",
    "latency_sat_p99",
    "conn_rate",
    "conn_rate_policy",
    "conntrack_entries",
    "conntrack_entries_policy",
    "cpu_per_gbit",
    "agent_memory",
)

# The seed article's table (section 3) and resource row (section 1): Calico-IPIP, Cilium-VXLAN, Direct.
SEED_COLUMNS = ("Calico-IPIP", "Cilium-VXLAN", "Direct")
SEED_FIGURES: dict[str, dict[str, Any]] = {
    "tcp_1": {"values": (9.2, 8.8, 9.8), "unit": "Gbps", "note": "a"},
    "latency_sat_p99": {"values": (0.8, 1.1, 0.3), "unit": "ms", "note": "b"},
    "conn_rate": {"values": (120_000, 90_000, 150_000), "unit": "conn/s", "note": ""},
    "cpu_per_gbit": {"values": (18, 23, 12), "unit": "% at 10 Gbps", "note": "c"},
    "agent_memory": {"values": (150, 300, None), "unit": "MB", "note": "d"},
}
SEED_HEADER = "Seed (10 Gbit NICs, elsewhere)"
SEED_NOTES = {
    "a": "the seed does not say how many streams; placed on the 1-stream row",
    "b": "wrk is closed-loop (each connection sends as soon as it is answered): nearest to saturation",
    "c": "CPU % of the host at 10 Gbit/s; if % of all 8 cores, 18 % is ~0.14 CPU s per Gbit",
    "d": "calico-node / cilium-agent per node (seed section 1); podnet: agent RSS (+ BIRD with BGP),\n"
    "      "
    "largest node, idle -> loaded",
}


# ------------------------------------------------------------------------------------ statistics


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)


def ratio(podnet: float, baseline: float, higher_is_better: bool) -> dict[str, float | None]:
    """``ratio`` = podnet / baseline as measured; ``relative`` the same turned so that >= 1 is as
    good as the baseline or better on every metric (baseline / podnet where lower is better)."""
    r = stats_ratio(podnet, baseline, digits=9).value
    if not r:  # no usable side, or a zero measurement (its inverse would be infinite)
        return {"ratio": None, "relative": None}
    return {"ratio": r, "relative": r if higher_is_better else 1 / r}


def metric_of(scenario: str) -> Metric:
    return SCENARIOS.get(scenario) or Metric(scenario, "", True)


def summarize(result: dict) -> dict:
    """Median/min/max per scenario for baselines and profiles, each profile figure with its ratio to
    the baseline of its path, and the footprint per profile (across nodes)."""
    out: dict[str, Any] = {"baselines": {}, "profiles": {}, "footprint": {}}
    for path, base in (result.get("baselines") or {}).items():
        out["baselines"][path] = {
            name: sample_summary(s["samples"]) | {"unit": s.get("unit", metric_of(name).unit)}
            for name, s in (base.get("scenarios") or {}).items()
        }
    for profile, prof in (result.get("profiles") or {}).items():
        rows = {}
        path = prof.get("path")
        for name, s in (prof.get("scenarios") or {}).items():
            metric = metric_of(name)
            row = sample_summary(s["samples"]) | {"unit": s.get("unit", metric.unit), "better": metric.better}
            base = out["baselines"].get(path, {}).get(name)
            row["baseline"] = path if base else None
            row["baseline_median"] = base["median"] if base else None
            row |= (
                ratio(row["median"], base["median"], metric.higher_is_better) if base else ratio(0, 0, True)
            )
            rows[name] = row
        out["profiles"][profile] = rows
    for profile, fp in ((result.get("footprint") or {}).get("profiles") or {}).items():
        memory = fp.get("memory") or {}
        out["footprint"][profile] = {
            f"{phase}_mib": sample_summary([n["total_rss_mib"] for n in memory[phase].values()])
            for phase in ("idle", "loaded")
            if memory.get(phase)
        }
    return out


# ----------------------------------------------------------------------------------- formatting


def fmt_value(value: float | None, unit: str) -> str:
    if not _finite(value):
        return "-"
    assert value is not None
    if unit == "conn/s":
        return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"
    if unit in ("MiB", "entries"):
        return f"{value:.0f}"
    if unit == "Gbit/s":
        return f"{value:.2f}"
    magnitude = abs(value)
    decimals = 3 if magnitude < 1 else 2 if magnitude < 10 else 1 if magnitude < 100 else 0
    return f"{value:.{decimals}f}"


def fmt_relative(rel: float | None) -> str:
    return f"x{rel:.2f}" if _finite(rel) else ""


def _seed_cell(row: str) -> str:
    seed = SEED_FIGURES.get(row)
    if not seed:
        return "-"

    def one(v: float | None) -> str:
        if v is None:
            return "-"
        if seed["unit"] == "conn/s":
            return f"{v / 1000:.0f}k"
        return f"~{v:g}" if row == "agent_memory" else f"{v:g}"

    note = f" ({seed['note']})" if seed["note"] else ""
    return " / ".join(one(v) for v in seed["values"]) + f" {seed['unit']}{note}"


def _memory_cell(summary: dict, profile: str) -> str:
    fp = summary["footprint"].get(profile)
    if not fp:
        return "-"
    idle = fp.get("idle_mib", {}).get("max")
    loaded = fp.get("loaded_mib", {}).get("max")
    if _finite(idle) and _finite(loaded):
        return f"{idle:.0f}->{loaded:.0f}"
    return f"{(loaded if _finite(loaded) else idle):.0f}" if _finite(loaded) or _finite(idle) else "-"


def render_grid(header: list[list[str]], rows: list[list[str]]) -> list[str]:
    """Columns padded to the widest cell; the first column left-aligned, the others right-aligned."""
    every = header + rows
    widths = [max(len(r[i]) for r in every) for i in range(len(every[0]))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(h) for h in header] + [rule] + [line(r) for r in rows]


def render_table(result: dict, summary: dict | None = None) -> str:
    """The seed's table with this machine's figures: one column per profile (median and relative to
    its hand-built baseline), the baselines, then the seed's own figures."""
    summary = summary or summarize(result)
    profiles = list(result.get("profiles") or {})
    paths = [p for p in ("direct", "vxlan", "ipip") if p in summary["baselines"]]
    paths += [p for p in summary["baselines"] if p not in paths]
    header = [
        ["", *profiles, *(f"{p} (by hand)" for p in paths), SEED_HEADER],
        [
            "",
            *(f"vs {result['profiles'][p].get('path', '?')}" for p in profiles),
            *("baseline" for _ in paths),
            " / ".join(SEED_COLUMNS),
        ],
    ]
    rows = []
    for row in TABLE_ROWS:
        if row == "agent_memory":
            label = f"{MEMORY.label} ({MEMORY.unit})"
            cells = [_memory_cell(summary, p) for p in profiles] + ["-" for _ in paths]
            rows.append([label, *cells, _seed_cell(row)])
            continue
        metric = metric_of(row)
        label = f"{metric.label} ({metric.unit})"
        cells = []
        for p in profiles:
            s = summary["profiles"][p].get(row)
            if s is None or not s["n"]:
                cells.append("-")
                continue
            rel = fmt_relative(s["relative"])
            cells.append(f"{fmt_value(s['median'], metric.unit)} {rel}".rstrip())
        for path in paths:
            b = summary["baselines"][path].get(row)
            cells.append(fmt_value(b["median"], metric.unit) if b and b["n"] else "-")
        rows.append([label, *cells, _seed_cell(row)])
    settings = result.get("settings") or {}
    machine = result.get("machine") or {}
    title = (
        f"podnet bench: the seed's table on this machine (median of {settings.get('repeats', '?')} runs"
        f" x {settings.get('duration', '?')} s{', quick' if settings.get('quick') else ''})"
    )
    lines = [title]
    if machine:
        lines.append("machine: " + ", ".join(f"{k} {_short(v)}" for k, v in machine.items()))
    lines += ["", *render_grid(header, rows), ""]
    lines.append(
        "xN.NN = relative to the hand-built kernel path of the same kind, measured in this run: "
        "1.00 = as good,"
    )
    lines.append(
        "        below 1.00 = worse, on every row (bandwidth, conn/s: podnet/baseline; latency, "
        "CPU: baseline/podnet)"
    )
    lines.append(
        f"{SEED_HEADER}: the article's own figures on 8-core cloud hosts with 10 Gbit/s NICs (iperf3 + wrk);"
    )
    lines.append(
        "        not measured here and not comparable in absolute terms: a veth pair on one 2-core "
        "host is not a NIC"
    )
    for key, note in SEED_NOTES.items():
        lines.append(f"  ({key}) {note}")
    fp_settings = (result.get("footprint") or {}).get("settings")
    if fp_settings:
        lines.append(
            f"  memory loaded = {fp_settings['pods']} pods + {fp_settings['policies']} NetworkPolicies "
            f"({fp_settings['rules_per_policy']} rules each) on {fp_settings['nodes']} nodes"
        )
    cp = render_control_plane(result)
    if cp:
        lines += ["", cp]
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lat(s: dict | None, key: str = "") -> str:
    if not s:
        return "-"
    return f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"


def render_control_plane(result: dict) -> str:
    """The control-plane block: one column per profile that had a footprint lab."""
    fps = ((result.get("footprint") or {}).get("profiles")) or {}
    cps = {p: fp["control_plane"] for p, fp in fps.items() if fp.get("control_plane")}
    if not cps and not fps:
        return ""
    profiles = list(fps)

    def cni(p: str, concurrency: int, key: str) -> str:
        rows = [r for r in cps.get(p, {}).get("cni", []) if r["concurrency"] == concurrency]
        return _lat(rows[0][key]) if rows else "-"

    def get(p: str, *keys: str, fmt: str = "{:.2f}") -> str:  # "-" where missing or None
        node: Any = cps.get(p, {})
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return "-"
            node = node[k]
        return fmt.format(node) if _finite(node) else "-"

    def bird(p: str) -> str:
        loaded = (fps[p].get("memory") or {}).get("loaded") or {}
        values = [n["bird"]["rss_mib"] for n in loaded.values() if n.get("bird")]
        return f"{max(values):.0f}" if values else "-"

    def agent(p: str, phase: str) -> str:
        mem = ((fps[p].get("memory") or {}).get(phase)) or {}
        values = [n["agent"]["rss_mib"] for n in mem.values()]
        return f"{min(values):.0f}-{max(values):.0f}" if values else "-"

    def workload(p: str) -> str:
        w = fps[p].get("workload")
        return f"{w['pods_running_s']:.1f} / {w['policies_programmed_s']:.1f}" if w else "-"

    rows = [
        ["CNI ADD p50 / p99, 1 at a time (ms)", *(cni(p, 1, "add_chain") for p in profiles)],
        ["CNI ADD p50 / p99, 10 at a time (ms)", *(cni(p, 10, "add_chain") for p in profiles)],
        ["CNI DEL p50 / p99, 1 at a time (ms)", *(cni(p, 1, "del_chain") for p in profiles)],
        ["CNI DEL p50 / p99, 10 at a time (ms)", *(cni(p, 10, "del_chain") for p in profiles)],
        [
            "IPAM allocations/s (4 callers)",
            *(get(p, "ipam", "allocations_per_s", fmt="{:.0f}") for p in profiles),
        ],
        ["IPAM allocation p99 (ms)", *(get(p, "ipam", "assign_p99_ms") for p in profiles)],
        [
            "Policy change -> kernel p50 / p99 (ms)",
            *(_lat(cps.get(p, {}).get("policy_change", {}).get("all_nodes")) for p in profiles),
        ],
        [
            "Node joins: Node created -> routed by all (s)",
            *(get(p, "route_convergence", "converged_after_node_s") for p in profiles),
        ],
        [
            "Node joins: its first block claimed at",
            *(
                str(cps.get(p, {}).get("route_convergence", {}).get("block_claimed_by", "-"))
                for p in profiles
            ),
        ],
        [
            "Node joins: first pod applied -> routed by all (s)",
            *(get(p, "route_convergence", "converged_after_pod_s") for p in profiles),
        ],
        ["Pods Running / policies programmed (s)", *(workload(p) for p in profiles)],
        ["Agent RSS idle, per node (MiB)", *(agent(p, "idle") for p in profiles)],
        ["Agent RSS loaded, per node (MiB)", *(agent(p, "loaded") for p in profiles)],
        ["BIRD RSS loaded, largest node (MiB)", *(bird(p) for p in profiles)],
    ]
    settings = (result.get("footprint") or {}).get("settings") or {}
    lines = ["Control plane (one 3-node lab per profile)", *render_grid([["", *profiles]], rows)]
    lines += [
        f"  CNI: {settings.get('cni_sandboxes', '?')} sandboxes per level, whole chain (podnet, portmap, "
        "bandwidth)",
        f"  IPAM: {settings.get('ipam_allocations', '?')} allocations in the lab's etcd; policy change: "
        f"{settings.get('changes', '?')} edits, until every selected node shows the rule",
        "  node join: the last node leaves (agent stopped, BIRD down, Node deleted, blocks released) and",
        "    joins again (Node created, agent restarted, a first pod); timed until all other nodes route to",
        "    its block. The lab cannot add a namespace to a running cluster, so the node rejoins instead",
    ]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- writers


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null (JSON has no NaN); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def to_document(result: dict) -> dict:
    """What ``bench.json`` holds: every raw sample as measured, the summaries and the seed's figures."""
    seed = {row: {"columns": list(SEED_COLUMNS), **fig} for row, fig in SEED_FIGURES.items()}
    return _json_safe(
        result
        | {
            "summary": summarize(result),
            "seed": seed,
            "metrics": {
                k: {"label": m.label, "unit": m.unit, "better": m.better} for k, m in SCENARIOS.items()
            },
        }
    )


def write_json(result: dict, path: str) -> str:
    with open(path, "w") as f:
        json.dump(to_document(result), f, indent=1, allow_nan=False)
        f.write("\n")
    return path


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _bars(result: dict, scenario: str) -> list[tuple[str, str, list[float]]]:
    """(label, kind, samples) per bar: the profiles, then the baselines, for one scenario."""
    bars = []
    for name, prof in (result.get("profiles") or {}).items():
        s = (prof.get("scenarios") or {}).get(scenario)
        if s and s["samples"]:
            bars.append((name, "podnet", list(s["samples"])))
    for path, base in (result.get("baselines") or {}).items():
        s = (base.get("scenarios") or {}).get(scenario)
        if s and s["samples"]:
            bars.append((f"{path}\n(by hand)", "baseline", list(s["samples"])))
    return bars


def _scenarios(result: dict) -> list[str]:
    seen: dict[str, None] = {}
    for group in ("profiles", "baselines"):
        for item in (result.get(group) or {}).values():
            seen.update(dict.fromkeys(item.get("scenarios") or {}))
    known = [s for s in SCENARIOS if s in seen]
    return known + [s for s in seen if s not in SCENARIOS]


def _plot(path: str, title: str, unit: str, bars: Iterable[tuple[str, str, list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = list(bars)
    colours = {"podnet": "#3b75af", "baseline": "#9a9a9a", "idle": "#9fc3e2", "loaded": "#3b75af"}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(bars) + 1.5), 4.0), dpi=100)
    try:
        medians, lower, upper = [], [], []
        for _, _, samples in bars:
            s = sample_summary(samples)
            medians.append(s["median"])
            lower.append(s["median"] - s["min"])
            upper.append(s["max"] - s["median"])
        x = list(range(len(bars)))
        ax.bar(
            x,
            medians,
            yerr=[lower, upper],
            capsize=4,
            color=[colours.get(k, "#3b75af") for _, k, _ in bars],
            hatch=None,
            edgecolor="black",
            linewidth=0.5,
        )
        ax.set_xticks(x, [label for label, _, _ in bars], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_plots(result: dict, out_dir: str) -> list[str]:
    """One bar chart per metric (median, error bars min-max over the repeats; baselines in grey):
    ``<out_dir>/<metric>.png``; plus ``agent_memory.png`` (idle and loaded, min-max over nodes)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    settings = result.get("settings") or {}
    suffix = f"median of {settings.get('repeats', '?')}, bars min-max"
    for scenario in _scenarios(result):
        bars = _bars(result, scenario)
        if not bars:
            continue
        metric = metric_of(scenario)
        unit = next(
            (
                s["unit"]
                for g in ("profiles", "baselines")
                for item in (result.get(g) or {}).values()
                if (s := (item.get("scenarios") or {}).get(scenario)) and s.get("unit")
            ),
            metric.unit,
        )
        title = f"{metric.label} ({metric.better} is better; {suffix})"
        written.append(_plot(os.path.join(out_dir, f"{scenario}.png"), title, unit, bars))
    fps = ((result.get("footprint") or {}).get("profiles")) or {}
    mem_bars = []
    for profile, fp in fps.items():
        for phase in ("idle", "loaded"):
            nodes = ((fp.get("memory") or {}).get(phase)) or {}
            if nodes:
                mem_bars.append((f"{profile}\n{phase}", phase, [n["total_rss_mib"] for n in nodes.values()]))
    if mem_bars:
        title = "Agent memory per node (+ BIRD with BGP; median, bars min-max over nodes)"
        written.append(_plot(os.path.join(out_dir, "agent_memory.png"), title, "MiB RSS", mem_bars))
    return written
