"""The workload and policy config groups: what they compose to, and that they change nothing by default."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from mlflow.tracking import MlflowClient
from omegaconf import MISSING, DictConfig, OmegaConf

from servegym.cli import main
from servegym.experiments.compare import resolve_policy, run_job
from servegym.experiments.evaluate import DECISIONS, simulate
from servegym.experiments.schema import register_configs
from servegym.experiments.train import validate
from servegym.policies import POLICIES
from servegym.sim.config import SCENARIO_DIR, ConfigError, WorkloadConfig, load_scenario, scenario_from_dict
from servegym.sim.oracles import ClairvoyantScaler, OracleRouter
from tests.kpis import same_kpis

register_configs()

CONF = Path(SCENARIO_DIR).parent
SCENARIOS = sorted(p.stem for p in (CONF / "scenario").glob("*.yaml"))
WORKLOADS = sorted(p.stem for p in (CONF / "workload").glob("*.yaml"))
# The shipped workload that is each scenario's own (gamma belongs to no scenario).
OWN_WORKLOAD = {
    "default": "poisson",
    "steady": "poisson",
    "diurnal": "diurnal",
    "bursty": "bursty",
    "flash_crowd": "flash_crowd",
    "multi_tenant": "multi_tenant",
    "trace_replay": "trace_replay",
}
TRACE = "traces/azure_code.csv"  # never opened: composition and validation only
CONSTRUCTORS = {**POLICIES, "oracle_router": OracleRouter, "clairvoyant": ClairvoyantScaler}
# Arguments whose default is the run's own setting, which compare fills in for null.
FROM_THE_RUN = {("static", "replicas"), ("random", "seed"), ("power_of_two", "seed"), ("fixed_threshold", "threshold")}
# Arguments the platform supplies (its layout, backends, pool and control interval): not policy settings.
PLATFORM_SUPPLIED = {"layout", "backend_names", "min_replicas", "max_replicas", "slots_per_replica", "interval_s"}


@pytest.fixture(autouse=True)
def _clean_hydra() -> None:
    GlobalHydra.instance().clear()


def _compose(config: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        return compose(config, overrides=list(overrides))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True)


@cache
def _train_scenario(*overrides: str) -> dict[str, Any]:
    """The scenario ``servegym train`` composes with ``overrides`` (cached: read, never modify)."""
    GlobalHydra.instance().clear()
    scenario = _plain(_compose("train", *overrides).scenario)
    assert isinstance(scenario, dict)
    return scenario


def _file_workload(name: str) -> WorkloadConfig:
    """Workload ``name`` as the simulator's own loader reads its file (no Hydra, no schema)."""
    body = yaml.safe_load((CONF / "workload" / f"{name}.yaml").read_text())
    body.pop("defaults")
    if body["kind"] == "trace":
        body["trace_path"] = TRACE
    return scenario_from_dict({"workload": body}).workload


# -- workload ----------------------------------------------------------------------------------
def test_the_shipped_groups_are_the_ones_the_architecture_names() -> None:
    assert sorted(OWN_WORKLOAD) == SCENARIOS
    assert set(WORKLOADS) == set(OWN_WORKLOAD.values()) | {"gamma"}
    for group in ("scenario", "workload", "env", "agent", "policy", "experiment", "hydra"):
        assert (CONF / group).is_dir(), group


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_without_a_workload_every_scenario_is_its_file(scenario: str, tmp_path: Path) -> None:
    trace: list[str] = []
    if scenario == "trace_replay":  # its duration follows the trace, which is read for it
        path = tmp_path / "azure_code.csv"
        rows = "".join(f"2023-11-16 18:17:{s:02d}.0000000,{100 + s},{10 + s}\n" for s in range(40))
        path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
        trace = [f"scenario.workload.trace_path={path}"]
    for config in ("train", "compare", "export"):
        cfg = _compose(config, f"scenario={scenario}", *trace)
        expected = load_scenario(scenario, [o.removeprefix("scenario.") for o in trace])
        assert scenario_from_dict(_plain(cfg.scenario)) == expected, config


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_scenarios_own_workload_changes_nothing(scenario: str) -> None:
    assert _train_scenario(f"scenario={scenario}", f"workload={OWN_WORKLOAD[scenario]}") == _train_scenario(
        f"scenario={scenario}"
    )


@pytest.mark.parametrize("workload", WORKLOADS)
def test_a_workload_replaces_the_scenarios_workload_and_nothing_else(workload: str) -> None:
    trace = [f"scenario.workload.trace_path={TRACE}"] if workload == "trace_replay" else []
    for scenario in SCENARIOS:
        base = _train_scenario(f"scenario={scenario}")
        mixed = _train_scenario(f"scenario={scenario}", f"workload={workload}", *trace)
        # Scenario Y exactly, but for the workload, which is X's exactly: nothing of Y's
        # workload (a flash crowd, a burst rate, a tenant) survives the switch.
        assert {k: v for k, v in mixed.items() if k != "workload"} == {k: v for k, v in base.items() if k != "workload"}
        assert scenario_from_dict({"workload": mixed["workload"]}).workload == _file_workload(workload)
        if workload != "trace_replay" and scenario != "trace_replay":
            built = scenario_from_dict(mixed)
            assert built == replace(scenario_from_dict(base), workload=_file_workload(workload))


