"""DNS names in Cilium policy (calc.l7_dns): matchName exact, matchPattern's `*` within one label,
`*` alone for every name, case and trailing dots ignored."""

from __future__ import annotations

from podnet.calc.l7_dns import allowed, matches
from podnet.model.cilium import FQDNSelector


def name(text: str) -> FQDNSelector:
    return FQDNSelector.model_validate({"matchName": text})


def pattern(text: str) -> FQDNSelector:
    return FQDNSelector.model_validate({"matchPattern": text})


def test_match_name_is_exact():
    assert matches(name("api.example.test"), "API.example.test.")
    assert not matches(name("api.example.test"), "x.api.example.test")
    assert not matches(name("api.example.test"), "api.example.tes")


def test_match_pattern_stays_within_one_label():
    sub = pattern("*.example.test")
    assert matches(sub, "api.example.test") and matches(sub, "a-b_c.EXAMPLE.test.")
    assert not matches(sub, "example.test")
    assert not matches(sub, "a.b.example.test")
    assert not matches(sub, "api.example.test.evil")
    prefixed = pattern("api-*.example.test")
    assert matches(prefixed, "api-1.example.test") and matches(prefixed, "api-.example.test")
    assert not matches(prefixed, "web-1.example.test")
    dotted = pattern("api.example.test")  # no star: literal dots, no regex meaning
    assert matches(dotted, "api.example.test") and not matches(dotted, "apixexample.test")


def test_star_alone_matches_every_name_and_lists_or():
    assert matches(pattern("*"), "a.b.c.example.test") and matches(pattern("*"), "localhost")
    rules = [name("db.example.test"), pattern("*.shop.svc.cluster.local")]
    assert allowed(rules, "db.example.test") and allowed(rules, "web.shop.svc.cluster.local")
    assert not allowed(rules, "api.example.test")
    assert not allowed([], "db.example.test")
