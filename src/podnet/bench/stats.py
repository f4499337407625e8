"""The statistics every podnet bench reports: a latency summary (nearest-rank percentiles,
:func:`podnet.stats.percentile`) and the median/min/max summary of repeated samples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from podnet.stats import percentile


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """``{n, p50_ms, p90_ms, p99_ms, max_ms, mean_ms}`` of a list of durations in seconds."""
    values = sorted(seconds)
    ms = [v * 1000 for v in values]
    return {
        "n": len(values),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p90_ms": round(percentile(ms, 0.90), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(ms[-1], 2) if ms else float("nan"),
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else float("nan"),
    }


def sample_summary(values: Sequence[float]) -> dict[str, float]:
    """``{n, median, min, max, mean}`` of repeated samples (any unit); NaN figures when empty."""
    if not values:
        nan = float("nan")
        return {"n": 0, "median": nan, "min": nan, "max": nan, "mean": nan}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }
