"""``podnet bench --scale``: the scale sections, each figure beside its goal (issue 18).

    podnet bench --scale [--sections cni,memory,...] [--quick] [--out DIR]

Sections (each its own module, each runnable alone as ``python -m podnet.bench.scale_<name>``):

- ``cni``: CNI ADD/DEL through the node's real chain, 1, 10 and 50 at once, and the CPU each ADD
  costs per process (:mod:`podnet.bench.scale_cni`).
- ``services``: 10,000 Services x 2 endpoints on a 3-node lab per profile: cold sync to the kernel,
  one Service added, conn/s through a ClusterIP with N vs 1 Services, agent RSS
  (:mod:`podnet.bench.scale_services`).
- ``memory``: agent RSS idle, with 100 pods and 1,000 policies, and per pod in the cluster up to
  50,000 datastore-only pods, with tracemalloc's top allocation sites (:mod:`podnet.bench.scale_memory`).
- ``etcd``: a 3-member etcd cluster, a follower killed, the leader killed, a member partitioned,
  each under writes, a policy change and IPAM under fire (:mod:`podnet.bench.scale_etcd`).
- ``nodes``: 10, 100 and 1,000 simulated nodes (30 pods each) against a lab's 3 real agents: the
  time and memory of routes, BIRD configuration (route reflectors, checked by ``bird -p``), VXLAN
  FDB and policy, etcd watch bytes per change, route convergence after a join; a growth table and
  ``nodes_growth.png`` (:mod:`podnet.bench.scale_nodes`).

A section returns ``{"rows": [Row...], "samples": {...}}``; the rows make the table (figure, goal,
measured, met), the samples go to ``bench.json`` raw. A section that fails is reported as such and
the others still run.
"""

from __future__ import annotations

import json
import operator
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

SECTIONS = ("cni", "services", "memory", "etcd", "nodes")
_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Row:
    """One figure: ``value`` (None: not measured) against ``goal`` (``op`` is "<=" or ">=")."""

    figure: str
    value: float | None
    unit: str = ""
    goal: float | None = None
    op: str = "<="
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.goal is None or self.value is None:
            return None
        return bool(_OPS[self.op](self.value, self.goal))

    def to_dict(self) -> dict:
        return asdict(self) | {"met": self.met}


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def render(results: dict) -> str:
    """The scale table: one block per section, ``figure | goal | measured | met``."""
    lines = []
    for name in results.get("order", []):
        section = results[name]
        lines.append(f"== {name}")
        if "error" in section:
            lines.append(f"   failed: {section['error']}")
            continue
        width = max((len(r["figure"]) for r in section["rows"]), default=10)
        lines.append(f"   {'figure':{width}}  {'goal':>12}  {'measured':>12}  met")
        for r in section["rows"]:
            goal = (
                ""
                if r["goal"] is None
                else f"{r['op']} {_number(r['goal'])}{(' ' + r['unit']) if r['unit'] else ''}"
            )
            value = f"{_number(r['value'])}{(' ' + r['unit']) if r['unit'] else ''}"
            met = {True: "yes", False: "NO", None: ""}[r["met"]]
            lines.append(f"   {r['figure']:{width}}  {goal:>12}  {value:>12}  {met}")
            if r.get("note"):
                lines.append(f"   {'':{width}}  {r['note']}")
    return "\n".join(lines)


def _section(name: str) -> Callable[..., dict]:
    from importlib import import_module

    return import_module(f"podnet.bench.scale_{name}").run  # type: ignore[no-any-return]


def run(sections: list[str], quick: bool, step: Callable[[str], None] = lambda text: None) -> dict:
    """Run ``sections`` in order; a failing one is recorded with its error and the rest go on."""
    results: dict = {"order": list(sections), "quick": quick}
    for name in sections:
        started = time.monotonic()
        step(f"scale: {name}")
        try:
            out = _section(name)(quick=quick, step=step)
            results[name] = {
                "rows": [r.to_dict() for r in out["rows"]],
                "samples": out.get("samples", {}),
                "seconds": round(time.monotonic() - started, 1),
            }
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def write(results: dict, out: str) -> str:
    """``<out>/bench.json``, and the files a section module writes itself (its ``write_files``,
    e.g. a plot), for each section that succeeded."""
    from importlib import import_module

    os.makedirs(out, exist_ok=True)
    for name in results.get("order", []):
        section = results.get(name) or {}
        writer = getattr(import_module(f"podnet.bench.scale_{name}"), "write_files", None)
        if writer is not None and "error" not in section:
            section["files"] = writer(section, out)
    path = os.path.join(out, "bench.json")
    with open(path, "w") as f:
        json.dump({"scale": results}, f, indent=1)
        f.write("\n")
    return path
