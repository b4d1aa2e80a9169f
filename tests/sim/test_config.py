"""Configuration is validated at the boundary, with errors that name the key and the value."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    scenario_to_dict,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import IN_FLIGHT

INVALID_FIELDS: list[tuple[Any, list[str]]] = [
    (lambda: PoolConfig(min_replicas=5, max_replicas=2), ["pool.max_replicas", "2", "min_replicas (5)"]),
    (lambda: PoolConfig(initial_replicas=40, max_replicas=32), ["pool.initial_replicas", "40"]),
    (lambda: PoolConfig(slots_per_replica=0), ["pool.slots_per_replica", "0", "integer >= 1"]),
    (lambda: PoolConfig(queue_timeout_s=float("nan")), ["pool.queue_timeout_s", "nan"]),
    # A bool is not a number of seconds (the YAML loader and the integer checks already reject bools).
    (lambda: PoolConfig(queue_timeout_s=True), ["pool.queue_timeout_s", "True"]),
    (lambda: TenantConfig(weight=-1), ["tenants[default].weight", "-1", "> 0"]),
    (lambda: TenantConfig(name="", weight=1.0), ["name", "''"]),
    (lambda: TenantConfig(n_intents=2.5), ["n_intents", "2.5", "integer"]),  # type: ignore[arg-type]
    (lambda: BackendConfig(capability=2), ["backends[medium].capability", "2", "[0, 1]"]),
    (lambda: BackendConfig(failure_prob=1.0), ["failure_prob", "1.0", "[0, 1)"]),
    (lambda: BackendConfig(service_distribution="pareto"), ["service_distribution", "'pareto'", "lognormal"]),  # type: ignore[arg-type]
    (lambda: TokenLengths(prompt_sigma=0.0), ["tokens.prompt_sigma", "0.0"]),
    (lambda: CacheTierConfig(eviction="mru"), ["cache.tiers[memory].eviction", "'mru'", "s3fifo"]),  # type: ignore[arg-type]
    (lambda: CacheTierConfig(capacity=0), ["cache.tiers[memory].capacity", "0"]),
    (lambda: SemanticCacheConfig(threshold=0.0), ["cache.semantic.threshold", "0.0", "(0, 1]"]),
    (lambda: CacheConfig(tiers=(CacheTierConfig(), CacheTierConfig())), ["cache.tiers", "unique"]),
    (lambda: ControlConfig(target_utilisation=1.5), ["control.target_utilisation", "1.5"]),
    (lambda: ControlConfig(routing="jsq"), ["control.routing", "'jsq'", "round_robin"]),  # type: ignore[arg-type]
    (lambda: FaultConfig(kind="backend_outage", target="x", start_s=0, duration_s=0), ["faults.duration_s", "0"]),
    (lambda: FaultConfig(kind="meteor", target="x", start_s=0, duration_s=1), ["faults.kind", "'meteor'"]),  # type: ignore[arg-type]
    (lambda: WorkloadConfig(amplitude=1.0), ["workload.amplitude", "1.0", "[0, 1)"]),
    (lambda: WorkloadConfig(kind="trace"), ["workload.trace_path", "None", "required"]),
    (
        lambda: WorkloadConfig(tenants=(TenantConfig(name="a"), TenantConfig(name="a"))),
        ["workload.tenants", "['a', 'a']", "unique"],
    ),
    (lambda: WorkloadConfig(tenants=()), ["workload.tenants", "at least one"]),
    (
        lambda: WorkloadConfig(kind="gamma", flash_crowds=(FlashCrowd(1.0, 2.0, 3.0),)),
        ["workload.flash_crowds", "poisson, diurnal or mmpp"],
    ),
    (lambda: FlashCrowd(start_s=1.0, duration_s=1.0, multiplier=0.0), ["flash_crowds.multiplier", "0.0"]),
    (lambda: ScenarioConfig(seed=-1), ["scenario.seed", "-1"]),
    (lambda: ScenarioConfig(backends=()), ["scenario.backends", "at least one"]),
    (
        lambda: ScenarioConfig(backends=(BackendConfig(name="a"), BackendConfig(name="a"))),
        ["scenario.backends", "unique"],
    ),
    (
        lambda: ScenarioConfig(faults=(FaultConfig("backend_slowdown", target="huge", start_s=0, duration_s=1),)),
        ["faults[0].target", "'huge'", "medium"],
    ),
    (
        lambda: ScenarioConfig(faults=(FaultConfig("cache_outage", target="redis", start_s=0, duration_s=1),)),
        ["faults[0].target", "'redis'", "semantic"],
    ),
]


@pytest.mark.parametrize(("build", "names"), INVALID_FIELDS, ids=[names[0] for _, names in INVALID_FIELDS])
def test_invalid_values_name_the_field_and_value(build: Any, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    for name in names:
        assert name in message, (name, message)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"workload": {"rate": 3}}, ["workload.rate", "WorkloadConfig", "rate_rps"]),
        ({"workload": {"tenants": [{"name": "a", "wieght": 2}]}}, ["workload.tenants[0].wieght"]),
        ({"cache": {"semantic": {"enabled": True, "treshold": 0.8}}}, ["cache.semantic.treshold"]),
        ({"durations": 5}, ["durations", "ScenarioConfig"]),
        ({"pool": {"max_queue": "big"}}, ["pool.max_queue", "'big'", "integer"]),
        ({"seed": 1.5}, ["seed", "1.5", "integer"]),
        ({"duration_s": "long"}, ["duration_s", "'long'", "number"]),
        ({"cache": {"semantic": {"enabled": "yes"}}}, ["cache.semantic.enabled", "'yes'", "true or false"]),
        ({"backends": {"name": "x"}}, ["backends", "list"]),
        ({"pool": 3}, ["pool", "3", "mapping"]),
        ({"workload": {"kind": "bursty"}}, ["workload.kind", "'bursty'", "poisson"]),
        ({"workload": {"tenants": [{"name": "a"}, {"name": "a"}]}}, ["workload.tenants", "unique"]),
        ({"faults": [{"kind": "backend_outage", "target": "medium"}]}, ["faults[0]", "start_s"]),
        ({"workload": {"tenants": [{"drift_every_s": "daily"}]}}, ["workload.tenants[0].drift_every_s", "'daily'"]),
    ],
)
def test_scenario_from_dict_names_dotted_key(data: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data)
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_scenario_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        scenario_from_dict([1, 2])  # type: ignore[arg-type]


def test_scenario_round_trips_through_dict() -> None:
    scenario = load_scenario("default")
    assert scenario_from_dict(scenario_to_dict(scenario)) == scenario
    with_extras = dataclasses.replace(
        scenario,
        workload=dataclasses.replace(scenario.workload, flash_crowds=(FlashCrowd(10.0, 5.0, 2.0),)),
        faults=(FaultConfig(kind="cache_outage", target="semantic", start_s=1.0, duration_s=2.0),),
    )
    assert scenario_from_dict(scenario_to_dict(with_extras)) == with_extras


def test_default_scenario_loads_as_documented() -> None:
    scenario = load_scenario("default")
    assert [t.name for t in scenario.workload.tenants] == ["chat", "code"]
    assert [b.name for b in scenario.backends] == ["small", "medium", "large"]
    assert [t.name for t in scenario.cache.tiers] == ["memory", "redis", "disk"]
    assert scenario.cache.semantic.enabled
    assert scenario.control.scaling == "target_utilisation"


def test_load_scenario_names_file_and_nested_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("duration_s: 10\npool:\n  max_replicas: 4\n  cold_start_s: 3\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message and "pool.cold_start_s" in message


def test_load_scenario_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no shipped scenario named 'nope'; available: .*default"):
        load_scenario("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_scenario(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pool: [1, 2\n")
    with pytest.raises(ConfigError, match=re.escape(str(broken)) + ", line 2: not valid YAML"):
        load_scenario(broken)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("pool:\n  min_replicas: 5\n  max_replicas: 2\n  initial_replicas: 3\n")
    with pytest.raises(ConfigError, match=re.escape(str(invalid)) + ": pool.max_replicas = 2"):
        load_scenario(invalid)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    # An empty file would run the dataclass defaults (issue 14): refused; an explicit {} is deliberate.
    with pytest.raises(ConfigError, match="holds no scenario"):
        load_scenario(empty)
    empty.write_text("{}\n")
    assert load_scenario(empty) == ScenarioConfig()


def test_apply_overrides_sets_values() -> None:
    scenario = apply_overrides(
        load_scenario("default"),
        ["workload.rate_rps=30", "backends.0.capability=0.5", "cache.semantic.enabled=false", "pool.max_queue=7"],
    )
    assert scenario.workload.rate_rps == 30.0 and isinstance(scenario.workload.rate_rps, float)
    assert scenario.backends[0].capability == 0.5
    assert not scenario.cache.semantic.enabled
    assert scenario.pool.max_queue == 7


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("workload.rate_rps", ["'workload.rate_rps'", "key=value"]),
        ("=3", ["'=3'", "key=value"]),
        ("nope=1", ["unknown key nope", "workload"]),
        ("workload.rte_rps=1", ["unknown key workload.rte_rps", "rate_rps"]),
        ("backends.5.capability=1", ["backends.5", "0..2"]),
        ("backends.x.capability=1", ["backends.x", "0..2"]),
        ("workload.rate_rps.hourly=1", ["workload.rate_rps is a value"]),
        ("workload.rate_rps=-1", ["workload.rate_rps", "-1"]),
        ("pool.max_queue=many", ["pool.max_queue", "'many'"]),
    ],
)
def test_apply_overrides_errors_name_the_key(override: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(load_scenario("default"), [override])
    for name in names:
        assert name in str(info.value), (name, str(info.value))


def test_apply_overrides_with_malformed_yaml_value_raises_config_error() -> None:
    """A value that is not valid YAML is a config error naming the key, not a YAML parser traceback."""
    with pytest.raises(ConfigError, match=r"workload\.rate_rps"):
        apply_overrides(load_scenario("default"), ["workload.rate_rps=[1,"])


# -- random valid configurations keep every invariant --------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> ScenarioConfig:
    min_replicas = draw(st.integers(0, 3))
    max_replicas = draw(st.integers(max(min_replicas, 1), 6))
    n_tenants = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["poisson", "gamma", "mmpp", "diurnal"]))
    tenants = tuple(
        TenantConfig(
            name=f"t{k}",
            weight=draw(st.floats(0.2, 3.0)),
            n_intents=draw(st.integers(1, 60)),
            n_variants=draw(st.integers(1, 3)),
            zipf_s=draw(st.floats(0.0, 1.5)),
            tokens=TokenLengths(prompt_mu=4.0, prompt_sigma=0.5, output_mu=2.5, output_sigma=0.5),
        )
        for k in range(n_tenants)
    )
    tiers = tuple(
        CacheTierConfig(
            name=f"tier{k}",
            capacity=draw(st.integers(1, 30)),
            latency_s=draw(st.sampled_from([0.0, 0.001, 0.01])),
            eviction=draw(st.sampled_from(["lru", "lfu", "fifo", "s3fifo"])),
            ttl_s=draw(st.sampled_from([None, 2.0, 20.0])),
        )
        for k in range(draw(st.integers(0, 3)))
    )
    return ScenarioConfig(
        seed=draw(st.integers(0, 2**16)),
        duration_s=40.0,
        workload=WorkloadConfig(
            kind=kind,
            rate_rps=draw(st.floats(1.0, 40.0)),
            cv=draw(st.floats(0.5, 3.0)),
            burst_rate_rps=draw(st.floats(10.0, 80.0)),
            mean_calm_s=10.0,
            mean_burst_s=5.0,
            period_s=40.0,
            tenants=tenants,
            embedding_dim=8,
        ),
        backends=(
            BackendConfig(name="a", failure_prob=draw(st.sampled_from([0.0, 0.05])), timeout_s=draw(st.floats(0.5, 5))),
            BackendConfig(name="b", ttft_base_s=0.1, tpot_base_s=0.005, capability=0.9),
        ),
        pool=PoolConfig(
            initial_replicas=draw(st.integers(min_replicas, max_replicas)),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            slots_per_replica=draw(st.integers(1, 4)),
            max_queue=draw(st.integers(0, 30)),
            queue_timeout_s=draw(st.floats(0.5, 10.0)),
            cold_start_mean_s=draw(st.floats(0.0, 10.0)),
            cooldown_s=draw(st.sampled_from([0.0, 5.0])),
        ),
        cache=CacheConfig(
            tiers=tiers,
            semantic=SemanticCacheConfig(
                enabled=draw(st.booleans()),
                capacity=draw(st.integers(n_tenants, 20)),
                threshold=draw(st.floats(0.5, 1.0)),
            ),
            promote_on_hit=draw(st.booleans()),
            warm_top_intents=draw(st.integers(0, 5)),
        ),
        control=ControlConfig(
            interval_s=draw(st.sampled_from([2.0, 5.0])),
            scaling=draw(st.sampled_from(["static", "target_utilisation"])),
            target_utilisation=draw(st.floats(0.3, 1.0)),
            routing=draw(st.sampled_from(["round_robin", "random", "cheapest", "strongest"])),
        ),
    )


@settings(max_examples=25, deadline=None)
@given(scenario=scenarios())
def test_random_valid_scenarios_keep_invariants(scenario: ScenarioConfig) -> None:
    platform = Platform(scenario)
    pool_cfg = scenario.pool
    for t in np.linspace(2.0, scenario.duration_s, 12):
        platform.run(until=float(t))
        in_flight = platform.in_flight()
        assert platform.arrived == platform.completed + platform.dropped + in_flight
        assert pool_cfg.min_replicas <= platform.pool.replica_count <= pool_cfg.max_replicas
        for tier in platform.tiers:
            assert len(tier) <= tier.cfg.capacity
        if platform.semantic is not None:
            assert len(platform.semantic) <= scenario.cache.semantic.capacity
    outcome = platform.requests.frame()["outcome"]
    assert int((outcome == IN_FLIGHT).sum()) == platform.in_flight()
    for m in platform.intervals:
        assert pool_cfg.min_replicas <= m.target_replicas <= pool_cfg.max_replicas
    cols = platform.requests.frame()
    hit = cols["hit_level"] >= 0
    assert np.all(cols["source_tenant"][hit] == cols["tenant"][hit])


def test_overrides_complete_a_scenario_that_is_incomplete_on_its_own(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2023-11-16 18:15:{s:02d}.000000,{100 + s},{20 + s}\n" for s in range(30))
    )
    with pytest.raises(ConfigError, match=r"trace_replay\.yaml: workload\.trace_path = None is invalid"):
        load_scenario("trace_replay")
    scenario = load_scenario("trace_replay", [f"workload.trace_path={trace}", "duration_s=20"])
    assert scenario.workload.trace_path == str(trace) and scenario.duration_s == 20
    with pytest.raises(ConfigError, match=r"unknown key"):
        load_scenario("trace_replay", [f"workload.trace_path={trace}", "workload.trace_pat=x"])
    # a complete file keeps the strict path: an unknown key is named with the allowed ones
    with pytest.raises(ConfigError, match=r"unknown key pool\.max_replica; allowed:"):
        load_scenario("default", ["pool.max_replica=3"])


def test_a_scenario_file_can_start_from_a_base(tmp_path: Path) -> None:
    """``base:`` names a shipped scenario or a path; the file's keys override it, lists replace whole."""
    default = load_scenario("default")
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text("base: default\nname: bigger\npool: {max_replicas: 30}\n")
    scenario = load_scenario(bigger)
    expected = dataclasses.replace(default, name="bigger", pool=dataclasses.replace(default.pool, max_replicas=30))
    assert scenario == expected
    # a base given by a path relative to the file, two levels deep, with overrides on top
    (tmp_path / "sub").mkdir()
    one_backend = tmp_path / "sub" / "one_backend.yaml"
    one_backend.write_text("base: ../bigger.yaml\nbackends: [{name: only}]\n")
    scenario = load_scenario(one_backend, ["duration_s=60"])
    assert [b.name for b in scenario.backends] == ["only"]
    assert (scenario.pool.max_replicas, scenario.duration_s, scenario.workload) == (30, 60.0, default.workload)


