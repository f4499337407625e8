"""What the resource verbs share: connecting to the datastore and reading ``-f`` inputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from podnet.errors import PodnetError, ValidationError

YAML_SUFFIXES = (".yaml", ".yml", ".json")


def resource_store(args: argparse.Namespace):
    import os

    from podnet.datastore import connect
    from podnet.datastore.resources import ResourceStore

    endpoints = args.etcd_endpoints or os.environ.get("PODNET_ETCD_ENDPOINTS")
    if not endpoints:
        from podnet.lab.cluster import running_endpoint

        endpoints = running_endpoint()  # a lab that is up, else etcd's default local endpoint
    return ResourceStore(connect(endpoints))


def read_inputs(paths: list[str]) -> list[tuple[str, str]]:
    """``(source name, text)`` for every ``-f`` argument: a file, a directory (its YAML/JSON
    files in name order, not recursive, like kubectl) or ``-`` for standard input."""
    out: list[tuple[str, str]] = []
    for item in paths:
        if item == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES and p.is_file())
            if not files:
                raise PodnetError(f"{item}: no .yaml, .yml or .json files in this directory")
            out.extend((str(p), p.read_text()) for p in files)
        elif path.is_file():
            out.append((str(path), path.read_text()))
        else:
            raise PodnetError(f"{item}: no such file or directory")
    return out


def load_resources(paths: list[str]):
    """Parse and validate every document of every input; raise before anything is written."""
    from podnet.errors import ValidationError
    from podnet.model import load_documents, parse_documents

    resources, problems, hint = [], [], None
    for source, text in read_inputs(paths):
        try:
            resources.extend(parse_documents(load_documents(text, source), source))
        except ValidationError as exc:
            problems.extend((f"{source} {path}".strip(), msg) for path, msg in exc.problems)
            hint = exc.hint
    if problems:
        raise ValidationError(problems, hint=hint, subject="nothing was applied")
    if not resources:
        raise PodnetError("no resources found in the input")
    return resources


def parse_port(text: str, protocols: tuple[str, ...] = ("TCP", "UDP")) -> tuple[int, str]:
    """``"80/TCP"`` → ``(80, "TCP")``; the protocol defaults to TCP and is case-insensitive."""
    port, _, proto = text.strip().partition("/")
    proto = (proto or "TCP").upper()
    if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in protocols:
        raise PodnetError(f"bad port {text!r}", hint=f"PORT/{'|'.join(protocols)}, e.g. 80/TCP")
    return int(port), proto


def cluster_cache(store):  # type: ignore[no-untyped-def]
    """The resources and endpoint records read into a ClusterCache, as an agent's watch sees them."""
    from podnet.calc.cluster import ClusterCache

    layout = store.layout
    resources, rev1 = store.store.list(layout.resources_prefix())
    endpoints, rev2 = store.store.list(layout.endpoints_prefix())
    cache = ClusterCache(layout)
    cache.reset([*resources, *endpoints], max(rev1, rev2))
    return cache


def in_namespace(resources: Sequence, namespace: str | None) -> list:
    """``resources`` with namespaced ones that name no namespace placed in ``namespace``; one
    that names another is refused, in kubectl's words, before anything is written."""
    if namespace is None:
        return list(resources)
    placed, problems = [], []
    for r in resources:
        if not r.NAMESPACED:
            placed.append(r)
        elif r.metadata.namespace is None:
            placed.append(r.with_namespace(namespace))
        elif r.metadata.namespace != namespace:
            problems.append(
                (
                    r.describe(),
                    f'the namespace from the provided object "{r.metadata.namespace}" does not match the '
                    f"namespace \"{namespace}\". You must pass '--namespace={r.metadata.namespace}' "
                    "to perform this operation.",
                )
            )
        else:
            placed.append(r)
    if problems:
        raise ValidationError(problems, subject="nothing was applied")
    return placed
