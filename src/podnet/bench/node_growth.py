"""The ``nodes`` section's figures: one series per cost, its growth, the rows, the table and the plot.

Every series is ``{size: value}`` taken from :func:`podnet.bench.scale_nodes.measure`'s samples
(pure, apart from :func:`write_plot`). Growth is the exponent ``b`` of ``cost = a * N**b`` fitted
in log-log space over the measured sizes (:func:`podnet.bench.sim_nodes.growth_exponent`): 0 flat,
1 linear, 2 quadratic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from podnet.bench.scale import Row
from podnet.bench.sim_nodes import growth_exponent

PLOT_FILE = "nodes_growth.png"
RR, CLIENT = "node-1", "node-3"  # a route reflector and a client among the real nodes

# name -> (unit, plot panel, value of one size's sample)
SERIES: dict[str, tuple[str, str, Callable[[dict], float | None]]] = {
    "routes, slowest node": (
        "ms",
        "compute",
        lambda s: max(n["routes"]["ms"] for n in s["compute"]["nodes"].values()),
    ),
    "BIRD config, reflector": ("ms", "compute", lambda s: s["compute"]["nodes"][RR]["bird"]["ms"]),
    "BIRD config, client": ("ms", "compute", lambda s: s["compute"]["nodes"][CLIENT]["bird"]["ms"]),
    "VXLAN FDB, slowest node": (
        "ms",
        "compute",
        lambda s: max(n["fdb"]["ms"] for n in s["compute"]["nodes"].values()),
    ),
    "policy, slowest node": (
        "ms",
        "compute",
        lambda s: max(n["policy"]["ms"] for n in s["compute"]["nodes"].values()),
    ),
    "cache load (snapshot)": ("ms", "compute", lambda s: s["compute"]["cache"]["ms"]),
    "cache kept": ("MiB", "memory", lambda s: s["compute"]["cache"]["retained_mib"]),
    "policy peak": (
        "MiB",
        "memory",
        lambda s: max(n["policy"]["peak_mib"] for n in s["compute"]["nodes"].values()),
    ),
    "BIRD config peak, reflector": ("MiB", "memory", lambda s: s["compute"]["nodes"][RR]["bird"]["peak_mib"]),
    "agent RSS, largest": (
        "MiB",
        "memory",
        lambda s: max(n["agent"]["rss_mib"] for n in s["agents"].values()),
    ),
    "BIRD RSS, reflector": ("MiB", "memory", lambda s: (s["agents"][RR]["bird"] or {}).get("rss_mib")),
    "batch write → all agents applied": ("s", "seconds", lambda s: max(s["batch"]["applied_s"].values())),
    "batch: the bench's etcd writes": ("s", "seconds", lambda s: s["batch"]["write_s"]),
    "batch: agents done after the writes": (
        "s",
        "seconds",
        lambda s: max(s["batch"]["applied_s"].values()) - s["batch"]["write_s"],
    ),
    "join → route in every real kernel": ("s", "seconds", lambda s: max(s["join"]["route_s"].values())),
    "join → every agent applied": (
        "s",
        "seconds",
        lambda s: max(s["join"]["node_add"]["applied_s"].values()),
    ),
    "pod add → every agent applied": (
        "s",
        "seconds",
        lambda s: max(s["join"]["pod_add"]["applied_s"].values()),
    ),
    "watch bytes, node join": ("KiB", "watch", lambda s: s["join"]["node_add"]["bytes"] / 1024),
    "watch bytes, pod add": ("KiB", "watch", lambda s: s["join"]["pod_add"]["bytes"] / 1024),
    "snapshot (list) size": ("KiB", "watch", lambda s: s["compute"]["cache"]["bytes"] / 1024),
}
PANELS = {
    "compute": "in-process calculation (ms)",
    "memory": "memory (MiB)",
    "seconds": "real agents (s)",
    "watch": "etcd bytes (KiB)",
}
STEP_NAMES = {"routes": "routes", "bird": "BIRD config", "fdb": "VXLAN FDB", "policy": "policy compile"}


def _sizes(samples: dict) -> list[int]:
    return sorted(int(n) for n in samples.get("sizes", {}))


def series(samples: dict) -> dict[str, dict[int, float | None]]:
    out = {}
    for name, (_, _, get) in SERIES.items():
        values: dict[int, float | None] = {}
        for size in _sizes(samples):
            try:
                values[size] = get(samples["sizes"][str(size)])
            except (KeyError, TypeError, ValueError):
                values[size] = None
        out[name] = values
    return out


def dominant(samples: dict) -> str:
    """One sentence: which step dominates a real agent's calculation at the largest size, and how
    it compares with the cache load and the wall time of taking a batch in."""
    sizes = _sizes(samples)
    if not sizes:
        return "no size measured"
    top = samples["sizes"][str(sizes[-1])]
    per_node = top["compute"]["nodes"]
    steps = {step: max(n[step]["ms"] for n in per_node.values()) for step in STEP_NAMES}
    worst = max(steps, key=lambda k: steps[k])
    total = sum(steps.values())
    rr_bird, cache = per_node[RR]["bird"], top["compute"]["cache"]
    text = (
        f"At {sizes[-1]:,} nodes the {STEP_NAMES[worst]} dominates one agent's calculation "
        f"({steps[worst]:,.1f} ms of {total:,.1f} ms for the four steps; routes "
        f"{steps['routes']:,.1f}, BIRD {steps['bird']:,.1f} (reflector, {rr_bird['peerings']} sessions), "
        f"FDB {steps['fdb']:,.2f}); loading the cache from the snapshot costs "
        f"{cache['ms']:,.0f} ms and keeps {cache['retained_mib']:,.0f} MiB"
    )
    join = top["join"]
    members = max(n["policy"].get("set_members", 0) for n in per_node.values())
    text += (
        f". In the real agents a change is a sync: one pod added is applied on every node after "
        f"{max(join['pod_add']['applied_s'].values()):,.1f} s and a joining node after "
        f"{max(join['node_add']['applied_s'].values()):,.1f} s, its route in every kernel after "
        f"{max(join['route_s'].values()):,.2f} s (routes go before policy); each pod change is a policy "
        f"sync on every agent, whose address sets hold {members:,} pod addresses on one node"
    )
    return text + "."


def growth(samples: dict) -> dict[str, Any]:
    sizes = _sizes(samples)
    table = series(samples)
    exponents = {name: growth_exponent(sizes, [values[s] for s in sizes]) for name, values in table.items()}
    return {
        "exponents": {k: None if v is None else round(v, 2) for k, v in exponents.items()},
        "dominates": dominant(samples),
    }


def rows_of(samples: dict) -> list[Row]:
    """Per size: BIRD accepted every configuration (the issue's only goal), then every cost; then
    the growth exponents and the sentence on what dominates."""
    out = []
    table = series(samples)
    for size in _sizes(samples):
        s = samples["sizes"][str(size)]
        configs = [a["bird_conf"] for a in s["agents"].values()] + [
            n["bird"] for n in s["compute"]["nodes"].values()
        ]
        accepted = sum(1 for c in configs if c["accepted"])
        kernel = ", ".join(
            f"{n} {a['kernel']['routes']}/{a['kernel']['fdb']}" for n, a in sorted(s["agents"].items())
        )
        out.append(
            Row(
                f"{size} nodes: BIRD configs accepted by bird -p",
                accepted,
                "",
                len(configs),
                ">=",
                note=f"the agents' files and this process's renderings; routes/FDB in the kernels: {kernel}",
            )
        )
        for name, values in table.items():
            unit = SERIES[name][0]
            out.append(
                Row(f"{size} nodes: {name}", None if values[size] is None else round(values[size], 3), unit)
            )
    exps = samples.get("growth", {}).get("exponents", {})
    for i, (name, b) in enumerate(exps.items()):
        note = "exponent b of cost ∝ N^b over the sizes (0 flat, 1 linear)" if i == 0 else ""
        out.append(Row(f"growth: {name}", b, "", note=note))
    if samples.get("growth", {}).get("dominates"):
        out.append(Row("what dominates", None, note=samples["growth"]["dominates"]))
    return out


def render_growth(samples: dict) -> str:
    """The growth table: one row per cost, one column per size, then the exponent."""
    sizes = _sizes(samples)
    exps = samples.get("growth", {}).get("exponents", {})
    width = max(len(n) for n in SERIES) + 6
    head = f"{'cost':{width}}" + "".join(f"{f'N={s:,}':>12}" for s in sizes) + f"{'growth b':>10}"
    lines = [head]
    for name, values in series(samples).items():
        label = f"{name} ({SERIES[name][0]})"
        cells = "".join(f"{'—' if values[s] is None else f'{values[s]:,.2f}':>12}" for s in sizes)
        b = exps.get(name)
        lines.append(f"{label:{width}}{cells}{'' if b is None else f'{b:.2f}':>10}")
    if samples.get("growth", {}).get("dominates"):
        lines += ["", samples["growth"]["dominates"]]
    return "\n".join(lines)


def write_plot(samples: dict, out_dir: str) -> str:
    """``<out_dir>/nodes_growth.png``: each cost against N, log-log, one panel per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, PLOT_FILE)
    table = series(samples)
    fig, axes = plt.subplots(2, 2, figsize=(11.0, 8.0), dpi=100)
    try:
        for ax, (panel, title) in zip(axes.flat, PANELS.items(), strict=True):
            for name, (_, where, _) in SERIES.items():
                points = [
                    (n, v) for n, v in table[name].items() if where == panel and v is not None and v > 0
                ]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("nodes (simulated)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        fig.suptitle("podnet: cost of a real agent as the cluster grows (log-log)", fontsize=11)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
