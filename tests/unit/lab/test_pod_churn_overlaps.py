"""The pure parts of the pod-churn driver: the overlap (duplicate address) checker and the figures."""

from __future__ import annotations

import math

from podnet.lab.pod_churn import Hold, fault_schedule, max_concurrent, overlaps


def test_reuse_after_the_del_is_not_an_overlap() -> None:
    holds = [
        Hold("10.0.0.1", "a", 0.0, 1.0),
        Hold("10.0.0.1", "b", 1.5, 2.0),
        Hold("10.0.0.1", "c", 2.0, 3.0),
    ]
    assert overlaps(holds) == []  # b ends exactly when c starts: touching, not overlapping


def test_two_pods_holding_one_address_at_once_are_reported() -> None:
    a, b = Hold("10.0.0.1", "a", 0.0, 2.0), Hold("10.0.0.1", "b", 1.0, 3.0)
    assert overlaps([b, a]) == [(a, b)]


def test_an_overlap_with_an_earlier_long_hold_is_found_past_a_short_one() -> None:
    long, short, late = (
        Hold("x", "long", 0.0, 10.0),
        Hold("x", "short", 1.0, 2.0),
        Hold("x", "late", 5.0, 6.0),
    )
    found = overlaps([late, short, long])
    assert (long, short) in found and (long, late) in found and len(found) == 2


def test_different_addresses_never_overlap_and_an_open_hold_lasts_for_ever() -> None:
    assert overlaps([Hold("10.0.0.1", "a", 0.0, 5.0), Hold("10.0.0.2", "b", 1.0, 2.0)]) == []
    never_deleted = Hold("10.0.0.3", "a", 0.0)
    assert never_deleted.end == math.inf
    assert overlaps([never_deleted, Hold("10.0.0.3", "b", 100.0, 101.0)]) != []


def test_the_same_pod_twice_is_reported_like_any_other_pair() -> None:
    assert len(overlaps([Hold("x", "a", 0.0, 2.0), Hold("x", "a", 0.0, 2.0)])) == 1


def test_max_concurrent_counts_open_intervals_and_touching_ends_do_not_add_up() -> None:
    assert max_concurrent([]) == 0
    assert max_concurrent([(0, 1), (1, 2), (2, 3)]) == 1
    assert max_concurrent([(0, 10), (1, 2), (1.5, 3), (5, 6)]) == 3
    assert max_concurrent(iter([(0, 2), (1, 3)])) == 2  # any iterable, read once


def test_the_full_schedule_kills_every_node_all_agents_once_and_stops_etcd() -> None:
    faults = fault_schedule(["node-1", "node-2", "node-3"], etcd_seconds=4)
    assert {f"kill:node-{i}" for i in (1, 2, 3)} <= set(faults)
    assert faults.count("kill-all") == 1 and "etcd:4" in faults
