"""Statistics for comparing policies over seeds: means with t intervals, paired differences.

Policies evaluated on the same seeds see the same requests (common random numbers), so
the per-seed difference between two policies removes the workload's variance; its
confidence interval is much tighter than the difference of two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Estimate", "estimate", "paired_difference"]


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds and the half-width of its confidence interval (``nan`` for one seed)."""

    mean: float
    half_width: float
    n: int

    def __str__(self) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.half_width:.2g}"


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence half-width of per-seed values (NaNs are dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, 0)
    if len(x) == 1:
        return Estimate(float(x[0]), math.nan, 1)
    t = float(stats.t.ppf(0.5 + confidence / 2.0, len(x) - 1))
    return Estimate(float(x.mean()), t * float(x.std(ddof=1)) / math.sqrt(len(x)), len(x))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Estimate of ``mean(a - b)`` over seeds paired by position (common random numbers)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: got {len(a)} and {len(b)} values")
    return estimate([x - y for x, y in zip(a, b, strict=True)], confidence)
