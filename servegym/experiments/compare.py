"""``servegym compare``: policies x scenarios x seeds as a Hydra multirun, one MLflow run per job.

A Hydra app (config ``servegym/conf/compare.yaml``) that always runs as a multirun::

    servegym compare policies=[static+round_robin,hpa+cascade,oracle_router] scenarios=[steady,bursty] seeds=5
    servegym compare +experiment=leaderboard                 # the standard leaderboard
    servegym compare policies=[hpa+round_robin,run:<id>+round_robin] hydra.launcher.n_jobs=4

How it runs:

1. :class:`ComparisonCallback` ``on_multirun_start`` validates the comparison — known
   scenarios and ``env_id``, policies whose decisions ``env_id`` exposes, trained runs that
   exist in the tracking store, no Hydra sweep over a list the comparison iterates itself
   (``policies=a,b`` for ``policies=[a,b]``) — and the values the jobs would reject: it
   builds each job's scenario and policies as the job does (a bad ``scenario.*`` or
   ``params.*`` value, a missing trace), without simulating. It exits 2 with one line
   before any job starts; then it creates the *parent* MLflow run (tagged with the sweep directory).
2. The sweeper turns ``policies`` and ``scenarios`` into one job per pair (the ``scenario``
   config group is swept, so every scenario YAML is validated by the structured schema).
   Jobs run in parallel — the joblib launcher by default, submitit or Ray by choosing
   ``hydra/launcher`` — and each one (:func:`run_job`) finds the parent by its tag, runs
   every seed and records a *nested* run: KPIs per seed (``kpi/<name>`` at step = seed),
   means and 95% half-widths (``mean/<name>``, ``ci95/<name>``) and ``results.json``
   (per-seed KPIs and the telemetry the figures need).
3. ``on_multirun_end`` reads the nested runs back from MLflow — so it works for any
   launcher — and logs to the parent, and writes under ``<sweep dir>/comparison/``: the
   tables (:mod:`servegym.experiments.leaderboard`), the figures
   (:mod:`servegym.experiments.plots`) and a self-contained ``report.html``.

A policy is a spec of :mod:`servegym.experiments.evaluate` (heuristics joined by ``+``,
oracles), optionally with trained policies from MLflow: ``run:<run id>`` or
``models:/<name>/<version>`` (or ``models:/<name>@<alias>``) for the ``policy/`` artifact
of a ``servegym train`` run. A trained scaler or router joins heuristics for the other
decisions (``run:<id>+cascade``) and runs as the simulator's controller; a trained
caching or platform policy runs alone inside its Gymnasium environment (no time series).
Tables name ``run:<id>`` by the run's MLflow name; the id stays in the job's tags and params.
``policy_defs.<label>`` names a variant: a spec with scenario overrides and policy
parameters (the headline experiment's "plain platform, no cache" is one).

Policy arguments are ``params.<policy>.<argument>``; the ``policy`` config group
(``servegym/conf/policy/<name>.yaml``) fills ``params`` with every policy's defaults, so
``--cfg job`` shows them and a misspelt argument fails at composition. The ``workload``
config group replaces the workload of every compared scenario (``workload=diurnal``); the
tables then name each scenario ``<scenario>+<workload>``.

Each job returns the mean ``objective_usd`` (:mod:`servegym.sim.objective`: cost plus the
scenario's prices per SLO miss, bad answer and dropped or failed request), which the
Optuna sweeper minimises when tuning heuristics. The best of many trials,
scored on the seeds it was picked on, looks better than it is (the winner's curse): with
``holdout_seeds`` set, ``on_multirun_end`` re-runs each scenario's best job on those seeds,
through the code path of the jobs, and reports both scores (``holdout/*`` on the parent run).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from servegym.experiments.evaluate import (
    DECISIONS,
    ENV_DECISIONS,
    KPI_COLUMNS,
    PolicyResult,
    _controller,
    decisions_of,
    simulate,
)
from servegym.experiments.leaderboard import (
    HIGHER_IS_BETTER,
    HoldoutCheck,
    ScenarioSummary,
    format_holdout,
    format_summary,
    is_oracle,
    summarise,
)
from servegym.experiments.robustness import SHIFTS, shifted_scenarios, trace_shift
from servegym.experiments.schema import register_configs
from servegym.experiments.stats import estimate, few_seeds_warning
from servegym.experiments.tracking import (
    BatchLogger,
    TrackingServerUnreachableError,
    flatten,
    provenance_tags,
    require_server,
    tracking_uri,
    uri_setting,
)
from servegym.policies.base import Policy
from servegym.sim.config import (
    SCENARIO_DIR,
    ConfigError,
    ScenarioConfig,
    _scenario_path,
    apply_overrides,
    scenario_from_dict,
)
from servegym.sim.objective import prices_of
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED, intervals_to_columns, trace_summary
from servegym.sim.workload import TraceError

__all__ = [
    "ComparisonCallback",
    "PolicyDef",
    "TrainedRun",
    "aggregate",
    "app",
    "readable_label",
    "refuse_list_sweeps",
    "resolve_policy",
    "run_job",
    "seeds_of",
    "sweep_values",
    "telemetry_of",
    "trained_run",
]

log = logging.getLogger(__name__)
# Results are small JSON files read back in a loop: no progress bar per download.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

TABLE_KPIS = tuple(k for k, _ in KPI_COLUMNS)
"""The leaderboard's columns: evaluate's, the objective first, drops and failures beside every mean."""
LABELS: dict[str, str] = dict(KPI_COLUMNS)
QUANTILE_PROBS = np.linspace(0.0, 1.0, 101)
TRAINED_PREFIXES = ("run:", "models:/")
TRAINED_DECISIONS = {"servegym/Autoscaling-v0": "scaling", "servegym/Routing-v0": "routing"}
SWEEP_TAG = "servegym.sweep_dir"
RESULTS = "results.json"
JOB_CONFIG = "config/job.yaml"


def sweep_values(values: Any) -> str:
    """A list as a Hydra sweep string of quoted values (``[a, b+c]`` → ``'a','b+c'``)."""
    items = list(values) if isinstance(values, list | tuple) or OmegaConf.is_list(values) else [values]
    if not items:
        raise ConfigError("a comparison needs at least one policy and one scenario (got an empty list)")
    for item in items:
        if "'" in str(item) or "," in str(item):
            raise ConfigError(f"{item!r}: policy and scenario names cannot contain quotes or commas")
    return ",".join(f"'{item}'" for item in items)


def _rounded(value: Any, digits: Any = 3) -> float:
    """``value`` rounded to ``digits`` decimals: short, readable labels for tuned parameters."""
    return round(float(value), int(digits))


OmegaConf.register_new_resolver("servegym.sweep", sweep_values, replace=True)
OmegaConf.register_new_resolver("servegym.round", _rounded, replace=True)
register_configs()


def seeds_of(value: Any) -> list[int]:
    """``seeds`` as a list: an integer ``n`` means seeds ``0..n-1``; a list is taken as it is."""
    if isinstance(value, bool):
        raise ConfigError(f"seeds = {value!r} is invalid: an integer n (seeds 0..n-1) or a list of seeds")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"seeds = {value} is invalid: must be >= 1")
        return list(range(value))
    if isinstance(value, list | tuple) or OmegaConf.is_list(value):
        seeds = list(value)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ConfigError(f"seeds = {seeds!r} is invalid: a non-empty list of integers >= 0")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds = {seeds!r} lists a seed twice")
        return [int(s) for s in seeds]
    raise ConfigError(f"seeds = {value!r} is invalid: an integer n (seeds 0..n-1) or a list of seeds")


@dataclass(frozen=True)
class PolicyDef:
    """What a policy label means: a spec, scenario overrides and policy parameters."""

    label: str
    spec: str
    scenario_overrides: tuple[str, ...] = ()
    params: Mapping[str, Mapping[str, Any]] | None = None


def resolve_policy(label: str, policy_defs: Mapping[str, Any], params: Mapping[str, Any]) -> PolicyDef:
    """The definition of ``label``: from ``policy_defs`` if it names one there, else ``label`` is the spec.

    A definition's ``params`` override ``params`` argument by argument (``policy_defs.x.params.hpa
    = {tolerance: 0.2}`` keeps every other argument of ``params.hpa``). The spec's parts must be
    known policy names or trained-policy references, and the arguments they use must be set
    (``params.scheduled.schedule`` has no default); the error says which part or key is wrong
    and what is allowed.
    """
    entry = policy_defs.get(label)
    if entry is None:
        definition = PolicyDef(label, label, (), params)
    else:
        if not isinstance(entry, Mapping) or "spec" not in entry:
            raise ConfigError(f"policy_defs.{label} must be a mapping with a spec (and optional scenario, params)")
        unknown = sorted(set(entry) - {"spec", "scenario", "params"})
        if unknown:
            raise ConfigError(f"policy_defs.{label}: unknown key {unknown[0]}; allowed: spec, scenario, params")
        own = dict(entry.get("params") or {})
        for name, args in own.items():
            if not isinstance(args, Mapping):
                raise ConfigError(
                    f"policy_defs.{label}.params.{name} = {args!r} is invalid: must map argument names to values"
                )
        merged = {**params, **{name: {**dict(params.get(name) or {}), **dict(args)} for name, args in own.items()}}
        overrides = tuple(str(o) for o in entry.get("scenario") or ())
        definition = PolicyDef(label, str(entry["spec"]), overrides, merged)
    for part in definition.spec.split("+"):
        if part.startswith(TRAINED_PREFIXES):
            continue
        if part not in DECISIONS:
            raise ConfigError(
                f"policy {label!r}: {part!r} is not a policy; use one of {', '.join(sorted(DECISIONS))}, "
                "run:<mlflow run id> or models:/<registered name>/<version>"
            )
        for key, value in dict((definition.params or {}).get(part) or {}).items():
            if isinstance(value, str) and value == MISSING:
                raise ConfigError(
                    f"policy {label!r}: params.{part}.{key} is required and has no default "
                    f"(servegym/conf/policy/{part}.yaml); give it, e.g. params.{part}.{key}=<value>"
                )
    return definition


def telemetry_of(platform: Platform) -> dict[str, Any]:
    """What the figures need from one run: latency quantiles and interval time series."""
    cols = platform.requests.frame(platform.arrived)
    done = cols["outcome"] == COMPLETED
    latency = (cols["end_s"] - cols["arrival_s"])[done]
    iv = intervals_to_columns(platform.intervals, platform.level_names)
    arrivals = iv["arrivals"].astype(np.float64) if len(platform.intervals) else np.zeros(0)
    series: dict[str, list[float]] = {
        name: np.asarray(iv[name], dtype=np.float64).tolist()
        for name in ("time_s", "arrival_rate_rps", "ready_replicas", "target_replicas", "latency_p95_s")
        if name in iv
    }
    with np.errstate(invalid="ignore", divide="ignore"):
        for tier in platform.level_names:
            rate = np.where(arrivals > 0, iv[f"hits_{tier}"] / np.maximum(arrivals, 1.0), np.nan)
            series[f"hit_rate_{tier}"] = rate.tolist()
    return {
        "latency_quantiles": np.quantile(latency, QUANTILE_PROBS).tolist() if len(latency) else [],
        "intervals": series,
    }


def _named_kpis(kpis: Mapping[str, float], level_names: Sequence[str]) -> dict[str, float]:
    """Overall KPIs (the objective among them) with per-tier hit rates by tier name."""
    out = dict(kpis)
    for k, tier in enumerate(level_names):
        if f"hit_rate_l{k}" in out:
            out[f"hit_rate_{tier}"] = out.pop(f"hit_rate_l{k}")
    return out


def _json_safe(value: Any) -> Any:
    """Standard JSON: ``nan`` (no value) as null, infinities (a p95 counting drops) as ``"inf"``/``"-inf"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if value is None:
        return math.nan
    if value in ("inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


# -- trained policies -----------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedRun:
    """The MLflow run a trained-policy reference (``run:<id>``, ``models:/...``) points to."""

    ref: str
    run_id: str
    name: str
    env: str
    scenario: str


def trained_run(ref: str, client: MlflowClient) -> TrainedRun:
    """Look up ``ref`` in the tracking store; a ConfigError in one line when it names nothing there."""
    where = f"at tracking URI {client.tracking_uri}"
    if ref.startswith("run:"):
        run_id = ref.removeprefix("run:")
    else:
        name, _, version = ref.removeprefix("models:/").partition("/")
        try:
            if "@" in name:
                name, _, alias = name.partition("@")
                run_id = str(client.get_model_version_by_alias(name, alias).run_id)
            else:
                run_id = str(client.get_model_version(name, version).run_id)
        except Exception as exc:
            raise ConfigError(f"policy {ref}: no such registered model version {where}") from exc
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ConfigError(f"policy {ref}: no MLflow run {run_id!r} {where} (servegym train prints its id)") from exc
    tags = run.data.tags
    return TrainedRun(
        ref, run_id, str(run.info.run_name or run_id), tags.get("servegym.env", ""), tags.get("servegym.scenario", "")
    )


def _load_trained(ref: str, client: MlflowClient, into: Path) -> tuple[Policy, str, dict[str, Any]]:
    """A trained policy from ``run:<id>`` or ``models:/<name>/<version|@alias>``: (policy, env id, run config)."""
    from servegym.agents.io import load_policy

    found = trained_run(ref, client)
    local = Path(client.download_artifacts(found.run_id, "policy", str(into)))
    config: dict[str, Any] = {}
    try:
        config = yaml.safe_load(
            Path(client.download_artifacts(found.run_id, "config/config.yaml", str(into))).read_text()
        )
    except Exception:  # runs logged outside servegym train may have no config; env kwargs then default
        config = {}
    return load_policy(local), found.env, config


def readable_label(policy: str, client: MlflowClient) -> str:
    """``policy`` with each ``run:<id>`` part replaced by that run's name, for tables (ids stay in tags)."""
    parts = []
    for part in policy.split("+"):
        if part.startswith("run:"):
            # a missing run keeps its reference: the job's own error says it is missing
            with contextlib.suppress(Exception):
                part = str(client.get_run(part.removeprefix("run:")).info.run_name or part)
        parts.append(part)
    return "+".join(parts)


def _run_seeds(
    definition: PolicyDef,
    env_id: str,
    scenario: ScenarioConfig,
    seeds: Sequence[int],
    client: MlflowClient,
    workdir: Path,
) -> tuple[list[dict[str, float]], list[str], dict[str, Any] | None]:
    """Per-seed overall KPIs, the level names and the telemetry (None for policies run inside an env)."""
    parts = definition.spec.split("+")
    trained_refs = [p for p in parts if p.startswith(TRAINED_PREFIXES)]
    heuristics = "+".join(p for p in parts if not p.startswith(TRAINED_PREFIXES)) or "builtin"
    trained: dict[str, Policy] = {}
    in_env: tuple[Policy, str, dict[str, Any]] | None = None
    for ref in trained_refs:
        policy, trained_env, config = _load_trained(ref, client, workdir / f"trained{len(trained)}")
        decision = TRAINED_DECISIONS.get(trained_env)
        if decision is None:
            if len(parts) > 1:
                raise ConfigError(
                    f"policy {definition.label!r}: {ref} was trained on {trained_env or 'an unknown env'}; only "
                    "scaling (Autoscaling-v0) and routing (Routing-v0) policies combine with heuristics"
                )
            in_env = (policy, trained_env, config)
        elif decision in trained:
            raise ConfigError(f"policy {definition.label!r} names two trained {decision} policies")
        else:
            trained[decision] = policy
    params = definition.params or {}
    if in_env is not None:
        from servegym.experiments.train import evaluate_in_env

        policy, trained_env, config = in_env
        kwargs = {"scenario": scenario, **dict((config.get("env") or {}).get("kwargs") or {})}
        kwargs.pop("duration_s", None)
        kpis = evaluate_in_env(policy, trained_env, kwargs, seeds)
        return kpis, list(Platform(scenario, seed=int(seeds[0])).level_names), None
    kpis_out: list[dict[str, float]] = []
    quantiles: list[list[float]] = []
    series: dict[str, Any] = {}
    levels: list[str] = []
    for i, seed in enumerate(seeds):
        platform = simulate(heuristics, env_id, scenario, int(seed), params, trained)
        kpis_out.append(platform.kpis()["all"])
        t = telemetry_of(platform)
        quantiles.append(t["latency_quantiles"])
        if i == 0:
            series = t["intervals"]
            levels = list(platform.level_names)
    telemetry = {
        "latency_quantiles": [q for q in quantiles if q],
        "quantile_probs": QUANTILE_PROBS.tolist(),
        "intervals": series,
        "series_seed": int(seeds[0]),
        "level_names": levels,
    }
    return kpis_out, levels, telemetry


# -- finding the parent run ------------------------------------------------------------------
def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:  # another process created it meanwhile
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _find_parent(client: MlflowClient, experiment_id: str, sweep_dir: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_dir}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _metric_key(text: str) -> str:
    """MLflow allows letters, digits, ``_ - . /`` and spaces in keys; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


# -- one job -----------------------------------------------------------------------------------
def _job_inputs(c: Mapping[str, Any], base_dir: str | Path) -> tuple[PolicyDef, ScenarioConfig]:
    """The job's policy definition and its scenario (with the policy's overrides, a trace path made absolute)."""
    definition = resolve_policy(str(c["job_policy"]), c.get("policy_defs") or {}, c.get("params") or {})
    data = dict(c["scenario"])
    trace = (data.get("workload") or {}).get("trace_path")
    if trace and not Path(str(trace)).is_absolute():
        data["workload"] = {**data["workload"], "trace_path": str((Path(base_dir) / str(trace)).resolve())}
    try:
        scenario = scenario_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"scenario.{exc}") from exc
    return definition, apply_overrides(scenario, list(definition.scenario_overrides))


def robustness_shifts(c: Mapping[str, Any], base_dir: str | Path = ".") -> tuple[list[str], str | None, str]:
    """The comparison's workload shifts, its trace to replay (absolute) and the trace's schema.

    ``robustness.shifts: auto`` (the default) means :data:`~servegym.experiments.robustness.SHIFTS`
    when a trained policy (``run:``, ``models:/``) is among the policies, and none otherwise:
    a learned policy is the one likely to have fit the workload it was trained on.
    """
    settings = dict(c.get("robustness") or {})
    unknown = sorted(set(settings) - {"shifts", "trace_path", "trace_schema"})
    if unknown:
        raise ConfigError(f"robustness.{unknown[0]}: unknown key; allowed: shifts, trace_path, trace_schema")
    shifts = settings.get("shifts", "auto")
    if shifts == "auto":
        defs, params = c.get("policy_defs") or {}, c.get("params") or {}
        specs = [resolve_policy(str(p), defs, params).spec for p in c.get("policies") or []]
        trained = any(part.startswith(TRAINED_PREFIXES) for spec in specs for part in spec.split("+"))
        shifts = list(SHIFTS) if trained else []
    if not isinstance(shifts, list | tuple) and not OmegaConf.is_list(shifts):
        raise ConfigError(f"robustness.shifts = {shifts!r} is invalid: auto, or a list of {', '.join(SHIFTS)}")
    unknown = [str(x) for x in shifts if str(x) not in SHIFTS]
    if unknown:
        raise ConfigError(f"robustness.shifts: {unknown[0]!r} is not a workload shift; known: {', '.join(SHIFTS)}")
    trace = settings.get("trace_path")
    if trace is not None:
        trace = str((Path(base_dir) / str(trace)).resolve())
    return [str(x) for x in shifts], trace, str(settings.get("trace_schema", "azure"))


def _shifted(scenario: ScenarioConfig, c: Mapping[str, Any], base_dir: str | Path) -> dict[str, ScenarioConfig]:
    """The job's scenario under the comparison's workload shifts, by shift name."""
    shifts, trace, schema = robustness_shifts(c, base_dir)
    try:
        replay = trace_shift(scenario, trace, schema) if trace is not None else None
    except (TraceError, ConfigError) as exc:
        raise ConfigError(f"robustness.trace_path = {trace!r}: {exc}") from None
    return shifted_scenarios(scenario, shifts, replay)


def _row_decisions(spec: str, env_id: str, scenario: ScenarioConfig, client: MlflowClient) -> dict[str, str]:
    """Who makes each decision of the row (:func:`~servegym.experiments.evaluate.decisions_of`), trained runs placed.

    A trained scaler or router takes its decision's place; a policy that runs alone in its
    environment (caching, platform) makes every decision it was trained on.
    """
    made = decisions_of(spec, env_id, scenario)
    ref = made.pop("trained", None)
    if ref is not None:
        found = trained_run(ref, client)
        decision = TRAINED_DECISIONS.get(found.env)
        if decision is not None:
            made[decision] = f"trained {found.name}"
        else:
            for d in ENV_DECISIONS[found.env.removeprefix("servegym/")] & set(made):
                made[d] = f"trained {found.name}"
    return made


def _evaluate_job(
    definition: PolicyDef,
    scenario: ScenarioConfig,
    c: Mapping[str, Any],
    seeds: Sequence[int],
    client: MlflowClient,
    workdir: Path,
) -> tuple[list[dict[str, float]], list[str], dict[str, Any] | None]:
    """The job's policy on ``seeds``: named KPIs per seed (objective included), level names, telemetry.

    Jobs call it on the comparison's seeds, and the held-out check on held-out seeds, so
    both numbers come from one code path (:func:`servegym.experiments.evaluate.simulate`).
    """
    env_id = str(c.get("env_id", "Platform-v0"))
    kpis, levels, telemetry = _run_seeds(definition, env_id, scenario, seeds, client, workdir)
    return [_named_kpis(k, levels) for k in kpis], levels, telemetry


def run_job(
    cfg: DictConfig | Mapping[str, Any], base_dir: str | Path, sweep_dir: str | None, workload: str | None = None
) -> float:
    """Run one policy on one scenario over all seeds as a nested MLflow run; returns the mean objective.

    ``sweep_dir`` identifies the comparison's parent run (None: a top-level run). ``workload``
    is the option of the ``workload`` config group that replaced the scenario's workload, if
    any: the job names its scenario ``<scenario>+<workload>``, so tables never pass a
    replaced workload off as the scenario's own. A job that fails records its error in its
    run (status FAILED) and returns ``nan``, so the other jobs and the aggregation still run.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c: dict[str, Any] = {str(k): v for k, v in raw.items()}  # type: ignore[union-attr]
    tracking = dict(c.get("tracking") or {})
    uri = tracking_uri(tracking.get("uri"), base_dir)
    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, str(tracking.get("experiment", "servegym-compare")))
    parent = _find_parent(client, experiment_id, sweep_dir) if sweep_dir else None
    job_policy = str(c["job_policy"])
    # Tables name a trained run by its run name (the id stays in the tags and params).
    label = str(c.get("label") or (readable_label(job_policy, client) if "run:" in job_policy else job_policy))
    scenario_name = str((c.get("scenario") or {}).get("name", "?"))
    if workload:
        scenario_name = f"{scenario_name}+{workload}"
    tags = {
        "servegym.kind": "compare_job",
        "servegym.policy": label,
        "servegym.job_policy": job_policy,
        "servegym.scenario": scenario_name,
        "servegym.env": str(c.get("env_id")),
    }
    if workload:
        tags["servegym.workload"] = workload
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
        tags["servegym.comparison"] = parent.info.run_id
    if HydraConfig.initialized():
        tags["servegym.job_num"] = str(HydraConfig.get().job.num)
    run = client.create_run(experiment_id, run_name=f"{label}__{scenario_name}", tags=tags)
    run_id = run.info.run_id
    try:
        definition, scenario = _job_inputs(c, base_dir)
        seeds = seeds_of(c.get("seeds"))
        parts = definition.spec.split("+")
        env_id = str(c.get("env_id", "Platform-v0"))
        client.log_batch(
            run_id,
            params=[
                _param(k, v)
                for k, v in flatten(
                    {
                        "policy": label,
                        "spec": definition.spec,
                        "scenario": scenario_name,
                        "scenario_overrides": list(definition.scenario_overrides),
                        "workload": workload or "scenario",
                        "seeds": seeds,
                        "env": env_id,
                        # the arguments of the policies this job runs, not of every policy in params
                        "params": {k: v for k, v in (definition.params or {}).items() if k in parts},
                    }
                ).items()
            ],
        )
        # what the held-out check of a tuning sweep needs to re-run this job on other seeds
        client.log_text(run_id, yaml.safe_dump(c, sort_keys=False), JOB_CONFIG)
        shifted_runs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="servegym-compare-") as tmp:
            named, levels, telemetry = _evaluate_job(definition, scenario, c, seeds, client, Path(tmp))
            # The same policy and seeds on shifted workloads: a policy that only fits its own workload shows.
            for shift, shifted in _shifted(scenario, c, base_dir).items():
                shifted_named, _, _ = _evaluate_job(definition, shifted, c, seeds, client, Path(tmp) / shift)
                # a replayed trace derives its own drop price (its largest row): its tables say so
                shifted_runs[shift] = {"kpis": shifted_named, "objective": prices_of(shifted).describe()}
        prices = prices_of(scenario)
        client.log_batch(run_id, params=[_param(k, repr(v)) for k, v in prices.params().items()])
        logged = [
            *TABLE_KPIS,
            *(f"hit_rate_{t}" for t in levels),
            "latency_p50_s",
            "latency_p99_s",
            "dropped",
            "failed",
        ]
        with BatchLogger(run_id, client) as batch:
            for seed, values in zip(seeds, named, strict=True):
                batch.log({f"kpi/{k}": values[k] for k in logged if k in values}, step=seed)
            for k in logged:
                est = estimate([v[k] for v in named if k in v])
                batch.log({f"mean/{k}": est.mean}, step=0)
                if math.isfinite(est.half_width):
                    batch.log({f"ci95/{k}": est.half_width}, step=0)
            for shift, data in shifted_runs.items():
                batch.log(
                    {
                        f"shift/{shift}/mean/{k}": estimate([v[k] for v in data["kpis"] if k in v]).mean
                        for k in TABLE_KPIS
                    },
                    step=0,
                )
        decisions = _row_decisions(definition.spec, env_id, scenario, client)
        result = {
            "label": label,
            "policy": job_policy,
            "spec": definition.spec,
            "scenario": scenario_name,
            "seeds": seeds,
            "level_names": levels,
            "kpis": named,
            "telemetry": telemetry,
            "objective": prices.describe(),
            "decisions": decisions,
            "shifted": shifted_runs,
        }
        client.log_text(run_id, json.dumps(_json_safe(result)), RESULTS)
        client.set_tag(run_id, "servegym.decisions", json.dumps(decisions))
        client.set_terminated(run_id, "FINISHED")
        return estimate([v["objective_usd"] for v in named]).mean
    except Exception as exc:
        client.set_tag(run_id, "servegym.error", f"{type(exc).__name__}: {exc}"[:5000])
        client.log_text(run_id, traceback.format_exc(), "error.txt")
        client.set_terminated(run_id, "FAILED")
        print(f"servegym compare: job {label} on {scenario_name} failed: {exc}", file=sys.stderr)
        return math.nan


