"""servegym train's final evaluation: the scenario's objective, worst seeds, shifted workloads and outlier flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from servegym.cli import main
from servegym.experiments.evaluate import run_policy
from servegym.experiments.robustness import mean_rate_rps, trace_shift
from servegym.experiments.schema import register_configs
from servegym.experiments.train import (
    TrainResult,
    _kpi_metrics,
    evaluate_in_env,
    final_lines,
    run_robustness,
    summary,
    validate,
)
from servegym.policies import make_policy, scaling_kwargs
from servegym.sim.config import ConfigError, load_scenario

register_configs()

SHORT = ["episode_duration_s=300", "eval_seeds=[7,8]"]


def _validated(*overrides: str) -> Any:
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg: DictConfig = compose("train", overrides=list(overrides))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return validate({str(k): v for k, v in plain.items()})


# -- the objective is the scenario's ---------------------------------------------------------
def test_the_objective_prices_are_the_scenarios_and_the_old_keys_say_where_they_went() -> None:
    v = _validated(*SHORT)
    assert v.prices.slo_miss_usd == 0.01 and v.prices.drop_derived
    cheaper = _validated(*SHORT, "scenario.objective.slo_miss_usd=0.02", "scenario.objective.drop_usd=1.5")
    assert (cheaper.prices.slo_miss_usd, cheaper.prices.drop_usd) == (0.02, 1.5)
    for old in ("objective.slo_miss_usd=0.02", "+objective.slo_miss_usd=0.02"):
        with pytest.raises(ConfigError, match=r"objective\.slo_miss_usd is no longer a train setting.*"
                           r"use scenario\.objective\.slo_miss_usd=0\.02$"):  # fmt: skip
            _validated(old)


def test_the_cli_names_the_new_key_of_an_old_objective_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["train", "objective.bad_answer_usd=0.01", f"hydra.run.dir={tmp_path}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "servegym train: error: objective.bad_answer_usd is no longer a train setting: the objective's prices are "
        "the scenario's (the reward, evaluate and compare use them too); use scenario.objective.bad_answer_usd=0.01"
    )


# -- seeds -------------------------------------------------------------------------------------
def test_evaluation_seed_s_is_platform_seed_s() -> None:
    """The env-based final evaluation pairs with ``servegym evaluate --seeds s`` (common random numbers)."""
    scenario = load_scenario("default", ["duration_s=300"])
    hpa = make_policy("hpa", **scaling_kwargs(scenario))
    [in_env] = evaluate_in_env(hpa, "servegym/Autoscaling-v0", {"scenario": scenario}, [7])
    direct = run_policy("hpa", "servegym/Autoscaling-v0", scenario, 7)["all"]
    for kpi in ("requests", "objective_usd", "drop_rate", "cost_usd"):
        assert in_env[kpi] == pytest.approx(direct[kpi], rel=1e-12), kpi


# -- the robustness check ------------------------------------------------------------------------
def test_a_policy_stuck_at_min_replicas_is_flagged_naming_its_worst_seed() -> None:
    v = _validated(*SHORT)
    check = v.robustness
    assert check is not None and check.baseline == "builtin" and list(check.shifts) == ["higher_load", "burstier"]
    assert check.scenario.duration_s == 300.0  # the episode's length, for the baseline and every shift
    stuck = make_policy("static", **scaling_kwargs(v.scenario), replicas=v.scenario.pool.min_replicas)
    seeds = [7, 8]
    episodes = evaluate_in_env(stuck, v.env_id, {"scenario": v.scenario, **v.env_kwargs}, seeds)
    report, metrics = run_robustness(stuck, "stuck", v.env_id, check, seeds, episodes)
    assert [c.workload for c in report.checks] == ["default", "higher_load", "burstier"]
    # the training workload on every eval seed, the shifts on robustness.seeds (by default one)
    assert [c.seeds for c in report.checks] == [(7, 8), (1000,), (1000,)]
    # every workload, every seed: it drops far more than the scenario's own autoscaler
    assert len([f for f in report.flags if f.startswith("stuck drops")]) == 4, report.flags
    assert any(f.startswith("stuck drops") and "on seed 7 of default (builtin: at most" in f for f in report.flags)
    assert any("on seed 1000 of default@higher_load" in f for f in report.flags)
    assert metrics["robustness/flags"] == len(report.flags)
    for prefix in ("eval/baseline", "shift/higher_load", "shift/higher_load/baseline", "shift/burstier"):
        for kpi in ("objective_usd", "objective_usd_worst", "drop_rate", "drop_rate_worst", "drop_rate_worst_seed"):
            assert f"{prefix}/{kpi}" in metrics, f"{prefix}/{kpi}"
    assert metrics["shift/higher_load/drop_rate"] > metrics["shift/higher_load/baseline/drop_rate"] + 0.1

    kpis = {**_kpi_metrics(episodes, "eval", seeds), **metrics}
    worst = max(seeds, key=lambda s: episodes[seeds.index(s)]["objective_usd"])
    assert kpis["eval/objective_usd_worst_seed"] == worst
    assert kpis["eval/objective_usd_worst"] == max(e["objective_usd"] for e in episodes)
    result = TrainResult("r1", stuck, 64, kpis, seeds, v.prices, report)
    lines = final_lines(result)
    text = "\n".join(lines)
    assert "workload" in text and "higher_load" in text and "burstier" in text
    assert all(f"  ! {flag}" in text for flag in report.flags)
    assert lines[-3] == v.prices.describe()
    assert lines[-2].startswith("evaluation over seeds [7, 8] (mean ± 95% CI): objective_usd")
    assert f"(worst seed {worst}: " in lines[-2]
    last = lines[-1]
    assert last.startswith("drops: ") and "dropped or failed" in last and "failed)" in last
    assert f"worst seed {worst}: objective" in last and f"{len(report.flags)} flags against builtin (above)" in last
    # eval_seeds=[] is allowed (a script evaluating elsewhere) but said, not silent
    unevaluated = final_lines(TrainResult("r2", stuck, 64, {}, [], v.prices, None))
    assert unevaluated[-1] == "no final evaluation: eval_seeds is empty, so the run has no eval/* metrics"


def test_the_baseline_and_shifts_are_configurable_and_the_check_can_be_off(tmp_path: Path) -> None:
    assert _validated(*SHORT, "robustness.enabled=false").robustness is None
    only = _validated(*SHORT, "robustness.shifts=[]", "robustness.baseline=hpa", "robustness.seeds=[3]")
    assert only.robustness is not None and only.robustness.shifts == {}
    assert only.robustness.baseline == "hpa" and only.robustness.seeds == [3]
    routing = _validated(*SHORT, "env=routing", "agent=bandit", "robustness.baseline=round_robin")
    assert routing.robustness is not None and routing.robustness.baseline == "round_robin"
    for overrides, message in [
        (["robustness.baseline=cascade"], r"robustness\.baseline = 'cascade' is invalid: 'cascade' does not fit; "
         r"give builtin .* or a heuristic for servegym/Autoscaling-v0: hpa, kpa, scheduled, static, step"),
        (["robustness.baseline=clairvoyant"], r"clairvoyant is an oracle"),
        (["robustness.shifts=[heavier]"], r"robustness\.shifts = \['heavier'\] is invalid: must be a list of "
         r"higher_load, burstier"),
        (["+robustness.sedes=[1]"], r"robustness\.sedes: unknown key"),
        (["robustness.seeds=[]"], r"robustness\.seeds = \[\] is invalid"),
        ([f"robustness.trace_path={tmp_path / 'nope.csv'}"], r"robustness\.trace_path = .*nope\.csv.*does not exist"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            _validated(*SHORT, *overrides)


def _plain_trace(path: Path, rate_rps: float, requests: int) -> Path:
    rows = "".join(f"{i / rate_rps},{300 + i % 50},40\n" for i in range(requests))
    path.write_text("time_s,prompt_tokens,output_tokens\n" + rows)
    return path


def test_a_replayed_trace_is_a_third_shift_at_the_scenarios_mean_rate(tmp_path: Path) -> None:
    trace = _plain_trace(tmp_path / "trace.csv", rate_rps=4.0, requests=4001)  # 1,000 s at 4 requests/s
    v = _validated(*SHORT, f"robustness.trace_path={trace}", "robustness.trace_schema=plain")
    assert v.robustness is not None
    shifted = v.robustness.shifts["trace"]
    assert shifted.name == "default@trace" and shifted.workload.kind == "trace"
    assert shifted.workload.tenants == v.scenario.workload.tenants  # the scenario's tenants, the trace's arrivals
    assert shifted.workload.trace_speedup == pytest.approx(20.0 / 4.0)  # the default scenario's 20 requests/s
    # The trace's 1,000 s at x5 end before the 300 s episode does: at the next 15 s interval after 200 s.
    assert shifted.duration_s == 210.0
    assert mean_rate_rps(shifted) == pytest.approx(20.0, rel=0.01)
    assert trace_shift(load_scenario("default", ["duration_s=60"]), trace, "plain").duration_s == 60.0
    short = _plain_trace(tmp_path / "short.csv", rate_rps=20.0, requests=101)  # 5 s at the scenario's rate
    with pytest.raises(ConfigError, match=r"robustness\.trace_path = .*short\.csv.*: AutoscalingEnv: duration_s = 15"):
        _validated(*SHORT, f"robustness.trace_path={short}", "robustness.trace_schema=plain")


def test_the_summary_names_the_worst_seed() -> None:
    kpis = _kpi_metrics(
        [{"objective_usd": 300.0, "drop_rate": 0.001}, {"objective_usd": 612.3, "drop_rate": 0.27}], "eval", [5, 6]
    )
    assert kpis["eval/objective_usd_worst"] == 612.3 and kpis["eval/objective_usd_worst_seed"] == 6
    assert kpis["eval/drop_rate_best"] == 0.001 and kpis["eval/drop_rate_std"] == pytest.approx(0.269 / 2**0.5)
    line = summary(kpis, [5, 6])
    assert "objective_usd 456.1 ± 1.98e+03 USD (worst seed 6: 612.3)" in line
    assert "drop_rate 0.1355 ± 1.71 (worst seed 6: 0.27)" in line
