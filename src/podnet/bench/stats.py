"""The statistics every podnet bench reports: a latency summary (nearest-rank percentiles,
:func:`podnet.stats.percentile`), the median/min/max summary of repeated samples, guarded ratios
and the rotated order of interleaved sides."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

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


def median_or_none(values: Sequence[float]) -> float | None:
    """The median, or None when there is no sample."""
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator``, or ``value`` None and ``reason`` saying why there is none."""

    value: float | None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.value:.3f}" if self.value is not None else f"n/a ({self.reason})"

    def to_dict(self) -> dict[str, float | str | None]:
        return {"value": self.value, "reason": self.reason or None}

    @property
    def number(self) -> float:
        """The value, NaN when there is none (for tables that print a float column)."""
        return self.value if self.value is not None else float("nan")


def _defect(value: float | None, name: str) -> str:
    if value is None:
        return f"no {name} sample"
    if math.isnan(value):
        return f"{name} is not a number"
    if math.isinf(value):
        return f"{name} is infinite"
    return ""


def ratio(
    numerator: float | None,
    denominator: float | None,
    *,
    names: tuple[str, str] = ("measurement", "baseline"),
    digits: int = 3,
) -> Ratio:
    """A ratio that never raises nor returns inf/NaN: a missing, NaN, infinite, zero or negative
    denominator (or a missing, NaN, infinite numerator) gives n/a with the reason, naming the
    sides by ``names``."""
    reason = _defect(denominator, names[1])
    if not reason and denominator is not None and denominator <= 0:
        reason = f"{names[1]} is {denominator:g}"
    reason = reason or _defect(numerator, names[0])
    if reason or numerator is None or denominator is None:
        return Ratio(None, reason)
    return Ratio(round(numerator / denominator, digits))


def rotate(sides: Sequence[str], round_index: int) -> list[str]:
    """The sides' order in round ``round_index``: rotated by one each round, so none is always
    first (first after a warm-up, or after another side's run)."""
    if not sides:
        return []
    k = round_index % len(sides)
    return [*sides[k:], *sides[:k]]
