"""``servegym export`` from MLflow runs, registered models and directories; the pyfunc round trip."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import mlflow
import numpy as np
import pandas as pd
import pytest
from stable_baselines3 import PPO

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.io import save_policy
from servegym.agents.sb3 import SB3Policy
from servegym.deploy import runtime
from servegym.experiments.export import app
from tests.deploy.conftest import Recorded


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def trained_run(store: str, recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SB3Policy]:
    """A run shaped like one of ``servegym train``: tags, eval KPIs and the policy/ artifact."""
    env = gym.make("servegym/Autoscaling-v0", duration_s=60.0)
    model = PPO("MlpPolicy", env, policy_kwargs={"net_arch": [16, 16]}, seed=0, device="cpu")
    rms = (recorded.interval.mean(axis=0).astype(np.float64), recorded.interval.var(axis=0).astype(np.float64))
    policy = SB3Policy(model, "ppo", recorded.interval_layout, rms, env_id="servegym/Autoscaling-v0")
    directory = save_policy(policy, tmp_path_factory.mktemp("policy") / "policy")
    mlflow.set_experiment("servegym")
    with mlflow.start_run() as run:
        mlflow.set_tags(
            {
                "servegym.env": "servegym/Autoscaling-v0",
                "servegym.agent": "ppo",
                "servegym.scenario": "default",
                "servegym.config_hash": "abc123",
                "servegym.git_commit": "deadbeef",
            }
        )
        mlflow.log_metrics({"eval/latency_p95_s": 3.5, "eval/slo_attainment": 0.97, "eval/cost_usd": 12.0})
        mlflow.log_artifacts(str(directory), "policy")
    return run.info.run_id, policy


def _export(monkeypatch: pytest.MonkeyPatch, store: str, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["servegym export", f"tracking.uri={store}", *overrides])
    app()


def test_export_from_run_registers_a_pyfunc_that_decides_the_same(
    monkeypatch: pytest.MonkeyPatch,
    store: str,
    trained_run: tuple[str, SB3Policy],
    recorded: Recorded,
    tmp_path: Path,
) -> None:
    run_id, policy = trained_run
    out = tmp_path / "bundle"
    register = ("mlflow.registered_model=autoscaler", "mlflow.alias=prod")
    _export(monkeypatch, store, f"run={run_id}", f"out={out}", *register)

    bundle = runtime.load(out)
    prov = bundle.spec["provenance"]
    assert prov["mlflow_run_id"] == run_id
    assert prov["config_hash"] == "abc123" and prov["git_commit"] == "deadbeef"
    assert prov["env"] == "servegym/Autoscaling-v0"
    assert prov["eval_kpis"] == {"cost_usd": 12.0, "latency_p95_s": 3.5, "slo_attainment": 0.97}
    assert prov["servegym_version"]
    assert bundle.spec["action"]["meaning"][0].startswith("target replica count")

    obs = recorded.interval
    expected = bundle.decide_batch(obs)
    assert [policy.act(o) for o in obs[:200]] == expected[:200].tolist()
    model = mlflow.pyfunc.load_model("models:/autoscaler@prod")
    frame = pd.DataFrame(obs.astype(np.float64), columns=list(bundle.feature_names)).iloc[:, ::-1]
    np.testing.assert_array_equal(model.predict(frame)["action"].to_numpy(), expected)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == list(bundle.feature_names)

    # The registered model's run is the training run: exporting by alias gives the same bundle.
    again = tmp_path / "again"
    _export(monkeypatch, store, "run=models:/autoscaler@prod", f"out={again}", "mlflow.log_model=false")
    assert runtime.load(again).spec["provenance"]["source"] == f"runs:/{run_id}/policy"
    np.testing.assert_array_equal(runtime.load(again).decide_batch(obs), expected)


def test_export_from_a_local_policy_directory(
    monkeypatch: pytest.MonkeyPatch, store: str, trained_run: tuple[str, SB3Policy], tmp_path: Path, recorded: Recorded
) -> None:
    _, policy = trained_run
    directory = save_policy(policy, tmp_path / "policy")
    _export(monkeypatch, store, f"run={directory}", f"out={tmp_path / 'b'}")
    bundle = runtime.load(tmp_path / "b")
    assert bundle.spec["provenance"]["source"] == str(directory.resolve())
    assert bundle.decide(recorded.interval[5]) == policy.act(recorded.interval[5])


def test_export_a_tuned_heuristic(monkeypatch: pytest.MonkeyPatch, store: str, tmp_path: Path) -> None:
    _export(monkeypatch, store, "run=heuristic:hpa", "params.target_utilisation=0.55", f"out={tmp_path / 'hpa'}")
    spec = runtime.load(tmp_path / "hpa").spec
    assert spec["policy"]["kind"] == "hpa" and spec["policy"]["params"]["target_utilisation"] == 0.55


def test_a_misspelt_heuristic_param_lists_the_settable_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit):
        _export(monkeypatch, store, "run=heuristic:hpa", "params.target_utilisatio=0.5", f"out={tmp_path / 'x'}")
    err = capsys.readouterr().err
    assert "params.target_utilisatio: hpa has no argument 'target_utilisatio'" in err
    allowed = err.split("it accepts: ")[1].strip().split(", ")
    assert "target_utilisation" in allowed and "tolerance" in allowed
    assert not {"layout", "min_replicas", "max_replicas", "interval_s", "slots_per_replica"} & set(allowed)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("0123456789abcdef0123456789abcdef", "no MLflow run '0123456789abcdef0123456789abcdef'"),
        ("models:/nobody@prod", "run=models:/nobody@prod: no such registered model version"),
        ("not-a-run", "not an MLflow run id"),
        ("heuristic:magic", "unknown heuristic; known: admit_all"),
    ],
)
def test_clear_errors(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
    tmp_path: Path,
    source: str,
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _export(monkeypatch, store, f"run={source}", f"out={tmp_path / 'x'}")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_policy_artifact(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    with mlflow.start_run() as run:
        mlflow.log_metric("eval/cost_usd", 1.0)
    with pytest.raises(SystemExit):
        _export(monkeypatch, store, f"run=runs:/{run.info.run_id}/policy", f"out={tmp_path / 'x'}")
    assert f"run {run.info.run_id} has no artifact 'policy'" in capsys.readouterr().err


def test_export_a_trained_bandit_run_through_mlflow(
    monkeypatch: pytest.MonkeyPatch, store: str, recorded: Recorded, tmp_path: Path
) -> None:
    """A run of `servegym train agent=bandit` (its policy/ artifact) exports, logs a pyfunc and decides alike."""
    from servegym.agents.bandit import BanditRouterLearner

    env = gym.make("servegym/Routing-v0", duration_s=120.0, overrides=["workload.rate_rps=8.0"])
    router = BanditRouterLearner(log_every=500).learn(env, 500, seed=0)
    directory = save_policy(router, tmp_path / "policy")
    mlflow.set_experiment("servegym")
    with mlflow.start_run() as run:
        mlflow.set_tags({"servegym.env": "servegym/Routing-v0", "servegym.agent": "bandit"})
        mlflow.log_artifacts(str(directory), "policy")
    out = tmp_path / "bundle"
    _export(monkeypatch, store, f"run={run.info.run_id}", f"out={out}")

    bundle = runtime.load(out)
    assert bundle.kind == "linear_bandit" and bundle.spec["provenance"]["agent"] == "bandit"
    obs = recorded.routing[:2_000]
    expected = [router.act(o) for o in obs]
    np.testing.assert_array_equal(bundle.decide_batch(obs), expected)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/policy_bundle")
    frame = pd.DataFrame(obs.astype(np.float64), columns=list(bundle.feature_names))
    np.testing.assert_array_equal(model.predict(frame)["action"].to_numpy(), expected)


def test_exporting_the_same_run_again_reuses_its_model_quietly(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
    trained_run: tuple[str, SB3Policy],
    tmp_path: Path,
) -> None:
    run_id, _ = trained_run
    register = ("mlflow.registered_model=again", "mlflow.alias=prod", "onnx=false")  # a bundle no other test logs
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # MLflow's advice to servegym's code is not the user's to act on
        _export(monkeypatch, store, f"run={run_id}", f"out={tmp_path / 'a'}", *register)
        first = capsys.readouterr().out
        _export(monkeypatch, store, f"run={run_id}", f"out={tmp_path / 'a'}", "overwrite=true", *register)
        second = capsys.readouterr().out
    assert "pyfunc model logged as models:/" in first and "(registered version 1)" in first
    assert "pyfunc model unchanged: this bundle is already logged as models:/" in second
    assert "(registered version 1)" in second
    uri = first.split("logged as ")[1].split()[0]
    assert uri in second
    experiment = mlflow.get_experiment_by_name("servegym")
    assert experiment is not None
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'policy_bundle'",
        output_format="list",
    )
    assert len([m for m in logged if m.model_uri == uri]) == 1
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name = 'again'")] == ["1"]
    # another spelling of the run's policy is the same bundle, so the same model
    _export(monkeypatch, store, f"run=runs:/{run_id}/policy", f"out={tmp_path / 'b'}", "onnx=false")
    assert f"pyfunc model unchanged: this bundle is already logged as {uri}" in capsys.readouterr().out


def test_exporting_a_run_never_creates_a_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """From a directory without mlflow.db: a clear error naming where it looked, and no mlflow.db or outputs/ left."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sys, "argv", ["servegym export", "run=0123456789abcdef0123456789abcdef", "out=b"])
    with pytest.raises(SystemExit) as exit_info:
        app()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"no MLflow tracking store at {tmp_path.resolve() / 'mlflow.db'}" in err
    assert list(tmp_path.iterdir()) == []
