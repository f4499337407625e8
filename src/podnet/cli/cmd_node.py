"""``podnet node status [NODE]``: the node's BGP sessions, like ``calicoctl node status``.

Asks the node's BIRD over its control socket (``show protocols all``) and keeps the peerings
(``Mesh_``/``Node_``/``Global_<ip>`` protocols), typed by their name prefix::

    Calico process is running.

    IPv4 BGP status
    +--------------+-------------------+-------+----------+-------------+
    | PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |
    +--------------+-------------------+-------+----------+-------------+
    | 10.77.0.12   | node-to-node mesh | up    | 23:30:04 | Established |
    +--------------+-------------------+-------+----------+-------------+

    IPv6 BGP status
    No IPv6 peers found.

The socket: ``--socket PATH``; else, with ``NODE``, that lab node's ``<node dir>/bird.ctl`` (lab
prefix from ``--lab-prefix`` or ``$PODNET_LAB_PREFIX``); else, on a host with that lab up, every lab
node's, each headed by ``=== NODE ===``; else ``/var/run/podnet/bird.ctl`` (on a node).
SINCE is BIRD's time for a session that changed today, its date otherwise (as BIRD 1 shows it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

DEFAULT_SOCKET = "/var/run/podnet/bird.ctl"
HEADERS = ("PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    sub.required = True
    status = sub.add_parser("status", help="BGP peers of a node and their state (calicoctl node status)")
    status.add_argument("node", nargs="?", help="lab node (default: this host's BIRD)")
    status.add_argument("--socket", help=f"BIRD control socket (default: lab node's, or {DEFAULT_SOCKET})")
    status.add_argument("--lab-prefix", help="the lab's prefix (default: $PODNET_LAB_PREFIX or pn-)")
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    if args.node:
        from podnet.lab.cluster import lab_names
        from podnet.lab.naming import LabError

        names = lab_names(args.lab_prefix)
        node_dir = names.node_dir(args.node)
        if not os.path.isdir(node_dir):
            raise LabError(
                f"no node {args.node} in the lab with prefix {names.prefix}",
                hint="podnet lab status lists the nodes; --lab-prefix or $PODNET_LAB_PREFIX picks the lab",
            )
        return os.path.join(node_dir, "bird.ctl")
    return DEFAULT_SOCKET


def format_since(since: str, today: dt.date | None = None) -> str:
    """``2024-05-01 23:30:04`` → ``23:30:04`` if that is today, else ``2024-05-01``."""
    date, _, time = since.partition(" ")
    if not time:
        return since
    today = today or dt.date.today()
    return time if date == today.isoformat() else date


def peer_rows(protocols: list[dict], today: dt.date | None = None) -> list[tuple[str, ...]]:
    """The IPv4 table's rows from parsed ``show protocols``: peerings only, sorted by address."""
    import ipaddress

    from podnet.calc.bird import parse_protocol_name

    rows = []
    for p in protocols:
        parsed = parse_protocol_name(p["name"])
        if parsed is None or p.get("proto") != "BGP":
            continue
        peer_type, ip, port = parsed
        address = f"{ip}:{port}" if port else ip
        info = p.get("info", "")
        rows.append(
            (
                ipaddress.ip_address(ip),
                port or 0,
                (address, peer_type, p["state"], format_since(p["since"], today), info),
            )
        )
    return [r[2] for r in sorted(rows)]


def render_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A go-pretty style box table (what calicoctl prints): centred headers, left-aligned cells."""
    from podnet.cli.printers import align

    return "\n".join(align([headers, *rows], box=True))


def format_status(protocols: list[dict], today: dt.date | None = None) -> str:
    rows = peer_rows(protocols, today)
    out = ["Calico process is running.", "", "IPv4 BGP status"]
    out.append(render_table(HEADERS, rows) if rows else "No IPv4 peers found.")
    out += ["", "IPv6 BGP status", "No IPv6 peers found.", ""]
    return "\n".join(out)


def lab_sockets(args: argparse.Namespace) -> dict[str, str] | None:
    """Without NODE or ``--socket``, on a host with a lab up (the lab the other lab commands pick:
    ``--lab-prefix``, ``$PODNET_LAB_PREFIX`` or ``pn-``): every lab node's BIRD socket. Else None."""
    if args.socket or args.node:
        return None
    from podnet.cli.cmd_monitor import _natural
    from podnet.lab.cluster import lab_names
    from podnet.lab.state import LabState

    names = lab_names(args.lab_prefix)
    state = LabState(names.state_dir)
    if not state.exists():
        return None
    nodes = sorted(state.meta().get("nodes") or {}, key=_natural)
    return {node: os.path.join(names.node_dir(node), "bird.ctl") for node in nodes}


def query(path: str) -> tuple[list[dict] | None, str]:
    """BIRD's protocols at ``path``, or None and why it did not answer."""
    from podnet.dataplane.bird import BirdError, show_protocols

    try:
        return show_protocols(path), ""
    except BirdError as exc:
        return None, exc.message


def run(args: argparse.Namespace) -> int:
    """One BIRD (NODE, ``--socket``, this host's), or on a lab host every node's, each headed by
    its name (``calicoctl node status`` run on each node). 1 if a BIRD does not answer."""
    import json

    lab = lab_sockets(args)
    targets: dict[str | None, str] = dict(lab) if lab is not None else {None: socket_path(args)}
    results = {node: query(path) for node, path in targets.items()}
    if args.output == "json" and all(p is not None for p, _ in results.values()):
        bgp = {n: [x for x in p or [] if x.get("proto") == "BGP"] for n, (p, _) in results.items()}
        print(json.dumps(bgp if lab is not None else bgp[None], indent=2))
        return 0
    for node, path in targets.items():
        protocols, error = results[node]
        if node is not None:
            print(f"=== {node} ===")
        if protocols is None:
            print("Calico process is not running.", flush=True)
            hint = " (lab nodes run BIRD when the lab is up with --bgp)" if node is not None else ""
            print(f"no answer from BIRD at {path}: {error}{hint}", file=sys.stderr, flush=True)
            if node is not None:
                print()
        else:
            print(format_status(protocols), flush=True)
    return 0 if all(p is not None for p, _ in results.values()) else 1
