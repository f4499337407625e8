"""From YAML text to validated resources and back.

    text ──load_documents──▶ [dict, ...] ──parse_documents──▶ [Resource, ...] ──dump_yaml──▶ text
                                  │                                  ▲
                                  └────────parse_resource────────────┘   (one document)

- ``load_documents`` reads YAML the way Kubernetes tooling sees it: every document of a stream,
  empty ones skipped, ``kind: List`` expanded into its items. Timestamps stay strings (not datetime)
  and a key repeated in one mapping is an error rather than a silent overwrite. A syntax error names
  the source and the line.
- ``parse_documents`` validates *every* document before returning, and raises one
  :class:`DocumentsError` (a ValidationError) listing every problem of every document, each prefixed
  with its 1-based document number, so a caller can reject a whole file before writing anything.
- A document that lacks ``metadata.name`` but carries a ``spec`` gets a hint: add the name (and any
  required spec field), or, to change an existing object, merge-patch it with the spec it gave
  (``podnet patch ippool default-ipv4-ippool -p '{"spec": {...}}'``).
- ``dump_yaml`` writes block-style multi-document YAML with keys in the order apiVersion, kind,
  metadata, spec, status. ``parse(to_dict(x)) == x`` for every resource.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from podnet.errors import ValidationError
from podnet.model.registry import resource_type_for
from podnet.model.resource import Resource, describe_document

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """SafeLoader without timestamp parsing, rejecting duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
            except TypeError:  # unhashable key: let the base constructor report it
                pass
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as ``|`` blocks."""


# Line breaks to YAML that PyYAML writes raw inside quotes, where the loader folds them: '\x85' would
# read back as ' '. Double quotes escape them (\N, \L, \P).
_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if any(b in value for b in _BREAKS) else "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


class DocumentsError(ValidationError):
    """Problems in one or more documents of a file; ``errors`` keeps each document's own error."""

    def __init__(self, errors: list[tuple[int, ValidationError]], source: str) -> None:
        self.errors = errors
        problems: list[tuple[str, str]] = []
        hints: list[str] = []
        for index, error in errors:
            label = f"document {index}"
            if error.subject:
                label += f" ({error.subject.removesuffix(' (no name)')})"
            for path, message in error.problems:
                problems.append((f"{label} {path}" if path else label, message))
            if error.hint:
                hints.append(f"document {index}: {error.hint}" if len(errors) > 1 else error.hint)
        super().__init__(problems, hint="; ".join(hints) or None, subject=source)


def load_documents(text: str, source: str = "<input>") -> list[dict[str, Any]]:
    """Every non-empty YAML (or JSON) document of ``text``, with ``kind: List`` expanded."""
    try:
        raw = list(yaml.load_all(text, Loader=_Loader))  # _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "check the indentation and quoting around that line (YAML forbids tabs for indentation)"
        if "constructor for the tag '!" in problem:
            hint = "quote values that start with '!', such as Calico selectors: nodeSelector: \"!has(edge)\""
        raise ValidationError([(where, problem or "invalid YAML")], hint=hint, subject=source) from None
    except yaml.YAMLError as exc:
        raise ValidationError([("", f"invalid YAML: {exc}")], subject=source) from None
    except RecursionError:  # PyYAML's composer recurses per nesting level: "[[[[..." exhausts the stack
        raise ValidationError([("", "invalid YAML: nested too deeply")], subject=source) from None
    documents: list[dict[str, Any]] = []
    problems: list[tuple[str, str]] = []
    for index, document in enumerate(raw, start=1):
        if document is None:
            continue
        if not isinstance(document, dict):
            problems.append((f"document {index}", "must be a mapping with apiVersion, kind, metadata, ..."))
        elif document.get("kind") == "List" and "items" in document:
            items = document["items"] or []
            if not isinstance(items, list):
                problems.append((f"document {index} items", "must be a list"))
                continue
            for n, item in enumerate(items):
                if isinstance(item, dict):
                    documents.append(item)
                else:
                    problems.append((f"document {index} items[{n}]", "must be a mapping"))
        else:
            documents.append(document)
    if problems:
        raise ValidationError(problems, subject=source)
    return documents


_EXAMPLE_NAMES = {"IPPool": "default-ipv4-ippool", "BGPConfiguration": "default"}
_EXAMPLE_VALUES = {
    ("IPPool", "spec.cidr"): "192.168.0.0/16",
    ("BGPPeer", "spec.peerIP"): "192.0.2.1",
    ("BGPPeer", "spec.asNumber"): "64512",
    ("NetworkPolicy", "spec.podSelector"): "{}",
}


