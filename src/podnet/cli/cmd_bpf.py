"""``podnet bpf prog list``: the BPF programs on tc hooks, like ``cilium bpf prog list``.

Without ``--node`` it lists the current network namespace (the agent's node); with ``--node`` the
lab node's namespace. One row per attachment: device, hook direction, tc pref, program name, id,
tag, and the maps the program uses with their pinned paths.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bpf_object", metavar="OBJECT")
    sub.required = True
    prog = sub.add_parser("prog", help="BPF programs")
    verbs = prog.add_subparsers(dest="bpf_verb", metavar="VERB")
    verbs.required = True
    show = verbs.add_parser("list", help="programs attached to tc hooks (device, direction, maps)")
    show.add_argument("--node", default=None, help="a lab node (default: this network namespace)")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    import json

    from podnet.dataplane.bpf import list_programs

    netns = None
    if args.node:
        from podnet.lab.cluster import lab_names

        netns = lab_names().node_ns(args.node)
    progs = list_programs(netns)
    if args.output == "json":
        print(json.dumps(progs, indent=2))
    else:
        print(render_table(progs), end="")
    return 0


def _maps(prog: dict[str, Any]) -> str:
    parts = []
    for m in prog.get("maps", []):
        pins = m.get("pinned") or []
        parts.append(f"{m.get('name')}({m.get('id')}){' ' + pins[0] if pins else ''}")
    return ", ".join(parts) or "-"


def render_table(progs: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf prog list`` prints."""
    if not progs:
        return "no BPF programs on tc hooks\n"
    header = ("DEVICE", "DIRECTION", "PREF", "NAME", "ID", "TAG", "MAPS")
    rows = [
        (
            str(p.get("device")),
            str(p.get("direction")),
            "-" if p.get("pref") is None else str(p["pref"]),
            str(p.get("name") or "-"),
            str(p.get("id")),
            str(p.get("tag") or "-"),
            _maps(p),
        )
        for p in progs
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in (header, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"
