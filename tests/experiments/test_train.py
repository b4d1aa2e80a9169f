"""servegym train: config composition and validation, every SB3 learner, MLflow records, resume, multirun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from stable_baselines3.common.callbacks import BaseCallback

from servegym.agents.io import load_policy
from servegym.agents.sb3 import build_model, make_vec_env, rollout_timesteps
from servegym.experiments.schema import register_configs
from servegym.experiments.train import TrainingInterruptedError, _warn_if_rounded_up, run_training, validate
from servegym.sim.config import ConfigError

register_configs()

# Tiny runs: 300 s episodes are 20 control intervals; a handful of updates is enough to
# check the plumbing, not to learn anything. The robustness check is off except where tested.
TINY = [
    "episode_duration_s=300",
    "total_timesteps=64",
    "checkpoint_every_steps=32",
    "eval_seeds=[7]",
    "robustness.enabled=false",
    "progress_bar=false",
    "agent.n_envs=1",
]
TINY_HYPERPARAMS = {
    "ppo": ["agent.hyperparams.n_steps=32", "agent.hyperparams.batch_size=32"],
    "maskable_ppo": ["agent.hyperparams.n_steps=32", "agent.hyperparams.batch_size=32"],
    "a2c": ["agent.hyperparams.n_steps=8"],
    "dqn": ["agent.hyperparams.learning_starts=16", "agent.hyperparams.batch_size=16"],
    "sac": ["agent.hyperparams.learning_starts=16", "agent.hyperparams.batch_size=16"],
}


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        return compose("train", overrides=list(overrides))


# -- composition and validation --------------------------------------------------------------
def test_default_config_composes_and_validates() -> None:
    cfg = _compose()
    v = validate(dict(_plain(cfg)))
    assert v.env_id == "servegym/Autoscaling-v0"
    assert v.kind == "sb3" and v.agent["algo"] == "ppo"
    assert v.scenario.name == "default"


def test_misspelt_scenario_key_fails_at_composition_naming_it() -> None:
    with pytest.raises(ConfigCompositionException, match=r"scenario\.pool\.max_replica"):
        _compose("scenario.pool.max_replica=10")
    with pytest.raises(ConfigCompositionException, match=r"scenario\.pool\.max_replicas=abc"):
        _compose("scenario.pool.max_replicas=abc")


def test_unknown_agent_lists_the_choices() -> None:
    with pytest.raises(MissingConfigException, match="agent/nope"):
        _compose("agent=nope")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scenario.workload.kind=fractal"], r"scenario\.workload\.kind"),
        (["scenario.pool.min_replicas=40"], r"scenario\.pool\."),
        (["+agent.hyperparams.n_step=3"], r"agent\.hyperparams\.n_step: PPO has no hyperparameter 'n_step'"),
        (
            ["agent.hyperparams.learning_rate=abc"],
            r"agent\.hyperparams\.learning_rate = 'abc' is invalid: PPO takes a number",
        ),
        (["agent.hyperparams.n_steps=1.5"], r"agent\.hyperparams\.n_steps = 1\.5 is invalid: PPO takes an integer"),
        (
            ["eval_seeds=[1,2]", "+holdout_seeds=[2,3]"],
            r"holdout_seeds = \[2, 3\] is invalid: \[2\] are also eval_seeds",
        ),
        (["agent=dqn", "env=caching"], r"agent\.algo: dqn cannot act in the action space MultiDiscrete"),
        (["+env.kwargs.cost_weight=-1"], r"cost_weight"),
        (["episode_duration_s=-5"], r"episode_duration_s = -5"),
        (["total_timesteps=0"], r"total_timesteps = 0"),
        (["+env.kwargs.colour=blue"], r"env\.kwargs"),
        (["+total_timestep=100"], r"total_timestep: unknown key; allowed: .*total_timesteps"),
        (["+agent.kwargs.x=1"], r"agent\.kwargs: unknown key"),
    ],
)
def test_invalid_values_fail_before_training_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(_plain(_compose(*overrides)))


def _plain(cfg: DictConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


# -- every learner, recorded in MLflow -------------------------------------------------------
@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "maskable_ppo"])
def test_each_sb3_learner_trains_and_yields_a_policy(algo: str, store: str, tmp_path: Path) -> None:
    cfg = _compose(f"agent={algo}", *TINY, *TINY_HYPERPARAMS[algo], f"tracking.uri={store}")
    result = run_training(cfg)
    assert result.timesteps >= 64
    assert result.robustness is None and not any(k.startswith(("shift/", "eval/baseline/")) for k in result.kpis)
    env = gym.make("servegym/Autoscaling-v0", duration_s=300.0)
    obs, _ = env.reset(seed=0)
    action = result.policy.act(obs)
    assert env.action_space.contains(action)
    # what MLflow holds is the same policy
    client = MlflowClient(store)
    local = client.download_artifacts(result.run_id, "policy", str(tmp_path))
    reloaded = load_policy(local)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert reloaded.act(obs) == result.policy.act(obs)


def test_a_run_records_config_params_metrics_and_model(store: str, tmp_path: Path) -> None:
    cfg = _compose(
        "agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}", "seed=3", "robustness.enabled=true"
    )
    result = run_training(cfg)
    runs = mlflow.search_runs(experiment_names=["servegym"], filter_string=f"attributes.run_id = '{result.run_id}'")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    assert row["tags.mlflow.runName"] == "Autoscaling-v0__ppo__default__seed3"
    assert row["params.agent.hyperparams.n_steps"] == "32"
    assert row["params.scenario.pool.max_replicas"] == "48"
    assert row["tags.servegym.config_hash"]
    assert row["tags.version.stable-baselines3"]
    for metric in ("eval/latency_p95_s", "eval/cost_usd", "eval/slo_attainment", "train/value_loss", "sim/cost_usd"):
        assert np.isfinite(row[f"metrics.{metric}"]), metric
    # the scenario's objective, its resolved prices, the worst seed and the robustness check
    assert float(row["params.objective/slo_miss_usd"]) == 0.01 and float(row["params.objective/drop_usd"]) > 0
    assert row["metrics.eval/objective_usd"] == pytest.approx(-row["metrics.eval/episode_return"], rel=1e-9)
    for metric in (
        "eval/objective_usd_worst", "eval/drop_rate_worst", "eval/failure_rate", "eval/baseline/objective_usd",
        "shift/higher_load/objective_usd", "shift/higher_load/drop_rate_worst", "shift/burstier/baseline/drop_rate",
        "robustness/flags",
    ):  # fmt: skip
        assert np.isfinite(row[f"metrics.{metric}"]), metric
    assert row["metrics.eval/objective_usd_worst_seed"] == 7
    assert result.robustness is not None
    assert row["metrics.robustness/flags"] == len(result.robustness.flags)
    assert row["tags.servegym.flags"] == ("\n".join(result.robustness.flags) or "none")
    client = MlflowClient(store)
    config_path = Path(client.download_artifacts(result.run_id, "config/config.yaml", str(tmp_path)))
    config = yaml.safe_load(config_path.read_text())
    assert config["seed"] == 3 and config["agent"]["algo"] == "ppo"
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "policy")}
    assert {"policy/model.zip", "policy/policy.json", "policy/obs_rms.npz"} <= artifacts
    report = Path(client.download_artifacts(result.run_id, "robustness/report.txt", str(tmp_path))).read_text()
    assert report.splitlines()[0].startswith("workload") and "higher_load" in report and "burstier" in report
    # metrics went in batches at the SB3 logging steps, with increasing steps
    steps = [m.step for m in client.get_metric_history(result.run_id, "time/total_timesteps")]
    assert steps == sorted(steps) and len(steps) >= 2


def test_same_seed_same_policy(store: str) -> None:
    first = run_training(_compose("agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}"))
    second = run_training(_compose("agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}"))
    assert first.kpis == second.kpis
    a = first.policy.model.policy.state_dict()  # type: ignore[attr-defined]
    b = second.policy.model.policy.state_dict()  # type: ignore[attr-defined]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


class _Interrupt(BaseCallback):
    """Simulates Ctrl-C once training passes ``at`` steps."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise KeyboardInterrupt
        return True


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_interrupted_training_resumes_into_the_same_run(algo: str, store: str) -> None:
    overrides = [f"agent={algo}", *TINY, *TINY_HYPERPARAMS[algo], f"tracking.uri={store}", "total_timesteps=96"]
    with pytest.raises(TrainingInterruptedError) as info:
        run_training(_compose(*overrides), callbacks=[_Interrupt(at=40)])
    run_id = info.value.run_id
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    before = max(m.step for m in client.get_metric_history(run_id, "time/total_timesteps"))
    assert before <= info.value.step

    with pytest.raises(ConfigError, match=r"may change, not: seed=4"):
        run_training({"resume": run_id, "tracking": {"uri": store}}, resume_overrides=["seed=4"])
    resumed = run_training(
        {"resume": run_id, "tracking": {"uri": store}, "total_timesteps": 128},
        resume_overrides=[f"resume={run_id}", "total_timesteps=128"],
    )
    assert resumed.run_id == run_id
    assert resumed.timesteps >= 128  # the budget was extended on resume
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "time/total_timesteps")
    after = [m.step for m in history if m.step > info.value.step]
    assert after, "no metrics logged after the resume point"
    # the step count continued from the checkpoint instead of restarting at zero
    assert min(after) > info.value.step
    assert "eval/cost_usd" in run.data.metrics


