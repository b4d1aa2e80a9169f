"""Learners that produce policies behind the common interface (``act``/``reset``).

- stable-baselines3 (:mod:`servegym.agents.sb3`): PPO, A2C, DQN, SAC and MaskablePPO,
  frozen into :class:`SB3Policy`.
- scikit-learn: a conformal workload forecaster (:mod:`~servegym.agents.forecast`) driving
  a predictive autoscaler (:mod:`~servegym.agents.predictive`), a contextual-bandit router
  (:mod:`~servegym.agents.bandit`), learned cache admission
  (:mod:`~servegym.agents.admission`) and distillation into decision trees
  (:mod:`~servegym.agents.distill`).

Every learner has ``learn(env, total_timesteps, seed, log) -> policy`` (SB3 models are
driven by ``servegym train``), and every policy it returns saves to and loads from a
directory (:func:`save_policy`, :func:`load_policy`).
"""

from servegym.agents.admission import AdmissionLearner, CachingEnvPolicy, LearnedAdmission
from servegym.agents.bandit import BanditRouterLearner, LinearBanditRouter
from servegym.agents.distill import DistillationLearner, DistilledTreePolicy
from servegym.agents.forecast import Forecast, WorkloadForecaster
from servegym.agents.io import load_policy, save_policy
from servegym.agents.predictive import PredictiveAutoscaler, PredictiveAutoscalerLearner
from servegym.agents.sb3 import ALGORITHMS, DiscreteAsBox, SB3Policy

__all__ = [
    "ALGORITHMS",
    "AdmissionLearner",
    "BanditRouterLearner",
    "CachingEnvPolicy",
    "DiscreteAsBox",
    "DistillationLearner",
    "DistilledTreePolicy",
    "Forecast",
    "LearnedAdmission",
    "LinearBanditRouter",
    "PredictiveAutoscaler",
    "PredictiveAutoscalerLearner",
    "SB3Policy",
    "WorkloadForecaster",
    "load_policy",
    "save_policy",
]
