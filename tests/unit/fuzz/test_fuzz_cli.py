"""Fuzzing the ``podnet`` command line: argv from the real verbs and flags plus junk, ``-f`` files of
YAML/JSON junk and of valid-looking but wrong documents.

Property: ``podnet.cli.main.main(argv)`` returns (or argparse exits with) a documented exit code,
never 70 (an internal error, i.e. a bug), and nothing it prints contains a traceback.

Only verbs that act on the datastore alone are fuzzed (apply, get, delete, patch, ipam
show/check/release/assign/configure, policy explain, service list, version): the datastore is an
in-memory one seeded with every example resource (``podnet.cli.context.resource_store`` is
monkeypatched), so nothing real is touched. Verbs that build network namespaces, start etcd or run
benchmarks (lab, node, bpf, capture, monitor, bench, etcd, demo, policy test, ipam gc) never appear.
One test runs the real etcd client against ``http://127.0.0.1:1`` (nothing listens there) to show
that path fails with the datastore's exit code and a hint, not a traceback.

Long mode: ``PODNET_FUZZ=long`` (see ``conftest.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_common import ALL_EXAMPLES, JSON_VALUES, JUNK_STRINGS, fuzz_settings, mutated
from hypothesis import example, given
from hypothesis import strategies as st

from podnet.cli import context
from podnet.cli.main import build_parser, main
from podnet.datastore.base import Write
from podnet.datastore.memory import MemoryDatastore
from podnet.datastore.resources import ResourceStore
from podnet.model import RESOURCE_TYPES, parse_resource

EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7}  # ok, PodnetError codes, argparse's 2; never 70
SAFE = {
    "apply": None,
    "get": None,
    "delete": None,
    "patch": None,
    "version": None,
    "ipam": ("show", "check", "release", "assign", "configure"),
    "policy": ("explain",),
    "service": ("list",),
}
UNSAFE_WORDS = {"lab", "node", "bpf", "capture", "monitor", "bench", "etcd", "demo", "test", "gc"}
FILE = "<FILE>"  # replaced by the path of the fuzzed -f file
REAL_RESOURCE_STORE = context.resource_store


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]


def _verb_flags() -> dict[tuple[str, str | None], list[str]]:
    parser = build_parser()
    out: dict[tuple[str, str | None], list[str]] = {}
    for verb, subs in SAFE.items():
        verb_parser = _subparser(parser, verb)
        for sub in subs or (None,):
            out[(verb, sub)] = _options(_subparser(verb_parser, sub) if sub else verb_parser)
    return out


VERB_FLAGS = _verb_flags()
NAMES = sorted({doc["metadata"]["name"] for doc in ALL_EXAMPLES})
NAMESPACES = sorted({doc["metadata"].get("namespace") for doc in ALL_EXAMPLES} - {None})
KIND_WORDS = sorted({name for rt in RESOURCE_TYPES for name in rt.names()} | {"IPPool", "NetworkPolicy"})
VALUE_WORDS = [
    FILE,
    "-",
    "80/TCP",
    "53/UDP",
    "0/TCP",
    "99999/TCP",
    "80/SCTP",
    "shop/web-0",
    "10.244.0.5",
    "1.2.3.4/40",
    "yaml",
    "json",
    "wide",
    "name",
    "table",
    "text",
    "true",
    "false",
    "merge",
    "app=web,tier!=db",
    "a in (x,y)",
    "!f",
    "=",
    "(",
    '{"spec": {"disabled": true}}',
    '{"metadata": {"name": "x"}}',
    "[]",
    "{",
    "null",
    "spec: [",
    "0",
    "-1",
    "1",
    "2",
    "x",
    "1e3",
    "node-1",
    "[" * 3000,
    "h1",
    "default-ipv4-ippool",
]
JUNK_TOKENS = st.text(max_size=12).filter(lambda t: t not in UNSAFE_WORDS and "\x00" not in t)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    verb, sub = draw(st.sampled_from(sorted(VERB_FLAGS, key=str)))
    flags = VERB_FLAGS[(verb, sub)] + ["--etcd-endpoints", "-h"]
    token = st.one_of(
        st.sampled_from(flags),
        st.sampled_from(flags).map(lambda f: f + "=" if f.startswith("--") else f),
        st.sampled_from(KIND_WORDS),
        st.sampled_from(NAMES + NAMESPACES),
        st.sampled_from(VALUE_WORDS),
        st.sampled_from(JUNK_STRINGS).filter(lambda t: "\x00" not in t),
        JUNK_TOKENS,
    )
    rest = draw(st.lists(token, max_size=7))
    head = [verb] + ([sub] if sub else [])
    if draw(st.integers(0, 9)) == 0:  # the verb itself mistyped or missing
        head = draw(st.sampled_from([[], [verb.upper()], [verb[:-1]], [verb + "s"], ["--" + verb]]))
    argv = head + rest
    if draw(st.booleans()):
        argv = ["--etcd-endpoints", "http://127.0.0.1:1", *argv]
    return argv


@st.composite
def file_texts(draw: st.DrawFn) -> str:
    """What ``-f`` reads: YAML/JSON junk, or documents that look right and are wrong (or right)."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.text(max_size=80))
    if choice == 1:
        return draw(
            st.sampled_from(
                [
                    "",
                    "---",
                    "a: [",
                    "\t- x",
                    "kind: List\nitems: 3",
                    "kind: List\nitems: [1]",
                    "!!python/object:os.system x",
                    "a: 1\na: 2",
                    "- 1\n- 2",
                    "apiVersion: v1\nkind: Pod",
                    "{}",
                    "null",
                    "[" * 2000,
                    "&a [*a]",
                    "selector: !has(x)",
                    "%YAML 9.9\n---\na: 1",
                    "a: &x 1\nb: *y",
                    "? [a]\n: 1",
                ]
            )
        )
    if choice == 2:
        return json.dumps(draw(JSON_VALUES))
    docs = []
    for _ in range(draw(st.integers(1, 3))):
        base = draw(st.sampled_from(ALL_EXAMPLES))
        doc = draw(mutated(base))[0] if draw(st.booleans()) else base
        docs.append(doc)
    if choice == 3:
        return yaml.safe_dump_all(docs, sort_keys=False)
    if choice == 4:
        return json.dumps(docs[0])
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs}, sort_keys=False)


