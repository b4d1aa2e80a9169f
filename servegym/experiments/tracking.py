"""MLflow glue shared by every servegym experiment: where runs go and what they record.

- :func:`tracking_uri` resolves where runs are stored to an *absolute* URI — Hydra jobs,
  joblib workers and resumed runs must all reach the same store whatever their working
  directory. Precedence: the config's ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then
  MLflow's own default, a SQLite file ``mlflow.db`` in the directory servegym was started from.
  :func:`tracking_uri` also makes MLflow open every SQLite store under a file lock
  (``<store>.lock``), so jobs started together on a new store create its tables once.
- :func:`require_server` and :func:`check_store` fail in seconds, in one line naming the
  setting and the path, for a store that cannot be used: a tracking server that does not
  answer, an unknown scheme, a corrupt, truncated or non-SQLite file, a path under a file,
  an unwritable directory (where MLflow would retry for about two minutes).
- :func:`require_store` guards read-only lookups (``export run=<id>``, ``resume=<id>``, a
  distillation teacher): MLflow would create an empty SQLite store (or ``mlruns/``) to look
  in; a missing store is refused instead, naming the path it looked at.
- :func:`provenance_tags` records what ran: git commit (and whether the tree was dirty),
  package versions, and a hash of the resolved config.
- :class:`BatchLogger` buffers metrics and sends them with ``log_batch``, about 20 times
  cheaper per point than ``log_metric`` against a SQLite store.
- :func:`flatten` turns a nested config into dotted ``key: value`` params.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hydra.experimental.callback import Callback
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _tracking_store_registry
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException
from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "BatchLogger",
    "PrepareStoreCallback",
    "StoreNotFoundError",
    "TrackingServerUnreachableError",
    "UnusableTrackingStoreError",
    "check_store",
    "config_hash",
    "flatten",
    "git_commit",
    "provenance_tags",
    "require_server",
    "require_store",
    "run_name",
    "tracking_uri",
    "uri_setting",
]

_PACKAGES = (
    "servegym",
    "numpy",
    "simpy",
    "gymnasium",
    "stable-baselines3",
    "sb3-contrib",
    "torch",
    "scikit-learn",
    "hydra-core",
    "mlflow",
)


def tracking_uri(configured: str | None = None, base_dir: str | Path | None = None) -> str:
    """The absolute MLflow tracking URI to use (see the module docstring for the precedence).

    A relative SQLite or file path is made absolute against ``base_dir`` (default: the
    current directory), so a job started in another directory still writes to the same store.
    From then on MLflow opens a SQLite store in this process through :func:`_open_sqlite_store`:
    checked, and created under a file lock (every app resolves its URI here before any client).
    """
    uri = _absolute(configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db", base_dir)
    _SETTING_OF[uri] = uri_setting(configured)
    _lock_sqlite_stores()
    return uri


def _absolute(uri: str, base_dir: str | Path | None) -> str:
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if uri.startswith("file:") or "://" in uri:
        return uri
    return (base / uri).resolve().as_uri()


_SETTING_OF: dict[str, str] = {}
"""The setting each URI :func:`tracking_uri` returned came from, for errors found when MLflow opens it."""


class StoreNotFoundError(ValueError):
    """A read-only lookup named a tracking store that does not exist."""


def require_store(uri: str, what: str) -> None:
    """Raise :class:`StoreNotFoundError` when ``uri`` is a local store (SQLite file or directory) that does not exist.

    ``what`` is the setting that needed the store (``resume=<id>``); the message names it,
    the path looked at and how to point elsewhere. Remote stores (http, databases) pass.
    """
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            return
        location = Path(path)
    elif uri.startswith("file:"):
        location = Path(unquote(urlparse(uri).path))
    elif "://" in uri:
        return
    else:
        location = Path(uri)
    if not location.exists():
        raise StoreNotFoundError(
            f"{what}: no MLflow tracking store at {location} (looked there because tracking.uri / "
            "MLFLOW_TRACKING_URI resolve to it; the default is mlflow.db in the current directory). Run from the "
            "directory that holds your mlflow.db, or pass tracking.uri=sqlite:////absolute/path/mlflow.db"
        )


def uri_setting(configured: object) -> str:
    """The setting to change for a resolved tracking URI: ``MLFLOW_TRACKING_URI`` when it came from that variable.

    Otherwise ``tracking.uri``: it was configured, or it is the default, which is replaced by setting it.
    """
    return "MLFLOW_TRACKING_URI" if not configured and os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"


class TrackingServerUnreachableError(ValueError):
    """An http(s) tracking URI names a server that does not answer."""


def require_server(uri: str, what: str = "tracking.uri", timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingServerUnreachableError` when an http(s) ``uri`` has no server listening.

    A TCP connection to the URI's host and port (80/443 by default) must open within
    ``timeout_s``; MLflow's client would otherwise retry for minutes, printing only urllib3
    warnings. ``what`` is the setting the URI came from (``tracking.uri``,
    ``MLFLOW_TRACKING_URI``); the message names it, the address and the cause. Any other
    URI goes through :func:`check_store` (its :class:`UnusableTrackingStoreError` is a
    subclass, so the callers that stop on an unreachable server stop on it too).
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        check_store(uri, what)
        return
    host = parsed.hostname
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:
        raise TrackingServerUnreachableError(f"{what} = {uri!r} is invalid: {exc}") from None
    if not host:
        raise TrackingServerUnreachableError(f"{what} = {uri!r} is invalid: it names no host")
    hint = f"start it (mlflow server --host {host} --port {port})"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except socket.gaierror as exc:
        cause, hint = f"host {host!r} not found: {exc.strerror}", "check the host name"
    except TimeoutError:
        cause = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        cause = (exc.strerror or str(exc)).lower()
    # only scheme, host and port: the URI may carry credentials
    raise TrackingServerUnreachableError(
        f"{what}: cannot reach the MLflow tracking server at {parsed.scheme}://{host}:{port} ({cause}); {hint}, "
        f"or set {what} to a running server or a local store (tracking.uri=sqlite:///mlflow.db)"
    )


class UnusableTrackingStoreError(TrackingServerUnreachableError):
    """The tracking URI names a store MLflow cannot open or create.

    A subclass of :class:`TrackingServerUnreachableError`: train, compare and export, which
    stop on an unreachable server in one line, stop on an unusable store the same way.
    """


def check_store(uri: str, what: str = "tracking.uri") -> None:
    """Raise :class:`UnusableTrackingStoreError` when MLflow could not use ``uri`` as a tracking store; create nothing.

    Refused: a scheme MLflow has no store for; for a SQLite store, a file that is corrupt,
    truncated or not SQLite, a directory in its place, a path under a file, and a missing
    store whose directory cannot be written (MLflow would retry for about two minutes). A
    missing store in a writable place passes (MLflow creates it) and so does a store that
    exists but is read-only (reading it works; a write fails at once). http(s) servers are
    :func:`require_server`'s part. ``what`` is the setting the URI came from; the message
    names it and the path.
    """
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return
    if scheme in ("", "file"):
        # MLflow 3 keeps its file store in maintenance mode: opening one ends in a long traceback.
        raise UnusableTrackingStoreError(
            f"{what} = {_without_password(uri)!r} is a directory store (file:), which this MLflow no longer opens; "
            f"use a database: {what}=sqlite:////absolute/path/mlflow.db (or an http(s) tracking server)"
        )
    try:
        _tracking_store_registry.get_store_builder(uri)  # type: ignore[no-untyped-call]
    except (UnsupportedModelRegistryStoreURIException, MlflowException):  # postgresqlx:// is the latter
        known = ", ".join(s for s in sorted(_tracking_store_registry._registry) if s)
        raise UnusableTrackingStoreError(
            f"{what} = {_without_password(uri)!r}: MLflow has no tracking store for the scheme {scheme!r} (it knows "
            f"{known}); e.g. {what}=sqlite:////absolute/path/mlflow.db or {what}=http://host:5000"
        ) from None
    store = _sqlite_path(uri)
    if store is None:
        return
    existing = next(p for p in (store, *store.parents) if p.exists())
    fix = f"set {what} to another path (tracking.uri=sqlite:////absolute/path/mlflow.db)"
    if existing == store:
        _check_sqlite_file(store, what, fix)
    elif not existing.is_dir():
        raise UnusableTrackingStoreError(
            f"{what}: cannot create the MLflow tracking store {store}: {existing} is a file, not a directory; {fix}"
        )
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise UnusableTrackingStoreError(
                f"{what}: cannot create the MLflow tracking store {store}: {existing} is not writable "
                f"({(exc.strerror or str(exc)).lower()}); {fix}"
            ) from None


def _check_sqlite_file(store: Path, what: str, fix: str) -> None:
    """Refuse a directory, or a file SQLite cannot read as a database (a cheap read of its schema, not a full check)."""
    if store.is_dir():
        raise UnusableTrackingStoreError(f"{what}: the MLflow tracking store {store} is a directory, not a file; {fix}")
    try:
        with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CANTOPEN):
            return  # busy or locked by a writer: MLflow waits for it
        raise UnusableTrackingStoreError(
            f"{what}: the MLflow tracking store {store} cannot be read as an SQLite database ({exc}): it is corrupt, "
            f"truncated or not SQLite; restore it from a backup or move it aside, or {fix}"
        ) from None


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI; None for any other URI and for an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]  # as tracking_uri and require_store read it
    return Path(path) if path and path != ":memory:" else None


def _without_password(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.password is None:
        return uri
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()


def _lock_sqlite_stores() -> None:
    """Route MLflow's SQLite store builder through :func:`_open_sqlite_store` in this process (once)."""
    builder = _tracking_store_registry.get_store_builder("sqlite://")  # type: ignore[no-untyped-call]
    if isinstance(builder, partial) and builder.func is _open_sqlite_store:
        return
    locked = partial(_open_sqlite_store, mlflow_builder=builder)
    _tracking_store_registry.register("sqlite", locked)  # type: ignore[no-untyped-call]


