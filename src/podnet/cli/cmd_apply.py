"""``podnet apply -f FILE|DIR|-``: validate everything, then write it all in one transaction."""

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
    parser.add_argument("--dry-run", action="store_true", help="validate only, write nothing")


def describe(resource, rtype) -> str:
    return f"{rtype.plural}/{resource.metadata.name}" if rtype else resource.metadata.name


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import load_resources, resource_store
    from podnet.model import resource_type_for

    resources = load_resources(args.filename)
    if args.dry_run:
        for r in resources:
            print(f"{describe(r, resource_type_for(r.api_version, r.kind))} valid (dry run)")
        return 0
    for result in resource_store(args).apply(resources):
        r = result.resource
        print(f"{describe(r, resource_type_for(r.api_version, r.kind))} {result.action}")
    return 0
