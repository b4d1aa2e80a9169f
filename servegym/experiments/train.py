"""``servegym train``: train one learner on one environment and scenario, tracked in MLflow.

A Hydra app (config ``servegym/conf/train.yaml``; groups ``scenario``, ``workload``, ``env``,
``agent``, ``tracking``)::

    servegym train env=autoscaling agent=ppo scenario=default seed=0 total_timesteps=50000
    servegym train scenario=default workload=diurnal # the default platform under the diurnal workload
    servegym train -m seed=0,1,2 agent=ppo,a2c       # multirun: every job its own MLflow run
    servegym train resume=<run id>                   # continue an interrupted run

Everything is validated before training starts (:func:`validate`): the scenario through
the simulator's structured schema and :func:`~servegym.sim.config.scenario_from_dict`,
the environment id, the algorithm against the action space, and every hyperparameter
against the algorithm's constructor — each error names the config key.

Each run records, at an absolute tracking URI (:mod:`servegym.experiments.tracking`): the
resolved config as the artifact ``config/config.yaml`` and as flattened params; git
commit, package versions and config hash as tags; SB3's training curves
(``rollout/*``, ``train/*``, ``time/*``; an on-policy learner's ``train/*`` at the step of
each update, the last one included) and the simulator's KPIs of finished training
episodes (``sim/*``), in batches; the KPIs of the final policy on ``eval_seeds``
(``eval/*``, means, with ``eval/*_ci95`` half-widths); checkpoints
(``checkpoints/latest/``); and the trained policy (``policy/``, loadable with
:func:`servegym.agents.io.load_policy`).

Interrupting a run (Ctrl-C, or SIGTERM from ``timeout``, SLURM or Kubernetes) flushes every
buffered metric and ends it as KILLED with a message, whatever the learner: an SB3 learner
first writes a checkpoint at the current step; a scikit-learn learner has nothing to
checkpoint mid-fit (rerun it); a policy interrupted during its final evaluation is saved
as ``policy/`` all the same. ``resume=<run id>`` reloads the run's own config and that
checkpoint (model, VecNormalize statistics, replay buffer) and continues the same run
from the same step count; ``resume=<id> total_timesteps=N`` also extends a *finished*
SB3 run to a larger budget, in the same MLflow run (the metric ``budget/total_timesteps``
then gives the new budget; the param keeps the first).

Nothing is created in the tracking store until the config has passed every check (the
learner is built, the SB3 model constructed, a teacher run fetched), so a bad value fails
with no run left behind; and ``resume=`` never creates a store that is not there.
An http(s) tracking server that does not answer fails in seconds, naming ``tracking.uri``.

In a multirun, a job that fails prints one line naming its overrides and the error and the
other jobs still run; at the end a summary lists the failed jobs and the sweep exits with
status 2 (1 if a job failed other than on a config check). A sweep that varies an on-policy
learner's rollout size (``+experiment=tune_ppo``) is refused up front unless every trial
trains the same budget (:class:`EqualBudgetCallback`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import mlflow
import numpy as np
import torch
import yaml
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from servegym.agents.admission import CachingEnvPolicy, LearnedAdmission
from servegym.agents.io import load_policy, save_policy
from servegym.agents.sb3 import (
    ALGORITHMS,
    SB3Policy,
    build_model,
    check_algorithm,
    check_hyperparams,
    make_vec_env,
    rollout_timesteps,
)
from servegym.envs import ENV_IDS
from servegym.envs.features import Layout
from servegym.experiments.evaluate import DECISIONS, ENV_DECISIONS, ORACLES, run_policy
from servegym.experiments.robustness import (
    SHIFTS,
    WorkloadCheck,
    check_table,
    outlier_flags,
    shifted_scenarios,
    trace_shift,
    worst_seed,
)
from servegym.experiments.schema import register_configs
from servegym.experiments.stats import estimate
from servegym.experiments.tracking import (
    BatchLogger,
    flatten,
    provenance_tags,
    require_server,
    require_store,
    run_name,
    tracking_uri,
    uri_setting,
)
from servegym.policies import POLICIES, make_policy, scaling_kwargs
from servegym.policies.base import Policy
from servegym.sim.config import ConfigError, ScenarioConfig, scenario_from_dict
from servegym.sim.objective import Prices
from servegym.sim.workload import TraceError

__all__ = [
    "MOVED_KEYS",
    "EqualBudgetCallback",
    "HoldoutCallback",
    "RobustnessCheck",
    "RobustnessReport",
    "TrainResult",
    "TrainingInterruptedError",
    "Validated",
    "app",
    "check_equal_budgets",
    "evaluate_in_env",
    "final_lines",
    "outcome_line",
    "run_robustness",
    "run_training",
    "summary",
    "validate",
]

EVAL_KPIS = (
    "objective_usd",
    "episode_return",
    "latency_p95_s",
    "latency_p50_s",
    "slo_attainment",
    "cost_usd",
    "hit_rate",
    "quality",
    "drop_rate",
    "failure_rate",
)
"""The overall KPIs logged per evaluation (means and ``_ci95``) and per training episode (``sim/*``)."""

SPREAD_KPIS = ("objective_usd", "drop_rate")
"""KPIs whose worst seed, best seed and standard deviation over seeds are logged beside the mean."""

MOVED_KEYS = {"objective": "scenario.objective"}
"""Top-level keys train no longer reads, and where their settings live now."""


@dataclass(frozen=True)
class RobustnessCheck:
    """What ``robustness.*`` adds to the final evaluation: a baseline, and shifted workloads.

    ``scenario`` is the training scenario as the environment runs it (``episode_duration_s``
    and ``env.kwargs.overrides`` applied), on which ``baseline`` runs the evaluation seeds;
    ``shifts`` are its shifted versions by name, run by the policy and the baseline on
    ``seeds`` (None: the evaluation seeds). ``env_kwargs`` are the environment's other
    arguments (the reward's weights), with which the policy runs on every workload.
    """

    baseline: str
    scenario: ScenarioConfig
    shifts: dict[str, ScenarioConfig]
    seeds: list[int] | None
    env_kwargs: dict[str, Any]


@dataclass(frozen=True)
class Validated:
    """A train config after every check: what will be built, with nothing left to fail on.

    ``prices`` are the objective's, resolved from the scenario (a replayed trace's token
    maxima included); ``robustness`` is None when the check is off.
    """

    scenario: ScenarioConfig
    env_id: str
    env_kwargs: dict[str, Any]
    agent: dict[str, Any]
    kind: str
    seed: int
    total_timesteps: int
    layout: Layout
    prices: Prices
    robustness: RobustnessCheck | None


@dataclass(frozen=True)
class RobustnessReport:
    """The policy against its baseline on the training workload and on each shifted one."""

    policy: str
    baseline: str
    checks: tuple[WorkloadCheck, ...]

    @property
    def flags(self) -> list[str]:
        """Every :func:`~servegym.experiments.robustness.outlier_flags` sentence, workload by workload."""
        return [flag for check in self.checks for flag in check.flags]


@dataclass
class TrainResult:
    """What a training run produced.

    ``kpis`` are the logged metrics of the final evaluation (``eval/*``, the robustness
    check's ``eval/baseline/*`` and ``shift/*``); ``robustness`` its report (None when off).
    """

    run_id: str
    policy: Policy
    timesteps: int
    kpis: dict[str, float]
    eval_seeds: list[int] = field(default_factory=list)
    prices: Prices | None = None
    robustness: RobustnessReport | None = None


class TrainingInterruptedError(RuntimeError):
    """A run stopped early (Ctrl-C or SIGTERM) and ended as KILLED; the message says what was kept.

    ``step`` is the last training step reached (None when unknown); ``resumable`` whether
    ``resume=<run_id>`` can continue it (SB3 runs, which checkpoint).
    """

    def __init__(self, run_id: str, step: int | None, *, resumable: bool = True, detail: str | None = None) -> None:
        where = "interrupted" if step is None else f"interrupted at step {step}"
        if detail is None:
            detail = (
                f"checkpoint saved to MLflow run {run_id}" if resumable else f"MLflow run {run_id} kept its metrics"
            )
        then = f"Resume with: servegym train resume={run_id}" if resumable else "Rerun the command to train again"
        super().__init__(f"training {where}; {detail} (the run ended as KILLED). {then}")
        self.run_id = run_id
        self.step = step
        self.resumable = resumable


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} = {value!r} is invalid: must be an integer >= {minimum}")
    return value


def _seeds(cfg: Mapping[str, Any], key: str) -> list[int]:
    value = cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise ConfigError(f"{key} = {value!r} is invalid: must be a list of integer seeds, e.g. [1000, 1001]")
    return [int(s) for s in value]


def _check_learner(agent: Mapping[str, Any], env_id: str) -> None:
    """The learner's class exists, takes the configured arguments and trains on ``env_id``."""
    learner = agent.get("learner")
    if not isinstance(learner, Mapping) or "_target_" not in learner:
        raise ConfigError("agent.learner must be a mapping with a _target_ (the learner class)")
    envs = list(agent.get("envs") or [])
    if envs and env_id not in envs:
        raise ConfigError(f"env.id = {env_id!r}: agent {agent.get('name')!r} trains on {', '.join(envs)} only")
    target = str(learner["_target_"])
    module_name, _, name = target.rpartition(".")
    if not module_name.startswith("servegym."):
        raise ConfigError(f"agent.learner._target_ = {target!r} is invalid: learners live in servegym.agents")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"agent.learner._target_ = {target!r}: no such class ({exc})") from exc
    # the teacher is servegym's to pass (agent.teacher_run or agent.teacher_policy), not an argument to set
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "teacher"}
    for key in learner:
        if key != "_target_" and key not in accepted:
            raise ConfigError(
                f"agent.learner.{key}: {name} has no argument {key!r}; it accepts: {', '.join(sorted(accepted))}"
            )


_TOP_LEVEL = frozenset(
    {
        "scenario", "env", "agent", "tracking", "seed", "total_timesteps", "episode_duration_s",
        "checkpoint_every_steps", "eval_every_steps", "eval_seeds", "progress_bar", "resume", "robustness",
        "torch_threads", "holdout_seeds",
    }
)  # fmt: skip
_AGENT_KEYS = {
    "sb3": frozenset(
        {
            "kind", "name", "algo", "policy", "normalize", "norm_reward", "n_envs", "subprocess", "hyperparams",
            "default_timesteps",
        }
    ),
    "sklearn": frozenset(
        {"kind", "name", "envs", "learner", "teacher_run", "teacher_policy", "teacher_params", "default_timesteps"}
    ),
}  # fmt: skip


def _no_unknown_keys(cfg: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """A key added with ``+key=value`` that nothing reads is a typo, not a setting: refuse it."""
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")


def _no_moved_keys(cfg: Mapping[str, Any]) -> None:
    """An old setting (``objective.slo_miss_usd=0.02``) is refused with where it lives now.

    ``train.yaml`` keeps ``objective`` as an empty open mapping only so that such an
    override composes and reaches this check, instead of Hydra's "not in struct".
    """
    for key, now in MOVED_KEYS.items():
        value = cfg.get(key)
        if not value:
            continue
        if isinstance(value, Mapping):
            name, setting = next(iter(value.items()))
            old, new = f"{key}.{name}", f"{now}.{name}={setting}"
        else:
            old, new = key, f"{now}.slo_miss_usd=..."
        raise ConfigError(
            f"{old} is no longer a train setting: the objective's prices are the scenario's (the reward, evaluate "
            f"and compare use them too); use {new}"
        )


_ROBUSTNESS_KEYS = frozenset({"enabled", "baseline", "shifts", "seeds", "trace_path", "trace_schema"})


def _check_baseline(spec: Any, env_id: str) -> str:
    """``robustness.baseline``: ``builtin`` or heuristics (joined with ``+``) for the decisions ``env_id`` exposes."""
    allowed = ENV_DECISIONS[env_id.removeprefix("servegym/")]
    heuristics = sorted(n for n, d in DECISIONS.items() if d in allowed and n not in ORACLES)
    hint = f"give builtin (the scenario's own controller) or a heuristic for {env_id}: {', '.join(heuristics)}"
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"robustness.baseline = {spec!r} is invalid: {hint}")
    if spec == "builtin":
        return spec
    names = spec.split("+")
    for name in names:
        if name in ORACLES:
            raise ConfigError(
                f"robustness.baseline = {spec!r} is invalid: {name} is an oracle, a bound no policy can meet; {hint}"
            )
        if DECISIONS.get(name) not in allowed:
            raise ConfigError(f"robustness.baseline = {spec!r} is invalid: {name!r} does not fit; {hint}")
    decisions = [DECISIONS[n] for n in names]
    if len(set(decisions)) < len(decisions):
        raise ConfigError(f"robustness.baseline = {spec!r} is invalid: it names two policies for one decision")
    return spec


def _robustness(
    cfg: Mapping[str, Any], env_id: str, scenario: ScenarioConfig, env_kwargs: Mapping[str, Any]
) -> RobustnessCheck | None:
    """The validated ``robustness`` block (None when ``enabled`` is false or the block is absent).

    ``scenario`` is the training scenario as the environment runs it.
    """
    block = cfg.get("robustness")
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ConfigError(
            f"robustness = {block!r} is invalid: must be a mapping of {', '.join(sorted(_ROBUSTNESS_KEYS))}"
        )
    _no_unknown_keys(block, _ROBUSTNESS_KEYS, "robustness.")
    enabled = block.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"robustness.enabled = {enabled!r} is invalid: must be true or false")
    if not enabled:
        return None
    baseline = _check_baseline(block.get("baseline", "builtin"), env_id)
    shifts = block.get("shifts") or []
    if not isinstance(shifts, list | tuple) or any(s not in SHIFTS for s in shifts):
        raise ConfigError(
            f"robustness.shifts = {shifts!r} is invalid: must be a list of {', '.join(SHIFTS)} (or [] for none)"
        )
    seeds = _seeds(block, "seeds") if block.get("seeds") is not None else None
    if seeds is not None and not seeds:
        raise ConfigError("robustness.seeds = [] is invalid: give seeds, or null for eval_seeds")
    trace = None
    trace_path = block.get("trace_path")
    if trace_path is not None:
        schema = str(block.get("trace_schema", "azure"))
        try:
            trace = trace_shift(scenario, str(trace_path), schema)
            gym.make(env_id, scenario=trace, **env_kwargs).close()
        except (TraceError, ConfigError) as exc:
            raise ConfigError(f"robustness.trace_path = {trace_path!r}: {exc}") from exc
    return RobustnessCheck(
        baseline=baseline,
        scenario=scenario,
        shifts=shifted_scenarios(scenario, [str(s) for s in shifts], trace),
        seeds=seeds,
        env_kwargs=dict(env_kwargs),
    )


def validate(cfg: Mapping[str, Any]) -> Validated:
    """Check a composed train config completely; the ConfigError names the offending key."""
    _no_moved_keys(cfg)
    _no_unknown_keys(cfg, _TOP_LEVEL | set(MOVED_KEYS), "")
    try:
        scenario = scenario_from_dict(dict(cfg["scenario"]))
    except ConfigError as exc:
        raise ConfigError(f"scenario.{exc}") from exc
    env = cfg.get("env") or {}
    env_id = env.get("id")
    if env_id not in ENV_IDS:
        raise ConfigError(f"env.id = {env_id!r} is invalid: must be one of {', '.join(ENV_IDS)}")
    env_kwargs = dict(env.get("kwargs") or {})
    duration = cfg.get("episode_duration_s")
    if duration is not None:
        if not isinstance(duration, int | float) or not math.isfinite(duration) or duration <= 0:
            raise ConfigError(f"episode_duration_s = {duration!r} is invalid: must be a positive number or null")
        env_kwargs["duration_s"] = float(duration)
    try:
        probe = gym.make(env_id, scenario=scenario, **env_kwargs)
    except TypeError as exc:
        raise ConfigError(f"env.kwargs: {env_id} rejected them: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"env.kwargs: {exc}") from exc
    agent = dict(cfg.get("agent") or {})
    kind = agent.get("kind")
    if kind in _AGENT_KEYS:
        _no_unknown_keys(agent, _AGENT_KEYS[kind], "agent.")
    if kind == "sb3":
        algo = agent.get("algo")
        check_algorithm(str(algo), probe.action_space)
        check_hyperparams(str(algo), dict(agent.get("hyperparams") or {}))
        _int(agent, "n_envs", 1)
    elif kind == "sklearn":
        _check_learner(agent, env_id)
    else:
        raise ConfigError(f"agent.kind = {kind!r} is invalid: must be 'sb3' or 'sklearn'")
    layout = probe.unwrapped.layout  # type: ignore[attr-defined]
    # the scenario as the env runs it (duration and overrides applied), and its objective's prices
    effective: ScenarioConfig = probe.unwrapped.scenario  # type: ignore[attr-defined]
    prices: Prices = probe.unwrapped.platform.prices  # type: ignore[attr-defined]
    probe.close()
    other_kwargs = {k: value for k, value in env_kwargs.items() if k not in ("duration_s", "overrides")}
    robustness = _robustness(cfg, env_id, effective, other_kwargs)
    if cfg.get("torch_threads") is not None:
        _int(cfg, "torch_threads", 1)
    eval_seeds = _seeds(cfg, "eval_seeds")
    holdout = _seeds(cfg, "holdout_seeds")
    shared = sorted(set(eval_seeds) & set(holdout))
    if shared:
        raise ConfigError(
            f"holdout_seeds = {holdout} is invalid: {shared} are also eval_seeds, on which a sweep selects its best "
            "trial; held-out seeds must be disjoint from eval_seeds"
        )
    return Validated(
        scenario=scenario,
        env_id=env_id,
        env_kwargs=env_kwargs,
        agent=agent,
        kind=kind,
        seed=_int(cfg, "seed", 0),
        total_timesteps=_int(cfg, "total_timesteps", 1),
        layout=layout,
        prices=prices,
        robustness=robustness,
    )


def _act(policy: Policy, env: gym.Env[Any, Any], obs: np.ndarray) -> Any:
    if isinstance(policy, SB3Policy) and policy.algo == "maskable_ppo":
        return policy.act(obs, action_masks=env.unwrapped.action_masks())  # type: ignore[attr-defined]
    return policy.act(obs)


def evaluate_in_env(
    policy: Policy, env_id: str, env_kwargs: Mapping[str, Any], seeds: Sequence[int]
) -> list[dict[str, float]]:
    """Overall KPIs of one full episode per seed, ``policy`` acting on every decision of ``env_id``.

    Each dict also carries ``episode_return``, the undiscounted sum of the env's rewards.
    """
    out: list[dict[str, float]] = []
    for seed in seeds:
        env = gym.make(env_id, **dict(env_kwargs))
        policy.reset()
        obs, info = env.reset(seed=int(seed))
        done = "kpis" in info
        total = 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(_act(policy, env, obs))
            total += float(reward)
            done = terminated or truncated
        if "kpis" not in info:
            raise RuntimeError(f"{env_id} ended without KPIs in info (max_episode_steps before the scenario's end?)")
        out.append({**info["kpis"]["all"], "episode_return": total})
        env.close()
    return out


def _interrupt_on_sigterm() -> Callable[[], None]:
    """Treat SIGTERM (``timeout``, SLURM pre-emption, Kubernetes) like Ctrl-C; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _warn_if_rounded_up(model: BaseAlgorithm, total_timesteps: int) -> None:
    """Warn when SB3 will train past ``total_timesteps`` because it only stops between collections.

    With 4 envs x ``n_steps`` 256, ``total_timesteps=64`` trains 1,024 steps: the warning
    names the budget, the collection size and the steps that will actually run.
    """
    size = rollout_timesteps(model)
    done = int(model.num_timesteps)
    if size is None or (total_timesteps - done) % size == 0:
        return
    actual = done + math.ceil((total_timesteps - done) / size) * size
    if isinstance(model, OffPolicyAlgorithm):
        what = f"train_freq {size // model.n_envs} steps x {model.n_envs} envs"
    else:
        what = f"n_steps {size // model.n_envs} x {model.n_envs} envs"
    rollout = f"the rollout size {size} ({what})"
    budget, ending = f"total_timesteps={total_timesteps} is", f"{actual} timesteps will run"
    # The budgets that train exactly: whole rollouts from where training starts (a resumed run's checkpoint).
    below = actual - size
    exact = f"{below:,} or {actual:,}" if below > done else f"{actual:,}"
    advice = f"to train exactly the budget, use total_timesteps={exact}"
    if done:  # resumed: what is left after the checkpoint is rounded up
        left = total_timesteps - done
        budget = f"total_timesteps={total_timesteps} leaves {left} after the checkpoint's {done}, which is"
        ending = f"training will end at {actual} timesteps"
        advice += f" ({done:,} + a multiple of {size:,})"
    print(
        f"servegym train: warning: {budget} not a multiple of {rollout}: SB3 trains whole rollouts, so {ending}, "
        f"{actual - total_timesteps} more than total_timesteps; {advice}",
        file=sys.stderr,
    )


class _MlflowWriter(KVWriter):
    """SB3 logger output that buffers numeric values into a :class:`BatchLogger`, at most one per key and step."""

    def __init__(self, batch: BatchLogger) -> None:
        self.batch = batch
        self._last_step: dict[str, int] = {}

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        # an off-policy learner may dump at the step an episode's logs already went out: keep the first value
        numeric = {
            k: float(v)
            for k, v in key_values.items()
            if isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool)
            and self._last_step.get(k) != step
        }
        self._last_step.update(dict.fromkeys(numeric, step))
        self.batch.log(numeric, step)

    def close(self) -> None:
        self.batch.flush()


class _TrackingCallback(BaseCallback):
    """Per-episode simulator KPIs (``sim/*``), periodic checkpoints and KPI evaluations."""

    def __init__(self, trainer: _Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self.last_checkpoint = 0
        self.last_eval = 0
        self.checkpoint_due = False

    def _on_training_start(self) -> None:
        # a resumed run counts its intervals from the checkpoint, not from zero
        self.last_checkpoint = self.last_eval = self.num_timesteps

    def _on_rollout_start(self) -> None:
        # SB3 records an update's train/* in train() and dumps them only with the next rollout's logs: a
        # rollout late, and never for the last update. Write them now, at the step of the update.
        if isinstance(self.model, OnPolicyAlgorithm):
            self.model.logger.dump(step=self.model.num_timesteps)
        if self.checkpoint_due:
            # Here, between rollouts, every metric up to this step has been handed to the logger (the
            # last rollout's, the last update's): dump what is left and let checkpoint() flush it first,
            # so a checkpoint never runs ahead of the logged metrics (a kill after it loses nothing).
            self.model.logger.dump(step=self.model.num_timesteps)
            self.checkpoint_due = False
            self.trainer.checkpoint()

    def _on_step(self) -> bool:
        finished = [
            info["kpis"]["all"]
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True)
            if done and "kpis" in info
        ]
        if finished:
            # vector envs finish episodes at the same step: one point, their mean, per step
            means = {
                f"sim/{name}": float(np.mean([k[name] for k in finished])) for name in EVAL_KPIS if name in finished[0]
            }
            self.trainer.batch.log(means, self.num_timesteps)
        t = self.trainer
        if t.checkpoint_every and self.num_timesteps - self.last_checkpoint >= t.checkpoint_every:
            # Mid-rollout the rollout's and the update's metrics are not logged yet: checkpoint at the next rollout.
            self.last_checkpoint = self.num_timesteps
            self.checkpoint_due = True
        if t.eval_every and self.num_timesteps - self.last_eval >= t.eval_every:
            self.last_eval = self.num_timesteps
            t.log_eval(t.freeze(), step=self.num_timesteps)
        return True


class _Trainer:
    """One SB3 or scikit-learn training run inside an active MLflow run."""

    def __init__(self, v: Validated, cfg: Mapping[str, Any], run_id: str, batch: BatchLogger, workdir: Path) -> None:
        self.v = v
        self.cfg = cfg
        self.run_id = run_id
        self.batch = batch
        self.workdir = workdir
        self.client = MlflowClient()
        self.checkpoint_every = int(cfg.get("checkpoint_every_steps") or 0)
        self.eval_every = int(cfg.get("eval_every_steps") or 0)
        self.eval_seeds = [int(s) for s in cfg.get("eval_seeds") or []]
        self.episodes: list[dict[str, float]] = []
        """The policy's KPIs per evaluation seed at the latest :meth:`log_eval`."""
        self.model: BaseAlgorithm | None = None

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return {"scenario": self.v.scenario, **self.v.env_kwargs}

    # -- SB3 ----------------------------------------------------------------------------------
    def build(self, resume_from: Path | None) -> BaseAlgorithm:
        """The model to train: the one built before the run started, or the checkpoint's."""
        a = self.v.agent
        if resume_from is None:
            model = self.model if self.model is not None else _new_sb3_model(self.v)
        else:
            venv = _sb3_venv(self.v)
            if (resume_from / "vecnormalize.pkl").exists():
                venv = VecNormalize.load(str(resume_from / "vecnormalize.pkl"), venv)
            model = ALGORITHMS[a["algo"]].load(resume_from / "model.zip", env=venv, device="cpu")
            if isinstance(model, OffPolicyAlgorithm) and (resume_from / "replay_buffer.pkl").exists():
                model.load_replay_buffer(resume_from / "replay_buffer.pkl")
        model.set_logger(Logger(folder=None, output_formats=[_MlflowWriter(self.batch)]))
        self.model = model
        return model

    def checkpoint(self) -> None:
        """Save model, normalisation statistics and replay buffer; log them as ``checkpoints/latest``."""
        model = self.model
        assert model is not None
        path = self.workdir / "checkpoint"
        path.mkdir(parents=True, exist_ok=True)
        model.save(path / "model.zip")
        venv = model.get_env()
        if isinstance(venv, VecNormalize):
            venv.save(str(path / "vecnormalize.pkl"))
        if isinstance(model, OffPolicyAlgorithm):
            model.save_replay_buffer(path / "replay_buffer.pkl")
        (path / "state.yaml").write_text(yaml.safe_dump({"num_timesteps": int(model.num_timesteps)}))
        self.batch.flush()
        self.client.log_artifacts(self.run_id, str(path), "checkpoints/latest")
        # What resume may load (SB3's files are pickles): the hashes of the files servegym wrote,
        # kept in the tracking store apart from the artifacts they vouch for.
        self.client.set_tag(self.run_id, CHECKPOINT_TAG, json.dumps(_file_hashes(path), sort_keys=True))

    def freeze(self) -> SB3Policy:
        assert self.model is not None
        return SB3Policy.from_training(self.model, self.v.agent["algo"], self.v.layout, self.v.env_id)

    def train_sb3(self, resume_from: Path | None, callbacks: Sequence[BaseCallback]) -> tuple[Policy, int]:
        threads = self.cfg.get("torch_threads")
        if threads:
            torch.set_num_threads(int(threads))
        model = self.build(resume_from)
        remaining = self.v.total_timesteps - int(model.num_timesteps)
        if remaining > 0:
            _warn_if_rounded_up(model, self.v.total_timesteps)
        progress = self.cfg.get("progress_bar", "auto")
        show = sys.stderr.isatty() if progress == "auto" else bool(progress)
        if remaining > 0:
            try:
                model.learn(
                    remaining,
                    callback=CallbackList([_TrackingCallback(self), *callbacks]),
                    reset_num_timesteps=resume_from is None,
                    progress_bar=show,
                    log_interval=1,  # every rollout (on-policy) or episode (off-policy)
                )
            except KeyboardInterrupt:
                model.logger.dump(step=model.num_timesteps)
                self.checkpoint()
                raise TrainingInterruptedError(self.run_id, int(model.num_timesteps)) from None
            # the last update's train/* (and an off-policy learner's values since its last episode)
            model.logger.dump(step=model.num_timesteps)
        self.checkpoint()
        return self.freeze(), int(model.num_timesteps)

    # -- scikit-learn -------------------------------------------------------------------------
    def train_sklearn(self, learner: Any, env: gym.Env[Any, Any]) -> tuple[Policy, int]:
        """Fit ``learner`` (built and checked before the run started) on ``env``."""
        last_step = [0]

        def log(metrics: dict[str, float], step: int) -> None:
            last_step[0] = step
            self.batch.log(metrics, step)

        try:
            policy: Policy = learner.learn(env, self.v.total_timesteps, self.v.seed, log=log)
        except KeyboardInterrupt:
            # a fit cannot stop halfway into something usable: keep the metrics, say so
            raise TrainingInterruptedError(
                self.run_id,
                last_step[0] or None,
                resumable=False,
                detail=f"MLflow run {self.run_id} kept the metrics logged so far; scikit-learn learners are not "
                "checkpointed",
            ) from None
        if isinstance(policy, LearnedAdmission):
            # it decides admissions only: Caching-v0 also asks for the semantic threshold
            policy = CachingEnvPolicy.nearest(env, policy)
        return policy, self.v.total_timesteps

    def log_eval(self, policy: Policy, step: int) -> dict[str, float]:
        """KPIs of ``policy`` on the evaluation seeds, logged as ``eval/<kpi>`` (see :func:`_kpi_metrics`)."""
        if not self.eval_seeds:
            return {}
        runs = evaluate_in_env(policy, self.v.env_id, self.env_kwargs, self.eval_seeds)
        metrics = _kpi_metrics(runs, "eval", self.eval_seeds)
        self.batch.log(metrics, step)
        self.episodes = runs
        return metrics

    def log_robustness(self, policy: Policy, step: int) -> tuple[dict[str, float], RobustnessReport | None]:
        """The robustness check after :meth:`log_eval` (its episodes are the policy's on the training workload).

        Logs its metrics, the flag count (``robustness/flags``), the flags as the tag
        ``servegym.flags`` and the table and flags as the artifact ``robustness/report.txt``;
        prints every flag on stderr.
        """
        check = self.v.robustness
        if check is None or not self.eval_seeds:
            return {}, None
        agent = str(self.v.agent.get("name", self.v.agent.get("algo", "policy")))
        report, metrics = run_robustness(policy, agent, self.v.env_id, check, self.eval_seeds, self.episodes)
        self.batch.log(metrics, step)
        for flag in report.flags:
            print(f"servegym train: warning: {flag}", file=sys.stderr)
        text = "\n".join(check_table(report.checks, report.policy, report.baseline)) + "\n"
        self.client.log_text(self.run_id, text, "robustness/report.txt")
        self.client.set_tag(self.run_id, "servegym.flags", _tag_value("\n".join(report.flags) or "none"))
        return metrics, report


_TAG_LIMIT = 8000
"""Characters of a tag value MLflow keeps (``mlflow.utils.validation.MAX_TAG_VAL_LENGTH``)."""


def _tag_value(text: str) -> str:
    if len(text) <= _TAG_LIMIT:
        return text
    more = " ... (all of them in robustness/report.txt)"
    return text[: _TAG_LIMIT - len(more)] + more


def _kpi_metrics(runs: Sequence[Mapping[str, float]], prefix: str, seeds: Sequence[int]) -> dict[str, float]:
    """``<prefix>/<kpi>`` means over episodes (one per seed) with ``<prefix>/<kpi>_ci95`` half-widths.

    For the objective and the drop rate (:data:`SPREAD_KPIS`) also ``_worst`` (the highest
    seed's value), ``_worst_seed``, ``_best`` and, with two seeds or more, ``_std`` (the
    sample standard deviation over seeds): a mean can hide one disastrous seed.
    """
    metrics: dict[str, float] = {}
    for name in EVAL_KPIS:
        values = [r[name] for r in runs if name in r and math.isfinite(r[name])]
        if values:
            est = estimate(values)
            metrics[f"{prefix}/{name}"] = est.mean
            if math.isfinite(est.half_width):
                metrics[f"{prefix}/{name}_ci95"] = est.half_width
    for name in SPREAD_KPIS:
        worst, seed = worst_seed(runs, seeds, name)
        if seed is None:
            continue
        values = [r[name] for r in runs if name in r and not math.isnan(r[name])]
        metrics[f"{prefix}/{name}_worst"] = worst
        metrics[f"{prefix}/{name}_worst_seed"] = float(seed)
        metrics[f"{prefix}/{name}_best"] = min(values)
        if len(values) > 1:
            metrics[f"{prefix}/{name}_std"] = float(np.std(values, ddof=1))
    return metrics


def run_robustness(
    policy: Policy,
    name: str,
    env_id: str,
    check: RobustnessCheck,
    eval_seeds: Sequence[int],
    episodes: Sequence[Mapping[str, float]],
) -> tuple[RobustnessReport, dict[str, float]]:
    """Run the robustness check of ``policy`` (called ``name`` in the flags) and its metrics.

    ``episodes`` are the policy's KPIs on ``eval_seeds`` of the training workload (the
    final evaluation's); the baseline runs the same seeds there (``eval/baseline/*``). On
    each shifted workload both run ``check.seeds`` (None: ``eval_seeds``), logged as
    ``shift/<name>/*`` and ``shift/<name>/baseline/*``. Seed ``s`` is platform seed ``s``
    for both, so every comparison is paired on the same requests.
    """
    seeds = list(eval_seeds)
    shift_seeds = list(check.seeds) if check.seeds is not None else seeds
    # the training workload first (the policy's episodes there are the final evaluation's), then each shift
    workloads = [(check.scenario.name, check.scenario, seeds, "eval")]
    workloads += [(shift, scenario, shift_seeds, f"shift/{shift}") for shift, scenario in check.shifts.items()]
    metrics: dict[str, float] = {}
    checks: list[WorkloadCheck] = []
    for workload, scenario, on, prefix in workloads:
        runs: Sequence[Mapping[str, float]] = episodes
        if prefix != "eval":
            runs = evaluate_in_env(policy, env_id, {"scenario": scenario, **check.env_kwargs}, on)
            metrics.update(_kpi_metrics(runs, prefix, on))
        base = [run_policy(check.baseline, env_id, scenario, s)["all"] for s in on]
        metrics.update(_kpi_metrics(base, f"{prefix}/baseline", on))
        flags = outlier_flags(name, runs, check.baseline, base, on, where=scenario.name)
        checks.append(WorkloadCheck(workload, scenario.name, tuple(on), tuple(runs), tuple(base), tuple(flags)))
    report = RobustnessReport(name, check.baseline, tuple(checks))
    metrics["robustness/flags"] = float(len(report.flags))
    return report, metrics


def _teacher(v: Validated, env: gym.Env[Any, Any], workdir: Path) -> Policy:
    """The policy to distil: a trained run's (``agent.teacher_run``) or a heuristic (``agent.teacher_policy``)."""
    a = v.agent
    if a.get("teacher_run"):
        run_id = str(a["teacher_run"])
        require_store(mlflow.get_tracking_uri(), f"agent.teacher_run={run_id}")
        try:
            local = MlflowClient().download_artifacts(run_id, "policy", str(workdir / "teacher"))
        except Exception as exc:
            raise ConfigError(f"agent.teacher_run = {run_id!r}: no policy artifact in that run ({exc})") from exc
        return load_policy(local)
    name = str(a.get("teacher_policy"))
    decision = DECISIONS.get(name)
    kwargs: dict[str, Any] = dict(a.get("teacher_params") or {})
    layout = env.unwrapped.layout  # type: ignore[attr-defined]
    if decision == "scaling":
        kwargs = {**scaling_kwargs(v.scenario), **kwargs}
    elif decision == "routing":
        kwargs = {"layout": layout, "backend_names": [b.name for b in v.scenario.backends], **kwargs}
    elif decision == "admission":
        kwargs = {"layout": layout, **kwargs}
    else:
        raise ConfigError(
            f"agent.teacher_policy = {name!r} is invalid: give a scaling, routing or admission heuristic "
            f"(e.g. hpa, cascade, frequency) or agent.teacher_run"
        )
    accepted = sorted(set(inspect.signature(POLICIES[name]).parameters) - {"layout", "backend_names"})
    for key in a.get("teacher_params") or {}:
        if key not in accepted:
            raise ConfigError(
                f"agent.teacher_params.{key}: {name} has no argument {key!r}; it accepts: {', '.join(accepted)}"
            )
    try:
        return make_policy(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"agent.teacher_params: {exc}") from exc


def _prepare_sklearn(v: Validated, workdir: Path) -> tuple[Any, gym.Env[Any, Any]]:
    """The scikit-learn learner (its constructor checks the argument values) and the env it fits on."""
    env = gym.make(v.env_id, scenario=v.scenario, **v.env_kwargs)
    extra: dict[str, Any] = {}
    try:
        if v.agent.get("name") == "distill":
            extra["teacher"] = _teacher(v, env, workdir)
        try:
            learner = hydra.utils.instantiate(v.agent["learner"], **extra)
        except Exception as exc:  # Hydra wraps the constructor's ValueError
            raise ConfigError(f"agent.learner: {_root_cause(exc)}") from exc
    except BaseException:
        env.close()
        raise
    return learner, env


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc)


def _sb3_venv(v: Validated) -> VecEnv:
    """The training envs of an SB3 run: ``n_envs`` copies, in worker processes with ``subprocess``."""
    a = v.agent
    env_kwargs = {"scenario": v.scenario, **v.env_kwargs}
    return make_vec_env(v.env_id, env_kwargs, int(a["n_envs"]), v.seed, a["algo"], bool(a.get("subprocess")))


def _normalised(v: Validated, venv: VecEnv) -> VecEnv:
    """``venv`` behind VecNormalize when the agent config asks for it."""
    a = v.agent
    if not a.get("normalize"):
        return venv
    gamma = float((a.get("hyperparams") or {}).get("gamma", 0.99))
    return VecNormalize(venv, norm_obs=True, norm_reward=bool(a.get("norm_reward")), gamma=gamma)


def _new_sb3_model(v: Validated) -> BaseAlgorithm:
    """The untrained SB3 model on its training envs.

    Built before the MLflow run starts, so SB3's own checks of the hyperparameters fail
    with no run left behind; the training then uses this very model (no second build).
    """
    a = v.agent
    venv = _sb3_venv(v)
    try:
        return build_model(a["algo"], _normalised(v, venv), a.get("hyperparams") or {}, v.seed, a["policy"])
    except BaseException:
        venv.close()
        raise


CHECKPOINT_TAG = "servegym.checkpoint_sha256"
"""Run tag: the sha256 of every file of the latest checkpoint, as servegym wrote them (JSON)."""


def _file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _download_checkpoint(client: MlflowClient, run_id: str, into: Path) -> Path:
    """The run's latest checkpoint, refused unless its files are the ones servegym wrote (their recorded hashes).

    SB3 checkpoints are pickles, and loading a pickle runs code: resume loads only files whose
    sha256 matches what the run recorded when it wrote them (:data:`CHECKPOINT_TAG`).
    """
    try:
        local = Path(client.download_artifacts(run_id, "checkpoints/latest", str(into)))
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise ConfigError(f"resume={run_id}: the run has no checkpoint to resume from ({exc})") from exc
    recorded = client.get_run(run_id).data.tags.get(CHECKPOINT_TAG)
    if recorded is None:
        raise ConfigError(
            f"resume={run_id}: the checkpoint carries no hashes recorded by servegym (tag {CHECKPOINT_TAG}), so "
            "its pickled files cannot be trusted; retrain instead"
        )
    found = _file_hashes(local)
    expected: dict[str, str] = json.loads(recorded)
    changed = sorted(name for name in set(found) | set(expected) if found.get(name) != expected.get(name))
    if changed:
        raise ConfigError(
            f"resume={run_id}: checkpoint file(s) {', '.join(changed)} differ from what servegym wrote (sha256 "
            f"recorded in tag {CHECKPOINT_TAG}); refusing to load them (a pickle runs code when loaded)"
        )
    return local


def _checkpoint_steps(checkpoint: Path) -> int:
    state = checkpoint / "state.yaml"
    if not state.exists():
        return 0
    return int((yaml.safe_load(state.read_text()) or {}).get("num_timesteps", 0))


_CONFIG_ARTIFACT = "config/config.yaml"

_RESUMABLE_OVERRIDES = ("total_timesteps", "resume", "tracking.", "hydra.", "progress_bar")


def _resume_config(
    client: MlflowClient,
    resume: str,
    given: Mapping[str, Any],
    tracking: Mapping[str, Any],
    resume_overrides: Sequence[str],
    workdir: Path,
) -> tuple[dict[str, Any], Path]:
    """The logged config of run ``resume`` (with the allowed overrides) and its downloaded checkpoint.

    A KILLED or FAILED run continues from its checkpoint; a FINISHED one only when the new
    ``total_timesteps`` is larger than the steps it trained (training it longer).
    """
    try:
        run = client.get_run(resume)
    except Exception as exc:
        raise ConfigError(f"resume={resume}: no such MLflow run at {mlflow.get_tracking_uri()}") from exc
    refused = [o for o in resume_overrides if not o.lstrip("+~").startswith(_RESUMABLE_OVERRIDES)]
    if refused:
        raise ConfigError(
            f"resume={resume} continues the run with its logged config; only total_timesteps, "
            f"progress_bar and tracking.* may change, not: {' '.join(refused)}"
        )
    logged = Path(client.download_artifacts(run.info.run_id, _CONFIG_ARTIFACT, str(workdir)))
    container = {**_migrated(yaml.safe_load(logged.read_text())), "resume": resume, "tracking": dict(tracking)}
    for name in ("total_timesteps", "progress_bar"):
        if any(o.lstrip("+").startswith(f"{name}=") for o in resume_overrides) or (
            not resume_overrides and name in given
        ):
            container[name] = given[name]
    agent = container.get("agent") or {}
    if agent.get("kind") == "sklearn":
        raise ConfigError(
            f"resume={resume}: agent {agent.get('name')!r} is a scikit-learn learner, which keeps no checkpoint; "
            "rerun its command instead (it fits in seconds)"
        )
    checkpoint = _download_checkpoint(client, run.info.run_id, workdir / "resume")
    if run.info.status == "FINISHED":
        trained = _checkpoint_steps(checkpoint)
        budget = container.get("total_timesteps")
        if not isinstance(budget, int) or budget <= trained:
            raise ConfigError(
                f"resume={resume}: the run already finished, {trained} timesteps trained for total_timesteps="
                f"{budget}: nothing more to do. To train it longer, give a larger budget: "
                f"servegym train resume={resume} total_timesteps={max(2 * trained, 1)}"
            )
    return container, checkpoint


def run_training(
    cfg: DictConfig | Mapping[str, Any],
    callbacks: Sequence[BaseCallback] = (),
    base_dir: str | Path | None = None,
    resume_overrides: Sequence[str] = (),
    workload: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Validate ``cfg``, train, evaluate and record everything in one MLflow run.

    ``callbacks`` are extra SB3 callbacks (for example to stop early); ``base_dir`` is the
    directory a relative tracking URI is resolved against (default: the current one). A
    resumed run uses its own logged config; of ``resume_overrides`` (the command line),
    only ``total_timesteps`` (to extend the budget, also of a finished run), ``progress_bar``
    and ``tracking.*`` apply, and anything else is refused rather than silently ignored.
    Called without ``resume_overrides``, the ``total_timesteps`` and ``progress_bar`` given in
    ``cfg`` apply. ``workload`` names the ``workload`` config group's option that replaced
    the scenario's workload, if any: the run is named after both
    (``Autoscaling-v0__ppo__default+diurnal__seed0``) and tagged ``servegym.workload``, so
    runs that differ only in workload are told apart. ``tags`` are set on a new run (the
    app tags the jobs of a multirun with their sweep directory).

    Every check runs before the MLflow run is created: a bad value leaves no run behind.
    Ctrl-C or SIGTERM during the run end it as KILLED (:class:`TrainingInterruptedError`).

    The run records ``budget/trained_timesteps``: SB3 stops only between rollouts (or
    ``train_freq`` collections), so it can exceed ``total_timesteps``; a warning says by
    how much before training starts. It records the budget as ``budget/total_timesteps``
    too, at step 0 and again, at the steps already trained, whenever a resume changes it:
    the param ``total_timesteps`` keeps the first budget (MLflow params cannot change),
    the metric's latest value (``metrics.budget/total_timesteps`` in ``search_runs``) is
    the budget the run trains towards.
    """
    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except InterpolationKeyError as exc:  # an agent file of one's own without default_timesteps
        missing = str(exc.msg).splitlines()[0]
        raise ConfigError(f"{exc.full_key}: {missing}; give it a value (e.g. total_timesteps=20000)") from None
    container: dict[str, Any] = {str(k): value for k, value in raw.items()}  # type: ignore[union-attr]
    robustness = container.get("robustness")
    if isinstance(robustness, Mapping) and isinstance(robustness.get("trace_path"), str):
        # logged absolute, as the run read it
        trace = Path(base_dir if base_dir is not None else ".") / robustness["trace_path"]
        container["robustness"] = {**robustness, "trace_path": str(trace.resolve())}
    given = dict(container)
    tracking = dict(container.get("tracking") or {})
    uri = tracking_uri(tracking.get("uri"), base_dir)
    # a server that is not there fails now, in seconds, not after minutes of MLflow's retries
    require_server(uri, uri_setting(tracking.get("uri")))
    resume = container.get("resume")
    if resume:
        require_store(uri, f"resume={resume}")  # a lookup: never create an empty store
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="servegym-train-") as tmp:
        workdir = Path(tmp)
        resume_from: Path | None = None
        if resume:
            container, resume_from = _resume_config(
                MlflowClient(), str(resume), given, tracking, resume_overrides, workdir
            )
        v = validate(container)
        learner: Any = None
        env: gym.Env[Any, Any] | None = None
        if v.kind == "sklearn":
            learner, env = _prepare_sklearn(v, workdir)
        prebuilt: BaseAlgorithm | None = None
        if v.kind == "sb3" and resume_from is None:
            prebuilt = _new_sb3_model(v)
        # only now: a client creates a SQLite store's file and tables as soon as it opens it
        client = MlflowClient()
        agent_name = str(v.agent.get("name", v.agent.get("algo", "agent")))
        if resume:
            active = mlflow.start_run(run_id=str(resume))
        else:
            experiment = mlflow.set_experiment(str(tracking.get("experiment", "servegym")))
            scenario_label = f"{v.scenario.name}+{workload}" if workload else v.scenario.name
            active = mlflow.start_run(
                experiment_id=experiment.experiment_id,
                run_name=run_name(v.env_id, agent_name, scenario_label, v.seed),
            )
        trainer: _Trainer | None = None
        restore = _interrupt_on_sigterm()
        try:
            with active as run:
                run_id = run.info.run_id
                if not resume:
                    # the emptied moved keys (MOVED_KEYS) only catch old overrides: nothing to record
                    logged_config = {k: v_ for k, v_ in container.items() if k != "resume" and k not in MOVED_KEYS}
                    mlflow.log_params({**flatten(logged_config), **v.prices.params()})
                    mlflow.log_metric("budget/total_timesteps", v.total_timesteps, step=0)
                    mlflow.log_text(yaml.safe_dump(logged_config, sort_keys=False), "config/config.yaml")
                    mlflow.set_tags(
                        {
                            **provenance_tags(logged_config),
                            "servegym.env": v.env_id,
                            "servegym.agent": agent_name,
                            "servegym.kind": v.kind,
                            "servegym.scenario": v.scenario.name,
                            "servegym.seed": str(v.seed),
                            **({"servegym.workload": workload} if workload else {}),
                            **dict(tags or {}),
                        }
                    )
                else:
                    logged_path = client.download_artifacts(run_id, _CONFIG_ARTIFACT, str(workdir / "logged"))
                    logged_config = yaml.safe_load(Path(logged_path).read_text())
                    if logged_config.get("total_timesteps") != v.total_timesteps:
                        # a later resume without total_timesteps then continues towards this budget
                        logged_config["total_timesteps"] = v.total_timesteps
                        mlflow.log_text(yaml.safe_dump(logged_config, sort_keys=False), _CONFIG_ARTIFACT)
                        # params cannot change: the metric's latest value is the budget now trained towards
                        steps_before = _checkpoint_steps(resume_from) if resume_from is not None else 0
                        mlflow.log_metric("budget/total_timesteps", v.total_timesteps, step=steps_before)
                with BatchLogger(run_id, client, int(tracking.get("flush_every", 500))) as batch:
                    trainer = _Trainer(v, container, run_id, batch, workdir)
                    trainer.model = prebuilt
                    try:
                        policy, steps, kpis, report = _train_and_save(trainer, resume_from, callbacks, learner, env)
                    except TrainingInterruptedError:
                        batch.flush()
                        mlflow.end_run(status="KILLED")
                        raise
        finally:
            restore()
            if env is not None:
                env.close()
            trained = trainer.model if trainer is not None else prebuilt
            if trained is not None and trained.get_env() is not None:
                trained.get_env().close()  # type: ignore[union-attr]
    return TrainResult(
        run_id=run_id,
        policy=policy,
        timesteps=steps,
        kpis=kpis,
        eval_seeds=trainer.eval_seeds,
        prices=v.prices,
        robustness=report,
    )


def _train_and_save(
    trainer: _Trainer,
    resume_from: Path | None,
    callbacks: Sequence[BaseCallback],
    learner: Any,
    env: gym.Env[Any, Any] | None,
) -> tuple[Policy, int, dict[str, float], RobustnessReport | None]:
    """Train, log the budget, evaluate (with the robustness check) and save ``policy/`` in the active run.

    Interrupts become KILLED runs.
    """
    try:
        if learner is not None and env is not None:
            policy, steps = trainer.train_sklearn(learner, env)
        else:
            policy, steps = trainer.train_sb3(resume_from, callbacks)
    except KeyboardInterrupt:  # between SB3's checkpoint and the end of training: nothing new to keep
        raise TrainingInterruptedError(trainer.run_id, None, resumable=trainer.v.kind == "sb3") from None
    trainer.batch.log({"budget/trained_timesteps": steps}, steps)
    try:
        kpis = trainer.log_eval(policy, steps)
        shifted, report = trainer.log_robustness(policy, steps)
        trainer.batch.flush()
    except KeyboardInterrupt:
        # the policy is trained: keep it, even though it has no eval/* KPIs
        trainer.batch.flush()
        _save_policy(policy, trainer.workdir)
        resumable = trainer.v.kind == "sb3"
        raise TrainingInterruptedError(
            trainer.run_id,
            steps,
            resumable=resumable,
            detail=f"the trained policy is saved as policy/ in MLflow run {trainer.run_id}, but its evaluation on "
            f"eval_seeds (with the robustness check) did not finish" + ("; resuming evaluates it" if resumable else ""),
        ) from None
    _save_policy(policy, trainer.workdir)
    return policy, steps, {**kpis, **shifted}, report


def _save_policy(policy: Policy, workdir: Path) -> None:
    save_policy(policy, workdir / "policy")
    mlflow.log_artifacts(str(workdir / "policy"), "policy")


def _explicit_overrides() -> list[str]:
    """The ``key=value`` overrides given on the command line of this job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _workload_choice() -> str | None:
    """The option of the ``workload`` config group this job selected (None: the scenario's own)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("workload")
    return None if choice is None else str(choice)


def _sweep_tags() -> dict[str, str]:
    """A multirun job's sweep directory (absolute) as a tag, so a callback can find the sweep's runs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    sweep_dir = Path(str(hc.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(hydra.utils.get_original_cwd()) / sweep_dir
    return {SWEEP_TAG: str(sweep_dir.resolve())}


SWEEP_TAG = "servegym.sweep_dir"
"""Tag of every run a multirun job made: the sweep's output directory (absolute)."""


_UNITS = {"_s": " s", "_usd": " USD"}


def summary(kpis: Mapping[str, float], seeds: Sequence[int], prefix: str = "eval") -> str:
    """``evaluation over seeds [...] (mean ± 95% CI): objective_usd 328 ± 5 USD (worst seed 1001: 341), ...``.

    The KPIs are means over one episode per seed; the ± is the half-width of their 95%
    t-interval (absent with a single seed). The objective and the drop rate name their
    worst seed when there are several.
    """
    parts: list[str] = []
    for name in EVAL_KPIS:
        mean = kpis.get(f"{prefix}/{name}")
        if mean is None:
            continue
        unit = next((u for suffix, u in _UNITS.items() if name.endswith(suffix)), "")
        ci = kpis.get(f"{prefix}/{name}_ci95")
        part = f"{name} {mean:.4g}" + (f" ± {ci:.3g}" if ci is not None else "") + unit
        worst, seed = kpis.get(f"{prefix}/{name}_worst"), kpis.get(f"{prefix}/{name}_worst_seed")
        if worst is not None and seed is not None and len(seeds) > 1:
            part += f" (worst seed {int(seed)}: {worst:.4g})"
        parts.append(part)
    what = "evaluation" if prefix == "eval" else "held-out evaluation"
    how = "mean ± 95% CI" if len(seeds) > 1 else "one episode"
    return f"{what} over seeds {list(seeds)} ({how}): " + ", ".join(parts)


def outcome_line(kpis: Mapping[str, float], prefix: str = "eval", baseline: str | None = None, flags: int = 0) -> str:
    """The last line of an evaluation: drops and failures, the worst seed, and whether anything was flagged.

    ``drops: 2.81% of requests dropped or failed (0.17% failed); worst seed 1001: 7.90% dropped or
    failed, objective 612.30 USD; 2 flags against builtin (above)``. ``baseline`` None: no
    robustness check ran.
    """
    drop = kpis.get(f"{prefix}/drop_rate", math.nan)
    failed = kpis.get(f"{prefix}/failure_rate", math.nan)
    line = f"drops: {drop:.2%} of requests dropped or failed ({failed:.2%} failed)"
    seed = kpis.get(f"{prefix}/objective_usd_worst_seed")
    drop_seed = kpis.get(f"{prefix}/drop_rate_worst_seed")
    if seed is not None:
        line += f"; worst seed {int(seed)}: objective {kpis[f'{prefix}/objective_usd_worst']:,.2f} USD"
        if drop_seed is not None:
            worst_drop = kpis[f"{prefix}/drop_rate_worst"]
            line += (
                f", {worst_drop:.2%} dropped or failed"
                if drop_seed == seed
                else f"; most drops on seed {int(drop_seed)}: {worst_drop:.2%}"
            )
    if baseline is not None:
        line += f"; {flags} flag{'s' if flags != 1 else ''} against {baseline}" + (" (above)" if flags else "")
    return line


def final_lines(result: TrainResult) -> list[str]:
    """What ``servegym train`` prints after a run's final evaluation, the run's id first.

    The robustness table and its flags, then the objective's prices, the evaluation
    summary and, last, the drops, failures and worst seed (:func:`outcome_line`).
    """
    lines = [f"run {result.run_id}: {result.timesteps} steps"]
    if not result.eval_seeds:
        # Said, not silent: an empty eval_seeds is allowed (a script that evaluates elsewhere), but no run
        # should look evaluated when it is not.
        lines.append("no final evaluation: eval_seeds is empty, so the run has no eval/* metrics")
        return lines
    if not result.kpis:
        return lines
    report = result.robustness
    if report is not None:
        lines.append(
            f"robustness: {report.policy} against {report.baseline} on the same seeds (objective in USD and share of "
            "requests dropped or failed: mean, and the worst seed)"
        )
        lines += check_table(report.checks, report.policy, report.baseline)
    if result.prices is not None:
        lines.append(result.prices.describe())
    lines.append(summary(result.kpis, result.eval_seeds))
    flags = len(report.flags) if report is not None else 0
    lines.append(outcome_line(result.kpis, "eval", report.baseline if report is not None else None, flags))
    return lines


class HoldoutCallback(Callback):
    """Hydra callback: after a tuning sweep, evaluate the best trial's policy on held-out seeds.

    A sweeper (Optuna: ``+experiment=tune_ppo``) selects the trial with the lowest
    ``eval/objective_usd`` on ``eval_seeds``; that number is biased low by the selection
    itself. ``on_multirun_end`` finds the sweep's runs (tag ``servegym.sweep_dir``), takes
    the best finished one, evaluates its ``policy/`` on ``holdout_seeds`` (disjoint from
    ``eval_seeds``) in the run's own environment and scenario, logs ``holdout/*`` (means,
    ``_ci95`` half-widths, the objective's and drop rate's worst seed and spread) to that
    run and prints them; with the run's robustness check on, its baseline runs the same
    seeds (``holdout/baseline/*``) and every seed far outside it is printed.
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        seeds = [int(s) for s in config.get("holdout_seeds") or []]
        if not seeds:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        uri = tracking_uri((config.get("tracking") or {}).get("uri"))
        result = evaluate_holdout(uri, sweep_dir, seeds)
        if result is None:
            print(f"held-out evaluation: no finished run with eval/objective_usd in the sweep {sweep_dir}")
            return
        print(
            f"best trial: run {result.run_id}; eval/objective_usd was selected on eval_seeds, so here it is on "
            "held-out seeds"
        )
        if result.flags:
            print(f"far outside {result.baseline} ({len(result.flags)}):")
        for flag in result.flags:
            print(f"  ! {flag}")
            print(f"servegym train: warning: {flag}", file=sys.stderr)
        print(result.prices.describe())
        print(summary(result.metrics, seeds, prefix="holdout"))
        print(outcome_line(result.metrics, "holdout", result.baseline, len(result.flags)))


class EqualBudgetCallback(Callback):
    """Hydra callback: refuse a sweep whose on-policy trials would train for different budgets.

    SB3 stops only between rollouts of ``n_steps`` x ``n_envs`` steps, so when a sweep
    (Optuna: ``+experiment=tune_ppo``) varies ``agent.hyperparams.n_steps`` (or
    ``agent.n_envs``), ``total_timesteps=512`` trains 512 steps in one trial and 2,048 in
    another, and the best trial may just have trained longest. ``on_multirun_start`` checks
    that ``total_timesteps`` is a multiple of every rollout size the sweep can pick (from
    ``hydra.sweeper.params`` and the command line's sweeps) and otherwise stops, naming the
    sizes and the smallest valid budget, before any trial runs.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            check_equal_budgets(config)
        except ConfigError as exc:
            # Hydra only warns about a callback's exception; stop the sweep before its first trial
            print(f"servegym train: error: {exc}", file=sys.stderr)
            sys.exit(2)


_ROLLOUT_KEYS = ("agent.hyperparams.n_steps", "agent.n_envs", "total_timesteps")


def check_equal_budgets(config: Any) -> None:
    """Raise ConfigError when the trials of the sweep ``config`` would train different numbers of steps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    agent = config.get("agent") or {}
    hyperparams = agent.get("hyperparams") or {}
    if agent.get("kind") != "sb3" or "n_steps" not in hyperparams:
        return  # off-policy learners and scikit-learn fits: no rollout size to check
    values: dict[str, list[Any]] = {
        "agent.hyperparams.n_steps": [hyperparams["n_steps"]],
        "agent.n_envs": [agent.get("n_envs")],
        "total_timesteps": [config.get("total_timesteps")],
    }
    sweeper_params = dict(OmegaConf.select(config, "hydra.sweeper.params", default=None) or {})
    # the sweeper's search space first, then the command line, which overrides it
    overrides = [f"{key}={value}" for key, value in sweeper_params.items()]
    overrides += [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key not in _ROLLOUT_KEYS:
            continue
        value = override.value()
        if isinstance(value, ChoiceSweep | RangeSweep):
            values[key] = list(override.sweep_iterator())
        elif override.is_sweep_override():
            swept = str(override.input_line).partition("=")[2]
            raise ConfigError(
                f"{key} = {swept}: a continuous range cannot keep the trials' budgets equal (SB3 trains whole "
                "rollouts of n_steps x n_envs); sweep it with choice(...)"
            )
        else:
            values[key] = [value]
    for key, options in values.items():
        for option in options:
            if isinstance(option, bool) or not isinstance(option, int) or option < 1:
                raise ConfigError(f"{key} = {option!r} is invalid: must be an integer >= 1")
    sizes = sorted(
        {n_steps * n_envs for n_steps in values["agent.hyperparams.n_steps"] for n_envs in values["agent.n_envs"]}
    )
    if len(sizes) < 2:
        return  # one rollout size: every trial rounds the budget up alike (and run_training warns)
    multiple = math.lcm(*sizes)
    for budget in values["total_timesteps"]:
        trained = sorted({math.ceil(budget / size) * size for size in sizes})
        if len(trained) > 1:
            n_steps, n_envs = values["agent.hyperparams.n_steps"], values["agent.n_envs"]
            raise ConfigError(
                f"total_timesteps = {budget} would give the trials different budgets: SB3 trains whole rollouts of "
                f"n_steps x n_envs, and with agent.hyperparams.n_steps in {n_steps} and agent.n_envs in {n_envs} "
                f"(rollouts of {', '.join(map(str, sizes))} steps) the trials would train "
                f"{', '.join(map(str, trained))} steps, so the best trial could just be the one that trained longest. "
                f"Use a multiple of {multiple}: total_timesteps={math.ceil(budget / multiple) * multiple}"
            )


@dataclass(frozen=True)
class Holdout:
    """The best trial's held-out evaluation: its logged metrics and the flags against its baseline."""

    run_id: str
    metrics: dict[str, float]
    prices: Prices
    baseline: str | None
    flags: list[str]


def evaluate_holdout(uri: str, sweep_dir: Path, seeds: Sequence[int]) -> Holdout | None:
    """Evaluate the best run of the sweep in ``sweep_dir`` on ``seeds``; log ``holdout/*`` to it.

    With the run's robustness check on, its baseline runs the same seeds on the run's
    scenario (``holdout/baseline/*``; the flags go to the tag ``servegym.holdout_flags``).
    Returns None when the sweep has no finished run with ``eval/objective_usd``.
    """
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_dir}' and attributes.status = 'FINISHED'",
        order_by=["metrics.`eval/objective_usd` ASC"],
    )
    scored = [r for r in runs if math.isfinite(r.data.metrics.get("eval/objective_usd", math.nan))]
    if not scored:
        return None
    best = min(scored, key=lambda r: r.data.metrics["eval/objective_usd"])
    run_id = best.info.run_id
    with tempfile.TemporaryDirectory(prefix="servegym-holdout-") as tmp:
        logged = Path(client.download_artifacts(run_id, "config/config.yaml", tmp))
        config = _migrated(yaml.safe_load(logged.read_text()))
        v = validate(config)
        policy = load_policy(client.download_artifacts(run_id, "policy", tmp))
    episodes = evaluate_in_env(policy, v.env_id, {"scenario": v.scenario, **v.env_kwargs}, seeds)
    metrics = _kpi_metrics(episodes, "holdout", seeds)
    flags: list[str] = []
    check = v.robustness
    if check is not None:
        base = [run_policy(check.baseline, v.env_id, check.scenario, s)["all"] for s in seeds]
        metrics.update(_kpi_metrics(base, "holdout/baseline", seeds))
        name = str(v.agent.get("name", v.agent.get("algo", "policy")))
        where = f"{check.scenario.name} (held-out seeds)"
        flags = outlier_flags(name, episodes, check.baseline, base, seeds, where=where)
        client.set_tag(run_id, "servegym.holdout_flags", _tag_value("\n".join(flags) or "none"))
    step = int(best.data.metrics.get("budget/trained_timesteps", 0))
    with BatchLogger(run_id, client) as batch:
        batch.log(metrics, step)
    client.set_tag(run_id, "servegym.holdout_seeds", json.dumps(list(seeds)))
    return Holdout(run_id, metrics, v.prices, check.baseline if check is not None else None, flags)


def _migrated(config: dict[str, Any]) -> dict[str, Any]:
    """A run's logged config in today's keys.

    A run logged before the objective moved into the scenario has its prices in
    ``objective.*``; they become ``scenario.objective.*`` (the drop price, added since, is
    derived from the scenario).
    """
    old = config.get("objective")
    if not old:
        return config
    scenario = dict(config.get("scenario") or {})
    scenario["objective"] = {**(scenario.get("objective") or {}), **old}
    return {**{k: value for k, value in config.items() if k != "objective"}, "scenario": scenario}


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def _train_job(cfg: DictConfig) -> float | None:
    """One job of ``servegym train``; returns ``eval/objective_usd`` for sweepers such as Optuna.

    A single run that fails a check prints one line and exits with status 2. In a multirun
    a job that fails prints one line naming its overrides, is recorded for :func:`app`'s
    summary and returns None (Optuna marks the trial failed), so the other jobs still run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = run_training(
            cfg,
            base_dir=hydra.utils.get_original_cwd(),
            resume_overrides=_explicit_overrides(),
            workload=_workload_choice(),
            tags=_sweep_tags(),
        )
    except (ConfigError, TraceError, ValueError) as exc:
        # raised before the MLflow run is created: no run is left behind
        if not multirun:
            print(f"servegym train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        _job_failed("config", exc)
        return None
    except TrainingInterruptedError as exc:
        # Ctrl-C or SIGTERM stops the whole sweep, not just this job
        print(f"servegym train: {exc}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not multirun:
            raise
        traceback.print_exc()
        _job_failed("error", exc)
        return None
    print("\n".join(final_lines(result)))
    if multirun:
        _job_done()
    objective = result.kpis.get("eval/objective_usd")
    return None if objective is None else (objective if math.isfinite(objective) else math.inf)


_JOB_LOG_ENV = "SERVEGYM_TRAIN_JOB_LOG"
"""Environment variable naming the file where the jobs of a multirun record how they ended.

Set by :func:`app` in the launching process; the jobs (in it, or in joblib's worker
processes, which inherit the environment) append one JSON line each.
"""


def _job_label() -> tuple[int, str]:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return int(hc.job.num), " ".join(hc.overrides.task)


def _record_job(outcome: dict[str, Any]) -> None:
    log = os.environ.get(_JOB_LOG_ENV)
    if not log:
        return
    try:
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps(outcome) + "\n")
    except OSError:  # a launcher on another machine cannot reach the file: the job's line was printed
        return


def _job_done() -> None:
    num, overrides = _job_label()
    _record_job({"num": num, "overrides": overrides, "failed": None})


def _job_failed(kind: str, exc: BaseException) -> None:
    num, overrides = _job_label()
    what = "error" if kind == "config" else f"failed with {type(exc).__name__}"
    print(f"servegym train: job #{num} ({overrides}): {what}: {exc}", file=sys.stderr)
    _record_job({"num": num, "overrides": overrides, "failed": kind, "error": f"{exc}"})


def _report_jobs(log: Path) -> int:
    """Print which jobs of a multirun failed; the exit status: 0, 2 (config errors only) or 1."""
    if not log.exists():
        return 0
    jobs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    failed = sorted((j for j in jobs if j["failed"]), key=lambda j: j["num"])
    if not failed:
        return 0
    print(
        f"servegym train: {len(failed)} of {len(jobs)} jobs failed (the others ran, each in its own MLflow run):",
        file=sys.stderr,
    )
    for job in failed:
        what = "config error" if job["failed"] == "config" else "error (traceback above)"
        print(f"  job #{job['num']} ({job['overrides']}): {what}: {job['error']}", file=sys.stderr)
    return 2 if all(j["failed"] == "config" for j in failed) else 1


def app() -> None:
    """Entry point of ``servegym train`` (the command line is ``sys.argv``).

    Runs the Hydra app; after a multirun in which jobs failed, prints which ones and why
    and exits with status 2 when they all failed a config check (1 otherwise).
    """
    # resume, distillation and the held-out check download small artifacts: no progress bar for each
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="servegym-train-jobs-") as tmp:
        log = Path(tmp) / "jobs.jsonl"
        previous = os.environ.get(_JOB_LOG_ENV)
        os.environ[_JOB_LOG_ENV] = str(log)
        try:
            _train_job()
        except SystemExit:
            _report_jobs(log)  # a sweep stopped early (Ctrl-C, a sweeper's error) still says what failed
            raise
        finally:
            if previous is None:
                del os.environ[_JOB_LOG_ENV]
            else:
                os.environ[_JOB_LOG_ENV] = previous
        status = _report_jobs(log)
    if status:
        sys.exit(status)
