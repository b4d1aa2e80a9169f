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
(``rollout/*``, ``train/*``, ``time/*``) and the simulator's KPIs of finished training
episodes (``sim/*``), in batches; the KPIs of the final policy on ``eval_seeds``
(``eval/*``, means, with ``eval/*_ci95`` half-widths); checkpoints
(``checkpoints/latest/``); and the trained policy (``policy/``, loadable with
:func:`servegym.agents.io.load_policy`).

Interrupting training (Ctrl-C) writes a checkpoint at the current step, flushes every
buffered metric and ends the run as KILLED; ``resume=<run id>`` reloads the run's own
config and that checkpoint (model, VecNormalize statistics, replay buffer) and continues
the same run from the same step count.
"""

from __future__ import annotations

import importlib
import inspect
import math
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import hydra
import mlflow
import numpy as np
import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import servegym.envs
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
from servegym.experiments.evaluate import DECISIONS, objective_usd
from servegym.experiments.schema import register_configs
from servegym.experiments.stats import estimate
from servegym.experiments.tracking import BatchLogger, flatten, provenance_tags, run_name, tracking_uri
from servegym.policies import make_policy, scaling_kwargs
from servegym.policies.base import Policy
from servegym.sim.config import ConfigError, ScenarioConfig, scenario_from_dict
from servegym.sim.workload import TraceError

__all__ = ["TrainResult", "TrainingInterruptedError", "Validated", "app", "evaluate_in_env", "run_training", "validate"]

EVAL_KPIS = (
    "episode_return",
    "latency_p95_s",
    "latency_p50_s",
    "slo_attainment",
    "cost_usd",
    "hit_rate",
    "quality",
    "drop_rate",
)


@dataclass(frozen=True)
class Validated:
    """A train config after every check: what will be built, with nothing left to fail on."""

    scenario: ScenarioConfig
    env_id: str
    env_kwargs: dict[str, Any]
    agent: dict[str, Any]
    kind: str
    seed: int
    total_timesteps: int
    layout: Layout


@dataclass
class TrainResult:
    """What a training run produced."""

    run_id: str
    policy: Policy
    timesteps: int
    kpis: dict[str, float]


class TrainingInterruptedError(RuntimeError):
    """Training stopped early (Ctrl-C); the run's last checkpoint is at ``step``."""

    def __init__(self, run_id: str, step: int) -> None:
        super().__init__(
            f"training interrupted at step {step}; checkpoint saved to MLflow run {run_id}. "
            f"Resume with: servegym train resume={run_id}"
        )
        self.run_id = run_id
        self.step = step


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} = {value!r} is invalid: must be an integer >= {minimum}")
    return value


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
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for key in learner:
        if key != "_target_" and key not in accepted:
            raise ConfigError(
                f"agent.learner.{key}: {name} has no argument {key!r}; it accepts: {', '.join(sorted(accepted))}"
            )


_TOP_LEVEL = frozenset(
    {
        "scenario", "env", "agent", "tracking", "seed", "total_timesteps", "episode_duration_s",
        "checkpoint_every_steps", "eval_every_steps", "eval_seeds", "progress_bar", "resume", "objective",
        "torch_threads",
    }
)  # fmt: skip
_AGENT_KEYS = {
    "sb3": frozenset(
        {"kind", "name", "algo", "policy", "normalize", "norm_reward", "n_envs", "subprocess", "hyperparams"}
    ),
    "sklearn": frozenset({"kind", "name", "envs", "learner", "teacher_run", "teacher_policy", "teacher_params"}),
}


def _no_unknown_keys(cfg: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    """A key added with ``+key=value`` that nothing reads is a typo, not a setting: refuse it."""
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")


def validate(cfg: Mapping[str, Any]) -> Validated:
    """Check a composed train config completely; the ConfigError names the offending key."""
    _no_unknown_keys(cfg, _TOP_LEVEL, "")
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
        probe = servegym.envs.make(env_id, scenario=scenario, **env_kwargs)
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
    probe.close()
    if cfg.get("torch_threads") is not None:
        _int(cfg, "torch_threads", 1)
    return Validated(
        scenario=scenario,
        env_id=env_id,
        env_kwargs=env_kwargs,
        agent=agent,
        kind=kind,
        seed=_int(cfg, "seed", 0),
        total_timesteps=_int(cfg, "total_timesteps", 1),
        layout=layout,
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
        env = servegym.envs.make(env_id, **dict(env_kwargs))
        policy.reset()
        obs, info = env.reset(seed=int(seed))
        done = "kpis" in info
        total = 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(_act(policy, env, obs))
            total += float(reward)
            done = terminated or truncated
        if "kpis" not in info:
            raise RuntimeError(f"{env_id} ended without KPIs in info (TimeLimit before the scenario's horizon?)")
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
    if done:  # resumed: what is left after the checkpoint is rounded up
        left = total_timesteps - done
        budget = f"total_timesteps={total_timesteps} leaves {left} after the checkpoint's {done}, which is"
        ending = f"training will end at {actual} timesteps"
    warnings.warn(
        f"{budget} not a multiple of {rollout}: SB3 trains whole rollouts, so {ending}, "
        f"{actual - total_timesteps} more than total_timesteps. Use a multiple of {size} to train exactly the budget.",
        UserWarning,
        stacklevel=2,
    )


class _MlflowWriter(KVWriter):
    """SB3 logger output that buffers numeric values into a :class:`BatchLogger`."""

    def __init__(self, batch: BatchLogger) -> None:
        self.batch = batch

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        numeric = {
            k: float(v)
            for k, v in key_values.items()
            if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        }
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

    def _on_training_start(self) -> None:
        # a resumed run counts its intervals from the checkpoint, not from zero
        self.last_checkpoint = self.last_eval = self.num_timesteps

    def _on_step(self) -> bool:
        finished = [
            info["kpis"]["all"]
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True)
            if done and "kpis" in info
        ]
        if finished:
            # vector envs finish episodes at the same step: one point, their mean, per step
            means = {
                f"sim/{name}": float(np.mean([k[name] for k in finished]))
                for name in EVAL_KPIS
                if name in finished[0]
            }
            self.trainer.batch.log(means, self.num_timesteps)
        t = self.trainer
        if t.checkpoint_every and self.num_timesteps - self.last_checkpoint >= t.checkpoint_every:
            self.last_checkpoint = self.num_timesteps
            t.checkpoint()
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
        self.model: BaseAlgorithm | None = None

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return {"scenario": self.v.scenario, **self.v.env_kwargs}

    # -- SB3 ----------------------------------------------------------------------------------
    def _venv(self) -> VecEnv:
        a = self.v.agent
        venv = make_vec_env(
            self.v.env_id, self.env_kwargs, int(a["n_envs"]), self.v.seed, a["algo"], bool(a.get("subprocess"))
        )
        return venv

    def _normalised(self, venv: VecEnv) -> VecEnv:
        a = self.v.agent
        if not a.get("normalize"):
            return venv
        gamma = float((a.get("hyperparams") or {}).get("gamma", 0.99))
        return VecNormalize(venv, norm_obs=True, norm_reward=bool(a.get("norm_reward")), gamma=gamma)

    def build(self, resume_from: Path | None) -> BaseAlgorithm:
        a = self.v.agent
        venv = self._venv()
        if resume_from is None:
            model = build_model(a["algo"], self._normalised(venv), a.get("hyperparams") or {}, self.v.seed, a["policy"])
        else:
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
                restore = _interrupt_on_sigterm()
                model.learn(
                    remaining,
                    callback=CallbackList([_TrackingCallback(self), *callbacks]),
                    reset_num_timesteps=resume_from is None,
                    progress_bar=show,
                    log_interval=1,  # every rollout (on-policy) or episode (off-policy)
                )
            except KeyboardInterrupt:
                self.checkpoint()
                raise TrainingInterruptedError(self.run_id, int(model.num_timesteps)) from None
            finally:
                restore()
        self.checkpoint()
        return self.freeze(), int(model.num_timesteps)

    # -- scikit-learn -------------------------------------------------------------------------
    def train_sklearn(self) -> tuple[Policy, int]:
        env = servegym.envs.make(self.v.env_id, **self.env_kwargs)
        extra: dict[str, Any] = {}
        if self.v.agent.get("name") == "distill":
            extra["teacher"] = self.teacher(env)
        try:
            learner = hydra.utils.instantiate(self.v.agent["learner"], **extra)
        except Exception as exc:  # Hydra wraps the constructor's ValueError
            raise ConfigError(f"agent.learner: {exc}") from exc
        policy: Policy = learner.learn(env, self.v.total_timesteps, self.v.seed, log=self.batch.log)
        if isinstance(policy, LearnedAdmission):
            # it decides admissions only: Caching-v0 also asks for the semantic threshold
            policy = CachingEnvPolicy.nearest(env, policy)
        env.close()
        return policy, self.v.total_timesteps

    def teacher(self, env: gym.Env[Any, Any]) -> Policy:
        """The policy to distil: a trained run's (``agent.teacher_run``) or a heuristic (``agent.teacher_policy``)."""
        a = self.v.agent
        if a.get("teacher_run"):
            run_id = str(a["teacher_run"])
            try:
                local = self.client.download_artifacts(run_id, "policy", str(self.workdir / "teacher"))
            except Exception as exc:
                raise ConfigError(f"agent.teacher_run = {run_id!r}: no policy artifact in that run ({exc})") from exc
            return load_policy(local)
        name = str(a.get("teacher_policy"))
        decision = DECISIONS.get(name)
        kwargs: dict[str, Any] = dict(a.get("teacher_params") or {})
        layout = env.unwrapped.layout  # type: ignore[attr-defined]
        if decision == "scaling":
            kwargs = {**scaling_kwargs(self.v.scenario), **kwargs}
        elif decision == "routing":
            kwargs = {"layout": layout, "backend_names": [b.name for b in self.v.scenario.backends], **kwargs}
        elif decision == "admission":
            kwargs = {"layout": layout, **kwargs}
        else:
            raise ConfigError(
                f"agent.teacher_policy = {name!r} is invalid: give a scaling, routing or admission heuristic "
                f"(e.g. hpa, cascade, frequency) or agent.teacher_run"
            )
        try:
            return make_policy(name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"agent.teacher_params: {exc}") from exc

    def log_eval(self, policy: Policy, step: int) -> dict[str, float]:
        """KPIs of ``policy`` on the evaluation seeds, logged as ``eval/<kpi>`` (mean) and ``eval/<kpi>_ci95``."""
        if not self.eval_seeds:
            return {}
        runs = evaluate_in_env(policy, self.v.env_id, self.env_kwargs, self.eval_seeds)
        metrics: dict[str, float] = {}
        for name in EVAL_KPIS:
            values = [r[name] for r in runs if name in r and math.isfinite(r[name])]
            if values:
                est = estimate(values)
                metrics[f"eval/{name}"] = est.mean
                if math.isfinite(est.half_width):
                    metrics[f"eval/{name}_ci95"] = est.half_width
        prices = dict(self.cfg.get("objective") or {})
        if prices:
            objective = [
                objective_usd(r, float(prices["slo_miss_usd"]), float(prices["bad_answer_usd"])) for r in runs
            ]
            metrics["eval/objective_usd"] = estimate(objective).mean
        self.batch.log(metrics, step)
        return metrics


def _download_checkpoint(client: MlflowClient, run_id: str, into: Path) -> Path:
    try:
        local = client.download_artifacts(run_id, "checkpoints/latest", str(into))
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise ConfigError(f"resume={run_id}: the run has no checkpoint to resume from ({exc})") from exc
    return Path(local)


_RESUMABLE_OVERRIDES = ("total_timesteps", "resume", "tracking.", "hydra.", "progress_bar")


def run_training(
    cfg: DictConfig | Mapping[str, Any],
    callbacks: Sequence[BaseCallback] = (),
    base_dir: str | Path | None = None,
    resume_overrides: Sequence[str] = (),
    workload: str | None = None,
) -> TrainResult:
    """Validate ``cfg``, train, evaluate and record everything in one MLflow run.

    ``callbacks`` are extra SB3 callbacks (for example to stop early); ``base_dir`` is the
    directory a relative tracking URI is resolved against (default: the current one). A
    resumed run uses its own logged config; of ``resume_overrides`` (the command line),
    only ``total_timesteps`` (to extend the budget), ``progress_bar`` and ``tracking.*``
    apply, and anything else is refused rather than silently ignored. ``workload`` names
    the ``workload`` config group's option that replaced the scenario's workload, if any:
    the run is named after both (``Autoscaling-v0__ppo__default+diurnal__seed0``) and
    tagged ``servegym.workload``, so runs that differ only in workload are told apart.

    The run records ``budget/trained_timesteps``: SB3 stops only between rollouts (or
    ``train_freq`` collections), so it can exceed ``total_timesteps``; a warning says by
    how much before training starts.
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container: dict[str, Any] = {str(k): value for k, value in raw.items()}  # type: ignore[union-attr]
    given = dict(container)
    tracking = dict(container.get("tracking") or {})
    mlflow.set_tracking_uri(tracking_uri(tracking.get("uri"), base_dir))
    client = MlflowClient()
    resume = container.get("resume")
    with tempfile.TemporaryDirectory(prefix="servegym-train-") as tmp:
        workdir = Path(tmp)
        resume_from: Path | None = None
        if resume:
            try:
                run = client.get_run(str(resume))
            except Exception as exc:
                raise ConfigError(f"resume={resume}: no such MLflow run at {mlflow.get_tracking_uri()}") from exc
            if run.info.status == "FINISHED":
                raise ConfigError(f"resume={resume}: the run already finished; nothing to resume")
            refused = [o for o in resume_overrides if not o.lstrip("+~").startswith(_RESUMABLE_OVERRIDES)]
            if refused:
                raise ConfigError(
                    f"resume={resume} continues the run with its logged config; only total_timesteps, "
                    f"progress_bar and tracking.* may change, not: {' '.join(refused)}"
                )
            logged = Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(workdir)))
            container = {**yaml.safe_load(logged.read_text()), "resume": str(resume), "tracking": tracking}
            for name in ("total_timesteps", "progress_bar"):
                if any(o.startswith(f"{name}=") for o in resume_overrides):
                    container[name] = given[name]
            resume_from = _download_checkpoint(client, run.info.run_id, workdir / "resume")
        v = validate(container)
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
        with active as run:
            run_id = run.info.run_id
            if not resume:
                logged_config = {k: v_ for k, v_ in container.items() if k != "resume"}
                mlflow.log_params(flatten(logged_config))
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
                    }
                )
            with BatchLogger(run_id, client, int(tracking.get("flush_every", 500))) as batch:
                trainer = _Trainer(v, container, run_id, batch, workdir)
                try:
                    if v.kind == "sb3":
                        policy, steps = trainer.train_sb3(resume_from, callbacks)
                    else:
                        policy, steps = trainer.train_sklearn()
                except TrainingInterruptedError:
                    batch.flush()
                    mlflow.end_run(status="KILLED")
                    raise
                batch.log({"budget/trained_timesteps": steps}, steps)
                kpis = trainer.log_eval(policy, steps)
                batch.flush()
            save_policy(policy, workdir / "policy")
            mlflow.log_artifacts(str(workdir / "policy"), "policy")
    return TrainResult(run_id=run_id, policy=policy, timesteps=steps, kpis=kpis)


def _explicit_overrides() -> list[str]:
    """The ``key=value`` overrides given on the command line of this job."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _workload_choice() -> str | None:
    """The option of the ``workload`` config group this job selected (None: the scenario's own)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("workload")
    return None if choice is None else str(choice)


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="train")
def app(cfg: DictConfig) -> float | None:
    """Hydra entry point of ``servegym train``; returns ``eval/objective_usd`` for sweepers such as Optuna."""
    try:
        result = run_training(
            cfg,
            base_dir=hydra.utils.get_original_cwd(),
            resume_overrides=_explicit_overrides(),
            workload=_workload_choice(),
        )
    except (ConfigError, TraceError, ValueError) as exc:
        # the MLflow run (if one started) is kept and marked FAILED
        print(f"servegym train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterruptedError as exc:
        print(f"servegym train: {exc}", file=sys.stderr)
        sys.exit(130)
    shown = ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in result.kpis.items() if not k.endswith("_ci95"))
    print(f"run {result.run_id}: {result.timesteps} steps; {shown}")
    objective = result.kpis.get("eval/objective_usd")
    return None if objective is None else (objective if math.isfinite(objective) else math.inf)
