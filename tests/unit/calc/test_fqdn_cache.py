"""The toFQDNs cache (calc.fqdn_cache): learnt addresses kept for their TTL, at least min_ttl,
matched by selectors, forgotten when expired, the same after a round trip through JSON."""

from __future__ import annotations

import pytest

from podnet.calc.fqdn_cache import FqdnCache
from podnet.model.cilium import FQDNSelector

API = FQDNSelector.model_validate({"matchName": "api.example.test"})
ANY_SUB = FQDNSelector.model_validate({"matchPattern": "*.example.test"})


def test_learn_match_and_expire():
    cache = FqdnCache(min_ttl=10)
    assert cache.learn("API.example.test.", ["192.0.2.10", "192.0.2.11"], ttl=3, now=100.0)
    assert not cache.learn("api.example.test", ["192.0.2.10"], ttl=3, now=101.0)  # nothing new
    assert cache.learn("db.example.test", ["192.0.2.20"], ttl=60, now=100.0)
    assert cache.addresses([API], now=105.0) == {"192.0.2.10", "192.0.2.11"}  # min_ttl, not 3 s
    assert cache.addresses([ANY_SUB], now=105.0) == {"192.0.2.10", "192.0.2.11", "192.0.2.20"}
    assert cache.addresses([API], now=111.0) == set()  # 101 + 10: expired (not yet collected)
    assert cache.expire(now=111.0) == [
        ("api.example.test.", "192.0.2.10"),
        ("api.example.test.", "192.0.2.11"),
    ]
    assert cache.addresses([ANY_SUB], now=111.0) == {"192.0.2.20"}
    assert cache.expire(now=161.0) == [("db.example.test.", "192.0.2.20")] and cache.names == {}


def test_json_round_trip_and_bad_input():
    cache = FqdnCache(min_ttl=5)
    cache.learn("api.example.test", ["192.0.2.10"], ttl=30, now=1000.0)
    again = FqdnCache.from_json(cache.to_json())
    assert again == cache and again.addresses([API], now=1029.0) == {"192.0.2.10"}
    with pytest.raises(ValueError):
        FqdnCache.from_json("[]")
