"""``servegym export``: a trained or tuned policy as a deployable bundle, tracked in MLflow.

The source (``run=``) is one of:

* an MLflow run id, ``runs:/<run id>/<artifact path>`` (default path ``policy``) or
  ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` (the registered model's run):
  the run's ``policy/`` artifact, with provenance from the run (id, config hash, git
  commit, environment, agent, scenario, ``eval/*`` KPIs) that names it
  ``runs:/<run id>/<artifact path>`` whichever of these spellings was given;
* a local policy directory (written by :func:`servegym.agents.io.save_policy`);
* ``heuristic:<name>`` with ``params`` and ``scenario``: a tuned heuristic of
  :data:`servegym.policies.POLICIES`, built for that scenario (``scenario`` is the config
  group of ``servegym train``: ``scenario=multi_tenant``, ``scenario.pool.max_replicas=40``).

``spec.json``'s ``action.components`` records the environment's action grid (replica
counts, backends, cache levels, Platform-v0's routing margins, the semantic thresholds)
and ``action.nvec`` its sizes: from the scenario for a heuristic, from the run's logged
config (scenario and ``env.kwargs``) for an MLflow run, and from the policy's own
features and the environment's default grids for a policy directory (``grid_source``
says which).

The bundle is written to ``out`` (see :mod:`servegym.deploy.export`): a new or empty
directory, or with ``overwrite`` one holding a bundle servegym exported and nothing else;
any other file there is refused by name before anything is loaded. A policy from an
MLflow run is also logged into that run as a pyfunc model (``mlflow.log_model``), once:
exporting the same bundle again, under any spelling of its run, reuses it
(:func:`servegym.deploy.mlflow_model.log_bundle`); optionally registered with an alias;
serve it with ``mlflow models serve -m models:/<name>@<alias> --env-manager local``.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from servegym.deploy.export import ExportError, check_out_dir, export_policy
from servegym.deploy.runtime import BundleError
from servegym.experiments.schema import register_configs
from servegym.sim.config import ScenarioConfig

__all__ = ["ExportResult", "app", "export_source"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_SCALING = {"static", "hpa", "kpa", "step", "scheduled"}
_ROUTING = {"random", "round_robin", "jsq", "power_of_two", "cheapest", "strongest", "cascade"}
_ADMISSION = {"admit_all", "admit_none", "frequency"}


@dataclass
class ExportResult:
    """Where the bundle went and where it came from (``extra``: the registered version a ``models:/`` source named)."""

    bundle: Path
    provenance: dict[str, Any]
    model_uri: str | None = None
    registered_version: str | None = None
    model_reused: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _scenario(scenario: str | Mapping[str, Any] | ScenarioConfig) -> ScenarioConfig:
    """A scenario from a shipped name or YAML path, a composed config mapping, or itself."""
    from servegym.sim.config import ConfigError, load_scenario, scenario_from_dict

    if isinstance(scenario, ScenarioConfig):
        return scenario
    try:
        if isinstance(scenario, Mapping):
            return scenario_from_dict(scenario)
        return load_scenario(scenario)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        where = f"scenario={scenario}" if isinstance(scenario, str) else "scenario"
        raise ExportError(f"{where}: {exc}") from None


def _grid(env_id: str, scenario: ScenarioConfig, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The action grid of ``env_id`` on ``scenario`` (None when the env cannot be built there)."""
    import gymnasium as gym

    import servegym.envs  # noqa: F401 - registers the environments
    from servegym.deploy.export import action_grid
    from servegym.sim.config import ConfigError

    try:
        env = gym.make(env_id, scenario=scenario, **dict(env_kwargs or {}))
    except (ConfigError, TypeError, ValueError, gym.error.Error):
        return None  # e.g. Caching-v0 on a scenario without caches: the policy's action is not the env's anyway
    try:
        grid = action_grid(env)
    finally:
        env.close()
    return grid


