"""The tracking store: jobs started together on a new store all keep their runs; a store that cannot be used fails
in seconds, in one line naming ``tracking.uri`` and the path, before any run is created."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from servegym.experiments.tracking import (
    TrackingServerUnreachableError,
    UnusableTrackingStoreError,
    check_store,
    require_server,
    tracking_uri,
)


# -- 1. jobs started together on a new SQLite store create it once --------------------------------
def _open_store_and_create_run(uri: str, barrier: Any, results: Any) -> None:
    """One job: resolve the URI as the apps do, then, with the others, open the store and create a run."""
    resolved = tracking_uri(uri)
    barrier.wait()
    try:
        MlflowClient(resolved).create_run("0")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        return
    results.put("ok")


def test_jobs_started_together_on_a_new_store_all_keep_their_runs(tmp_path: Path) -> None:
    # Without the lock, three jobs racing on MLflow's migrations lose one or two of their runs
    # (table latest_metrics already exists, duplicate column name: step) every time.
    jobs = 3
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["servegym.experiments.tracking"])  # MLflow imported once, not once a job
    barrier = context.Barrier(jobs)
    results = context.Queue()
    processes = [context.Process(target=_open_store_and_create_run, args=(uri, barrier, results)) for _ in range(jobs)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert outcomes == ["ok"] * jobs
    assert len(MlflowClient(uri).search_runs(["0"])) == jobs


# -- 2. a store that cannot be used fails in one line, in seconds, creating nothing ---------------
@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot create files in (root ignores modes: then /sys, which refuses root too)."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        for candidate in (directory, Path("/sys")):
            try:
                (candidate / "probe").touch()
            except OSError:
                yield candidate
                return
            (candidate / "probe").unlink()
        pytest.skip("no directory this process cannot write to")
    finally:
        directory.chmod(0o755)


def _sqlite_file(path: Path) -> bytes:
    """A real SQLite database of several pages (its bytes)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 400)
    db.close()
    return path.read_bytes()


def _corrupt(tmp_path: Path) -> tuple[str, Path]:
    store = tmp_path / "mlflow.db"
    data = bytearray(_sqlite_file(store))
    data[100:4096] = bytes(range(256)) * 15 + bytes(range(76))  # the schema on page 1 overwritten
    store.write_bytes(bytes(data))
    return f"sqlite:///{store}", store


