"""Scale section ``cni``: CNI ADD/DEL on one node, 1, 10 and 50 at once, with the CPU each call costs.

    python -m podnet.bench.scale_cni [--quick] [--profiles calico,cilium] [-o json]

Per profile, a one-node lab; ADDs through the node's real chain (podnet → portmap → bandwidth,
each plugin run in the node's netns as a runtime does) for Pod objects that exist, then DELs
(:func:`podnet.bench.control_plane.cni_latency`). Goals (issue 18): one at a time p50 ≤ 30 ms and
p99 ≤ 60 ms; 10 at once p99 ≤ 250 ms; 50 at once p99 ≤ 500 ms, for the whole chain.

The CPU rows say where a call's time goes when many run at once: on this 2-core machine N
concurrent ADDs cannot finish before N x (CPU per ADD) / 2, whatever the locking.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from podnet.bench.scale import Row

GOALS = {  # concurrency -> (p50 goal, p99 goal), ms, whole chain
    1: (30.0, 60.0),
    10: (None, 250.0),
    50: (None, 500.0),
}
FULL = {1: 40, 10: 60, 50: 100}  # sandboxes per concurrency level
QUICK = {1: 15, 10: 20, 50: 50}


def measure(profile: str, sizes: dict[int, int], step: Callable[[str], None]) -> dict:
    from podnet.bench.control_plane import BENCH_PREFIX, cni_latency
    from podnet.lab import cluster
    from podnet.lab.naming import LabNames
    from podnet.lab.topology import LabSpec, random_underlay

    names = LabNames(BENCH_PREFIX)
    spec = LabSpec(nodes=1, profile=profile, underlay=random_underlay(), flows=False)
    info = cluster.up(spec, names)
    try:
        cni_latency(names, info, 5, 1)  # warm: the agent's first requests load their modules
        levels = {}
        for concurrency, sandboxes in sorted(sizes.items()):
            step(f"cni {profile}: {sandboxes} ADDs and DELs, {concurrency} at once")
            levels[concurrency] = cni_latency(names, info, sandboxes, concurrency)
        return levels
    finally:
        cluster.teardown(names)


def rows(profile: str, levels: dict[int, dict]) -> list[Row]:
    out = []
    for concurrency, row in sorted(levels.items()):
        p50_goal, p99_goal = GOALS.get(concurrency, (None, None))
        add, plugin = row["add_chain"], row["add_podnet"]
        at = f"{profile}: ADD, {concurrency} at once"
        out.append(Row(f"{at}, p50", add["p50_ms"], "ms", p50_goal))
        out.append(
            Row(f"{at}, p99", add["p99_ms"], "ms", p99_goal, note=f"podnet alone p99 {plugin['p99_ms']} ms")
        )
        out.append(Row(f"{profile}: DEL, {concurrency} at once, p99", row["del_chain"]["p99_ms"], "ms"))
        cpu = row["add_cpu_ms"]
        out.append(
            Row(
                f"{profile}: CPU per ADD @{concurrency}",
                round(sum(cpu.values()), 1),
                "ms",
                note=", ".join(f"{k} {v}" for k, v in cpu.items()),
            )
        )
    return out


def run(quick: bool = False, step: Callable[[str], None] = lambda text: None, profiles=None) -> dict:  # type: ignore[no-untyped-def]
    chosen = profiles or (("calico",) if quick else ("calico", "cilium"))
    samples, table = {}, []
    for profile in chosen:
        levels = measure(profile, QUICK if quick else FULL, step)
        samples[profile] = {str(c): row for c, row in levels.items()}
        table += rows(profile, levels)
    return {"rows": table, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    from podnet.bench.scale import render

    ap = argparse.ArgumentParser(prog="python -m podnet.bench.scale_cni", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profiles", default=None, help="comma-separated: calico,cilium")
    ap.add_argument("-o", "--output", choices=["table", "json"], default="table")
    args = ap.parse_args(argv)
    profiles = tuple(p for p in (args.profiles or "").split(",") if p) or None
    out = run(args.quick, step=lambda text: print(text, file=sys.stderr, flush=True), profiles=profiles)
    doc = {"order": ["cni"], "cni": {"rows": [r.to_dict() for r in out["rows"]], "samples": out["samples"]}}
    print(json.dumps(doc, indent=1) if args.output == "json" else render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
