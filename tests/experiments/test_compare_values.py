"""servegym compare refuses a bad value before any job: the scenarios and policies are built as the jobs build them."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from hydra.core.global_hydra import GlobalHydra

from servegym.cli import main


@pytest.fixture(autouse=True)
def _clean_hydra() -> None:
    GlobalHydra.instance().clear()


def _runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["scenario.pool.max_replicas=-1"],
            "scenario steady: scenario.pool.max_replicas = -1 is invalid: must be an integer >= 1",
        ),
        (
            ["params.hpa.target_utilisation=7"],
            "policy 'hpa+round_robin': params.hpa.target_utilisation = 7 is invalid: must be in (0, 1]",
        ),
        (
            ["scenarios=[trace_replay]"],
            "scenario trace_replay: scenario.workload.trace_path = None is invalid: is required",
        ),
        # a trace path is read as the jobs read it: relative to the starting directory
        (
            ["scenarios=[steady,trace_replay]", "scenario.workload.trace_path=missing.csv"],
            "scenario trace_replay: scenario.workload.trace_path: trace file {tmp}/missing.csv does not exist",
        ),
        # each value of a workload sweep is a job's workload
        (
            ["workload=poisson,trace_replay"],
            "scenario steady+trace_replay: scenario.workload.trace_path = None is invalid",
        ),
        # a variant's own parameters and scenario overrides are named where they are set
        (
            ["policies=[calm]", "+policy_defs.calm={spec: hpa+round_robin, params: {hpa: {tolerance: -1}}}"],
            "policy 'calm': policy_defs.calm.params.hpa.tolerance = -1 is invalid",
        ),
        (
            ["policies=[tiny]", "+policy_defs.tiny={spec: hpa+round_robin, scenario: ['pool.max_replicas=0']}"],
            "scenario steady: policy_defs.tiny.scenario: pool.max_replicas = 0 is invalid",
        ),
    ],
    ids=["scenario", "params", "no_trace", "missing_trace", "workload_sweep", "variant_params", "variant_scenario"],
)
def test_a_bad_value_fails_in_one_line_before_any_run(
    overrides: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "compare",
                *overrides,
                "seeds=1",
                "scenario.duration_s=60",
                f"tracking.uri={uri}",
                "hydra.sweep.dir=sweep",
                "hydra.launcher.n_jobs=1",
            ]
        )
    assert exit_info.value.code == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("servegym compare")]
    assert len(ours) == 1 and message.format(tmp=tmp_path) in ours[0], ours
    assert not (tmp_path / "sweep").exists()
    assert _runs(uri) == []


def test_a_trace_given_relative_to_the_start_passes_the_check_and_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rows = "".join(f"{0.5 * k},{100 + k},{20 + k}\n" for k in range(40))
    (tmp_path / "trace.csv").write_text("time_s,prompt_tokens,output_tokens\n" + rows)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    main(
        [
            "compare",
            "policies=[static+round_robin]",
            "scenarios=[trace_replay]",
            "scenario.workload.trace_path=trace.csv",
            "scenario.workload.trace_schema=plain",
            "seeds=1",
            "scenario.duration_s=30",
            "plots=false",
            f"tracking.uri={uri}",
            "hydra.sweep.dir=sweep",
            "hydra.launcher.n_jobs=1",
        ]
    )
    runs = _runs(uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