def _truncated(tmp_path: Path) -> tuple[str, Path]:
    store = tmp_path / "mlflow.db"
    data = _sqlite_file(store)
    store.write_bytes(data[: len(data) // 2])
    return f"sqlite:///{store}", store


def _not_sqlite(tmp_path: Path) -> tuple[str, Path]:
    store = tmp_path / "mlflow.db"
    store.write_text("experiment,run\n1,2\n")
    return f"sqlite:///{store}", store


def _a_directory(tmp_path: Path) -> tuple[str, Path]:
    store = tmp_path / "mlflow.db"
    store.mkdir()
    return f"sqlite:///{store}", store


def _under_a_file(tmp_path: Path) -> tuple[str, Path]:
    (tmp_path / "results").write_text("not a directory")
    return f"sqlite:///{tmp_path / 'results' / 'runs' / 'mlflow.db'}", tmp_path / "results"


def _unknown_scheme(tmp_path: Path) -> tuple[str, Path]:
    return f"sqlit:///{tmp_path / 'mlflow.db'}", tmp_path / "mlflow.db"


BAD_STORES: dict[str, tuple[Callable[[Path], tuple[str, Path]], str]] = {
    "corrupt": (_corrupt, "cannot be read as an SQLite database (database disk image is malformed)"),
    "truncated": (_truncated, "cannot be read as an SQLite database (database disk image is malformed)"),
    "not SQLite": (_not_sqlite, "cannot be read as an SQLite database (file is not a database)"),
    "a directory": (_a_directory, "is a directory, not a file"),
    "under a file": (_under_a_file, "is a file, not a directory"),
    "unknown scheme": (_unknown_scheme, "MLflow has no tracking store for the scheme 'sqlit'"),
}


def _created(tmp_path: Path) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if p.name.startswith("mlflow.db") and p.name != "mlflow.db"}


@pytest.mark.parametrize("kind", BAD_STORES)
def test_require_server_refuses_a_store_that_cannot_be_used_in_one_line(kind: str, tmp_path: Path) -> None:
    make, expected = BAD_STORES[kind]
    uri, path = make(tmp_path)
    start = time.monotonic()
    with pytest.raises(UnusableTrackingStoreError) as info:
        require_server(uri, "tracking.uri")
    assert time.monotonic() - start < 1
    message = str(info.value)
    assert message.startswith("tracking.uri") and str(path) in message and expected in message, message
    assert "\n" not in message
    assert isinstance(info.value, TrackingServerUnreachableError)  # the apps already stop on those in one line
    assert not _created(tmp_path)


@pytest.mark.parametrize("kind", [kind for kind in BAD_STORES if kind != "unknown scheme"])
def test_a_client_opening_such_a_store_fails_the_same_way(kind: str, tmp_path: Path) -> None:
    # compare opens its client before require_server: a SQLite store is checked when MLflow opens it too
    make, expected = BAD_STORES[kind]
    uri, path = make(tmp_path)
    with pytest.raises(UnusableTrackingStoreError, match=r"^tracking\.uri") as info:
        MlflowClient(tracking_uri(uri))
    assert str(path) in str(info.value) and expected in str(info.value)
    assert not _created(tmp_path)


def test_an_unwritable_directory_fails_in_seconds_not_minutes(unwritable_dir: Path, tmp_path: Path) -> None:
    # MLflow retries creating the store for about two minutes
    store = unwritable_dir / "runs" / "mlflow.db"
    start = time.monotonic()
    for check in (lambda uri: require_server(uri, "tracking.uri"), lambda uri: MlflowClient(tracking_uri(uri))):
        with pytest.raises(UnusableTrackingStoreError) as info:
            check(f"sqlite:///{store}")
        assert str(info.value).startswith(
            f"tracking.uri: cannot create the MLflow tracking store {store}: {unwritable_dir} is not writable "
            "(permission denied)"
        )
    assert time.monotonic() - start < 2


def test_stores_that_can_be_used_pass_and_nothing_is_created(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database: MLflow creates its tables there
    _sqlite_file(tmp_path / "other.db")
    for uri in (
        f"sqlite:///{tmp_path / 'empty.db'}",
        f"sqlite:///{tmp_path / 'other.db'}",
        f"sqlite:///{tmp_path / 'not' / 'yet' / 'mlflow.db'}",
        "sqlite:///:memory:",
        "postgresql://user:secret@db.example/mlflow",
    ):
        require_server(uri)
    assert not (tmp_path / "not").exists()


def test_a_password_in_an_unknown_uri_is_not_printed() -> None:
    with pytest.raises(UnusableTrackingStoreError) as info:
        require_server("postgress://user:secret@db.example/mlflow", "MLFLOW_TRACKING_URI")
    assert str(info.value).startswith("MLFLOW_TRACKING_URI = 'postgress://user:***@db.example/mlflow'")
    assert "secret" not in str(info.value)


# -- 3. the apps: exit status 2, one line, no traceback, no run, in seconds ----------------------
APPS = {
    "train": ["agent=predictive", "total_timesteps=8", "eval_seeds=[7]", "episode_duration_s=300"],
    "compare": ["seeds=1", "scenario.duration_s=60"],
    "export": ["run=heuristic:hpa", "out=bundle"],
}


def _cli(command: str, args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "servegym.cli", command, *APPS[command], *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    return done, time.monotonic() - start


def _assert_refused(done: subprocess.CompletedProcess[str], elapsed_s: float, command: str, message: str) -> None:
    assert elapsed_s < 45, elapsed_s  # MLflow's retries took about two minutes; startup on a busy 2-core machine, ~10 s
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"servegym {command}: error: {message}" in done.stderr or f"servegym: error: {message}" in done.stderr


@pytest.mark.parametrize("command", APPS)
def test_the_apps_refuse_a_corrupt_store_in_one_line(command: str, tmp_path: Path) -> None:
    uri, store = _corrupt(tmp_path)
    done, elapsed_s = _cli(command, [f"tracking.uri={uri}"], tmp_path)
    _assert_refused(done, elapsed_s, command, f"tracking.uri: the MLflow tracking store {store} cannot be read")
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_the_apps_refuse_an_unwritable_directory_in_seconds(command: str, unwritable_dir: Path, tmp_path: Path) -> None:
    store = unwritable_dir / "mlflow.db"
    done, elapsed_s = _cli(command, [f"tracking.uri=sqlite:///{store}"], tmp_path)
    _assert_refused(done, elapsed_s, command, f"tracking.uri: cannot create the MLflow tracking store {store}")


def test_compare_refuses_an_unknown_scheme_in_one_line(tmp_path: Path) -> None:
    uri, _ = _unknown_scheme(tmp_path)
    done, elapsed_s = _cli("compare", [f"tracking.uri={uri}"], tmp_path)
    _assert_refused(done, elapsed_s, "compare", "tracking.uri = 'sqlit:///")


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/servegym-no-such/mlruns"])
def test_a_file_store_is_refused_in_one_line(uri: str) -> None:
    # MLflow 3 keeps its directory store in maintenance mode: opening one ended in a long traceback.
    with pytest.raises(UnusableTrackingStoreError, match=r"tracking.uri = .* is a directory store \(file:\)"):
        check_store(uri, "tracking.uri")
