"""The ``servegym simulate`` command: exit codes, telemetry files and their formats."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from servegym.cli import main
from servegym.sim.config import load_scenario

FAST = ["workload.rate_rps=10", "workload.tenants.0.n_intents=500", "workload.tenants.1.n_intents=500"]


def _kpis(out: Path) -> dict[str, dict[str, float | None]]:
    data: dict[str, dict[str, float | None]] = json.loads((out / "kpis.json").read_text())
    return data


def test_simulate_writes_csv_telemetry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--duration", "60", "--seed", "4", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "scenario 'default', seed 4: 60 simulated s" in printed
    assert "cost: $" in printed and "hit rate by tier: memory" in printed
    for name in ("requests.csv", "intervals.csv", "replicas.csv", "incidents.json", "kpis.json", "scenario.yaml"):
        assert (out / name).is_file(), name

    kpis = _kpis(out)
    assert set(kpis) == {"all", "chat", "code"}
    arrived = kpis["all"]["requests"]
    assert arrived is not None and arrived > 300
    with (out / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == arrived
    assert {"arrival_s", "tenant", "outcome", "hit_level", "cost_usd"} <= set(rows[0])
    with (out / "intervals.csv").open() as handle:
        intervals = list(csv.DictReader(handle))
    assert len(intervals) == 4  # 15 s control intervals; the last, closing at the 60 s end, is recorded too
    assert {"hits_memory", "hits_semantic", "target_replicas"} <= set(intervals[0])

    # The resolved scenario is written back and loads again, with the overrides applied.
    scenario = load_scenario(out / "scenario.yaml")
    assert (scenario.seed, scenario.duration_s, scenario.workload.rate_rps) == (4, 60.0, 10.0)


def test_chrome_trace_is_well_formed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--duration", "60", "--out", str(out), *FAST]) == 0
    trace = json.loads((out / "trace.json").read_text())
    events = trace["traceEvents"]
    arrived = _kpis(out)["all"]["requests"]
    begins = Counter((e["cat"], e["id"], e["name"]) for e in events if e["ph"] == "b")
    ends = Counter((e["cat"], e["id"], e["name"]) for e in events if e["ph"] == "e")
    assert begins == ends  # every async begin has its end
    names = {e["name"] for e in events if e["ph"] == "b"}
    assert {"request", "queue", "hit memory", "hit semantic"} <= names
    requests = {e["id"] for e in events if e["ph"] == "b"}
    assert len(requests) == arrived
    by_key: dict[tuple[str, int, str], float] = {}
    for e in events:
        if e["ph"] == "b":
            by_key[(e["cat"], e["id"], e["name"])] = e["ts"]
        elif e["ph"] == "e":
            assert e["ts"] >= by_key[(e["cat"], e["id"], e["name"])], e
    assert all(e["dur"] > 0 for e in events if e["ph"] == "X")
    assert any(e["ph"] == "X" and e["pid"] == 2 for e in events)  # replica spans


def test_max_spans_limits_requests_in_trace(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--duration", "30", "--max-spans", "25", "--out", str(out), *FAST]) == 0
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert {e["id"] for e in events if e["ph"] == "b"} == set(range(25))


def test_parquet_format(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--duration", "60", "--format", "parquet", "--out", str(out), *FAST]) == 0
    requests = pq.read_table(out / "requests.parquet")
    assert requests.num_rows == _kpis(out)["all"]["requests"]
    assert requests.schema.field("outcome").type.bit_width == 8
    assert pq.read_table(out / "intervals.parquet").num_rows == 4
    assert not (out / "requests.csv").exists()


def test_invalid_override_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--duration", "5", "workload.rte_rps=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("servegym: error:")
    assert "workload.rte_rps" in err and "rate_rps" in err


def test_invalid_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--duration", "5", "pool.min_replicas=50"]) == 2
    err = capsys.readouterr().err
    assert "pool.max_replicas = 48" in err and "min_replicas (50)" in err


def test_malformed_override_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--duration", "5", "workload.rate_rps=[1,"]) == 2
    assert "workload.rate_rps" in capsys.readouterr().err


def test_missing_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.csv"
    assert main(["simulate", "--duration", "5", "workload.kind=trace", f"workload.trace_path={missing}"]) == 2
    assert f"trace file {missing} does not exist" in capsys.readouterr().err


def test_unknown_scenario_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--scenario", "nope"]) == 2
    assert "no shipped scenario named 'nope'" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--format", "xlsx"])
    assert info.value.code == 2
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err


def test_out_is_checked_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file, a directory with other files, or one that cannot be created: exit 2 before simulating."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cases = (
        (a_file, "is a file"),
        (mine, "not servegym telemetry (notes.txt)"),
        (a_file / "sub", "cannot be created"),  # the parent is a file: mkdir fails, before the run
    )
    for out, says in cases:
        assert main(["simulate", "--duration", "60", "--out", str(out), *FAST]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and "simulated s" not in captured.out  # nothing ran
    assert (mine / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_old_telemetry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--duration", "30", "--format", "parquet", "--out", str(out), *FAST]) == 0
    assert main(["simulate", "--duration", "30", "--out", str(out), *FAST]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["simulate", "--duration", "30", "--seed", "3", "--overwrite", "--out", str(out), *FAST]) == 0
    assert (out / "requests.csv").is_file() and not (out / "requests.parquet").exists()
    assert load_scenario(out / "scenario.yaml").seed == 3