def _param(key: str, value: str) -> Any:
    from mlflow.entities import Param

    return Param(key, value)


# -- the comparison ----------------------------------------------------------------------------
ITERATED_KEYS = {
    "policies": "policies",
    "job_policy": "policies",
    "scenarios": "scenarios",
    "scenario": "scenarios",
    "seeds": "seeds",
    "holdout_seeds": "holdout_seeds",
    "gap_kpis": "gap_kpis",
}
"""Keys the comparison iterates itself (or sets per job): a Hydra sweep over one is a mistake."""


def refuse_list_sweeps(task_overrides: Sequence[str], labelled: bool = False) -> None:
    """Refuse a command-line sweep that would not give one comparison of distinct jobs.

    Hydra reads ``policies=hpa,jsq`` (no brackets) as a sweep — one job list per value —
    and each value is then ignored, since the jobs come from ``policies``: the default
    policies ran twice and the command exited 0. A sweep over ``env_id`` or ``baseline``
    would mix comparisons in one table, and one over policy arguments
    (``params.hpa.target_utilisation=0.5,0.6``) would give jobs of one name unless
    ``label`` names each (``labelled``, as tune_heuristics does). A sweep over ``workload``
    is meant and passes.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.key_or_group
        line = str(override.input_line)
        if not override.is_sweep_override():
            continue
        if key in ("baseline", "env_id"):
            raise ConfigError(f"{line} is a Hydra sweep, but a comparison has one {key}: run one comparison per value")
        if key.startswith("params.") and not labelled:
            raise ConfigError(
                f"{line} is a Hydra sweep, and its jobs would share one policy name: name each variant in "
                "policy_defs (policy_defs.<name>={spec: ..., params: {...}}) and list the names in policies"
            )
        if key not in ITERATED_KEYS:
            continue
        target = ITERATED_KEYS[key]
        value = line.partition("=")[2]
        example = f"{target}=[{value}]" if override.value_type == ValueType.SIMPLE_CHOICE_SWEEP else f"{target}=[a,b]"
        raise ConfigError(
            f"{line} is a Hydra sweep (a comma list without brackets), not a list: the comparison "
            f"iterates {target} itself, so write {example}"
        )


def _validate(config: Mapping[str, Any]) -> None:
    """Fail before any job starts: unknown scenarios or policies, a baseline that is not compared."""
    policies = list(config.get("policies") or [])
    scenarios = list(config.get("scenarios") or [])
    if not policies:
        raise ConfigError("policies is empty: list the policies to compare, e.g. policies=[hpa+round_robin,hpa+jsq]")
    if not scenarios:
        raise ConfigError("scenarios is empty: list shipped scenarios, e.g. scenarios=[steady,bursty]")
    for name in scenarios:
        _check_scenario(str(name))
    if len(set(map(str, policies))) != len(policies):
        raise ConfigError(f"policies = {policies} lists a policy twice")
    named = sorted(set(DECISIONS) - {"builtin"})
    for name, args in (config.get("params") or {}).items():
        if name not in named:
            raise ConfigError(f"params.{name}: no policy is named {name!r}; policies: {', '.join(named)}")
        if not isinstance(args, Mapping):
            raise ConfigError(f"params.{name} = {args!r} is invalid: must map argument names to values")
    for label in policies:
        resolve_policy(str(label), config.get("policy_defs") or {}, config.get("params") or {})
    seeds = seeds_of(config.get("seeds"))
    if config.get("holdout_seeds") is not None:
        try:
            held_out = seeds_of(config.get("holdout_seeds"))
        except ConfigError as exc:
            raise ConfigError(f"holdout_{exc}") from exc
        shared = sorted(set(held_out) & set(seeds))
        if shared:
            raise ConfigError(
                f"holdout_seeds = {held_out} shares seeds {shared} with seeds = {seeds}: held-out seeds must be "
                "seeds no job ran, e.g. holdout_seeds=[100,101,102,103,104]"
            )
    env_id = str(config.get("env_id"))
    if env_id.removeprefix("servegym/") not in ENV_DECISIONS:
        raise ConfigError(f"env_id = {env_id!r} is not an environment; use one of {', '.join(ENV_DECISIONS)}")
    baseline = config.get("baseline")
    if baseline is not None and config.get("label") is None and baseline not in map(str, policies):
        raise ConfigError(f"baseline = {baseline!r} is not among policies {policies}")


def _check_scenario(name: str) -> None:
    """Fail unless ``name`` is a scenario the jobs can compose: a shipped one.

    ``name`` resolves as the simulator's :func:`~servegym.sim.config.load_scenario` resolves
    it (``_scenario_path``), so an unknown name or a missing file fails with the simulator's
    message. A file the simulator would load is still refused: each job composes its
    scenario from the ``scenario`` config group, whose options are names, and Hydra cannot
    select a file there (every job would fail, after the parent run was created).
    """
    try:
        path = _scenario_path(name)
    except ConfigError as exc:
        raise ConfigError(f"scenarios: {exc}") from None
    if path == SCENARIO_DIR / f"{name}.yaml":
        return
    if path.resolve().parent == SCENARIO_DIR:
        raise ConfigError(f"scenarios: {name} is the shipped scenario {path.stem!r}: write scenarios=[{path.stem}]")
    raise ConfigError(
        f"scenarios: {name} is a scenario file, and compare runs only shipped scenarios (its jobs select them "
        "from the scenario config group, which holds no files): compare a shipped scenario with overrides "
        f"(scenario.pool.max_replicas=30), or evaluate the file with servegym evaluate --scenario {name}"
    )


def _definitions_per_scenario(config: DictConfig, comparison: Mapping[str, Any]) -> dict[str, list[PolicyDef]]:
    """Each compared scenario's policy definitions: ``policy_defs`` may name the scenario (``${scenario.name}``)."""
    raw = OmegaConf.to_container(config, resolve=False)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    out: dict[str, list[PolicyDef]] = {}
    for name in map(str, comparison.get("scenarios") or []):
        own = OmegaConf.create({**raw, "scenario": {**dict(raw.get("scenario") or {}), "name": name}})
        resolved = OmegaConf.to_container(own.policy_defs, resolve=True) if "policy_defs" in own else {}
        defs = {str(k): v for k, v in resolved.items()} if isinstance(resolved, dict) else {}
        out[name] = [
            resolve_policy(str(label), defs, comparison.get("params") or {}) for label in comparison["policies"]
        ]
    return out


