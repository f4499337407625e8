"""Fuzzing the agent's cache with stored values: ``ClusterCache.update`` never raises.

The agent's syncer feeds every key under the root to ``ClusterCache.update``; an exception there
would end its watch thread. For every kind of key the agent watches (a resource of each registered
kind, IPAM blocks, endpoint records, and the keys it ignores: affinities, handles, the IPAM config),
a sequence good → fuzzed → good must hold:

* ``update`` never raises, whatever the bytes (junk, not UTF-8, arbitrary JSON, a valid document
  with one field mutated, nesting deep enough to exhaust the JSON parser's stack, a delete);
* a value the cache refuses is recorded in ``errors`` under its key and leaves what the cache held
  from the last good value exactly as it was; a value it takes clears the key's error;
* the later good value clears the error and is what the cache holds;
* what the calculation reads from the cache next (``pod_infos``, ``local_endpoints``) still works.

Long mode: ``PODNET_FUZZ=long`` (see ``conftest.py``).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fuzz_common import EXAMPLES, JSON_VALUES, KIND_KEYS, fuzz_settings, mutated
from hypothesis import given
from hypothesis import strategies as st

from podnet.calc.cluster import ClusterCache
from podnet.calc.endpoints import EndpointRecord
from podnet.datastore.keys import KeyLayout
from podnet.ipam.block import Block
from podnet.model import RESOURCE_TYPES

LAYOUT = KeyLayout("/fuzz/")
STATE = (
    "nodes",
    "pools",
    "blocks",
    "endpoints",
    "config",
    "node_annotations",
    "bgp_config",
    "bgp_peers",
    "pods",
    "namespaces",
    "netpols",
    "services",
    "calico_policies",
    "global_policies",
    "tiers",
    "admin_policies",
    "baseline_policy",
    "cluster_policies",
    "service_accounts",
)

BLOCK_CIDR = "10.244.1.0/26"
_block = Block.empty(BLOCK_CIDR, affinity="host:node-1")
GOOD_BLOCK = json.loads(_block.to_json())
GOOD_ENDPOINT = json.loads(
    EndpointRecord(
        "node-1",
        "shop",
        "web-0",
        "c0ffee",
        "eth0",
        "cali1234",
        ("10.244.1.5",),
        mac="0a:58:0a:f4:01:05",
        handle="podnet.c0ffee.eth0",
        network="k8s-pod-network",
        netns="/run/netns/x",
        labels={"app": "web"},
    ).to_json()
)
NAMESPACED = {rt.key_name: rt.namespaced for rt in RESOURCE_TYPES}


def key_and_good(kind: str, doc: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The datastore key and a good value for one kind of key."""
    if kind == "blocks":
        return LAYOUT.block(BLOCK_CIDR), copy.deepcopy(GOOD_BLOCK)
    if kind == "endpoints":
        return LAYOUT.endpoint("node-1", "c0ffee", "eth0"), copy.deepcopy(GOOD_ENDPOINT)
    if kind == "affinities":
        return LAYOUT.affinity("node-1", BLOCK_CIDR), {"state": "confirmed"}
    if kind == "handles":
        return LAYOUT.handle("podnet.c0ffee.eth0"), {"block": {BLOCK_CIDR: 1}}
    if kind == "ipam-config":
        return LAYOUT.ipam_config(), {"strictAffinity": False}
    assert doc is not None
    meta = doc["metadata"]
    namespace = (meta.get("namespace") or "default") if NAMESPACED[kind] else None
    return LAYOUT.resource(kind, meta["name"], namespace), doc


OTHER_KINDS = ["blocks", "endpoints", "affinities", "handles", "ipam-config"]


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, bytes | None, bytes]:
    """``(key, good value, fuzzed value or None for a delete, another good value)``."""
    kind = draw(st.sampled_from(KIND_KEYS + OTHER_KINDS))
    doc = draw(st.sampled_from(EXAMPLES[kind])) if kind in EXAMPLES else None
    key, good = key_and_good(kind, copy.deepcopy(doc))
    choice = draw(st.integers(0, 9))
    fuzzed: bytes | None
    if choice <= 5:
        bad_doc, _, _ = draw(mutated(good))
        fuzzed = json.dumps(bad_doc).encode()
    elif choice == 6:
        fuzzed = json.dumps(draw(JSON_VALUES)).encode()
    elif choice == 7:
        fuzzed = draw(
            st.binary(max_size=48)
            | st.sampled_from(
                [b"", b"null", b"{}", b"[]", b"\xff", b"[" * 100_000, b'{"a":' * 30_000, b"1e999"]
            )
        )
    elif choice == 8:
        fuzzed = None
    else:
        fuzzed = json.dumps(good).encode()
    return key, json.dumps(good).encode(), fuzzed, json.dumps(good, sort_keys=True).encode()


def snapshot(cache: ClusterCache) -> dict[str, Any]:
    return {name: copy.copy(getattr(cache, name)) for name in STATE}


def still_usable(cache: ClusterCache) -> None:
    cache.pod_infos()
    cache.local_endpoints("node-1")


@fuzz_settings(quick=300, long=12000)
@given(case=cases())
def test_cache_keeps_the_last_good_value(case: tuple[str, bytes, bytes | None, bytes]) -> None:
    key, good, fuzzed, good_again = case
    cache = ClusterCache(LAYOUT)

    cache.update(key, good, revision=2)
    assert key not in cache.errors, cache.errors.get(key)
    still_usable(cache)
    held = snapshot(cache)

    cache.update(key, fuzzed, revision=3)  # must not raise, whatever the bytes
    if key in cache.errors:
        assert isinstance(cache.errors[key], str) and cache.errors[key]
        assert snapshot(cache) == held, "a refused value changed what the cache held"
    still_usable(cache)
    assert cache.revision == 3

    cache.update(key, good_again, revision=4)
    assert key not in cache.errors, cache.errors.get(key)
    assert snapshot(cache) == held
    still_usable(cache)


@fuzz_settings(quick=60, long=3000)
@given(case=cases(), first_bad=st.binary(max_size=16) | st.just(b"{}"))
def test_bad_value_first_then_good(case: tuple[str, bytes, bytes | None, bytes], first_bad: bytes) -> None:
    """A key whose first value is refused holds nothing; the later good value is taken."""
    key, good, _, _ = case
    cache = ClusterCache(LAYOUT)
    empty = snapshot(cache)
    cache.update(key, first_bad)
    if key in cache.errors:
        assert snapshot(cache) == empty
    cache.update(key, good)
    assert key not in cache.errors
    still_usable(cache)
