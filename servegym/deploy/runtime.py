"""The servegym policy runtime: load an exported bundle and decide, with numpy only.

This module is vendorable: :mod:`servegym.deploy.export` copies it into every bundle as
``servegym_runtime.py``, and it imports nothing but numpy and the standard library
(onnxruntime only for the ``onnx`` kind, and only when such a bundle is loaded). A
production service needs neither servegym nor torch, stable-baselines3, Gymnasium,
SimPy, MLflow or scikit-learn::

    import servegym_runtime as runtime

    policy = runtime.load("bundles/hpa")           # verifies every sha256 first
    replicas = policy.decide({"utilisation": 0.82, ...})   # or a float vector in spec order
    actions = policy.decide_batch(observations)    # (n, n_features) -> (n,) or (n, k)
    policy.reset()                                 # stateful policies: a new episode
    policy.action_values(action)                   # {"target_replicas": 12, "routing_margin": 0.1, ...}

A bundle is a directory: ``spec.json`` (features, normalisation, action meaning,
policy parameters, provenance, and the sha256 of every other file; its own digest is
``spec_sha256``, over its canonical JSON without that key), ``weights.npz`` (arrays,
loaded with ``allow_pickle=False``), optionally ``policy.onnx``, and this module.

Policy kinds (``spec["policy"]["kind"]``):

* ``mlp``: a stack of dense layers (stable-baselines3 actor-critic actors and Q
  networks), after VecNormalize-style normalisation; the head is ``argmax`` (discrete,
  with optional action masks), ``multi_argmax`` (MultiDiscrete), ``box`` (a clipped
  mean action), ``squashed_box`` (SAC: tanh, then rescaled to the action bounds), the
  last optionally mapped back to ``Discrete(n)``;
* ``linear`` and ``tree_ensemble``: scikit-learn linear models and decision trees,
  random forests and gradient boosting, evaluated natively;
* ``onnx``: any other scikit-learn model, through onnxruntime;
* heuristics with their tuned parameters and their windows replayed exactly: ``hpa``,
  ``kpa``, ``step_scaling``, ``scheduled_scaling``, ``static_scaling``, the routers
  ``round_robin``, ``random_router``, ``power_of_two``, ``jsq``, ``cheapest``,
  ``strongest``, ``difficulty_cascade``, the admission rules ``admit_all``,
  ``admit_none``, ``frequency_admission`` and ``fixed_threshold``.

Stateful policies (HPA's stabilisation window, KPA's windows, cooldowns, round robin,
random streams) keep their state in the loaded object: ``decide`` is one control step,
``decide_batch`` takes consecutive steps in order, and ``reset()`` starts an episode.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "RUNTIME_FILE",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "Bundle",
    "BundleError",
    "ObservationError",
    "file_sha256",
    "load",
    "spec_digest",
]

FORMAT = "servegym-policy-bundle"
FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.npz"
RUNTIME_FILE = "servegym_runtime.py"


class BundleError(Exception):
    """A bundle that cannot be trusted or used: missing, incomplete, tampered or malformed."""


class ObservationError(ValueError):
    """An observation the policy must not decide on: wrong shape, type, names, or not finite."""


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_digest(spec: Mapping[str, Any]) -> str:
    """The sha256 of ``spec``'s canonical JSON, without its own ``spec_sha256`` key."""
    body = {k: v for k, v in spec.items() if k != "spec_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------
# Loading and verification


def load(directory: str | Path) -> Bundle:
    """Load the bundle in ``directory`` after verifying every file's sha256.

    Raises :class:`BundleError` naming the file when ``spec.json`` is missing, not valid
    JSON or holds a number that is not finite, its digest does not match its content, a
    listed file is missing or its hash differs, ``weights.npz`` is not a readable archive
    of arrays, or the spec asks for something this runtime does not know.

    Nothing in a bundle is executed or unpickled: ``spec.json`` is parsed as JSON,
    ``weights.npz`` is read with ``allow_pickle=False``, and ``policy.onnx`` (``onnx``
    kind only) is a graph that onnxruntime evaluates. The hashes detect damage and edits
    after export; they are no signature (whoever can write the files can write the spec).
    """
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"{root}: not a directory; expected a policy bundle written by `servegym export`")
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise BundleError(f"{root}: incomplete bundle, {SPEC_FILE} is missing")
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{spec_path}: not readable JSON ({exc}); the bundle is damaged") from None
    bad = _non_finite(spec)
    if bad is not None:
        where, value = bad
        raise BundleError(
            f"{spec_path}: {where} is {value}, not a finite number; export writes none, so the spec was edited "
            "or damaged: export the bundle again"
        )
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise BundleError(f"{spec_path}: not a servegym policy bundle (format must be {FORMAT!r})")
    if spec.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{spec_path}: bundle format version {spec.get('format_version')!r}, "
            f"this runtime reads version {FORMAT_VERSION}; export again or use the runtime shipped in the bundle"
        )
    expected = spec.get("spec_sha256")
    actual = spec_digest(spec)
    if expected != actual:
        raise BundleError(
            f"{spec_path}: tampered, spec_sha256 is {expected!r} but the content hashes to {actual!r}; "
            "the spec was edited after export"
        )
    files = spec.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{spec_path}: no 'files' table with the sha256 of the bundle's files")
    for name, digest in sorted(files.items()):
        path = root / name
        if Path(name).name != name:
            raise BundleError(f"{spec_path}: file name {name!r} must be a plain name inside the bundle")
        if not path.is_file():
            raise BundleError(f"{root}: incomplete bundle, {name} is missing (listed in {SPEC_FILE})")
        got = file_sha256(path)
        if got != digest:
            raise BundleError(f"{path}: tampered, sha256 {got} does not match {digest} recorded in {SPEC_FILE}")
    weights = _read_weights(root / WEIGHTS_FILE) if WEIGHTS_FILE in files else {}
    return Bundle(spec, weights, root)


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite number in parsed JSON (Python's json reads NaN, Infinity, 1e999) and its key path."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "the spec", value)
    if isinstance(value, dict):
        items: Any = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _non_finite(item, path)
        if found is not None:
            return found
    return None


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``weights.npz``, never unpickling; a damaged archive is a :class:`BundleError` naming it."""
    damaged = f"{path}: damaged, not a readable .npz archive of arrays"
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:  # not a zip: numpy would read it as a pickle, which is refused
        raise BundleError(f"{damaged} ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{damaged} ({type(exc).__name__}: {exc}); export the bundle again") from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a lone .npy array, not an archive of named ones
        raise BundleError(f"{damaged} (it holds a single unnamed array)")
    try:
        with data:
            return {str(k): np.asarray(data[k]) for k in data}
    except ValueError as exc:  # object arrays need pickle: refused
        raise BundleError(f"{path}: unreadable without pickle ({exc})") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise BundleError(f"{damaged} ({type(exc).__name__}: {exc}); export the bundle again") from None


class Bundle:
    """A loaded, verified policy: ``decide`` one observation, ``decide_batch`` many, ``reset``.

    ``feature_names`` gives the observation's features in order; an observation is
    either a vector of that length (float32 or any real dtype) or a mapping from every
    feature name to a number.
    """

    def __init__(self, spec: dict[str, Any], weights: Mapping[str, np.ndarray], root: Path | None = None) -> None:
        self.spec = spec
        self.root = root
        try:
            features = spec["features"]
            self.feature_names: tuple[str, ...] = tuple(str(f["name"]) for f in features)
            policy = spec["policy"]
            self.kind: str = str(policy["kind"])
        except (KeyError, TypeError) as exc:
            raise BundleError(f"spec.json lacks {exc}: not a complete bundle spec") from None
        self.n_features = len(self.feature_names)
        self.index = {n: i for i, n in enumerate(self.feature_names)}
        factory = _KINDS.get(self.kind)
        if factory is None:
            raise BundleError(
                f"spec.json: unknown policy kind {self.kind!r}; this runtime knows {', '.join(sorted(_KINDS))}"
            )
        try:
            self._policy = factory(policy, weights, self.index, root)
        except KeyError as exc:
            raise BundleError(f"spec.json / weights.npz: the {self.kind} policy lacks {exc}") from None
        except (IndexError, TypeError, ValueError) as exc:  # a value of the wrong type or shape
            raise BundleError(
                f"spec.json / weights.npz: the {self.kind} policy's parameters are malformed "
                f"({type(exc).__name__}: {exc}); export the bundle again"
            ) from None
        self._shape = (self.n_features,)
        self._x = np.zeros(self.n_features, dtype=np.float64)
        self._single = self._policy.single

    def __repr__(self) -> str:
        return f"Bundle(kind={self.kind!r}, features={self.n_features}, root={str(self.root)!r})"

    # -- observations ------------------------------------------------------------------

    def _from_mapping(self, observation: Mapping[str, Any], where: str = "") -> np.ndarray:
        unknown = [k for k in observation if k not in self.index]
        if unknown:
            raise ObservationError(
                f"{where}unknown feature name(s) {', '.join(map(repr, unknown))}; "
                f"this policy reads: {', '.join(self.feature_names)}"
            )
        missing = [n for n in self.feature_names if n not in observation]
        if missing:
            raise ObservationError(f"{where}missing feature(s) {', '.join(missing)}")
        values = np.empty(self.n_features, dtype=np.float64)
        for i, name in enumerate(self.feature_names):
            value = observation[name]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ObservationError(
                    f"{where}feature {name!r} is {value!r} ({type(value).__name__}), expected a real number"
                )
            values[i] = value
        return values

    def _bad_value(self, x: np.ndarray, where: str = "") -> ObservationError:
        k = int(np.argmin(np.isfinite(x)))
        return ObservationError(f"{where}feature {self.feature_names[k]!r} (index {k}) is {x[k]}, not a finite number")

    def observation(self, observation: Any) -> np.ndarray:
        """``observation`` checked and converted to a float64 vector in feature order.

        The vector is a buffer reused by the next call: copy it to keep it.
        """
        x = self._x
        if type(observation) is np.ndarray:
            if observation.shape != self._shape:
                raise ObservationError(
                    f"observation has shape {observation.shape}, expected ({self.n_features},) for the features "
                    f"{', '.join(self.feature_names)}"
                )
            if observation.dtype.kind not in "fiu":
                raise ObservationError(
                    f"observation has dtype {observation.dtype}, expected a real number type such as float32"
                )
            x[:] = observation
        elif isinstance(observation, Mapping):
            x[:] = self._from_mapping(observation)
        else:
            return self.observation(_as_array(observation))
        # One dot product catches NaN and +-inf anywhere (squares of float32 never overflow float64).
        if not math.isfinite(x @ x):
            raise self._bad_value(x)
        return x

    def observations(self, observations: Any) -> np.ndarray:
        """A batch (an ``(n, n_features)`` array or a sequence of mappings) checked, as float64."""
        if isinstance(observations, np.ndarray) or not isinstance(observations, Sequence) or not observations:
            X = _as_array(observations)
            if X.ndim != 2 or X.shape[1] != self.n_features:
                raise ObservationError(
                    f"batch has shape {X.shape}, expected (n, {self.n_features}) for the features "
                    f"{', '.join(self.feature_names)}"
                )
            if X.dtype.kind not in "fiu":
                raise ObservationError(f"batch has dtype {X.dtype}, expected a real number type such as float32")
            X = X.astype(np.float64)
        elif isinstance(observations[0], Mapping):
            X = np.stack([self._from_mapping(o, f"row {r}: ") for r, o in enumerate(observations)])
        else:
            return self.observations(_as_array(observations))
        finite = np.isfinite(X)
        if not finite.all():
            r = int(np.argmin(finite.all(axis=1)))
            raise self._bad_value(X[r], f"row {r}: ")
        return X

    # -- decisions ---------------------------------------------------------------------

    def decide(self, observation: Any, action_mask: np.ndarray | None = None) -> Any:
        """The action for one observation (an int, a float, or an array for multi-part actions).

        ``action_mask`` (booleans, True = allowed) restricts discrete network policies
        the way MaskablePPO's ``action_masks`` does; other kinds refuse it.
        """
        return self._single(self.observation(observation), action_mask)

    def decide_batch(self, observations: Any, action_masks: np.ndarray | None = None) -> np.ndarray:
        """Actions for many observations, one row each; stateful policies take them in order."""
        X = self.observations(observations)
        if action_masks is not None:
            action_masks = np.asarray(action_masks, dtype=bool)
            if action_masks.ndim != 2 or action_masks.shape[0] != X.shape[0]:
                raise ObservationError(
                    f"action_masks has shape {action_masks.shape}, expected ({X.shape[0]}, n_actions)"
                )
        actions: np.ndarray = self._policy.batch(X, action_masks)
        return actions

    def reset(self) -> None:
        """Forget the windows, counters and random state of a stateful policy (a new episode)."""
        self._policy.reset()

    # -- what an action means ----------------------------------------------------------

    @property
    def action_components(self) -> tuple[str, ...]:
        """The names of the action's components (``spec["action"]["components"]``), empty when not recorded."""
        components = self.spec.get("action", {}).get("components") or []
        return tuple(str(c.get("name")) for c in components if isinstance(c, Mapping))

    def action_values(self, action: Any) -> dict[str, Any]:
        """What ``action`` (as :meth:`decide` returns it) stands for, by component name.

        Each index is looked up in the environment's grid recorded in ``spec.json``
        (``action.components[k].values``): ``target_replicas`` gives a replica count,
        ``backend`` a backend name, ``admission`` a cache level (``"none"``: do not
        cache), ``routing_margin`` a Platform-v0 routing margin and ``semantic_threshold``
        a cosine-similarity threshold. For example a Platform-v0 bundle's ``[12, 3, 5]``
        becomes ``{"target_replicas": 12, "routing_margin": 0.0, "semantic_threshold": 0.9}``.

        Raises :class:`BundleError` when the bundle records no grid or a component's grid
        is ``"unknown"`` (``action.grid_source`` says why), ``ValueError`` for an index
        outside the grid or an action of the wrong length.
        """
        spec_action = self.spec.get("action", {})
        components = spec_action.get("components")
        if not isinstance(components, list) or not components:
            raise BundleError(
                "spec.json records no action grid (action.components): the bundle was exported without its "
                f"environment, or its action ({spec_action.get('type')!r}) is not an environment's action"
            )
        try:
            indices = [int(a) for a in np.asarray(action).reshape(-1).tolist()]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"action {action!r} is not a vector of integer indices ({exc})") from None
        if len(indices) != len(components):
            raise ValueError(
                f"action {action!r} has {len(indices)} component(s), the grid has {len(components)}: "
                f"{', '.join(str(c.get('name')) for c in components)}"
            )
        values: dict[str, Any] = {}
        for k, component in zip(indices, components, strict=True):
            name = str(component.get("name"))
            grid = component.get("values")
            if not isinstance(grid, list):
                raise BundleError(
                    f"spec.json: the grid of action component {name!r} is {grid!r} "
                    f"({spec_action.get('grid_source', 'no grid_source')})"
                )
            if not 0 <= k < len(grid):
                raise ValueError(f"action component {name!r} is {k}, outside its grid of {len(grid)} value(s)")
            values[name] = grid[k]
        return values


