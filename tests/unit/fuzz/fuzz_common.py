"""What the fuzz tests share: the example counts of each mode, valid examples of every kind, JSON
and "junk" strategies, and the single-field mutations of a valid document.

Modes (profiles registered in this directory's ``conftest.py``): the normal test run is quick; set
``PODNET_FUZZ=long`` for the long run (at least 100,000 examples across the suite)::

    PODNET_FUZZ=long nice -n 19 .venv/bin/pytest tests/unit/fuzz -p no:cacheprovider -q \
        --hypothesis-show-statistics

A mutation changes exactly one place of a valid document and remembers where (``blame``), so a test
can insist that the error names that field: ``drop`` a key, ``replace`` a value with junk (wrong
types, huge and negative numbers, unicode, bad CIDRs/IPs/selectors/ports, nested nulls), ``retype``
it (wrap in a list or object, stringify), ``extra`` (an unknown key in an object), ``poplist`` (an
item out of a list).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from podnet.model import RESOURCE_TYPES, parse_yaml, type_of

MODE = "long" if os.environ.get("PODNET_FUZZ", "").strip().lower() == "long" else "quick"


def fuzz_settings(quick: int, long: int, **overrides: Any) -> settings:
    """The settings of one property: ``quick`` examples in the normal run, ``long`` with PODNET_FUZZ=long."""
    return settings(
        settings.get_profile(f"podnet-fuzz-{MODE}"),
        max_examples=long if MODE == "long" else quick,
        **overrides,
    )


# ------------------------------------------------------------------------------ valid examples

_HERE = Path(__file__).resolve().parent
_EXAMPLE_FILES = [
    *sorted((_HERE.parent / "model" / "fixtures").glob("*.yaml")),
    *sorted((_HERE.parents[2] / "src" / "podnet" / "examples").glob("*.yaml")),
]


def _load_examples() -> dict[str, list[dict[str, Any]]]:
    """``key_name`` → the to_dict() of every valid example of that kind (fixtures + shipped examples)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in _EXAMPLE_FILES:
        for resource in parse_yaml(path.read_text(), path.name):
            out[type_of(resource).key_name].append(resource.to_dict())
    return dict(out)


EXAMPLES = _load_examples()
KIND_KEYS = [rt.key_name for rt in RESOURCE_TYPES]
ALL_EXAMPLES = [doc for key in KIND_KEYS for doc in EXAMPLES.get(key, [])]
API_VERSION_KINDS = sorted({(v, rt.kind) for rt in RESOURCE_TYPES for v in rt.versions})


def example_of(key_name: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(EXAMPLES[key_name]).map(copy.deepcopy)


# ---------------------------------------------------------------------------------- strategies

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)

JUNK_STRINGS = [
    "",
    " ",
    "-",
    "_",
    ".",
    "..",
    "0",
    "00",
    "-1",
    "default",
    "x" * 64,
    "y" * 254,
    "a.b",
    "A",
    "-a",
    "a-",
    "a--b",
    "a_b",
    "a/b/c",
    "/",
    "a:b",
    # addresses and CIDRs
    "10.0.0.0/33",
    "10.0.0.256/24",
    "10.0.0.1",
    "10.0.0.1/24",
    "300.1.1.1",
    "1.2.3",
    "10.0.0.0/8/8",
    "10.0.0.0/-1",
    "::1/129",
    "fd00::/64",
    "fd00::/7",
    "::",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0 /8",
    "1.2.3.4:80",
    "fe80::1%eth0",
    "2001:db8::g",
    "0x0a000001",
    "10.0.0.0/08",
    "127.0.0.1/32",
    # selectors (Calico expressions, Cilium/Kubernetes words)
    "all()",
    "global()",
    "!has(",
    "has(x) &&",
    "a in {",
    "a == 'b",
    "a == 'b' || c",
    "!!a",
    'k == "v"',
    "has(a) && b in {'x', 'y'}",
    "a not in {}",
    "role == 'db' && !has(x)",
    "(((((",
    "a ==",
    "==",
    "'",
    # ports, protocols, modes, words
    "65536",
    "0:70000",
    "80:70",
    "80:",
    ":80",
    "80-90",
    "1:65535",
    "http",
    "a" * 16,
    "TCP",
    "tcp",
    "UDP",
    "SCTP",
    "ICMP",
    "ICMPv6",
    "1",
    "Always",
    "Never",
    "CrossSubnet",
    "Ingress",
    "Egress",
    "Allow",
    "Deny",
    "Pass",
    "Log",
    "ClusterIP",
    "NodePort",
    "LoadBalancer",
    "None",
    "null",
    "true",
    "~",
    # unicode and control characters
    "\x00",
    "\t",
    "\n",
    "é",
    "ß",
    "\u202e",
    "\U0001d54f",
    "\ufeff",
    "\U0001d54f.example",
    "a\u0301",
    "\ud7ff",
]
JUNK_NUMBERS = [
    0,
    -1,
    1,
    7,
    32,
    33,
    64,
    129,
    1500,
    65535,
    65536,
    2**31,
    2**32,
    2**63,
    -(2**63),
    10**30,
    -(10**30),
    0.5,
    -0.0,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
]
JUNK = st.one_of(
    st.sampled_from(JUNK_STRINGS),
    st.sampled_from(JUNK_NUMBERS),
    st.none(),
    st.integers(),
    st.text(max_size=24),
    st.just([]),
    st.just({}),
    st.just([None]),
    st.just({"a": None}),
    st.just({"": {"": None}}),
    st.lists(st.sampled_from(JUNK_STRINGS) | st.sampled_from(JUNK_NUMBERS) | st.none(), max_size=3),
    st.dictionaries(st.sampled_from(JUNK_STRINGS), st.sampled_from(JUNK_STRINGS) | st.none(), max_size=2),
    JSON_VALUES,
)
EXTRA_KEYS = ["unexpectedField", "Spec", "metdata", "name_", "x", "selector ", "podSelector2", "é"]