def _check_fits(definition: PolicyDef, env_id: str, runs: Mapping[str, TrainedRun]) -> None:
    """Fail unless ``definition``'s parts make distinct decisions that ``env_id`` exposes."""
    env = env_id.removeprefix("servegym/")
    allowed = ENV_DECISIONS[env]
    parts = definition.spec.split("+")
    made: dict[str, str] = {}
    for part in parts:
        if part.startswith(TRAINED_PREFIXES):
            run = runs[part]
            decision = TRAINED_DECISIONS.get(run.env)
            if decision is None:  # a caching or platform policy runs alone inside its own environment
                if not run.env:
                    raise ConfigError(
                        f"policy {part}: run {run.name} has no servegym.env tag: not a servegym train run"
                    )
                if len(parts) > 1:
                    raise ConfigError(
                        f"policy {definition.label!r}: {part} was trained on {run.env}; only scaling "
                        "(Autoscaling-v0) and routing (Routing-v0) policies combine with heuristics"
                    )
                if env not in ("Platform-v0", run.env.removeprefix("servegym/")):
                    raise ConfigError(
                        f"policy {part}: run {run.name} was trained on {run.env}, which does not fit env_id={env}"
                    )
                continue
            name = f"{part} (trained on {run.env.removeprefix('servegym/')})"
        else:
            decision, name = DECISIONS[part], part
            if decision == "none":
                continue
        if decision not in allowed:
            raise ConfigError(
                f"policy {definition.label!r}: {name} makes {decision} decisions, which {env} does not expose "
                f"(it exposes {', '.join(sorted(allowed))}); use env_id=Platform-v0 or another policy"
            )
        if decision in made:
            raise ConfigError(f"policy {definition.label!r} names two {decision} policies: {made[decision]} and {name}")
        made[decision] = name
    if len(parts) > 1 and any(is_oracle(p) for p in parts):
        raise ConfigError(f"policy {definition.label!r}: an oracle runs alone; it cannot be combined with other parts")


