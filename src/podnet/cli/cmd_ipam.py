"""``podnet ipam``: show, check, release, gc, assign, configure (the ``calicoctl ipam`` verbs).

``check`` exits 1 when it finds problems, so scripts and CI can use it as a gate.
"""

from __future__ import annotations

import argparse

from podnet.errors import PodnetError, ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ipam_command", metavar="SUBCOMMAND")
    sub.required = True
    show = sub.add_parser("show", help="pool and block usage")
    show.add_argument("--show-blocks", action="store_true")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    check = sub.add_parser("check", help="leaks, duplicates, blocks of vanished nodes (exit 1 if any)")
    check.add_argument("-o", "--output", choices=["text", "json"], default="text")
    release = sub.add_parser("release", help="release addresses by handle or by address")
    release.add_argument("--handle", action="append", default=[])
    release.add_argument("--ip", action="append", default=[])
    gc = sub.add_parser("gc", help="release confirmed leaks (seen leaked on two passes)")
    gc.add_argument(
        "--grace-seconds",
        type=float,
        default=0.0,
        help="only release leaks first seen this long ago (default 0: now)",
    )
    gc.add_argument("--interval", type=float, default=1.0, help="seconds between the two passes")
    assign = sub.add_parser("assign", help="allocate addresses by hand (what the CNI plugin does per pod)")
    assign.add_argument("--node", required=True)
    assign.add_argument("--handle", required=True)
    assign.add_argument("--pod", default=None, help="NAMESPACE/NAME of the owning pod")
    assign.add_argument("--pool", action="append", default=None, help="pool name or CIDR (repeatable)")
    assign.add_argument("--ip", default=None, help="a specific address instead of auto-assignment")
    assign.add_argument("--num", type=int, default=1)
    configure = sub.add_parser("configure", help="IPAM configuration (strict affinity, block limit)")
    configure.add_argument("--strictaffinity", choices=["true", "false"], default=None)
    configure.add_argument("--max-blocks-per-host", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import resource_store
    from podnet.ipam import IPAM

    resources = resource_store(args)
    ipam = IPAM(resources.store, resources.layout)
    return {
        "show": _show,
        "check": _check,
        "release": _release,
        "gc": _gc,
        "assign": _assign,
        "configure": _configure,
    }[args.ipam_command](args, ipam, resources)


def _pools(resources):
    from podnet.ipam import pool_from_resource
    from podnet.model import lookup

    return [pool_from_resource(p) for p in resources.list(lookup("ippools"))]


def _percent(part: int, whole: int) -> str:
    return f"{part} ({round(100 * part / whole) if whole else 0}%)"


def _show(args, ipam, resources) -> int:
    import json

    usage = ipam.usage(_pools(resources))
    if args.output == "json":
        print(
            json.dumps(
                [
                    {
                        "name": u.name,
                        "cidr": u.cidr,
                        "disabled": u.disabled,
                        "size": u.size,
                        "allocated": u.allocated,
                        "free": u.free,
                        "blocks": [b.__dict__ for b in u.blocks] if args.show_blocks else None,
                    }
                    for u in usage
                ],
                indent=2,
            )
        )
        return 0
    rows = [("GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE", "AFFINITY")]
    for u in usage:
        rows.append(
            (
                "IP Pool",
                u.cidr,
                str(u.size),
                _percent(u.allocated, u.size),
                _percent(u.free, u.size),
                "(disabled)" if u.disabled else "",
            )
        )
        if args.show_blocks:
            for b in u.blocks:
                rows.append(
                    (
                        "Block",
                        b.cidr,
                        str(b.size),
                        _percent(b.allocated, b.size),
                        _percent(b.size - b.allocated, b.size),
                        b.node or "(none)",
                    )
                )
    if len(rows) == 1:
        print("No IP pools found.")
        return 0
    from podnet.cli.printers import align

    print("\n".join(align(rows)))
    return 0


def _live(ipam, resources):
    from podnet.ipam.liveness import ClusterView

    view = ClusterView.read(resources)
    return view, view.live_handles(ipam.snapshot().allocations())


def _check(args, ipam, resources) -> int:
    import json

    view, live = _live(ipam, resources)
    report = ipam.check(live, view.nodes, pools=_pools(resources))
    print(json.dumps(report.to_dict(), indent=2) if args.output == "json" else report.summary())
    return 0 if report.ok else 1


def _address(text: str) -> str:
    """An ``--ip`` value as an address, or a ValidationError naming the flag (not exit 70)."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValidationError([("--ip", f"{text!r} is not an IPv4 or IPv6 address")]) from None


def _release(args, ipam, resources) -> int:
    if not args.handle and not args.ip:
        raise PodnetError("nothing to release", hint="give --handle HANDLE and/or --ip ADDRESS")
    addresses = [_address(ip) for ip in args.ip]  # all checked before anything is released
    for handle in args.handle:
        released = ipam.release_handle(handle)
        print(f"handle {handle}: released {', '.join(released) if released else 'nothing (unknown handle)'}")
    if addresses:
        released = ipam.release_ips(addresses)
        print(f"released {', '.join(released) if released else 'nothing'}")
    return 0


def _gc(args, ipam, resources) -> int:
    import time

    from podnet.ipam.liveness import ClusterView

    result = None
    for n in range(2):  # a leak is released only when two passes agree (Calico's rule)
        if n:
            time.sleep(args.interval)
        view = ClusterView.read(resources)
        live = view.live_handles(ipam.snapshot().allocations())

        def still_live(handle: str) -> bool:
            fresh = ClusterView.read(resources)
            return handle in fresh.live_handles(ipam.snapshot().allocations())

        result = ipam.gc(live, view.nodes, grace_seconds=args.grace_seconds, is_live=still_live)
    assert result is not None
    print(
        f"released {len(result.released_addresses)} addresses of {len(result.released_handles)} handles"
        + (f": {', '.join(result.released_handles)}" if result.released_handles else "")
    )
    for what, items in (
        ("blocks", result.released_blocks),
        ("affinities", result.deleted_affinities),
        ("empty handle records", result.deleted_handle_records),
    ):
        if items:
            print(f"removed {what}: {', '.join(items)}")
    for reason in result.skipped:
        print(f"kept {reason}")
    return 0


def _assign(args, ipam, resources) -> int:
    from podnet.ipam import select_pools
    from podnet.model import lookup

    node = resources.get(lookup("nodes"), args.node)
    attrs = {"node": args.node}
    if args.pod:
        namespace, _, name = args.pod.rpartition("/")
        attrs.update(namespace=namespace or "default", pod=name)
    pools = _pools(resources)
    if args.ip:
        print(ipam.assign_ip(_address(args.ip), args.handle, args.node, pools, attrs))
        return 0
    chosen = select_pools(pools, node.metadata.labels or {}, requested=args.pool)
    for address in ipam.auto_assign(args.handle, args.node, chosen, attrs, num=args.num):
        print(address)
    return 0


def _configure(args, ipam, resources) -> int:
    import dataclasses

    config = ipam.get_config()
    changes = {}
    if args.strictaffinity is not None:
        changes["strict_affinity"] = args.strictaffinity == "true"
    if args.max_blocks_per_host is not None:
        changes["max_blocks_per_host"] = args.max_blocks_per_host
    if changes:
        config = dataclasses.replace(config, **changes)
        ipam.set_config(config)
    print(f"strictAffinity: {str(config.strict_affinity).lower()}")
    print(f"maxBlocksPerHost: {config.max_blocks_per_host}")
    return 0
