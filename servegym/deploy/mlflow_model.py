"""Log an exported bundle to MLflow as a pyfunc model, optionally registered under an alias.

The model is :mod:`servegym.deploy.pyfunc_model` (logged as code) with the bundle as
its artifact, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` decide with
the bundle's own runtime, exactly as a service that loads the bundle directly::

    info = log_bundle("bundles/ppo", run_id=run_id, registered_model="autoscaler", alias="production")
    model = mlflow.pyfunc.load_model("models:/autoscaler@production")
    model.predict(frame_of_features)["action"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from servegym.deploy import runtime

__all__ = ["MODEL_NAME", "log_bundle", "signature"]

MODEL_NAME = "policy_bundle"
"""The name of the logged model inside its run (``runs:/<run id>/policy_bundle``)."""

BUNDLE_ARTIFACT = "bundle"  # the artifact key pyfunc_model.py reads (importing it would register a model)


def signature(bundle: runtime.Bundle) -> ModelSignature:
    """Inputs: one double column per feature, in order; outputs: the action column(s)."""
    inputs = Schema([ColSpec("double", name) for name in bundle.feature_names])
    action = bundle.spec["action"]
    kind = "double" if action["type"] == "continuous" else "long"
    if action["type"] == "class":
        labels = action.get("labels") or []
        kind = "string" if any(isinstance(v, str) for v in labels) else "long"
    if action["type"] == "multi_discrete":
        outputs = Schema([ColSpec("long", f"action_{k}") for k in range(len(action["nvec"]))])
    else:
        outputs = Schema([ColSpec(kind, "action")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_bundle(
    bundle_dir: str | Path,
    *,
    run_id: str | None = None,
    experiment: str = "servegym-export",
    registered_model: str | None = None,
    alias: str | None = None,
) -> ModelInfo:
    """Log the bundle in ``bundle_dir`` as a pyfunc model; returns MLflow's ``ModelInfo``.

    It goes into run ``run_id`` (e.g. the training run it came from) or, without one,
    a new run of ``experiment``. With ``registered_model`` it is registered as a new
    version of that model, and ``alias`` (e.g. ``production``) is pointed at it.
    """
    bundle = runtime.load(bundle_dir)  # refuse a damaged bundle before logging it
    if alias is not None and registered_model is None:
        raise ValueError(f"alias={alias!r} needs a registered model name to point into")
    requirements = [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", "pandas"]
    requirements += [r for r in bundle.spec["runtime"].get("requires", []) if r.startswith("onnxruntime")]
    code = Path(__file__).with_name("pyfunc_model.py")
    kwargs: dict[str, Any] = {
        "name": MODEL_NAME,
        "python_model": str(code),
        "artifacts": {BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
        "signature": signature(bundle),
        "pip_requirements": requirements,
        "registered_model_name": registered_model,
    }
    if run_id is not None:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(**kwargs)
    else:
        mlflow.set_experiment(experiment)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(**kwargs)
    if alias is not None and registered_model is not None:
        version = info.registered_model_version
        mlflow.MlflowClient().set_registered_model_alias(registered_model, alias, str(version))
    result: ModelInfo = info
    return result
