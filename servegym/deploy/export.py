"""Export trained and tuned policies as self-contained bundles for production services.

A bundle is a directory that :mod:`servegym.deploy.runtime` (copied into it as
``servegym_runtime.py``) loads with numpy alone. :func:`export_policy` takes any policy
servegym produces and writes:

* ``spec.json``: the observation features in order with units and valid ranges, the
  policy's kind and parameters (VecNormalize statistics included), the meaning of each
  action and, when the action is an environment's, its grids (``action.components``:
  replica counts, backends, cache levels, Platform-v0's routing margins, the semantic
  thresholds, with ``action.nvec`` and ``action.grid_source``; see :func:`action_grid`),
  the ONNX graph's interface, provenance (MLflow run, config hash, servegym version,
  evaluation KPIs) and the sha256 of every other file, its own digest last;
* ``weights.npz``: network layers, linear coefficients or tree arrays (never pickle);
* ``policy.onnx``: the same policy as an ONNX graph, exported from the torch modules
  themselves (networks) or by skl2onnx (scikit-learn models). Heuristics have none:
  their rules are control flow over windows and cooldowns kept between calls, which an
  ONNX graph could only carry as explicit state inputs and outputs; the numpy runtime
  is their executable form, and ``spec.json`` says so under ``onnx.reason``;
* ``servegym_runtime.py``: the runtime module.

``out`` is a new or empty directory, or one that holds a bundle servegym exported: with
``overwrite`` its bundle files are replaced. A directory holding anything else (a
``notes.txt``, an ``mlflow.db``) is refused with or without ``overwrite``, naming what is
there: export only ever deletes what export wrote (:func:`check_out_dir`).

Supported: stable-baselines3 PPO, A2C, DQN, SAC and sb3-contrib MaskablePPO with
``MlpPolicy`` (wrapped in the ``SB3Policy`` of :mod:`servegym.agents.sb3` or given with
their layout), scikit-learn estimators (linear models and trees natively, others
through ONNX), and every heuristic of :mod:`servegym.policies`.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servegym import __version__
from servegym.deploy import runtime
from servegym.policies.caching import AdmitAll, AdmitNone, FixedThreshold, FrequencyAdmission
from servegym.policies.routing import (
    Cheapest,
    DifficultyCascade,
    JoinShortestQueue,
    PowerOfTwoChoices,
    RandomRouter,
    RoundRobin,
    Strongest,
)
from servegym.policies.scaling import HPA, KPA, ScheduledScaling, StaticScaling, StepScaling

__all__ = [
    "ACTION_MEANINGS",
    "UNKNOWN",
    "ExportError",
    "FeatureLayout",
    "action_grid",
    "check_out_dir",
    "export_heuristic",
    "export_policy",
    "export_sb3",
    "export_sklearn",
    "feature_unit",
]

ONNX_FILE = "policy.onnx"
ONNX_OPSET = 17


class ExportError(Exception):
    """A policy that cannot be exported, with what was wrong and what would work."""


class FeatureLayout(Protocol):
    """Names and bounds of observation features (:class:`servegym.envs.features.Layout` is one)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def low(self) -> np.ndarray: ...

    @property
    def high(self) -> np.ndarray: ...


ACTION_MEANINGS: dict[str, list[str]] = {
    "servegym/Autoscaling-v0": ["target replica count (below pool.min_replicas is invalid and masked)"],
    "servegym/Routing-v0": ["index of the model backend that serves the request"],
    "servegym/Caching-v0": [
        "admission: 0 stores nothing, k stores the answer in cache level k-1 and every slower level",
        "index into the environment's semantic-threshold grid (action.components[1].values)",
    ],
    "servegym/Platform-v0": [
        "target replica count (below pool.min_replicas is invalid and masked)",
        "index into the environment's routing-margin grid (action.components[1].values)",
        "index into the environment's semantic-threshold grid (action.components[2].values)",
    ],
}
"""What each component of each environment's action means, for ``spec.json``."""

UNKNOWN = "unknown"
"""The value ``spec.json`` writes for a grid size or grid values nobody recorded (see ``action.grid_source``)."""

_UNITS_EXACT = {
    "arrival_rate_rps": "requests/s",
    "queue_len": "requests",
    "utilisation": "fraction of slots busy",
    "ready_replicas": "replicas",
    "provisioning_replicas": "replicas",
    "draining_replicas": "replicas",
    "target_replicas": "replicas",
    "slo_violation_rate": "fraction of finished requests",
    "hit_rate": "fraction of requests",
    "semantic_threshold": "cosine similarity",
    "time_of_day_sin": "sin(2 pi t / 86400 s)",
    "time_of_day_cos": "cos(2 pi t / 86400 s)",
    "log_prompt_tokens": "log1p(tokens)",
    "log_output_tokens": "log1p(tokens)",
    "difficulty": "probability scale 0..1",
    "good_answer": "0 or 1",
    "key_requests": "requests",
    "log_key_age_s": "log1p(s)",
    "routing_margin": "capability",
}
_UNITS_PREFIX = {
    "tenant_": "one-hot",
    "busy_": "calls in progress",
    "capability_": "probability scale 0..1",
    "usd_per_mtok_out_": "USD per million output tokens",
    "fill_": "fraction of capacity",
}


def feature_unit(name: str) -> str | None:
    """The unit of a servegym observation feature, from its name (None when unknown)."""
    if name in _UNITS_EXACT:
        return _UNITS_EXACT[name]
    for prefix, unit in _UNITS_PREFIX.items():
        if name.startswith(prefix):
            return unit
    if name.endswith("_s"):
        return "s"
    if name.endswith("_usd"):
        return "USD"
    if name.endswith("_tokens"):
        return "tokens"
    return None


