"""A corpus of bad inputs: each one ends in one clear line naming what and where, and leaves nothing behind.

Every case is a file (scenario or trace, written byte for byte) plus the command line that
reads it; the line the user sees must contain ``says``, no traceback may escape, and a
``--out`` directory the failed run asked for must not be left behind. Add a case here for
every new input format and every bad input found in the wild.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from servegym.cli import main

PLAIN_HEADER = b"time_s,prompt_tokens,output_tokens\n"


@dataclass(frozen=True)
class Case:
    """A bad input: ``files`` (name -> bytes) written into a fresh directory, then ``args`` run there."""

    name: str
    files: dict[str, bytes]
    args: list[str]
    says: str


def _trace_args(name: str, schema: str = "plain") -> list[str]:
    return ["--scenario", "trace_replay", f"workload.trace_path={name}", f"workload.trace_schema={schema}"]


CASES = [
    # -- scenario files ----------------------------------------------------------------------------
    Case(
        "empty scenario", {"s.yaml": b""}, ["--scenario", "s.yaml"], "holds no scenario (it is empty or only comments)"
    ),
    Case("comments only", {"s.yaml": b"# a scenario\n# to come\n"}, ["--scenario", "s.yaml"], "holds no scenario"),
    Case(
        "key given twice",
        {"s.yaml": b"base: default\npool: {max_replicas: 30}\npool: {max_replicas: 40}\n"},
        ["--scenario", "s.yaml"],
        "s.yaml, line 3: not valid YAML: key 'pool' is given twice in one mapping (first on line 2)",
    ),
    Case(
        "nested key given twice",
        {"s.yaml": b"base: default\npool:\n  max_replicas: 30\n  max_replicas: 40\n"},
        ["--scenario", "s.yaml"],
        "line 4: not valid YAML: key 'max_replicas' is given twice",
    ),
    Case(
        "not UTF-8",
        {"s.yaml": b"base: default\nname: caf\xe9\n"},
        ["--scenario", "s.yaml"],
        "s.yaml: line 2: byte 0xe9 is not UTF-8 text",
    ),
    Case("gzip as a scenario", {"s.yaml": b"\x1f\x8b\x08\x00\x00"}, ["--scenario", "s.yaml"], "line 1: byte 0x8b"),
    Case("directory as a scenario", {"d/keep": b""}, ["--scenario", "d"], "scenario d is a directory"),
    Case("broken YAML", {"s.yaml": b"pool: [1, 2\n"}, ["--scenario", "s.yaml"], "s.yaml, line 2: not valid YAML"),
    Case("a list, not a mapping", {"s.yaml": b"- 1\n- 2\n"}, ["--scenario", "s.yaml"], "must hold a mapping, not list"),
    Case(
        "objective price negative",
        {"s.yaml": b"base: default\nobjective: {drop_usd: -1}\n"},
        ["--scenario", "s.yaml"],
        "objective.drop_usd = -1.0 is invalid: must be a finite number >= 0",
    ),
    Case(
        "objective price NaN",
        {"s.yaml": b"base: default\nobjective: {slo_miss_usd: .nan}\n"},
        ["--scenario", "s.yaml"],
        "objective.slo_miss_usd = nan is invalid",
    ),
    Case(
        "objective price missing",
        {"s.yaml": b"base: default\nobjective: {bad_answer_usd: null}\n"},
        ["--scenario", "s.yaml"],
        "objective.bad_answer_usd = None is invalid: must be a number",
    ),
    Case(
        "catalogue of 7 TiB",
        {},
        ["workload.tenants.0.n_intents=30000000000"],
        "tenants[chat]: n_intents x n_variants x workload.embedding_dim",
    ),
    Case("astronomically long run", {}, ["--duration", "1e12"], "more than one run may simulate"),
    Case("astronomical rate", {}, ["workload.rate_rps=1e12"], "workload.rate_rps = 1e+12 means about"),
    Case("null duration without a trace", {}, ["duration_s=null"], "duration_s = None is invalid"),
    Case(
        "a tiny rate for eons",
        {},
        ["--duration", "1e13", "workload.rate_rps=1e-7"],
        "6.667e+11 control intervals, more than one run may simulate",
    ),
    # -- traces ------------------------------------------------------------------------------------
    Case("directory as a trace", {"t/keep": b""}, _trace_args("t"), "t is a directory, not a trace file"),
    Case(
        "field over the csv module's limit",
        {"t.csv": PLAIN_HEADER + b"0," + b"1" * 200_000 + b",5\n"},
        _trace_args("t.csv"),
        "t.csv, line 2: field larger than field limit",
    ),
    Case(
        "2^31 tokens",
        {"t.csv": PLAIN_HEADER + b"0,2147483648,5\n1,100,5\n"},
        _trace_args("t.csv"),
        "t.csv, line 2: prompt_tokens 2,147,483,648 is more tokens than any model takes",
    ),
    Case("trace not UTF-8", {"t.csv": PLAIN_HEADER + b"0,10,\xff\n"}, _trace_args("t.csv"), "t.csv, line 2: byte 0xff"),
    Case(
        "time going backwards",
        {"t.csv": PLAIN_HEADER + b"5,10,5\n1,10,5\n"},
        _trace_args("t.csv"),
        "t.csv, line 3: time goes backwards",
    ),
    Case(
        "mooncake: tokens over the limit",
        {"t.jsonl": b'{"timestamp": 0, "input_length": 99999999999, "output_length": 5, "hash_ids": []}\n'},
        _trace_args("t.jsonl", "mooncake"),
        "t.jsonl, line 1: input_length 99,999,999,999 is more tokens than any model takes",
    ),
    Case(
        "mooncake: a timestamp gap of 30,000 years",
        {
            "t.jsonl": b'{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": []}\n'
            b'{"timestamp": 1e15, "input_length": 5, "output_length": 5, "hash_ids": []}\n'
        },
        _trace_args("t.jsonl", "mooncake"),
        "the trace's last request comes 2.5e+11 s in",
    ),
    Case(
        "a time of 1e300 s",
        {"t.csv": PLAIN_HEADER + b"0,5,5\n1e300,5,5\n"},
        _trace_args("t.csv"),
        "is a timestamp corrupt?",
    ),
    # -- options -----------------------------------------------------------------------------------
    Case("negative --max-spans", {}, ["--max-spans", "-5"], "argument --max-spans: -5 is invalid"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_is_one_clear_line_and_leaves_nothing_behind(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    try:
        code = main(["simulate", "--duration", "5", *case.args, "--out", "out/run"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    last = err.splitlines()[-1]
    assert case.says in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no debris from a run that never ran
