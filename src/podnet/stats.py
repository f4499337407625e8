"""Statistics shared by every layer that measures (the lab's churn, the benches): standard library
only, imports nothing of podnet, so it sits at the bottom of the layers beside ``errors``."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1, clamped): the smallest value with at least ``p`` of
    the values at or below it, never an interpolation. ``values`` in any order; NaN when empty
    (a figure that was never measured must not read as 0)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]
