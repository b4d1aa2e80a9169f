"""Save and load trained policies as directories, whatever learner produced them.

A policy directory holds ``policy.json`` — the policy's class as ``module:QualName`` and
the servegym version that wrote it — next to the files the class's own ``save`` writes
(an SB3 ``model.zip``, fitted estimators, normalisation statistics). ``servegym train``
logs this directory as the ``policy/`` artifact of its MLflow run, and evaluation,
comparison and export read it back with :func:`load_policy`.

Trust model. A policy directory is data, wherever it comes from (a local path, an
MLflow run's artifact, a colleague's archive), and loading it never executes code from
it. What servegym reads, and how:

* ``policy.json`` and each learner's ``*.json``: JSON. The class named must be a policy
  class defined in a ``servegym.*`` module (``act``, ``save``, ``load``), not an object
  imported there;
* ``.npz`` arrays (VecNormalize statistics, bandit state): ``numpy.load`` with
  ``allow_pickle=False``;
* an SB3 ``model.zip`` (:meth:`servegym.agents.sb3.SB3Policy.load`): the ``data`` entry
  as JSON with every entry SB3 stored as a pickle replaced from servegym's own records
  (``sb3.json``, the layout) — an entry servegym has no record for is refused, never
  unpickled — and the ``.pth`` tensors through torch's weights-only loader;
* scikit-learn estimators (``*.joblib``, :func:`load_joblib`): an unpickler that
  resolves only the numpy, joblib and scikit-learn types servegym's learners save;
  any other reference (``os.system``, ``builtins.exec``, a class of another package)
  is refused before it is imported or called.

A file that breaks these rules is refused with :class:`PolicyLoadError`, naming it.
Policy directories carry no hashes: a hash stored beside a file cannot vouch for it
(whoever wrote the file could write the hash), so safety comes from never running what
is read. Exported bundles do carry sha256s, against damage (:mod:`servegym.deploy`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler  # type: ignore[import-untyped, unused-ignore]

from servegym import __version__
from servegym.envs.features import Layout
from servegym.policies.base import Policy

__all__ = [
    "POLICY_FILE",
    "PolicyLoadError",
    "layout_from_json",
    "layout_to_json",
    "load_joblib",
    "load_policy",
    "save_policy",
]

POLICY_FILE = "policy.json"


class PolicyLoadError(ValueError):
    """A policy directory that cannot be loaded, or not without running code from it; names the file."""


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


def _policy_class(meta_path: Path, name: str) -> type:
    """The servegym policy class ``module:QualName`` names, or :class:`PolicyLoadError`."""
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith("servegym.") or not qualname:
        raise PolicyLoadError(f"{meta_path}: refusing to load class {name!r}: not a servegym policy class")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PolicyLoadError(f"{meta_path}: no class {name!r} in this servegym ({exc})") from None
    # Defined there, not imported there: sb3.py's PPO or admission.py's joblib would unpickle.
    is_policy = all(callable(getattr(obj, method, None)) for method in ("act", "save", "load"))
    if not (inspect.isclass(obj) and obj.__module__ == module_name and obj.__qualname__ == qualname and is_policy):
        raise PolicyLoadError(f"{meta_path}: refusing to load {name!r}: not a servegym policy class")
    return obj


def load_policy(directory: str | Path) -> Policy:
    """The policy saved in ``directory`` by :func:`save_policy`, loaded without running code from it.

    Raises :class:`FileNotFoundError` when ``directory`` is not a policy directory and
    :class:`PolicyLoadError` (a ``ValueError``) naming the file when a file is unreadable
    or would need code run to load (see the module's trust model).
    """
    directory = Path(directory)
    meta_path = directory / POLICY_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory} is not a servegym policy directory: {POLICY_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        name = str(meta["class"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise PolicyLoadError(f"{meta_path}: not a valid policy description ({exc})") from None
    cls = _policy_class(meta_path, name)
    try:
        policy: Policy = cls.load(directory)  # type: ignore[attr-defined]
    except PolicyLoadError:
        raise
    except (OSError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise PolicyLoadError(
            f"{directory}: not a readable {cls.__qualname__} policy ({type(exc).__name__}: {exc})"
        ) from None
    return policy


# -- scikit-learn estimators ----------------------------------------------------------------


@functools.cache
def _trusted_objects() -> dict[int, Any]:
    """What a servegym learner's joblib file may reference, by identity: numpy, joblib and scikit-learn types.

    Each is harmless to construct: arrays and dtypes, random-state constructors, and the
    estimators, trees and losses the learners fit (admission, distillation, forecasting).
    A learner that saves another estimator adds it here; its round-trip test says so.
    """
    from sklearn._loss._loss import CyHalfBinomialLoss, CyHalfSquaredError
    from sklearn._loss.link import IdentityLink, Interval, LogitLink
    from sklearn._loss.loss import HalfBinomialLoss, HalfSquaredError
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
    from sklearn.tree._tree import Tree

    array = np.zeros(2)
    # numpy's own pickling functions, whichever private module this numpy version keeps them in
    numpy_functions = (
        array.__reduce__()[0],
        array.__reduce_ex__(5)[0],
        np.float64(0).__reduce__()[0],
        np.random.RandomState(0).__reduce__()[0],
        np.random.MT19937(0).__reduce__()[0],
    )
    objects = (
        np.dtype,
        np.ndarray,
        *numpy_functions,
        np.random.MT19937,
        NumpyArrayWrapper,
        Tree,
        DecisionTreeClassifier,
        DecisionTreeRegressor,
        RandomForestRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        DummyClassifier,
        DummyRegressor,
        LinearRegression,
        HalfSquaredError,
        HalfBinomialLoss,
        CyHalfSquaredError,
        CyHalfBinomialLoss,
        IdentityLink,
        LogitLink,
        Interval,
    )
    return {id(obj): obj for obj in objects}


_TRUSTED_PACKAGES = ("numpy", "sklearn", "joblib")


class _Refused(pickle.UnpicklingError):
    """A reference in a pickle that :func:`load_joblib` will not resolve."""


def _trusted(module: str, name: str, resolve: Callable[[str, str], Any]) -> Any:
    # Checked before anything is imported: importing a module can run code too.
    if module.partition(".")[0] not in _TRUSTED_PACKAGES or "." in name:
        raise _Refused(f"{module}.{name}")
    obj = resolve(module, name)
    if _trusted_objects().get(id(obj)) is not obj:
        raise _Refused(f"{module}.{name}")
    return obj


class _NestedUnpickler(pickle._Unpickler):
    """The plain pickle joblib nests for an array of objects (gradient boosting's trees), under the same rules."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _trusted(module, name, super().find_class)
        if obj is NumpyArrayWrapper:  # only joblib's outer stream stores arrays that way
            raise _Refused(f"{module}.{name} inside an array of objects")
        return obj


class _ArrayWrapper(NumpyArrayWrapper):  # type: ignore[misc]
    """joblib's array placeholder, reading an array of objects with :class:`_NestedUnpickler`.

    Older joblib versions read that nested pickle with an unrestricted ``pickle.load``.
    """

    def read(self, unpickler: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.dtype.hasobject:
            return super().read(unpickler, *args, **kwargs)
        array = _NestedUnpickler(unpickler.file_handle).load()
        if not isinstance(array, np.ndarray):
            raise _Refused(f"a {type(array).__name__} where an array of objects was stored")
        return array


class _RestrictedUnpickler(NumpyUnpickler):  # type: ignore[misc]
    """joblib's unpickler (arrays stored raw after the pickle), resolving only :func:`_trusted_objects`."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _trusted(module, name, super().find_class)
        return _ArrayWrapper if obj is NumpyArrayWrapper else obj


def load_joblib(path: str | Path) -> Any:
    """The scikit-learn estimators a servegym learner saved with ``joblib.dump`` into ``path``, never running code.

    Unlike ``joblib.load``, which unpickles whatever the file says, the file may only
    reference the types of :func:`_trusted_objects`: anything else — a function to call,
    a class of another package, an array of Python objects — raises
    :class:`PolicyLoadError` naming the file and the reference, before it is resolved.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(str(path), file, ensure_native_byte_order=True).load()
    except _Refused as exc:
        raise PolicyLoadError(
            f"{path}: refused, it references {exc}, which is not among the scikit-learn, numpy and joblib types "
            "servegym's learners save; loading it could run code from the file"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise PolicyLoadError(
            f"{path}: not an estimator file servegym wrote (uncompressed joblib), or damaged "
            f"({type(exc).__name__}: {exc})"
        ) from None


def layout_to_json(layout: Layout) -> dict[str, Any]:
    """``layout`` as plain JSON (names and bounds), for a policy's saved configuration."""
    return {"names": list(layout.names), "low": layout.low.tolist(), "high": layout.high.tolist()}


def layout_from_json(data: dict[str, Any]) -> Layout:
    """The :class:`Layout` :func:`layout_to_json` wrote."""
    return Layout(tuple(data["names"]), np.array(data["low"], np.float32), np.array(data["high"], np.float32))