@dataclass
class _Export:
    """What one exporter produced, before it is written as a bundle."""

    policy: dict[str, Any]
    action: dict[str, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    onnx: bytes | None = None
    onnx_info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Writing


def _features(layout: FeatureLayout) -> list[dict[str, Any]]:
    names = list(layout.names)
    low = np.asarray(layout.low, dtype=np.float64)
    high = np.asarray(layout.high, dtype=np.float64)
    if low.shape != (len(names),) or high.shape != (len(names),):
        raise ExportError(f"layout bounds have shapes {low.shape} and {high.shape}, expected ({len(names)},)")
    return [
        {
            "name": n,
            "unit": feature_unit(n),
            "low": float(lo) if math.isfinite(lo) else None,
            "high": float(hi) if math.isfinite(hi) else None,
        }
        for n, lo, hi in zip(names, low, high, strict=True)
    ]


def _json_safe(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------
# Action grids: what an action index stands for (replica counts, backends, cache levels,
# routing margins, semantic thresholds), so a service can act on a bundle's decision.


def _replicas(max_replicas: int | None, min_replicas: int | None) -> dict[str, Any]:
    if max_replicas is None:
        return {"name": "target_replicas", "unit": "replicas", "n": UNKNOWN, "values": UNKNOWN}
    low: int | str = UNKNOWN if min_replicas is None else min_replicas
    return {
        "name": "target_replicas",
        "unit": "replicas",
        "n": max_replicas + 1,
        "values": list(range(max_replicas + 1)),
        "valid_range": [low, max_replicas],
    }


def _grid(name: str, unit: str, values: Sequence[Any] | None) -> dict[str, Any]:
    if values is None:
        return {"name": name, "unit": unit, "n": UNKNOWN, "values": UNKNOWN}
    return {"name": name, "unit": unit, "n": len(values), "values": list(values)}


def action_grid(env: Any) -> dict[str, Any]:
    """The action grid of a servegym environment (an instance, wrapped or not), for ``spec.json``.

    One component per action component: ``name``, ``n`` (its size) and ``values`` (what
    each index stands for: replica counts, backend names, cache levels, routing margins
    of Platform-v0's ``margins``, semantic thresholds of the env's ``thresholds``).
    """
    from servegym.envs import AutoscalingEnv, CachingEnv, PlatformControlEnv, RoutingEnv

    base = getattr(env, "unwrapped", env)
    scenario = base.scenario
    pool = scenario.pool
    replicas = _replicas(int(pool.max_replicas), int(pool.min_replicas))
    where = f"the environment (scenario {scenario.name!r})"
    if isinstance(base, PlatformControlEnv):
        env_id = "servegym/Platform-v0"
        components = [
            replicas,
            _grid("routing_margin", "capability", base.margins),
            _grid("semantic_threshold", "cosine similarity", base.thresholds),
        ]
    elif isinstance(base, CachingEnv):
        env_id = "servegym/Caching-v0"
        levels = [n.removeprefix("fill_") for n in base.admission.names if n.startswith("fill_")]
        components = [
            _grid("admission", "cache level written from (none: not cached)", ["none", *levels]),
            _grid("semantic_threshold", "cosine similarity", base.thresholds),
        ]
    elif isinstance(base, RoutingEnv):
        env_id = "servegym/Routing-v0"
        components = [_grid("backend", "model backend", [b.name for b in scenario.backends])]
    elif isinstance(base, AutoscalingEnv):
        env_id = "servegym/Autoscaling-v0"
        components = [replicas]
    else:
        raise ExportError(f"action_grid: {type(base).__name__} is not a servegym environment")
    return {"env_id": env_id, "components": components, "source": where}


def _assumed_grid(env_id: str, layout: FeatureLayout, action: Mapping[str, Any]) -> dict[str, Any] | None:
    """The grid of ``env_id`` as far as the policy itself tells: its features and action size, the env's defaults.

    For a policy exported without its environment (a policy directory, ``export_policy``
    with only ``env_id``): replica counts from the feature bounds or the action size,
    backends and cache levels from feature names, routing margins and semantic
    thresholds from the environment's default grids when the action size agrees with
    them; anything else is written as ``"unknown"``.
    """
    from servegym.envs.caching import DEFAULT_THRESHOLDS
    from servegym.envs.platform_env import DEFAULT_MARGINS

    names = list(layout.names)
    sizes = action.get("nvec") if action.get("type") == "multi_discrete" else [action.get("n")]
    sizes = list(sizes) if isinstance(sizes, list) else []

    def size(k: int) -> int | None:
        return sizes[k] if k < len(sizes) and isinstance(sizes[k], int) else None

    def defaults(k: int, grid: Sequence[float]) -> Sequence[float] | None:
        n = size(k)
        return grid if n is None or n == len(grid) else None

    max_replicas: int | None = None
    if size(0) is not None and env_id in ("servegym/Autoscaling-v0", "servegym/Platform-v0"):
        max_replicas = int(size(0)) - 1  # type: ignore[arg-type]
    elif "target_replicas" in names:
        high = float(np.asarray(layout.high, dtype=np.float64)[names.index("target_replicas")])
        max_replicas = int(high) if math.isfinite(high) and high == int(high) else None
    valid = action.get("valid_range")
    min_replicas = int(valid[0]) if isinstance(valid, list) and valid and isinstance(valid[0], int) else None
    replicas = _replicas(max_replicas, min_replicas)
    levels = [n.removeprefix("fill_") for n in names if n.startswith("fill_")]
    backends = [n.removeprefix("busy_") for n in names if n.startswith("busy_")]
    if env_id == "servegym/Platform-v0":
        components = [
            replicas,
            _grid("routing_margin", "capability", defaults(1, DEFAULT_MARGINS)),
            _grid("semantic_threshold", "cosine similarity", defaults(2, DEFAULT_THRESHOLDS)),
        ]
    elif env_id == "servegym/Caching-v0":
        components = [
            _grid("admission", "cache level written from (none: not cached)", ["none", *levels] if levels else None),
            _grid("semantic_threshold", "cosine similarity", defaults(1, DEFAULT_THRESHOLDS)),
        ]
    elif env_id == "servegym/Routing-v0":
        components = [_grid("backend", "model backend", backends or None)]
    elif env_id == "servegym/Autoscaling-v0":
        components = [replicas]
    else:
        return None
    return {
        "env_id": env_id,
        "components": components,
        "source": (
            f"assumed: {env_id}'s default routing-margin and semantic-threshold grids, replica counts from the "
            "action size or the target_replicas bound, backends and cache levels from the feature names; the "
            "environment's arguments and scenario were not given to the exporter (export from the MLflow run, "
            f"or pass grid=action_grid(env), for exact grids); components written {UNKNOWN!r} are not known"
        ),
    }


def _apply_grid(action: dict[str, Any], grid: Mapping[str, Any] | None, env_id: str | None) -> None:
    """Write ``grid``'s components into ``action`` when the action is the environment's own.

    An action that is not the environment's (an admission policy's single choice for
    Caching-v0, a continuous threshold) keeps its own description. Multi-discrete
    actions get their ``nvec`` filled; a size the policy and the grid disagree on is an
    :class:`ExportError`.
    """
    kind = action.get("type")
    if grid is None:
        if kind == "multi_discrete":
            nvec = action.get("nvec") or [None] * len(action.get("values") or [])
            action["nvec"] = [n if isinstance(n, int) else UNKNOWN for n in nvec]
            action["grid_source"] = (
                f"{UNKNOWN}: the environment was not given to the exporter (env_id={env_id!r}); "
                "the action components' grids are not recorded"
            )
        return
    components = [dict(c) for c in grid["components"]]
    if kind == "multi_discrete":
        given = action.get("nvec") or [None] * len(action.get("values") or [])
    elif kind == "discrete":
        given = [action.get("n")]
    else:
        return
    if len(given) != len(components) or (kind == "discrete") != (len(components) == 1):
        return
    for n, component in zip(given, components, strict=True):
        if isinstance(n, int) and isinstance(component["n"], int) and n != component["n"]:
            raise ExportError(
                f"the policy's action component {component['name']!r} has {n} choices, but {grid['env_id']} "
                f"({grid['source']}) has {component['n']}: the policy was trained on another configuration"
            )
        if isinstance(n, int) and component["n"] == UNKNOWN:
            component["n"] = n
    if kind == "multi_discrete":
        action["nvec"] = [c["n"] for c in components]
    elif not isinstance(action.get("n"), int) and isinstance(components[0]["n"], int):
        action["n"] = components[0]["n"]
    action["components"] = components
    action["grid_source"] = grid["source"]


BUNDLE_FILES = frozenset({runtime.SPEC_FILE, runtime.WEIGHTS_FILE, ONNX_FILE, runtime.RUNTIME_FILE})
"""The files a bundle consists of: all that :func:`export_policy` ever writes into ``out``."""

_STAGING_PREFIX = ".servegym-export-"  # export's temporary directory inside an existing ``out``
_PYCACHE = "__pycache__"  # importing servegym_runtime from the bundle directory writes its bytecode here


def _is_bundle_spec(path: Path) -> bool:
    return _bundle_listing(path) is not None


def _bundle_listing(path: Path) -> dict[str, str] | None:
    """The sha256 by file name a bundle's ``spec.json`` records, or None if ``path`` is no bundle spec."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(spec, dict) and spec.get("format") == runtime.FORMAT):
        return None
    files = spec.get("files")
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _runtime_bytecode(path: Path) -> bool:
    """``path`` is a ``__pycache__`` holding only the compiled bundle runtime."""
    stem = Path(runtime.RUNTIME_FILE).stem
    return path.is_dir() and all(p.name.startswith(f"{stem}.") and p.suffix == ".pyc" for p in path.iterdir())


def check_out_dir(out: str | Path, overwrite: bool = False) -> list[Path]:
    """The servegym files in ``out`` that exporting there replaces, or :class:`ExportError` if it may not write there.

    ``out`` may be missing, an empty directory, or a directory holding a bundle (its
    ``spec.json`` says so) and nothing else — the bundle's files, the runtime's bytecode
    in ``__pycache__``, an interrupted export's temporary directory — and then only with
    ``overwrite``. Anything else in it is refused, naming it, whatever ``overwrite`` says:
    export never deletes a file it did not write. Nothing is changed here.
    """
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ExportError(f"out={target} is a file, not a directory: give a new or empty directory for the bundle")
    if not target.exists():
        return []
    present = sorted(target.iterdir())
    if not present:
        return []
    ours = [  # export writes no links: a link is somebody else's, whatever its name
        p
        for p in present
        if not p.is_symlink()
        and (
            (p.name in BUNDLE_FILES and p.is_file())
            or (p.name == _PYCACHE and _runtime_bytecode(p))
            or (p.name.startswith(_STAGING_PREFIX) and p.is_dir())
        )
    ]
    others = [p.name for p in present if p not in ours]
    spec = target / runtime.SPEC_FILE
    listing = _bundle_listing(spec) if spec in ours else None
    if spec in ours and listing is None:
        others.insert(0, runtime.SPEC_FILE)
        ours.remove(spec)
    elif listing is not None:
        # A bundle-named file is servegym's only as the spec recorded it: a user's own weights.npz or
        # policy.onnx dropped beside a bundle (or a bundle file edited since) is not ours to delete.
        foreign = [
            p
            for p in ours
            if p.name in BUNDLE_FILES
            and p != spec
            and (p.name not in listing or runtime.file_sha256(p) != listing[p.name])
        ]
        others = [p.name for p in foreign] + others
        ours = [p for p in ours if p not in foreign]
    elif any(p.name in BUNDLE_FILES for p in ours) and spec not in ours:
        # bundle-named files without a bundle's spec could be anybody's weights.npz
        others = [p.name for p in ours if p.name in BUNDLE_FILES] + others
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ExportError(
            f"out={target} holds {shown}, which servegym did not export there (or which changed since); "
            "overwrite=true only replaces a "
            "bundle that servegym wrote: choose a new or empty directory"
        )
    if spec not in ours:  # only bytecode or an interrupted export's leftovers: nothing to overwrite
        return ours
    if not overwrite:
        raise ExportError(
            f"out={target} already holds a policy bundle ({', '.join(p.name for p in ours)}): pass overwrite=true "
            "to replace it, or choose another directory"
        )
    return ours


def _replace_bundle(staging: Path, target: Path, old: Sequence[Path]) -> None:
    """Move the bundle in ``staging`` into the existing directory ``target``, over the old bundle's files.

    Each file is replaced atomically and ``spec.json`` last, so until then a reader meets
    the old spec, whose hashes refuse the mix; then the old bundle's files the new one
    lacks (an ONNX graph no longer exported) and its stale bytecode are removed.
    """
    new = sorted(staging.iterdir(), key=lambda p: p.name == runtime.SPEC_FILE)
    for path in new:
        os.replace(path, target / path.name)
    written = {p.name for p in new}
    for path in old:
        if path.name in written or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)  # checked above: runtime bytecode or an interrupted export's staging
        else:
            path.unlink()


def _write_bundle(
    out: str | Path,
    layout: FeatureLayout,
    export: _Export,
    provenance: Mapping[str, Any] | None,
    overwrite: bool,
    *,
    env_id: str | None = None,
    grid: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``export`` as a bundle in ``out``: a complete bundle or, on any failure, what was there before.

    A new ``out`` appears at once (a temporary sibling, then a rename); in an existing one
    (empty, or an old bundle with ``overwrite``; see :func:`check_out_dir`) the bundle is
    built in a temporary directory inside it and moved over the old files.
    ``grid`` (:func:`action_grid`) describes the environment's action; without it, an
    ``env_id`` gives the grid as far as the policy tells (:func:`_assumed_grid`).
    """
    env_id = env_id or (str(grid["env_id"]) if grid is not None else None)
    if grid is None and env_id:
        grid = _assumed_grid(env_id, layout, export.action)
    _apply_grid(export.action, grid, env_id)
    target = Path(out)
    old = check_out_dir(target, overwrite)
    existing = target.is_dir()
    if existing:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be read by a service
    try:
        files: dict[str, str] = {}
        if export.weights:
            for name, array in export.weights.items():
                if array.dtype == object:
                    raise ExportError(f"weights[{name!r}] is an object array, which only pickle could store")
            buffer = io.BytesIO()
            np.savez(buffer, **export.weights)  # type: ignore[arg-type]
            (staging / runtime.WEIGHTS_FILE).write_bytes(buffer.getvalue())
        if export.onnx is not None:
            (staging / ONNX_FILE).write_bytes(export.onnx)
            onnx_section: dict[str, Any] = {"file": ONNX_FILE, "opset": ONNX_OPSET, **export.onnx_info}
        else:
            onnx_section = {"file": None, **export.onnx_info}
        shutil.copyfile(Path(runtime.__file__), staging / runtime.RUNTIME_FILE)
        for path in sorted(staging.iterdir()):
            files[path.name] = runtime.file_sha256(path)
        spec: dict[str, Any] = {
            "format": runtime.FORMAT,
            "format_version": runtime.FORMAT_VERSION,
            "policy": export.policy,
            "features": _features(layout),
            "action": export.action,
            "onnx": onnx_section,
            "runtime": {
                "file": runtime.RUNTIME_FILE,
                "requires": ["numpy>=1.26"] + (["onnxruntime>=1.18"] if export.policy["kind"] == "onnx" else []),
                "usage": "import servegym_runtime; policy = servegym_runtime.load(bundle_dir); policy.decide(obs)",
            },
            "provenance": {
                "servegym_version": __version__,
                "exported_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                **dict(provenance or {}),
            },
            "files": files,
        }
        spec = _json_safe(spec)
        spec["spec_sha256"] = runtime.spec_digest(spec)
        (staging / runtime.SPEC_FILE).write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n")
        runtime.load(staging)  # the bundle must load before it replaces anything
        if existing:
            _replace_bundle(staging, target, old)
            staging.rmdir()
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------------
# Heuristics


def _scaling_params(policy: Any) -> dict[str, Any]:
    return {
        "min_replicas": policy.min_replicas,
        "max_replicas": policy.max_replicas,
        "slots_per_replica": policy.slots_per_replica,
        "interval_s": policy.interval_s,
    }


_NO_ONNX = (
    "heuristic rules (windows, cooldowns, schedules, counters) are control flow over state kept between "
    "decisions; servegym_runtime.py is their executable form and replays them exactly"
)


def _heuristic(policy: Any) -> _Export:
    """The kind, parameters and action of a :mod:`servegym.policies` heuristic."""
    name = type(policy).__name__
    source = f"{type(policy).__module__}.{name}"
    kind: str
    params: dict[str, Any]
    if isinstance(policy, (StaticScaling, HPA, KPA, StepScaling, ScheduledScaling)):
        params = _scaling_params(policy)
        if isinstance(policy, StaticScaling):
            kind, params["replicas"] = "static_scaling", policy.replicas
        elif isinstance(policy, HPA):
            kind = "hpa"
            params |= {
                "target_utilisation": policy.target_utilisation,
                "tolerance": policy.tolerance,
                "scale_down_stabilisation_s": policy.scale_down_stabilisation_s,
                "scale_up_pods": policy.scale_up_pods,
                "scale_up_percent": policy.scale_up_percent,
                "scale_up_period_s": policy.scale_up_period_s,
            }
        elif isinstance(policy, KPA):
            kind = "kpa"
            params |= {
                "target_concurrency": policy.target_concurrency,
                "stable_window_s": policy.stable_window_s,
                "panic_threshold": policy.panic_threshold,
                "max_scale_up_rate": policy.max_scale_up_rate,
                "max_scale_down_rate": policy.max_scale_down_rate,
                "stable_intervals": policy.stable_intervals,
                "panic_intervals": policy.panic_intervals,
            }
        elif isinstance(policy, StepScaling):
            kind = "step_scaling"
            # An unbounded upper bound is written as null (JSON has no infinity).
            params |= {
                "steps": [[lo, hi if math.isfinite(hi) else None, adj] for lo, hi, adj in policy.steps],
                "cooldown_s": policy.cooldown_s,
            }
        else:
            kind = "scheduled_scaling"
            params |= {"starts_s": list(policy.starts), "replicas": list(policy.replicas)}
        action = {
            "type": "discrete",
            "n": policy.max_replicas + 1,
            "meaning": ["target replica count"],
            "valid_range": [policy.min_replicas, policy.max_replicas],
        }
    elif isinstance(
        policy,
        (RoundRobin, RandomRouter, PowerOfTwoChoices, JoinShortestQueue, Cheapest, Strongest, DifficultyCascade),
    ):
        params = {"backend_names": list(policy.backend_names)}
        if isinstance(policy, (RandomRouter, PowerOfTwoChoices)):
            if policy.seed is not None and not isinstance(policy.seed, int):
                raise ExportError(f"{name}: seed {policy.seed!r} must be an int (or None) to be reproducible")
            params["seed"] = policy.seed
        if isinstance(policy, DifficultyCascade):
            params |= {"margin": policy.margin, "thresholds": dict(policy.thresholds)}
        kind = {
            RoundRobin: "round_robin",
            RandomRouter: "random_router",
            PowerOfTwoChoices: "power_of_two",
            JoinShortestQueue: "jsq",
            Cheapest: "cheapest",
            Strongest: "strongest",
            DifficultyCascade: "difficulty_cascade",
        }[type(policy)]
        action = {
            "type": "discrete",
            "n": policy.n_backends,
            "meaning": ["index of the model backend that serves the request"],
            "labels": list(policy.backend_names),
        }
    elif isinstance(policy, (AdmitAll, AdmitNone, FrequencyAdmission)):
        if isinstance(policy, FrequencyAdmission):
            kind, params = "frequency_admission", {"min_requests": policy.min_requests}
        else:
            kind, params = ("admit_all", {"value": 1}) if isinstance(policy, AdmitAll) else ("admit_none", {"value": 0})
        levels = [n.removeprefix("fill_") for n in policy.layout.names if n.startswith("fill_")]
        action = {
            "type": "discrete",
            "n": policy.n_levels + 1,
            "meaning": ["admission: 0 stores nothing, k stores the answer in cache level k-1 and every slower level"],
            "labels": ["none", *levels],
        }
    elif isinstance(policy, FixedThreshold):
        kind, params = "fixed_threshold", {"value": policy.threshold}
        action = {"type": "continuous", "shape": [], "meaning": ["semantic cache cosine-similarity threshold"]}
    else:
        raise ExportError(f"no exporter for the heuristic {source}")
    return _Export(
        policy={"kind": kind, "source": source, "stateful": kind in _STATEFUL, "params": params},
        action=action,
        onnx_info={"reason": _NO_ONNX},
    )


_STATEFUL = frozenset({"hpa", "kpa", "step_scaling", "round_robin", "random_router", "power_of_two"})


def export_heuristic(
    policy: Any,
    out: str | Path,
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    env_id: str | None = None,
    grid: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle for a heuristic of :mod:`servegym.policies` (its tuned parameters).

    ``grid`` / ``env_id``: the environment whose action grid to record (see :func:`export_policy`).
    """
    return _write_bundle(out, policy.layout, _heuristic(policy), provenance, overwrite, env_id=env_id, grid=grid)


# ---------------------------------------------------------------------------------------
# stable-baselines3 networks


def _activation(module: Any) -> str:
    import torch.nn as nn

    if isinstance(module, nn.Tanh):
        return "tanh"
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ExportError(
        f"activation {type(module).__name__} is not supported by the runtime; use Tanh or ReLU (SB3's defaults)"
    )


def _dense_stack(modules: Sequence[Any], where: str) -> tuple[list[Any], list[str]]:
    """Linear layers and the activation after each (``identity`` when none) of a module sequence."""
    import torch.nn as nn

    linears: list[Any] = []
    activations: list[str] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            linears.append(module)
            activations.append("identity")
        elif isinstance(module, (nn.Flatten, nn.Identity)):
            continue
        else:
            if not linears or activations[-1] != "identity":
                raise ExportError(f"{where}: {type(module).__name__} where a Linear layer was expected")
            activations[-1] = _activation(module)
    return linears, activations


def _flat_features(extractor: Any, algo: str) -> None:
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if not isinstance(extractor, FlattenExtractor):
        raise ExportError(
            f"{algo}: features extractor {type(extractor).__name__} is not supported; export MlpPolicy models "
            "(FlattenExtractor over a Box observation)"
        )


def _sb3_network(model: Any, algo: str) -> tuple[list[Any], list[str], str, dict[str, Any]]:
    """The actor (or Q network) of an SB3 model as dense layers, its head and head parameters."""
    from gymnasium import spaces

    policy = model.policy
    space = model.action_space
    extra: dict[str, Any] = {}
    if algo == "dqn":
        _flat_features(policy.q_net.features_extractor, algo)
        linears, acts = _dense_stack(list(policy.q_net.q_net), "DQN q_net")
        return linears, acts, "argmax", extra
    if algo == "sac":
        actor = policy.actor
        _flat_features(actor.features_extractor, algo)
        if getattr(actor, "use_sde", False):
            raise ExportError("sac: gSDE actors are not supported; train with use_sde=False")
        linears, acts = _dense_stack([*actor.latent_pi, actor.mu], "SAC actor")
        return linears, acts, "squashed_box", extra
    extractor = getattr(policy, "pi_features_extractor", policy.features_extractor)
    _flat_features(extractor, algo)
    linears, acts = _dense_stack([*policy.mlp_extractor.policy_net, policy.action_net], f"{algo} actor")
    if isinstance(space, spaces.Discrete):
        return linears, acts, "argmax", extra
    if isinstance(space, spaces.MultiDiscrete):
        extra["nvec"] = [int(n) for n in space.nvec]
        return linears, acts, "multi_argmax", extra
    if isinstance(space, spaces.Box):
        return linears, acts, "squashed_box" if policy.squash_output else "box", extra
    raise ExportError(f"{algo}: action space {space} is not supported (Discrete, MultiDiscrete or Box)")


def _algo_name(model: Any) -> str:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO, SAC

    if isinstance(model, MaskablePPO):
        return "maskable_ppo"
    for cls, name in ((PPO, "ppo"), (A2C, "a2c"), (DQN, "dqn"), (SAC, "sac")):
        if isinstance(model, cls):
            return name
    raise ExportError(
        f"no exporter for {type(model).__module__}.{type(model).__name__}; "
        "supported: PPO, A2C, DQN, SAC, MaskablePPO with MlpPolicy"
    )


def _sb3_onnx(
    linears: list[Any],
    activations: list[str],
    head: str,
    normalisation: Mapping[str, Any] | None,
    low: np.ndarray | None,
    high: np.ndarray | None,
    nvec: Sequence[int],
    discrete_n: int | None,
) -> bytes:
    """The actor's own torch modules, wrapped with normalisation and the head, through ``torch.onnx.export``."""
    import torch
    import torch.nn as nn

    layers: list[nn.Module] = []
    for linear, act in zip(linears, activations, strict=True):
        layers.append(linear)
        if act == "tanh":
            layers.append(nn.Tanh())
        elif act == "relu":
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)

    class Exported(nn.Module):
        mean: torch.Tensor
        std: torch.Tensor
        low: torch.Tensor
        high: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.normalise = normalisation is not None
            if normalisation is not None:
                var = torch.tensor(normalisation["var"], dtype=torch.float64)
                self.register_buffer("mean", torch.tensor(normalisation["mean"], dtype=torch.float64))
                self.register_buffer("std", torch.sqrt(var + float(normalisation["epsilon"])))
                self.clip = float(normalisation["clip_obs"])
            if low is not None and high is not None:
                self.register_buffer("low", torch.tensor(low, dtype=torch.float32))
                self.register_buffer("high", torch.tensor(high, dtype=torch.float32))

        def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = observation
            if self.normalise:  # in float64, as VecNormalize does, then float32 as SB3 feeds the network
                x = torch.clamp((x.double() - self.mean) / self.std, -self.clip, self.clip).float()
            scores = self.net(x.float())
            if head == "argmax":
                return scores.argmax(dim=1), scores
            if head == "multi_argmax":
                parts = torch.split(scores, list(nvec), dim=1)
                return torch.stack([p.argmax(dim=1) for p in parts], dim=1), scores
            a = scores
            if head == "squashed_box":
                a = self.low + 0.5 * (torch.tanh(a) + 1.0) * (self.high - self.low)
            else:
                a = torch.maximum(torch.minimum(a, self.high), self.low)
            if discrete_n is not None:
                n = discrete_n
                a64 = a[:, 0].double()
                return torch.clamp(torch.round((a64 + 1.0) / 2.0 * (n - 1)), 0, n - 1).long(), scores
            return a, scores

    module = Exported().eval()
    example = torch.zeros((1, linears[0].in_features), dtype=torch.float32)
    buffer = io.BytesIO()
    # The TorchScript exporter: a second for these small graphs, where the dynamo one takes several.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # file-like objects work with the TorchScript exporter
            input_names=["observation"],
            output_names=["action", "scores"],
            dynamic_axes={"observation": {0: "batch"}, "action": {0: "batch"}, "scores": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export_sb3(
    model: Any,
    layout: FeatureLayout,
    out: str | Path,
    *,
    obs_rms: tuple[np.ndarray, np.ndarray] | None = None,
    clip_obs: float = 10.0,
    epsilon: float = 1e-8,
    discrete_n: int | None = None,
    env_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    onnx: bool = True,
    overwrite: bool = False,
    grid: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle for a stable-baselines3 model's deterministic action.

    ``obs_rms`` is VecNormalize's ``(mean, var)``; the runtime then normalises as
    ``clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)``. ``discrete_n``
    maps a SAC actor's Box(-1, 1, (1,)) action back to ``Discrete(n)`` by rounding.
    """
    import torch

    env_id = env_id or (str(grid["env_id"]) if grid is not None else None)
    algo = _algo_name(model)
    obs_space = model.observation_space
    if len(obs_space.shape) != 1 or obs_space.shape[0] != len(layout.names):
        raise ExportError(
            f"{algo}: observation space shape {obs_space.shape} does not match the layout's "
            f"{len(layout.names)} features"
        )
    linears, activations, head, extra = _sb3_network(model, algo)
    weights: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i, linear in enumerate(linears):
            weights[f"W{i}"] = linear.weight.detach().cpu().numpy().astype(np.float32).T.copy()
            bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
            weights[f"b{i}"] = bias.detach().cpu().numpy().astype(np.float32)
    normalisation: dict[str, Any] | None = None
    if obs_rms is not None:
        mean, var = (np.asarray(v, dtype=np.float64) for v in obs_rms)
        if mean.shape != (len(layout.names),) or var.shape != mean.shape:
            raise ExportError(f"obs_rms shapes {mean.shape}, {var.shape} do not match {len(layout.names)} features")
        normalisation = {
            "kind": "vecnormalize",
            "mean": mean.tolist(),
            "var": var.tolist(),
            "epsilon": float(epsilon),
            "clip_obs": float(clip_obs),
        }
    low = high = None
    space = model.action_space
    if head in ("box", "squashed_box"):
        low = np.asarray(space.low, dtype=np.float32)
        high = np.asarray(space.high, dtype=np.float32)
        weights["action_low"], weights["action_high"] = low, high
    if discrete_n is not None and head not in ("box", "squashed_box"):
        raise ExportError(f"{algo}: discrete_n is for Box actors mapped to Discrete(n), not a {head} head")
    meaning = ACTION_MEANINGS.get(env_id or "", [f"action of {space}"])
    action: dict[str, Any]
    if head == "argmax":
        action = {"type": "discrete", "n": int(space.n), "meaning": meaning, "masks": algo == "maskable_ppo"}
    elif head == "multi_argmax":
        action = {"type": "multi_discrete", "nvec": extra["nvec"], "meaning": meaning, "masks": algo == "maskable_ppo"}
    elif discrete_n is not None:
        action = {
            "type": "discrete",
            "n": int(discrete_n),
            "meaning": meaning,
            "from_box": "int(clip(rint((a + 1) / 2 * (n - 1)), 0, n - 1))",
        }
    else:
        action = {"type": "continuous", "shape": list(space.shape), "low": low, "high": high, "meaning": meaning}
    policy = {
        "kind": "mlp",
        "source": f"{type(model).__module__}.{type(model).__name__}",
        "algo": algo,
        "stateful": False,
        "layers": len(linears),
        "activations": activations,
        "head": head,
        "normalisation": normalisation,
        "discrete_n": discrete_n,
        **extra,
    }
    export = _Export(policy=policy, action=action, weights=weights)
    if onnx:
        export.onnx = _sb3_onnx(linears, activations, head, normalisation, low, high, extra.get("nvec", []), discrete_n)
        export.onnx_info = {
            "inputs": {"observation": "float32 [batch, n_features], raw (the graph normalises)"},
            "outputs": {
                "action": "the deterministic action",
                "scores": "logits or Q-values before argmax (apply action masks here), or the raw actor output",
            },
        }
    else:
        export.onnx_info = {"reason": "not requested (onnx=False)"}
    return _write_bundle(out, layout, export, provenance, overwrite, env_id=env_id, grid=grid)


# ---------------------------------------------------------------------------------------
# scikit-learn


class _Names:
    """A layout from names alone (bounds unknown)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.low = np.full(len(self.names), -np.inf)
        self.high = np.full(len(self.names), np.inf)


def _sklearn_native(estimator: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The ``linear`` or ``tree_ensemble`` form of an estimator, or None to go through ONNX."""
    from sklearn.base import is_classifier  # type: ignore[import-untyped, unused-ignore]
    from sklearn.ensemble import (  # type: ignore[import-untyped, unused-ignore]
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped, unused-ignore]
    from sklearn.linear_model._base import LinearModel  # type: ignore[import-untyped, unused-ignore]
    from sklearn.tree import BaseDecisionTree  # type: ignore[import-untyped, unused-ignore]

    classifier = is_classifier(estimator)
    source = f"{type(estimator).__module__}.{type(estimator).__name__}"
    if (isinstance(estimator, LinearModel) and not classifier) or isinstance(estimator, LogisticRegression):
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
        policy: dict[str, Any] = {
            "kind": "linear",
            "source": source,
            "stateful": False,
            "output": "class" if classifier else "value",
            "scalar": np.ndim(estimator.coef_) == 1,
        }
        if classifier:
            policy["classes"] = estimator.classes_.tolist()
        return policy, {"coef": coef.T.copy(), "intercept": intercept}

    boosting = isinstance(estimator, (GradientBoostingClassifier, GradientBoostingRegressor))
    if isinstance(estimator, BaseDecisionTree):
        trees = [estimator]
    elif isinstance(
        estimator, (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
    ):
        trees = list(estimator.estimators_)
    elif boosting:
        trees = [t for stage in estimator.estimators_ for t in stage]  # stage-major, class-minor
    else:
        return None
    if getattr(estimator, "n_outputs_", 1) != 1 and (classifier or not isinstance(estimator, BaseDecisionTree)):
        return None
    features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
    offset = 0
    n_per_stage = estimator.estimators_.shape[1] if boosting else 1
    for k, tree in enumerate(trees):
        t = tree.tree_
        roots.append(offset)
        features.append(np.where(t.children_left >= 0, t.feature, 0))
        thresholds.append(t.threshold)
        lefts.append(np.where(t.children_left >= 0, t.children_left + offset, -1))
        rights.append(np.where(t.children_right >= 0, t.children_right + offset, -1))
        # (nodes, classes) for a classifier, (nodes, outputs) for a regressor
        value = (t.value[:, 0, :] if classifier else t.value[:, :, 0]).astype(np.float64)
        if classifier and not boosting:
            value = value / value.sum(axis=1, keepdims=True)  # proportions, as predict_proba
        if boosting and n_per_stage > 1:  # one tree per class per stage: a one-hot column block
            wide = np.zeros((len(value), n_per_stage))
            wide[:, k % n_per_stage] = value[:, 0]
            value = wide
        values.append(value)
        offset += t.node_count
    width = max(v.shape[1] for v in values)
    if any(v.shape[1] != width for v in values):
        return None
    policy = {
        "kind": "tree_ensemble",
        "source": source,
        "stateful": False,
        "output": "class" if classifier else "value",
        "combine": "sum" if boosting else "mean",
        "n_trees": len(trees),
    }
    weights = {
        "feature": np.concatenate(features).astype(np.int64),
        "threshold": np.concatenate(thresholds).astype(np.float64),
        "left": np.concatenate(lefts).astype(np.int64),
        "right": np.concatenate(rights).astype(np.int64),
        "value": np.concatenate(values),
        "roots": np.asarray(roots, dtype=np.int64),
    }
    if boosting:
        # Multiclass stages hold one tree per class, each a one-hot column of the value
        # block: adding the zero columns leaves every class sum exactly as scikit-learn adds it.
        policy["learning_rate"] = float(estimator.learning_rate)
        n = estimator.n_features_in_
        try:
            init = estimator._raw_predict_init(np.zeros((2, n), dtype=np.float32))
        except Exception as exc:
            raise ExportError(f"{source}: cannot evaluate its init estimator ({exc})") from exc
        if not np.allclose(init[0], init[1]):  # a custom init model depends on X: not a constant
            return None
        weights["init"] = np.asarray(init[0], dtype=np.float64)
    if classifier:
        policy["classes"] = estimator.classes_.tolist()
    return policy, weights


def _sklearn_onnx(estimator: Any, n_features: int) -> tuple[bytes, str]:
    """The estimator as an ONNX graph (skl2onnx) and the name of its prediction output."""
    from skl2onnx import convert_sklearn  # type: ignore[import-untyped, unused-ignore]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped, unused-ignore]
    from sklearn.base import is_classifier  # type: ignore[import-untyped, unused-ignore]

    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    try:
        graph = convert_sklearn(
            estimator,
            initial_types=[("observation", FloatTensorType([None, n_features]))],
            options=options,
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
    except Exception as exc:
        raise ExportError(
            f"{type(estimator).__name__}: skl2onnx cannot convert it ({exc}); no native or ONNX export exists"
        ) from exc
    return graph.SerializeToString(), graph.graph.output[0].name


def export_sklearn(
    estimator: Any,
    layout: FeatureLayout | Sequence[str],
    out: str | Path,
    *,
    action: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a bundle for a fitted scikit-learn estimator over the features of ``layout``.

    Linear models, decision trees, random forests, extra trees and gradient boosting
    run natively in the numpy runtime; any other estimator runs through its ONNX graph
    (the runtime then needs onnxruntime). ``layout`` may be a plain list of feature names.
    """
    from sklearn.base import is_classifier  # type: ignore[import-untyped, unused-ignore]
    from sklearn.utils.validation import check_is_fitted  # type: ignore[import-untyped, unused-ignore]

    features: FeatureLayout = _Names(layout) if isinstance(layout, Sequence) else layout
    try:
        check_is_fitted(estimator)
    except Exception as exc:
        raise ExportError(f"{type(estimator).__name__} is not fitted: {exc}") from None
    n = len(features.names)
    if getattr(estimator, "n_features_in_", n) != n:
        raise ExportError(
            f"{type(estimator).__name__} was fitted on {estimator.n_features_in_} features, the layout has {n}"
        )
    graph, output_name = _sklearn_onnx(estimator, n)
    native = _sklearn_native(estimator)
    if native is None:
        policy: dict[str, Any] = {
            "kind": "onnx",
            "source": f"{type(estimator).__module__}.{type(estimator).__name__}",
            "stateful": False,
            "onnx_file": ONNX_FILE,
            "onnx_output": output_name,
        }
        weights: dict[str, np.ndarray] = {}
    else:
        policy, weights = native
    classifier = is_classifier(estimator)
    default_action: dict[str, Any] = (
        {"type": "class", "labels": estimator.classes_.tolist(), "meaning": ["predicted class"]}
        if classifier
        else {"type": "continuous", "shape": [], "meaning": ["predicted value"]}
    )
    export = _Export(
        policy=policy,
        action=dict(action) if action is not None else default_action,
        weights=weights,
        onnx=graph,
        onnx_info={
            "inputs": {"observation": "float32 [batch, n_features]"},
            "outputs": {output_name: "the prediction (class label or value)"},
        },
    )
    return _write_bundle(out, features, export, provenance, overwrite)


# ---------------------------------------------------------------------------------------
# The learners of servegym.agents: predictive autoscaler, bandit router, learned
# admission (alone or wrapped for Caching-v0) and distilled trees. Their scikit-learn
# models are stored in the native linear / tree_ensemble forms, nested in the policy's
# spec, their arrays in weights.npz under a prefix.


def _native_part(estimator: Any, prefix: str, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An estimator's native runtime form, its weights renamed under ``prefix``."""
    native = _sklearn_native(estimator)
    if native is None:
        raise ExportError(
            f"{where}: {type(estimator).__name__} has no native form in the runtime (linear models, trees, "
            "forests and gradient boosting have)"
        )
    spec, weights = native
    return spec, {prefix + k: v for k, v in weights.items()}


def _source(policy: Any) -> str:
    return f"{type(policy).__module__}.{type(policy).__name__}"


def _predictive_export(policy: Any) -> _Export:
    from scipy.stats import norm

    from servegym.agents import predictive

    f = policy.forecaster
    weights: dict[str, np.ndarray] = {}
    models = []
    for h, model in enumerate(f.models, start=1):
        spec, part = _native_part(model, f"h{h}__", f"PredictiveAutoscaler forecaster model for {h} step(s) ahead")
        models.append(spec)
        weights |= part
    params = _scaling_params(policy) | {
        "horizon": policy.horizon,
        "cold_start_s": policy.cold_start_s,
        "slot_s_per_request": policy.learned_slot_s_per_request,
        "target_utilisation": policy.target_utilisation,
        "service_smoothing": policy.service_smoothing,
        # Not public in servegym.agents.predictive: the utilisation above which an interval's
        # work estimate is skipped, and the rate history's length (set in reset()).
        "saturated_utilisation": predictive._SATURATED,
        "day_s": predictive.DAY_S,
        "history_len": policy._history.maxlen,
    }
    forecaster = {
        "model": f.model,
        "fitted": f.fitted,
        "horizon": f.horizon,
        "lags": f.lags,
        "coverage": f.coverage,
        "normal_quantile": float(norm.ppf(0.5 + f.coverage / 2.0)),
        "interval_s": f.interval_s,
        "period_s": f.period_s,
        "use_calendar": f.use_calendar,
        "smoothing": f.smoothing,
        "trend_smoothing": f.trend_smoothing,
        "quantiles": np.asarray(f.quantiles, dtype=np.float64).tolist(),
        "models": models,
    }
    return _Export(
        policy={
            "kind": "predictive_autoscaler",
            "source": _source(policy),
            "stateful": True,
            "params": params,
            "forecaster": forecaster,
        },
        action={
            "type": "discrete",
            "n": policy.max_replicas + 1,
            "meaning": ["target replica count"],
            "valid_range": [policy.min_replicas, policy.max_replicas],
        },
        weights=weights,
        onnx_info={
            "reason": "the predictive autoscaler keeps a rate history, a clock and an online work estimate between "
            "decisions and falls back to Holt smoothing over a variable-length history; servegym_runtime.py "
            "is its executable form and replays it exactly"
        },
    )


def _bandit_export(policy: Any) -> _Export:
    if policy.seed is not None and not isinstance(policy.seed, int):
        raise ExportError(f"LinearBanditRouter: seed {policy.seed!r} must be an int (or None) to be reproducible")
    sampled = policy.explore and policy.algorithm == "thompson"
    return _Export(
        policy={
            "kind": "linear_bandit",
            "source": _source(policy),
            "stateful": sampled,
            "params": {
                "backend_names": list(policy.backend_names),
                "tenant_features": [n for n in policy.layout.names if n.startswith("tenant_")],
                "algorithm": policy.algorithm,
                "alpha": policy.alpha,
                "prior_precision": policy.prior_precision,
                "explore": bool(policy.explore),
                "seed": policy.seed,
                "updates": np.asarray(policy.updates).tolist(),
            },
        },
        action={
            "type": "discrete",
            "n": policy.n_arms,
            "meaning": ["index of the model backend that serves the request"],
            "labels": list(policy.backend_names),
        },
        weights={
            "theta": np.asarray(policy.theta, dtype=np.float64),
            "A_inv": np.asarray(policy.A_inv, dtype=np.float64),
        },
        onnx_info={
            "reason": (
                "Thompson sampling draws from numpy's random generator between decisions; servegym_runtime.py "
                "replays the stream exactly"
                if sampled
                else "a bandit router is a few dot products over a context built by name; servegym_runtime.py "
                "is its executable form"
            )
        },
    )


def _admission_spec(policy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from sklearn.ensemble import GradientBoostingClassifier  # type: ignore[import-untyped, unused-ignore]

    estimator = policy.estimator
    if not isinstance(estimator, GradientBoostingClassifier) or len(estimator.classes_) != 2:
        raise ExportError(
            f"LearnedAdmission: its estimator is a {type(estimator).__name__} with "
            f"{len(getattr(estimator, 'classes_', []))} classes; the runtime replays a binary "
            "GradientBoostingClassifier (what AdmissionLearner fits)"
        )
    classifier, weights = _native_part(estimator, "classifier__", "LearnedAdmission")
    spec = {
        "kind": "learned_admission",
        "source": _source(policy),
        "stateful": False,
        "params": {"threshold": policy.threshold, "admit_level": policy.admit_level},
        "classifier": classifier,
    }
    return spec, weights


def _admission_action(layout: FeatureLayout) -> dict[str, Any]:
    levels = [n.removeprefix("fill_") for n in layout.names if n.startswith("fill_")]
    return {
        "type": "discrete",
        "n": len(levels) + 1,
        "meaning": ["admission: 0 stores nothing, k stores the answer in cache level k-1 and every slower level"],
        "labels": ["none", *levels],
    }


def _admission_onnx(
    estimator: Any,
    threshold: float,
    admit_level: int,
    n_features: int,
    wrapper: tuple[int, list[int], int, int] | None = None,
) -> bytes:
    """The classifier's skl2onnx graph, extended to the admission decision.

    Alone: ``observation`` [N, n_features] -> ``action`` [N] (``admit_level`` when
    P(reuse) >= ``threshold``, else 0). With ``wrapper`` = (observation width, admission
    columns, flag column, threshold index) the input is Caching-v0's observation and
    ``action`` is [N, 2]: 0 at threshold decisions, then the fixed threshold index.
    Both also output the classifier's ``probabilities``.
    """
    import onnx
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn  # type: ignore[import-untyped, unused-ignore]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped, unused-ignore]

    features = "observation" if wrapper is None else "admission_features"
    model = convert_sklearn(
        estimator,
        initial_types=[(features, FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}},
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
    )
    graph = model.graph
    probabilities = next(o for o in graph.output if o.name == "probabilities")

    def const(name: str, value: Any) -> None:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))

    const("sg_class1", np.array([1], dtype=np.int64))
    const("sg_threshold", np.array(threshold, dtype=np.float32))
    const("sg_level", np.array(admit_level, dtype=np.int64))
    const("sg_zero", np.array(0, dtype=np.int64))
    nodes = [
        helper.make_node("Gather", ["probabilities", "sg_class1"], ["sg_p1"], axis=1),
        helper.make_node("GreaterOrEqual", ["sg_p1", "sg_threshold"], ["sg_keep"]),
        helper.make_node("Where", ["sg_keep", "sg_level", "sg_zero"], ["sg_admit"]),  # [N, 1]
    ]
    if wrapper is None:
        const("sg_flat", np.array([-1], dtype=np.int64))
        nodes.append(helper.make_node("Reshape", ["sg_admit", "sg_flat"], ["action"]))
        action = helper.make_tensor_value_info("action", onnx.TensorProto.INT64, [None])
    else:
        width, columns, flag, threshold_index = wrapper
        del graph.input[:]
        graph.input.append(helper.make_tensor_value_info("observation", onnx.TensorProto.FLOAT, [None, width]))
        const("sg_columns", np.array(columns, dtype=np.int64))
        const("sg_flag", np.array([flag], dtype=np.int64))
        const("sg_half", np.array(0.5, dtype=np.float32))
        const("sg_threshold_index", np.array(threshold_index, dtype=np.int64))
        graph.node.insert(0, helper.make_node("Gather", ["observation", "sg_columns"], [features], axis=1))
        nodes += [
            helper.make_node("Gather", ["observation", "sg_flag"], ["sg_flag_value"], axis=1),
            helper.make_node("Greater", ["sg_flag_value", "sg_half"], ["sg_is_threshold"]),
            helper.make_node("Where", ["sg_is_threshold", "sg_zero", "sg_admit"], ["sg_admission"]),
            helper.make_node("Where", ["sg_is_threshold", "sg_threshold_index", "sg_threshold_index"], ["sg_index"]),
            helper.make_node("Concat", ["sg_admission", "sg_index"], ["action"], axis=1),
        ]
        action = helper.make_tensor_value_info("action", onnx.TensorProto.INT64, [None, 2])
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend([action, probabilities])
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


_ADMISSION_ONNX_INFO = {
    "outputs": {
        "action": "the admission decision (Caching-v0: [admission, threshold index])",
        "probabilities": "the classifier's [P(not reused), P(reused)], float32",
    },
    "note": "onnxruntime evaluates the trees in float32: decisions within float32 rounding of the threshold may differ",
}


def _learned_admission_export(policy: Any) -> _Export:
    spec, weights = _admission_spec(policy)
    graph = _admission_onnx(policy.estimator, policy.threshold, policy.admit_level, len(policy.layout.names))
    return _Export(
        policy=spec,
        action=_admission_action(policy.layout),
        weights=weights,
        onnx=graph,
        onnx_info={"inputs": {"observation": "float32 [batch, n_features]"}, **_ADMISSION_ONNX_INFO},
    )


def _caching_env_export(policy: Any) -> _Export:
    from servegym.agents.admission import LearnedAdmission

    inner = policy.admission
    inner_layout = inner.layout
    if isinstance(inner, LearnedAdmission):
        inner_spec, inner_weights = _admission_spec(inner)
    else:
        try:
            heuristic = _heuristic(inner)
        except ExportError:
            raise ExportError(
                f"CachingEnvPolicy: no exporter for its admission policy {_source(inner)}; exportable: "
                "LearnedAdmission and the admission heuristics of servegym.policies"
            ) from None
        inner_spec, inner_weights = heuristic.policy, heuristic.weights
    names = list(policy.layout.names)
    columns = [names.index(n) for n in inner_layout.names]
    export = _Export(
        policy={
            "kind": "caching_env",
            "source": _source(policy),
            "stateful": bool(inner_spec.get("stateful", False)),
            "params": {"admission_features": list(inner_layout.names), "threshold_index": policy.threshold_index},
            "admission": inner_spec,
        },
        action={
            "type": "multi_discrete",
            # The threshold grid is the environment's: its size comes from action_grid (or is unknown).
            "nvec": [_admission_action(inner_layout)["n"], None],
            "meaning": ACTION_MEANINGS["servegym/Caching-v0"],
            "threshold_index": policy.threshold_index,
        },
        weights={f"admission__{k}": v for k, v in inner_weights.items()},
    )
    if isinstance(inner, LearnedAdmission):
        wrapper = (len(names), columns, names.index("decision_is_threshold"), policy.threshold_index)
        export.onnx = _admission_onnx(
            inner.estimator, inner.threshold, inner.admit_level, len(inner_layout.names), wrapper
        )
        export.onnx_info = {"inputs": {"observation": "float32 [batch, n_features]"}, **_ADMISSION_ONNX_INFO}
    else:
        export.onnx_info = {"reason": _NO_ONNX}
    return export


def _distilled_onnx(estimators: Sequence[Any], kind: str, n_features: int) -> bytes:
    """The trees as one graph: ``observation`` -> ``action`` ([N] int64, [N, k] int64 or [N, outputs] float)."""
    import onnx
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn  # type: ignore[import-untyped, unused-ignore]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped, unused-ignore]

    nodes: list[Any] = []
    initializers: list[Any] = []
    labels: list[str] = []
    opsets: dict[str, int] = {}
    for k, estimator in enumerate(estimators):
        options = {id(estimator): {"zipmap": False}} if kind != "continuous" else None
        part = convert_sklearn(
            estimator,
            initial_types=[("observation", FloatTensorType([None, n_features]))],
            options=options,
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
        for opset in part.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)

        def rename(name: str, k: int = k) -> str:
            return name if name in ("observation", "") else f"t{k}_{name}"

        for node in part.graph.node:
            node.name = f"t{k}_{node.name}"
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            nodes.append(node)
        for init in part.graph.initializer:
            init.name = rename(init.name)
            initializers.append(init)
        labels.append(rename(part.graph.output[0].name))
    if kind == "continuous":
        nodes.append(helper.make_node("Identity", [labels[0]], ["action"]))
        action = helper.make_tensor_value_info("action", onnx.TensorProto.FLOAT, [None, None])
    elif kind == "discrete":
        nodes.append(helper.make_node("Identity", [labels[0]], ["action"]))
        action = helper.make_tensor_value_info("action", onnx.TensorProto.INT64, [None])
    else:
        initializers.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "sg_column"))
        for k, label in enumerate(labels):
            nodes.append(helper.make_node("Reshape", [label, "sg_column"], [f"sg_component{k}"]))
        nodes.append(helper.make_node("Concat", [f"sg_component{k}" for k in range(len(labels))], ["action"], axis=1))
        action = helper.make_tensor_value_info("action", onnx.TensorProto.INT64, [None, len(labels)])
    graph = helper.make_graph(
        nodes,
        "distilled_trees",
        [helper.make_tensor_value_info("observation", onnx.TensorProto.FLOAT, [None, n_features])],
        [action],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())])
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _distilled_export(policy: Any, env_id: str | None) -> _Export:
    weights: dict[str, np.ndarray] = {}
    trees = []
    for k, estimator in enumerate(policy.estimators):
        spec, part = _native_part(estimator, f"t{k}__", f"DistilledTreePolicy tree {k}")
        trees.append(spec)
        weights |= part
    meaning = ACTION_MEANINGS.get(env_id or "", ["the teacher's action"])
    action: dict[str, Any]
    if policy.kind == "continuous":
        action = {"type": "continuous", "shape": [int(policy.estimators[0].n_outputs_)], "meaning": meaning}
    else:
        # The trees answer with the actions the teacher took; the space's size is the environment's.
        values = [[int(c) for c in t.classes_] for t in policy.estimators]
        action = {"type": policy.kind, "meaning": meaning, "values": values}
        if policy.kind == "multi_discrete":
            action["nvec"] = [None] * len(values)
    graph = _distilled_onnx(policy.estimators, policy.kind, len(policy.layout.names))
    return _Export(
        policy={
            "kind": "distilled_trees",
            "source": _source(policy),
            "stateful": False,
            "action_kind": policy.kind,
            "trees": trees,
        },
        action=action,
        weights=weights,
        onnx=graph,
        onnx_info={
            "inputs": {"observation": "float32 [batch, n_features]"},
            "outputs": {"action": "the trees' action (one column per component for multi_discrete)"},
        },
    )


