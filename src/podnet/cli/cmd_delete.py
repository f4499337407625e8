"""``podnet delete KIND NAME... [-n NS]`` or ``podnet delete -f FILE``."""

from __future__ import annotations

import argparse

from podnet.errors import PodnetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?")
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    parser.add_argument("--ignore-not-found", action="store_true")


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import in_namespace, load_resources, resource_store
    from podnet.errors import NotFoundError
    from podnet.model import lookup, resource_type_for

    store = resource_store(args)
    targets = []
    if args.filename:
        if args.kind:
            raise PodnetError("give either KIND NAME or -f FILE, not both")
        for r in in_namespace(load_resources(args.filename), args.namespace):
            targets.append((resource_type_for(r.api_version, r.kind), r.metadata.name, r.metadata.namespace))
    else:
        if not args.kind or not args.names:
            raise PodnetError("nothing to delete", hint="podnet delete KIND NAME, or podnet delete -f FILE")
        rtype = lookup(args.kind)
        targets = [(rtype, name, args.namespace) for name in args.names]
    missing = 0
    for rtype, name, namespace in targets:
        try:
            store.delete(rtype, name, namespace)
            print(f"{rtype.plural}/{name} deleted")
        except NotFoundError:
            if not args.ignore_not_found:
                raise
            missing += 1
    return 0