def _validate_policies(config: DictConfig, comparison: Mapping[str, Any], client: MlflowClient) -> list[str]:
    """Fail before any job on a policy that does not fit ``env_id`` or names no trained run; returns warnings.

    A trained run compared on another scenario than it was trained on is allowed (that can
    be the point) but warned about, naming both.
    """
    runs: dict[str, TrainedRun] = {}
    warnings: list[str] = []
    for scenario, definitions in _definitions_per_scenario(config, comparison).items():
        for definition in definitions:
            for part in definition.spec.split("+"):
                if not part.startswith(TRAINED_PREFIXES):
                    continue
                if part not in runs:
                    runs[part] = trained_run(part, client)
                    if not client.list_artifacts(runs[part].run_id, "policy"):
                        raise ConfigError(
                            f"policy {part}: run {runs[part].name} has no policy/ artifact: not a servegym train run"
                        )
                run = runs[part]
                if run.scenario and run.scenario != scenario:
                    warnings.append(
                        f"warning: {part} ({run.name}) was trained on scenario {run.scenario!r} "
                        f"but is compared on {scenario!r}"
                    )
            _check_fits(definition, str(comparison.get("env_id")), runs)
    return list(dict.fromkeys(warnings))


def _job_configs(config: DictConfig) -> list[tuple[str, DictConfig]]:
    """Each compared scenario's job config, composed as the launcher composes a job's (``load_sweep_config``).

    The command's overrides are the job's; a choice sweep among them (``workload=poisson,diurnal``)
    gives one config per value. An interval sweep (Optuna's) is sampled per trial, so the
    config's own value stands in for it here.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task]):
        if not override.is_sweep_override():
            choices.append([str(override.input_line)])
        elif override.is_discrete_sweep():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    loader = GlobalHydra.instance().config_loader()
    job_policy = f"job_policy={sweep_values(list(config.policies)[:1])}"
    configs = []
    for name in map(str, config.scenarios):
        for chosen in itertools.product(*choices):
            try:
                job = loader.load_sweep_config(config, [*chosen, job_policy, f"scenario={name}"])
            except (HydraException, OmegaConfBaseException) as exc:
                raise ConfigError(f"scenario {name}: {exc}") from exc
            workload = job.hydra.runtime.choices.get("workload")
            with open_dict(job):
                del job["hydra"]
            configs.append((f"{name}+{workload}" if workload else name, job))
    return configs


def _check_jobs(config: DictConfig, comparison: Mapping[str, Any]) -> None:
    """Fail before any job on a value its job would reject, by building each job's inputs as the job does.

    Each compared scenario is composed as its jobs compose it and read by the jobs' own
    :func:`_job_inputs` (the scenario schema with the command's ``scenario.*`` overrides, a
    trace path made absolute, a variant's scenario overrides); its platform is built, which
    reads a trace; and each heuristic is constructed with its parameters as
    :func:`~servegym.experiments.evaluate.simulate` constructs it (the constructors check
    them). Nothing is simulated.
    """
    base_dir = str(config.hydra.runtime.cwd)
    env_id = str(comparison.get("env_id"))
    seed = seeds_of(comparison.get("seeds"))[0]
    platforms: dict[ScenarioConfig, Platform] = {}
    for scenario_name, job in _job_configs(config):
        for label in map(str, comparison["policies"]):
            job.job_policy = label
            resolved = OmegaConf.to_container(job, resolve=True)
            assert isinstance(resolved, dict)
            c = {str(k): v for k, v in resolved.items()}
            try:
                definition, scenario = _job_inputs(c, base_dir)
            except ConfigError as exc:
                # _job_inputs prefixes the scenario's own errors with "scenario."; the rest are the variant's
                where = "" if str(exc).startswith("scenario.") else f"policy_defs.{label}.scenario: "
                raise ConfigError(f"scenario {scenario_name}: {where}{exc}") from exc
            if scenario not in platforms:
                try:
                    platforms[scenario] = Platform(scenario, seed=seed)
                except TraceError as exc:
                    raise ConfigError(f"scenario {scenario_name}: scenario.workload.trace_path: {exc}") from exc
                _shifted(scenario, c, base_dir)  # a bad shift or robustness trace fails here, by name
            for part in definition.spec.split("+"):
                if part.startswith(TRAINED_PREFIXES):
                    continue
                try:
                    _controller(part, env_id, platforms[scenario], definition.params or {}, seed)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(_policy_error(definition, part, exc, c.get("policy_defs") or {})) from exc


def _policy_error(definition: PolicyDef, part: str, exc: Exception, policy_defs: Mapping[str, Any]) -> str:
    """A heuristic constructor's ``Owner: argument = value is invalid: ...`` as the key that set the argument."""
    message = str(exc)
    found = re.match(r"[^:]+: (\w+) = ", message)
    if found is None or found.group(1) not in ((definition.params or {}).get(part) or {}):
        return f"policy {definition.label!r}: params.{part}: {message}"
    key = f"params.{part}.{found.group(1)}"
    own = (policy_defs.get(definition.label) or {}).get("params") or {}
    if found.group(1) in (own.get(part) or {}):
        key = f"policy_defs.{definition.label}.{key}"
    return f"policy {definition.label!r}: {key} = {message[found.end() :]}"


def _comparison_config(config: DictConfig) -> dict[str, Any]:
    """The comparison's own settings (no Hydra node, no per-job keys), resolved."""
    keys = [k for k in config if k not in ("hydra", "job_policy", "label", "scenario")]
    out = {}
    for k in keys:
        node = config[k]
        out[str(k)] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return out


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break

    def order(run: Run) -> tuple[int, int]:
        num = run.data.tags.get("servegym.job_num", "")
        return (int(num) if num.isdigit() else 1 << 30, run.info.start_time or 0)

    return sorted(runs, key=order)


HOLDOUT_KPIS = ("objective_usd", "latency_p95_s", "slo_attainment", "drop_rate", "cost_usd", "hit_rate", "quality")


def _holdout_checks(
    client: MlflowClient,
    config: Mapping[str, Any],
    results: Mapping[str, Mapping[str, dict[str, Any]]],
    base_dir: Path,
    workdir: Path,
) -> list[HoldoutCheck]:
    """With ``holdout_seeds`` set, re-run each scenario's best job (lowest mean objective) on those seeds.

    The job is rebuilt from the resolved config it logged (``config/job.yaml``: its policy
    with its parameters, its scenario) and evaluated by the code path the jobs use.
    """
    if config.get("holdout_seeds") is None:
        return []
    seeds = seeds_of(config.get("holdout_seeds"))
    checks = []
    for scenario, by_label in results.items():
        scored = [
            (estimate([v.get("objective_usd", math.nan) for v in d["kpis"]]).mean, lbl) for lbl, d in by_label.items()
        ]
        # an oracle is a reference, not a candidate to deploy: the pick is among the policies
        scored = [
            (score, lbl) for score, lbl in scored if math.isfinite(score) and not is_oracle(by_label[lbl]["spec"])
        ]
        if not scored:
            continue
        best = min(scored)[1]
        data = by_label[best]
        print(f"servegym compare: held-out check: re-running {best} on {scenario} with seeds {seeds}", flush=True)
        local = client.download_artifacts(data["run_id"], JOB_CONFIG, str(workdir / "holdout" / data["run_id"]))
        job = yaml.safe_load(Path(local).read_text())
        definition, scenario_config = _job_inputs(job, base_dir)
        named, _, _ = _evaluate_job(definition, scenario_config, job, seeds, client, workdir / "holdout-run")

        def kpis_of(runs: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], ...]:
            return tuple({k: float(v.get(k, math.nan)) for k in HOLDOUT_KPIS} for v in runs)

        checks.append(
            HoldoutCheck(
                scenario,
                best,
                len(scored),
                PolicyResult(best, tuple(data["seeds"]), kpis_of(data["kpis"])),
                PolicyResult(best, tuple(seeds), kpis_of(named)),
            )
        )
    return checks


