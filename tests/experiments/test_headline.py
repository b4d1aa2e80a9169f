"""benchmarks/headline.py: the layout check of trained policies and how learned variants reach the comparison."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from servegym.agents.bandit import LinearBanditRouter
from servegym.envs.features import routing_layout
from servegym.experiments.schema import register_configs
from servegym.policies import make_policy, scaling_kwargs
from servegym.sim.config import apply_overrides, load_scenario
from servegym.sim.platform import Platform

HEADLINE = Path(__file__).resolve().parents[2] / "benchmarks" / "headline.py"


@pytest.fixture(scope="module")
def headline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("headline_benchmark", HEADLINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _clean_hydra() -> None:
    GlobalHydra.instance().clear()
    register_configs()


def test_a_router_fits_its_own_scenario_but_not_one_with_other_tenants(headline: ModuleType) -> None:
    steady = load_scenario("steady")
    router = LinearBanditRouter(routing_layout(Platform(steady, seed=0)), [b.name for b in steady.backends])
    assert headline.mismatch(router, "routing", steady) is None
    assert headline.mismatch(router, "routing", apply_overrides(steady, ["cache.tiers=[]"])) is None
    reason = headline.mismatch(router, "routing", load_scenario("multi_tenant"))
    assert reason is not None and "tenant_analytics" in reason and "tenant_support" in reason


def test_a_scaler_must_size_the_same_pool(headline: ModuleType) -> None:
    steady = load_scenario("steady")
    hpa = make_policy("hpa", **scaling_kwargs(steady))
    assert headline.mismatch(hpa, "scaling", load_scenario("multi_tenant")) is None
    reason = headline.mismatch(hpa, "scaling", apply_overrides(steady, ["pool.max_replicas=64"]))
    assert reason is not None and "max_replicas" in reason


def test_learned_variants_resolve_to_the_runs_of_each_jobs_scenario(headline: ModuleType) -> None:
    runs = {
        "predictive_scaling": {"scaler": {"steady": "s1", "multi_tenant": "s2"}},
        "learned_routing": {"router": {"steady": "r1", "multi_tenant": "r2"}},
        "all_learned": {"scaler": {"steady": "a1", "multi_tenant": "a2"}, "router": {"steady": "b1"}},
    }
    with initialize_config_module("servegym.conf", version_base=None):
        plain = compose("compare", overrides=["+experiment=headline"])
        assert set(plain.learned.variants) == set(runs)
        overrides = headline.learned_overrides(list(plain.policies), list(runs), runs)
        assert overrides[0].startswith("policies=[plain,") and overrides[0].endswith(",all_learned]")
        specs = {}
        for scenario in ("steady", "multi_tenant"):
            cfg = compose("compare", overrides=["+experiment=headline", f"scenario={scenario}", *overrides])
            defs = OmegaConf.to_container(cfg.policy_defs, resolve=True)
            assert isinstance(defs, dict)
            specs[scenario] = {v: defs[v]["spec"] for v in runs}
        # without trained runs the variants' specs name no run that exists
        untrained = OmegaConf.to_container(plain.policy_defs, resolve=True)
        assert isinstance(untrained, dict)
        assert untrained["learned_routing"]["spec"] == "static+run:untrained"
    assert specs["steady"] == {
        "predictive_scaling": "run:s1+round_robin",
        "learned_routing": "static+run:r1",
        "all_learned": "run:a1+run:b1",
    }
    assert specs["multi_tenant"]["predictive_scaling"] == "run:s2+round_robin"
    assert specs["multi_tenant"]["all_learned"] == "run:a2+run:untrained"


def test_training_overrides_compose_the_variants_platform(headline: ModuleType) -> None:
    with initialize_config_module("servegym.conf", version_base=None):
        learned = compose("compare", overrides=["+experiment=headline"]).learned
        no_cache = ["cache.tiers=[]", "cache.semantic.enabled=false", "cache.warm_top_intents=0"]
        cfg = compose(
            "train", overrides=headline.train_overrides(learned, "scaler", "diurnal", no_cache, "sqlite:///x.db")
        )
    assert cfg.agent.name == "predictive" and cfg.env.id == "servegym/Autoscaling-v0"
    assert cfg.scenario.name == "diurnal" and list(cfg.scenario.cache.tiers) == []
    assert cfg.total_timesteps == learned.scaler.total_timesteps and cfg.seed == learned.seed
    assert cfg.episode_duration_s == learned.scaler.episode_duration_s
