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

__all__ = [
    "FRACTION_KPIS",
    "Estimate",
    "estimate",
    "few_seeds_warning",
    "format_estimate",
    "paired_difference",
    "unit_of",
]

FRACTION_KPIS: frozenset[str] = frozenset(
    {"slo_attainment", "quality", "hit_rate", "drop_rate", "failure_rate", "false_hit_rate"}
)
"""KPIs that are shares of requests: tables print them in percent (differences in points)."""

# Decimals never go beyond these (0.01%, 1 ms, $0.001): finer digits are noise in a table.
_MAX_DECIMALS = {"%": 2, "s": 3, "$": 3, "": 4}
# Decimals of a value printed without an interval (one seed); None: four significant digits.
_DEFAULT_DECIMALS: dict[str, int | None] = {"%": 2, "s": 3, "$": 2, "": None}


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
    """Mean and Student-t confidence half-width of per-seed values (NaNs are dropped).

    An infinite value (a p95 that counts drops as infinitely slow) makes the mean
    infinite and leaves no interval: it is never averaged away.
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return Estimate(math.nan, math.nan, 0)
    if not np.isfinite(x).all():
        infinite = x[~np.isfinite(x)]
        mean = float(infinite[0]) if (infinite == infinite[0]).all() else math.nan
        return Estimate(mean, math.nan, len(x))
    if len(x) == 1:
        return Estimate(float(x[0]), math.nan, 1)
    t = float(stats.t.ppf(0.5 + confidence / 2.0, len(x) - 1))
    return Estimate(float(x.mean()), t * float(x.std(ddof=1)) / math.sqrt(len(x)), len(x))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Estimate of ``mean(a - b)`` over seeds paired by position (common random numbers)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: got {len(a)} and {len(b)} values")
    if not all(math.isfinite(v) for v in (*a, *b) if not math.isnan(v)):
        return Estimate(math.nan, math.nan, 0)  # infinity minus anything has no meaningful mean
    return estimate([x - y for x, y in zip(a, b, strict=True)], confidence)


def few_seeds_warning(n: int, what: str = "comparison") -> str | None:
    """A warning for people reading intervals from fewer than 3 seeds (None from 3 on).

    With 2 seeds Student's t quantile is 12.7, so the intervals are honest but so wide they
    rarely separate anything; with 1 there are none.
    """
    if n >= 3:
        return None
    if n == 1:
        return f"warning: this {what} has 1 seed, so no confidence intervals at all; run seeds>=5 to draw conclusions"
    t = float(stats.t.ppf(0.975, n - 1))
    return (
        f"warning: this {what} has only {n} seeds, so its 95% intervals are very wide (Student's t = {t:.1f}); "
        "run seeds>=5 to draw conclusions"
    )


def unit_of(kpi: str) -> str:
    """The unit a table prints ``kpi`` in: ``%`` for shares, ``s`` for ``*_s``, ``$`` for ``*_usd``, else ``""``."""
    if kpi in FRACTION_KPIS or kpi.startswith("hit_rate"):
        return "%"
    if kpi.endswith("_s"):
        return "s"
    if kpi.endswith("_usd"):
        return "$"
    return ""


def _decimals(mean: float, half_width: float, unit: str) -> int:
    """Two significant digits of the half-width, so the mean shows what the interval can resolve."""
    if math.isfinite(half_width) and half_width > 0:
        digits = 1 - math.floor(math.log10(half_width))
    elif _DEFAULT_DECIMALS[unit] is not None:
        digits = int(_DEFAULT_DECIMALS[unit] or 0)
    elif math.isfinite(mean) and mean != 0:
        digits = 3 - math.floor(math.log10(abs(mean)))
    else:
        digits = 0
    return min(max(digits, 0), _MAX_DECIMALS[unit])


def _fixed(value: float, decimals: int, signed: bool = False) -> str:
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    # "-0.00" (or "+0.00") says a sign the rounded value does not have.
    return text.lstrip("+-") if float(text) == 0 else text


def format_estimate(e: Estimate, kpi: str, difference: bool = False) -> str:
    """``e`` as a table cell in the unit of ``kpi`` (:func:`unit_of`), ``-`` when it has no value.

    Shares print in percent (``93.53% ± 0.24``), and their differences in percentage points
    (``+0.56 pts ± 0.31``); seconds and dollars print bare, the column header names the unit
    (``p95 s``, ``cost $``). The decimals follow the half-width (two significant digits of
    it, bounded), so ``19 ± 120`` is not written as ``19.28 ± 1.2e+02``. Never scientific
    notation; CSV and MLflow keep the raw floats. A share's interval that reaches past
    0 or 100% is shown as the range cut to what is possible (``75% [0, 100%]``).
    """
    if math.isnan(e.mean):
        return "-"
    if math.isinf(e.mean):
        return "inf" if e.mean > 0 else "-inf"
    unit = unit_of(kpi)
    scale = 100.0 if unit == "%" else 1.0
    mean, half = e.mean * scale, e.half_width * scale
    d = _decimals(mean, half, unit)
    text = _fixed(mean, d, signed=difference)
    if unit == "%":
        text += " pts" if difference else "%"
        # A share lies in [0, 100%] (a difference of shares in [-100, 100] pts): an interval reaching
        # past that says nothing there, so it is shown cut to the possible range, as a range.
        low_bound = -100.0 if difference else 0.0
        if math.isfinite(half) and (mean - half < low_bound or mean + half > 100.0):
            lo, hi = max(mean - half, low_bound), min(mean + half, 100.0)
            suffix = " pts" if difference else "%"
            return f"{text} [{_fixed(lo, d, signed=difference)}, {_fixed(hi, d, signed=difference)}{suffix}]"
    if math.isfinite(half):
        text += f" ± {_fixed(half, d)}"
    return text
