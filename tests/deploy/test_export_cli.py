"""``servegym export``'s command line: required keys, the scenario config group, errors without tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from servegym.deploy import runtime
from servegym.experiments.export import app

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``servegym export ARGS`` in a fresh interpreter, importing this checkout's servegym."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from servegym.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "export", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _app(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["servegym export", *overrides])
    app()


def test_missing_out_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    done = _cli("run=heuristic:hpa", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "MissingMandatoryValue" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "servegym export: error: out is required: the bundle directory to write (e.g. out=bundles/hpa)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_missing_run_names_the_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _app(monkeypatch, "out=bundles/x")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("servegym export: error: run is required:")


def test_scenario_is_the_config_group(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """scenario=<name> selects a shipped scenario (as in servegym train), and its keys can be overridden."""
    _app(monkeypatch, "run=heuristic:jsq", "scenario=multi_tenant", f"out={tmp_path / 'jsq'}")
    bundle = runtime.load(tmp_path / "jsq")
    assert bundle.spec["provenance"]["scenario"] == "multi_tenant"
    assert "tenant_analytics" in bundle.feature_names  # multi_tenant's four tenants

    overrides = ("scenario=steady", "scenario.pool.max_replicas=30", f"out={tmp_path / 'hpa'}")
    _app(monkeypatch, "run=heuristic:hpa", *overrides)
    hpa = runtime.load(tmp_path / "hpa")
    assert hpa.spec["provenance"]["scenario"] == "steady"
    assert hpa.spec["policy"]["params"]["max_replicas"] == 30
    assert hpa.spec["action"]["components"][0]["values"] == list(range(31))


def test_a_bad_heuristic_argument_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _app(monkeypatch, "run=heuristic:hpa", "+params.no_such_argument=1", f"out={tmp_path / 'b'}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("servegym export: error: run=heuristic:hpa with params=") and "Traceback" not in err
