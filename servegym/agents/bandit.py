"""A contextual-bandit router: LinUCB or linear Thompson sampling over request and backend features.

Each backend is an arm with its own linear model of the reward of sending it a request
(the *disjoint* model of Li, Chu, Langford and Schapire, "A Contextual-Bandit Approach
to Personalized News Article Recommendation", WWW 2010). The context of arm ``b`` for
one request, built from the routing layout by name, is::

    [tenant one-hot..., log_prompt_tokens / 10, difficulty, log1p(queue_len) / 5, log1p(busy_b) / 5]

(the scalings keep every feature near [0, 1]; a backend's capability and price are
constants, so its own intercept, the tenant one-hot, absorbs them). Per arm, ridge
regression statistics ``A = λI + Σ x xᵀ`` and ``c = Σ r x`` give ``θ = A⁻¹ c``.
``linucb`` picks ``argmax θ·x + alpha √(xᵀ A⁻¹ x)``; ``thompson`` samples ``θ̃ ~ N(θ,
alpha² A⁻¹)`` per arm and picks ``argmax θ̃·x`` (Agrawal and Goyal, "Thompson Sampling
for Contextual Bandits with Linear Payoffs", ICML 2013). A frozen router
(``explore = False``) picks ``argmax θ·x``: greedy, deterministic, for evaluation.

**How the reward reaches the bandit.** Routing-v0's step reward is the cost of *all*
requests that finished since the previous step, not of the one just routed, so it
carries almost no information about that decision. :class:`BanditRouterLearner`
therefore waits for each routed request to finish and computes its own reward with the
environment's weights, ``-(cost_weight * usd + slo_weight * missed_slo + quality_weight
* bad_answer)``: the request's token cost, whether it missed its tenant's SLO (failures
included) and whether its answer was bad. Summed over requests these are exactly the
parts of the env's reward that routing decides (replica and storage cost are not
attributable to a route). It reads the outcome from ``env.unwrapped.platform.requests``
(public, read-only) and the id of the request being routed from
``env.unwrapped.platform.pending[0].request`` — during training only; the policy
itself acts on observations alone. Requests still in flight when the budget ends give no
reward. Rewards are multiplied by ``reward_scale`` (dollars to cents by default) so that
``alpha`` near 1 is a meaningful exploration bonus.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import gymnasium as gym
import numpy as np

from servegym.agents.io import layout_from_json, layout_to_json
from servegym.agents.seeds import training_seed
from servegym.envs.features import Layout
from servegym.policies.base import checked_observation, require_features
from servegym.sim.telemetry import COMPLETED, IN_FLIGHT

__all__ = ["BanditRouterLearner", "LinearBanditRouter"]

Algorithm = Literal["linucb", "thompson"]
_STATE_FILE = "bandit.npz"
_CONFIG_FILE = "bandit.json"


class LinearBanditRouter:
    """A per-backend linear reward model that routes by LinUCB, Thompson sampling or greedily.

    ``act(observation)`` returns a backend index (routing layout). ``update(observation,
    backend, reward)`` adds one observed reward. ``reset()`` re-seeds the sampler and
    keeps what was learned (the model is not episode memory). Public state, for
    exporters: ``A_inv`` (arms, d, d), ``c`` (arms, d), ``theta`` (arms, d) and
    :meth:`contexts` (the feature map).
    """

    def __init__(
        self,
        layout: Layout,
        backend_names: Sequence[str],
        algorithm: str = "linucb",
        alpha: float = 1.0,
        prior_precision: float = 1.0,
        explore: bool = True,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        if algorithm not in ("linucb", "thompson"):
            raise ValueError(f"{owner}: algorithm = {algorithm!r} is invalid: must be linucb or thompson")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"{owner}: alpha = {alpha!r} is invalid: must be a finite number >= 0")
        if not (math.isfinite(prior_precision) and prior_precision > 0):
            raise ValueError(f"{owner}: prior_precision = {prior_precision!r} is invalid: must be > 0")
        names = list(backend_names)
        in_layout = [n.removeprefix("busy_") for n in layout.names if n.startswith("busy_")]
        if names != in_layout:
            raise ValueError(f"{owner}: backend_names = {names!r} must be the layout's backends in order, {in_layout}")
        tenants = [n for n in layout.names if n.startswith("tenant_")]
        at = require_features(
            layout, [*tenants, "log_prompt_tokens", "difficulty", "queue_len"] + [f"busy_{b}" for b in names], owner
        )
        self.layout = layout
        self.backend_names = names
        self.algorithm: Algorithm = "linucb" if algorithm == "linucb" else "thompson"
        self.alpha = float(alpha)
        self.prior_precision = float(prior_precision)
        self.explore = explore
        self.seed = seed
        self._tenants = np.array([at[t] for t in tenants], dtype=np.intp)
        self._prompt, self._difficulty, self._queue = at["log_prompt_tokens"], at["difficulty"], at["queue_len"]
        self._busy = np.array([at[f"busy_{b}"] for b in names], dtype=np.intp)
        self.n_arms = len(names)
        self.dim = len(tenants) + 4
        self.A_inv = np.repeat(np.eye(self.dim)[None] / self.prior_precision, self.n_arms, axis=0)
        self.c = np.zeros((self.n_arms, self.dim))
        self.theta = np.zeros((self.n_arms, self.dim))
        self.updates = np.zeros(self.n_arms, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def contexts(self, observation: np.ndarray) -> np.ndarray:
        """The context vector of every arm for one observation, shape (arms, d)."""
        obs = checked_observation(observation, self.layout, type(self).__name__).astype(np.float64)
        shared = np.concatenate(
            [
                obs[self._tenants],
                [obs[self._prompt] / 10.0, obs[self._difficulty], math.log1p(max(obs[self._queue], 0.0)) / 5.0],
            ]
        )
        x = np.empty((self.n_arms, self.dim))
        x[:, :-1] = shared
        x[:, -1] = np.log1p(np.maximum(obs[self._busy], 0.0)) / 5.0
        return x

    def scores(self, observation: np.ndarray) -> np.ndarray:
        """Each arm's score: estimated reward, plus the exploration term when exploring."""
        x = self.contexts(observation)
        theta = self.theta
        if self.explore and self.algorithm == "thompson":
            theta = np.array(
                [self.rng.multivariate_normal(self.theta[a], self.alpha**2 * self.A_inv[a]) for a in range(self.n_arms)]
            )
        estimate: np.ndarray = np.einsum("ad,ad->a", theta, x)
        if self.explore and self.algorithm == "linucb":
            estimate += self.alpha * np.sqrt(np.maximum(np.einsum("ad,ade,ae->a", x, self.A_inv, x), 0.0))
        return estimate

    def act(self, observation: np.ndarray) -> int:
        return int(np.argmax(self.scores(observation)))

    def update(self, observation: np.ndarray, backend: int, reward: float) -> None:
        """Add the reward of sending the request seen in ``observation`` to ``backend``."""
        x = self.contexts(observation)[backend]
        A_inv = self.A_inv[backend]
        Ax = A_inv @ x
        A_inv -= np.outer(Ax, Ax) / (1.0 + x @ Ax)  # Sherman-Morrison: (A + x xᵀ)⁻¹
        self.c[backend] += reward * x
        self.theta[backend] = A_inv @ self.c[backend]
        self.updates[backend] += 1

    def reset(self) -> None:
        """Re-seed the sampler; the learned model stays."""
        self.rng = np.random.default_rng(self.seed)

    def frozen(self) -> LinearBanditRouter:
        """A greedy copy (no exploration, no randomness) for evaluation and export."""
        copy = LinearBanditRouter(
            self.layout, self.backend_names, self.algorithm, self.alpha, self.prior_precision, False, self.seed
        )
        copy.A_inv, copy.c, copy.theta, copy.updates = (
            self.A_inv.copy(),
            self.c.copy(),
            self.theta.copy(),
            self.updates.copy(),
        )
        return copy

    def save(self, directory: Path) -> None:
        """Write the configuration and layout (JSON) and the arms' statistics (``.npz``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "backend_names": self.backend_names,
            "algorithm": self.algorithm,
            "alpha": self.alpha,
            "prior_precision": self.prior_precision,
            "explore": self.explore,
            "seed": self.seed,
            "layout": layout_to_json(self.layout),
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2))
        np.savez(directory / _STATE_FILE, A_inv=self.A_inv, c=self.c, theta=self.theta, updates=self.updates)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The router :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        config = json.loads((directory / _CONFIG_FILE).read_text())
        layout = layout_from_json(config.pop("layout"))
        router = cls(layout, **config)
        with np.load(directory / _STATE_FILE) as state:
            router.A_inv, router.c = state["A_inv"], state["c"]
            router.theta, router.updates = state["theta"], state["updates"]
        return router


class BanditRouterLearner:
    """Trains a :class:`LinearBanditRouter` online on ``Routing-v0`` and returns it frozen.

    Hyperparameters: ``algorithm`` (``linucb`` or ``thompson``), ``alpha`` (UCB width or
    posterior scale), ``prior_precision`` (ridge λ), ``reward_scale`` (per-request rewards
    are multiplied by it; see the module docstring for the reward) and ``log_every``
    (steps between log calls). ``log`` receives ``bandit/mean_reward`` (mean
    per-request reward in dollars since the previous call), ``bandit/rewarded`` (requests
    rewarded so far) and ``bandit/share_<backend>`` (share of routes since the previous call).
    """

    def __init__(
        self,
        algorithm: str = "linucb",
        alpha: float = 1.0,
        prior_precision: float = 1.0,
        reward_scale: float = 100.0,
        log_every: int = 1_000,
    ) -> None:
        if not (math.isfinite(reward_scale) and reward_scale > 0):
            raise ValueError(f"{type(self).__name__}: reward_scale = {reward_scale!r} is invalid: must be > 0")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(f"{type(self).__name__}: log_every = {log_every!r} is invalid: must be an integer >= 1")
        if algorithm not in ("linucb", "thompson"):
            raise ValueError(f"{type(self).__name__}: algorithm = {algorithm!r} is invalid: must be linucb or thompson")
        self.algorithm = algorithm
        self.alpha = alpha
        self.prior_precision = prior_precision
        self.reward_scale = float(reward_scale)
        self.log_every = log_every

    def learn(
        self,
        env: gym.Env[Any, Any],
        total_timesteps: int,
        seed: int,
        log: Callable[[dict[str, float], int], None] | None = None,
    ) -> LinearBanditRouter:
        """Route ``total_timesteps`` requests on ``env`` (Routing-v0), learning from each one's outcome."""
        base: Any = env.unwrapped
        names = [b.name for b in base.scenario.backends]
        router = LinearBanditRouter(
            base.layout, names, self.algorithm, self.alpha, self.prior_precision, explore=True, seed=seed
        )
        slo_s = [t.slo_latency_s for t in base.scenario.workload.tenants]
        weights = (base.cost_weight, base.slo_weight, base.quality_weight)
        rewards: list[float] = []
        routes = np.zeros(len(names), dtype=np.int64)
        rewarded = 0

        def request_reward(table: Any, i: int) -> float:
            missed = table.outcome[i] != COMPLETED or table.end_s[i] - table.arrival_s[i] > slo_s[table.tenant[i]]
            bad = table.outcome[i] == COMPLETED and not table.good[i]
            return -float(weights[0] * table.cost_usd[i] + weights[1] * missed + weights[2] * bad)

        def emit(step: int) -> None:
            if log is None:
                return
            metrics = {"bandit/rewarded": float(rewarded)}
            if rewards:
                metrics["bandit/mean_reward"] = float(np.mean(rewards))
            if routes.sum():
                metrics.update({f"bandit/share_{b}": float(routes[k] / routes.sum()) for k, b in enumerate(names)})
            log(metrics, step)
            rewards.clear()
            routes[:] = 0

        obs, _ = env.reset(seed=training_seed(seed))
        waiting: list[tuple[int, int, np.ndarray]] = []  # (request, backend, observation)
        for step in range(1, total_timesteps + 1):
            request = base.platform.pending[0].request
            backend = router.act(obs)
            waiting.append((request, backend, obs))
            routes[backend] += 1
            obs, _, terminated, truncated, _ = env.step(backend)
            R = base.platform.requests
            still = []
            for entry in waiting:
                if R.outcome[entry[0]] == IN_FLIGHT:
                    still.append(entry)
                    continue
                reward = request_reward(R, entry[0])
                router.update(entry[2], entry[1], self.reward_scale * reward)
                rewards.append(reward)
                rewarded += 1
            waiting = still
            if step % self.log_every == 0:
                emit(step)
            if terminated or truncated:
                waiting = []  # the episode's unfinished requests never report
                obs, _ = env.reset()
        if total_timesteps % self.log_every:
            emit(total_timesteps)
        return router.frozen()
