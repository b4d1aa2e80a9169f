"""The SimPy model of an LLM agent-serving platform (imports neither gymnasium nor torch)."""

from servegym.sim.config import (
    BackendConfig,
    CacheConfig,
    CacheTierConfig,
    ConfigError,
    ControlConfig,
    FaultConfig,
    FlashCrowd,
    PoolConfig,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
    TokenLengths,
    WorkloadConfig,
    apply_overrides,
    load_scenario,
    scenario_from_dict,
)
from servegym.sim.platform import ADMIT_NONE, DEFER, BuiltinController, Controller, Decision, Platform
from servegym.sim.telemetry import IntervalMetrics, format_kpi_table
from servegym.sim.workload import TraceError, read_trace

__all__ = [
    "ADMIT_NONE",
    "DEFER",
    "BackendConfig",
    "BuiltinController",
    "CacheConfig",
    "CacheTierConfig",
    "ConfigError",
    "ControlConfig",
    "Controller",
    "Decision",
    "FaultConfig",
    "FlashCrowd",
    "IntervalMetrics",
    "Platform",
    "PoolConfig",
    "ScenarioConfig",
    "SemanticCacheConfig",
    "TenantConfig",
    "TokenLengths",
    "TraceError",
    "WorkloadConfig",
    "apply_overrides",
    "format_kpi_table",
    "load_scenario",
    "read_trace",
    "scenario_from_dict",
]
