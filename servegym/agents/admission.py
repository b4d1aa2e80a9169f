"""Learned cache admission: admit an answer when a classifier expects it to be reused before eviction.

Most distinct keys of a Zipf stream are requested once; caching them only evicts entries
that would have been hit. Learned admission predicts, from the features of the
admission layout (the key's frequency ``key_requests`` and recency ``log_key_age_s``,
the request's tenant, sizes, difficulty, answer quality and the tiers' fill), whether the
answer will be reused, as Flashield does for flash caches (Eisenman et al., "Flashield:
a Hybrid Key-value Cache that Controls Flash Write Amplification", NSDI 2019) and LRB
learns relaxed Belady (Song et al., "Learning Relaxed Belady for Content Distribution
Network Caching", NSDI 2020). Here the model is a gradient-boosted tree classifier
(Friedman, "Greedy function approximation: a gradient boosting machine", 2001).

:class:`LearnedAdmission` admits (into cache level ``admit_level`` and every slower one)
when the predicted reuse probability reaches ``threshold``. Its fitted classifier is
the public ``estimator`` (a ``GradientBoostingClassifier``; class 1 = reused).

**Labels.** :class:`AdmissionLearner` runs ``Caching-v0`` admitting every answer
(the default of most caches) and labels each insert after the episode: the answer
written for key ``k`` at time ``t`` was *reused* when the next arrival of ``k`` after
``t`` was a cache hit; a miss means the entry was evicted (or expired) first, and no
later arrival means it was never requested again (within the episode). To do this the
learner reads, for labelling only, the public request table
``env.unwrapped.platform.requests`` (keys, arrival and end times, hit levels) and the
id of the request whose answer waits, ``env.unwrapped.platform.pending[0].request``;
the policy decides from observations alone. Labels describe the cache under admit-all;
a selective policy keeps entries longer, so they are conservative about reuse.
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
from sklearn.ensemble import GradientBoostingClassifier  # type: ignore[import-untyped, unused-ignore]
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped, unused-ignore]

from servegym.agents.io import layout_from_json, layout_to_json, load_joblib
from servegym.agents.seeds import training_seed
from servegym.envs.features import Layout
from servegym.policies.base import Policy, checked_observation, require_features

__all__ = ["AdmissionLearner", "CachingEnvPolicy", "LearnedAdmission", "reuse_labels"]

_CONFIG_FILE = "admission.json"
_MODEL_FILE = "admission_classifier.joblib"


class LearnedAdmission:
    """Admits an answer into level ``admit_level`` (and slower) when P(reuse) >= ``threshold``, else 0.

    ``act`` reads an admission observation (``admission_layout``) and returns an ``int``
    in ``0..n_levels``, as the admission policies of :mod:`servegym.policies.caching`.
    """

    def __init__(self, layout: Layout, estimator: Any, threshold: float = 0.5, admit_level: int = 1) -> None:
        owner = type(self).__name__
        n_levels = sum(1 for n in layout.names if n.startswith("fill_"))
        if not 1 <= admit_level <= n_levels:
            raise ValueError(f"{owner}: admit_level = {admit_level!r} is invalid: must be in 1..{n_levels}")
        if not 0 <= threshold <= 1:
            raise ValueError(f"{owner}: threshold = {threshold!r} is invalid: must be a probability in [0, 1]")
        require_features(layout, ("key_requests", "log_key_age_s"), owner)
        self.layout = layout
        self.estimator = estimator
        self.threshold = float(threshold)
        self.admit_level = admit_level

    def reuse_probability(self, observation: np.ndarray) -> float:
        """The classifier's probability that this answer is reused before eviction."""
        obs = checked_observation(observation, self.layout, type(self).__name__)
        return float(self.estimator.predict_proba(obs[None, :].astype(np.float64))[0, 1])

    def act(self, observation: np.ndarray) -> int:
        return self.admit_level if self.reuse_probability(observation) >= self.threshold else 0

    def reset(self) -> None:
        """Nothing to forget: the classifier is fixed."""

    def save(self, directory: Path) -> None:
        """Write the threshold, level and layout (JSON) and the classifier (joblib)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "threshold": self.threshold,
            "admit_level": self.admit_level,
            "layout": layout_to_json(self.layout),
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2))
        joblib.dump(self.estimator, directory / _MODEL_FILE)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The policy :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        config = json.loads((directory / _CONFIG_FILE).read_text())
        layout = layout_from_json(config.pop("layout"))
        return cls(layout, load_joblib(directory / _MODEL_FILE), **config)


class CachingEnvPolicy:
    """Drives ``Caching-v0`` with an admission policy and a fixed semantic-threshold index.

    Caching-v0's observation holds a decision flag, the admission features and the
    interval features; its action is ``[admission, threshold_index]``. This policy hands
    the admission features (found by name) to ``admission`` at admission decisions and
    always answers ``threshold_index`` for the threshold.
    """

    def __init__(self, layout: Layout, admission: Policy, threshold_index: int) -> None:
        inner: Any = getattr(admission, "layout", None)
        if not isinstance(inner, Layout):
            raise ValueError("CachingEnvPolicy: the admission policy must have a layout attribute")
        at = require_features(layout, ["decision_is_threshold", *inner.names], type(self).__name__)
        self.layout = layout
        self.admission = admission
        self.threshold_index = threshold_index
        self._flag = at["decision_is_threshold"]
        self._admission = np.array([at[n] for n in inner.names], dtype=np.intp)

    def act(self, observation: np.ndarray) -> np.ndarray:
        obs = checked_observation(observation, self.layout, type(self).__name__)
        admit = 0 if obs[self._flag] > 0.5 else int(self.admission.act(obs[self._admission]))
        return np.array([admit, self.threshold_index], dtype=np.int64)

    def reset(self) -> None:
        self.admission.reset()

    @classmethod
    def nearest(cls, env: gym.Env[Any, Any], admission: Policy) -> CachingEnvPolicy:
        """Wrap ``admission`` for ``env`` (Caching-v0), keeping the threshold nearest the scenario's own."""
        base: Any = env.unwrapped
        thresholds = np.asarray(base.thresholds)
        keep = int(np.argmin(np.abs(thresholds - base.scenario.cache.semantic.threshold)))
        return cls(base.layout, admission, keep)

    def save(self, directory: Path) -> None:
        """Write the env layout and threshold index (JSON) and the admission policy into ``admission/``."""
        from servegym.agents.io import save_policy

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "threshold_index": self.threshold_index,
            "layout": layout_to_json(self.layout),
        }
        (directory / "caching_env_policy.json").write_text(json.dumps(config, indent=2))
        save_policy(self.admission, directory / "admission")

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The policy :meth:`save` wrote into ``directory``."""
        from servegym.agents.io import load_policy

        directory = Path(directory)
        config = json.loads((directory / "caching_env_policy.json").read_text())
        layout = layout_from_json(config["layout"])
        return cls(layout, load_policy(directory / "admission"), int(config["threshold_index"]))


def reuse_labels(frame: dict[str, np.ndarray], inserts: np.ndarray) -> np.ndarray:
    """Whether each inserted answer (request ids ``inserts``) was reused before it left the cache.

    ``frame`` is the request table (:meth:`Requests.frame`). The answer of request ``i``
    is written at ``end_s[i]``; it was reused when the next arrival of the same key after
    that time was a hit (``hit_level >= 0``).
    """
    key, arrival, hit = frame["key"], frame["arrival_s"], frame["hit_level"]
    order = np.lexsort((arrival, key))
    sorted_key, sorted_arrival = key[order], arrival[order]
    labels = np.zeros(len(inserts), dtype=bool)
    for n, i in enumerate(inserts):
        lo = np.searchsorted(sorted_key, key[i], side="left")
        hi = np.searchsorted(sorted_key, key[i], side="right")
        k = lo + np.searchsorted(sorted_arrival[lo:hi], frame["end_s"][i], side="right")
        labels[n] = k < hi and hit[order[k]] >= 0
    return labels


class AdmissionLearner:
    """Fits a :class:`LearnedAdmission` on ``Caching-v0`` from admit-all rollouts (see the module docstring).

    Hyperparameters: ``threshold`` and ``admit_level`` (of the policy), ``n_estimators``,
    ``learning_rate``, ``max_depth`` (of the classifier), ``eval_fraction`` (the latest
    inserts, held out for the logged metrics before the final fit on all). ``log``
    receives ``admission/auc``, ``admission/accuracy``, ``admission/reuse_rate`` (share
    of held-out inserts reused), ``admission/admit_rate`` (share the policy would admit)
    and ``admission/inserts``.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        admit_level: int = 1,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        max_depth: int = 3,
        eval_fraction: float = 0.25,
    ) -> None:
        if not 0 < eval_fraction < 1:
            raise ValueError(f"{type(self).__name__}: eval_fraction = {eval_fraction!r} is invalid: must be in (0, 1)")
        self.threshold = threshold
        self.admit_level = admit_level
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.eval_fraction = eval_fraction

    def _classifier(self, seed: int) -> Any:
        return GradientBoostingClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            random_state=seed,
        )

    def learn(
        self,
        env: gym.Env[Any, Any],
        total_timesteps: int,
        seed: int,
        log: Callable[[dict[str, float], int], None] | None = None,
    ) -> LearnedAdmission:
        """Collect ``total_timesteps`` steps of admit-all on ``env`` (Caching-v0), label, fit, return the policy."""
        base: Any = env.unwrapped
        thresholds = np.asarray(base.thresholds)
        keep = int(np.argmin(np.abs(thresholds - base.scenario.cache.semantic.threshold)))
        admission_at = np.array([base.layout.index[n] for n in base.admission.names], dtype=np.intp)
        flag = base.layout.index["decision_is_threshold"]
        features: list[np.ndarray] = []
        labels: list[np.ndarray] = []

        def label_episode(rows: list[np.ndarray], inserts: list[int]) -> None:
            if inserts:
                features.append(np.asarray(rows))
                labels.append(reuse_labels(base.platform.requests.frame(), np.asarray(inserts)))

        obs, _ = env.reset(seed=training_seed(seed))
        rows: list[np.ndarray] = []
        inserts: list[int] = []
        for _ in range(total_timesteps):
            if obs[flag] < 0.5:
                rows.append(obs[admission_at].astype(np.float64))
                inserts.append(base.platform.pending[0].request)
            obs, _, terminated, truncated, _ = env.step(np.array([1, keep]))
            if terminated or truncated:
                label_episode(rows, inserts)
                rows, inserts = [], []
                obs, _ = env.reset()
        label_episode(rows, inserts)
        if not features:
            raise ValueError(f"{type(self).__name__}: no admission decision in {total_timesteps} steps")
        X, y = np.concatenate(features), np.concatenate(labels).astype(np.int64)
        if len(np.unique(y)) < 2:
            raise ValueError(
                f"{type(self).__name__}: all {len(y)} inserts were labelled {'reused' if y[0] else 'not reused'}; "
                "a classifier needs both: give a larger total_timesteps or a scenario with repeated requests"
            )
        split = len(y) - max(1, math.ceil(self.eval_fraction * len(y)))
        metrics = {"admission/inserts": float(len(y)), "admission/reuse_rate": float(y[split:].mean())}
        if len(np.unique(y[:split])) == 2:
            held = self._classifier(seed).fit(X[:split], y[:split])
            proba = held.predict_proba(X[split:])[:, 1]
            metrics["admission/accuracy"] = float(np.mean((proba >= 0.5) == y[split:]))
            metrics["admission/admit_rate"] = float(np.mean(proba >= self.threshold))
            if len(np.unique(y[split:])) == 2:
                metrics["admission/auc"] = float(roc_auc_score(y[split:], proba))
        if log is not None:
            log(metrics, total_timesteps)
        estimator = self._classifier(seed).fit(X, y)
        return LearnedAdmission(base.admission, estimator, self.threshold, self.admit_level)
