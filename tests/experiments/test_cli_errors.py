"""Hydra composition mistakes (a misspelt group option, key or value) fail in one line, exit 2, before any job."""

from __future__ import annotations

from pathlib import Path

import pytest

from servegym.cli import _composition_error, main


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "agent=ppo2"], "Could not find 'agent/ppo2'; Available options in 'agent': a2c, admission,"),
        (["train", "workload=diurnl"], "Could not find 'workload/diurnl'"),
        (["train", "scenario.pool.max_replica=3"], "Key 'max_replica' not in 'PoolConfig'; full_key: scenario.pool"),
        (["train", "scenario.workload.rate_rps=abc"], "'abc' of type 'str' could not be converted to Float"),
        (["train", "-m", "seed=0,1", "agent=ppo,ppo3"], "Could not find 'agent/ppo3'"),  # every swept value
        (["compare", "params.hpa.target_utilization=0.6"], "Could not override 'params.hpa.target_utilization'"),
        (["export", "run=heuristic:hpa", "scenario=stedy", "out=x"], "Could not find 'scenario/stedy'"),
        # The objective's prices moved into the scenario: the old key names the new one.
        (["compare", "objective.slo_miss_usd=0.02"], "write scenario.objective.slo_miss_usd"),
        (["compare", "scenario.objective.bad_answer_usd=null"], "scenario.objective.bad_answer_usd' is not Optional"),
    ],
)
def test_a_composition_mistake_is_one_line_with_exit_2(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"servegym {args[0]}: error: ") and "\n" not in err, err
    assert says in err, err
    assert "HYDRA_FULL_ERROR" not in err and "To append" not in err
    assert not any(tmp_path.iterdir())  # no outputs/, no multirun/, no store: nothing ran


def test_valid_command_lines_pass_the_check() -> None:
    for command, args in [
        ("train", ["-m", "seed=0,1", "agent=ppo,a2c", "total_timesteps=64"]),
        ("train", ["-m", "+experiment=tune_ppo", "hydra.sweeper.n_trials=2", "total_timesteps=2048"]),
        ("train", ["agent.hyperparams.target_kl=0.01", "scenario=steady", "workload=diurnal"]),
        ("compare", ["+experiment=leaderboard", "seeds=3", "params.hpa.target_utilisation=0.6"]),
        ("export", ["run=heuristic:hpa", "out=x"]),
        ("train", ["--cfg", "job", "agent=nosuch"]),  # Hydra's own flags: left to Hydra
    ]:
        assert _composition_error(command, args) is None, (command, args)
