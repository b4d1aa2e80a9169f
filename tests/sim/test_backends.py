"""The backend model, recomputed call by call from the request records.

Every call's duration, status, billed tokens and answer quality are a pure function of
the request's attributes, its per-request uniforms and the number of calls in service on
the backend when it starts; the records hold all of these (concurrency is rebuilt from
start and end times), so the whole model can be checked exactly, not statistically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from servegym.sim.config import (
    BackendConfig,
    CacheConfig,
    ControlConfig,
    PoolConfig,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
    TokenLengths,
    WorkloadConfig,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED, FAILED_ERROR, FAILED_TIMEOUT, IN_FLIGHT

BACKENDS = (
    BackendConfig(name="lognormal", service_cv=0.5, tpot_concurrency_slope=0.05, failure_prob=0.05, timeout_s=1e6),
    BackendConfig(
        name="exponential",
        service_distribution="exponential",
        ttft_base_s=0.1,
        tpot_base_s=0.04,
        tpot_concurrency_slope=0.1,
        capability=0.3,
        quality_slope=4.0,
        timeout_s=3.0,  # long calls time out
    ),
    BackendConfig(name="deterministic", service_distribution="deterministic", failure_prob=0.1, capability=0.9),
)


@pytest.fixture(scope="module")
def run() -> Platform:
    scenario = ScenarioConfig(
        name="backends",
        seed=9,
        duration_s=200.0,
        workload=WorkloadConfig(
            rate_rps=25.0,
            tenants=(TenantConfig(tokens=TokenLengths(prompt_mu=6.0, output_mu=3.5, output_sigma=0.8)),),
            embedding_dim=4,
        ),
        backends=BACKENDS,
        pool=PoolConfig(initial_replicas=8, min_replicas=8, max_replicas=8, slots_per_replica=4, max_queue=10_000),
        cache=CacheConfig(semantic=SemanticCacheConfig(enabled=False)),
        control=ControlConfig(routing="random", scaling="static"),
    )
    platform = Platform(scenario)
    platform.run()
    return platform


def _concurrency(cols: dict[str, np.ndarray], called: np.ndarray) -> np.ndarray:
    """Calls in service on the same backend when each call started, itself included."""
    busy = np.zeros(len(cols["start_s"]), dtype=np.int64)
    end = np.where(np.isnan(cols["end_s"]), np.inf, cols["end_s"])
    for b in np.unique(cols["backend"][called]):
        ids = np.flatnonzero(called & (cols["backend"] == b))
        order = ids[np.lexsort((ids, cols["start_s"][ids]))]  # start order; same-instant starts by request id
        started_before = np.arange(1, len(order) + 1)
        ended_before = np.searchsorted(np.sort(end[order]), cols["start_s"][order], side="right")
        busy[order] = started_before - ended_before
    return busy


def test_every_call_follows_the_backend_model(run: Platform) -> None:
    cols = run.requests.frame()
    called = cols["backend"] >= 0
    finished = called & (cols["outcome"] != IN_FLIGHT)
    busy = _concurrency(cols, called)
    statuses = set()
    for i in np.flatnonzero(finished):
        cfg = BACKENDS[cols["backend"][i]]
        if cfg.service_distribution == "lognormal":
            sigma = math.sqrt(math.log(1 + cfg.service_cv**2))
            variation = math.exp(sigma * cols["z_service"][i] - sigma**2 / 2)
        elif cfg.service_distribution == "exponential":
            variation = -math.log(1 - cols["u_service"][i])
        else:
            variation = 1.0
        prompt, output = int(cols["prompt_tokens"][i]), int(cols["output_tokens"][i])
        ttft = (cfg.ttft_base_s + cfg.ttft_per_prompt_token_s * prompt) * variation
        tpot = cfg.tpot_base_s * (1 + cfg.tpot_concurrency_slope * (busy[i] - 1)) * variation
        duration = cols["end_s"][i] - cols["start_s"][i]
        outcome = cols["outcome"][i]
        if cols["u_failure"][i] < cfg.failure_prob:
            expected = (FAILED_ERROR, min(ttft, cfg.timeout_s), prompt, 0)
        elif ttft + tpot * output > cfg.timeout_s:
            generated = 0 if ttft >= cfg.timeout_s else int((cfg.timeout_s - ttft) / tpot)
            expected = (FAILED_TIMEOUT, cfg.timeout_s, prompt, min(generated, output))
        else:
            expected = (COMPLETED, ttft + tpot * output, prompt, output)
            p_good = 1 / (1 + math.exp(-cfg.quality_slope * (cfg.capability - cols["difficulty"][i])))
            assert cols["good"][i] == (cols["u_quality"][i] < p_good), i
        status, want_s, tokens_in, tokens_out = expected
        assert outcome == status, i
        assert duration == pytest.approx(want_s, rel=1e-9, abs=1e-9), i
        assert (cols["tokens_in"][i], cols["tokens_out"][i]) == (tokens_in, tokens_out), i
        statuses.add(status)
    assert statuses == {COMPLETED, FAILED_ERROR, FAILED_TIMEOUT}
    assert busy[finished].max() > 3  # concurrency really varied


def test_service_variation_has_mean_one(run: Platform) -> None:
    """The multiplier of the lognormal backend has mean 1 and the configured coefficient of variation."""
    cols = run.requests.frame()
    cfg = BACKENDS[0]
    mask = (cols["backend"] == 0) & (cols["outcome"] != IN_FLIGHT)
    sigma = math.sqrt(math.log(1 + cfg.service_cv**2))
    variation = np.exp(sigma * cols["z_service"][mask] - sigma**2 / 2)
    n = len(variation)
    assert abs(variation.mean() - 1.0) < 4 * cfg.service_cv / math.sqrt(n)
    assert variation.std() / variation.mean() == pytest.approx(cfg.service_cv, rel=0.15)


def test_huge_quality_slope_is_a_step(small_scenario: ScenarioConfig) -> None:
    """A valid config (any finite slope > 0) must not overflow: the logistic becomes a step."""
    backend = BackendConfig(name="step", quality_slope=5000.0, capability=0.5, failure_prob=0.0)
    scenario = ScenarioConfig(
        duration_s=20.0,
        workload=small_scenario.workload,
        backends=(backend,),
        cache=CacheConfig(semantic=SemanticCacheConfig(enabled=False)),
    )
    platform = Platform(scenario)
    platform.run()
    cols = platform.requests.frame()
    done = cols["outcome"] == COMPLETED
    far = np.abs(cols["difficulty"] - 0.5) > 0.05
    assert np.any(done & (cols["difficulty"] > 0.65))  # 5000 * 0.15 > 709: math.exp would overflow here
    assert np.array_equal(cols["good"][done & far], (cols["difficulty"] < 0.5)[done & far])
