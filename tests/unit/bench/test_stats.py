"""The shared bench statistics: the guarded ratio and the rotated side order."""

from __future__ import annotations

import math

import pytest

from podnet.bench.stats import Ratio, median_or_none, ratio, rotate


def test_ratio_of_two_measurements():
    assert ratio(12.8, 12.5) == Ratio(1.024)
    assert ratio(1.0, 3.0, digits=2) == Ratio(0.33)
    assert str(ratio(12.8, 12.5)) == "1.024"


@pytest.mark.parametrize(
    ("numerator", "denominator", "reason"),
    [
        (1.0, 0.0, "baseline is 0"),
        (1.0, -2.0, "baseline is -2"),
        (1.0, None, "no baseline sample"),
        (1.0, math.nan, "baseline is not a number"),
        (1.0, math.inf, "baseline is infinite"),
        (None, 2.0, "no measurement sample"),
        (math.nan, 2.0, "measurement is not a number"),
        (-math.inf, 2.0, "measurement is infinite"),
        (None, 0.0, "baseline is 0"),  # the baseline's defect is the one reported
    ],
)
def test_ratio_without_a_usable_side_is_na_with_the_reason(numerator, denominator, reason):
    r = ratio(numerator, denominator)
    assert r == Ratio(None, reason)
    assert str(r) == f"n/a ({reason})"
    assert r.to_dict() == {"value": None, "reason": reason}


def test_ratio_names_the_sides():
    assert ratio(1.0, 0.0, names=("podnet", "independent IPIP")).reason == "independent IPIP is 0"
    assert ratio(None, 1.0, names=("podnet", "x")).reason == "no podnet sample"
    assert ratio(2.0, 1.0).to_dict() == {"value": 2.0, "reason": None}


def test_median_or_none():
    assert median_or_none([]) is None
    assert median_or_none([3.0, 1.0, 2.0]) == 2.0


def test_rotate_puts_every_side_first_once_per_cycle():
    sides = ["podnet", "baseline", "direct"]
    orders = [rotate(sides, r) for r in range(6)]
    assert orders[:3] == [
        ["podnet", "baseline", "direct"],
        ["baseline", "direct", "podnet"],
        ["direct", "podnet", "baseline"],
    ]
    assert orders[3:] == orders[:3]
    assert all(sorted(o) == sorted(sides) for o in orders)
    assert rotate([], 4) == []