def test_the_train_app_validates_the_chosen_workload() -> None:
    v = validate(_plain(_compose("train", "scenario=flash_crowd", "workload=bursty", "scenario.workload.rate_rps=9")))
    own = load_scenario("flash_crowd")
    assert v.scenario.name == "flash_crowd" and v.scenario.pool == own.pool and v.scenario.cache == own.cache
    assert v.scenario.workload == replace(_file_workload("bursty"), rate_rps=9.0)
    assert v.scenario.workload.flash_crowds == ()
    # export builds heuristics for the same composition (a router's layout follows the tenants)
    export = _compose("export", "run=heuristic:cascade", "out=x", "workload=multi_tenant")
    assert [t.name for t in scenario_from_dict(_plain(export.scenario)).workload.tenants] == [
        "chat",
        "code",
        "support",
        "analytics",
    ]


def test_a_training_run_under_another_workload_is_named_and_tagged_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = ["episode_duration_s=300", "total_timesteps=32", "agent.n_envs=1", "agent.hyperparams.n_steps=32"]
    main(
        [
            "train",
            "workload=diurnal",
            *tiny,
            "agent.hyperparams.batch_size=32",
            "checkpoint_every_steps=0",
            "eval_seeds=[]",
            "progress_bar=false",
            f"tracking.uri={uri}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("servegym").experiment_id])
    assert run.info.run_name == "Autoscaling-v0__ppo__default+diurnal__seed0"
    assert run.data.tags["servegym.workload"] == "diurnal" and run.data.tags["servegym.scenario"] == "default"
    assert run.data.params["scenario.workload.kind"] == "diurnal"


def test_a_bad_workload_key_fails_at_composition_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match=r"scenario\.workload\.rate_rp\b"):
        _compose("train", "workload=diurnal", "scenario.workload.rate_rp=3")
    with pytest.raises(ConfigCompositionException, match=r"scenario\.workload\.amplitude=high"):
        _compose("compare", "workload=diurnal", "scenario.workload.amplitude=high")
    with pytest.raises(MissingConfigException, match=r"workload/diurnl(.|\n)*diurnal"):
        _compose("train", "workload=diurnl")
    # A user's own workload file (on hydra.searchpath) is held to the same schema.
    (tmp_path / "workload").mkdir()
    (tmp_path / "workload" / "mine.yaml").write_text(
        "# @package scenario.workload\ndefaults:\n  - /schema/workload@_here_\n  - _self_\n"
        "kind: poisson\nrate_rp: 12.0\n"
    )
    with pytest.raises(ConfigCompositionException) as error:
        _compose("train", f"hydra.searchpath=[file://{tmp_path}]", "workload=mine")
    assert "full_key: scenario.workload.rate_rp" in str(error.value.__cause__ or error.value)


# -- policy ------------------------------------------------------------------------------------
def _normal(value: Any) -> Any:
    """Tuples as lists, recursively: YAML has no tuples."""
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    return value


def test_every_policy_has_an_option_holding_its_constructor_defaults() -> None:
    options = sorted(p.stem for p in (CONF / "policy").glob("*.yaml"))
    assert options == sorted(set(DECISIONS) - {"builtin"})
    params = _plain(_compose("compare").params)
    assert sorted(params) == options
    for name, args in params.items():
        signature = inspect.signature(CONSTRUCTORS[name]).parameters
        for key, value in args.items():
            assert key in signature, f"policy/{name}.yaml: {key} is not an argument of {name}"
            default = signature[key].default
            if (name, key) in FROM_THE_RUN:
                assert value is None, f"policy/{name}.yaml: {key} should be null (the run's own)"
            elif default is inspect.Parameter.empty:
                assert value == MISSING, f"policy/{name}.yaml: {key} has no default, so it must be ???"
            else:
                # as JSON, so 300 and 300.0 differ: an int where the policy checks for one, floats elsewhere
                assert json.dumps(_normal(value)) == json.dumps(_normal(default)), (name, key, value)
        # every argument a user can set is listed, except those the platform supplies
        assert set(signature) - PLATFORM_SUPPLIED == set(args), name


SPECS = [
    "hpa+cascade+frequency+fixed_threshold",
    "kpa+power_of_two+admit_all",
    "step+random+admit_none",
    "static+jsq",
    "clairvoyant",
    "oracle_router",
]


@pytest.mark.parametrize("spec", SPECS)
def test_the_group_defaults_run_exactly_as_the_bare_spec(spec: str) -> None:
    cfg = _plain(_compose("compare", "scenario.duration_s=90", "scenario.workload.rate_rps=8"))
    scenario = scenario_from_dict(cfg["scenario"])
    from_group = resolve_policy(spec, {}, cfg["params"])
    bare = resolve_policy(spec, {}, {})
    assert from_group.params and not bare.params
    for seed in (0, 1):
        a = simulate(spec, "Platform-v0", scenario, seed, from_group.params).kpis()
        b = simulate(spec, "Platform-v0", scenario, seed, bare.params).kpis()
        assert same_kpis(a, b), (spec, seed)


def test_a_compare_job_with_group_defaults_equals_the_spec_string_job(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        "job_policy=kpa+cascade+frequency",
        "seeds=[0,1]",
        "scenario.duration_s=90",
        "scenario.workload.rate_rps=8",
        f"tracking.uri={uri}",
    ]
    with_group = _plain(_compose("compare", *overrides))
    bare = {**with_group, "params": {}}  # the spec string alone: every argument at the constructors' default
    run_job(with_group, tmp_path, None)
    run_job(bare, tmp_path, None)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("servegym-compare").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    results = []
    for run in runs:
        local = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / run.info.run_id))
        results.append(json.loads(Path(local).read_text())["kpis"])
    as_tables = [{str(seed): kpis for seed, kpis in enumerate(r)} for r in results]
    assert same_kpis(*as_tables)
    logged = {r.data.params.get("params.kpa.stable_window_s") for r in runs}
    assert logged == {"60.0", None}  # the group's arguments are recorded, only for the policies the job runs
    assert not any(k.startswith("params.hpa.") for r in runs for k in r.data.params)


