"""Policies of the scikit-learn learners exported and replayed by the numpy runtime on recorded observations.

Each learner is trained for a tiny budget on a small env (as tests/agents do); a model
need not be good for parity, only the same in and out of servegym. Stateful policies
(the predictive autoscaler's history, clock and work estimate; Thompson sampling's
random stream) replay a recorded run cut into episodes, with ``reset`` between them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.tree import DecisionTreeRegressor

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.admission import AdmissionLearner, CachingEnvPolicy, LearnedAdmission
from servegym.agents.bandit import BanditRouterLearner, LinearBanditRouter
from servegym.agents.distill import DistillationLearner, DistilledTreePolicy
from servegym.agents.forecast import WorkloadForecaster
from servegym.agents.predictive import PredictiveAutoscaler, PredictiveAutoscalerLearner
from servegym.deploy import runtime
from servegym.deploy.export import export_policy
from servegym.policies import HPA, FrequencyAdmission, scaling_kwargs
from tests.deploy.conftest import N_PARITY, RECORDED_OVERRIDES, Recorded

CACHE = ["workload.rate_rps=8.0", "cache.tiers.0.capacity=50", "cache.tiers.1.capacity=200"]


def _episodes(observations: np.ndarray, n: int) -> list[np.ndarray]:
    return np.array_split(observations, n)


def _replay(policy: Any, episodes: list[np.ndarray]) -> list[Any]:
    actions: list[Any] = []
    for episode in episodes:
        policy.reset()
        actions += [np.asarray(policy.act(o)).tolist() for o in episode]
    return actions


def _check_bundle(bundle: runtime.Bundle, episodes: list[np.ndarray], expected: list[Any]) -> None:
    """Single decisions and batches, episode by episode with resets, give the policy's actions."""
    single: list[Any] = []
    batch: list[Any] = []
    for episode in episodes:
        bundle.reset()
        single += [np.asarray(bundle.decide(o)).tolist() for o in episode]
    for episode in episodes:
        bundle.reset()
        batch += bundle.decide_batch(episode).tolist()
    assert single == expected
    assert batch == expected


# -- predictive autoscaler -----------------------------------------------------------------


@pytest.fixture(scope="module")
def autoscaling_env() -> gym.Env[Any, Any]:
    # A one-interval cold start: forecasts two intervals ahead keep the in-framework replay short.
    return gym.make(
        "servegym/Autoscaling-v0", duration_s=700.0, overrides=[*RECORDED_OVERRIDES, "pool.cold_start_mean_s=1"]
    )


# (regressor, observations replayed): scikit-learn's ensembles cost most of a millisecond per decision
# in servegym, so they replay shorter stretches; the kind replays >= 10,000 with the linear model
# (and with the Holt fallback below), and the native trees have their own 10,000-row parity tests.
PREDICTIVE = [("linear", N_PARITY + 100), ("gradient_boosting", 3_000), ("random_forest", 1_500)]


@pytest.mark.parametrize(("model", "n"), PREDICTIVE, ids=[m for m, _ in PREDICTIVE])
def test_predictive_autoscaler_parity(
    recorded: Recorded, autoscaling_env: gym.Env[Any, Any], tmp_path: Path, model: str, n: int
) -> None:
    learner = PredictiveAutoscalerLearner(model=model, lags=4, n_estimators=6, max_depth=4, period_s=200.0)
    policy = learner.learn(autoscaling_env, 600, seed=0)
    assert policy.layout.names == recorded.interval_layout.names
    assert policy.forecaster.fitted and policy.forecaster.use_calendar and policy.horizon == 2
    episodes = _episodes(recorded.interval[:n], 4)
    expected = _replay(policy, episodes)
    assert len(set(expected)) > 3

    bundle = runtime.load(export_policy(policy, tmp_path / model))
    assert bundle.kind == "predictive_autoscaler" and bundle.spec["policy"]["stateful"]
    assert bundle.spec["onnx"]["file"] is None and "history" in bundle.spec["onnx"]["reason"]
    _check_bundle(bundle, episodes, expected)
    # Mid-episode the runtime keeps its state like the policy: a reset is what makes them agree again.
    policy.reset()
    bundle.reset()
    for o in episodes[1][:50]:
        policy.act(o)
    assert [bundle.decide(o) for o in episodes[0][:200]] != [policy.act(o) for o in episodes[0][:200]]


def test_predictive_autoscaler_unfit_forecaster_replays_holt(recorded: Recorded, tmp_path: Path) -> None:
    forecaster = WorkloadForecaster("linear", horizon=9, interval_s=1.0, coverage=0.8)
    assert not forecaster.fitted
    policy = PredictiveAutoscaler(
        **scaling_kwargs(recorded.scenario), forecaster=forecaster, cold_start_s=8.0, slot_s_per_request=1.5
    )
    episodes = _episodes(recorded.interval, 3)
    expected = _replay(policy, episodes)
    assert len(recorded.interval) >= N_PARITY and len(set(expected)) > 3
    _check_bundle(runtime.load(export_policy(policy, tmp_path / "holt")), episodes, expected)