def _heuristic(
    name: str, params: Mapping[str, Any], scenario: ScenarioConfig
) -> tuple[Any, str, dict[str, Any] | None]:
    """A heuristic built for ``scenario``'s pool, backends and caches, its decision's env id and action grid."""
    from servegym.envs.features import admission_layout, interval_layout, routing_layout
    from servegym.policies import POLICIES, make_policy, scaling_kwargs
    from servegym.sim.platform import Platform

    if name not in POLICIES:
        raise ExportError(f"run=heuristic:{name}: unknown heuristic; known: {', '.join(sorted(POLICIES))}")
    kwargs: dict[str, Any]
    if name in _SCALING:
        kwargs, env_id = scaling_kwargs(scenario), "servegym/Autoscaling-v0"
    elif name in _ROUTING:
        platform = Platform(scenario)
        kwargs = {"layout": routing_layout(platform), "backend_names": [b.name for b in platform.backends]}
        env_id = "servegym/Routing-v0"
    elif name in _ADMISSION:
        kwargs, env_id = {"layout": admission_layout(Platform(scenario))}, "servegym/Caching-v0"
    else:
        kwargs, env_id = {"layout": interval_layout(scenario)}, "servegym/Caching-v0"
    # servegym passes the scenario-derived arguments; the rest are the heuristic's to tune
    accepted = sorted(set(inspect.signature(POLICIES[name]).parameters) - set(kwargs))
    for key in params:
        if key not in accepted:
            raise ExportError(
                f"run=heuristic:{name} with params={dict(params)}: params.{key}: {name} has no argument {key!r} "
                f"to set; it accepts: {', '.join(accepted)}"
            )
    try:
        policy = make_policy(name, **kwargs, **dict(params))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"run=heuristic:{name} with params={dict(params)}: {exc}") from None
    return policy, env_id, _grid(env_id, scenario)


def _resolve_mlflow(source: str) -> tuple[str, str, dict[str, Any]]:
    """(run id, artifact path, the registered model and version a ``models:/`` reference named) of ``source``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    extra: dict[str, Any] = {}
    if source.startswith("models:/"):
        ref = source.removeprefix("models:/")
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = ref.partition("/")
                version = client.get_model_version(name, number)
        except Exception as exc:  # MLflow raises MlflowException subclasses and RestException
            raise ExportError(f"run={source}: no such registered model version ({_first_line(exc)})") from None
        if not version.run_id:
            raise ExportError(f"run={source}: model version {version.version} has no source run to export from")
        extra = {"registered_model": version.name, "registered_version": str(version.version)}
        return str(version.run_id), "policy", extra
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        return run_id, path.strip("/") or "policy", extra
    return source, "policy", extra


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run_grid(client: Any, run_id: str, env_id: str, workdir: Path) -> dict[str, Any] | None:
    """The action grid of the env a run trained on, from its logged ``config/config.yaml`` (None without one)."""
    import yaml

    from servegym.sim.config import scenario_from_dict

    try:
        logged = Path(client.download_artifacts(run_id, "config/config.yaml", str(workdir / "config")))
        config = yaml.safe_load(logged.read_text())
        env = config.get("env") or {}
        scenario = scenario_from_dict(config["scenario"])
    except Exception:  # no config logged (not a servegym train run): the grid is assumed
        return None
    grid = _grid(str(env.get("id") or env_id), scenario, env.get("kwargs") or {})
    if grid is not None:
        grid["source"] = f"the run's logged config (env.kwargs, scenario {scenario.name!r})"
    return grid


def _from_run(
    source: str, workdir: Path
) -> tuple[Any, str, dict[str, Any], str, dict[str, Any] | None, dict[str, Any]]:
    """The policy of an MLflow run: (policy, env id, provenance, run id, action grid, registered version).

    The provenance names the policy as ``runs:/<run id>/<artifact path>`` whichever spelling
    ``source`` is (a run id, ``runs:/<id>``, ``models:/<name>@<alias>``): the bundle, and so
    its fingerprint, is the same, and exporting it under another spelling reuses the model
    logged before. The registered version an alias or number pointed to is returned apart.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from servegym.agents.io import load_policy
    from servegym.experiments.tracking import StoreNotFoundError, require_store

    try:
        require_store(mlflow.get_tracking_uri(), f"run={source}")  # a lookup: never create an empty store
    except StoreNotFoundError as exc:
        raise ExportError(str(exc)) from None
    run_id, artifact_path, extra = _resolve_mlflow(source)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ExportError(
            f"run={source}: no MLflow run {run_id!r} at {mlflow.get_tracking_uri()} ({_first_line(exc)}); "
            "pass tracking.uri=... if the run is in another store"
        ) from None
    try:
        local = Path(client.download_artifacts(run_id, artifact_path, str(workdir)))
    except Exception as exc:
        raise ExportError(
            f"run={source}: run {run_id} has no artifact {artifact_path!r} ({_first_line(exc)}); "
            "runs of `servegym train` log the trained policy as policy/"
        ) from None
    try:
        policy = load_policy(local)
    except (FileNotFoundError, ValueError) as exc:
        raise ExportError(f"run={source}: {exc}") from None
    tags = run.data.tags
    provenance: dict[str, Any] = {
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": mlflow.get_tracking_uri(),
        "mlflow_artifact": artifact_path,
        "source": f"runs:/{run_id}/{artifact_path}",
        **{key.removeprefix("servegym."): value for key, value in tags.items() if key.startswith("servegym.")},
        "eval_kpis": {
            key.removeprefix("eval/"): value
            for key, value in sorted(run.data.metrics.items())
            if key.startswith("eval/")
        },
    }
    env_id = str(tags.get("servegym.env", ""))
    grid = _run_grid(client, run_id, env_id, workdir) if env_id else None
    return policy, env_id, provenance, run_id, grid, extra