def test_bad_bases_are_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="base scenarios form a cycle"):
        load_scenario(a)
    a.write_text("base: nosuch\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: base: no shipped scenario named 'nosuch'"):
        load_scenario(a)
    a.write_text("base: default\npool: {max_replica: 3}\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: .*pool\.max_replica"):
        load_scenario(a)


def test_a_mapping_can_start_from_a_base_as_files_do() -> None:
    """``scenario_from_dict`` (the Python API's mappings) takes ``base:`` with the same merge as a file."""
    default = load_scenario("default")
    scenario = scenario_from_dict({"base": "default", "pool": {"max_replicas": 30}})
    assert scenario == dataclasses.replace(default, pool=dataclasses.replace(default.pool, max_replicas=30))
    with pytest.raises(ConfigError, match=r"base: no shipped scenario named 'nosuch'"):
        scenario_from_dict({"base": "nosuch"})
    with pytest.raises(ConfigError, match=r"base = 3 is invalid"):
        scenario_from_dict({"base": 3})


def test_an_unknown_nested_key_is_named_by_its_path_first() -> None:
    """The message starts with the dotted key, so callers can prefix where the mapping came from."""
    expected = r"^pool\.max_replica: unknown key in PoolConfig; allowed keys: .*max_replicas"
    with pytest.raises(ConfigError, match=expected):
        scenario_from_dict({"pool": {"max_replica": 3}})
