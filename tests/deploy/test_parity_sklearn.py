"""scikit-learn models: linear and tree models natively in numpy, the rest through ONNX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsRegressor
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from servegym.deploy import runtime
from servegym.deploy.export import export_sklearn
from tests.deploy.conftest import Recorded


def _replicas_needed(obs: np.ndarray) -> np.ndarray:
    """A regression target: replicas to serve the arrivals at 60 % utilisation (4 slots, ~2 s each)."""
    return obs[:, 0] * 2.0 / (4 * 0.6) + 0.1 * obs[:, 1]


def _scale_direction(obs: np.ndarray) -> np.ndarray:
    """A three-class target: scale down (-1), hold (0), up (1) by utilisation."""
    return np.digitize(obs[:, 2], [0.3, 0.7]) - 1


def _busy(obs: np.ndarray) -> np.ndarray:
    return (obs[:, 2] > 0.5).astype(np.int64)


CASES: list[tuple[str, Callable[[], Any], Callable[[np.ndarray], np.ndarray], str]] = [
    ("linear_regression", LinearRegression, _replicas_needed, "linear"),
    ("ridge", lambda: Ridge(alpha=0.5), _replicas_needed, "linear"),
    ("logistic_binary", lambda: LogisticRegression(max_iter=100), _busy, "linear"),
    ("logistic_multiclass", lambda: LogisticRegression(max_iter=1000), _scale_direction, "linear"),
    ("tree_regressor", lambda: DecisionTreeRegressor(max_depth=8, random_state=0), _replicas_needed, "tree_ensemble"),
    ("tree_classifier", lambda: DecisionTreeClassifier(max_depth=6, random_state=0), _scale_direction, "tree_ensemble"),
    (
        "forest_regressor",
        lambda: RandomForestRegressor(n_estimators=8, max_depth=6, random_state=0),
        _replicas_needed,
        "tree_ensemble",
    ),
    (
        "forest_classifier",
        lambda: RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0),
        _scale_direction,
        "tree_ensemble",
    ),
    (
        "boosting_regressor",
        lambda: GradientBoostingRegressor(n_estimators=15, max_depth=3, random_state=0),
        _replicas_needed,
        "tree_ensemble",
    ),
    (
        "boosting_quantile",
        lambda: GradientBoostingRegressor(loss="quantile", alpha=0.9, n_estimators=15, max_depth=3, random_state=0),
        _replicas_needed,
        "tree_ensemble",
    ),
    (
        "boosting_binary",
        lambda: GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0),
        _busy,
        "tree_ensemble",
    ),
    (
        "boosting_multiclass",
        lambda: GradientBoostingClassifier(n_estimators=10, max_depth=3, random_state=0),
        _scale_direction,
        "tree_ensemble",
    ),
    ("knn_via_onnx", lambda: KNeighborsRegressor(n_neighbors=5), _replicas_needed, "onnx"),
]


@pytest.mark.parametrize(("name", "make", "target", "kind"), CASES, ids=[c[0] for c in CASES])
def test_sklearn_parity(
    recorded: Recorded,
    tmp_path: Path,
    name: str,
    make: Callable[[], Any],
    target: Callable[[np.ndarray], np.ndarray],
    kind: str,
) -> None:
    X = recorded.interval
    estimator = make().fit(X[:1_000], target(X[:1_000]))
    expected = estimator.predict(X)
    assert len(np.unique(expected)) > 1
    bundle = runtime.load(export_sklearn(estimator, recorded.interval_layout, tmp_path / name))
    assert bundle.kind == kind
    got = bundle.decide_batch(X)
    single = np.array([bundle.decide(x) for x in X[::20]])
    session = ort.InferenceSession(str(tmp_path / name / "policy.onnx"), providers=["CPUExecutionProvider"])
    graph = np.asarray(session.run(None, {"observation": X})[0]).reshape(len(X), -1)[:, 0]
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(single, expected[::20])
        assert (graph == expected).mean() > 0.999  # skl2onnx works in float32: rare ties may differ
    else:
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * (scale if kind == "onnx" else 1.0))
        np.testing.assert_allclose(single, expected[::20], rtol=0, atol=1e-5 * (scale if kind == "onnx" else 1.0))
        np.testing.assert_allclose(graph, expected, rtol=1e-4, atol=1e-4)


def test_unfitted_and_mismatched_estimators_are_refused(recorded: Recorded, tmp_path: Path) -> None:
    from servegym.deploy.export import ExportError

    with pytest.raises(ExportError, match="not fitted"):
        export_sklearn(LinearRegression(), recorded.interval_layout, tmp_path / "a")
    model = LinearRegression().fit(recorded.interval[:100, :3], recorded.interval[:100, 0])
    with pytest.raises(ExportError, match="fitted on 3 features, the layout has 14"):
        export_sklearn(model, recorded.interval_layout, tmp_path / "b")
