"""``podnet service list``: every service frontend with its backends, like ``cilium service list``.

The backends are computed from the datastore exactly as the agents compute them
(:func:`podnet.calc.services.service_plan`, EndpointSlice semantics), for no node in particular, so
traffic policies (``Local``) are shown as a flag rather than applied::

    ID   FRONTEND              TYPE        SERVICE   BACKENDS
    1    10.96.41.7:80/TCP     ClusterIP   np/web    1 => 10.244.1.2:8080 (np/web-1)
                                                     2 => 10.244.2.3:8080 (np/web-2)
    2    *:31380/TCP           NodePort    np/web    ...
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="service_command", metavar="SUBCOMMAND")
    sub.required = True
    show = sub.add_parser("list", help="service frontends and their backends (cilium service list)")
    show.add_argument("-n", "--namespace", help="only this namespace (default: every namespace)")
    show.add_argument("-o", "--output", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    from podnet.calc.services import service_plan
    from podnet.cli.context import cluster_cache, resource_store

    cache = cluster_cache(resource_store(args))
    only = args.namespace
    services = [s for key, s in cache.services.items() if not only or key.split("/")[0] == only]
    plan = service_plan(None, services, cache.pods.values())
    rows = frontend_rows(plan)
    if args.output == "json":
        print(json.dumps({"frontends": rows, "errors": plan.errors}, indent=2))
    else:
        print(render(rows, plan.errors))
    return 0


def frontend_rows(plan) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    rows = []
    for index, f in enumerate(plan.frontends, start=1):
        flags = [x for x, on in (("affinity", f.affinity_seconds > 0), ("local", f.local_only)) if on]
        rows.append(
            {
                "id": index,
                "service": f.service,
                "portName": f.port_name,
                "type": f.kind,
                "frontend": f"{f.ip or '*'}:{f.port}/{f.protocol}",
                "flags": flags,
                "backends": [
                    {"address": f"{b.ip}:{b.port}", "pod": b.pod, "node": b.node} for b in f.backends
                ],
            }
        )
    return rows


def render(rows: list[dict[str, Any]], errors: dict[str, str]) -> str:
    if not rows and not errors:
        return "No services."
    width = max([len(r["frontend"]) for r in rows] + [8])
    swidth = max([len(r["service"]) for r in rows] + [7])
    lines = [f"{'ID':<4} {'FRONTEND':<{width}}  {'TYPE':<10}  {'SERVICE':<{swidth}}  BACKENDS"]
    pad = " " * (4 + 1 + width + 2 + 10 + 2 + swidth + 2)
    for r in rows:
        kind = r["type"] + (f" ({', '.join(r['flags'])})" if r["flags"] else "")
        head = f"{r['id']:<4} {r['frontend']:<{width}}  {kind:<10}  {r['service']:<{swidth}}  "
        backends = [f"{i} => {b['address']} ({b['pod']})" for i, b in enumerate(r["backends"], start=1)]
        lines.append(head + (backends[0] if backends else "(no backends: connections are refused)"))
        lines += [pad + b for b in backends[1:]]
    lines += [f"{service}: not served: {why}" for service, why in sorted(errors.items())]
    return "\n".join(lines)