def export_source(
    source: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    onnx: bool = True,
    log_model: bool | None = None,
    registered_model: str | None = None,
    alias: str | None = None,
    scenario: str | Mapping[str, Any] | ScenarioConfig = "default",
    params: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Export the policy named by ``source`` (see the module docstring) into ``out``.

    ``scenario`` (for ``heuristic:<name>``) is a shipped name, a YAML path, a scenario
    mapping (the composed ``scenario`` config group) or a :class:`ScenarioConfig`.
    ``log_model`` None logs the pyfunc model only for a policy that came from an MLflow
    run. Raises :class:`ExportError` with a message for people on any failure.
    """
    check_out_dir(out, overwrite)  # before any work: a directory export may not write into costs nothing
    run_id: str | None = None
    grid: dict[str, Any] | None = None
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="servegym-export-") as tmp:
        if source.startswith("heuristic:"):
            built = _scenario(scenario)
            policy, env_id, grid = _heuristic(source.removeprefix("heuristic:"), params or {}, built)
            provenance: dict[str, Any] = {"source": source, "scenario": built.name, "params": dict(params or {})}
        elif Path(source).is_dir():
            from servegym.agents.io import load_policy

            try:
                policy = load_policy(source)
            except (FileNotFoundError, ValueError) as exc:
                raise ExportError(f"run={source}: {exc}") from None
            env_id = str(getattr(policy, "env_id", "") or "")
            provenance = {"source": str(Path(source).resolve())}
        elif source.startswith(("runs:/", "models:/")) or _RUN_ID.match(source):
            policy, env_id, provenance, run_id, grid, extra = _from_run(source, Path(tmp))
        else:
            raise ExportError(
                f"run={source}: not an MLflow run id (32 hex digits), runs:/<id>/<path>, models:/<name>@<alias>, "
                "heuristic:<name>, or an existing policy directory"
            )
        bundle = export_policy(
            policy, out, env_id=env_id or None, provenance=provenance, onnx=onnx, overwrite=overwrite, grid=grid
        )
    result = ExportResult(bundle=bundle, provenance=provenance, extra=extra)
    if log_model is None:
        log_model = run_id is not None
    if alias is not None and registered_model is None:
        raise ExportError(f"mlflow.alias={alias}: set mlflow.registered_model too (the model the alias points into)")
    if log_model or registered_model is not None:
        from servegym.deploy.mlflow_model import log_bundle

        logged = log_bundle(bundle, run_id=run_id, registered_model=registered_model, alias=alias)
        result.model_uri = logged.model_uri
        result.registered_version = logged.registered_version
        result.model_reused = logged.reused
    return result


def _fail(message: str) -> None:
    print(f"servegym export: error: {message}", file=sys.stderr)
    sys.exit(2)


_REQUIRED = {
    "run": "the policy to export: an MLflow run id, runs:/<id>/policy, models:/<name>@<alias>, a policy "
    "directory or heuristic:<name> (e.g. run=heuristic:hpa)",
    "out": "the bundle directory to write (e.g. out=bundles/hpa)",
}


def _scenario_config(cfg: DictConfig, base: Path) -> dict[str, Any]:
    """The composed scenario group as a plain mapping, a relative trace path made absolute (as compare does)."""
    data = OmegaConf.to_container(cfg.scenario, resolve=True)
    scenario = {str(k): v for k, v in data.items()} if isinstance(data, dict) else {}
    workload = scenario.get("workload")
    trace = workload.get("trace_path") if isinstance(workload, dict) else None
    if isinstance(workload, dict) and trace and not Path(str(trace)).is_absolute():
        scenario["workload"] = {**workload, "trace_path": str((base / str(trace)).resolve())}
    return scenario


register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="export")
def app(cfg: DictConfig) -> None:
    """Hydra entry point of ``servegym export``."""
    import mlflow

    from servegym.experiments.tracking import (
        TrackingServerUnreachableError,
        require_server,
        tracking_uri,
        uri_setting,
    )

    for key, what in _REQUIRED.items():
        if OmegaConf.is_missing(cfg, key):
            _fail(f"{key} is required: {what}")
    base = Path(hydra.utils.get_original_cwd())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small download is noise
    uri = tracking_uri(cfg.tracking.uri, base)
    try:
        require_server(uri, uri_setting(cfg.tracking.uri))
    except TrackingServerUnreachableError as exc:
        _fail(str(exc))
    mlflow.set_tracking_uri(uri)
    log_model = cfg.mlflow.log_model
    if log_model not in ("auto", True, False):
        _fail(f"mlflow.log_model={log_model!r} must be auto, true or false")
    params = OmegaConf.to_container(cfg.params, resolve=True)
    out = Path(str(cfg.out))
    try:
        result = export_source(
            str(cfg.run),
            out if out.is_absolute() else base / out,
            overwrite=bool(cfg.overwrite),
            onnx=bool(cfg.onnx),
            log_model=None if log_model == "auto" else bool(log_model),
            registered_model=cfg.mlflow.registered_model,
            alias=cfg.mlflow.alias,
            scenario=_scenario_config(cfg, base),
            params={str(k): v for k, v in params.items()} if isinstance(params, dict) else {},
        )
    except (ExportError, BundleError) as exc:
        _fail(str(exc))
    print(f"bundle written to {result.bundle}")
    if "registered_model" in result.extra:
        print(
            f"exported {result.provenance['source']}, the run of registered model "
            f"{result.extra['registered_model']} version {result.extra['registered_version']}"
        )
    if result.model_uri is not None:
        registered = f" (registered version {result.registered_version})" if result.registered_version else ""
        if result.model_reused:
            print(f"pyfunc model unchanged: this bundle is already logged as {result.model_uri}{registered}")
        else:
            print(f"pyfunc model logged as {result.model_uri}{registered}")
