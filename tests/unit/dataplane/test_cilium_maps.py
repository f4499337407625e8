"""The Cilium profile's map layouts (dataplane.cilium_maps): the bytes' prefix match is the policy
model's, keys round-trip, and a map moved from one content to another by map_ops never allows, at
any step, what neither the old nor the new content allows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.calc.policymap import EGRESS, INGRESS, PolicyEntry, PolicyKey, datapath_verdict, materialize
from podnet.dataplane.cilium_maps import (
    decode_policy_key,
    endpoint_value,
    ipcache_key,
    is_deny_value,
    lpm_matches,
    map_ops,
    policy_key,
    policy_value,
)

TCP, UDP = 6, 17
KEYS = st.builds(
    lambda d, i, p, first, prefix: (
        PolicyKey(d, i)
        if p == 0
        else PolicyKey(d, i, p, first & ((0xFFFF << (16 - prefix)) & 0xFFFF), prefix)
    ),
    st.sampled_from([INGRESS, EGRESS]),
    st.sampled_from([0, 300, 301]),
    st.sampled_from([0, TCP, UDP]),
    st.integers(0, 0xFFFF),
    st.integers(0, 16),
)


@settings(max_examples=300, deadline=None)
@given(KEYS, st.sampled_from([300, 301]), st.sampled_from([TCP, UDP, 1]), st.integers(0, 0xFFFF))
def test_byte_prefix_match_is_the_models_covers(key, identity, protocol, port):
    probe = PolicyKey(key.direction, identity, protocol, port, 16)
    for peer in (identity, 0):
        probe = PolicyKey(key.direction, peer, protocol, port, 16)
        expected = key.identity == peer and key.covers(protocol, port)
        assert lpm_matches(policy_key(7, key), policy_key(7, probe)) == expected
    assert not lpm_matches(policy_key(7, key), policy_key(8, probe))  # another endpoint
    assert decode_policy_key(policy_key(7, key)) == (7, key)


def test_layout_sizes_and_fields():
    assert len(ipcache_key("10.0.0.0/8")) == 4 + 20
    assert ipcache_key("10.0.0.0/8")[:4] == (32 + 8).to_bytes(4, "little")
    assert len(policy_key(1, PolicyKey(INGRESS, 300))) == 4 + 12
    assert is_deny_value(policy_value(PolicyEntry(True), 5)) and not is_deny_value(
        policy_value(PolicyEntry(), 5)
    )
    assert len(endpoint_value(3, 300, "10.244.1.5", "02:00:00:00:00:01", True, False)) == 20


def decoded(content: dict[bytes, bytes]) -> dict[PolicyKey, PolicyEntry]:
    return {decode_policy_key(k)[1]: PolicyEntry(is_deny_value(v)) for k, v in content.items()}


def encoded(entries: dict[PolicyKey, PolicyEntry]) -> dict[bytes, bytes]:
    return {policy_key(1, k): policy_value(e, 0) for k, e in materialize(entries).items()}


MAPS = st.dictionaries(KEYS, st.builds(PolicyEntry, st.booleans()), max_size=8)
PROBES = [
    (d, i, p, port)
    for d in (INGRESS, EGRESS)
    for i in (300, 301)
    for p in (TCP, UDP)
    for port in (0, 80, 443, 40000)
]


def allowed(content: dict[bytes, bytes], probe) -> bool:
    hit = datapath_verdict(decoded(content), *probe)
    return hit is not None and not hit.deny


@settings(max_examples=200, deadline=None)
@given(MAPS, MAPS)
def test_no_step_allows_what_neither_side_allows(old_entries, new_entries):
    old, new = encoded(old_entries), encoded(new_entries)
    state = dict(old)
    for op in map_ops(old, new, is_deny_value):
        if op.value is None:
            del state[op.key]
        else:
            state[op.key] = op.value
        for probe in PROBES:
            if allowed(state, probe):
                assert allowed(old, probe) or allowed(new, probe), (probe, op)
    assert state == new
