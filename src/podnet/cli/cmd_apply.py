"""``podnet apply -f FILE|DIR|- [-n NS]``: validate everything, then write it all in one transaction.

As ``kubectl apply``: ``-n`` puts namespaced documents that name no namespace in NS and refuses one
that names another (cluster-scoped kinds ignore it); an existing object keeps what the system wrote
and the manifest leaves out, and each object is reported ``created``, ``configured`` or
``unchanged`` (see :mod:`podnet.datastore.update_rules`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="a YAML/JSON file (multi-document), a directory of them, or - for stdin",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="the namespace of namespaced documents that name none (default: default)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate only, write nothing")


def describe(resource, rtype) -> str:
    return f"{rtype.plural}/{resource.metadata.name}" if rtype else resource.metadata.name


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import in_namespace, load_resources, resource_store
    from podnet.model import resource_type_for

    resources = in_namespace(load_resources(args.filename), args.namespace)
    if args.dry_run:
        for r in resources:
            print(f"{describe(r, resource_type_for(r.api_version, r.kind))} valid (dry run)")
        return 0
    for result in resource_store(args).apply(resources):
        r = result.resource
        print(f"{describe(r, resource_type_for(r.api_version, r.kind))} {result.action}")
    return 0
