"""One self-contained HTML page for a comparison: tables per scenario and every figure inlined.

Images are embedded as base64 ``data:`` URIs, so the file can be mailed, attached to an
MLflow run or opened offline without the PNGs next to it.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from servegym.experiments.leaderboard import (
    DECISION_ORDER,
    WORST_KPIS,
    HoldoutCheck,
    ScenarioSummary,
    holdout_heading,
    holdout_rows,
    is_oracle,
    share_text,
)
from servegym.experiments.stats import Estimate, format_estimate

__all__ = ["holdout_section", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.pareto td:first-child { font-weight: bold; }
td.better { color: #0a6b2b; } td.worse { color: #a3120e; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.meta { color: #555; font-size: 0.9em; } .failed { color: #a3120e; }
.warning { color: #8a5300; background: #fff4e0; padding: 0.4em 0.7em; border-left: 4px solid #e69500; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(e: Estimate, kpi: str, difference: bool = False) -> str:
    return html.escape(format_estimate(e, kpi, difference))


def _diff_class(e: Estimate, higher_better: bool) -> str:
    """'better'/'worse' when the 95% interval of the difference excludes zero."""
    if math.isnan(e.half_width) or abs(e.mean) <= e.half_width:
        return ""
    return "better" if (e.mean > 0) == higher_better else "worse"


def _scenario_section(s: ScenarioSummary, labels: Mapping[str, str], higher: set[str]) -> list[str]:
    out = [f"<h2>scenario {html.escape(s.scenario)}</h2>"]
    out.append(
        f'<p class="meta">{len(s.seeds)} seeds {list(s.seeds)}; mean ± 95% CI half-width, ranked by mean '
        "objective, worst seed at the right; drops count dropped and failed requests; p95 (done) is over "
        "completed requests, p95 (drop=inf) counts each drop as infinitely slow; bold: Pareto set on cost, "
        "p95 (done) and drop rate; (oracle): privileged knowledge, not a deployable policy.</p>"
    )
    if s.objective:
        out.append(f'<p class="meta">{html.escape(s.objective)}</p>')
    worst_kpis = [k for k in WORST_KPIS if any(k in w for w in s.worst.values())]
    head = "".join(f"<th>{html.escape(labels.get(k, k))}</th>" for k in s.kpis)
    head_worst = "".join(f"<th>worst {html.escape(labels.get(k, k))}</th>" for k in worst_kpis)
    out.append(f"<table><tr><th>policy</th>{head}{head_worst}</tr>")
    for p in s.policies:
        cls = ' class="pareto"' if p in s.pareto else ""
        cells = "".join(f"<td>{_cell(s.estimates[p][k], k)}</td>" for k in s.kpis)
        cells += "".join(f"<td>{html.escape(s.worst.get(p, {}).get(k, '-'))}</td>" for k in worst_kpis)
        name = html.escape(p) + (" (oracle)" if is_oracle(p) else "")
        out.append(f"<tr{cls}><td>{name}</td>{cells}</tr>")
    out.append("</table>")
    if s.flags:
        out.append(f"<h3 class='failed'>far outside the baseline ({html.escape(s.baseline)})</h3><ul>")
        out += [f"<li class='failed'>{html.escape(f)}</li>" for f in s.flags]
        out.append("</ul>")
    if s.decisions:
        names = [d for d in DECISION_ORDER if any(d in row for row in s.decisions.values())]
        out.append("<h3>who decides</h3><table><tr><th>policy</th>")
        out[-1] += "".join(f"<th>{html.escape(d)}</th>" for d in names) + "</tr>"
        for p in s.policies:
            cells = "".join(f"<td>{html.escape(s.decisions.get(p, {}).get(d, '-'))}</td>" for d in names)
            out.append(f"<tr><td>{html.escape(p)}</td>{cells}</tr>")
        out.append("</table>")
        mixed = s.mixed()
        if mixed:
            out.append("<p class='warning'>rows whose differences mix decisions:<br>")
            out.append("<br>".join(html.escape(m) for m in mixed) + "</p>")
    if s.differences:
        out.append(
            f"<h3>paired differences against {html.escape(s.baseline)}</h3>"
            '<p class="meta">Same seeds, same requests. Green/red: the 95% interval excludes zero '
            "and the policy is better/worse than the baseline.</p>"
        )
        out.append(f"<table><tr><th>policy &minus; baseline</th>{head}</tr>")
        for p in s.policies:
            if p not in s.differences:
                continue
            cells = ""
            for k in s.kpis:
                e = s.differences[p][k]
                cls = _diff_class(e, k in higher)
                cells += f'<td class="{cls}">{_cell(e, k, difference=True)}</td>'
            out.append(f"<tr><td>{html.escape(p)}</td>{cells}</tr>")
        out.append("</table>")
    if s.gap_kpis:
        refs = "; ".join(f"{labels.get(k, k)}: {html.escape(s.gap_reference[k])}" for k in s.gap_kpis)
        out.append(
            f"<h3>share of the baseline-to-oracle gap closed</h3><p class='meta'>oracle per KPI — {refs}. "
            "1 = as good as the oracle, 0 = no better than the baseline, - = the oracle does not beat the baseline.</p>"
        )
        head_gap = "".join(f"<th>{html.escape(labels.get(k, k))}</th>" for k in s.gap_kpis)
        out.append(f"<table><tr><th>policy</th>{head_gap}</tr>")
        for p in s.policies:
            cells = "".join(f"<td>{share_text(s.gaps[p][k])}</td>" for k in s.gap_kpis)
            out.append(f"<tr><td>{html.escape(p)}</td>{cells}</tr>")
        out.append("</table>")
    return out


def holdout_section(check: HoldoutCheck, kpis: Sequence[str], labels: Mapping[str, str]) -> str:
    """The held-out check of a tuning sweep as an HTML block for :func:`write_report`'s ``sections``."""
    head = "".join(f"<th>{html.escape(labels.get(k, k))}</th>" for k in kpis)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in holdout_rows(check, kpis)
    )
    return (
        f"<h2>held-out check: {html.escape(check.scenario)}</h2><p class='meta'>{html.escape(holdout_heading(check))}."
        f"</p><table><tr><th>seeds</th>{head}</tr>{rows}</table>"
    )


