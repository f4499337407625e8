"""Calico selector expressions: tokenizer, parser, evaluator and canonical printer.

Grammar (Calico's ``libcalico-go/lib/selector``), lowest precedence first::

    or_expr   := and_expr ( "||" and_expr )*
    and_expr  := operation ( "&&" operation )*
    operation := "!"* ( "has(" KEY ")" | "all()" | "global()" | "(" or_expr ")"
                      | KEY ( "==" | "!=" | "contains" | "starts with" | "ends with" ) STRING
                      | KEY ( "in" | "not in" ) "{" [ STRING ( "," STRING )* [","] ] "}" )
    KEY       := [a-zA-Z0-9_./-]+
    STRING    := '...' | "..."          (no escapes: a value holding " is written in '...')

Semantics worth remembering: ``k != 'v'`` and ``k not in {...}`` are also true when ``k`` is absent;
every other comparison needs the label. ``global()`` matches everything as far as labels go (it only
means something in a ``namespaceSelector``, where it selects non-namespaced endpoints). The empty
string means ``all()``.

``parse_selector`` returns an immutable tree of :class:`Selector` nodes. ``&&`` and ``||`` are
flattened, ``!!x`` is ``x`` and ``in`` sets are sorted and deduplicated, so two selectors that mean
the same thing by construction compare equal, and ``str()`` prints one canonical form that parses
back to the same tree.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "All",
    "And",
    "Contains",
    "EndsWith",
    "Equals",
    "Global",
    "Has",
    "In",
    "Not",
    "NotEquals",
    "NotIn",
    "Or",
    "Selector",
    "SelectorSyntaxError",
    "StartsWith",
    "parse_selector",
]


class SelectorSyntaxError(ValueError):
    """A selector that does not parse; ``position`` is the 1-based character where it went wrong."""

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.text = text
        self.position = position
        super().__init__(f"invalid selector {text!r}: {reason} at position {position}")


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class Selector:
    """A parsed Calico selector: ``matches(labels)``, a canonical ``str()``, structural equality."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        raise NotImplementedError

    def children(self) -> tuple[Selector, ...]:
        return ()

    def uses_global(self) -> bool:
        """True when ``global()`` appears anywhere (only valid in a namespaceSelector)."""
        return isinstance(self, Global) or any(c.uses_global() for c in self.children())


@dataclass(frozen=True)
class All(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Global(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "global()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class _Comparison(Selector):
    key: str
    value: str
    OPERATOR: ClassVar[str] = ""

    def __str__(self) -> str:
        return f"{self.key} {self.OPERATOR} {_quote(self.value)}"


class Equals(_Comparison):
    OPERATOR = "=="

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) == self.value


class NotEquals(_Comparison):
    """``k != 'v'``: true when the label differs *or is absent*."""

    OPERATOR = "!="

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) != self.value


class Contains(_Comparison):
    OPERATOR = "contains"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and self.value in labels[self.key]


class StartsWith(_Comparison):
    OPERATOR = "starts with"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and labels[self.key].startswith(self.value)


class EndsWith(_Comparison):
    OPERATOR = "ends with"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and labels[self.key].endswith(self.value)


@dataclass(frozen=True)
class _SetMembership(Selector):
    key: str
    values: tuple[str, ...]
    OPERATOR: ClassVar[str] = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(sorted(set(self.values))))

    def __str__(self) -> str:
        return f"{self.key} {self.OPERATOR} {{{', '.join(_quote(v) for v in self.values)}}}"


class In(_SetMembership):
    OPERATOR = "in"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels and labels[self.key] in self.values


