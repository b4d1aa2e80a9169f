"""Arrival processes and request attributes have the statistics they are configured with.

Each check compares an estimate with its analytic value within 4 standard errors, the
standard error coming either from the exact distribution (Poisson and binomial counts)
or from batch means (20 consecutive batches), so a false alarm has probability around
1e-4 to 1e-3 for a fixed seed and the tests are deterministic anyway.
"""

from __future__ import annotations

import math

import numpy as np

from servegym.sim.config import FlashCrowd, TenantConfig, WorkloadConfig
from servegym.sim.random import Streams
from servegym.sim.workload import Workload

TENANT = TenantConfig(n_intents=100, n_variants=2, zipf_s=1.1)


def _arrivals(cfg: WorkloadConfig, duration_s: float, seed: int = 0) -> tuple[Workload, dict[str, np.ndarray]]:
    workload = Workload(cfg, Streams(seed))
    batches = list(workload.batches(duration_s))
    cols = {name: np.concatenate([getattr(b, name) for b in batches]) for name in ("arrival_s", "tenant", "intent")}
    cols["prompt_tokens"] = np.concatenate([b.prompt_tokens for b in batches])
    cols["variant"] = np.concatenate([b.variant for b in batches])
    return workload, cols


def _cv_batches(gaps: np.ndarray, batches: int = 20) -> tuple[float, float]:
    """Coefficient of variation of the gaps, and its standard error from batch estimates."""
    cvs = np.array([chunk.std() / chunk.mean() for chunk in np.array_split(gaps, batches)])
    return float(gaps.std() / gaps.mean()), float(cvs.std(ddof=1) / math.sqrt(batches))


def _expected_count(workload: Workload, a: float, b: float, steps: int = 200_001) -> float:
    """The integral of the configured rate over [a, b] (trapezoid on a fine grid)."""
    t = np.linspace(a, b, steps)
    return float(np.trapezoid(workload.rate_at(t), t))


def test_poisson_rate_and_exponential_gaps() -> None:
    cfg = WorkloadConfig(kind="poisson", rate_rps=100.0, tenants=(TENANT,))
    _, cols = _arrivals(cfg, 300.0)
    t = cols["arrival_s"]
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 300.0
    expected = 100.0 * 300.0
    assert abs(len(t) - expected) < 4 * math.sqrt(expected)
    cv, se = _cv_batches(np.diff(t))
    assert abs(cv - 1.0) < 4 * se, (cv, se)


def test_gamma_renewal_has_requested_cv() -> None:
    cfg = WorkloadConfig(kind="gamma", rate_rps=50.0, cv=3.0, tenants=(TENANT,))
    _, cols = _arrivals(cfg, 2000.0)
    gaps = np.diff(cols["arrival_s"])
    batch_means = np.array([chunk.mean() for chunk in np.array_split(gaps, 20)])
    assert abs(gaps.mean() - 1 / 50.0) < 4 * batch_means.std(ddof=1) / math.sqrt(20)
    cv, se = _cv_batches(gaps)
    assert abs(cv - 3.0) < 4 * se, (cv, se)
    assert cv > 2.5


def test_diurnal_arrivals_follow_the_profile() -> None:
    cfg = WorkloadConfig(kind="diurnal", rate_rps=40.0, amplitude=0.8, period_s=200.0, peak_s=50.0, tenants=(TENANT,))
    workload, cols = _arrivals(cfg, 800.0)
    t = cols["arrival_s"]
    # Windows of 40 s around the peak and around the trough, in each of the four periods.
    near_peak = sum(int(((t >= c - 20) & (t < c + 20)).sum()) for c in (50, 250, 450, 650))
    near_trough = sum(int(((t >= c - 20) & (t < c + 20)).sum()) for c in (150, 350, 550, 750))
    expected_peak = sum(_expected_count(workload, c - 20, c + 20) for c in (50, 250, 450, 650))
    expected_trough = sum(_expected_count(workload, c - 20, c + 20) for c in (150, 350, 550, 750))
    assert abs(near_peak - expected_peak) < 4 * math.sqrt(expected_peak)
    assert abs(near_trough - expected_trough) < 4 * math.sqrt(expected_trough)
    assert near_peak > 4 * near_trough  # 1.8 vs 0.2 times the base rate at the extremes
    expected_all = _expected_count(workload, 0.0, 800.0)
    assert abs(len(t) - expected_all) < 4 * math.sqrt(expected_all)