# -- bandit router ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routers(recorded: Recorded) -> dict[str, LinearBanditRouter]:
    env = gym.make("servegym/Routing-v0", duration_s=300.0, overrides=["workload.rate_rps=8.0"])
    out = {}
    for algorithm in ("linucb", "thompson"):
        frozen = BanditRouterLearner(algorithm=algorithm, log_every=1_000).learn(env, 1_500, seed=0)
        assert frozen.layout.names == recorded.routing_layout.names
        out[f"{algorithm}_frozen"] = frozen
        exploring = LinearBanditRouter(
            frozen.layout, frozen.backend_names, algorithm, frozen.alpha, frozen.prior_precision, True, seed=5
        )
        exploring.A_inv, exploring.c, exploring.theta = frozen.A_inv.copy(), frozen.c.copy(), frozen.theta.copy()
        out[f"{algorithm}_exploring"] = exploring
    return out


# Thompson sampling's in-framework draws cost ~0.2 ms a decision: it replays 3,000 (the greedy
# and UCB routers of the same kind replay them all).
BANDITS = [
    ("linucb_frozen", None),
    ("thompson_frozen", None),
    ("linucb_exploring", None),
    ("thompson_exploring", 3_000),
]


@pytest.mark.parametrize(("name", "n"), BANDITS, ids=[b for b, _ in BANDITS])
def test_bandit_router_parity(
    recorded: Recorded, routers: dict[str, LinearBanditRouter], tmp_path: Path, name: str, n: int | None
) -> None:
    router = copy.deepcopy(routers[name])
    episodes = _episodes(recorded.routing[:n], 2)
    expected = _replay(router, episodes)
    assert (n is not None or len(recorded.routing) >= N_PARITY) and len(set(expected)) > 1
    bundle = runtime.load(export_policy(router, tmp_path / name))
    assert bundle.kind == "linear_bandit"
    assert bundle.spec["policy"]["stateful"] == (name == "thompson_exploring")
    assert bundle.spec["action"]["labels"] == recorded.backend_names
    _check_bundle(bundle, episodes, expected)


# -- learned admission, alone and wrapped for Caching-v0 -----------------------------------


@pytest.fixture(scope="module")
def caching_env() -> gym.Env[Any, Any]:
    return gym.make("servegym/Caching-v0", duration_s=400.0, overrides=CACHE)


@pytest.fixture(scope="module")
def admission(caching_env: gym.Env[Any, Any]) -> LearnedAdmission:
    return AdmissionLearner(n_estimators=10, threshold=0.3).learn(caching_env, 2_500, seed=0)


@pytest.fixture(scope="module")
def caching_observations(caching_env: gym.Env[Any, Any], admission: LearnedAdmission) -> np.ndarray:
    """Caching-v0 observations (admission and threshold decisions) from runs driven by the learned admission."""
    driver = CachingEnvPolicy.nearest(caching_env, admission)
    seen = []
    obs, _ = caching_env.reset(seed=3)
    while len(seen) < N_PARITY:
        seen.append(np.array(obs, dtype=np.float32))
        obs, _, terminated, truncated, _ = caching_env.step(driver.act(obs))
        if terminated or truncated:
            obs, _ = caching_env.reset()
    return np.stack(seen)


def test_learned_admission_parity(recorded: Recorded, admission: LearnedAdmission, tmp_path: Path) -> None:
    assert admission.layout.names == recorded.admission_layout.names
    observations = recorded.admission
    expected = [admission.act(o) for o in observations]
    assert len(observations) >= N_PARITY and set(expected) == {0, 1}
    bundle = runtime.load(export_policy(admission, tmp_path / "admission"))
    assert bundle.kind == "learned_admission" and bundle.spec["action"]["labels"][0] == "none"
    _check_bundle(bundle, [observations], expected)

    session = ort.InferenceSession(str(tmp_path / "admission" / "policy.onnx"), providers=["CPUExecutionProvider"])
    action, probabilities = session.run(["action", "probabilities"], {"observation": observations})
    assert (action == np.asarray(expected)).mean() > 0.999  # float32 trees: rare ties at the threshold
    reuse = admission.estimator.predict_proba(observations.astype(np.float64))[:, 1]
    np.testing.assert_allclose(probabilities[:, 1], reuse, atol=1e-5)


