"""The headline experiment: what each optimisation buys against a plain platform, with 95% intervals.

    python benchmarks/headline.py                     # train the learned policies, compare, print the table
    python benchmarks/headline.py --workers 2 --seeds 5 scenario.duration_s=900
    python benchmarks/headline.py --no-learned        # = servegym compare +experiment=headline

The plain platform is a static pool of the scenario's initial size, round-robin routing and
no cache. Each variant changes one thing (exact caches; exact plus semantic cache; difficulty
cascade or join-shortest-queue routing; HPA autoscaling), and ``all_together`` combines HPA,
the cascade and every cache tier.

The learned variants come first: for every scenario of the suite the script trains (with
``servegym train``, into the comparison's MLflow store, on a seed the comparison does not
use) a predictive autoscaler (``agent=predictive env=autoscaling``, a few hundred control
intervals) and a contextual-bandit router (``agent=bandit env=routing``, a few thousand
requests); the budgets are ``learned.*`` in ``servegym/conf/experiment/headline.yaml``.
``predictive_scaling`` is the trained scaler with round robin and no cache (as plain),
``learned_routing`` a static pool with the trained router and no cache, ``all_learned`` a
trained scaler and router with every cache tier (as ``all_together``). Each variant's
policies are trained on the platform it runs (the scenario with the variant's overrides: a
scaler learns the work per request, which the caches change), and per scenario because the
observation layouts are per scenario (multi_tenant's routing observation has four tenants,
the others two, so one router cannot act on both). Every trained policy is checked against
the observation layout and pool of the scenario it will act on before the comparison, and
the forecaster's held-out quality and the router's mix are printed.

Every variant runs on the same seeds as the plain platform (common random numbers), so the
relative changes come from paired differences, per scenario: p95 latency, cost, answer
quality, the share of requests dropped or failed and the objective
(:mod:`servegym.sim.objective`: cost plus the scenario's prices of SLO misses, bad answers
and drops, the trade-off the learners' rewards price too), mean ± 95% CI, and the change
against plain. The objective's prices are printed above the table. The full comparison
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

KPIS = (
    ("latency_p95_s", "p95 latency s"),
    ("cost_usd", "cost $"),
    ("quality", "quality"),
    ("drop_rate", "drops"),
    ("failure_rate", "failed"),
    ("objective_usd", "objective $"),
)
SHARES = ("quality", "drop_rate", "failure_rate")
"""Shares print in percent and change in percentage points."""


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    return f"{mean:.{digits}g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.{digits}g}"


def mismatch(policy: Any, decision: str, scenario: Any) -> str | None:
    """Why ``policy`` (a trained scaler or router) cannot act on ``scenario``'s platform, or None if it can.

    Compares the feature names the policy was built for with the scenario's observation
    layout (what :class:`~servegym.policies.adapter.PolicyController` refuses at run time),
    and for a scaler also the pool it sizes (replica bounds, slots, control interval),
    which a layout check alone would not catch.
    """
    from servegym.envs.features import interval_layout, routing_layout
    from servegym.policies import scaling_kwargs
    from servegym.sim.platform import Platform

    if decision == "scaling":
        layout = interval_layout(scenario)
    elif decision == "routing":
        layout = routing_layout(Platform(scenario, seed=0))
    else:
        raise ValueError(f"decision must be scaling or routing, not {decision!r}")
    built = getattr(policy, "layout", None)
    if built is not None and list(built.names) != list(layout.names):
        extra = sorted(set(layout.names) - set(built.names))
        missing = sorted(set(built.names) - set(layout.names))
        return f"{decision} features differ (scenario adds {extra or 'none'}, lacks {missing or 'none'})"
    if decision == "scaling":
        for key, value in scaling_kwargs(scenario).items():
            if key != "layout" and hasattr(policy, key) and getattr(policy, key) != value:
                return f"{key} = {getattr(policy, key)} in the policy, {value} in the scenario"
    return None


def learned_overrides(
    policies: Sequence[str], variants: Sequence[str], runs: Mapping[str, Mapping[str, Mapping[str, str]]]
) -> list[str]:
    """Compare overrides that add the learned ``variants`` and the run ids their specs resolve per scenario.

    ``runs`` maps variant → role (scaler, router) → scenario → MLflow run id.
    """
    listed = [*policies, *(v for v in variants if v not in policies)]
    out = [f"policies=[{','.join(listed)}]"]
    for variant, by_role in runs.items():
        for role, by_scenario in by_role.items():
            out += [f"++learned.runs.{variant}.{role}.{s}='{run_id}'" for s, run_id in by_scenario.items()]
    return out


def train_overrides(learned: Any, role: str, scenario: str, variant_overrides: Sequence[str], uri: str) -> list[str]:
    """``servegym train`` overrides for ``role`` on ``scenario`` as a variant runs it (its scenario overrides)."""
    spec = learned[role]
    out = [
        f"agent={spec.agent}",
        f"env={spec.env}",
        f"scenario={scenario}",
        f"seed={learned.seed}",
        f"total_timesteps={spec.total_timesteps}",
        f"tracking.uri={uri}",
        "progress_bar=false",
        "robustness.enabled=false",  # the comparison itself is the check here
        *(f"scenario.{o}" for o in variant_overrides),
    ]
    if spec.get("episode_duration_s") is not None:
        out.append(f"episode_duration_s={spec.episode_duration_s}")
    return out


def _scenario(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    from servegym.sim.config import scenario_from_dict

    return scenario_from_dict(OmegaConf.to_container(cfg.scenario, resolve=True))  # type: ignore[arg-type]


def _summary(role: str, metrics: Mapping[str, float], coverage: float) -> str:
    """One line on what a training run learned, from its logged metrics."""
    if role == "scaler":
        mae, naive = metrics.get("forecast/mae", math.nan), metrics.get("forecast/naive_mae", math.nan)
        verdict = "beats" if mae < naive else "loses to"
        return (
            f"forecast MAE {mae:.2f} req/s vs {naive:.2f} for persistence ({verdict} it), "
            f"{metrics.get('forecast/coverage', math.nan):.0%} inside the {coverage:.0%} interval "
            f"({metrics.get('forecast/samples', math.nan):.0f} held-out intervals), "
            f"{metrics.get('forecast/slot_s_per_request', math.nan):.2f} slot-s/request"
        )
    shares = {k.removeprefix("bandit/share_"): v for k, v in metrics.items() if k.startswith("bandit/share_")}
    mix = ", ".join(f"{b} {s:.0%}" for b, s in shares.items())
    return f"{metrics.get('bandit/rewarded', math.nan):.0f} requests rewarded; last routes {mix}"


def train_learned(
    compare_cfg: Any, scenario_overrides: Sequence[str], uri: str
) -> dict[str, dict[str, dict[str, str]]]:
    """Train every learned variant's policies for every scenario, check they fit; returns the run ids.

    ``scenario_overrides`` (``scenario.duration_s=900``, ...) are the comparison's and apply
    to training too. Returns variant → role → scenario → run id.
    """
    from hydra import compose
    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from servegym.experiments.train import run_training
    from servegym.sim.config import apply_overrides

    learned = compare_cfg.learned
    defs = OmegaConf.to_container(compare_cfg.policy_defs, resolve=False)
    assert isinstance(defs, dict)
    variants = {str(v): [str(r) for r in roles] for v, roles in learned.variants.items()}
    runs: dict[str, dict[str, dict[str, str]]] = {v: {r: {} for r in roles} for v, roles in variants.items()}
    client = MlflowClient(tracking_uri=uri)
    first = str(compare_cfg.scenarios[0])
    policies: dict[tuple[str, str, str], Any] = {}
    print(f"training the learned variants' policies per scenario (seed {learned.seed}) into {uri}", flush=True)
    for scenario in map(str, compare_cfg.scenarios):
        base = _scenario(
            compose("compare", overrides=["+experiment=headline", f"scenario={scenario}", *scenario_overrides])
        )
        for variant, roles in variants.items():
            variant_overrides = [str(o) for o in defs[variant].get("scenario") or []]
            platform = apply_overrides(base, variant_overrides)  # as the comparison's job builds it
            for role in roles:
                cfg = compose(
                    "train",
                    overrides=[*train_overrides(learned, role, scenario, variant_overrides, uri), *scenario_overrides],
                )
                result = run_training(cfg)
                runs[variant][role][scenario] = result.run_id
                policies[(variant, role, scenario)] = result.policy
                metrics = client.get_run(result.run_id).data.metrics
                coverage = float(OmegaConf.select(cfg, "agent.learner.coverage", default=math.nan))
                print(f"  {scenario:13} {variant:18} {role}: {_summary(role, metrics, coverage)}", flush=True)
                decision = "scaling" if role == "scaler" else "routing"
                reason = mismatch(result.policy, decision, platform)
                if reason is not None:
                    raise SystemExit(
                        f"headline: the {role} trained for {variant} on {scenario} cannot act there: {reason}"
                    )
                if scenario != first:
                    cross = mismatch(policies[(variant, role, first)], decision, platform)
                    if cross is not None:
                        print(f"  ({variant}'s {role} trained on {first} could not act on {scenario}: {cross})")
    print("every trained policy fits the observation layout and pool of the scenario it runs on", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None, help="keep the sweep (and its MLflow store) in this directory")
    parser.add_argument("--no-learned", action="store_true", help="skip training: the heuristic variants only")
    parser.add_argument("--table", default=None, help="only print the table of a kept comparison directory")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.table is not None:
        print_table(Path(args.table))
        return
    with tempfile.TemporaryDirectory(prefix="servegym-headline-") as tmp:
        out = Path(args.out).resolve() if args.out else Path(tmp)
        overrides = list(args.overrides)
        given = [o for o in overrides if o.startswith("tracking.uri=")]
        uri = given[-1].partition("=")[2] if given else f"sqlite:///{out / 'mlflow.db'}"
        if not given:
            overrides.append(f"tracking.uri={uri}")
        extra: list[str] = []
        if not args.no_learned:
            from hydra import compose, initialize_config_module

            from servegym.experiments.schema import register_configs
            from servegym.experiments.tracking import tracking_uri

            register_configs()
            uri = tracking_uri(uri, Path.cwd())
            with initialize_config_module("servegym.conf", version_base=None):
                job_overrides = [o for o in overrides if not o.startswith(("hydra", "tracking.uri="))]
                cfg = compose("compare", overrides=["+experiment=headline", f"seeds={args.seeds}", *job_overrides])
                runs = train_learned(cfg, [o for o in job_overrides if o.startswith("scenario.")], uri)
            extra = learned_overrides(list(cfg.policies), list(runs), runs)
        command = [
            sys.executable,
            "-m",
            "servegym.cli",
            "compare",
            "+experiment=headline",
            f"seeds={args.seeds}",
            f"hydra.launcher.n_jobs={args.workers}",
            f"hydra.sweep.dir={out / 'sweep'}",
            *overrides,
            *extra,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        print_table(out / "sweep" / "comparison")


def print_table(comparison: Path) -> None:
    """The headline table (markdown) from a comparison's ``leaderboard.csv``, its prices above it.

    ``python benchmarks/headline.py --table <sweep dir>/comparison`` prints it again from a kept run.
    """
    rows = list(csv.DictReader((comparison / "leaderboard.csv").open()))
    text = (comparison / "leaderboard.txt").read_text()
    prices = sorted({line for line in text.splitlines() if line.startswith("objective = ")})
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        table[r["scenario"]][r["policy"]][r["kpi"]] = {
            k: float(r[k]) for k in ("mean", "ci95", "diff_mean", "diff_ci95")
        }
    header = (
        "| scenario | variant | " + " | ".join(f"{label} | Δ {label.split()[0]} vs plain" for _, label in KPIS) + " |"
    )
    print("\n".join(prices))
    print(header)
    print("|" + "---|" * (2 + 2 * len(KPIS)))
    for scenario, variants in table.items():
        plain = variants["plain"]
        for variant, kpis in variants.items():
            cells = []
            for kpi, _ in KPIS:
                e = kpis[kpi]
                if kpi in SHARES:
                    cells.append(_fmt(e["mean"] * 100, e["ci95"] * 100) + "%")
                else:
                    cells.append(_fmt(e["mean"], e["ci95"]))
                if variant == "plain" or not math.isfinite(e["diff_mean"]):
                    cells.append("—")
                else:
                    base = plain[kpi]["mean"]
                    if kpi in SHARES:
                        cells.append(f"{e['diff_mean'] * 100:+.1f} pts ± {e['diff_ci95'] * 100:.1f}")
                    else:
                        cells.append(f"{e['diff_mean'] / base:+.0%} ± {e['diff_ci95'] / base:.0%}")
            print(f"| {scenario} | {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
