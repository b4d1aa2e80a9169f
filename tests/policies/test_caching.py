"""Admission and threshold policies on hand-made observations."""

from __future__ import annotations

import numpy as np
import pytest

from servegym.envs.features import admission_layout, interval_layout
from servegym.policies import AdmitAll, AdmitNone, FixedThreshold, FrequencyAdmission, make_policy
from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import Platform


@pytest.fixture(scope="module")
def platform(small_scenario: ScenarioConfig) -> Platform:
    """Two exact tiers and a semantic tier: three cache levels."""
    return Platform(small_scenario)


def admission_obs(platform: Platform, key_requests: float, **features: float) -> np.ndarray:
    layout = admission_layout(platform)
    vector = np.zeros(len(layout), dtype=np.float32)
    vector[layout.index["key_requests"]] = key_requests
    for name, value in features.items():
        vector[layout.index[name]] = value
    return vector


def test_admit_all_and_admit_none(platform: Platform) -> None:
    layout = admission_layout(platform)
    assert AdmitAll(layout).n_levels == 3
    assert AdmitAll(layout).act(admission_obs(platform, 1)) == 1
    assert AdmitNone(layout).act(admission_obs(platform, 9)) == 0


@pytest.mark.parametrize(("min_requests", "key_requests", "expected"), [(2, 1, 0), (2, 2, 1), (2, 7, 1), (4, 3, 0)])
def test_frequency_admission_is_a_doorkeeper(
    platform: Platform, min_requests: int, key_requests: int, expected: int
) -> None:
    policy = FrequencyAdmission(admission_layout(platform), min_requests=min_requests)
    action = policy.act(admission_obs(platform, key_requests, fill_memory=1.0, good_answer=1.0))
    assert type(action) is int and action == expected


def test_admission_policies_validate_arguments_and_observations(platform: Platform) -> None:
    layout = admission_layout(platform)
    with pytest.raises(ValueError, match="min_requests = 0 is invalid"):
        FrequencyAdmission(layout, min_requests=0)
    bad = admission_obs(platform, 2)
    bad[layout.index["key_requests"]] = np.nan
    with pytest.raises(ValueError, match=r"'key_requests'.*not a finite number"):
        FrequencyAdmission(layout).act(bad)
    with pytest.raises(ValueError, match="shape"):
        AdmitAll(layout).act(bad[:3])
    uncached = Platform(ScenarioConfig(duration_s=1.0))  # no tiers, no semantic cache
    with pytest.raises(ValueError, match="no fill_<level> features"):
        AdmitAll(admission_layout(uncached))


def test_fixed_threshold_returns_its_threshold(small_scenario: ScenarioConfig) -> None:
    layout = interval_layout(small_scenario)
    policy = make_policy("fixed_threshold", layout=layout, threshold=0.85)
    assert isinstance(policy, FixedThreshold)
    action = policy.act(np.zeros(len(layout), dtype=np.float32))
    assert type(action) is float and action == 0.85
    with pytest.raises(ValueError, match=r"threshold = 1.5 is invalid"):
        FixedThreshold(layout, threshold=1.5)
    with pytest.raises(ValueError, match="shape"):
        policy.act(np.zeros(3, dtype=np.float32))
