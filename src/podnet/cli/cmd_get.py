"""``podnet get KIND [NAME] [-n NS | -A] [-o yaml|json|wide] [-l SELECTOR]``."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from podnet.errors import PodnetError, ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="kind, plural, short name or plural.group (ippools, netpol, pods...)")
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("-n", "--namespace", default=None)
    parser.add_argument("-A", "--all-namespaces", action="store_true")
    parser.add_argument("-o", "--output", choices=["table", "wide", "yaml", "json", "name"], default="table")
    parser.add_argument("-l", "--selector", default=None, help="label selector, e.g. app=web,tier!=db")


_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


def label_filter(text: str | None) -> Callable[[dict], bool]:
    """kubectl's ``-l`` syntax (``a=b,c!=d,e,!f,g in (x,y),h notin (z)``) as a predicate on labels."""
    if not text:
        return lambda labels: True
    terms: list[Callable[[dict], bool]] = []
    pos = 0
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos:
            raise ValidationError([("--selector", f"cannot parse {text[pos:]!r}")])
        pos = m.end()
        if m["absent"]:
            terms.append(lambda labels, k=m["absent"]: k not in labels)
        elif m["op"] in ("=", "=="):
            terms.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) == v)
        elif m["op"] == "!=":
            terms.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) != v)
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            if m["setop"] == "in":
                terms.append(lambda labels, k=m["key"], vs=values: labels.get(k) in vs)
            else:
                terms.append(lambda labels, k=m["key"], vs=values: labels.get(k) not in vs)
        else:
            terms.append(lambda labels, k=m["key"]: k in labels)
    return lambda labels: all(t(labels) for t in terms)


def run(args: argparse.Namespace) -> int:
    from podnet.cli.context import resource_store
    from podnet.cli.printers import render, table
    from podnet.model import lookup

    rtype = lookup(args.kind)
    store = resource_store(args)
    namespace = None if (args.all_namespaces or not rtype.namespaced) else (args.namespace or "default")
    if args.names:
        resources = [store.get(rtype, name, namespace) for name in args.names]
    else:
        matches = label_filter(args.selector)
        resources = [r for r in store.list(rtype, namespace) if matches(r.metadata.labels or {})]
    docs = [r.to_dict() for r in resources]
    from podnet.calc.policy_status import POLICY_KINDS

    if rtype.key_name in POLICY_KINDS:
        _add_policy_status(store, rtype.key_name, docs)
    if args.output in ("yaml", "json"):
        print(render(docs, args.output, single=len(args.names) == 1))
    elif args.output == "name":
        for doc in docs:
            print(f"{rtype.plural}/{doc['metadata']['name']}")
    elif not docs:
        where = f" in {namespace} namespace" if namespace else ""
        print(f"No resources found{where}.")
    else:
        print(
            table(
                docs,
                rtype.kind,
                wide=args.output == "wide",
                namespaced=rtype.namespaced,
                all_namespaces=args.all_namespaces,
            )
        )
    return 0


def _add_policy_status(store, type_key: str, docs: list[dict]) -> None:
    """``status.conditions`` of each policy (every kind the agents compile) from the node agents'
    reports (see :mod:`podnet.calc.policy_status`); whatever a stored object says in ``status`` is
    replaced."""
    from podnet.calc.policy_status import POLICY_KINDS, PolicyReport, conditions_for, object_notes, policy_ref
    from podnet.model import parse_resource

    items, _ = store.store.list(store.layout.policy_status_prefix())
    reports = []
    for item in items:
        try:
            reports.append(PolicyReport.from_json(item.value))
        except (ValueError, KeyError, TypeError):
            continue  # a report we cannot read says nothing about any policy
    for doc in docs:
        meta = doc["metadata"]
        key = policy_ref(type_key, meta.get("namespace"), meta["name"])
        version = int(meta.get("resourceVersion") or 0)
        kind = POLICY_KINDS.get(type_key, "")
        try:
            notes = object_notes(kind, parse_resource(doc), reports) if kind.startswith("Cilium") else []
        except PodnetError:
            notes = []  # an object that does not validate: InvalidObject says why
        doc["status"] = {"conditions": conditions_for(str(key), version, reports, notes)}