def test_policy_arguments_override_by_name_and_misspellings_fail_at_composition(tmp_path: Path) -> None:
    cfg = _compose("compare", "params.hpa.target_utilisation=0.6", "params.static.replicas=12")
    assert cfg.params.hpa.target_utilisation == 0.6 and cfg.params.hpa.tolerance == 0.1
    assert cfg.params.static.replicas == 12
    with pytest.raises(ConfigCompositionException, match=r"params\.hpa\.target_utilisaton"):
        _compose("compare", "params.hpa.target_utilisaton=0.6")
    # a variant overrides the arguments it names and keeps the others
    definition = resolve_policy(
        "eager", {"eager": {"spec": "hpa+jsq", "params": {"hpa": {"tolerance": 0.0}}}}, _plain(cfg.params)
    )
    assert definition.params is not None
    assert definition.params["hpa"] == {**_plain(cfg.params.hpa), "tolerance": 0.0}
    # another option of the group mounts in place of the shipped one
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "hpa_eager.yaml").write_text("target_utilisation: 0.5\ntolerance: 0.0\n")
    swapped = _compose("compare", f"hydra.searchpath=[file://{tmp_path}]", "policy@params.hpa=hpa_eager")
    assert _plain(swapped.params.hpa) == {"target_utilisation": 0.5, "tolerance": 0.0}


def test_a_required_argument_or_an_unknown_policy_stops_the_comparison_before_any_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    params = _plain(_compose("compare").params)
    with pytest.raises(ConfigError, match=r"params\.scheduled\.schedule is required"):
        resolve_policy("scheduled+jsq", {}, params)
    given = {**params, "scheduled": {"schedule": [[0, 4], [28800, 20]]}}
    assert resolve_policy("scheduled+jsq", {}, given).params == given
    monkeypatch.chdir(tmp_path)
    uri = f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"
    for overrides, message in (
        (["policies=[scheduled+round_robin]"], "params.scheduled.schedule is required"),
        (["+params.hpq.target_utilisation=0.5"], "params.hpq: no policy is named 'hpq'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["compare", *overrides, uri, "hydra.sweep.dir=sweep"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep" / "0").exists()


def test_a_comparison_under_another_workload_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(
        [
            "compare",
            "policies=[hpa+jsq]",
            "scenarios=[bursty]",
            "workload=diurnal",
            "seeds=1",
            "scenario.duration_s=60",
            "scenario.workload.rate_rps=5",
            "hydra.launcher.n_jobs=1",
            f"tracking.uri={uri}",
            "hydra.sweep.dir=sweep",
            "plots=false",
        ]
    )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("servegym-compare").experiment_id])
    job = next(r for r in runs if r.data.tags.get("servegym.kind") == "compare_job")
    assert job.data.tags["servegym.scenario"] == "bursty+diurnal" and job.data.tags["servegym.workload"] == "diurnal"
    summary = json.loads((tmp_path / "sweep" / "comparison" / "summary.json").read_text())
    assert list(summary) == ["bursty+diurnal"]
    # The job ran bursty's platform under the diurnal workload, as a direct simulation does.
    scenario = replace(
        load_scenario("bursty", ["duration_s=60"]), workload=replace(_file_workload("diurnal"), rate_rps=5.0)
    )
    kpis = simulate("hpa+jsq", "Platform-v0", scenario, 0).kpis()["all"]
    assert math.isclose(summary["bursty+diurnal"]["hpa+jsq"]["cost_usd"]["mean"], kpis["cost_usd"], rel_tol=1e-12)
