"""The policy map's keys and deny precedence (calc.policymap): what the datapath's two
longest-prefix lookups decide equals what the rules mean, entry by entry, for random maps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podnet.calc.policymap import (
    EGRESS,
    INGRESS,
    PolicyEntry,
    PolicyKey,
    add_entry,
    datapath_verdict,
    materialize,
    port_prefixes,
    reference_verdict,
)

TCP, UDP = 6, 17


def covered(pairs: list[tuple[int, int]]) -> set[int]:
    return {p for port, prefix in pairs for p in range(port, port + (1 << (16 - prefix)))}


@pytest.mark.parametrize(
    ("first", "last"), [(80, 80), (0, 65535), (1, 65535), (8080, 8090), (1024, 2047), (5, 6), (65535, 65535)]
)
def test_port_prefixes_cover_exactly_the_range(first, last):
    pairs = port_prefixes(first, last)
    assert covered(pairs) == set(range(first, last + 1))
    assert sum(1 << (16 - prefix) for _, prefix in pairs) == last - first + 1  # disjoint
    for port, prefix in pairs:
        PolicyKey(INGRESS, 1, TCP, port, prefix)  # every pair is a valid key


def test_port_prefixes_known_cases():
    assert port_prefixes(80, 80) == [(80, 16)]
    assert port_prefixes(0, 65535) == [(0, 0)]
    assert port_prefixes(8080, 8083) == [(8080, 14)]
    assert port_prefixes(8079, 8080) == [(8079, 16), (8080, 16)]
    with pytest.raises(ValueError, match="outside 0-65535"):
        port_prefixes(10, 70000)


def test_keys_refuse_what_the_map_cannot_hold():
    with pytest.raises(ValueError, match="every port"):
        PolicyKey(INGRESS, 0, 0, 80, 16)
    with pytest.raises(ValueError, match="not a port prefix"):
        PolicyKey(INGRESS, 0, TCP, 81, 15)


def test_broad_deny_over_a_narrow_allow_of_the_same_peer():
    deny_tcp = PolicyKey(INGRESS, 300, TCP, 0, 0)
    allow_80 = PolicyKey(INGRESS, 300, TCP, 80, 16)
    raw = {deny_tcp: PolicyEntry(True, 0, ("cnp/deny",)), allow_80: PolicyEntry(False, 0, ("np/allow",))}
    assert datapath_verdict(raw, INGRESS, 300, TCP, 80).deny is False  # the gap, unmaterialized
    done = materialize(raw)
    hit = datapath_verdict(done, INGRESS, 300, TCP, 80)
    assert hit.deny and hit.provenance == ("cnp/deny", "np/allow")
    assert datapath_verdict(done, INGRESS, 301, TCP, 80) is None  # another peer: no entry


def test_add_entry_merges():
    key = PolicyKey(EGRESS, 0, UDP, 53, 16)
    entries: dict = {}
    add_entry(entries, key, PolicyEntry(False, 0, ("a",)))
    add_entry(entries, key, PolicyEntry(False, 15001, ("b",)))
    assert entries[key] == PolicyEntry(False, 15001, ("a", "b"))
    add_entry(entries, key, PolicyEntry(True, 0, ("c",)))
    assert entries[key] == PolicyEntry(True, 0, ("a", "b", "c"))


IDENTITIES = st.sampled_from([0, 300, 301])
PROTOCOLS = st.sampled_from([0, TCP, UDP])


@st.composite
def keys(draw):
    protocol = draw(PROTOCOLS)
    if protocol == 0:
        return PolicyKey(draw(st.sampled_from([INGRESS, EGRESS])), draw(IDENTITIES))
    first = draw(st.integers(0, 40))
    port, prefix = draw(st.sampled_from(port_prefixes(first, first + draw(st.integers(0, 20)))))
    return PolicyKey(draw(st.sampled_from([INGRESS, EGRESS])), draw(IDENTITIES), protocol, port, prefix)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys(), st.booleans()), max_size=12))
def test_datapath_equals_meaning_after_materialize(rules):
    entries: dict = {}
    for index, (key, deny) in enumerate(rules):
        add_entry(entries, key, PolicyEntry(deny, 0, (f"rule {index}",)))
    done = materialize(entries)
    for direction in (INGRESS, EGRESS):
        for identity in (300, 301, 999):
            for protocol in (TCP, UDP, 1):
                for port in range(0, 64, 3):
                    got = datapath_verdict(done, direction, identity, protocol, port)
                    want = reference_verdict(entries.items(), direction, identity, protocol, port)
                    assert (None if got is None else not got.deny) == want, (
                        direction,
                        identity,
                        protocol,
                        port,
                    )
