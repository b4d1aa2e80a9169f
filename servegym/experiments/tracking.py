"""MLflow glue shared by every servegym experiment: where runs go and what they record.

- :func:`tracking_uri` resolves where runs are stored to an *absolute* URI — Hydra jobs,
  joblib workers and resumed runs must all reach the same store whatever their working
  directory. Precedence: the config's ``tracking.uri``, then ``MLFLOW_TRACKING_URI``, then
  MLflow's own default, a SQLite file ``mlflow.db`` in the directory servegym was started from.
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
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from hydra.experimental.callback import Callback
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

__all__ = [
    "BatchLogger",
    "PrepareStoreCallback",
    "StoreNotFoundError",
    "TrackingServerUnreachableError",
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
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(base / path).resolve()}"
        return uri
    if uri.startswith("file:") or "://" in uri:
        return uri
    return (base / uri).resolve().as_uri()


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
    """The setting a resolved tracking URI came from: ``tracking.uri`` when one was configured, else the variable."""
    return "tracking.uri" if configured else "MLFLOW_TRACKING_URI"


class TrackingServerUnreachableError(ValueError):
    """An http(s) tracking URI names a server that does not answer."""


def require_server(uri: str, what: str = "tracking.uri", timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingServerUnreachableError` when an http(s) ``uri`` has no server listening.

    A TCP connection to the URI's host and port (80/443 by default) must open within
    ``timeout_s``; MLflow's client would otherwise retry for minutes, printing only urllib3
    warnings. ``what`` is the setting the URI came from (``tracking.uri``,
    ``MLFLOW_TRACKING_URI``); the message names it, the address and the cause. Other
    schemes (SQLite, files, databases) pass: they are checked where they are opened.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
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
    """Hydra callback: create the tracking store once, before a multirun launches its jobs.

    A fresh SQLite store builds its tables on first use; two parallel jobs (the joblib
    launcher) doing that at once race on the same migration and one fails. Touching the
    store from the launching process first leaves the jobs nothing to create. An http(s)
    server that does not answer stops the multirun here, before any job starts.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        configured = (config.get("tracking") or {}).get("uri")
        uri = tracking_uri(configured)
        try:
            require_server(uri, uri_setting(configured))
        except TrackingServerUnreachableError as exc:
            # stop before any job starts (Hydra only warns about a callback's exception)
            print(f"servegym: error: {exc}", file=sys.stderr)
            sys.exit(2)
        MlflowClient(uri).search_experiments(max_results=1)
