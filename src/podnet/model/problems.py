"""From pydantic's error list to podnet problems: ``(field path, plain message)`` pairs.

pydantic reports a failure as a ``loc`` tuple (``("spec", "ingress", 0, "ports", 1, "port")``), an
error ``type`` (``missing``, ``extra_forbidden``, ``literal_error``, ...) and an English message
written for Python programmers. podnet users write YAML, so this module turns each error into

    ("spec.ingress[0].ports[1].port", "must be between 1 and 65535")

with the YAML names (aliases) in the path, list indices as ``[i]``, map keys as ``[key]`` (the
Kubernetes ``field.Path`` convention) and no pydantic jargon or URLs in the message.

Cross-field checks live in validators. A validator that finds several problems collects them in a
:class:`Problems` and raises them together; each carries a path relative to the object that was
being validated, which :func:`problems_from_pydantic` appends to the pydantic location. That is how
one document yields *all* of its problems rather than only the first.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import pydantic
from pydantic_core import PydanticCustomError

PROBLEMS_ERROR_TYPE = "podnet_problems"


class Problems:
    """Collects ``(relative path, message)`` pairs inside a validator, raised together at the end.

    A relative path is written in YAML names: ``"blockSize"``, ``"ports[1].name"``, ``"[app]"``
    (a map key) or ``""`` (the object itself).
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((printable(path), printable(message)))

    def extend(self, prefix: str, items: Iterable[tuple[str, str]]) -> None:
        for path, message in items:
            self.add(join_path(prefix, path), message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise every collected problem as one pydantic error (a no-op when there are none)."""
        if self.items:
            summary = "; ".join(f"{p}: {m}" if p else m for p, m in self.items)
            raise PydanticCustomError(
                PROBLEMS_ERROR_TYPE, "{summary}", {"summary": summary, "problems": tuple(self.items)}
            )


def printable(text: str) -> str:
    """``text`` with lone surrogates (a YAML ``"\\uD800"`` key) escaped as ``\\ud800``: such a key
    still gets named in a path, and pydantic (and a UTF-8 terminal) can carry the result."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def join_path(base: str, relative: str) -> str:
    """Join two field paths: ``join_path("spec", "ports[0]") == "spec.ports[0]"``."""
    if not base:
        return relative
    if not relative:
        return base
    if relative.startswith("["):
        return base + relative
    return f"{base}.{relative}"


def loc_to_path(loc: Sequence[str | int]) -> str:
    """``("spec", "ports", 0, "port")`` → ``"spec.ports[0].port"``."""
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else join_path(path, str(part))
    return path


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated``, ``Optional`` and ``X | None`` to reach the type that holds the data."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(root: type[pydantic.BaseModel] | None, loc: Sequence[str | int]) -> Any:
    """Follow ``loc`` through the model's type annotations; return the type found there (or None)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel) and isinstance(part, str):
            field = next(
                (f for name, f in tp.model_fields.items() if part in (name, f.alias)),
                None,
            )
            if field is None:
                return None
            tp = field.annotation
        elif origin in (list, tuple, Sequence) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif origin is dict and isinstance(part, str):
            tp = typing.get_args(tp)[1]
        else:
            return None
    return _unwrap(tp)


def _unknown_field_message(root: type[pydantic.BaseModel] | None, loc: Sequence[str | int]) -> str:
    """``unknown field``, with a suggestion when the name is a near miss of a known one."""
    name = loc[-1] if loc else ""
    parent = _model_at(root, loc[:-1]) if root is not None else None
    if isinstance(name, str) and isinstance(parent, type) and issubclass(parent, pydantic.BaseModel):
        known = [f.alias or n for n, f in parent.model_fields.items()]
        by_lower = {k.lower(): k for k in known}
        guess = by_lower.get(name.lower().replace("_", "").replace("-", ""))
        if guess is None:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            guess = close[0] if close else None
        if guess is not None and guess != name:
            return f"unknown field (did you mean {guess}?)"
    return "unknown field"


def _expected_values(expected: str) -> list[str]:
    quoted = re.findall(r"'([^']*)'", expected)
    if quoted:
        return quoted
    return [v.strip() for v in re.split(r",| or ", expected) if v.strip()]


_TYPE_MESSAGES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "none_required": "must be empty",
    "missing": "required",
}


def _message(error: Any, root: type[pydantic.BaseModel] | None) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_field_message(root, error["loc"])
    if kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
        if kind == "string_type" and isinstance(error.get("input"), int | float | bool):
            message += " (quote the value in YAML)"
        return message
    if kind in ("literal_error", "enum"):
        return "must be one of " + ", ".join(_expected_values(str(ctx.get("expected", ""))))
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"]))
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return f"must be at least {ctx.get('min_length')} character(s) long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        return "has an invalid format"
    msg = str(error.get("msg", "is invalid"))
    return msg.replace("Input should be", "must be").replace("Value error, ", "")


def problems_from_pydantic(
    exc: pydantic.ValidationError, root: type[pydantic.BaseModel] | None = None
) -> list[tuple[str, str]]:
    """Translate every error of ``exc`` into ``(path, message)``; ``root`` enables name suggestions."""
    problems: list[tuple[str, str]] = []
    try:
        errors = exc.errors(include_url=False)
    except UnicodeEncodeError:  # a key holds a lone surrogate ("\uD800" in YAML): pydantic cannot say which
        return [("", "contains a lone surrogate (\\uD800-\\uDFFF), which is not valid Unicode text")]
    for error in errors:
        base = loc_to_path(error["loc"])
        if error["type"] == "string_unicode" and isinstance(error.get("input"), str):
            # pydantic's only use of it here: a key of the object at loc is not valid Unicode text
            problems.append(
                (
                    join_path(base, printable(error["input"])),
                    "key is not valid Unicode text (it holds a lone surrogate, \\uD800-\\uDFFF)",
                )
            )
        elif error["type"] == PROBLEMS_ERROR_TYPE:
            for path, message in error["ctx"]["problems"]:
                problems.append((join_path(base, path), message))
        else:
            problems.append((base, _message(error, root)))
    unique: list[tuple[str, str]] = []
    for problem in problems:
        if problem not in unique:
            unique.append(problem)
    return unique
