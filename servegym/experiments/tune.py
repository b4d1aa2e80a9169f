"""Hyperparameter tuning of ``servegym train`` with a Hydra sweeper (Optuna): a train run that returns a score.

Optuna needs each trial to return the number it minimises, and ``servegym train`` returns
nothing, so this app runs the same training (:func:`~servegym.experiments.train.run_training`,
same config ``train.yaml``, every trial its own MLflow run) and returns the final
evaluation's objective: mean cost plus ``objective.slo_miss_usd`` per SLO miss and
``objective.bad_answer_usd`` per bad answer over ``eval_seeds`` — the same price
:func:`servegym.experiments.compare.objective_usd` puts on comparison jobs::

    python -m servegym.experiments.tune -m +experiment=tune_ppo
    python -m servegym.experiments.tune -m +experiment=tune_ppo hydra.sweeper.n_trials=2 total_timesteps=512
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from servegym.experiments.compare import objective_usd
from servegym.experiments.schema import register_configs
from servegym.experiments.stats import estimate
from servegym.sim.config import ConfigError

__all__ = ["app", "run_trial"]

register_configs()


def run_trial(cfg: DictConfig | Mapping[str, Any], base_dir: str) -> float:
    """Train with ``cfg`` (a composed train config plus ``objective``) and return the evaluation objective."""
    from servegym.experiments.train import evaluate_in_env, run_training, validate

    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container: dict[str, Any] = {str(k): v for k, v in raw.items()}  # type: ignore[union-attr]
    prices = dict(container.pop("objective", None) or {"slo_miss_usd": 0.01, "bad_answer_usd": 0.005})
    seeds = [int(s) for s in container.get("eval_seeds") or []]
    if not seeds:
        raise ConfigError("eval_seeds is empty: tuning needs evaluation episodes to score a trial")
    result = run_training(container, base_dir=base_dir)
    v = validate(container)
    runs = evaluate_in_env(result.policy, v.env_id, {"scenario": v.scenario, **v.env_kwargs}, seeds)
    values = [objective_usd(k, float(prices["slo_miss_usd"]), float(prices["bad_answer_usd"])) for k in runs]
    score = estimate(values).mean
    from mlflow.tracking import MlflowClient

    MlflowClient().log_metric(result.run_id, "eval/objective_usd", score)
    return score if math.isfinite(score) else math.inf


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def app(cfg: DictConfig) -> float:
    """Hydra entry point: one tuning trial."""
    try:
        return run_trial(cfg, hydra.utils.get_original_cwd())
    except ConfigError as exc:
        print(f"servegym tune: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app()
