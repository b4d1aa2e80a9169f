"""Fixtures shared by the experiment tests."""

from __future__ import annotations

from collections.abc import Iterator

import mlflow
import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite tracking store per test module (creating its tables takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield uri
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