def _open_sqlite_store(store_uri: str, artifact_uri: str | None = None, *, mlflow_builder: Callable[..., Any]) -> Any:
    """MLflow's SQLite store, opened after :func:`check_store` and, on a file, under :func:`_creation_lock`.

    A new store's tables are created by the first client to open it: two processes doing that
    at once both start MLflow's migrations and one fails (``table metrics already exists``).
    Under the lock the second waits, then finds the tables there. An error MLflow raises
    while opening the store becomes one line naming the setting and the path.
    """
    store = _sqlite_path(store_uri)
    if store is None:
        return mlflow_builder(store_uri=store_uri, artifact_uri=artifact_uri)
    what = _SETTING_OF.get(store_uri, "tracking.uri")
    check_store(store_uri, what)
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _creation_lock(store):
            return mlflow_builder(store_uri=store_uri, artifact_uri=artifact_uri)
    except (MlflowException, SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnusableTrackingStoreError(f"{what}: cannot open the MLflow tracking store {store}: {first}") from exc


@contextmanager
def _creation_lock(store: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<store>.lock``; the system releases it however the process ends.

    Where the lock file cannot be created (a read-only directory) no store can be created
    either: an existing one is then opened without the lock.
    """
    import fcntl  # POSIX; imported here so that importing this module does not need it

    try:
        handle = open(store.with_name(f"{store.name}.lock"), "a")  # noqa: SIM115 (closed by the with below)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_name(env: str, policy: str, scenario: str, seed: int) -> str:
    """A run name that says what ran: ``{env}__{policy}__{scenario}__seed{n}`` (CleanRL's convention)."""
    return f"{env.removeprefix('servegym/')}__{policy}__{scenario}__seed{seed}"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}`` with values rendered as short strings (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    out.update(flatten(item, f"{name}.{i}."))
                else:
                    out[f"{name}.{i}"] = str(item)
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return {k: v[:6000] for k, v in out.items()}  # MLflow's limit on a param value


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the config rendered as canonical JSON: same config, same hash."""
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def git_commit(directory: str | Path | None = None) -> tuple[str, bool] | None:
    """``(commit, dirty)`` of the git checkout servegym runs from, or None outside git."""
    cwd = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, bool(status.strip())


def provenance_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """Tags that say exactly what ran: git commit, package versions, config hash."""
    tags = {"servegym.config_hash": config_hash(config)}
    git = git_commit()
    if git is not None:
        tags["mlflow.source.git.commit"] = git[0]
        tags["servegym.git_commit"] = git[0]
        tags["servegym.git_dirty"] = str(git[1]).lower()
    for package in _PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return tags


class BatchLogger:
    """Buffer ``(key, value, step)`` metrics for one run and send them in ``log_batch`` calls.

    ``flush`` sends everything buffered (MLflow accepts at most 1000 metrics per batch, so
    larger buffers go in chunks); ``log`` flushes by itself once ``flush_every`` points are
    waiting. Use it as a context manager so nothing buffered is lost when training stops
    early.
    """

    _MAX_BATCH = 1000

    def __init__(self, run_id: str, client: MlflowClient | None = None, flush_every: int = 500) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.flush_every = flush_every
        self._buffer: list[Metric] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer one value per key at ``step``; non-finite values are kept (MLflow stores NaN)."""
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), ts, int(step)) for key, value in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Send every buffered metric."""
        for chunk in _chunks(self._buffer, self._MAX_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
        self._buffer = []

    def __enter__(self) -> BatchLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _chunks(items: list[Metric], size: int) -> Iterator[list[Metric]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PrepareStoreCallback(Callback):
    """Hydra callback: check the tracking store and create it once, before a multirun launches its jobs.

    The jobs would create a new SQLite store's tables only once anyway (under the lock of
    :func:`tracking_uri`); creating it here leaves them nothing to wait for. A store that
    cannot be used (a server that does not answer, a corrupt or unwritable file) stops the
    multirun here in one line, before any job starts.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        configured = (config.get("tracking") or {}).get("uri")
        uri = tracking_uri(configured)
        try:
            require_server(uri, uri_setting(configured))
            MlflowClient(uri).search_experiments(max_results=1)
        except TrackingServerUnreachableError as exc:
            # stop before any job starts (Hydra only warns about a callback's exception)
            print(f"servegym: error: {exc}", file=sys.stderr)
            sys.exit(2)
