"""Trace replay: reading the Azure and plain CSV schemas, precise errors, and exact replay."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from servegym.sim.config import ScenarioConfig, WorkloadConfig
from servegym.sim.platform import Platform
from servegym.sim.workload import TraceError, read_trace

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