def _add_shifted(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``results`` with each job's runs on shifted workloads as scenarios ``<scenario>@<shift>`` after it.

    Every policy ran the same seeds there, so they are summarised (and flagged) like any scenario.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, by_label in results.items():
        out[scenario] = by_label
        for label, data in by_label.items():
            for shift, runs in (data.get("shifted") or {}).items():
                name = f"{scenario}@{shift}"
                out.setdefault(name, {})[label] = {
                    **data,
                    "scenario": name,
                    "kpis": runs["kpis"],
                    "objective": runs.get("objective", data.get("objective")),
                    "telemetry": None,
                    "shifted": {},
                }
    return out


def _log_holdout(client: MlflowClient, parent_id: str, checks: Sequence[HoldoutCheck]) -> None:
    """``holdout/<scenario>/{mean,ci95,tuning_mean,tuning_ci95}/<kpi>`` and the pick as a tag, on the parent run."""
    metrics: dict[str, float] = {}
    for check in checks:
        for k in HOLDOUT_KPIS:
            for prefix, result in (("", check.holdout), ("tuning_", check.tuning)):
                e = result.estimate(k)
                for name, value in ((f"{prefix}mean", e.mean), (f"{prefix}ci95", e.half_width)):
                    if math.isfinite(value):
                        metrics[_metric_key(f"holdout/{check.scenario}/{name}/{k}")] = value
        client.set_tag(parent_id, _metric_key(f"servegym.holdout.{check.scenario}"), check.policy)
    with BatchLogger(parent_id, client) as batch:
        batch.log(metrics, step=0)


def aggregate(
    client: MlflowClient, parent_id: str, config: Mapping[str, Any], out_dir: Path, base_dir: str | Path = "."
) -> tuple[list[ScenarioSummary], list[str], list[Path]]:
    """Read the parent's nested runs, summarise each scenario, write tables, figures and the report.

    With ``holdout_seeds`` in ``config``, each scenario's best job is re-run on them first
    (``base_dir`` resolves relative trace paths) and the check leads the tables and the
    report and is logged as ``holdout/*`` metrics. Returns the summaries, the failed jobs
    (as text) and the files written into ``out_dir``.
    """
    from servegym.experiments import plots
    from servegym.experiments.report import holdout_section, write_report

    experiment_id = client.get_run(parent_id).info.experiment_id
    failures: list[str] = []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="servegym-aggregate-") as tmp:
        for run in _children(client, experiment_id, parent_id):
            tags = run.data.tags
            name = f"{tags.get('servegym.policy')} on {tags.get('servegym.scenario')}"
            if run.info.status != "FINISHED":
                failures.append(f"{name}: {run.info.status} — {tags.get('servegym.error', 'no error recorded')}")
                continue
            local = Path(client.download_artifacts(run.info.run_id, RESULTS, str(Path(tmp) / run.info.run_id)))
            data = _from_json(json.loads(local.read_text()))
            data["run_id"] = run.info.run_id
            by_label = results.setdefault(data["scenario"], {})
            if data["label"] in by_label:  # two runs of one name, or two trials rounded to one label
                data["label"] = f"{data['label']} #{tags.get('servegym.job_num', run.info.run_id[:8])}"
            by_label[data["label"]] = data
        checks = _holdout_checks(client, config, results, Path(base_dir), Path(tmp))
    results = _add_shifted(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    summaries: list[ScenarioSummary] = []
    baseline = config.get("baseline")
    gap_kpis = list(config.get("gap_kpis") or [])
    texts: list[str] = []
    report_labels = dict(LABELS)
    rows = ["scenario,policy,kpi,mean,ci95,n,diff_mean,diff_ci95,gap_closed,pareto"]
    for scenario, by_policy in results.items():
        levels = list(dict.fromkeys(t for d in by_policy.values() for t in d["level_names"]))
        kpis = [*TABLE_KPIS, *(f"hit_rate_{t}" for t in levels)]
        policy_results = [
            PolicyResult(label, tuple(d["seeds"]), tuple({k: v.get(k, math.nan) for k in kpis} for v in d["kpis"]))
            for label, d in by_policy.items()
        ]
        # the baseline as written (a spec such as run:<id>), whatever label the tables give it
        base = next((label for label, d in by_policy.items() if baseline in (label, d.get("policy"))), None)
        objectives = sorted({str(d.get("objective", "")) for d in by_policy.values()} - {""})
        replay = next((k for d in by_policy.values() for k in d["kpis"][:1] if "trace_requests" in k), None)
        if replay is not None:  # every policy replays the same requests: one line says how much of the trace
            objectives.append(trace_summary(replay))
        summary = summarise(scenario, policy_results, kpis, base, gap_kpis, "; ".join(objectives))
        summary.decisions = {label: dict(d.get("decisions") or {}) for label, d in by_policy.items()}
        summaries.append(summary)
        labels = LABELS | {f"hit_rate_{t}": f"hit {t}" for t in levels}
        report_labels |= labels
        texts.append(format_summary(summary, labels))
        for p in summary.policies:
            for k in kpis:
                e = summary.estimates[p][k]
                d = summary.differences.get(p, {}).get(k)
                gap = summary.gaps[p].get(k, math.nan)
                rows.append(
                    f"{scenario},{p},{k},{e.mean!r},{e.half_width!r},{e.n},"
                    f"{d.mean if d else math.nan!r},{d.half_width if d else math.nan!r},{gap!r},{p in summary.pareto}"
                )
    warnings = [few_seeds_warning(len(seeds_of(config.get("seeds"))))]
    if checks:
        warnings.append(few_seeds_warning(len(checks[0].holdout.seeds), "held-out check"))
    warnings_text = [w for w in warnings if w]
    holdout_texts = [format_holdout(c, HOLDOUT_KPIS, LABELS) for c in checks]
    table = "\n\n".join([*warnings_text, *holdout_texts, *texts])
    if checks:
        holdout_rows = ["scenario,policy,seeds,kpi,mean,ci95,n"]
        for c in checks:
            for kind, result in (("tuning", c.tuning), ("holdout", c.holdout)):
                for k in HOLDOUT_KPIS:
                    e = result.estimate(k)
                    holdout_rows.append(f"{c.scenario},{c.policy},{kind},{k},{e.mean!r},{e.half_width!r},{e.n}")
        written.append(_write(out_dir / "holdout.csv", "\n".join(holdout_rows) + "\n"))
    if failures:
        table += "\n\nfailed jobs:\n" + "\n".join(f"  {f}" for f in failures)
    written.append(_write(out_dir / "leaderboard.txt", table + "\n"))
    written.append(_write(out_dir / "leaderboard.csv", "\n".join(rows) + "\n"))
    figures: list[tuple[str, Path]] = []
    scenario_figures: dict[str, list[tuple[str, Path]]] = {}
    if summaries and config.get("plots", True):
        figures.append(("cost vs p95 latency", plots.cost_vs_latency(summaries, out_dir / "cost_vs_p95.png")))
        telemetry = {
            s: {p: d["telemetry"] for p, d in by_policy.items() if d.get("telemetry")}
            for s, by_policy in results.items()
        }
        with_series = {s: t for s, t in telemetry.items() if t}
        if with_series:
            figures.append(("latency CDFs", plots.latency_cdfs(with_series, out_dir / "latency_cdf.png")))
        for s, t in with_series.items():
            scenario_figures[s] = [
                ("replicas and load over time", plots.replicas_and_load(s, t, out_dir / f"replicas_load_{s}.png")),
                ("hit rate per tier over time", plots.hit_rates_over_time(s, t, out_dir / f"hit_rates_{s}.png")),
            ]
        written += [f for _, f in figures] + [f for figs in scenario_figures.values() for _, f in figs]
    meta = {
        "parent MLflow run": parent_id,
        "environment": str(config.get("env_id")),
        "policies": ", ".join(map(str, config.get("policies") or [])),
        "scenarios": ", ".join(results),
        "seeds": str(seeds_of(config.get("seeds"))),
        "baseline": str(summaries[0].baseline if summaries else baseline),
        "objective": "; ".join(sorted({str(d.get("objective", "?")) for by in results.values() for d in by.values()})),
    }
    title = f"servegym comparison {config.get('name') or parent_id}"
    higher = set(HIGHER_IS_BETTER) | {k for s in summaries for k in s.kpis if k.startswith("hit_rate")}
    written.append(
        write_report(
            out_dir / "report.html",
            title,
            meta,
            summaries,
            figures,
            scenario_figures,
            report_labels,
            higher,
            failures,
            warnings_text,
            [holdout_section(c, HOLDOUT_KPIS, LABELS) for c in checks],
        )
    )
    json_summary = {
        s.scenario: {
            p: {k: {"mean": s.estimates[p][k].mean, "ci95": s.estimates[p][k].half_width} for k in s.kpis}
            for p in s.policies
        }
        for s in summaries
    }
    written.append(_write(out_dir / "summary.json", json.dumps(_json_safe(json_summary), indent=2)))
    metrics = {
        _metric_key(f"{s.scenario}/{p}/{k}"): s.estimates[p][k].mean
        for s in summaries
        for p in s.policies
        for k in TABLE_KPIS
        if math.isfinite(s.estimates[p][k].mean)
    }
    with BatchLogger(parent_id, client) as batch:
        batch.log(metrics, step=0)
    _log_holdout(client, parent_id, checks)
    client.log_artifacts(parent_id, str(out_dir), "comparison")
    return summaries, failures, written


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class ComparisonCallback(Callback):
    """Creates the comparison's parent MLflow run before the jobs and aggregates into it after them."""

    def _client(self, config: DictConfig) -> MlflowClient:
        tracking = config.get("tracking") or {}
        return MlflowClient(tracking_uri=tracking_uri(tracking.get("uri"), str(config.hydra.runtime.cwd)))

    def _setup(self, config: DictConfig) -> tuple[MlflowClient, str, str, Path]:
        base = str(config.hydra.runtime.cwd)
        tracking = config.get("tracking") or {}
        client = self._client(config)
        experiment_id = _experiment_id(client, str(tracking.get("experiment", "servegym-compare")))
        sweep_dir = str((Path(base) / str(config.hydra.sweep.dir)).resolve())
        return client, experiment_id, sweep_dir, Path(sweep_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validate the comparison and create its parent run."""
        comparison = _comparison_config(config)
        try:
            refuse_list_sweeps([str(o) for o in config.hydra.overrides.task], config.get("label") is not None)
            _validate(comparison)
            configured = (config.get("tracking") or {}).get("uri")
            require_server(tracking_uri(configured, str(config.hydra.runtime.cwd)), uri_setting(configured))
            warnings = _validate_policies(config, comparison, self._client(config))
            _check_jobs(config, comparison)
        except ConfigError as exc:
            # Hydra turns exceptions in callbacks into warnings and carries on; stop before any job starts.
            print(f"servegym compare: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        except TrackingServerUnreachableError as exc:
            print(f"servegym compare: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
        if not sys.stdout.isatty():  # a terminal sees it atop the tables; a file or pipe there, and here once
            warnings.append(few_seeds_warning(len(seeds_of(comparison.get("seeds")))) or "")
        for warning in filter(None, warnings):
            print(f"servegym compare: {warning}", file=sys.stderr)
        client, experiment_id, sweep_dir, _ = self._setup(config)
        name = str(comparison.get("name") or "compare")
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={
                **provenance_tags(comparison),
                SWEEP_TAG: sweep_dir,
                "servegym.kind": "comparison",
                "servegym.env": str(comparison.get("env_id")),
            },
        )
        params = flatten(comparison)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[start : start + 100])
        client.log_text(run.info.run_id, yaml.safe_dump(comparison, sort_keys=False), "config/config.yaml")
        log.info("comparison parent run %s (%s)", run.info.run_id, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Aggregate the nested runs into tables, figures and the report; end the parent run."""
        client, experiment_id, sweep_dir, out = self._setup(config)
        parent = _find_parent(client, experiment_id, sweep_dir)
        if parent is None:
            raise RuntimeError(f"no comparison run tagged {SWEEP_TAG}={sweep_dir}: was on_multirun_start skipped?")
        comparison = _comparison_config(config)
        try:
            _, failures, _ = aggregate(
                client, parent.info.run_id, comparison, out / "comparison", str(config.hydra.runtime.cwd)
            )
        except Exception as exc:
            client.set_terminated(parent.info.run_id, "FAILED")
            traceback.print_exc()
            raise SystemExit(1) from exc
        print((out / "comparison" / "leaderboard.txt").read_text())
        print(f"report: {out / 'comparison' / 'report.html'}  (MLflow run {parent.info.run_id})")
        client.set_terminated(parent.info.run_id, "FAILED" if failures else "FINISHED")
        if failures:
            # An exception would become a warning (Hydra's callbacks); the exit status must say it failed.
            print(f"servegym compare: {len(failures)} job(s) failed: " + "; ".join(failures), file=sys.stderr)
            raise SystemExit(1)


@hydra.main(version_base=None, config_path="../conf", config_name="compare")
def app(cfg: DictConfig) -> float:
    """Hydra entry point of ``servegym compare``: one job (a policy on a scenario over all seeds)."""
    hydra_cfg = HydraConfig.get()
    sweep_dir = None
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        sweep_dir = str((Path(hydra_cfg.runtime.cwd) / hydra_cfg.sweep.dir).resolve())
    return run_job(cfg, hydra_cfg.runtime.cwd, sweep_dir, hydra_cfg.runtime.choices.get("workload"))
