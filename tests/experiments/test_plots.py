"""Figures draw only possible values."""

from __future__ import annotations

import math

from servegym.experiments.plots import _nonnegative_bar


def test_error_bars_of_nonnegative_quantities_stop_at_zero() -> None:
    # Two seeds give t = 12.7: a p95 of 19 s can have a half-width of 120 s.
    bar = _nonnegative_bar(19.0, 120.0)
    assert bar is not None
    below, above = bar
    assert (19.0 - below[0], 19.0 + above[0]) == (0.0, 139.0)
    assert _nonnegative_bar(5.0, 2.0) == [[2.0], [2.0]]  # an interval inside [0, inf) is drawn whole
    assert _nonnegative_bar(5.0, math.nan) is None  # one seed: no interval