def _as_array(value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ObservationError(f"observation {value!r} is not an array of numbers ({exc})") from None


# ---------------------------------------------------------------------------------------
# Policy kinds. Each takes (policy spec, weights, feature index, bundle root) and offers
# single(x, mask), batch(X, masks) and reset(); x is the checked float64 vector.

_Weights = Mapping[str, np.ndarray]


def _no_mask(kind: str, mask: np.ndarray | None) -> None:
    if mask is not None:
        raise ObservationError(f"a {kind} policy takes no action mask")


class _Stateless:
    """Batch by looping over single decisions; nothing to reset."""

    kind = ""

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        raise NotImplementedError

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        return np.array([self.single(row, None) for row in xs])

    def reset(self) -> None:
        """Nothing to forget."""


_ACTIVATIONS: dict[str, Callable[..., Any] | None] = {"tanh": np.tanh, "relu": None, "identity": None}


class _MLP:
    """Normalise, clip, dense layers in float32 (as torch), then the action head."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        n_layers = int(policy["layers"])
        self.activations = [str(a) for a in policy["activations"]]
        for a in self.activations:
            if a not in _ACTIVATIONS:
                raise BundleError(f"spec.json: activation {a!r} unknown; known: {', '.join(_ACTIVATIONS)}")
        self.W = [np.ascontiguousarray(weights[f"W{i}"], dtype=np.float32) for i in range(n_layers)]
        self.b = [np.ascontiguousarray(weights[f"b{i}"], dtype=np.float32) for i in range(n_layers)]
        norm = policy.get("normalisation")  # VecNormalize's running statistics, in the spec as JSON
        self.normalise = norm is not None
        if norm is not None:
            self.mean = np.asarray(norm["mean"], dtype=np.float64)
            self.std = np.sqrt(np.asarray(norm["var"], dtype=np.float64) + float(norm["epsilon"]))
            self.clip = float(norm["clip_obs"])
            # np.clip costs four times np.minimum + np.maximum on a short vector
            self.clip_high = np.full(len(self.mean), self.clip)
            self.clip_low = -self.clip_high
        self.head = str(policy["head"])
        if self.head not in ("argmax", "multi_argmax", "box", "squashed_box"):
            raise BundleError(f"spec.json: unknown network head {self.head!r}")
        self.nvec = [int(n) for n in policy.get("nvec", [])]
        self.splits = list(np.cumsum(self.nvec)[:-1]) if self.nvec else []
        if self.head in ("box", "squashed_box"):
            self.low = np.asarray(weights["action_low"], dtype=np.float32)
            self.high = np.asarray(weights["action_high"], dtype=np.float32)
        self.discrete_n = policy.get("discrete_n")
        # Preallocated buffers for the single-decision path.
        self.z = np.empty(len(self.W[0]), dtype=np.float64)
        self.x32 = np.empty(len(self.W[0]), dtype=np.float32)
        self.h = [np.empty(W.shape[1], dtype=np.float32) for W in self.W]
        self.masked = np.empty(self.W[-1].shape[1], dtype=np.float32)
        self.zero = np.float32(0.0)
        self.plan = [
            (W, b, out, act == "tanh", act == "relu")
            for W, b, out, act in zip(self.W, self.b, self.h, self.activations, strict=True)
        ]

    def _scores(self, x: np.ndarray) -> np.ndarray:
        if self.normalise:
            z = self.z
            np.subtract(x, self.mean, out=z)
            np.divide(z, self.std, out=z)
            np.minimum(z, self.clip_high, out=z)
            # The last clip writes float32 directly: the same rounding as a copy, one call fewer.
            np.maximum(z, self.clip_low, out=self.x32)
        else:
            self.x32[:] = x
        h = self.x32
        for W, b, out, tanh, relu in self.plan:
            np.dot(h, W, out=out)
            np.add(out, b, out=out)
            if tanh:
                np.tanh(out, out=out)
            elif relu:
                np.maximum(out, self.zero, out=out)
            h = out
        return h

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        scores = self._scores(x)
        head = self.head
        if head == "argmax":
            if mask is not None:
                scores = self._mask(scores, mask)
            return int(scores.argmax())
        if head == "multi_argmax":
            if mask is not None:
                scores = self._mask(scores, mask)
            return np.array([int(part.argmax()) for part in np.split(scores, self.splits)], dtype=np.int64)
        action = self._continuous(scores[None, :].copy())[0]
        return int(action) if self.discrete_n is not None else action

    def _mask(self, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scores.shape:
            raise ObservationError(f"action mask has shape {mask.shape}, expected {scores.shape}")
        out = self.masked
        out.fill(-np.inf)
        np.copyto(out, scores, where=mask)
        return out

    def _continuous(self, a: np.ndarray) -> Any:
        """Post-processing of stable-baselines3's ``predict`` for Box actions (float32 throughout)."""
        if self.head == "squashed_box":
            a = np.tanh(a)
            a = self.low + (0.5 * (a + 1.0) * (self.high - self.low))
        else:
            a = np.clip(a, self.low, self.high)
        if self.discrete_n is not None:  # servegym's DiscreteAsBox, in float64 as it computes
            n = int(self.discrete_n)
            a64 = a[:, 0].astype(np.float64)
            return np.clip(np.rint((a64 + 1.0) / 2.0 * (n - 1)), 0, n - 1).astype(np.int64)
        return a

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        if self.normalise:
            xs = np.clip((xs - self.mean) / self.std, -self.clip, self.clip)
        h = xs.astype(np.float32)
        for W, b, act in zip(self.W, self.b, self.activations, strict=True):
            h = h @ W + b
            if act == "tanh":
                h = np.tanh(h)
            elif act == "relu":
                h = np.maximum(h, 0.0)
        if self.head in ("argmax", "multi_argmax"):
            if masks is not None:
                if masks.shape[1] != h.shape[1]:
                    raise ObservationError(f"action_masks has {masks.shape[1]} columns, expected {h.shape[1]}")
                h = np.where(masks, h, -np.inf)
            if self.head == "argmax":
                picks: np.ndarray = h.argmax(axis=1)
                return picks
            return np.stack([part.argmax(axis=1) for part in np.split(h, self.splits, axis=1)], axis=1)
        _no_mask("continuous", masks)
        out: np.ndarray = self._continuous(h)
        return out

    def reset(self) -> None:
        """Nothing to forget."""


class _Linear:
    """scikit-learn linear models: ``X @ coef + intercept``; classifiers take the best class."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        self.coef = np.asarray(weights["coef"], dtype=np.float64)  # (n_features, n_outputs)
        self.intercept = np.asarray(weights["intercept"], dtype=np.float64)
        self.output = str(policy["output"])  # "value" or "class"
        self.classes = list(policy.get("classes", []))
        self.scalar = bool(policy.get("scalar", True))
        if self.output == "value" and self.scalar:
            # A regressor fitted on a 1-D target has a 1-D coef_: X @ coef is the product scikit-learn
            # computes (a matrix-vector product, not a matrix-matrix one), so the sums round alike.
            self.coef = np.ascontiguousarray(self.coef[:, 0])

    def _out(self, raw: np.ndarray) -> Any:
        if self.output == "value":
            return raw if raw.ndim == 1 else raw[:, 0] if self.scalar else raw
        picks = (raw[:, 0] > 0).astype(np.int64) if raw.shape[1] == 1 else raw.argmax(axis=1)
        return np.asarray(self.classes)[picks]

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask("linear", mask)
        out = self._out(x[None, :] @ self.coef + self.intercept)[0]
        return out.item() if isinstance(out, np.generic) else out

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask("linear", masks)
        out: np.ndarray = self._out(xs @ self.coef + self.intercept)
        return out

    def reset(self) -> None:
        """Nothing to forget."""


class _Trees:
    """Decision trees, random forests and gradient boosting, as scikit-learn evaluates them.

    Every tree's nodes are concatenated: ``feature``, ``threshold``, ``left``, ``right``
    (global node ids, -1 at a leaf) and ``value`` (leaf outputs); ``roots`` indexes each
    tree's root. Features are compared in float32, as scikit-learn does.
    ``combine``: ``mean`` (forests, single trees) or ``sum`` (boosting: ``init`` plus
    ``learning_rate`` times each stage's value, added in stage order).
    """

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        self.feature = np.asarray(weights["feature"], dtype=np.int64)
        self.threshold = np.asarray(weights["threshold"], dtype=np.float64)
        self.left = np.asarray(weights["left"], dtype=np.int64)
        self.right = np.asarray(weights["right"], dtype=np.int64)
        self.value = np.asarray(weights["value"], dtype=np.float64)  # (n_nodes, n_outputs)
        self.roots = np.asarray(weights["roots"], dtype=np.int64)
        self.combine = str(policy["combine"])
        self.output = str(policy["output"])  # "value" or "class"
        self.classes = list(policy.get("classes", []))
        self.learning_rate = float(policy.get("learning_rate", 1.0))
        self.init = np.asarray(weights["init"], dtype=np.float64) if "init" in weights else None
        # Python lists make the per-node walk of a single decision several times faster.
        self._f = self.feature.tolist()
        self._t = self.threshold.tolist()
        self._l = self.left.tolist()
        self._r = self.right.tolist()
        self._roots = self.roots.tolist()

    def _leaves(self, xs32: np.ndarray) -> np.ndarray:
        """Leaf node ids, shape (n, n_trees), by walking all rows down each tree level by level."""
        n = xs32.shape[0]
        nodes = np.repeat(self.roots[None, :], n, axis=0)
        rows = np.arange(n)[:, None]
        while True:
            inner = self.left[nodes] >= 0
            if not inner.any():
                return nodes
            go_left = xs32[rows, np.where(inner, self.feature[nodes], 0)] <= self.threshold[nodes]
            nodes = np.where(inner, np.where(go_left, self.left[nodes], self.right[nodes]), nodes)

    def _combine(self, values: np.ndarray) -> np.ndarray:
        """(n, n_trees, n_outputs) leaf values -> (n, n_outputs) scores."""
        if self.combine == "sum":
            assert self.init is not None
            raw = np.repeat(self.init[None, :], values.shape[0], axis=0)
            for k in range(values.shape[1]):  # stage order, as scikit-learn adds them
                raw += self.learning_rate * values[:, k, :]
            return raw
        total = values[:, 0, :].copy()
        for k in range(1, values.shape[1]):
            total += values[:, k, :]
        mean: np.ndarray = total / values.shape[1]
        return mean

    def _out(self, scores: np.ndarray) -> Any:
        if self.output == "value":
            return scores[:, 0] if scores.shape[1] == 1 else scores
        if self.combine == "sum" and scores.shape[1] == 1:  # binary boosting: the sign of the log-odds
            picks = (scores[:, 0] > 0).astype(np.int64)
        else:
            picks = scores.argmax(axis=1)
        return np.asarray(self.classes)[picks]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The combined leaf values of one observation, shape (1, n_outputs) (boosting: raw log-odds)."""
        xs = x.astype(np.float32).tolist()
        f, t, left, right = self._f, self._t, self._l, self._r
        leaves = []
        for node in self._roots:
            while left[node] >= 0:
                node = left[node] if xs[f[node]] <= t[node] else right[node]
            leaves.append(node)
        return self._combine(self.value[leaves][None, :, :])

    def scores_batch(self, xs: np.ndarray) -> np.ndarray:
        """The combined leaf values of many observations, shape (n, n_outputs)."""
        # float32 values compared against float64 thresholds, as scikit-learn's trees do
        return self._combine(self.value[self._leaves(xs.astype(np.float32).astype(np.float64))])

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask("tree", mask)
        out = self._out(self.scores(x))[0]
        return out.item() if isinstance(out, np.generic) else out

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask("tree", masks)
        out: np.ndarray = self._out(self.scores_batch(xs))
        return out

    def reset(self) -> None:
        """Nothing to forget."""


class _Onnx:
    """Any other scikit-learn model, through onnxruntime (needed only for this kind)."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        try:
            import onnxruntime  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise BundleError(
                "this bundle's policy runs through its ONNX graph: install onnxruntime (pip install onnxruntime)"
            ) from None
        if root is None:
            raise BundleError("an onnx policy is loaded from a bundle directory")
        self.session = onnxruntime.InferenceSession(
            str(Path(root) / str(policy["onnx_file"])), providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.output = str(policy.get("onnx_output", self.session.get_outputs()[0].name))

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask("onnx", masks)
        out = self.session.run([self.output], {self.input: xs.astype(np.float32)})[0]
        result: np.ndarray = np.asarray(out).reshape(len(xs), -1)
        return result[:, 0] if result.shape[1] == 1 else result

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        out = self.batch(x[None, :], mask)[0]
        return out.item() if isinstance(out, np.generic) else out

    def reset(self) -> None:
        """Nothing to forget."""


# -- heuristics --------------------------------------------------------------------------
# Each replays the decision rule of servegym.policies exactly (same arithmetic, same
# float32-derived inputs, same windows), so the parity tests can demand equal actions.

_CEIL_SLACK = 1e-6
_DAY_S = 86_400.0
_TIME_OF_DAY_SLACK_S = 0.01


def _ceil(x: float) -> int:
    """``math.ceil`` forgiving float32 rounding just above an integer (as servegym's scaling policies)."""
    return math.ceil(x - _CEIL_SLACK * max(1.0, abs(x)))


class _Scaling(_Stateless):
    """Shared by the scaling rules: pool bounds and features by name."""

    kind = "scaling"
    needs: tuple[str, ...] = ()

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        p = policy["params"]
        self.p = p
        self.min_replicas = int(p["min_replicas"])
        self.max_replicas = int(p["max_replicas"])
        self.slots_per_replica = int(p["slots_per_replica"])
        self.interval_s = float(p["interval_s"])
        missing = [n for n in self.needs if n not in index]
        if missing:
            raise BundleError(f"spec.json: the {policy['kind']} policy needs feature(s) {', '.join(missing)}")
        self.at = {n: index[n] for n in self.needs}

    def _bound(self, replicas: int) -> int:
        return min(max(int(replicas), self.min_replicas), self.max_replicas)


class _StaticScaling(_Scaling):
    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.replicas = int(self.p["replicas"])

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return self.replicas


class _HPA(_Scaling):
    """Kubernetes HPA: tolerance, scale-down stabilisation window, scale-up rate limit."""

    needs = ("utilisation", "ready_replicas", "target_replicas", "arrival_rate_rps", "queue_len")

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        p = self.p
        self.target_utilisation = float(p["target_utilisation"])
        self.tolerance = float(p["tolerance"])
        self.scale_down_stabilisation_s = float(p["scale_down_stabilisation_s"])
        self.scale_up_pods = int(p["scale_up_pods"])
        self.scale_up_percent = float(p["scale_up_percent"])
        self.scale_up_period_s = float(p["scale_up_period_s"])
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.recommendations: deque[tuple[int, int]] = deque()
        self.scale_ups: deque[tuple[int, int]] = deque()

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        at = self.at
        utilisation = float(x[at["utilisation"]])
        current = round(float(x[at["target_replicas"]]))
        ready = round(float(x[at["ready_replicas"]]))
        step, interval = self.step, self.interval_s
        self.step += 1

        # The recommendation (replicas still starting count at zero usage, on a scale-up only).
        ratio = utilisation / self.target_utilisation
        starting = max(current - ready, 0)
        if ready == 0:
            desired = current
            if float(x[at["arrival_rate_rps"]]) > 0 or float(x[at["queue_len"]]) > 0:
                desired = max(desired, 1)
        elif starting == 0 or ratio <= 1.0:
            desired = current if abs(ratio - 1.0) <= self.tolerance else _ceil(ratio * ready)
        else:
            ratio_all = ratio * ready / (ready + starting)
            if abs(ratio_all - 1.0) <= self.tolerance or ratio_all < 1.0:
                desired = current
            else:
                desired = max(_ceil(ratio_all * (ready + starting)), current)

        window = self.recommendations
        while window and (step - window[0][0]) * interval >= self.scale_down_stabilisation_s:
            window.popleft()
        stabilised = min(current, max([desired] + [r for _, r in window])) if desired < current else desired
        window.append((step, desired))

        if stabilised > current:
            period = max(self.scale_up_period_s, interval)
            periods = period / self.scale_up_period_s
            events = self.scale_ups
            while events and (step - events[0][0]) * interval >= period:
                events.popleft()
            start = current - sum(added for _, added in events)
            limit = max(
                start + math.floor(self.scale_up_pods * periods),
                math.ceil(start * (1.0 + self.scale_up_percent / 100.0 * periods)),
            )
            stabilised = min(stabilised, max(limit, current))

        target = self._bound(stabilised)
        if target > current:
            self.scale_ups.append((step, target - current))
        return target


class _KPA(_Scaling):
    """Knative KPA: stable and panic windows over observed concurrency."""

    needs = ("utilisation", "ready_replicas", "queue_len")

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        p = self.p
        self.target_concurrency = float(p["target_concurrency"])
        self.stable_window_s = float(p["stable_window_s"])
        self.panic_threshold = float(p["panic_threshold"])
        self.max_scale_up_rate = float(p["max_scale_up_rate"])
        self.max_scale_down_rate = float(p["max_scale_down_rate"])
        self.stable_intervals = int(p["stable_intervals"])
        self.panic_intervals = int(p["panic_intervals"])
        self.reset()

    def reset(self) -> None:
        self.concurrency: deque[float] = deque(maxlen=self.stable_intervals)
        self.step = 0
        self.panic_since: int | None = None
        self.max_panic = 0

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        at = self.at
        step = self.step
        self.step += 1
        ready = round(float(x[at["ready_replicas"]]))
        history = self.concurrency
        history.append(float(x[at["utilisation"]]) * ready * self.slots_per_replica + float(x[at["queue_len"]]))
        stable = sum(history) / len(history)
        recent = list(history)[-self.panic_intervals :]
        panic = sum(recent) / len(recent)

        pods = max(1, ready)
        most = math.ceil(self.max_scale_up_rate * pods)
        least = math.floor(pods / self.max_scale_down_rate)
        wanted_stable = _ceil(stable / self.target_concurrency)
        wanted_panic = _ceil(panic / self.target_concurrency)
        desired_stable = min(max(wanted_stable, least), most)
        desired_panic = min(max(wanted_panic, least), most)

        if step == 0 and ready > 1:  # Knative starts in panic above one pod: the initial scale holds
            self.panic_since, self.max_panic = -1, ready
        if wanted_panic / pods >= self.panic_threshold:
            self.panic_since = step
        elif self.panic_since is not None and (step - self.panic_since) * self.interval_s > self.stable_window_s:
            self.panic_since = None
            self.max_panic = 0

        desired = desired_stable
        if self.panic_since is not None:
            desired = max(desired, desired_panic)
            if desired > self.max_panic:
                self.max_panic = desired
            else:
                desired = self.max_panic
        return self._bound(desired)


class _StepScaling(_Scaling):
    """AWS step scaling with a cooldown; ``steps`` are (lower, upper, adjustment), upper None = unbounded."""

    needs = ("utilisation", "target_replicas")

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.steps = [(float(lo), math.inf if hi is None else float(hi), int(adj)) for lo, hi, adj in self.p["steps"]]
        self.cooldown_s = float(self.p["cooldown_s"])
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.last_change: int | None = None

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        step = self.step
        self.step += 1
        current = round(float(x[self.at["target_replicas"]]))
        if self.last_change is not None and (step - self.last_change) * self.interval_s < self.cooldown_s:
            return self._bound(current)
        utilisation = float(x[self.at["utilisation"]])
        for lower, upper, adjustment in self.steps:
            if lower <= utilisation < upper:
                target = self._bound(current + adjustment)
                if target != current:
                    self.last_change = step
                return target
        return self._bound(current)


class _ScheduledScaling(_Scaling):
    """Replicas by time of day, decoded from ``time_of_day_sin`` / ``time_of_day_cos``."""

    needs = ("time_of_day_sin", "time_of_day_cos")

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.starts = [float(s) for s in self.p["starts_s"]]
        self.replicas = [int(r) for r in self.p["replicas"]]

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        angle = math.atan2(float(x[self.at["time_of_day_sin"]]), float(x[self.at["time_of_day_cos"]]))
        now = (angle % (2.0 * math.pi)) / (2.0 * math.pi) * _DAY_S + _TIME_OF_DAY_SLACK_S
        if now >= _DAY_S:
            now -= _DAY_S
        return self.replicas[bisect.bisect_right(self.starts, now) - 1]


class _Router(_Stateless):
    """Shared by the routers: per-backend feature positions, in backend order."""

    kind = "routing"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        p = policy["params"]
        self.p = p
        self.backends = [str(b) for b in p["backend_names"]]
        self.n_backends = len(self.backends)
        try:
            self.busy = [index[f"busy_{b}"] for b in self.backends]
            self.capability = [index[f"capability_{b}"] for b in self.backends]
            self.price = [index[f"usd_per_mtok_out_{b}"] for b in self.backends]
            self.difficulty = index["difficulty"]
        except KeyError as exc:
            raise BundleError(f"spec.json: the router needs feature {exc}") from None


class _RoundRobin(_Router):
    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.next = 0

    def reset(self) -> None:
        self.next = 0

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        b = self.next
        self.next = (b + 1) % self.n_backends
        return b


class _RandomRouter(_Router):
    """Uniform random backend from numpy's default generator, re-seeded on reset."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.seed = self.p["seed"]
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return int(self.rng.integers(self.n_backends))


class _PowerOfTwo(_RandomRouter):
    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        if self.n_backends == 1:
            return 0
        a, b = self.rng.choice(self.n_backends, size=2, replace=False)
        return int(a) if x[self.busy[a]] <= x[self.busy[b]] else int(b)


class _ArgRouter(_Router):
    """Join-shortest-queue, cheapest or strongest: the arg-min/max of one per-backend feature."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        kind = str(policy["kind"])
        self.columns = {"jsq": self.busy, "cheapest": self.price, "strongest": self.capability}[kind]
        self.pick: Callable[..., Any] = np.argmax if kind == "strongest" else np.argmin

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return int(self.pick(x[self.columns]))

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        out: np.ndarray = self.pick(xs[:, self.columns], axis=1)
        return out


class _Cascade(_Router):
    """The weakest backend able to take the request's difficulty, else the strongest."""

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        self.margin = float(self.p["margin"])
        fixed = self.p["thresholds"]
        self.fixed = np.array([fixed.get(b, np.nan) for b in self.backends], dtype=np.float64)
        self.derived = np.isnan(self.fixed)

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        capability = x[self.capability]
        highest = np.where(self.derived, capability - self.margin, self.fixed)
        difficulty = float(x[self.difficulty])
        for b in np.argsort(capability, kind="stable"):
            if highest[b] >= difficulty:
                return int(b)
        return int(np.argmax(capability))


class _Constant(_Stateless):
    """Admit-all (1), admit-none (0) or a fixed semantic threshold: the same answer every time."""

    kind = "constant"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        self.value = policy["params"]["value"]

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return self.value


class _FrequencyAdmission(_Stateless):
    """Admit (1) once a phrasing has been requested ``min_requests`` times, else 0."""

    kind = "admission"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        self.min_requests = int(policy["params"]["min_requests"])
        if "key_requests" not in index:
            raise BundleError("spec.json: frequency_admission needs the feature key_requests")
        self.at = index["key_requests"]

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return 1 if x[self.at] >= self.min_requests else 0

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        return (xs[:, self.at] >= self.min_requests).astype(np.int64)


# -- learned policies of servegym.agents ------------------------------------------------
# Each replays its policy's act() with the same numpy operations on arrays of the same
# shapes (so vectorised transcendental functions round alike), its scikit-learn models
# evaluated by the native kinds above. Nested models keep their arrays in weights.npz
# under a prefix ("h1__feature", "admission__threshold", ...).


def _nested(spec: Mapping[str, Any], weights: _Weights, prefix: str, index: Mapping[str, int], root: Any) -> Any:
    """The policy kind ``spec`` describes, built from the weights stored under ``prefix``."""
    kind = str(spec["kind"])
    factory = _KINDS.get(kind)
    if factory is None:
        raise BundleError(
            f"spec.json: unknown nested policy kind {kind!r}; this runtime knows {', '.join(sorted(_KINDS))}"
        )
    own = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    return factory(spec, own, index, root)


def _positions(index: Mapping[str, int], names: Sequence[str], kind: str) -> list[int]:
    missing = [n for n in names if n not in index]
    if missing:
        raise BundleError(f"spec.json: the {kind} policy needs feature(s) {', '.join(missing)}")
    return [index[n] for n in names]


class _Forecaster:
    """The upper prediction bounds of servegym's conformal ``WorkloadForecaster``, or its Holt fallback."""

    def __init__(self, spec: Mapping[str, Any], weights: _Weights, root: Any) -> None:
        self.horizon = int(spec["horizon"])
        self.lags = int(spec["lags"])
        self.interval_s = float(spec["interval_s"])
        self.period_s = float(spec["period_s"])
        self.use_calendar = bool(spec["use_calendar"])
        self.smoothing = float(spec["smoothing"])
        self.trend_smoothing = float(spec["trend_smoothing"])
        self.z = float(spec["normal_quantile"])  # scipy's norm.ppf(0.5 + coverage / 2), computed at export
        self.quantiles = np.asarray(spec["quantiles"], dtype=np.float64)
        self.models = [_nested(m, weights, f"h{h}__", {}, root) for h, m in enumerate(spec["models"], start=1)]
        self.fitted = len(self.models) == self.horizon

    def _noise_scale(self, anchor: np.ndarray) -> np.ndarray:
        return np.asarray(np.sqrt((np.maximum(anchor, 0.0) + 1.0 / self.interval_s) / self.interval_s))

    def upper(self, rates: np.ndarray, time_s: float, steps: int) -> np.ndarray:
        """Upper bounds for 1..``steps`` intervals after ``rates`` (ending at ``time_s``)."""
        if not self.fitted or len(rates) < self.lags:
            return self._fallback_upper(rates)[:steps]
        window = rates[None, -self.lags :]
        end_s = np.array([time_s])
        uppers = []
        for h in range(1, steps + 1):
            anchor = window.mean(axis=1)
            scale = self._noise_scale(anchor)
            columns = [(window - anchor[:, None]) / scale[:, None]]
            if self.use_calendar:
                phase = 2.0 * np.pi * ((end_s + h * self.interval_s) % self.period_s) / self.period_s
                columns += [np.sin(phase), np.cos(phase)]
            X = np.column_stack(columns)
            mean = np.maximum(anchor + scale * self.models[h - 1].batch(X, None), 0.0)
            uppers.append(mean + self.quantiles[h - 1] * scale)
        return np.concatenate(uppers)

    def _fallback_upper(self, rates: np.ndarray) -> np.ndarray:
        """Holt's linear exponential smoothing, with intervals from its one-step errors (or Poisson noise)."""
        level, trend = rates[0], 0.0
        errors = []
        for x in rates[1:]:
            errors.append(x - (level + trend))
            previous = level
            level = self.smoothing * x + (1 - self.smoothing) * (level + trend)
            trend = self.trend_smoothing * (level - previous) + (1 - self.trend_smoothing) * trend
        steps = np.arange(1, self.horizon + 1)
        mean = np.maximum(level + steps * trend, 0.0)
        sigma = float(np.std(errors)) if len(errors) >= 5 else float(self._noise_scale(np.array([level]))[0])
        result: np.ndarray = mean + self.z * sigma * np.sqrt(steps)
        return result


class _PredictiveAutoscaler(_Scaling):
    """servegym's ``PredictiveAutoscaler``: replicas for the forecast's upper bound over the cold-start horizon.

    State (``reset`` clears it): the rate history (the last ``history_len`` rates), the
    clock (from the first observation's time of day) and the online work estimate.
    """

    needs = ("arrival_rate_rps", "queue_len", "utilisation", "ready_replicas", "time_of_day_sin", "time_of_day_cos")

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        super().__init__(policy, weights, index, root)
        p = self.p
        self.horizon = int(p["horizon"])
        self.learned_slot_s_per_request = float(p["slot_s_per_request"])
        self.target_utilisation = float(p["target_utilisation"])
        self.service_smoothing = float(p["service_smoothing"])
        self.saturated = float(p["saturated_utilisation"])
        self.day_s = float(p["day_s"])
        self.history_len = int(p["history_len"])
        self.forecaster = _Forecaster(policy["forecaster"], weights, root)
        if self.forecaster.horizon < self.horizon:
            raise BundleError(
                f"spec.json: the forecaster's horizon {self.forecaster.horizon} is shorter than "
                f"the policy's {self.horizon}"
            )
        self.reset()

    def reset(self) -> None:
        self.history: deque[float] = deque(maxlen=self.history_len)
        self.start_s: float | None = None
        self.steps = 0
        self.slot_s_per_request = self.learned_slot_s_per_request

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        at = self.at
        if self.start_s is None:
            angle = math.atan2(float(x[at["time_of_day_sin"]]), float(x[at["time_of_day_cos"]])) % (2.0 * math.pi)
            self.start_s = angle / (2.0 * math.pi) * self.day_s
        now_s = self.start_s + self.steps * self.interval_s
        self.steps += 1
        rate = float(x[at["arrival_rate_rps"]])
        utilisation = float(x[at["utilisation"]])
        self.history.append(rate)
        busy = utilisation * float(x[at["ready_replicas"]]) * self.slots_per_replica
        if rate > 0 and busy > 0 and utilisation < self.saturated:
            a = self.service_smoothing
            self.slot_s_per_request = (1 - a) * self.slot_s_per_request + a * busy / rate
        upper = self.forecaster.upper(np.asarray(self.history), now_s, self.horizon)
        peak_rps = float(upper[: self.horizon].max())
        queue = float(x[at["queue_len"]])
        slots = (peak_rps + queue / self.interval_s) * self.slot_s_per_request / self.target_utilisation
        return self._bound(math.ceil(slots / self.slots_per_replica - 1e-9))


class _LinearBandit(_Stateless):
    """servegym's ``LinearBanditRouter``: per-backend linear rewards, greedy, LinUCB or Thompson sampling.

    The arms' statistics are fixed (the bundle does not learn online); Thompson sampling
    draws from numpy's default generator seeded as the policy, re-seeded by ``reset``.
    """

    kind = "linear_bandit"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        p = policy["params"]
        backends = [str(b) for b in p["backend_names"]]
        self.tenants = np.array(_positions(index, [str(t) for t in p["tenant_features"]], self.kind), dtype=np.intp)
        self.prompt, self.difficulty, self.queue = _positions(
            index, ["log_prompt_tokens", "difficulty", "queue_len"], self.kind
        )
        self.busy = np.array(_positions(index, [f"busy_{b}" for b in backends], self.kind), dtype=np.intp)
        self.theta = np.asarray(weights["theta"], dtype=np.float64)
        self.A_inv = np.asarray(weights["A_inv"], dtype=np.float64)
        self.n_arms, self.dim = self.theta.shape
        if self.n_arms != len(backends) or self.dim != len(self.tenants) + 4:
            raise BundleError(
                f"weights.npz: theta has shape {self.theta.shape}, expected ({len(backends)}, {len(self.tenants) + 4})"
            )
        self.algorithm = str(p["algorithm"])
        self.alpha = float(p["alpha"])
        self.explore = bool(p["explore"])
        self.seed = p["seed"]
        self.sample = self.explore and self.algorithm == "thompson"
        self.bonus = self.explore and self.algorithm == "linucb"
        self.reset()

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        shared = np.concatenate(
            [x[self.tenants], [x[self.prompt] / 10.0, x[self.difficulty], math.log1p(max(x[self.queue], 0.0)) / 5.0]]
        )
        context = np.empty((self.n_arms, self.dim))
        context[:, :-1] = shared
        context[:, -1] = np.log1p(np.maximum(x[self.busy], 0.0)) / 5.0
        theta = self.theta
        if self.sample:
            theta = np.array(
                [self.rng.multivariate_normal(self.theta[a], self.alpha**2 * self.A_inv[a]) for a in range(self.n_arms)]
            )
        estimate = np.einsum("ad,ad->a", theta, context)
        if self.bonus:
            estimate += self.alpha * np.sqrt(np.maximum(np.einsum("ad,ade,ae->a", context, self.A_inv, context), 0.0))
        return int(np.argmax(estimate))


class _LearnedAdmission(_Stateless):
    """servegym's ``LearnedAdmission``: admit at ``admit_level`` when the boosted trees' P(reuse) >= threshold.

    P(reuse) is the logistic of the raw score, computed with ``math.exp`` as scipy's
    ``expit`` (which scikit-learn uses) computes it, so comparisons at the threshold agree.
    """

    kind = "learned_admission"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        p = policy["params"]
        self.threshold = float(p["threshold"])
        self.admit_level = int(p["admit_level"])
        self.trees = _nested(policy["classifier"], weights, "classifier__", index, root)
        if not isinstance(self.trees, _Trees) or self.trees.combine != "sum" or len(self.trees.classes) != 2:
            raise BundleError("spec.json: learned_admission needs a binary gradient-boosted tree classifier")

    def _admit(self, raw: float) -> int:
        return self.admit_level if 1.0 / (1.0 + math.exp(-raw)) >= self.threshold else 0

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        return self._admit(float(self.trees.scores(x)[0, 0]))

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        return np.array([self._admit(raw) for raw in self.trees.scores_batch(xs)[:, 0].tolist()], dtype=np.int64)


class _CachingEnv:
    """servegym's ``CachingEnvPolicy``: ``[admission, threshold_index]`` for Caching-v0's combined observation.

    At a threshold decision (``decision_is_threshold`` > 0.5) admission is 0 and the inner
    policy is not asked (so a stateful one does not advance); otherwise the inner policy
    decides on the admission features, found by name.
    """

    kind = "caching_env"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        p = policy["params"]
        names = [str(n) for n in p["admission_features"]]
        self.columns = np.array(_positions(index, names, self.kind), dtype=np.intp)
        self.flag = _positions(index, ["decision_is_threshold"], self.kind)[0]
        self.threshold_index = int(p["threshold_index"])
        self.inner = _nested(policy["admission"], weights, "admission__", {n: i for i, n in enumerate(names)}, root)

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        admit = 0 if x[self.flag] > 0.5 else int(self.inner.single(x[self.columns], None))
        return np.array([admit, self.threshold_index], dtype=np.int64)

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        out = np.zeros((len(xs), 2), dtype=np.int64)
        out[:, 1] = self.threshold_index
        asked = xs[:, self.flag] <= 0.5
        if asked.any():  # the inner policy sees its decisions in order, as one after another
            out[asked, 0] = self.inner.batch(xs[asked][:, self.columns], None)
        return out

    def reset(self) -> None:
        self.inner.reset()


class _DistilledTrees(_Stateless):
    """servegym's ``DistilledTreePolicy``: one tree per action component, or one (multi-output) regressor.

    ``action_kind``: ``discrete`` (an int), ``multi_discrete`` (an int64 array, one
    classifier per component) or ``continuous`` (a float32 array).
    """

    kind = "distilled_trees"

    def __init__(self, policy: Mapping[str, Any], weights: _Weights, index: Mapping[str, int], root: Any) -> None:
        self.action_kind = str(policy["action_kind"])
        if self.action_kind not in ("discrete", "multi_discrete", "continuous"):
            raise BundleError(f"spec.json: distilled action_kind {self.action_kind!r} unknown")
        self.trees = [_nested(t, weights, f"t{k}__", index, root) for k, t in enumerate(policy["trees"])]

    def single(self, x: np.ndarray, mask: np.ndarray | None) -> Any:
        _no_mask(self.kind, mask)
        if self.action_kind == "discrete":
            return int(self.trees[0].single(x, None))
        if self.action_kind == "multi_discrete":
            return np.array([int(t.single(x, None)) for t in self.trees], dtype=np.int64)
        return np.asarray(self.trees[0].scores(x)[0], dtype=np.float32).reshape(-1)

    def batch(self, xs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        _no_mask(self.kind, masks)
        if self.action_kind == "continuous":
            return np.asarray(self.trees[0].scores_batch(xs), dtype=np.float32)
        picks = np.column_stack([t.batch(xs, None) for t in self.trees]).astype(np.int64)
        return picks[:, 0] if self.action_kind == "discrete" else picks


_KINDS: dict[str, Callable[[Mapping[str, Any], _Weights, Mapping[str, int], Any], Any]] = {
    "mlp": _MLP,
    "linear": _Linear,
    "tree_ensemble": _Trees,
    "onnx": _Onnx,
    "static_scaling": _StaticScaling,
    "hpa": _HPA,
    "kpa": _KPA,
    "step_scaling": _StepScaling,
    "scheduled_scaling": _ScheduledScaling,
    "round_robin": _RoundRobin,
    "random_router": _RandomRouter,
    "power_of_two": _PowerOfTwo,
    "jsq": _ArgRouter,
    "cheapest": _ArgRouter,
    "strongest": _ArgRouter,
    "difficulty_cascade": _Cascade,
    "admit_all": _Constant,
    "admit_none": _Constant,
    "fixed_threshold": _Constant,
    "frequency_admission": _FrequencyAdmission,
    "predictive_autoscaler": _PredictiveAutoscaler,
    "linear_bandit": _LinearBandit,
    "learned_admission": _LearnedAdmission,
    "caching_env": _CachingEnv,
    "distilled_trees": _DistilledTrees,
}