def test_mmpp_is_burstier_than_poisson() -> None:
    cfg = WorkloadConfig(
        kind="mmpp", rate_rps=5.0, burst_rate_rps=100.0, mean_calm_s=30.0, mean_burst_s=10.0, tenants=(TENANT,)
    )
    workload, cols = _arrivals(cfg, 3000.0)
    t = cols["arrival_s"]
    # Given the realised switching times, arrivals are Poisson with the piecewise rate.
    expected = _expected_count(workload, 0.0, 3000.0, steps=3_000_001)
    assert abs(len(t) - expected) < 4 * math.sqrt(expected) + 1  # +1: grid error at the switches
    cv, se = _cv_batches(np.diff(t))
    assert cv - 4 * se > 1.0, (cv, se)
    switches = workload._mmpp_switch_s
    assert switches is not None and len(switches) > 50
    calm = np.diff(np.concatenate([[0.0], switches]))[0::2]
    burst = np.diff(switches)[0::2]
    assert abs(calm.mean() - 30.0) < 4 * 30.0 / math.sqrt(len(calm))  # exponential: sd = mean
    assert abs(burst.mean() - 10.0) < 4 * 10.0 / math.sqrt(len(burst))


def test_flash_crowd_multiplies_arrivals_in_its_window() -> None:
    crowd = FlashCrowd(start_s=100.0, duration_s=50.0, multiplier=6.0)
    cfg = WorkloadConfig(kind="poisson", rate_rps=20.0, flash_crowds=(crowd,), tenants=(TENANT,))
    _, cols = _arrivals(cfg, 300.0)
    t = cols["arrival_s"]
    inside = int(((t >= 100.0) & (t < 150.0)).sum())
    outside = len(t) - inside
    expected_in, expected_out = 20.0 * 6.0 * 50.0, 20.0 * 250.0
    assert abs(inside - expected_in) < 4 * math.sqrt(expected_in)
    assert abs(outside - expected_out) < 4 * math.sqrt(expected_out)


def test_zipf_top_intent_frequency() -> None:
    n, s = 100, 1.1
    cfg = WorkloadConfig(kind="poisson", rate_rps=200.0, tenants=(TenantConfig(n_intents=n, zipf_s=s),))
    _, cols = _arrivals(cfg, 100.0)
    intent = cols["intent"]
    p_top = 1.0 / sum(k**-s for k in range(1, n + 1))  # 1 / H(n, s)
    freq = float((intent == 0).mean())
    assert abs(freq - p_top) < 4 * math.sqrt(p_top * (1 - p_top) / len(intent)), (freq, p_top)
    counts = np.bincount(intent, minlength=n)
    assert counts.argmax() == 0 and counts[0] > counts[1] > counts[9]
    assert intent.min() >= 0 and intent.max() < n


def test_drift_rotates_the_popular_intents() -> None:
    tenant = TenantConfig(n_intents=100, zipf_s=1.2, drift_every_s=50.0, drift_shift=7)
    cfg = WorkloadConfig(kind="poisson", rate_rps=200.0, tenants=(tenant,))
    _, cols = _arrivals(cfg, 150.0)
    t, intent = cols["arrival_s"], cols["intent"]
    for epoch in range(3):
        in_epoch = (t >= 50.0 * epoch) & (t < 50.0 * (epoch + 1))
        counts = np.bincount(intent[in_epoch], minlength=100)
        assert counts.argmax() == (7 * epoch) % 100, epoch


def test_tenant_shares_and_token_lengths() -> None:
    tenants = (
        TenantConfig(name="chat", weight=0.7, n_intents=50),
        TenantConfig(name="code", weight=0.3, n_intents=50, n_variants=3, tokens=TENANT.tokens.coding()),
    )
    cfg = WorkloadConfig(kind="poisson", rate_rps=200.0, tenants=tenants)
    _, cols = _arrivals(cfg, 100.0)
    tenant = cols["tenant"]
    share = float((tenant == 0).mean())
    assert abs(share - 0.7) < 4 * math.sqrt(0.21 / len(tenant))
    # Lognormal tokens: the median is exp(mu) (rounding to integers moves it by under one token).
    for k, tok in enumerate((tenants[0].tokens, tenants[1].tokens)):
        prompts = cols["prompt_tokens"][tenant == k]
        m = len(prompts)
        # The sample median of a lognormal has sd ~ sqrt(pi / 2) * sigma * median / sqrt(m).
        sd = math.sqrt(math.pi / 2) * tok.prompt_sigma * math.exp(tok.prompt_mu) / math.sqrt(m)
        assert abs(np.median(prompts) - math.exp(tok.prompt_mu)) < 4 * sd + 1
    assert cols["variant"][tenant == 1].max() == 2 and cols["variant"][tenant == 0].max() == tenants[0].n_variants - 1


def test_same_seed_same_requests() -> None:
    """Two workloads with the same seed give the same requests; a different seed does not."""
    cfg = WorkloadConfig(kind="poisson", rate_rps=50.0, tenants=(TENANT, TenantConfig(name="b")))
    _, a = _arrivals(cfg, 200.0, seed=4)
    _, b = _arrivals(cfg, 200.0, seed=4)
    _, c = _arrivals(cfg, 200.0, seed=5)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert not np.array_equal(a["arrival_s"][:100], c["arrival_s"][:100])