def _learned(policy: Any, env_id: str | None) -> _Export | None:
    """The export of a policy trained by a scikit-learn learner of servegym.agents, or None for other policies."""
    from servegym.agents.admission import CachingEnvPolicy, LearnedAdmission
    from servegym.agents.bandit import LinearBanditRouter
    from servegym.agents.distill import DistilledTreePolicy
    from servegym.agents.predictive import PredictiveAutoscaler

    if isinstance(policy, PredictiveAutoscaler):
        return _predictive_export(policy)
    if isinstance(policy, LinearBanditRouter):
        return _bandit_export(policy)
    if isinstance(policy, LearnedAdmission):
        return _learned_admission_export(policy)
    if isinstance(policy, CachingEnvPolicy):
        return _caching_env_export(policy)
    if isinstance(policy, DistilledTreePolicy):
        return _distilled_export(policy, env_id)
    return None


# ---------------------------------------------------------------------------------------
# Dispatch


def export_policy(
    policy: Any,
    out: str | Path,
    *,
    env_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    onnx: bool = True,
    overwrite: bool = False,
    grid: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle for any policy servegym trains or tunes; returns the bundle directory.

    SB3 policies (objects with ``model``, ``layout``, ``obs_rms``, ``clip_obs``,
    ``epsilon`` and ``discrete_n``, as :class:`servegym.agents.sb3.SB3Policy`) export
    their network, heuristics their parameters, and scikit-learn estimators with a
    ``layout`` their model.

    ``grid`` (``action_grid(env)``) records the environment's action grid in
    ``spec.json``'s ``action.components`` (replica counts, backends, cache levels,
    routing margins, semantic thresholds) and fills ``action.nvec``, when the policy's
    action is that environment's. Without it, ``env_id`` (or an SB3 policy's own
    ``env_id``, or Caching-v0 for a ``CachingEnvPolicy``) gives the grid as far as the
    policy tells, with the environment's default grids, and says so in
    ``action.grid_source``; what nobody knows is written ``"unknown"``.

    ``out`` must be new or empty; ``overwrite`` lets it hold a bundle servegym exported
    (and nothing else: :func:`check_out_dir`), which is then replaced.
    """
    from stable_baselines3.common.base_class import BaseAlgorithm

    from servegym.agents.admission import CachingEnvPolicy

    if grid is not None:
        env_id = str(grid["env_id"])
    env_id = env_id or getattr(policy, "env_id", None) or None
    if env_id is None and isinstance(policy, CachingEnvPolicy):
        env_id = "servegym/Caching-v0"

    model = getattr(policy, "model", None)
    if isinstance(model, BaseAlgorithm):
        return export_sb3(
            model,
            policy.layout,
            out,
            obs_rms=getattr(policy, "obs_rms", None),
            clip_obs=float(getattr(policy, "clip_obs", 10.0)),
            epsilon=float(getattr(policy, "epsilon", 1e-8)),
            discrete_n=getattr(policy, "discrete_n", None),
            env_id=env_id,
            provenance=provenance,
            onnx=onnx,
            overwrite=overwrite,
            grid=grid,
        )
    if isinstance(policy, BaseAlgorithm):
        raise ExportError(
            f"a bare {type(policy).__name__} model has no feature layout: use export_sb3(model, layout, out) "
            "or wrap it in servegym.agents.sb3.SB3Policy"
        )
    learned = _learned(policy, env_id)
    if learned is not None:
        if not onnx and learned.onnx is not None:
            learned.onnx, learned.onnx_info = None, {"reason": "not requested (onnx=False)"}
        return _write_bundle(out, policy.layout, learned, provenance, overwrite, env_id=env_id, grid=grid)
    try:
        return export_heuristic(policy, out, provenance=provenance, overwrite=overwrite, env_id=env_id, grid=grid)
    except ExportError as exc:
        if not str(exc).startswith("no exporter"):
            raise
    raise ExportError(
        f"no exporter for {type(policy).__module__}.{type(policy).__name__}; exportable: SB3 policies "
        "(PPO, A2C, DQN, SAC, MaskablePPO), the policies of servegym's scikit-learn learners (PredictiveAutoscaler, "
        "LinearBanditRouter, LearnedAdmission, CachingEnvPolicy, DistilledTreePolicy), scikit-learn estimators "
        "(export_sklearn) and the heuristics of servegym.policies"
    )
