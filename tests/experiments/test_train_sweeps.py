"""servegym train under review: SB3's last update's logs, sweeps with a bad job, unreachable servers, tuning budgets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from servegym.experiments.schema import register_configs
from servegym.experiments.tracking import TrackingServerUnreachableError, require_server
from servegym.experiments.train import _report_jobs, check_equal_budgets, run_training
from servegym.sim.config import ConfigError

register_configs()

TINY = [
    "episode_duration_s=300",
    "checkpoint_every_steps=32",
    "eval_seeds=[7]",
    "progress_bar=false",
    "agent.n_envs=1",
]


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        return compose("train", overrides=list(overrides))


def _cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    cmd = [sys.executable, "-m", "servegym.cli", "train", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 1. SB3's train/* of every update, the last one included, once each --------------------------
def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _assert_nothing_logged_twice(client: MlflowClient, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"


def test_every_ppo_update_logs_its_train_metrics_once_at_its_own_step(store: str) -> None:
    cfg = _compose(
        *TINY, "total_timesteps=96", "agent.hyperparams.n_steps=32", "agent.hyperparams.batch_size=32",
        f"tracking.uri={store}",
    )  # fmt: skip
    result = run_training(cfg)
    client = MlflowClient(store)
    # three rollouts of 32 steps, ten epochs each: the update at step 96 is the one SB3 never dumped
    assert _history(client, result.run_id, "train/n_updates") == [(32, 10.0), (64, 20.0), (96, 30.0)]
    assert [step for step, _ in _history(client, result.run_id, "train/approx_kl")] == [32, 64, 96]
    _assert_nothing_logged_twice(client, result.run_id)


def test_an_off_policy_learner_logs_its_last_update_and_nothing_twice(store: str) -> None:
    cfg = _compose(
        *TINY, "agent=dqn", "total_timesteps=64", "agent.hyperparams.learning_starts=16",
        "agent.hyperparams.batch_size=16", f"tracking.uri={store}",
    )  # fmt: skip
    result = run_training(cfg)
    client = MlflowClient(store)
    updates = _history(client, result.run_id, "train/n_updates")
    model = result.policy.model  # type: ignore[attr-defined]
    assert updates[-1] == (64, float(model._n_updates))
    _assert_nothing_logged_twice(client, result.run_id)


# -- 2. a multirun with an invalid job runs the others and says which failed -----------------------
def test_a_multirun_with_an_invalid_job_runs_the_others_and_exits_2(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _cli(
        [
            "-m", "agent=dqn,ppo", "env=platform", *TINY, "total_timesteps=32", "agent.hyperparams.batch_size=32",
            f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    runs = _runs(uri)
    assert [(r.data.tags["servegym.agent"], r.info.status) for r in runs] == [("ppo", "FINISHED")]
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    # the job's own line when it failed, then the summary after the sweep
    assert any(
        line.startswith("servegym train: job #0 (agent=dqn env=platform") and "dqn cannot act" in line for line in lines
    )
    summary = lines.index("servegym train: 1 of 2 jobs failed (the others ran, each in its own MLflow run):")
    assert lines[summary + 1].startswith("  job #0 (agent=dqn env=platform")
    assert "config error: agent.algo: dqn cannot act" in lines[summary + 1]


def test_a_single_run_with_an_invalid_value_still_exits_2_without_a_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _cli(["agent=dqn", "env=platform", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("servegym train: error: agent.algo: dqn cannot act")
    assert not (tmp_path / "mlflow.db").exists()


def _job_log(tmp_path: Path, *jobs: dict[str, Any]) -> Path:
    log = tmp_path / "jobs.jsonl"
    log.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return log


def test_the_sweep_status_is_2_for_config_errors_only_and_1_for_crashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = {"num": 0, "overrides": "seed=0", "failed": None}
    config = {"num": 1, "overrides": "seed=1", "failed": "config", "error": "seed = -1 is invalid"}
    crash = {"num": 2, "overrides": "seed=2", "failed": "error", "error": "boom"}
    assert _report_jobs(tmp_path / "missing.jsonl") == 0
    assert _report_jobs(_job_log(tmp_path, ok)) == 0
    assert capsys.readouterr().err == ""
    assert _report_jobs(_job_log(tmp_path, ok, config)) == 2
    assert _report_jobs(_job_log(tmp_path, crash, ok, config)) == 1
    err = capsys.readouterr().err
    assert "2 of 3 jobs failed" in err
    assert "job #2 (seed=2): error (traceback above): boom" in err


# -- 3. an unreachable tracking server fails in seconds -------------------------------------------
def test_an_unreachable_tracking_server_fails_in_seconds_naming_tracking_uri(tmp_path: Path) -> None:
    port = _free_port()
    start = time.monotonic()
    done = _cli(
        [f"tracking.uri=http://127.0.0.1:{port}", "total_timesteps=8", f"hydra.run.dir={tmp_path}"], tmp_path, 60
    )
    assert time.monotonic() - start < 15
    assert done.returncode == 2
    assert (
        f"servegym train: error: tracking.uri: cannot reach the MLflow tracking server at http://127.0.0.1:{port} "
        "(connection refused)" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_a_multirun_against_an_unreachable_server_stops_before_its_first_job(tmp_path: Path) -> None:
    port = _free_port()
    start = time.monotonic()
    done = _cli(
        ["-m", "seed=0,1", f"tracking.uri=http://127.0.0.1:{port}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
        60,
    )
    assert time.monotonic() - start < 15
    assert done.returncode == 2
    assert f"tracking.uri: cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in done.stderr
    assert "Launching" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("compare", ["seeds=1", "scenario.duration_s=60"]),
        ("export", ["run=heuristic:hpa", "out=bundle"]),
    ],
)
def test_compare_and_export_refuse_an_unreachable_server_too(command: str, args: list[str], tmp_path: Path) -> None:
    port = _free_port()
    start = time.monotonic()
    cmd = [sys.executable, "-m", "servegym.cli", command, *args, f"tracking.uri=http://127.0.0.1:{port}"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 15
    assert done.returncode == 2
    assert f"servegym {command}: error: tracking.uri: cannot reach the MLflow tracking server" in done.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "multirun").exists()


def test_require_server_checks_http_uris_only() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        require_server(f"http://user:secret@127.0.0.1:{listening.getsockname()[1]}/prefix")
    port = _free_port()
    with pytest.raises(TrackingServerUnreachableError, match=r"^MLFLOW_TRACKING_URI: cannot reach") as info:
        require_server(f"http://user:secret@127.0.0.1:{port}", "MLFLOW_TRACKING_URI")
    assert "secret" not in str(info.value)
    require_server("sqlite:///nowhere/mlflow.db")


# -- 4. tune_ppo's trials train equal budgets -----------------------------------------------------
def test_tune_ppo_refuses_a_budget_its_trials_would_round_up_differently(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _cli(
        [
            "-m", "+experiment=tune_ppo", "hydra.sweeper.n_trials=2", "total_timesteps=512",
            "episode_duration_s=300", f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        tmp_path,
        120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "servegym train: error: total_timesteps = 512 would give the trials different budgets" in done.stderr
    assert "would train 512, 1024, 2048 steps" in done.stderr
    assert "Use a multiple of 2048: total_timesteps=2048" in done.stderr
    assert _runs(uri) == []


def _sweep(
    total: int, n_envs: int = 4, params: dict[str, str] | None = None, task: list[str] | None = None
) -> DictConfig:
    """The parts of a composed multirun config the budget check reads."""
    return OmegaConf.create(
        {
            "total_timesteps": total,
            "agent": {"kind": "sb3", "algo": "ppo", "n_envs": n_envs, "hyperparams": {"n_steps": 256}},
            "hydra": {
                "sweeper": {"params": params or {"agent.hyperparams.n_steps": "choice(128, 256, 512)"}},
                "overrides": {"task": task or []},
            },
        }
    )


def test_the_budget_check_reads_the_search_space_and_the_command_line() -> None:
    check_equal_budgets(_sweep(2048))
    check_equal_budgets(_sweep(20480))
    with pytest.raises(ConfigError, match=r"total_timesteps = 3072 .* Use a multiple of 2048: total_timesteps=4096"):
        check_equal_budgets(_sweep(3072))
    # the command line's sweep replaces the search space's, as the Optuna sweeper does
    check_equal_budgets(_sweep(128, n_envs=1, task=["agent.hyperparams.n_steps=choice(64,128)"]))
    with pytest.raises(ConfigError, match=r"agent.n_envs in \[1, 2\]"):
        check_equal_budgets(_sweep(512, task=["agent.n_envs=1,2"]))
    with pytest.raises(ConfigError, match=r"agent.hyperparams.n_steps = .*interval.*sweep it with choice"):
        check_equal_budgets(_sweep(2048, params={"agent.hyperparams.n_steps": "int(interval(64, 512))"}))
    # one rollout size: every trial trains the same (rounded) budget
    check_equal_budgets(_sweep(100, params={"agent.hyperparams.learning_rate": "interval(1e-5, 1e-3)"}))


def test_tune_ppo_default_budget_is_a_multiple_of_every_rollout_size() -> None:
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg = compose("train", overrides=["+experiment=tune_ppo"], return_hydra_config=True)
    check_equal_budgets(cfg)
    assert cfg.total_timesteps == 20480
