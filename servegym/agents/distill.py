"""Distillation of any teacher policy into a small decision tree a human can read.

A trained network decides well but cannot be read; a depth-limited decision tree over
the same named features can, and its rules go into a review or a runbook. The
:class:`DistillationLearner` imitates a teacher :class:`~servegym.policies.base.Policy`
with DAgger (Ross, Gordon and Bagnell, "A Reduction of Imitation Learning and Structured
Prediction to No-Regret Online Learning", AISTATS 2011): the first round rolls out the
teacher; each later round rolls out the current tree, labels every state it visits with
the teacher's action, adds them to the data and refits, so the tree learns what to do
in the states its own mistakes lead to. With ``dagger_rounds = 1`` it is plain
behaviour cloning. The approach follows VIPER (Bastani, Pu and Solar-Lezama,
"Verifiable Reinforcement Learning via Policy Extraction", NeurIPS 2018), without its
Q-value weighting.

Actions: ``Discrete`` → one ``DecisionTreeClassifier``; ``MultiDiscrete`` → one
classifier per component; ``Box`` → one (multi-output) ``DecisionTreeRegressor``.
The fitted trees are :attr:`DistilledTreePolicy.estimators`; :meth:`DistilledTreePolicy.rules`
prints them with :func:`sklearn.tree.export_text` and the layout's feature names.

**Fidelity** is the share of states where the tree does what the teacher does (all
components equal for MultiDiscrete; within ``tolerance`` for Box), measured on states
the tree did not train on: each DAgger round scores the current tree on the states of
its own rollout before adding them (behaviour cloning holds out the last
``eval_fraction`` of the teacher's states).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import gymnasium as gym
import joblib  # type: ignore[import-untyped, unused-ignore]
import numpy as np
from gymnasium import spaces
from sklearn.tree import (  # type: ignore[import-untyped, unused-ignore]
    DecisionTreeClassifier,
    DecisionTreeRegressor,
    export_text,
)

from servegym.agents.io import layout_from_json, layout_to_json, load_joblib
from servegym.agents.seeds import training_seed
from servegym.envs.features import Layout
from servegym.policies.base import Policy, checked_observation

__all__ = ["DistillationLearner", "DistilledTreePolicy"]

_CONFIG_FILE = "distilled.json"
_MODEL_FILE = "distilled_trees.joblib"


class DistilledTreePolicy:
    """Acts with decision trees fitted to a teacher's actions.

    ``kind`` is ``discrete`` (returns an ``int``), ``multi_discrete`` (an int64 array,
    one tree per component) or ``continuous`` (a float32 array, one multi-output
    regressor). Public for exporters: ``estimators`` (the fitted trees) and ``layout``.
    """

    def __init__(self, layout: Layout, estimators: list[Any], kind: str) -> None:
        if kind not in ("discrete", "multi_discrete", "continuous"):
            raise ValueError(f"DistilledTreePolicy: kind = {kind!r} is invalid: discrete, multi_discrete or continuous")
        self.layout = layout
        self.estimators = estimators
        self.kind = kind

    def act(self, observation: np.ndarray) -> Any:
        x = checked_observation(observation, self.layout, type(self).__name__).astype(np.float64)[None, :]
        if self.kind == "discrete":
            return int(self.estimators[0].predict(x)[0])
        if self.kind == "multi_discrete":
            return np.array([int(tree.predict(x)[0]) for tree in self.estimators], dtype=np.int64)
        return np.asarray(self.estimators[0].predict(x)[0], dtype=np.float32).reshape(-1)

    def reset(self) -> None:
        """Nothing to forget: a tree has no memory."""

    def rules(self) -> str:
        """The trees as indented if/else rules over the layout's feature names."""
        names = list(self.layout.names)
        parts = []
        for k, tree in enumerate(self.estimators):
            title = f"action component {k}" if self.kind == "multi_discrete" else "action"
            parts.append(f"# {title}\n{export_text(tree, feature_names=names, decimals=3)}")
        return "\n".join(parts)

    def save(self, directory: Path) -> None:
        """Write the kind and layout (JSON) and the trees (joblib)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "kind": self.kind,
            "layout": layout_to_json(self.layout),
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2))
        joblib.dump(self.estimators, directory / _MODEL_FILE)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The policy :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        config = json.loads((directory / _CONFIG_FILE).read_text())
        layout = layout_from_json(config["layout"])
        return cls(layout, list(load_joblib(directory / _MODEL_FILE)), config["kind"])


class DistillationLearner:
    """Distils ``teacher`` into a :class:`DistilledTreePolicy` by DAgger on the env it acts in.

    Hyperparameters: ``teacher`` (any policy for the env's observations), ``max_depth``
    and ``min_samples_leaf`` (of the trees: small trees are what make the rules
    readable), ``dagger_rounds`` (1 = behaviour cloning), ``eval_fraction`` (held out
    in behaviour cloning), ``tolerance`` (continuous actions: agreement within it).
    The ``total_timesteps`` budget is split evenly across rounds. ``log`` receives, per
    round, ``distill/fidelity`` (agreement on unseen states), ``distill/train_fidelity``
    (on the data fitted), ``distill/samples``, ``distill/leaves`` and ``distill/round``.
    """

    def __init__(
        self,
        teacher: Policy,
        max_depth: int = 4,
        min_samples_leaf: int = 5,
        dagger_rounds: int = 3,
        eval_fraction: float = 0.2,
        tolerance: float = 1e-6,
    ) -> None:
        owner = type(self).__name__
        if isinstance(dagger_rounds, bool) or not isinstance(dagger_rounds, int) or dagger_rounds < 1:
            raise ValueError(f"{owner}: dagger_rounds = {dagger_rounds!r} is invalid: must be an integer >= 1")
        if not 0 < eval_fraction < 1:
            raise ValueError(f"{owner}: eval_fraction = {eval_fraction!r} is invalid: must be in (0, 1)")
        self.teacher = teacher
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.dagger_rounds = dagger_rounds
        self.eval_fraction = eval_fraction
        self.tolerance = tolerance
        self.metrics: dict[str, float] = {}
        """The metrics of the latest round, also after ``learn`` returns."""

    def _fit(self, x: np.ndarray, y: np.ndarray, kind: str, layout: Layout, seed: int) -> DistilledTreePolicy:
        if kind == "continuous":
            tree = DecisionTreeRegressor(
                max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf, random_state=seed
            )
            return DistilledTreePolicy(layout, [tree.fit(x, y)], kind)
        trees = [
            DecisionTreeClassifier(
                max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf, random_state=seed
            ).fit(x, y[:, k])
            for k in range(y.shape[1])
        ]
        return DistilledTreePolicy(layout, trees, kind)

    def _agreement(self, student: DistilledTreePolicy, x: np.ndarray, y: np.ndarray) -> float:
        if student.kind == "continuous":
            predicted = student.estimators[0].predict(x).reshape(len(x), -1)
            return float(np.mean(np.all(np.abs(predicted - y) <= self.tolerance, axis=1)))
        predicted = np.column_stack([tree.predict(x) for tree in student.estimators])
        return float(np.mean(np.all(predicted == y, axis=1)))

    def _rollout(
        self, env: gym.Env[Any, Any], driver: Policy | None, steps: int, state: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` states visited under ``driver`` (the teacher when None), labelled by the teacher."""
        observations, actions = [], []
        obs = state["obs"]
        for _ in range(steps):
            label = self.teacher.act(obs)
            observations.append(np.asarray(obs, dtype=np.float64))
            actions.append(np.asarray(label, dtype=np.float64).reshape(-1))
            action = label if driver is None else driver.act(obs)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
                self.teacher.reset()
                if driver is not None:
                    driver.reset()
        state["obs"] = obs
        return np.asarray(observations), np.asarray(actions)

    def learn(
        self,
        env: gym.Env[Any, Any],
        total_timesteps: int,
        seed: int,
        log: Callable[[dict[str, float], int], None] | None = None,
    ) -> DistilledTreePolicy:
        """Distil the teacher on ``env`` within ``total_timesteps`` steps and return the tree policy."""
        base: Any = env.unwrapped
        layout: Layout = base.layout
        space = env.action_space
        if isinstance(space, spaces.Discrete):
            kind = "discrete"
        elif isinstance(space, spaces.MultiDiscrete):
            kind = "multi_discrete"
        elif isinstance(space, spaces.Box):
            kind = "continuous"
        else:
            raise ValueError(f"{type(self).__name__} cannot distil into the action space {space}")
        per_round = total_timesteps // self.dagger_rounds
        if per_round < 2:
            raise ValueError(
                f"{type(self).__name__}: total_timesteps = {total_timesteps} is too small for "
                f"{self.dagger_rounds} rounds of at least 2 steps"
            )
        obs, _ = env.reset(seed=training_seed(seed))
        self.teacher.reset()
        state: dict[str, Any] = {"obs": obs}
        X, Y = self._rollout(env, None, per_round, state)
        if self.dagger_rounds == 1:
            split = len(X) - max(1, math.ceil(self.eval_fraction * len(X)))
            held_out = self._fit(X[:split], Y[:split], kind, layout, seed)
            fidelity = self._agreement(held_out, X[split:], Y[split:])
        student = self._fit(X, Y, kind, layout, seed)
        for round_ in range(1, self.dagger_rounds):
            student.reset()
            X_new, Y_new = self._rollout(env, student, per_round, state)
            fidelity = self._agreement(student, X_new, Y_new)
            self.metrics = self._metrics(student, X, Y, fidelity, round_)
            if log is not None:
                log(self.metrics, round_ * per_round)
            X, Y = np.concatenate([X, X_new]), np.concatenate([Y, Y_new])
            student = self._fit(X, Y, kind, layout, seed)
        if self.dagger_rounds == 1:
            self.metrics = self._metrics(student, X, Y, fidelity, 1)
            if log is not None:
                log(self.metrics, per_round)
        return student

    def _metrics(
        self, student: DistilledTreePolicy, x: np.ndarray, y: np.ndarray, fidelity: float, round_: int
    ) -> dict[str, float]:
        return {
            "distill/fidelity": fidelity,
            "distill/train_fidelity": self._agreement(student, x, y),
            "distill/samples": float(len(x)),
            "distill/leaves": float(sum(tree.get_n_leaves() for tree in student.estimators)),
            "distill/round": float(round_),
        }