@pytest.mark.parametrize("inner", ["learned", "frequency"])
def test_caching_env_policy_parity(
    caching_env: gym.Env[Any, Any],
    admission: LearnedAdmission,
    caching_observations: np.ndarray,
    tmp_path: Path,
    inner: str,
) -> None:
    base: Any = caching_env.unwrapped
    chosen = admission if inner == "learned" else FrequencyAdmission(base.admission, min_requests=2)
    policy = CachingEnvPolicy(base.layout, chosen, threshold_index=3)
    observations = caching_observations
    expected = [policy.act(o).tolist() for o in observations]
    flag = base.layout.index["decision_is_threshold"]
    assert (observations[:, flag] > 0.5).any() and {a[0] for a in expected} == {0, 1}
    bundle = runtime.load(export_policy(policy, tmp_path / inner, env_id="servegym/Caching-v0"))
    assert bundle.kind == "caching_env" and bundle.spec["policy"]["admission"]["kind"] in (
        "learned_admission",
        "frequency_admission",
    )
    _check_bundle(bundle, [observations], expected)
    if inner == "learned":
        session = ort.InferenceSession(str(tmp_path / inner / "policy.onnx"), providers=["CPUExecutionProvider"])
        graph = session.run(["action"], {"observation": observations})[0]
        assert graph.shape == (len(observations), 2)
        assert (graph == np.asarray(expected)).all(axis=1).mean() > 0.999
    else:
        assert bundle.spec["onnx"]["file"] is None and bundle.spec["onnx"]["reason"]


# -- distilled trees ----------------------------------------------------------------------------


def test_distilled_discrete_parity(recorded: Recorded, autoscaling_env: gym.Env[Any, Any], tmp_path: Path) -> None:
    base: Any = autoscaling_env.unwrapped
    teacher = HPA(**scaling_kwargs(base.scenario), target_utilisation=0.5)
    student = DistillationLearner(teacher, max_depth=5, dagger_rounds=2).learn(autoscaling_env, 400, seed=0)
    assert student.kind == "discrete" and student.layout.names == recorded.interval_layout.names
    observations = recorded.interval
    expected = [student.act(o) for o in observations]
    assert len(set(expected)) > 2
    bundle = runtime.load(export_policy(student, tmp_path / "discrete", env_id="servegym/Autoscaling-v0"))
    assert bundle.kind == "distilled_trees"
    _check_bundle(bundle, [observations], expected)
    assert all(type(bundle.decide(o)) is int for o in observations[:20])
    session = ort.InferenceSession(str(tmp_path / "discrete" / "policy.onnx"), providers=["CPUExecutionProvider"])
    graph = session.run(["action"], {"observation": observations})[0]
    assert (graph == np.asarray(expected)).mean() > 0.999


def test_distilled_multi_discrete_parity(
    caching_env: gym.Env[Any, Any], caching_observations: np.ndarray, tmp_path: Path
) -> None:
    base: Any = caching_env.unwrapped
    teacher = CachingEnvPolicy(base.layout, FrequencyAdmission(base.admission), threshold_index=5)
    student = DistillationLearner(teacher, max_depth=3, dagger_rounds=1).learn(caching_env, 1_000, seed=0)
    assert student.kind == "multi_discrete" and len(student.estimators) == 2
    expected = [student.act(o).tolist() for o in caching_observations]
    assert len({a[0] for a in expected}) > 1
    bundle = runtime.load(export_policy(student, tmp_path / "multi", env_id="servegym/Caching-v0"))
    _check_bundle(bundle, [caching_observations], expected)
    session = ort.InferenceSession(str(tmp_path / "multi" / "policy.onnx"), providers=["CPUExecutionProvider"])
    graph = session.run(["action"], {"observation": caching_observations})[0]
    assert graph.shape == (len(caching_observations), 2)
    assert (graph == np.asarray(expected)).all(axis=1).mean() > 0.999


def test_distilled_continuous_parity(recorded: Recorded, tmp_path: Path) -> None:
    # No servegym env has a Box action: the policy is built from a multi-output regressor directly.
    X = recorded.interval.astype(np.float64)
    targets = np.column_stack([X[:, 0] * 0.4, np.tanh(X[:, 2] - 0.5)])
    tree = DecisionTreeRegressor(max_depth=6, random_state=0).fit(X[:2_000], targets[:2_000])
    student = DistilledTreePolicy(recorded.interval_layout, [tree], "continuous")
    observations = recorded.interval
    expected = np.stack([student.act(o) for o in observations])
    assert expected.dtype == np.float32 and expected.shape == (len(observations), 2)
    bundle = runtime.load(export_policy(student, tmp_path / "continuous"))
    single = np.stack([bundle.decide(o) for o in observations])
    np.testing.assert_allclose(single, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(bundle.decide_batch(observations), expected, rtol=0, atol=1e-5)
    session = ort.InferenceSession(str(tmp_path / "continuous" / "policy.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["action"], {"observation": observations})[0], expected, atol=1e-4)
