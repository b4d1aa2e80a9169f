"""Save and load trained policies as directories, whatever learner produced them.

A policy directory holds ``policy.json`` — the policy's class as ``module:QualName`` and
the servegym version that wrote it — next to the files the class's own ``save`` writes
(an SB3 ``model.zip``, fitted estimators, normalisation statistics). ``servegym train``
logs this directory as the ``policy/`` artifact of its MLflow run, and evaluation,
comparison and export read it back with :func:`load_policy`.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from servegym import __version__
from servegym.envs.features import Layout
from servegym.policies.base import Policy

__all__ = ["POLICY_FILE", "layout_from_json", "layout_to_json", "load_policy", "save_policy"]

POLICY_FILE = "policy.json"


def save_policy(policy: Any, directory: str | Path) -> Path:
    """Write ``policy`` (which must have ``save(directory)``) and its ``policy.json`` into ``directory``."""
    directory = Path(directory)
    save = getattr(policy, "save", None)
    if save is None:
        raise TypeError(
            f"{type(policy).__name__} has no save(directory) method; heuristics are stored as their "
            f"name and parameters in the config, not as a policy directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    save(directory)
    cls = type(policy)
    meta = {"class": f"{cls.__module__}:{cls.__qualname__}", "servegym_version": __version__}
    (directory / POLICY_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def load_policy(directory: str | Path) -> Policy:
    """The policy saved in ``directory`` by :func:`save_policy`, or a clear error saying what is missing."""
    directory = Path(directory)
    meta_path = directory / POLICY_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not a servegym policy directory: {POLICY_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        module_name, _, qualname = str(meta["class"]).partition(":")
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{meta_path}: not a valid policy description ({exc})") from exc
    if not module_name.startswith("servegym."):
        raise ValueError(f"{meta_path}: refusing to load class {meta['class']!r} from outside servegym")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    policy: Policy = obj.load(directory)
    return policy


def layout_to_json(layout: Layout) -> dict[str, Any]:
    """``layout`` as plain JSON (names and bounds), for a policy's saved configuration."""
    return {"names": list(layout.names), "low": layout.low.tolist(), "high": layout.high.tolist()}


def layout_from_json(data: dict[str, Any]) -> Layout:
    """The :class:`Layout` :func:`layout_to_json` wrote."""
    return Layout(tuple(data["names"]), np.array(data["low"], np.float32), np.array(data["high"], np.float32))
