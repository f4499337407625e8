"""``podnet identity list|get``: security identities, like ``cilium-dbg identity list|get``.

The reserved identities first (host 1 … ingress 8), then every allocated cluster identity with its
labels, one per line under its number, as Cilium prints them::

    ID     LABELS
    1      reserved:host
    ...
    48213  k8s:app=web
           k8s:io.cilium.k8s.policy.cluster=default
           k8s:io.kubernetes.pod.namespace=shop

``get ID`` shows one (exit 3 when there is none); ``-o json`` adds the nodes referencing each.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="identity_verb", metavar="VERB")
    verbs.required = True
    show = verbs.add_parser("list", help="every identity: reserved, then allocated")
    show.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get = verbs.add_parser("get", help="one identity by number")
    get.add_argument("id", type=int)
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")


def identities(store: Any) -> list[dict[str, Any]]:
    """Reserved and allocated identities as rows: ``{"id", "labels", "nodes"}``."""
    from podnet.datastore.identity_alloc import list_identities, references
    from podnet.model.identity import RESERVED, LabelSet

    rows = [
        {"id": n, "labels": list(LabelSet.reserved(name).labels), "nodes": []} for name, n in RESERVED.items()
    ]
    refs = references(store.store, store.layout)
    for number, labels in list_identities(store.store, store.layout).items():
        rows.append({"id": number, "labels": list(labels.labels), "nodes": sorted(refs.get(number, []))})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    width = max([len("ID"), *(len(str(r["id"])) for r in rows)])
    lines = [f"{'ID':<{width}}   LABELS"]
    for row in rows:
        for index, label in enumerate(row["labels"] or ["(none)"]):
            lines.append(f"{str(row['id']) if index == 0 else '':<{width}}   {label}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import resource_store
    from podnet.errors import NotFoundError

    rows = identities(resource_store(args))
    if args.identity_verb == "get":
        rows = [r for r in rows if r["id"] == args.id]
        if not rows:
            raise NotFoundError(f"identity {args.id} not found", hint="podnet identity list shows them all")
    if args.output == "json":
        print(json.dumps(rows[0] if args.identity_verb == "get" else rows, indent=2))
    else:
        print(_table(rows))
    return 0