def _seed() -> list[tuple[str, bytes]]:
    """Every example resource as stored by ``apply``, read once and replayed into each store."""
    store = ResourceStore(MemoryDatastore())
    resources = []
    for doc in ALL_EXAMPLES:
        doc = dict(doc, metadata={k: v for k, v in doc["metadata"].items() if k != "resourceVersion"})
        resources.append(parse_resource(doc))
    seen, unique = set(), []
    for resource in resources:
        if store.key_of(resource) not in seen:
            seen.add(store.key_of(resource))
            unique.append(resource)
    store.apply(unique)
    items, _ = store.store.list("/")
    return [(kv.key, kv.value) for kv in items]


SEED = _seed()


def seeded_store() -> ResourceStore:
    datastore = MemoryDatastore()
    datastore.commit([Write(key, value) for key, value in SEED])
    return ResourceStore(datastore)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-fuzz") / "input.yaml"


@pytest.fixture(scope="module")
def memory_store() -> Iterator[dict[str, ResourceStore]]:
    """``resource_store`` patched to hand out the current in-memory store."""
    current: dict[str, ResourceStore] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(context, "resource_store", lambda args: current["store"])
        mp.delenv("PODNET_DEBUG", raising=False)  # that would re-raise bugs instead of exiting 70
        yield current


def run_cli(argv: list[str], stdin_text: str = "") -> tuple[int, str, str]:
    """``main(argv)`` with stdin, stdout and stderr in memory; argparse's exits are exit codes."""
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin_text)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc: Any = main(argv)
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
                rc = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


