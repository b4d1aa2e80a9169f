"""The headline experiment: what each optimisation buys against a plain platform, with 95% intervals.

    python benchmarks/headline.py                     # servegym compare +experiment=headline, then the table
    python benchmarks/headline.py --workers 2 --seeds 5 scenario.duration_s=900

The plain platform is a static pool of the scenario's initial size, round-robin routing and
no cache. Each variant changes one thing (exact caches; exact plus semantic cache; difficulty
cascade or join-shortest-queue routing; HPA autoscaling), and ``all_together`` combines HPA,
the cascade and every cache tier. Every variant runs on the same seeds as the plain platform
(common random numbers), so the relative changes come from paired differences, per scenario:
p95 latency and cost, mean ± 95% CI, and the change against plain. The full comparison
(tables, figures, report.html) is logged to MLflow as usual.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

KPIS = (("latency_p95_s", "p95 latency s"), ("cost_usd", "cost $"), ("quality", "quality"))


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    return f"{mean:.{digits}g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.{digits}g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None, help="keep the sweep (and its MLflow store) in this directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="servegym-headline-") as tmp:
        out = Path(args.out).resolve() if args.out else Path(tmp)
        command = [
            sys.executable,
            "-m",
            "servegym.cli",
            "compare",
            "+experiment=headline",
            f"seeds={args.seeds}",
            f"hydra.launcher.n_jobs={args.workers}",
            f"hydra.sweep.dir={out / 'sweep'}",
            *args.overrides,
        ]
        if not any(o.startswith("tracking.uri=") for o in args.overrides):
            command.append(f"tracking.uri=sqlite:///{out / 'mlflow.db'}")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rows = list(csv.DictReader((out / "sweep" / "comparison" / "leaderboard.csv").open()))
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        table[r["scenario"]][r["policy"]][r["kpi"]] = {
            k: float(r[k]) for k in ("mean", "ci95", "diff_mean", "diff_ci95")
        }
    header = (
        "| scenario | variant | " + " | ".join(f"{label} | Δ {label.split()[0]} vs plain" for _, label in KPIS) + " |"
    )
    print(header)
    print("|" + "---|" * (2 + 2 * len(KPIS)))
    for scenario, variants in table.items():
        plain = variants["plain"]
        for variant, kpis in variants.items():
            cells = []
            for kpi, _ in KPIS:
                e = kpis[kpi]
                cells.append(_fmt(e["mean"], e["ci95"]))
                if variant == "plain" or not math.isfinite(e["diff_mean"]):
                    cells.append("—")
                else:
                    base = plain[kpi]["mean"]
                    if kpi == "quality":
                        cells.append(f"{e['diff_mean'] * 100:+.1f} pts ± {e['diff_ci95'] * 100:.1f}")
                    else:
                        cells.append(f"{e['diff_mean'] / base:+.0%} ± {e['diff_ci95'] / base:.0%}")
            print(f"| {scenario} | {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