# ---------------------------------------------------------------------------------- mutations

Path_ = tuple[str | int, ...]


def all_paths(doc: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place inside ``doc`` (not the root itself)."""
    out: list[Path_] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out.extend(all_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out.append((*prefix, index))
            out.extend(all_paths(value, (*prefix, index)))
    return out


def get_at(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def render_path(path: Path_) -> str:
    """``("spec", "ports", 0, "port")`` → ``"spec.ports[0].port"`` (the model's problem paths)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def _retyped(value: Any) -> list[Any]:
    options: list[Any] = [[value], {"value": value}, None]
    if not isinstance(value, str):
        options.append(str(value))
    elif value.strip().lstrip("-").isdigit():
        options.append(int(value))
    if isinstance(value, bool):
        options.append(int(value))
    if isinstance(value, int) and not isinstance(value, bool):
        options += [float(value) + 0.5, -value - 1, value + 2**40]
    if isinstance(value, dict | list) and value:
        options.append(
            list(value.values()) if isinstance(value, dict) else {str(i): v for i, v in enumerate(value)}
        )
    return options


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """A copy of ``base`` with one place changed: ``(document, blamed path, operation)``."""
    doc = copy.deepcopy(base)
    paths = all_paths(doc)
    op = draw(st.sampled_from(["replace", "replace", "replace", "retype", "drop", "extra", "poplist"]))
    if op == "extra":
        containers = [()] + [p for p in paths if isinstance(get_at(doc, p), dict)]
        where = draw(st.sampled_from(containers))
        # no ".[]" in made-up keys: a key "[0" would read as a list index in a problem path
        key = draw(
            st.sampled_from(EXTRA_KEYS)
            | st.text(st.characters(exclude_characters=".[]"), min_size=1, max_size=8)
        )
        target = get_at(doc, where)
        if key in target:
            op = "replace"
            path: Path_ = (*where, key)
        else:
            target[key] = draw(JUNK)
            return doc, render_path((*where, key)), op
    if op == "poplist":
        lists = [p for p in paths if isinstance(get_at(doc, p), list) and get_at(doc, p)]
        if lists:
            where = draw(st.sampled_from(lists))
            target = get_at(doc, where)
            target.pop(draw(st.integers(0, len(target) - 1)))
            return doc, render_path(where), op
        op = "replace"
    if op == "drop":
        keyed = [p for p in paths if isinstance(p[-1], str)]
        path = draw(st.sampled_from(keyed))
        del get_at(doc, path[:-1])[path[-1]]
        return doc, render_path(path), op
    if op != "extra":
        path = draw(st.sampled_from(paths))
    old = get_at(doc, path)
    new = draw(st.sampled_from(_retyped(old))) if op == "retype" else draw(JUNK)
    get_at(doc, path[:-1])[path[-1]] = new
    return doc, render_path(path), op


# ---------------------------------------------------------------------------------- checking

# What pydantic's own locations look like when they leak into a user-facing path.
PYDANTIC_JARGON = re.compile(
    r"function-(after|before|wrap|plain)|tagged-union|json-or-python|lax-or-strict|"
    r"is-instance|\bunion\[|chain\[|literal\["
)


def normalise(path: str) -> str:
    """``spec.labels[app]`` and ``spec.labels.app`` are the same place. A key that is not valid
    Unicode (a lone surrogate, as ``"\\uD800"`` in YAML) is named escaped, ``\\ud800``: the raw
    character cannot be printed, so the blamed path is escaped the same way before comparing."""
    path = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return path.replace("[", ".").replace("]", "").strip(".")


def related(problem: str, message: str, blamed: str) -> bool:
    """Does the problem name the blamed field? Its path is the field, inside it, or an enclosing
    object of it other than the root; or, for a cross-field rule, somewhere in the object that holds
    the field (dropping ``clusterIP: None`` makes ``spec.ports`` required; dropping a rule's
    ``protocol`` makes its ``destination.ports`` invalid); or, for a rule across the items of a list,
    another item of the innermost list that holds the field (dropping ``ports[0].protocol`` makes it
    TCP, and ``ports[1]``, already 53/TCP, is the duplicate: the later item is the one reported, as
    Kubernetes does); or the message says the field's name."""
    p, b = normalise(problem), normalise(blamed)
    if p and (p == b or p.startswith(b + ".") or b.startswith(p + ".")):
        return True
    parent, _, leaf = b.rpartition(".")
    if parent and p.startswith(parent + "."):
        return True
    indices = list(re.finditer(r"\[\d+\]", blamed))
    if indices:
        items = normalise(blamed[: indices[-1].start()]) + "."
        if p.startswith(items) and p[len(items) :].split(".")[0].isdigit():
            return True
    return bool(leaf) and not leaf.isdigit() and leaf in message


def check_problems(problems: Any) -> None:
    """A ValidationError's problems: non-empty list of (str path, non-empty str message), no jargon."""
    assert isinstance(problems, list) and problems, problems
    for item in problems:
        assert isinstance(item, tuple) and len(item) == 2, item
        path, message = item
        assert isinstance(path, str), item
        assert isinstance(message, str) and message.strip(), item
        assert not PYDANTIC_JARGON.search(path), f"pydantic internals in a path: {item}"
        assert "https://errors.pydantic.dev" not in message, item
