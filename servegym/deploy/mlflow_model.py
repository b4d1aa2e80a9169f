"""Log an exported bundle to MLflow as a pyfunc model, optionally registered under an alias.

The model is :mod:`servegym.deploy.pyfunc_model` (logged as code) with the bundle as
its artifact, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` decide with
the bundle's own runtime, exactly as a service that loads the bundle directly::

    logged = log_bundle("bundles/ppo", run_id=run_id, registered_model="autoscaler", alias="production")
    model = mlflow.pyfunc.load_model("models:/autoscaler@production")
    model.predict(frame_of_features)["action"]

Logging is idempotent: the model is tagged with a fingerprint of the bundle (its spec and
file hashes, without the export time), and exporting the same policy into the same run
again reuses that model (and its registered version) instead of logging a copy. A
different bundle (another ONNX choice, re-evaluated KPIs) is logged as a new model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from servegym.deploy import runtime

__all__ = ["FINGERPRINT_TAG", "MODEL_NAME", "LoggedBundle", "bundle_fingerprint", "log_bundle", "signature"]

MODEL_NAME = "policy_bundle"
"""The name of the logged model inside its run (``runs:/<run id>/policy_bundle``)."""

FINGERPRINT_TAG = "servegym.bundle_sha256"
"""Tag of a logged model: :func:`bundle_fingerprint` of the bundle it holds."""

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


@dataclass(frozen=True)
class LoggedBundle:
    """Where a bundle was logged: the model URI, its registered version, and whether an earlier log was reused."""

    model_uri: str
    registered_version: str | None
    reused: bool


def bundle_fingerprint(spec: dict[str, Any]) -> str:
    """sha256 of a bundle's spec (which holds every file's hash) without the export time: same bundle, same print."""
    stable = {k: v for k, v in spec.items() if k != "spec_sha256"}
    stable["provenance"] = {k: v for k, v in (spec.get("provenance") or {}).items() if k != "exported_at"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


# MLflow's UserWarnings while logging are advice about the model's code (type hints on
# predict, an input example), which servegym writes: the signature is given explicitly from
# the bundle's features, so there is nothing for the person exporting to act on.
_MLFLOW_MODULES = r"mlflow(\.|$)"


def _logged_before(run_id: str, fingerprint: str) -> Any | None:
    """The model of this bundle already logged into run ``run_id``, if any."""
    run = mlflow.MlflowClient().get_run(run_id)
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
        output_format="list",
    )
    return next((m for m in found if m.tags.get(FINGERPRINT_TAG) == fingerprint), None)


def _register(model: Any, name: str) -> str:
    """The version of registered model ``name`` that holds ``model``: an existing one, or a new registration."""
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name = '{name}'"):  # none yet: an empty list
        if version.source == model.model_uri or getattr(version, "model_id", None) == model.model_id:
            return str(version.version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return str(mlflow.register_model(model.model_uri, name).version)


def log_bundle(
    bundle_dir: str | Path,
    *,
    run_id: str | None = None,
    experiment: str = "servegym-export",
    registered_model: str | None = None,
    alias: str | None = None,
) -> LoggedBundle:
    """Log the bundle in ``bundle_dir`` as a pyfunc model (once per run and bundle); returns where it went.

    It goes into run ``run_id`` (e.g. the training run it came from) or, without one,
    a new run of ``experiment``. The same bundle logged into the same run again reuses the
    earlier model. With ``registered_model`` the model is registered under that name (a
    model already registered there keeps its version), and ``alias`` (e.g. ``production``)
    is pointed at that version.
    """
    bundle = runtime.load(bundle_dir)  # refuse a damaged bundle before logging it
    if alias is not None and registered_model is None:
        raise ValueError(f"alias={alias!r} needs a registered model name to point into")
    fingerprint = bundle_fingerprint(bundle.spec)
    model = _logged_before(run_id, fingerprint) if run_id is not None else None
    reused = model is not None
    if model is None:
        requirements = [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", "pandas"]
        requirements += [r for r in bundle.spec["runtime"].get("requires", []) if r.startswith("onnxruntime")]
        code = Path(__file__).with_name("pyfunc_model.py")
        kwargs: dict[str, Any] = {
            "name": MODEL_NAME,
            "python_model": str(code),
            "artifacts": {BUNDLE_ARTIFACT: str(Path(bundle_dir).resolve())},
            "signature": signature(bundle),
            "pip_requirements": requirements,
            "tags": {FINGERPRINT_TAG: fingerprint},
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=_MLFLOW_MODULES)
            if run_id is not None:
                with mlflow.start_run(run_id=run_id):
                    model = mlflow.pyfunc.log_model(**kwargs)
            else:
                mlflow.set_experiment(experiment)
                with mlflow.start_run():
                    model = mlflow.pyfunc.log_model(**kwargs)
        model = mlflow.get_logged_model(model.model_id)
    version = _register(model, registered_model) if registered_model is not None else None
    if alias is not None and registered_model is not None and version is not None:
        mlflow.MlflowClient().set_registered_model_alias(registered_model, alias, version)
    return LoggedBundle(model_uri=str(model.model_uri), registered_version=version, reused=reused)