class _Terminate(BaseCallback):
    """Sends this process SIGTERM (as ``timeout``, SLURM or Kubernetes would) at ``at`` steps."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return True


def test_sigterm_checkpoints_like_ctrl_c_and_a_finished_run_is_not_resumed(store: str) -> None:
    overrides = ["agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}", "total_timesteps=96"]
    with pytest.raises(TrainingInterruptedError) as info:
        run_training(_compose(*overrides), callbacks=[_Terminate(at=40)])
    client = MlflowClient(store)
    assert client.get_run(info.value.run_id).info.status == "KILLED"
    paths = {a.path for a in client.list_artifacts(info.value.run_id, "checkpoints/latest")}
    assert "checkpoints/latest/model.zip" in paths
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is undone
    done = run_training({"resume": info.value.run_id, "tracking": {"uri": store}})
    with pytest.raises(ConfigError, match="already finished"):
        run_training({"resume": done.run_id, "tracking": {"uri": store}})


def test_resume_of_unknown_run_is_a_clear_error(store: str) -> None:
    with pytest.raises(ConfigError, match="resume=0123abc: no such MLflow run"):
        run_training({"resume": "0123abc", "tracking": {"uri": store}})


def test_cli_multirun_makes_one_mlflow_run_per_job(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "servegym.cli",
        "train",
        "-m",
        "seed=0,1",
        *TINY,
        *TINY_HYPERPARAMS["ppo"],
        f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        # parallel jobs in worker processes: the scenario schema must pickle, SQLite take two writers
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("servegym")
    assert experiment is not None
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in found) == [
        "Autoscaling-v0__ppo__default__seed0",
        "Autoscaling-v0__ppo__default__seed1",
    ]
    assert all(r.info.status == "FINISHED" for r in found)


def test_cli_reports_a_bad_value_without_a_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "servegym.cli", "train", "agent=dqn", "env=caching", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "agent.algo: dqn cannot act" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("agent", "env_name", "env_id", "budget"),
    [
        ("predictive", "autoscaling", "servegym/Autoscaling-v0", 120),
        ("bandit", "routing", "servegym/Routing-v0", 1500),
        ("admission", "caching", "servegym/Caching-v0", 1500),
        ("distill", "autoscaling", "servegym/Autoscaling-v0", 120),
    ],
)
def test_each_sklearn_learner_trains_through_the_app(
    agent: str, env_name: str, env_id: str, budget: int, store: str, tmp_path: Path
) -> None:
    extra = ["agent.learner.n_estimators=20"] if agent in ("predictive", "admission") else []
    cfg = _compose(
        f"agent={agent}",
        f"env={env_name}",
        *[o for o in TINY if not o.startswith("agent.")],
        f"total_timesteps={budget}",
        f"tracking.uri={store}",
        *extra,
    )
    result = run_training(cfg)
    env = gym.make(env_id, duration_s=300.0)
    obs, _ = env.reset(seed=2)
    first = np.asarray(result.policy.act(obs)).astype(np.int64).reshape(env.action_space.shape)
    assert env.action_space.contains(first)
    local = MlflowClient(store).download_artifacts(result.run_id, "policy", str(tmp_path))
    reloaded = load_policy(local)
    reloaded.reset()
    result.policy.reset()
    for _ in range(19):  # policies may keep state: one act per observation each
        action = result.policy.act(obs)
        assert np.array_equal(np.asarray(reloaded.act(obs)), np.asarray(action))
        obs, *_ = env.step(action)
    assert "eval/cost_usd" in MlflowClient(store).get_run(result.run_id).data.metrics


def test_distillation_of_a_trained_run(store: str) -> None:
    teacher = run_training(_compose("agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}"))
    cfg = _compose(
        "agent=distill",
        *[o for o in TINY if not o.startswith("agent.")],
        "total_timesteps=90",
        f"+agent.teacher_run={teacher.run_id}",
        f"tracking.uri={store}",
    )
    student = run_training(cfg)
    metrics = MlflowClient(store).get_run(student.run_id).data.metrics
    assert 0.0 <= metrics["distill/fidelity"] <= 1.0
    assert student.policy.rules()  # type: ignore[attr-defined]


def test_sklearn_learner_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"agent\.learner\.n_trees: PredictiveAutoscalerLearner has no argument"):
        validate(_plain(_compose("agent=predictive", "+agent.learner.n_trees=5")))
    with pytest.raises(ConfigError, match=r"agent 'bandit' trains on servegym/Routing-v0 only"):
        validate(_plain(_compose("agent=bandit", "env=autoscaling")))


# -- the training budget ---------------------------------------------------------------------
def test_rollout_sizes_and_the_warning_for_a_budget_between_rollouts(capsys: pytest.CaptureFixture[str]) -> None:
    venv = make_vec_env("servegym/Autoscaling-v0", {"duration_s": 300.0}, 4, 0, "ppo")
    ppo = build_model("ppo", venv, {"n_steps": 256, "batch_size": 256}, 0)
    assert rollout_timesteps(ppo) == 1024
    _warn_if_rounded_up(ppo, 64)
    err = capsys.readouterr().err
    assert err.startswith("servegym train: warning: total_timesteps=64 is not a multiple of the rollout size 1024")
    assert "(n_steps 256 x 4 envs)" in err and "so 1024 timesteps will run, 960 more than total_timesteps" in err
    assert "to train exactly the budget, use total_timesteps=1,024" in err and "Traceback" not in err
    _warn_if_rounded_up(ppo, 2048)  # whole rollouts: nothing to say
    assert capsys.readouterr().err == ""
    ppo.num_timesteps = 40  # resumed from a checkpoint taken mid-rollout: what is left is rounded up
    _warn_if_rounded_up(ppo, 2048)
    err = capsys.readouterr().err
    assert "total_timesteps=2048 leaves 2008 after the checkpoint's 40, which is not a multiple of the rollout" in err
    assert "so training will end at 2088 timesteps, 40 more than total_timesteps" in err
    # The reachable budgets from the checkpoint, not "a multiple of 1024" (2048 is one, and cannot be hit).
    assert "use total_timesteps=1,064 or 2,088 (40 + a multiple of 1,024)" in err
    single = make_vec_env("servegym/Autoscaling-v0", {"duration_s": 300.0}, 1, 0, "dqn")
    dqn = build_model("dqn", single, {"train_freq": 4, "learning_starts": 16}, 0)
    assert rollout_timesteps(dqn) == 4
    _warn_if_rounded_up(dqn, 10)
    err = capsys.readouterr().err
    assert "rollout size 4 (train_freq 4 steps x 1 envs)" in err and "12 timesteps will run" in err
    sac = build_model("sac", make_vec_env("servegym/Autoscaling-v0", {"duration_s": 300.0}, 1, 0, "sac"),
                      {"train_freq": (1, "episode")}, 0)  # fmt: skip
    assert rollout_timesteps(sac) is None  # an episode's length is not known in advance: no warning
    for venv_ in (venv, single):
        venv_.close()


def test_a_budget_between_rollouts_warns_and_logs_the_timesteps_trained(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [o for o in TINY if not o.startswith("total_timesteps=")]
    cfg = _compose("agent=ppo", *overrides, *TINY_HYPERPARAMS["ppo"], "total_timesteps=40", f"tracking.uri={store}")
    result = run_training(cfg)
    err = capsys.readouterr().err
    assert "servegym train: warning: total_timesteps=40 is not a multiple of the rollout size 32" in err
    assert "so 64 timesteps will run" in err
    assert result.timesteps == 64
    history = MlflowClient(store).get_metric_history(result.run_id, "budget/trained_timesteps")
    assert [(m.value, m.step) for m in history] == [(64.0, 64)]


# -- open hyperparameter mappings, validation before the run --------------------------------
def test_hyperparams_and_learner_args_need_no_plus_and_typos_still_fail() -> None:
    v = validate(_plain(_compose("agent.hyperparams.target_kl=0.01", "agent.hyperparams.policy_kwargs.net_arch=[8]")))
    assert v.agent["hyperparams"]["target_kl"] == 0.01
    assert v.agent["hyperparams"]["policy_kwargs"] == {"net_arch": [8]}
    with pytest.raises(ConfigError, match=r"agent\.hyperparams\.learning_rat: PPO has no hyperparameter") as info:
        validate(_plain(_compose("agent.hyperparams.learning_rat=0.1")))
    allowed = str(info.value).split("it accepts: ")[1].split(", ")
    assert "learning_rate" in allowed and "target_kl" in allowed
    for internal in ("_init_setup_model", "seed", "device", "verbose", "tensorboard_log", "policy", "env"):
        assert internal not in allowed
    with pytest.raises(ConfigError, match=r"agent\.hyperparams\.seed: .*use the top-level seed=N"):
        validate(_plain(_compose("agent.hyperparams.seed=3")))
    v = validate(_plain(_compose("agent=predictive", "agent.learner.max_depth=3")))
    assert v.agent["learner"]["max_depth"] == 3
    with pytest.raises(ConfigError, match=r"agent\.learner\.n_tree: PredictiveAutoscalerLearner has no argument"):
        validate(_plain(_compose("agent=predictive", "agent.learner.n_tree=3")))
    with pytest.raises(ConfigCompositionException, match=r"agent\.nonsense"):
        _compose("agent.nonsense=1")  # outside the open mappings, Hydra's struct check stays


def _runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent.hyperparams.learning_rate=abc"], r"learning_rate = 'abc' is invalid"),
        (["agent.hyperparams.batch_size=1"], r"PPO rejected them"),  # SB3's own check, when it builds the model
        (["agent=predictive", "agent.learner.eval_fraction=2"], r"agent\.learner: .*eval_fraction = 2"),
        (["agent=distill", "agent.teacher_params.target_utilisatio=0.5"], r"teacher_params\.target_utilisatio"),
    ],
)
def test_a_bad_value_fails_before_any_mlflow_run_is_created(overrides: list[str], message: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # an existing, empty store
    with pytest.raises(ConfigError, match=message):
        run_training(_compose(*[o for o in TINY if not o.startswith("agent.")], *overrides, f"tracking.uri={uri}"))
    assert _runs(uri) == []


def test_a_bad_value_does_not_even_create_the_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with pytest.raises(ConfigError, match="learning_rate"):
        run_training(_compose("agent.hyperparams.learning_rate=abc", f"tracking.uri=sqlite:///{db}"))
    assert not db.exists()


def test_resume_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(ValueError, match=rf"resume=0123abc: no MLflow tracking store at {missing}"):
        run_training({"resume": "0123abc", "tracking": {"uri": f"sqlite:///{missing}"}})
    assert not missing.exists() and not missing.parent.exists()


# -- interrupting every kind of learner ------------------------------------------------------
def test_sigterm_ends_a_scikit_learn_run_as_killed_keeping_its_metrics(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servegym.agents.predictive import PredictiveAutoscalerLearner

    fit = PredictiveAutoscalerLearner.learn

    def learn_then_terminate(self: Any, env: Any, total_timesteps: int, seed: int, log: Any = None) -> Any:
        log({"forecast/progress": 1.0}, 10)
        os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` would, halfway through the fit
        return fit(self, env, total_timesteps, seed, log=log)

    monkeypatch.setattr(PredictiveAutoscalerLearner, "learn", learn_then_terminate)
    cfg = _compose("agent=predictive", *[o for o in TINY if not o.startswith("agent.")], f"tracking.uri={store}")
    with pytest.raises(
        TrainingInterruptedError, match=r"interrupted at step 10; MLflow run \w+ kept the metrics logged so far"
    ) as info:
        run_training(cfg)
    assert not info.value.resumable and "Rerun the command" in str(info.value)
    client = MlflowClient(store)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "KILLED"
    assert run.data.metrics["forecast/progress"] == 1.0
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(ConfigError, match=r"scikit-learn learner, which keeps no checkpoint; rerun its command"):
        run_training({"resume": info.value.run_id, "tracking": {"uri": store}})


def test_an_interrupted_evaluation_still_saves_the_trained_policy(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import servegym.experiments.train as train

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate_in_env", interrupted)
    cfg = _compose(
        "agent=bandit", "env=routing", *[o for o in TINY if not o.startswith("agent.")], "total_timesteps=300",
        f"tracking.uri={store}",
    )  # fmt: skip
    with pytest.raises(TrainingInterruptedError, match=r"the trained policy is saved as policy/") as info:
        run_training(cfg)
    client = MlflowClient(store)
    assert client.get_run(info.value.run_id).info.status == "KILLED"
    assert "policy/policy.json" in {a.path for a in client.list_artifacts(info.value.run_id, "policy")}


def test_cli_sigterm_on_a_scikit_learn_learner_exits_130_with_a_killed_run(tmp_path: Path) -> None:
    """The review's reproduction: `timeout -s TERM 20 servegym train agent=predictive ...` left a RUNNING run."""
    import sqlite3
    import time

    db = tmp_path / "mlflow.db"
    cmd = [
        sys.executable, "-m", "servegym.cli", "train", "agent=predictive", "env=autoscaling",
        "episode_duration_s=900", "total_timesteps=1000000", f"tracking.uri=sqlite:///{db}",
        f"hydra.run.dir={tmp_path / 'out'}",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if db.exists():
                try:
                    with sqlite3.connect(db) as conn:
                        if conn.execute("select count(*) from runs where status='RUNNING'").fetchone()[0]:
                            break
                except sqlite3.OperationalError:
                    continue  # tables not created yet
        time.sleep(1.0)  # into the fit
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "ended as KILLED" in err and "Rerun the command" in err and "Traceback" not in err
    assert [r.info.status for r in _runs(f"sqlite:///{db}")] == ["KILLED"]


# -- train longer: extending a finished run ----------------------------------------------------
def test_a_finished_run_trains_longer_into_the_same_run(store: str, tmp_path: Path) -> None:
    first = run_training(_compose("agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}"))
    assert first.timesteps == 64
    longer_cfg = {"resume": first.run_id, "tracking": {"uri": store}, "total_timesteps": 128}
    longer = run_training(longer_cfg, resume_overrides=[f"resume={first.run_id}", "total_timesteps=128"])
    assert longer.run_id == first.run_id and longer.timesteps == 128
    client = MlflowClient(store)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    trained = [(m.value, m.step) for m in client.get_metric_history(first.run_id, "budget/trained_timesteps")]
    assert trained == [(64.0, 64), (128.0, 128)]
    assert max(m.step for m in client.get_metric_history(first.run_id, "time/total_timesteps")) == 128
    assert [m.step for m in client.get_metric_history(first.run_id, "eval/cost_usd")] == [64, 128]
    config = Path(client.download_artifacts(first.run_id, "config/config.yaml", str(tmp_path)))
    assert yaml.safe_load(config.read_text())["total_timesteps"] == 128  # the budget it now trains towards
    # nothing more to do: refused, saying how to train longer
    with pytest.raises(ConfigError, match=r"already finished, 128 timesteps trained .* total_timesteps=256"):
        run_training(longer_cfg)
    with pytest.raises(ConfigError, match="already finished"):
        run_training({"resume": first.run_id, "tracking": {"uri": store}})


def test_search_runs_shows_the_extended_budget(store: str) -> None:
    tracking = {"uri": store, "experiment": "servegym-extend"}
    overrides = [*TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}", "tracking.experiment=servegym-extend"]
    first = run_training(_compose("agent=ppo", *overrides))
    run_training(
        {"resume": first.run_id, "tracking": tracking, "total_timesteps": 128},
        resume_overrides=[f"resume={first.run_id}", "total_timesteps=128"],
    )
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["servegym-extend"], output_format="list")
    assert [r.info.run_id for r in runs] == [first.run_id]
    # MLflow params cannot change: the param keeps the first budget, the metric gives the current one
    assert runs[0].data.params["total_timesteps"] == "64"
    assert runs[0].data.metrics["budget/total_timesteps"] == 128
    history = MlflowClient(store).get_metric_history(first.run_id, "budget/total_timesteps")
    assert [(m.value, m.step) for m in history] == [(64.0, 0), (128.0, 64)]


