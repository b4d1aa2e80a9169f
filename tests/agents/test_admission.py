"""Learned cache admission: labels from a run, a classifier, a policy in the env and the platform."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servegym.agents.admission import AdmissionLearner, CachingEnvPolicy, LearnedAdmission, reuse_labels
from servegym.policies import PolicyController
from servegym.sim.platform import Platform
from tests.agents.conftest import make, rollout_actions

OVERRIDES = [
    "workload.rate_rps=8.0",
    "workload.tenants.0.n_intents=500",
    "workload.tenants.1.n_intents=300",
    "cache.tiers.0.capacity=50",
    "cache.tiers.1.capacity=200",
    "cache.tiers.2.capacity=400",
]


def test_reuse_labels_follow_the_next_arrival_of_the_key() -> None:
    frame = {
        "key": np.array([7, 7, 7, 9, 9]),
        "arrival_s": np.array([0.0, 1.0, 5.0, 2.0, 6.0]),
        "end_s": np.array([2.0, 3.0, 5.1, 3.0, 7.0]),
        "hit_level": np.array([-1, -1, 0, -1, -1]),
    }
    # Request 0's answer (t=2) is next asked for at 5.0, a hit; request 3's at 6.0, a miss; 4 is never asked again.
    assert reuse_labels(frame, np.array([0, 3, 4])).tolist() == [True, False, False]


def test_the_learner_fits_a_classifier_and_the_policy_acts_everywhere(tmp_path: Path) -> None:
    env = make("servegym/Caching-v0", 400.0, OVERRIDES)
    logged: list[tuple[dict[str, float], int]] = []
    policy = AdmissionLearner(n_estimators=30).learn(env, 2500, seed=0, log=lambda m, s: logged.append((m, s)))
    metrics = logged[-1][0]
    assert metrics["admission/inserts"] > 1500
    assert 0.05 < metrics["admission/reuse_rate"] < 0.95
    assert metrics["admission/auc"] > 0.55  # frequency and recency carry signal about reuse
    names = policy.layout.names
    seen_once, seen_often = np.zeros(len(names), np.float32), np.zeros(len(names), np.float32)
    seen_once[policy.layout.index["key_requests"]] = 1
    seen_often[policy.layout.index["key_requests"]] = 20
    seen_once[policy.layout.index["log_key_age_s"]] = np.log1p(1e7)
    seen_often[policy.layout.index["log_key_age_s"]] = np.log1p(10.0)
    # the action is the thresholded reuse probability, whatever the probe
    for probe in (seen_once, seen_often):
        expected = policy.admit_level if policy.reuse_probability(probe) >= policy.threshold else 0
        assert policy.act(probe) == expected
    assert policy.reuse_probability(seen_once) != policy.reuse_probability(seen_often)

    base = env.unwrapped
    driver = CachingEnvPolicy(base.layout, policy, threshold_index=5)
    actions = rollout_actions(env, driver, seed=4, steps=600)
    assert {a[0] for a in actions} <= {0, 1}
    policy.save(tmp_path)
    loaded = LearnedAdmission.load(tmp_path)
    assert rollout_actions(env, CachingEnvPolicy(base.layout, loaded, 5), seed=4, steps=600) == actions

    platform = Platform(base.scenario, PolicyController(admission=loaded), seed=9)
    kpis = platform.run(until=150.0)
    assert kpis["all"]["requests"] > 800
    again = AdmissionLearner(n_estimators=30).learn(env, 2500, seed=0)
    probe = np.asarray([o for o in (seen_once, seen_often)])
    assert np.array_equal(again.estimator.predict_proba(probe), policy.estimator.predict_proba(probe))
