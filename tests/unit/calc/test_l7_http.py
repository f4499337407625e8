"""Cilium's HTTP rules as podnet reads them (calc.l7_http): Envoy's full-match regexes on the
method, the path with its query and the Host header; headers present or exact; entries ORed,
fields ANDed; an L4-only rule on the port lets everything through."""

from __future__ import annotations

from podnet.calc.l7_http import ALLOW_ALL, HttpRequest, HttpRule, allowed, http_rules, rule_matches
from podnet.model.cilium import PortRuleHTTP

SEED = HttpRule(method="PUT", path="/api/v1/*")


def req(method: str = "GET", path: str = "/", host: str = "api", **headers: str) -> HttpRequest:
    return HttpRequest(method, path, host, {k.replace("_", "-"): v for k, v in headers.items()})


def test_the_seed_rule_with_envoys_full_match():
    assert rule_matches(SEED, req("PUT", "/api/v1"))
    assert rule_matches(SEED, req("PUT", "/api/v1//"))
    assert not rule_matches(SEED, req("PUT", "/api/v1/x"))  # `*` repeats the slash, it is no glob
    assert not rule_matches(SEED, req("GET", "/api/v1"))
    assert not rule_matches(SEED, req("PUTX", "/api/v1"))  # the whole method, not a prefix
    assert not rule_matches(SEED, req("PUT", "/api/v1?q=1"))  # the query is part of the path
    assert rule_matches(HttpRule(path="/api/v1/.*"), req("GET", "/api/v1/x?q=1"))


def test_host_and_headers():
    rule = HttpRule(host="api(\\.shop)?", headers=(("x-token", None), ("x-env", "prod")))
    assert rule_matches(rule, req(host="api.shop", X_Token="", X_Env="prod"))
    assert rule_matches(rule, req(host="api", x_token="1", X_ENV="prod"))  # names in any case
    assert not rule_matches(rule, req(host="api.shop.evil", X_Token="1", X_Env="prod"))
    assert not rule_matches(rule, req(host="api", X_Env="prod"))  # x-token missing
    assert not rule_matches(rule, req(host="api", X_Token="1", X_Env="Prod"))  # values exact


def test_entries_are_ored_and_an_l4_rule_allows_all():
    rules = (SEED, HttpRule(method="GET", path="/healthz"))
    assert allowed(rules, req("PUT", "/api/v1")) == 0
    assert allowed(rules, req("GET", "/healthz")) == 1
    assert allowed(rules, req("GET", "/api/v1")) is None
    assert allowed(ALLOW_ALL, req("DELETE", "/anything")) == -1


def test_from_the_policy_model():
    entries = [
        PortRuleHTTP.model_validate({"method": "GET", "headers": ["X-Token", "X-Env: prod"]}),
        PortRuleHTTP.model_validate(
            {
                "path": "/a",
                "headerMatches": [
                    {"name": "X-Must", "value": "1"},  # no mismatch action: FAIL (must match)
                    {"name": "X-Logged", "value": "1", "mismatch": "LOG"},  # never refuses
                ],
            }
        ),
        PortRuleHTTP.model_validate(
            {"headerMatches": [{"name": "X-Secret", "secret": {"name": "s", "namespace": "shop"}}]}
        ),
    ]
    first, second, third = http_rules(entries)
    assert first == HttpRule(method="GET", headers=(("x-token", None), ("x-env", "prod")))
    assert second.headers == (("x-must", "1"),)
    assert rule_matches(second, req(path="/a", X_Must="1"))
    assert not rule_matches(second, req(path="/a", X_Must="2"))
    assert third.unmatchable and not rule_matches(third, req(X_Secret="anything"))  # fail closed