# -- budgets and the summary -----------------------------------------------------------------
AGENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "servegym" / "conf" / "agent").glob("*.yaml"))


@pytest.mark.parametrize("agent", AGENTS)
def test_every_agent_has_its_own_default_budget(agent: str) -> None:
    cfg = _plain(_compose(f"agent={agent}"))
    assert cfg["total_timesteps"] == cfg["agent"]["default_timesteps"] > 0
    assert _plain(_compose(f"agent={agent}", "total_timesteps=77"))["total_timesteps"] == 77


def test_the_summary_says_what_the_numbers_are() -> None:
    from servegym.experiments.train import summary

    kpis = {
        "eval/latency_p95_s": 21.62, "eval/latency_p95_s_ci95": 15.8, "eval/slo_attainment": 0.9395,
        "eval/slo_attainment_ci95": 0.004, "eval/objective_usd": 328.1, "eval/objective_usd_ci95": 5.0,
    }  # fmt: skip
    line = summary(kpis, [1000, 1001, 1002])
    assert line.startswith("evaluation over seeds [1000, 1001, 1002] (mean ± 95% CI): objective_usd 328.1 ± 5 USD")
    assert "latency_p95_s 21.62 ± 15.8 s" in line and "slo_attainment 0.9395 ± 0.004" in line
    assert summary({"eval/cost_usd": 3.0}, [7]) == "evaluation over seeds [7] (one episode): cost_usd 3 USD"


