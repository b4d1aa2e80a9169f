"""Model backends: how long a call takes, what it costs, whether the answer is good.

A backend's behaviour for one request is a pure function of the request's attributes,
its per-request uniforms and the backend's state when the call starts (concurrency,
faults). That keeps common random numbers intact: the same request routed to the same
backend in the same state behaves the same under every policy.
"""

from __future__ import annotations

import math

from servegym.sim.config import BackendConfig

__all__ = ["FAILED_ERROR", "FAILED_TIMEOUT", "OK", "Backend", "CallResult"]

OK = 0
FAILED_ERROR = 1
FAILED_TIMEOUT = 2

# (duration_s, status, input tokens billed, output tokens billed)
CallResult = tuple[float, int, int, int]


class Backend:
    """One model endpoint with its latency, price, quality and reliability model."""

    def __init__(self, cfg: BackendConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.usd_in = cfg.usd_per_mtok_in / 1e6
        self.usd_out = cfg.usd_per_mtok_out / 1e6
        self.busy = 0
        self.slowdown = 1.0
        self.slowdowns: list[float] = []  # factors of active slowdown incidents
        self.down = 0  # active outages (they may overlap)
        self.outage_error_s = 0.05
        dist = cfg.service_distribution
        self._dist = dist
        if dist == "lognormal":
            self._sigma = math.sqrt(math.log1p(cfg.service_cv**2))
            self._shift = -0.5 * self._sigma**2

    def variation(self, u: float, z: float) -> float:
        """The service-time multiplier (mean 1) for a request's uniform ``u`` / normal ``z``."""
        if self._dist == "exponential":
            return -math.log1p(-u)
        if self._dist == "lognormal":
            return math.exp(self._sigma * z + self._shift)
        return 1.0

    def p_good(self, difficulty: float) -> float:
        """Probability of a good answer: logistic in capability minus difficulty."""
        # tanh form of the logistic: no overflow for steep slopes.
        return 0.5 * (1.0 + math.tanh(0.5 * self.cfg.quality_slope * (self.cfg.capability - difficulty)))

    def call(self, prompt_tokens: int, output_tokens: int, u: float, z: float, u_failure: float) -> CallResult:
        """Simulate one call starting now, with ``self.busy`` counting this call."""
        cfg = self.cfg
        if self.down:
            return (self.outage_error_s, FAILED_ERROR, 0, 0)
        factor = self.variation(u, z) * self.slowdown
        ttft = (cfg.ttft_base_s + cfg.ttft_per_prompt_token_s * prompt_tokens) * factor
        tpot = cfg.tpot_base_s * (1.0 + cfg.tpot_concurrency_slope * (self.busy - 1)) * factor
        if u_failure < cfg.failure_prob:
            # An error surfaces when the first token would have arrived; only input is billed.
            return (min(ttft, cfg.timeout_s), FAILED_ERROR, prompt_tokens, 0)
        duration = ttft + tpot * output_tokens
        if duration > cfg.timeout_s:
            generated = 0 if ttft >= cfg.timeout_s or tpot <= 0 else int((cfg.timeout_s - ttft) / tpot)
            return (cfg.timeout_s, FAILED_TIMEOUT, prompt_tokens, min(generated, output_tokens))
        return (duration, OK, prompt_tokens, output_tokens)