def _missing_name_hint(
    doc: Mapping[str, Any], kind: str, singular: str, problems: list[tuple[str, str]]
) -> str | None:
    """The fix for a document without metadata.name: add it, or patch an existing object."""
    if ("metadata.name", "required") not in problems:
        return None
    spec = doc.get("spec")
    if not isinstance(spec, Mapping) or not spec:
        return None
    missing = [path for path, message in problems if path.startswith("spec.") and message == "required"]
    name = _EXAMPLE_NAMES.get(kind, "<name>")
    fields = " and ".join(["metadata.name", *missing])
    examples = [f"metadata.name: {name}"] + [
        f"{path}: {_EXAMPLE_VALUES[(kind, path)]}" for path in missing if (kind, path) in _EXAMPLE_VALUES
    ]
    metadata = doc.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    patch = json.dumps({"spec": spec})
    command = f"podnet patch {singular} {name}"
    if isinstance(namespace, str) and namespace:
        command += f" -n {namespace}"
    command += f" -p {shlex.quote(patch)}"
    return (
        f"add {fields} to create the {kind} (e.g. {', '.join(examples)}); "
        f"to change an existing {kind} instead, merge-patch it: {command}"
    )


def _document_name(doc: Mapping[str, Any]) -> str | None:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) and name else None


def parse_resource(doc: Mapping[str, Any]) -> Resource:
    """Validate one document and return its typed resource.

    Dispatches on apiVersion and kind through the registry. Raises ValidationError listing every
    problem, with a subject such as ``IPPool "pool-a"`` (or ``IPPool (no name)``) and, where one
    helps, a hint.
    """
    if not isinstance(doc, Mapping):
        raise ValidationError([("", "a document must be a mapping with apiVersion, kind, metadata, ...")])
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    subject = describe_document(kind if isinstance(kind, str) else None, _document_name(doc))
    problems: list[tuple[str, str]] = []
    for field, value in (("apiVersion", api_version), ("kind", kind)):
        if value is None or value == "":
            problems.append((field, "required"))
        elif not isinstance(value, str):
            problems.append((field, "must be a string"))
    if problems:
        raise ValidationError(problems, subject=subject)
    assert isinstance(api_version, str) and isinstance(kind, str)
    try:
        resource_type = resource_type_for(api_version, kind)
    except ValidationError as exc:
        raise ValidationError(exc.problems, hint=exc.hint, subject=subject) from None
    try:
        return resource_type.model_cls.from_dict(doc)
    except ValidationError as exc:
        hint = exc.hint or _missing_name_hint(doc, kind, resource_type.singular, exc.problems)
        raise ValidationError(exc.problems, hint=hint, subject=subject) from None


def parse_documents(docs: Iterable[Mapping[str, Any]], source: str = "<input>") -> list[Resource]:
    """Validate every document; raise one DocumentsError listing all problems of all of them."""
    resources: list[Resource] = []
    errors: list[tuple[int, ValidationError]] = []
    for index, doc in enumerate(docs, start=1):
        try:
            resources.append(parse_resource(doc))
        except ValidationError as exc:
            errors.append((index, exc))
    if errors:
        raise DocumentsError(errors, source)
    return resources


def parse_yaml(text: str, source: str = "<input>") -> list[Resource]:
    """``parse_documents(load_documents(text, source), source)``."""
    return parse_documents(load_documents(text, source), source)


def resource_from_stored(data: Mapping[str, Any]) -> Resource:
    """Re-read an object the datastore holds (it was written by ``Resource.to_dict``)."""
    try:
        return parse_resource(data)
    except ValidationError as exc:
        raise ValidationError(
            exc.problems,
            hint="the stored object no longer validates; it may predate a stricter podnet. "
            "Fix it with podnet patch or replace it",
            subject=f"stored {exc.subject}" if exc.subject else "stored object",
        ) from None


def dump_yaml(resources: Iterable[Resource | Mapping[str, Any]]) -> str:
    """Block-style multi-document YAML; keys in the order apiVersion, kind, metadata, spec, status."""
    dicts = [r.to_dict() if isinstance(r, Resource) else dict(r) for r in resources]
    return yaml.dump_all(
        dicts, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )
