"""Calico selector expressions: parsing, precedence, semantics, canonical form, syntax errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.model.calico_selector import (
    All,
    And,
    Contains,
    EndsWith,
    Equals,
    Global,
    Has,
    In,
    Not,
    NotEquals,
    NotIn,
    Or,
    Selector,
    SelectorSyntaxError,
    StartsWith,
    parse_selector,
)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("", All()),
        ("   ", All()),
        ("all()", All()),
        ("all( )", All()),
        ("global()", Global()),
        ("has(app)", Has("app")),
        ("has( projectcalico.org/name )", Has("projectcalico.org/name")),
        ("app == 'web'", Equals("app", "web")),
        ('app=="web"', Equals("app", "web")),
        ("app != 'web'", NotEquals("app", "web")),
        ("app in {'a', 'b'}", In("app", ("a", "b"))),
        ("app in {'b','a','b'}", In("app", ("a", "b"))),
        ("app in {}", In("app", ())),
        ("app not in {'a'}", NotIn("app", ("a",))),
        ("app in{'a',}", In("app", ("a",))),
        ("name contains 'end'", Contains("name", "end")),
        ("name starts with 'front'", StartsWith("name", "front")),
        ("name ends  with 'end'", EndsWith("name", "end")),
        ("!has(a)", Not(Has("a"))),
        ("!!has(a)", Has("a")),
        ("!(!has(a))", Has("a")),
        ("a == 'x' && b == 'y'", And((Equals("a", "x"), Equals("b", "y")))),
        ("a == 'x' || b == 'y'", Or((Equals("a", "x"), Equals("b", "y")))),
        ("msg == 'say \"hi\"'", Equals("msg", 'say "hi"')),
        ("k8s-app.v1/x_y == ''", Equals("k8s-app.v1/x_y", "")),
    ],
)
def test_parse_builds_the_expected_tree(text: str, tree: Selector) -> None:
    assert parse_selector(text) == tree


def test_and_binds_tighter_than_or() -> None:
    assert parse_selector("a == '1' || b == '2' && c == '3'") == Or(
        (Equals("a", "1"), And((Equals("b", "2"), Equals("c", "3"))))
    )
    assert parse_selector("a == '1' && b == '2' || c == '3'") == Or(
        (And((Equals("a", "1"), Equals("b", "2"))), Equals("c", "3"))
    )


def test_not_binds_tighter_than_and() -> None:
    assert parse_selector("!has(a) && has(b)") == And((Not(Has("a")), Has("b")))
    assert parse_selector("!a == 'x'") == Not(Equals("a", "x"))


def test_parentheses_override_precedence() -> None:
    assert parse_selector("(a == '1' || b == '2') && c == '3'") == And(
        (Or((Equals("a", "1"), Equals("b", "2"))), Equals("c", "3"))
    )


def test_nested_ands_and_ors_are_flattened() -> None:
    assert parse_selector("a == '1' && (b == '2' && c == '3')") == And(
        (Equals("a", "1"), Equals("b", "2"), Equals("c", "3"))
    )
    assert parse_selector("(has(a) || has(b)) || has(c)") == Or((Has("a"), Has("b"), Has("c")))


LABELS = {"app": "web", "tier": "frontend", "env": "prod"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all()", True),
        ("", True),
        ("global()", True),
        ("app == 'web'", True),
        ("app == 'db'", False),
        ("missing == 'x'", False),
        ("app != 'db'", True),
        ("app != 'web'", False),
        ("missing != 'x'", True),  # != is also true when the label is absent
        ("has(app)", True),
        ("has(missing)", False),
        ("!has(missing)", True),
        ("app in {'web', 'api'}", True),
        ("missing in {'web'}", False),
        ("app not in {'web'}", False),
        ("missing not in {'web'}", True),  # not in is also true when the label is absent
        ("tier contains 'ont'", True),
        ("missing contains ''", False),
        ("tier starts with 'front'", True),
        ("tier ends with 'end'", True),
        ("tier ends with 'front'", False),
        ("app == 'web' && env == 'dev'", False),
        ("app == 'web' && env == 'prod'", True),
        ("app == 'db' || env == 'prod'", True),
        ("!(app == 'web' && env == 'prod')", False),
        ("app == 'db' || app == 'web' && env == 'dev'", False),
        ("(app == 'db' || app == 'web') && env == 'prod'", True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert parse_selector(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", "all()"),
        ("app=='web'", 'app == "web"'),
        ("msg == 'say \"hi\"'", "msg == 'say \"hi\"'"),
        ("app in {'b','a'}", 'app in {"a", "b"}'),
        ("!has(a)&&(b=='1'||c=='2')", '!has(a) && (b == "1" || c == "2")'),
        ("!(a == 'x')", '!(a == "x")'),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
        ("a == '1' || b == '2' && c == '3'", 'a == "1" || b == "2" && c == "3"'),
        ("x starts with 'a' && y ends with 'b'", 'x starts with "a" && y ends with "b"'),
    ],
)
def test_canonical_string(text: str, canonical: str) -> None:
    assert str(parse_selector(text)) == canonical
    assert str(parse_selector(canonical)) == canonical


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("app = 'web'", 5, "expected '=='"),
        ("app == web", 8, "expected a quoted string after '=='"),
        ("app == 'web", 8, "unterminated string"),
        ("has(app", 8, "expected ')' to close has("),
        ("has()", 5, "expected a label name"),
        ("(app == 'x'", 12, "expected ')'"),
        ("app == 'x' extra", 12, "'&&', '||' or the end"),
        ("app", 4, "expected an operator after label 'app'"),
        ("app is 'x'", 5, "expected an operator"),
        ("a == 'x' & b == 'y'", 10, "expected '&&'"),
        ("a == 'x' |", 10, "expected '||'"),
        ("&& has(a)", 1, "expected a label"),
        ("a in {'x'", 10, "a quoted string or '}'"),
        ("a in 'x'", 6, "'{' after 'in'"),
        ("all(x)", 6, "all() takes no argument"),
        ("app == 'x' && $", 15, "unexpected character '$'"),
        ("has(a) &&", 10, "end of selector"),
    ],
)
def test_syntax_errors_report_the_position(text: str, position: int, fragment: str) -> None:
    with pytest.raises(SelectorSyntaxError) as info:
        parse_selector(text)
    assert info.value.position == position
    assert fragment in str(info.value)
    assert f"at position {position}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_uses_global() -> None:
    assert parse_selector("global()").uses_global()
    assert parse_selector("has(a) && !global()").uses_global()
    assert not parse_selector("has(a)").uses_global()


# --- property tests ---------------------------------------------------------------------------

KEYS = st.sampled_from(["app", "tier", "env", "k8s-app", "projectcalico.org/name", "x.y/z_1"])
VALUES = st.text(alphabet="abcxyz019 -_.'", max_size=6) | st.sampled_from(['say "hi"', ""])


def _leaf() -> st.SearchStrategy[Selector]:
    comparisons = st.sampled_from([Equals, NotEquals, Contains, StartsWith, EndsWith])
    return st.one_of(
        st.just(All()),
        KEYS.map(Has),
        st.builds(lambda cls, k, v: cls(k, v), comparisons, KEYS, VALUES),
        st.builds(lambda k, vs: In(k, tuple(vs)), KEYS, st.lists(VALUES, max_size=3)),
        st.builds(lambda k, vs: NotIn(k, tuple(vs)), KEYS, st.lists(VALUES, max_size=3)),
    )


def _normalise(node: Selector) -> Selector:
    """What parsing does to a tree: flatten ands/ors, collapse double negation."""
    from podnet.model.calico_selector import make_and, make_not, make_or

    if isinstance(node, Not):
        return make_not(_normalise(node.operand))
    if isinstance(node, And):
        return make_and(_normalise(o) for o in node.operands)
    if isinstance(node, Or):
        return make_or(_normalise(o) for o in node.operands)
    return node


SELECTORS = st.recursive(
    _leaf(),
    lambda children: st.one_of(
        children.map(Not),
        st.lists(children, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(children, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=8,
)
LABEL_SETS = st.dictionaries(KEYS, st.sampled_from(["web", "a", "", 'say "hi"', "xyz", "frontend"]))


@settings(max_examples=300, deadline=None)
@given(SELECTORS)
def test_canonical_string_round_trips(tree: Selector) -> None:
    normal = _normalise(tree)
    reparsed = parse_selector(str(tree))
    assert reparsed == normal
    assert str(reparsed) == str(normal)
    assert parse_selector(str(reparsed)) == reparsed


@settings(max_examples=300, deadline=None)
@given(SELECTORS, LABEL_SETS)
def test_printing_and_reparsing_preserves_meaning(tree: Selector, labels: dict[str, str]) -> None:
    assert parse_selector(str(tree)).matches(labels) == tree.matches(labels)


@settings(max_examples=200, deadline=None)
@given(SELECTORS, SELECTORS, LABEL_SETS)
def test_boolean_operators_follow_boolean_logic(a: Selector, b: Selector, labels: dict[str, str]) -> None:
    sa, sb = str(a), str(b)
    assert parse_selector(f"({sa}) && ({sb})").matches(labels) == (a.matches(labels) and b.matches(labels))
    assert parse_selector(f"({sa}) || ({sb})").matches(labels) == (a.matches(labels) or b.matches(labels))
    assert parse_selector(f"!({sa})").matches(labels) == (not a.matches(labels))


@settings(max_examples=200, deadline=None)
@given(KEYS, VALUES, LABEL_SETS)
def test_not_equals_is_the_negation_of_equals(key: str, value: str, labels: dict[str, str]) -> None:
    assert NotEquals(key, value).matches(labels) == (not Equals(key, value).matches(labels))
    assert NotIn(key, (value,)).matches(labels) == (not In(key, (value,)).matches(labels))
