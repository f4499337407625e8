"""``podnet bpf prog list`` and ``podnet bpf lb list``, like ``cilium bpf prog list`` / ``lb list``.

``prog list``: without ``--node`` it lists the current network namespace (the agent's node); with
``--node`` the lab node's namespace. One row per attachment: device, hook direction, tc pref,
program name, id, tag, and the maps the program uses with their pinned paths.

``lb list``: the socket load balancer's pinned maps (``podnet.dataplane.sock_lb``), one row per
service address then one per backend slot, as the programs see them::

    SERVICE ADDRESS      BACKEND ADDRESS (ID) (SLOT)
    10.96.0.10:80/TCP    0.0.0.0:0 (1) (0) [3 backends]
                         10.244.1.5:8080 (1) (1)

The pins of node N are ``<bpf dir>/<N>/sock_lb``: the lab's bpffs (``<state dir>/bpf``) with
``--node``, else ``/sys/fs/bpf/podnet/<this host's name>/sock_lb``; ``--pin-dir`` names it outright.
"""

from __future__ import annotations

import argparse
from typing import Any

from podnet.cli.printers import align


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bpf_object", metavar="OBJECT")
    sub.required = True
    prog = sub.add_parser("prog", help="BPF programs")
    verbs = prog.add_subparsers(dest="bpf_verb", metavar="VERB")
    verbs.required = True
    show = verbs.add_parser("list", help="programs attached to tc hooks (device, direction, maps)")
    show.add_argument("--node", default=None, help="a lab node (default: this network namespace)")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    lb = sub.add_parser("lb", help="socket load balancer maps (services and backends)")
    lb_verbs = lb.add_subparsers(dest="bpf_verb", metavar="VERB")
    lb_verbs.required = True
    lb_list = lb_verbs.add_parser("list", help="service addresses and their backend slots")
    lb_list.add_argument("--node", default=None, help="a lab node (default: this host's agent)")
    lb_list.add_argument("--pin-dir", default=None, help="the sock_lb pin directory (overrides --node)")
    lb_list.add_argument("-o", "--output", choices=["text", "table", "json"], default="text")


def lb_pin_dir(node: str | None, pin_dir: str | None = None) -> str:
    """Where node ``node``'s socket-LB maps are pinned (see the module docstring)."""
    import os
    import socket

    if pin_dir:
        return pin_dir
    if node:
        from podnet.lab.cluster import lab_names

        return os.path.join(lab_names().state_dir, "bpf", node, "sock_lb")
    return os.path.join("/sys/fs/bpf/podnet", socket.gethostname(), "sock_lb")


def run(args: argparse.Namespace) -> int:
    import json

    if args.bpf_object == "lb":
        from podnet.dataplane.sock_lb import list_services

        services = list_services(lb_pin_dir(args.node, args.pin_dir))
        if args.output == "json":
            print(json.dumps(services, indent=2))
        else:
            print(render_lb_table(services), end="")
        return 0

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
    return "".join(line + "\n" for line in align([header, *rows], gap="  "))


def render_lb_table(services: list[dict[str, Any]]) -> str:
    """Pure: the table ``podnet bpf lb list`` prints (``cilium bpf lb list``'s columns)."""
    if not services:
        return "no services in the socket load balancer maps\n"
    rows: list[tuple[str, str]] = []
    for svc in services:
        backends = svc.get("backends") or []
        notes = [
            f"{len(backends)} backend{'s' if len(backends) != 1 else ''}"
            if backends
            else "no backend: refused"
        ]
        if svc.get("affinity_seconds"):
            notes.append(f"affinity {svc['affinity_seconds']}s")
        rows.append((str(svc["service"]), f"0.0.0.0:0 ({svc['id']}) (0) [{', '.join(notes)}]"))
        rows.extend(("", f"{b['address']} ({svc['id']}) ({b['slot']})") for b in backends)
    header = ("SERVICE ADDRESS", "BACKEND ADDRESS (ID) (SLOT)")
    return "".join(line + "\n" for line in align([header, *rows], gap="  "))
