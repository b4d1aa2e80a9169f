"""Wall time of the standard leaderboard (heuristics only, all suite scenarios, 5 seeds) with 1 and 2 workers.

    python benchmarks/bench_compare.py                 # full leaderboard, 1 then 2 workers
    python benchmarks/bench_compare.py --workers 1 2 4 --seeds 3

Each run is a complete ``servegym compare +experiment=leaderboard`` (parent and nested MLflow
runs in a fresh SQLite store, tables, figures and report) in its own temporary directory,
started as a subprocess so every run pays the same start-up costs. Oracles are left out: the
benchmark is about the heuristics a platform could ship.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEURISTICS = [
    "static",
    "hpa",
    "kpa",
    "hpa+jsq",
    "hpa+cascade",
    "kpa+cascade+frequency",
]


def run(workers: int, seeds: int, extra: list[str]) -> float:
    """Wall time of one leaderboard with ``workers`` joblib workers."""
    with tempfile.TemporaryDirectory(prefix="servegym-bench-compare-") as tmp:
        command = [
            sys.executable,
            "-m",
            "servegym.cli",
            "compare",
            "+experiment=leaderboard",
            f"policies=[{','.join(HEURISTICS)}]",
            f"seeds={seeds}",
            f"hydra.launcher.n_jobs={workers}",
            f"tracking.uri=sqlite:///{Path(tmp) / 'mlflow.db'}",
            f"hydra.sweep.dir={Path(tmp) / 'sweep'}",
            *extra,
        ]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra compare overrides, e.g. scenario.duration_s=600")
    args = parser.parse_args()
    jobs = len(HEURISTICS) * 5
    print(f"standard leaderboard: {len(HEURISTICS)} heuristics x 5 scenarios = {jobs} jobs x {args.seeds} seeds")
    times = {}
    for workers in args.workers:
        times[workers] = run(workers, args.seeds, args.overrides)
        print(f"  {workers} worker(s): {times[workers]:.1f} s wall", flush=True)
    first = args.workers[0]
    for workers in args.workers[1:]:
        print(f"  speed-up {workers} vs {first} worker(s): {times[first] / times[workers]:.2f}x")


if __name__ == "__main__":
    main()