def write_report(
    path: Path,
    title: str,
    meta: Mapping[str, str],
    summaries: Sequence[ScenarioSummary],
    figures: Sequence[tuple[str, Path]],
    scenario_figures: Mapping[str, Sequence[tuple[str, Path]]],
    labels: Mapping[str, str],
    higher_is_better: set[str],
    failures: Sequence[str] = (),
    warnings: Sequence[str] = (),
    sections: Sequence[str] = (),
) -> Path:
    """Write the comparison as one HTML file with its figures inlined; returns ``path``.

    ``warnings`` (such as too few seeds) are shown above everything else; ``sections`` are
    extra HTML blocks (the held-out check of a tuning sweep) placed before the scenarios.
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in meta.items()),
        "</table>",
    ]
    parts += [f"<p class='warning'>{html.escape(w)}</p>" for w in warnings]
    if failures:
        parts.append("<h2 class='failed'>failed jobs</h2><ul>")
        parts += [f"<li class='failed'>{html.escape(f)}</li>" for f in failures]
        parts.append("</ul>")
    parts += list(sections)
    for caption, fig in figures:
        parts += [f"<h2>{html.escape(caption)}</h2>", _img(fig, caption)]
    for s in summaries:
        parts += _scenario_section(s, labels, higher_is_better)
        for caption, fig in scenario_figures.get(s.scenario, ()):
            parts += [f"<h3>{html.escape(caption)}</h3>", _img(fig, caption)]
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