class NotIn(_SetMembership):
    """``k not in {...}``: true when the label's value is outside the set *or it is absent*."""

    OPERATOR = "not in"

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True)
class Not(Selector):
    operand: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def children(self) -> tuple[Selector, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        if isinstance(self.operand, Has | All | Global):
            return f"!{self.operand}"
        return f"!({self.operand})"


@dataclass(frozen=True)
class And(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(o.matches(labels) for o in self.operands)

    def children(self) -> tuple[Selector, ...]:
        return self.operands

    def __str__(self) -> str:
        return " && ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


@dataclass(frozen=True)
class Or(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(o.matches(labels) for o in self.operands)

    def children(self) -> tuple[Selector, ...]:
        return self.operands

    def __str__(self) -> str:
        return " || ".join(str(o) for o in self.operands)


def make_not(operand: Selector) -> Selector:
    """``!x``, with ``!!x`` collapsed to ``x``."""
    return operand.operand if isinstance(operand, Not) else Not(operand)


def make_and(operands: Iterable[Selector]) -> Selector:
    """``a && b && ...``, flattening nested ands; a single operand is returned as is."""
    flat: list[Selector] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, And) else (operand,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def make_or(operands: Iterable[Selector]) -> Selector:
    """``a || b || ...``, flattening nested ors; a single operand is returned as is."""
    flat: list[Selector] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, Or) else (operand,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


# --- tokenizer -------------------------------------------------------------------------------

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
_OPERATOR_WORDS = (("contains",), ("starts", "with"), ("ends", "with"), ("not", "in"), ("in",))


@dataclass(frozen=True)
class _Token:
    kind: str  # "(", ")", "{", "}", ",", "==", "!=", "!", "&&", "||", "op", "key", "str", "has",
    #          "all", "global", "eof"
    value: str
    position: int  # 1-based


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.tokens: list[_Token] = []

    def fail(self, reason: str, index: int | None = None) -> SelectorSyntaxError:
        return SelectorSyntaxError(reason, self.text, (self.i if index is None else index) + 1)

    def skip_space(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def read_key(self) -> str:
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in _KEY_CHARS:
            self.i += 1
        return self.text[start : self.i]

    def at_word(self, word: str) -> bool:
        end = self.i + len(word)
        return self.text.startswith(word, self.i) and (
            end >= len(self.text) or self.text[end] not in _KEY_CHARS
        )

    def read_call(self, name: str) -> str:
        """After ``name(``: read an optional key, then ``)``. Returns the key."""
        self.i += len(name) + 1
        self.skip_space()
        key = self.read_key()
        self.skip_space()
        if name == "has" and not key:
            raise self.fail("expected a label name in has(...)")
        if name != "has" and key:
            raise self.fail(f"{name}() takes no argument")
        if self.i >= len(self.text) or self.text[self.i] != ")":
            raise self.fail(f"expected ')' to close {name}(")
        self.i += 1
        return key

    def read_operator(self, label: _Token) -> str:
        for words in _OPERATOR_WORDS:
            save = self.i
            matched = True
            for n, word in enumerate(words):
                if n:
                    self.skip_space()
                if not self.at_word(word):
                    matched = False
                    break
                self.i += len(word)
            if matched:
                return " ".join(words)
            self.i = save
        raise self.fail(
            f"expected an operator (==, !=, in, not in, contains, starts with, ends with) "
            f"after label {label.value!r}"
        )

    def tokenize(self) -> list[_Token]:
        text = self.text
        single = {"(": "(", ")": ")", "{": "{", "}": "}", ",": ","}
        while True:
            self.skip_space()
            start = self.i
            if self.i >= len(text):
                self.tokens.append(_Token("eof", "", start + 1))
                return self.tokens
            ch = text[self.i]
            last = self.tokens[-1].kind if self.tokens else ""
            if ch in single:
                self.i += 1
                self.tokens.append(_Token(single[ch], ch, start + 1))
            elif ch in "'\"":
                end = text.find(ch, self.i + 1)
                if end < 0:
                    raise self.fail("unterminated string")
                self.tokens.append(_Token("str", text[self.i + 1 : end], start + 1))
                self.i = end + 1
            elif text.startswith("==", self.i):
                self.i += 2
                self.tokens.append(_Token("==", "==", start + 1))
            elif ch == "=":
                raise self.fail("expected '==' (a single '=' is not an operator)")
            elif text.startswith("!=", self.i):
                self.i += 2
                self.tokens.append(_Token("!=", "!=", start + 1))
            elif ch == "!":
                self.i += 1
                self.tokens.append(_Token("!", "!", start + 1))
            elif text.startswith("&&", self.i):
                self.i += 2
                self.tokens.append(_Token("&&", "&&", start + 1))
            elif text.startswith("||", self.i):
                self.i += 2
                self.tokens.append(_Token("||", "||", start + 1))
            elif ch in "&|":
                raise self.fail(f"expected '{ch}{ch}'")
            elif last == "key":
                op = self.read_operator(self.tokens[-1])
                self.tokens.append(_Token("op", op, start + 1))
            elif text.startswith("has(", self.i):
                self.tokens.append(_Token("has", self.read_call("has"), start + 1))
            elif text.startswith("all(", self.i):
                self.read_call("all")
                self.tokens.append(_Token("all", "", start + 1))
            elif text.startswith("global(", self.i):
                self.read_call("global")
                self.tokens.append(_Token("global", "", start + 1))
            elif ch in _KEY_CHARS:
                self.tokens.append(_Token("key", self.read_key(), start + 1))
            else:
                raise self.fail(f"unexpected character {ch!r}")


# --- parser ----------------------------------------------------------------------------------

_COMPARISONS: dict[str, type[_Comparison]] = {
    "==": Equals,
    "!=": NotEquals,
    "contains": Contains,
    "starts with": StartsWith,
    "ends with": EndsWith,
}


def _describe(token: _Token) -> str:
    if token.kind == "eof":
        return "end of selector"
    if token.kind == "str":
        return f"string {_quote(token.value)}"
    if token.kind in ("key", "op"):
        return repr(token.value)
    if token.kind in ("has", "all", "global"):
        return f"{token.kind}(...)"
    return repr(token.value)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Tokenizer(text).tokenize()
        self.n = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.n]

    def fail(self, expected: str) -> SelectorSyntaxError:
        return SelectorSyntaxError(
            f"expected {expected}, found {_describe(self.token)}", self.text, self.token.position
        )

    def take(self, kind: str, expected: str) -> _Token:
        if self.token.kind != kind:
            raise self.fail(expected)
        token = self.token
        self.n += 1
        return token

    def parse(self) -> Selector:
        if self.token.kind == "eof":
            return All()
        node = self.or_expr()
        if self.token.kind != "eof":
            raise self.fail("'&&', '||' or the end of the selector")
        return node

    def or_expr(self) -> Selector:
        operands = [self.and_expr()]
        while self.token.kind == "||":
            self.n += 1
            operands.append(self.and_expr())
        return make_or(operands)

    def and_expr(self) -> Selector:
        operands = [self.operation()]
        while self.token.kind == "&&":
            self.n += 1
            operands.append(self.operation())
        return make_and(operands)

    def operation(self) -> Selector:
        negated = False
        while self.token.kind == "!":
            negated = not negated
            self.n += 1
        token = self.token
        node: Selector
        if token.kind == "has":
            self.n += 1
            node = Has(token.value)
        elif token.kind == "all":
            self.n += 1
            node = All()
        elif token.kind == "global":
            self.n += 1
            node = Global()
        elif token.kind == "(":
            self.n += 1
            node = self.or_expr()
            self.take(")", "')'")
        elif token.kind == "key":
            node = self.label_operation()
        else:
            raise self.fail("a label, has(...), all(), global(), '!' or '('")
        return make_not(node) if negated else node

    def label_operation(self) -> Selector:
        key = self.take("key", "a label").value
        op_token = self.token
        if op_token.kind in ("==", "!="):
            self.n += 1
            op = op_token.kind
        elif op_token.kind == "op":
            self.n += 1
            op = op_token.value
        else:
            raise self.fail(f"an operator after label {key!r}")
        if op in _COMPARISONS:
            value = self.take("str", f"a quoted string after {op!r}").value
            return _COMPARISONS[op](key, value)
        self.take("{", f"'{{' after {op!r}")
        values: list[str] = []
        while self.token.kind == "str":
            values.append(self.token.value)
            self.n += 1
            if self.token.kind != ",":
                break
            self.n += 1
        self.take("}", "a quoted string or '}'")
        return In(key, tuple(values)) if op == "in" else NotIn(key, tuple(values))


@functools.lru_cache(maxsize=4096)
def parse_selector(text: str) -> Selector:
    """Parse a Calico selector expression; raise :class:`SelectorSyntaxError` (a ValueError).
    The trees are immutable, so the same text gives the same (cached) tree: every policy sync
    asks again for the selectors of every policy."""
    return _Parser(text).parse()
