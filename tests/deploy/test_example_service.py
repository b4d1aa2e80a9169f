"""The example agent service starts, takes its decisions from bundles, and stops cleanly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import ModuleType

import pytest

from servegym.deploy import runtime
from servegym.experiments.export import export_source

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent_service.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_service"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    hpa = export_source("heuristic:hpa", root / "hpa", params={"target_utilisation": 0.5}).bundle
    jsq = export_source("heuristic:jsq", root / "jsq").bundle
    return hpa, jsq


@pytest.mark.parametrize("mode", ["control", "shadow"])
def test_service_decides_from_bundles_and_stops(
    bundles: tuple[Path, Path], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    example = _example()
    service = example.AgentService(
        example.load_bundle(bundles[0]), example.load_bundle(bundles[1]), mode=mode, interval_s=0.15, initial_replicas=2
    )
    assert [b.name for b in service.backends] == ["small", "medium", "large"]

    async def serve() -> None:
        with caplog.at_level(logging.INFO, logger="agent_service"):
            await service.run(1.0, rate_rps=60.0, burst_rps=240.0)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []  # nothing left running

    asyncio.run(serve())
    total = service.total
    assert len(total.scaling_decisions) >= 4
    assert total.served > 0 and len(total.routing_decisions) > 0
    assert set(total.routing_decisions) <= {0, 1, 2}

    # Every logged decision is what the bundle decides on the logged features, in order.
    logged = [json.loads(r.message) for r in caplog.records if r.name == "agent_service"]
    replay = runtime.load(bundles[0])
    assert [replay.decide(entry["features"]) for entry in logged] == [e["scaling_decision"] for e in logged]
    assert all(entry["mode"] == mode for entry in logged)
    if mode == "control":
        assert service.target == max(1, total.scaling_decisions[-1])
    else:
        assert service.target == 2  # shadow mode never applies a decision