# -- held-out check after a tuning sweep -------------------------------------------------------
def test_tune_ppo_sweep_evaluates_the_best_trial_on_held_out_seeds(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "servegym.cli", "train", "-m", "+experiment=tune_ppo", "hydra.sweeper.n_trials=2",
        "total_timesteps=128", "episode_duration_s=120", "agent.n_envs=1", "agent.hyperparams.batch_size=64",
        # rollouts that divide the budget: every trial trains exactly 128 steps
        "agent.hyperparams.n_steps=choice(64,128)",
        "eval_seeds=[7]", "holdout_seeds=[8,9]", "progress_bar=false", f"tracking.uri={uri}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert [r.data.metrics["budget/trained_timesteps"] for r in runs] == [128, 128]
    # equal budgets can tie two trials on eval/objective_usd: the evaluated one is a best one
    best, other = sorted(runs, key=lambda r: "holdout/objective_usd" not in r.data.metrics)
    assert best.data.metrics["eval/objective_usd"] == min(r.data.metrics["eval/objective_usd"] for r in runs)
    for key in ("holdout/objective_usd", "holdout/objective_usd_ci95", "holdout/latency_p95_s", "holdout/cost_usd"):
        assert np.isfinite(best.data.metrics[key]), key
    assert not any(k.startswith("holdout/") for k in other.data.metrics)
    assert best.data.tags["servegym.holdout_seeds"] == "[8, 9]"
    # the worst held-out seed, and the baseline on the same seeds with the flags against it
    for key in ("holdout/objective_usd_worst", "holdout/drop_rate_worst", "holdout/baseline/objective_usd"):
        assert np.isfinite(best.data.metrics[key]), key
    assert "servegym.holdout_flags" in best.data.tags
    assert f"best trial: run {best.info.run_id}" in done.stdout
    assert "held-out evaluation over seeds [8, 9] (mean ± 95% CI): objective_usd" in done.stdout
    lines = done.stdout.strip().splitlines()
    assert lines[-3].startswith("objective = cost + $0.01 per SLO miss")
    assert lines[-1].startswith("drops: ") and "worst seed" in lines[-1] and "against builtin" in lines[-1]


def test_a_checkpoint_never_runs_ahead_of_the_logged_metrics(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A SIGKILL right after a checkpoint must lose no metric up to its step (resume continues from it):
    # at the moment each checkpoint is logged, the store already holds its step's rollout and update metrics.
    seen: list[tuple[int, set[int], set[int]]] = []
    real = MlflowClient.log_artifacts

    def spy(self: MlflowClient, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        if artifact_path == "checkpoints/latest":
            step = int(yaml.safe_load((Path(local_dir) / "state.yaml").read_text())["num_timesteps"])
            rollout = {m.step for m in self.get_metric_history(run_id, "time/total_timesteps")}
            update = {m.step for m in self.get_metric_history(run_id, "train/value_loss")}
            seen.append((step, rollout, update))
        real(self, run_id, local_dir, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifacts", spy)
    overrides = ["agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}", "total_timesteps=96"]
    run_training(_compose(*overrides))
    periodic = [s for s in seen if s[0] < 96]
    assert periodic, "no periodic checkpoint was taken"
    for step, rollout, update in seen:
        assert step in rollout and step in update, (step, sorted(rollout), sorted(update))


def test_resume_refuses_a_checkpoint_servegym_did_not_write(store: str, tmp_path: Path) -> None:
    overrides = ["agent=ppo", *TINY, *TINY_HYPERPARAMS["ppo"], f"tracking.uri={store}", "total_timesteps=96"]
    with pytest.raises(TrainingInterruptedError) as info:
        run_training(_compose(*overrides), callbacks=[_Interrupt(at=40)])
    run_id = info.value.run_id
    client = MlflowClient(store)
    # Someone replaces the checkpoint's model.zip in the artifact store (a pickle runs code when loaded).
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "model.zip").write_bytes(b"not what servegym wrote")
    client.log_artifacts(run_id, str(planted), "checkpoints/latest")
    with pytest.raises(ConfigError, match=r"checkpoint file\(s\) model\.zip differ from what servegym wrote"):
        run_training({"resume": run_id, "tracking": {"uri": store}})
