"""``servegym export`` names a run's policy one way, whichever spelling ``run=`` gave: one pyfunc model per bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.io import save_policy
from servegym.agents.sb3 import SB3Policy, build_model
from servegym.deploy import runtime
from servegym.deploy.mlflow_model import bundle_fingerprint
from servegym.envs.features import Layout
from servegym.experiments.export import app

ENV_ID = "servegym/Autoscaling-v0"


@pytest.fixture
def run_id(store: str, tmp_path: Path) -> str:
    """A run with an (untrained) PPO as its policy/ artifact, tagged as servegym train tags it."""
    env: Any = gym.make(ENV_ID, duration_s=60.0)
    space = env.unwrapped.observation_space
    layout = Layout(tuple(env.unwrapped.layout.names), np.asarray(space.low), np.asarray(space.high))
    venv: Any = DummyVecEnv([lambda: gym.make(ENV_ID, duration_s=60.0)])
    model = build_model("ppo", venv, {"n_steps": 16, "batch_size": 16, "policy_kwargs": {"net_arch": [8]}}, seed=0)
    policy = SB3Policy.from_training(model, "ppo", layout, ENV_ID)
    mlflow.set_experiment("servegym")
    with mlflow.start_run() as run:
        mlflow.set_tags({"servegym.env": ENV_ID, "servegym.agent": "ppo", "servegym.scenario": "default"})
        mlflow.log_artifacts(str(save_policy(policy, tmp_path / "policy")), "policy")
    return str(run.info.run_id)


def _export(monkeypatch: pytest.MonkeyPatch, store: str, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["servegym export", f"tracking.uri={store}", *overrides])
    app()


def test_every_spelling_of_a_runs_policy_reuses_the_logged_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: str, run_id: str, tmp_path: Path
) -> None:
    register = ("mlflow.registered_model=autoscaler", "mlflow.alias=prod")
    _export(monkeypatch, store, f"run={run_id}", f"out={tmp_path / 'ppo'}", *register)
    assert "pyfunc model logged as" in capsys.readouterr().out
    first = runtime.load(tmp_path / "ppo").spec
    assert first["provenance"]["source"] == f"runs:/{run_id}/policy"

    spellings = [f"runs:/{run_id}/policy", f"runs:/{run_id}", f"runs:/{run_id}/policy/", "models:/autoscaler@prod"]
    for k, spelling in enumerate(spellings):
        _export(monkeypatch, store, f"run={spelling}", f"out={tmp_path / f'ppo_{k}'}", *register)
        out = capsys.readouterr().out
        assert "pyfunc model unchanged" in out and "(registered version 1)" in out, (spelling, out)
        spec = runtime.load(tmp_path / f"ppo_{k}").spec
        assert spec["provenance"]["source"] == f"runs:/{run_id}/policy", spelling
        assert bundle_fingerprint(spec) == bundle_fingerprint(first), spelling
    assert "the run of registered model autoscaler version 1" in out  # the alias's version is still said

    logged = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    assert len(logged) == 1
    assert len(mlflow.MlflowClient().search_model_versions("name = 'autoscaler'")) == 1
