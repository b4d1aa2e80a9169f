"""An exported policy bundle as an MLflow pyfunc model (an MLflow "model from code").

MLflow logs this file with the model and runs it when the model is loaded, so serving
needs MLflow, numpy and pandas but not servegym: the bundle (an artifact of the model)
brings its own ``servegym_runtime.py``, which verifies the bundle's hashes on load.
``predict`` takes a DataFrame with one column per feature (any order; every feature,
no other column) or an array in feature order, and returns one row per observation:
column ``action`` (or ``action_0 .. action_k`` for multi-part actions). Stateful
policies (HPA windows, round robin) take the rows as consecutive decisions and keep
their state between calls in the serving process.

    mlflow models serve -m models:/<name>@<alias> --env-manager local -p 5001
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_split": {"columns": ["utilisation", ...], "data": [[0.8, ...]]}}'
"""

# MLflow reads predict's input type hint as a schema for list-of-records input, except for
# pd.DataFrame (and arrays), which it takes as "no schema from the hint": the hint says what
# serving passes and silences MLflow's request to add one.

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
from mlflow.pyfunc.model import PythonModel, PythonModelContext

BUNDLE_ARTIFACT = "bundle"


class BundleModel(PythonModel):
    """Decisions of a servegym policy bundle behind MLflow's pyfunc interface."""

    def load_context(self, context: PythonModelContext) -> None:
        """Import the bundle's own runtime module and load (and verify) the bundle."""
        root = Path(context.artifacts[BUNDLE_ARTIFACT])
        module_name = f"servegym_runtime_{abs(hash(str(root.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, root / "servegym_runtime.py")
        if spec is None or spec.loader is None:
            raise RuntimeError(f"{root}: the bundle has no loadable servegym_runtime.py")
        runtime = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = runtime  # dataclass-free, but keep it importable by name for pickling tools
        spec.loader.exec_module(runtime)
        self.bundle = runtime.load(root)

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Actions for the rows of ``model_input`` (a DataFrame of named features or an array)."""
        names = list(self.bundle.feature_names)
        if isinstance(model_input, pd.DataFrame):
            unknown = [str(c) for c in model_input.columns if c not in self.bundle.index]
            if unknown:
                raise ValueError(
                    f"unknown feature column(s) {', '.join(unknown)}; the policy reads: {', '.join(names)}"
                )
            missing = [n for n in names if n not in model_input.columns]
            if missing:
                raise ValueError(f"missing feature column(s) {', '.join(missing)}")
            X = model_input[names].to_numpy()
        else:
            X = np.asarray(model_input)
        actions = np.asarray(self.bundle.decide_batch(X))
        if actions.ndim == 1:
            return pd.DataFrame({"action": actions})
        return pd.DataFrame({f"action_{k}": actions[:, k] for k in range(actions.shape[1])})


mlflow.models.set_model(BundleModel())
