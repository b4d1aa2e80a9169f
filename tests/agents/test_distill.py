"""Distillation into a decision tree: fidelity to simple teachers, readable rules, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from servegym.agents.admission import CachingEnvPolicy
from servegym.agents.distill import DistillationLearner, DistilledTreePolicy
from servegym.envs.features import Layout
from servegym.policies import FrequencyAdmission, PolicyController, checked_observation
from servegym.sim.platform import Platform
from tests.agents.conftest import DIURNAL, make, rollout_actions


class UtilisationBands:
    """A memoryless threshold rule: 2, 6 or 10 replicas by utilisation band."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._at = layout.index["utilisation"]

    def act(self, observation: np.ndarray) -> int:
        u = float(checked_observation(observation, self.layout, "bands")[self._at])
        return 2 if u < 0.3 else 6 if u < 0.6 else 10

    def reset(self) -> None:
        pass


def test_a_threshold_rule_is_distilled_faithfully_and_readably(tmp_path: Path) -> None:
    env = make("servegym/Autoscaling-v0", 600.0, [*DIURNAL, "workload.rate_rps=10.0", "control.interval_s=10.0"])
    teacher = UtilisationBands(env.unwrapped.layout)
    logged: list[tuple[dict[str, float], int]] = []
    learner = DistillationLearner(teacher, max_depth=3, dagger_rounds=3)
    student = learner.learn(env, 240, seed=0, log=lambda m, s: logged.append((m, s)))
    assert [s for _, s in logged] == [80, 160]
    assert learner.metrics["distill/fidelity"] >= 0.9, logged
    rules = student.rules()
    assert "utilisation" in rules and "class: 10" in rules
    actions = rollout_actions(env, student, seed=2, steps=59)
    student.save(tmp_path)
    assert rollout_actions(env, DistilledTreePolicy.load(tmp_path), seed=2, steps=59) == actions
    platform = Platform(env.unwrapped.scenario, PolicyController(scaling=student), seed=1)
    platform.run()
    assert {m.target_replicas for m in platform.intervals} <= {2, 6, 10} | {
        env.unwrapped.scenario.pool.initial_replicas
    }


def test_a_multi_discrete_teacher_gets_one_tree_per_component() -> None:
    env = make("servegym/Caching-v0", 200.0, ["workload.rate_rps=8.0"])
    base = env.unwrapped
    teacher = CachingEnvPolicy(base.layout, FrequencyAdmission(base.admission), threshold_index=5)
    learner = DistillationLearner(teacher, max_depth=2, dagger_rounds=1)
    student = learner.learn(env, 1000, seed=0)
    assert len(student.estimators) == 2 and student.kind == "multi_discrete"
    assert learner.metrics["distill/fidelity"] >= 0.99
    assert "key_requests" in student.rules()
    action = student.act(np.zeros(len(base.layout), dtype=np.float32))
    assert env.action_space.contains(action)
