"""podnet.stats: the one percentile of podnet (the lab's churn and every bench use it)."""

from __future__ import annotations

import math

from podnet.stats import percentile


def test_percentile_is_nearest_rank_never_interpolated() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (0.0, 0.01, 0.5, 0.9, 0.99, 1.0)] == [
        1.0,
        1.0,
        50.0,
        90.0,
        99.0,
        100.0,
    ]
    assert percentile([1.0, 2.0], 0.5) == 1.0  # interpolation would say 1.5
    assert percentile([1.0, 2.0], 0.51) == 2.0


def test_percentile_takes_values_in_any_order_and_clamps_p() -> None:
    assert percentile(iter([3.0, 1.0, 2.0]), 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0], 1.5) == 2.0 and percentile([1.0, 2.0], -1) == 1.0


def test_percentile_of_nothing_is_nan_not_zero() -> None:
    assert math.isnan(percentile([], 0.5))
