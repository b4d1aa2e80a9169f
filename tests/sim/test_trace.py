"""Trace replay: the Azure, plain and Mooncake schemas, precise errors, exact and whole replay."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from servegym.cli import main
from servegym.sim.config import (
    ConfigError,
    ScenarioConfig,
    WorkloadConfig,
    apply_overrides,
    load_scenario,
    scenario_from_dict,
    scenario_to_dict,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import format_kpi_table
from servegym.sim.workload import TraceError, load_trace, read_trace

AZURE_CODE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def _azure_rows(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``n`` rows in the published Azure format (7 fractional digits, as in the real file)."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(0.4, n))
    offsets -= offsets[0]
    offsets = np.round(offsets, 6)  # microseconds: what a datetime can hold
    prompts = rng.integers(1, 8000, n)
    outputs = rng.integers(1, 500, n)
    origin = datetime(2023, 11, 16, 18, 17, 3, 979960)
    rows = []
    for t, p, o in zip(offsets, prompts, outputs, strict=True):
        stamp = (origin + timedelta(microseconds=round(t * 1e6))).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        rows.append(f"{stamp},{p},{o}")
    return rows, offsets, prompts, outputs


@pytest.mark.skipif(not AZURE_CODE.exists(), reason="the shared Azure trace is not available here")
def test_real_azure_code_trace() -> None:
    trace = read_trace(AZURE_CODE, "azure")
    # 8,820 lines: the header and 8,819 requests (the file ends without a newline, so wc -l says 8,819).
    data_lines = sum(1 for line in AZURE_CODE.read_text().splitlines() if line.strip()) - 1
    assert len(trace) == data_lines == 8819
    assert trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert 3400 < trace.arrival_s[-1] < 3600  # one hour
    assert len(trace) / trace.arrival_s[-1] == pytest.approx(2.57, abs=0.01)
    # Documented in ../shared/traces/README.md: median prompt 1,469 tokens, median output 13.
    assert np.median(trace.prompt_tokens) == pytest.approx(1469, rel=0.01)
    assert np.median(trace.output_tokens) == pytest.approx(13, abs=1)
    gaps = np.diff(trace.arrival_s)
    assert gaps.std() / gaps.mean() > 5  # very bursty (about 13)


def test_generated_azure_trace(tmp_path: Path) -> None:
    rows, offsets, prompts, outputs = _azure_rows(300)
    path = tmp_path / "azure.csv"
    path.write_text("\r\n".join([AZURE_HEADER, *rows]))  # CRLF and no final newline, like the real file
    trace = read_trace(path)
    assert len(trace) == 300
    np.testing.assert_allclose(trace.arrival_s, offsets, rtol=0, atol=1e-6)
    assert np.array_equal(trace.prompt_tokens, prompts)
    assert np.array_equal(trace.output_tokens, outputs)


@pytest.mark.parametrize("header", [True, False])
def test_generated_plain_trace(tmp_path: Path, header: bool) -> None:
    times = [2.5, 2.5, 3.0, 10.25, 11.0]
    lines = ["time_s,prompt_tokens,output_tokens"] if header else []
    lines += [f"{t},{10 * k + 1},{k + 2}" for k, t in enumerate(times)]
    lines.insert(3, "")  # blank lines are skipped
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(lines) + "\n")
    trace = read_trace(path, "plain")
    np.testing.assert_array_equal(trace.arrival_s, np.array(times) - times[0])
    np.testing.assert_array_equal(trace.prompt_tokens, [1, 11, 21, 31, 41])
    np.testing.assert_array_equal(trace.output_tokens, [2, 3, 4, 5, 6])


AZURE_OK = ["2023-11-16 18:17:03.9799600,10,2", "2023-11-16 18:17:04.0319600,20,3"]


@pytest.mark.parametrize(
    ("schema", "lines", "line_no", "fragment"),
    [
        ("azure", [AZURE_HEADER, *AZURE_OK, "yesterday,5,5"], 4, "TIMESTAMP 'yesterday'"),
        ("azure", [AZURE_HEADER, *AZURE_OK, "2023-11-16 18:17:05.0,5.5,5"], 4, "ContextTokens '5.5' is not an integer"),
        ("azure", [AZURE_HEADER, AZURE_OK[0], "2023-11-16 18:17:05.0,5,-2"], 3, "GeneratedTokens -2 is negative"),
        ("azure", [AZURE_HEADER, *AZURE_OK, "2023-11-16 18:17:05.0,5"], 4, "expected 3 fields, found 2"),
        ("azure", [AZURE_HEADER, AZURE_OK[1], AZURE_OK[0]], 3, "time goes backwards"),
        # A zone on one row only: the rows cannot be compared, which is a trace error, not a TypeError.
        ("azure", [AZURE_HEADER, AZURE_OK[0], "2023-11-16 18:17:05+00:00,5,5"], 3, "TIMESTAMP"),
        ("azure", ["timestamp,context,generated", *AZURE_OK], 1, "is not the Azure schema"),
        ("plain", ["0.0,1,1", "1.0,2,2", "x,3,3"], 3, "time_s 'x' is not a number"),
        ("plain", ["0.0,1,1", "inf,2,2"], 2, "finite number >= 0"),
        ("plain", ["0.0,1,1", "-1.0,2,2"], 2, "finite number >= 0"),
        ("plain", ["0.0,1,1", "2.0,2,2", "1.0,3,3"], 3, "time goes backwards"),
        ("plain", ["0.0,1,1", "1.0,two,2"], 2, "prompt_tokens 'two' is not an integer"),
        ("plain", ["0.0,1,1", "1.0,2,2,9"], 2, "expected 3 fields, found 4"),
        ("plain", ["t,p,o", "1.0,2,2"], 1, "time_s 't' is not a number"),  # an unknown header is a bad row
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else None,
)
def test_malformed_rows_name_their_line(
    tmp_path: Path, schema: str, lines: list[str], line_no: int, fragment: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as info:
        read_trace(path, schema)
    message = str(info.value)
    assert f"{path}, line {line_no}:" in message, message
    assert fragment in message, message


def test_unreadable_traces(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text(AZURE_HEADER + "\n")
    with pytest.raises(TraceError, match="no requests"):
        read_trace(empty)
    with pytest.raises(TraceError, match="'json' is unknown"):
        read_trace(empty, "json")


def test_a_trace_read_with_the_other_schema_says_which_to_set(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("time_s,prompt_tokens,output_tokens\n0.0,10,5\n")
    with pytest.raises(TraceError, match=r"line 1: .* set workload\.trace_schema=plain"):
        read_trace(plain)
    azure = tmp_path / "azure.csv"
    azure.write_text(AZURE_HEADER + "\n" + _azure_rows(2)[0][0] + "\n")
    with pytest.raises(TraceError, match=r"line 1: .* set workload\.trace_schema=azure"):
        read_trace(azure, "plain")


@pytest.mark.parametrize("speedup", [1.0, 4.0])
def test_platform_replays_the_trace_exactly(tmp_path: Path, small_scenario: ScenarioConfig, speedup: float) -> None:
    rows, offsets, prompts, outputs = _azure_rows(400, seed=1)
    path = tmp_path / "azure.csv"
    path.write_text("\n".join([AZURE_HEADER, *rows]) + "\n")
    duration = 100.0 / speedup  # the trace lasts about 160 s / speedup
    workload = dataclasses.replace(
        small_scenario.workload, kind="trace", trace_path=str(path), trace_schema="azure", trace_speedup=speedup
    )
    platform = Platform(dataclasses.replace(small_scenario, workload=workload, duration_s=duration))
    platform.run()
    times = read_trace(path).arrival_s / speedup
    replayed = times < duration
    assert 0 < replayed.sum() < len(times)  # the run ends inside the trace: truncation is tested too
    cols = platform.requests.frame()
    assert platform.arrived == len(cols["arrival_s"]) == int(replayed.sum())
    np.testing.assert_array_equal(cols["arrival_s"], times[replayed])
    np.testing.assert_allclose(cols["arrival_s"], offsets[replayed] / speedup, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(cols["prompt_tokens"], prompts[replayed])
    np.testing.assert_array_equal(cols["output_tokens"], outputs[replayed])


def test_platform_accepts_a_trace_object(tmp_path: Path, small_scenario: ScenarioConfig) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("".join(f"{0.5 * k},{k + 1},{k + 2}\n" for k in range(50)))
    trace = read_trace(path, "plain")
    tenants = small_scenario.workload.tenants
    workload = WorkloadConfig(kind="trace", trace_path="unused-when-a-trace-is-given", tenants=tenants)
    platform = Platform(dataclasses.replace(small_scenario, workload=workload, duration_s=30.0), trace=trace)
    platform.run()
    cols = platform.requests.frame()
    assert platform.arrived == 50
    np.testing.assert_array_equal(cols["arrival_s"], trace.arrival_s)
    np.testing.assert_array_equal(cols["prompt_tokens"], trace.prompt_tokens)


# -- the whole trace by default: duration_s: null ----------------------------------------------
def _plain_trace(path: Path, times: list[float]) -> Path:
    path.write_text(
        "time_s,prompt_tokens,output_tokens\n" + "".join(f"{t},{100 + k},{5 + k}\n" for k, t in enumerate(times))
    )
    return path


def _following(small_scenario: ScenarioConfig, path: Path, speedup: float = 1.0, schema: str = "plain") -> dict:
    """``small_scenario`` as a mapping that replays ``path`` and leaves its length to the trace."""
    data = scenario_to_dict(small_scenario)
    data["workload"].update(kind="trace", trace_path=str(path), trace_schema=schema, trace_speedup=speedup)
    data["duration_s"] = None
    return data


@pytest.mark.parametrize("speedup", [1.0, 4.0])
def test_a_null_duration_replays_every_request_of_the_trace(
    tmp_path: Path, small_scenario: ScenarioConfig, speedup: float
) -> None:
    # The last request arrives exactly on a control-interval boundary (10 s): the run must
    # still take it, and with the boundary as the end it would not (events at the end belong
    # to the next run).
    times = [0.0, 0.5, 3.0, 7.25, 20.0, 20.0, 44.0, 60.0 * speedup]
    path = _plain_trace(tmp_path / "trace.csv", times)
    assert small_scenario.control.interval_s == 10.0
    scenario = scenario_from_dict(_following(small_scenario, path, speedup))
    assert scenario.duration_s == 70.0  # the next whole interval strictly after the last arrival at 60 s
    kpis = Platform(scenario).run()["all"]
    assert kpis["requests"] == kpis["trace_requests"] == len(times)
    assert kpis["trace_end_s"] == 60.0
    assert "trace: replayed all 8 requests (the last at 60 s)" in format_kpi_table({"all": kpis}, [])
    # The margin matters: a run ending at the last arrival loses that request.
    cut = Platform(dataclasses.replace(scenario, duration_s=60.0)).run()["all"]
    assert cut["requests"] == len(times) - 1


def test_a_short_run_says_how_much_of_the_trace_it_replayed(
    tmp_path: Path, small_scenario: ScenarioConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, _offsets, _prompts, _outputs = _azure_rows(400, seed=2)
    path = tmp_path / "azure.csv"
    path.write_text("\n".join([AZURE_HEADER, *rows]) + "\n")
    trace = read_trace(path)
    scenario = apply_overrides(scenario_from_dict(_following(small_scenario, path, schema="azure")), ["duration_s=100"])
    platform = Platform(scenario)
    kpis = platform.run()
    replayed = int((trace.arrival_s < 100.0).sum())
    assert 0 < replayed < len(trace)
    assert kpis["all"]["requests"] == replayed and kpis["all"]["trace_requests"] == len(trace)
    assert kpis["all"]["trace_end_s"] == trace.last_arrival_s
    table = format_kpi_table(kpis, platform.level_names, platform.now)
    expected = (
        f"trace: replayed {replayed} of 400 requests (the run ended at 100 s, "
        f"before the trace's last request at {trace.last_arrival_s:.0f} s)"
    )
    assert expected in table
    # servegym simulate prints it, warns on stderr, and writes it into kpis.json.
    out = tmp_path / "run"
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(_following(small_scenario, path, schema="azure")))
    assert main(["simulate", "--scenario", str(scenario_file), "--duration", "100", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert expected in printed.out
    assert "servegym: warning: replayed" in printed.err and "pass duration_s=null" in printed.err
    written = json.loads((out / "kpis.json").read_text())["all"]
    assert (written["requests"], written["trace_requests"]) == (replayed, 400)
    # Left to the trace, the same file replays all of it and does not warn.
    assert main(["simulate", "--scenario", str(scenario_file)]) == 0
    printed = capsys.readouterr()
    assert "trace: replayed all 400 requests" in printed.out and "warning" not in printed.err


def test_only_a_trace_replay_may_leave_its_length_to_the_trace(small_scenario: ScenarioConfig) -> None:
    data = {**scenario_to_dict(small_scenario), "duration_s": None}
    with pytest.raises(
        ConfigError, match=r"^duration_s = None is invalid: .*workload\.kind = 'poisson' replays no trace"
    ):
        scenario_from_dict(data)
    # the rest of the scenario is validated first, as without a null
    data["pool"] = {**data["pool"], "max_replicas": 0}
    with pytest.raises(ConfigError, match=r"pool\.max_replicas = 0"):
        scenario_from_dict(data)


def test_an_unreadable_trace_is_named_when_its_length_is_measured(
    tmp_path: Path, small_scenario: ScenarioConfig
) -> None:
    missing = tmp_path / "missing.csv"
    with pytest.raises(ConfigError, match=rf"^workload\.trace_path: trace file {missing} does not exist"):
        scenario_from_dict(_following(small_scenario, missing))


def test_a_resolved_scenario_round_trips_and_overrides_win(tmp_path: Path, small_scenario: ScenarioConfig) -> None:
    path = _plain_trace(tmp_path / "trace.csv", [0.0, 1.0, 31.0])
    data = _following(small_scenario, path)
    scenario = scenario_from_dict(data)
    assert scenario.duration_s == 40.0
    # Written out (as scenario.yaml is) it holds the number, and loads again as itself.
    text = yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False)
    assert "duration_s: 40.0" in text
    assert scenario_from_dict(yaml.safe_load(text)) == scenario
    written = tmp_path / "resolved.yaml"
    written.write_text(text)
    assert load_scenario(written) == scenario
    # A number wins; on a built scenario, null measures the (changed) trace again.
    assert apply_overrides(scenario, ["duration_s=900"]).duration_s == 900.0
    assert apply_overrides(scenario, ["workload.trace_speedup=2"]).duration_s == 40.0
    assert apply_overrides(scenario, ["workload.trace_speedup=2", "duration_s=null"]).duration_s == 20.0
    # A file that follows its trace follows it after the overrides too, unless they set the length.
    follows = tmp_path / "follows.yaml"
    follows.write_text(yaml.safe_dump(data))
    assert load_scenario(follows).duration_s == 40.0
    assert load_scenario(follows, ["workload.trace_speedup=2"]).duration_s == 20.0
    assert load_scenario(follows, ["control.interval_s=15"]).duration_s == 45.0
    assert load_scenario(follows, ["workload.trace_speedup=2", "duration_s=12"]).duration_s == 12.0
    # base: inheritance keeps the null unless the file sets a length
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {follows}\nseed: 9\n")
    assert load_scenario(child).duration_s == 40.0
    child.write_text(f"base: {follows}\nduration_s: 20\n")
    assert load_scenario(child).duration_s == 20.0


def test_a_trace_is_read_once_per_version_of_its_file(tmp_path: Path) -> None:
    path = _plain_trace(tmp_path / "trace.csv", [0.0, 1.0, 2.0])
    first = load_trace(path, "plain")
    assert load_trace(path, "plain") is first
    assert not first.arrival_s.flags.writeable  # shared: nobody may change it
    _plain_trace(path, [0.0, 1.0, 2.0, 3.0])
    os.utime(path, ns=(1, 1))  # even with the old modification time, the new size tells
    assert len(load_trace(path, "plain")) == 4


@pytest.mark.skipif(not AZURE_CODE.exists(), reason="the shared Azure trace is not available here")
def test_the_shipped_trace_replay_scenario_replays_the_whole_coding_trace() -> None:
    scenario = load_scenario("trace_replay", [f"workload.trace_path={AZURE_CODE}"])
    trace = read_trace(AZURE_CODE)
    # 57 min 16 s of trace at 4x: its last request arrives at 859 s, in the run's 58th 15-second interval.
    assert trace.last_arrival_s / 4.0 == pytest.approx(858.99, abs=0.01)
    assert scenario.duration_s == 870.0
    kpis = Platform(scenario).run()["all"]
    assert kpis["requests"] == kpis["trace_requests"] == len(trace) == 8819
    # The length it had before (840 s) left the last 243 requests out.
    assert Platform(dataclasses.replace(scenario, duration_s=840.0)).run()["all"]["requests"] == 8576


# -- the Mooncake schema -----------------------------------------------------------------------
MOONCAKE = [
    {"timestamp": 1000, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1, 2]},
    {"timestamp": 1000, "input_length": 7319, "output_length": 490, "hash_ids": [0, 3]},
    {"timestamp": 4052.5, "input_length": 2287, "output_length": 316, "hash_ids": []},
    {"timestamp": 9000, "input_length": 12, "output_length": 0, "hash_ids": [0, 1, 4], "session_id": "ignored"},
]


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_mooncake_trace(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.jsonl"
    path.write_text(json.dumps(MOONCAKE[0]) + "\r\n\n" + "\n".join(json.dumps(r) for r in MOONCAKE[1:]))
    trace = read_trace(path, "mooncake")
    np.testing.assert_array_equal(trace.arrival_s, [0.0, 0.0, 3.0525, 8.0])  # ms since the first request
    np.testing.assert_array_equal(trace.prompt_tokens, [6755, 7319, 2287, 12])
    np.testing.assert_array_equal(trace.output_tokens, [500, 490, 316, 0])
    assert [trace.hash_ids_of(i).tolist() for i in range(4)] == [[0, 1, 2], [0, 3], [], [0, 1, 4]]
    with pytest.raises(ValueError, match="only the mooncake schema"):
        read_trace(_plain_trace(tmp_path / "plain.csv", [0.0]), "plain").hash_ids_of(0)


def test_a_mooncake_trace_replays_whole(tmp_path: Path, small_scenario: ScenarioConfig) -> None:
    path = _jsonl(tmp_path / "mooncake.jsonl", MOONCAKE)
    scenario = scenario_from_dict(_following(small_scenario, path, speedup=0.5, schema="mooncake"))
    assert scenario.duration_s == 20.0  # the last request at 16 s
    platform = Platform(scenario)
    kpis = platform.run()["all"]
    assert kpis["requests"] == kpis["trace_requests"] == 4
    cols = platform.requests.frame()
    np.testing.assert_array_equal(cols["arrival_s"], [0.0, 0.0, 6.105, 16.0])
    np.testing.assert_array_equal(cols["prompt_tokens"], [6755, 7319, 2287, 12])
    np.testing.assert_array_equal(cols["output_tokens"], [500, 490, 316, 1])  # at least one token, as for CSV


GOOD = json.dumps(MOONCAKE[0])


@pytest.mark.parametrize(
    ("lines", "line_no", "fragment"),
    [
        ([GOOD, '{"timestamp": 2000, "input_length": 5'], 2, "not valid JSON"),
        ([GOOD, "[1, 2, 3]"], 2, "expected a JSON object"),
        ([GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": 5}'], 2, "missing key 'hash_ids'"),
        (['{"input_length": 5, "output_length": 5, "hash_ids": []}'], 1, "missing key 'timestamp'"),
        ([GOOD, '{"timestamp": "2000", "input_length": 5, "output_length": 5, "hash_ids": []}'], 2, "timestamp '2000'"),
        ([GOOD, '{"timestamp": NaN, "input_length": 5, "output_length": 5, "hash_ids": []}'], 2, "not a finite"),
        (['{"timestamp": -1, "input_length": 5, "output_length": 5, "hash_ids": []}'], 1, "timestamp -1 is negative"),
        ([GOOD, '{"timestamp": 999, "input_length": 5, "output_length": 5, "hash_ids": []}'], 2, "time goes backwards"),
        ([GOOD, '{"timestamp": 2000, "input_length": 5.5, "output_length": 5, "hash_ids": []}'], 2, "input_length 5.5"),
        (
            [GOOD, '{"timestamp": 2000, "input_length": true, "output_length": 5, "hash_ids": []}'],
            2,
            "input_length True",
        ),
        (
            [GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": -3, "hash_ids": []}'],
            2,
            "output_length -3 is negative",
        ),
        (
            [GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": 5, "hash_ids": 7}'],
            2,
            "hash_ids 7 is not a list",
        ),
        (
            [GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": 5, "hash_ids": [1, "a"]}'],
            2,
            "hash_ids holds 'a'",
        ),
        (
            [GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": 5, "hash_ids": [1.5]}'],
            2,
            "hash_ids holds 1.5",
        ),
        ([GOOD, '{"timestamp": 2000, "input_length": 5, "output_length": 5, "hash_ids": [1e30]}'], 2, "hash_ids holds"),
        (["timestamp,input_length,output_length", GOOD], 1, "looks like CSV, set workload.trace_schema=azure or plain"),
        ([AZURE_HEADER, AZURE_OK[0]], 1, "it is the Azure schema, set workload.trace_schema=azure"),
    ],
)
def test_malformed_mooncake_lines_name_their_line(
    tmp_path: Path, lines: list[str], line_no: int, fragment: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as info:
        read_trace(path, "mooncake")
    message = str(info.value)
    assert f"{path}, line {line_no}:" in message, message
    assert fragment in message, message


@pytest.mark.parametrize("schema", ["azure", "plain", "mooncake"])
def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path, schema: str) -> None:
    path = tmp_path / "latin1.txt"
    first = AZURE_HEADER if schema == "azure" else GOOD if schema == "mooncake" else "0.0,1,1"
    path.write_bytes(first.encode() + b"\n" + "2023-11-16 18:17:04.0,caf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(TraceError, match=rf"{path}, line 2: byte 0xe9 is not UTF-8"):
        read_trace(path, schema)


@pytest.mark.parametrize("schema", ["azure", "plain"])
def test_a_mooncake_trace_read_as_csv_says_which_schema_to_set(tmp_path: Path, schema: str) -> None:
    path = _jsonl(tmp_path / "mooncake.jsonl", MOONCAKE)
    with pytest.raises(TraceError, match=r"line 1: .*set workload\.trace_schema=mooncake"):
        read_trace(path, schema)
