"""The example agent service starts, takes its decisions from bundles, and stops cleanly."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import shutil
import subprocess
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

    # Routing decisions are logged per interval: aggregated, with a sample that replays through the bundle.
    routing = [entry["routing"] for entry in logged]
    assert sum(r["decisions"] for r in routing) == len(total.routing_decisions)
    names = [b.name for b in service.backends]
    assert sum(sum(r["policy_by_backend"].values()) for r in routing) == len(total.routing_decisions)
    assert all(set(r["policy_by_backend"]) <= set(names) for r in routing)
    samples = [s for r in routing for s in r["sample"]]
    assert samples and all(len(r["sample"]) <= 5 for r in routing)
    router = runtime.load(bundles[1])  # JSQ: stateless, so a sample replays exactly
    assert [router.decide(s["features"]) for s in samples] == [s["routing_decision"] for s in samples]
    if mode == "control":
        assert all(s["applied"] == s["routing_decision"] for s in samples)
        assert all(r["agreement"] == 1.0 for r in routing if r["decisions"])
    else:  # the fallback (round robin) was applied
        assert sum(r["applied_by_backend"].get(n, 0) for r in routing for n in names) == len(total.routing_decisions)


def _main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=120, cwd=EXAMPLE.parent
    )


def test_swapped_bundles_are_refused_at_start_up(bundles: tuple[Path, Path]) -> None:
    hpa, jsq = bundles
    done = _main("--scaling", str(jsq), "--routing", str(hpa), "--duration", "1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"agent_service: error: --scaling {jsq}: this bundle decides routing (policy 'jsq'), not scaling; "
        "did you swap --scaling and --routing?"
    ]


def test_missing_tampered_and_unfit_bundles_are_refused(
    bundles: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = _example()
    hpa, jsq = bundles

    def refused(*args: str) -> str:
        assert example.main(list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("agent_service: error: ") and len(err.strip().splitlines()) == 1, err
        return err

    assert "no such directory" in refused("--scaling", str(tmp_path / "nope"))
    assert "not a bundle" in refused("--scaling", str(tmp_path))

    tampered = tmp_path / "tampered"
    shutil.copytree(jsq, tampered)
    spec = json.loads((tampered / "spec.json").read_text())
    spec["policy"]["kind"] = "cheapest"
    (tampered / "spec.json").write_text(json.dumps(spec))
    assert "tampered" in refused("--scaling", str(hpa), "--routing", str(tampered))
    runtime_tampered = tmp_path / "runtime_tampered"
    shutil.copytree(hpa, runtime_tampered)
    with open(runtime_tampered / "servegym_runtime.py", "a") as f:
        f.write("\nprint('hello')\n")
    assert "servegym_runtime.py's sha256" in refused("--scaling", str(runtime_tampered))

    # A scaling policy that reads a feature this service does not measure (Platform-v0's routing_margin).
    unfit = example.load_bundle(hpa)
    unfit.feature_names = (*unfit.feature_names, "routing_margin")
    with pytest.raises(example.SetupError, match="does not measure: routing_margin"):
        example.check_bundles(unfit, None)


def test_decision_log_goes_to_a_file(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    log_file = tmp_path / "decisions.jsonl"
    done = _main(
        "--scaling", str(bundles[0]), "--routing", str(bundles[1]), "--duration", "0.7", "--interval", "0.2",
        "--routing-sample", "2", "--log-file", str(log_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # the decisions went to the file
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert entries and all(e["mode"] == "shadow" and len(e["routing"]["sample"]) <= 2 for e in entries)
    assert f"decision log in {log_file}" in done.stdout
    # The summary adds up what the log shows, interval by interval.
    routed = sum(e["routing"]["decisions"] for e in entries)
    assert f"{len(entries)} scaling decisions" in done.stdout
    assert f"{routed} routing decisions" in done.stdout and "latency p50" in done.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--interval", "-1"], "argument --interval: -1 is invalid: must be a finite number > 0"),
        (["--interval", "0"], "argument --interval: 0 is invalid"),
        (["--duration", "-5"], "argument --duration: -5 is invalid"),
        (["--rate", "nan"], "argument --rate: nan is invalid"),
        (["--routing-sample", "-2"], "argument --routing-sample: -2 is invalid"),
        (["--duration", "2", "--interval", "5"], "--interval 5 is longer than --duration 2"),
    ],
)
def test_nonsense_options_are_refused_before_serving(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --interval -1 used to spin (26,639 decisions in 3 s); --duration -5 exited 0 having done nothing.
    with pytest.raises(SystemExit) as info:
        _example().main(["--scaling", "unused", *args])
    assert info.value.code == 2
    assert says in capsys.readouterr().err
