"""KPI-table comparison shared by the tests."""

from __future__ import annotations

import math


def same_kpis(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> bool:
    """Exact equality of two KPI tables, where nan equals nan (an empty percentile)."""
    return a.keys() == b.keys() and all(
        a[s].keys() == b[s].keys()
        and all(x == b[s][k] or (math.isnan(x) and math.isnan(b[s][k])) for k, x in a[s].items())
        for s in a
    )