def check_outcome(argv: list[str], rc: int, out: str, err: str) -> None:
    assert rc != 70, f"internal error for {argv}: {err}"
    assert rc in EXIT_CODES, (argv, rc, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if rc not in (0, 2) or (rc == 2 and err.startswith("error:")):
        assert "error:" in err, (argv, rc, err)


@fuzz_settings(quick=150, long=6000)
@given(argv=argvs(), text=file_texts())
@example(argv=["patch", "ippool", "default-ipv4-ippool", "-p", "[" * 3000], text="")
@example(argv=["apply", "-f", FILE], text="[" * 3000)
@example(argv=["ipam", "release", "--ip="], text="")  # exited 70 (ValueError), long mode
@example(argv=["ipam", "assign", "--node", "node-1", "--handle", "h", "--ip", "x"], text="")
def test_fuzzed_command_lines(
    memory_store: dict[str, ResourceStore], fuzz_file: Path, argv: list[str], text: str
) -> None:
    memory_store["store"] = seeded_store()
    fuzz_file.write_text(text)
    argv = [str(fuzz_file) if a == FILE else a for a in argv]
    rc, out, err = run_cli(argv, stdin_text=text)
    check_outcome(argv, rc, out, err)


@fuzz_settings(quick=100, long=4000)
@given(text=file_texts(), via_stdin=st.booleans(), dry_run=st.booleans())
# generateName without a name parses, and apply failed on the missing name (exit 70)
@example(
    text="apiVersion: v1\nkind: Pod\nmetadata: {generateName: dns-}\nspec: {containers: [{name: a}]}\n",
    via_stdin=False,
    dry_run=False,
)
def test_apply_fuzzed_files(
    memory_store: dict[str, ResourceStore], fuzz_file: Path, text: str, via_stdin: bool, dry_run: bool
) -> None:
    """``podnet apply -f`` of fuzzed input: a failure writes nothing; a success wrote what it printed."""
    store = seeded_store()
    memory_store["store"] = store
    before = store.store.list("/")[0]
    fuzz_file.write_text(text)
    argv = ["apply", "-f", "-" if via_stdin else str(fuzz_file)] + (["--dry-run"] if dry_run else [])
    rc, out, err = run_cli(argv, stdin_text=text)
    check_outcome(argv, rc, out, err)
    if rc != 0 or dry_run:
        assert store.store.list("/")[0] == before, f"apply exited {rc} but wrote: {err}"
    else:
        assert out.strip(), "apply succeeded without saying what it did"


@pytest.mark.slow  # each case waits out the client's 5 s retry deadline
@pytest.mark.parametrize(
    ("argv", "text", "expected"),
    [
        (["get", "pods"], "", 6),
        (["apply", "-f", FILE], "apiVersion: v1\nkind: Namespace\nmetadata: {name: fuzz}\n", 6),
        (["apply", "-f", FILE], "apiVersion: v1\nkind: Namespace\nmetadata: {name: Not_Valid}\n", 2),
    ],
)
def test_unreachable_etcd_fails_plainly(
    fuzz_file: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], text: str, expected: int
) -> None:
    """The real etcd client, nothing listening: exit 6 with a hint (invalid input: 2, before connecting)."""
    monkeypatch.delenv("PODNET_DEBUG", raising=False)
    monkeypatch.setattr(context, "resource_store", REAL_RESOURCE_STORE)  # memory_store may be active
    fuzz_file.write_text(text)
    argv = ["--etcd-endpoints", "http://127.0.0.1:1"] + [str(fuzz_file) if a == FILE else a for a in argv]
    rc, out, err = run_cli(argv)
    check_outcome(argv, rc, out, err)
    assert rc == expected, err
    if expected == 6:
        assert "127.0.0.1:1" in err and "hint:" in err
