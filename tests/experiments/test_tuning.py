"""Tuning heuristics with the Optuna sweeper: the best trial is re-run on held-out seeds."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from servegym.cli import main
from servegym.experiments.compare import HOLDOUT_KPIS
from servegym.experiments.evaluate import simulate
from servegym.sim.config import scenario_from_dict


@pytest.fixture(autouse=True)
def _clean_hydra() -> None:
    GlobalHydra.instance().clear()


def test_the_best_trial_is_rerun_on_held_out_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    main(
        [
            "compare",
            "+experiment=tune_heuristics",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1",
            "hydra.launcher.n_jobs=1",
            "scenario.duration_s=60",
            "seeds=2",
            "holdout_seeds=[100,101]",
            "plots=false",
            f"tracking.uri={uri}",
            "hydra.sweep.dir=sweep",
        ]
    )
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("servegym-compare")
    assert experiment is not None
    parent = next(
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("servegym.kind") == "comparison"
    )
    metrics = parent.data.metrics
    # The tuning-seed score of the pick is Optuna's best value: the same trial, the same number.
    assert metrics["holdout/bursty/tuning_mean/objective_usd"] == pytest.approx(best["best_value"])
    assert "holdout/bursty/ci95/objective_usd" in metrics and "holdout/bursty/tuning_ci95/objective_usd" in metrics
    # The held-out score is the best parameters' objective on seeds 100 and 101, run directly.
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg = compose(
            "compare",
            overrides=[
                "+experiment=tune_heuristics",
                "scenario=bursty",
                "scenario.duration_s=60",
                *(f"{k}={v}" for k, v in best["best_params"].items()),
            ],
        )
    params = OmegaConf.to_container(cfg.params, resolve=True)
    scenario = scenario_from_dict(OmegaConf.to_container(cfg.scenario, resolve=True))  # type: ignore[arg-type]
    direct = [
        simulate(str(cfg.policies[0]), "Platform-v0", scenario, seed, params).kpis()["all"]["objective_usd"]  # type: ignore[arg-type]
        for seed in (100, 101)
    ]
    assert metrics["holdout/bursty/mean/objective_usd"] == pytest.approx(float(np.mean(direct)))
    assert parent.data.tags["servegym.holdout.bursty"].startswith("hpa(u=")
    out = tmp_path / "sweep" / "comparison"
    table = (out / "leaderboard.txt").read_text()
    assert "held-out check on bursty" in table and "winner's curse" in table
    assert "tuning seeds [0, 1] (picked on)" in table and "held-out seeds [100, 101]" in table
    assert "held-out check: bursty" in (out / "report.html").read_text()
    assert (out / "holdout.csv").read_text().count(",holdout,") == len(HOLDOUT_KPIS)


def test_held_out_seeds_must_be_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "compare",
                "+experiment=tune_heuristics",
                "holdout_seeds=[2,100]",
                f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                "hydra.sweep.dir=sweep",
            ]
        )
    assert exit_info.value.code == 2
    assert "holdout_seeds = [2, 100] shares seeds [2] with seeds = [0, 1, 2]" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
