"""The Cilium profile's map layouts (dataplane.cilium_maps): the bytes' prefix match is the policy
model's, keys round-trip, and a map moved from one content to another by map_ops never allows, at
any step, what neither the old nor the new content allows."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.calc.policymap import EGRESS, INGRESS, PolicyEntry, PolicyKey, datapath_verdict, materialize
from podnet.dataplane.cilium_maps import (
    EVENT_DROP,
    EVENT_SIZE,
    IPCACHE_POD,
    EndpointValue,
    decode_ct,
    decode_endpoint_value,
    decode_event,
    decode_ipcache_key,
    decode_ipcache_value,
    decode_policy_key,
    decode_policy_value,
    endpoint_value,
    ipcache_key,
    ipcache_value,
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
    raw = endpoint_value(3, 300, "10.244.1.5", "02:00:00:00:00:01", True, False, "ee:ee:ee:ee:ee:01")
    assert len(raw) == 24
    assert decode_endpoint_value(raw) == EndpointValue(
        3, 300, "10.244.1.5", "02:00:00:00:00:01", "ee:ee:ee:ee:ee:01", True, False, True
    )
    not_ready = endpoint_value(3, 0, "10.244.1.5", "02:00:00:00:00:01", True, True, ready=False)
    assert not decode_endpoint_value(not_ready).ready
    assert decode_ipcache_key(ipcache_key("10.244.1.5/32")) == "10.244.1.5/32"
    assert decode_ipcache_key(ipcache_key("fd00::/64")) == "fd00::/64"
    assert decode_ipcache_value(ipcache_value(300, IPCACHE_POD)) == (300, IPCACHE_POD)
    assert decode_policy_value(policy_value(PolicyEntry(False, 15001), 9)) == (False, 15001, 9)


def test_ct_and_event_records_decode_from_their_c_layout():
    key = struct.pack("!4s4sHH", bytes([10, 244, 1, 5]), bytes([10, 244, 2, 7]), 40000, 8080)
    key += struct.pack("=BBH", 6, 1, 12)
    value = struct.pack("=QQQQIIIIHHBB2x", 3, 180, 2, 120, 5000, 4990, 300, 7, 8, 0, 0x12, 0x12)
    ct = decode_ct(key, value)
    assert (ct.saddr, ct.sport, ct.daddr, ct.dport, ct.protocol) == (
        "10.244.1.5",
        40000,
        "10.244.2.7",
        8080,
        6,
    )
    assert (ct.direction, ct.endpoint, ct.expires, ct.peer_identity, ct.entry_id) == (
        EGRESS,
        12,
        5000,
        300,
        7,
    )
    assert ct.flags == ("SEEN_REPLY",)
    raw = struct.pack("=BBBBHBB", 1, 133, 0, 2, 12, 6, 0x02) + struct.pack("=IIII", 9, 300, 301, 0)
    raw += struct.pack("!4s4sHH", bytes([10, 244, 1, 5]), bytes([10, 244, 2, 7]), 40000, 80)
    raw += struct.pack("=IQB7x", 60, 123, 0)
    assert len(raw) == EVENT_SIZE == 56
    event = decode_event(raw)
    assert (event.type, event.reason, event.direction, event.endpoint) == (EVENT_DROP, 133, INGRESS, 12)
    assert (event.saddr, event.sport, event.daddr, event.dport) == ("10.244.1.5", 40000, "10.244.2.7", 80)
    assert (event.src_identity, event.dst_identity, event.length, event.match) == (300, 301, 60, "none")


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
