"""stable-baselines3 learners (PPO, A2C, DQN, SAC, MaskablePPO) and the policy they produce.

:func:`build_model` turns an algorithm name and hyperparameters into an SB3 model on a
vectorised servegym environment (optionally behind ``VecNormalize``), after checking
that the algorithm can act in that environment's action space and that every
hyperparameter is one the algorithm accepts — so a typo fails before training, naming
the key. :class:`SB3Policy` wraps a trained model behind the common policy interface
(``act``/``reset``), applying the frozen observation normalisation and the action
post-processing the model was trained with, so evaluation, distillation and export all
see exactly what the network decides.

SAC needs a continuous action space; on a ``Discrete(n)`` environment it acts through
:class:`DiscreteAsBox`, which maps ``a ∈ [-1, 1]`` to the nearest of the ``n`` actions
(for Autoscaling-v0: a target replica count). DQN needs ``Discrete``; PPO and A2C take
``Discrete`` and ``MultiDiscrete``; MaskablePPO additionally uses the environment's
``action_masks()`` (Autoscaling-v0 and Platform-v0 mask replica targets below the pool's
minimum).

:meth:`SB3Policy.load` never unpickles: SB3 stores the spaces, the policy class and some
settings of a model as pickles inside ``model.zip``, and servegym loads it with each of
them replaced from its own JSON records in ``sb3.json`` (or, for directories written
before those records, from the layout and the readable copy SB3 keeps beside each pickle).

SB3 checks the training budget only between collections of experience: a rollout of
``n_steps`` per environment for the on-policy learners, ``train_freq`` steps per
environment for the off-policy ones. :func:`rollout_timesteps` gives that size, so a
budget that is not a multiple of it can be reported instead of silently rounded up.
"""

from __future__ import annotations

import collections.abc
import copy
import importlib
import inspect
import io
import json
import pickle
import re
import sys
import types
import typing
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from servegym.agents.io import PolicyLoadError, layout_from_json, layout_to_json
from servegym.agents.seeds import training_seed
from servegym.envs.features import Layout
from servegym.sim.config import ConfigError

__all__ = [
    "ALGORITHMS",
    "DiscreteAsBox",
    "SB3Policy",
    "accepted_hyperparams",
    "build_model",
    "check_algorithm",
    "load_model",
    "make_vec_env",
    "model_record",
    "rollout_timesteps",
]

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "dqn": DQN,
    "sac": SAC,
    "maskable_ppo": MaskablePPO,
}
"""Short names of the SB3 algorithms servegym trains."""

_SPACES: dict[str, tuple[type[spaces.Space[Any]], ...]] = {
    "ppo": (spaces.Discrete, spaces.MultiDiscrete, spaces.Box),
    "a2c": (spaces.Discrete, spaces.MultiDiscrete, spaces.Box),
    "dqn": (spaces.Discrete,),
    "sac": (spaces.Box, spaces.Discrete),  # Discrete through DiscreteAsBox
    "maskable_ppo": (spaces.Discrete, spaces.MultiDiscrete),
}


class DiscreteAsBox(gym.ActionWrapper[np.ndarray, np.ndarray, Any]):
    """Present a ``Discrete(n)`` action space as ``Box(-1, 1, (1,))`` for continuous-action learners.

    ``a`` maps to ``round((a + 1) / 2 * (n - 1))``, clipped to ``0..n-1``: the ends of
    the interval are the first and last action and the order of actions is kept, which is
    what makes a continuous policy sensible on an ordered choice such as a replica target.
    """

    def __init__(self, env: gym.Env[np.ndarray, Any]) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError(f"DiscreteAsBox wraps a Discrete action space, not {env.action_space}")
        self.n = int(env.action_space.n)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def action(self, action: np.ndarray) -> int:
        return to_discrete(action, self.n)


def to_discrete(action: np.ndarray, n: int) -> int:
    """The ``Discrete(n)`` action a ``[-1, 1]`` continuous action stands for (see :class:`DiscreteAsBox`)."""
    a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
    return int(np.clip(np.rint((a + 1.0) / 2.0 * (n - 1)), 0, n - 1))


def check_algorithm(algo: str, action_space: spaces.Space[Any], where: str = "agent.algo") -> None:
    """Fail with a clear error unless ``algo`` is known and can act in ``action_space``."""
    if algo not in ALGORITHMS:
        raise ConfigError(f"{where}: unknown algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")
    if not isinstance(action_space, _SPACES[algo]):
        allowed = ", ".join(s.__name__ for s in _SPACES[algo])
        raise ConfigError(
            f"{where}: {algo} cannot act in the action space {action_space} (it supports {allowed}); "
            f"choose another algorithm for this environment"
        )


# Constructor arguments servegym sets itself (seed from the top-level ``seed``, device, logging):
# not hyperparameters, so neither accepted under agent.hyperparams nor listed as allowed.
_SET_BY_SERVEGYM = frozenset(
    {"self", "policy", "env", "_init_setup_model", "seed", "device", "verbose", "tensorboard_log"}
)


def accepted_hyperparams(algo: str) -> list[str]:
    """The hyperparameters of ``algo`` a config may set: its constructor's arguments, minus servegym's own."""
    return sorted(set(inspect.signature(ALGORITHMS[algo].__init__).parameters) - _SET_BY_SERVEGYM)


def _type_hints(cls: type) -> dict[str, Any]:
    """The constructor's argument types (SB3 names ``VecEnv`` only under TYPE_CHECKING)."""
    module = sys.modules[cls.__module__]
    try:
        return typing.get_type_hints(cls.__init__, globalns=vars(module), localns={"VecEnv": VecEnv})  # type: ignore[misc]
    except (NameError, TypeError):
        return {}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value (YAML: numbers, strings, lists, mappings, null) can be an argument of type ``hint``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, Mapping)
    if origin is tuple:  # train_freq: (1, "episode"), a list in YAML
        args = typing.get_args(hint)
        return isinstance(value, list | tuple) and len(value) == len(args) and all(map(_matches, value, args))
    if origin is type or hint is type:
        return isinstance(value, type)
    if origin is not None:  # Callable[...] and other generics: never written in YAML
        return callable(value) if origin is collections.abc.Callable else False
    return isinstance(value, hint) if isinstance(hint, type) else True


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _describe(hint: Any) -> str:
    """``float | Callable[[float], float]`` as a config value: 'a number'."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    words: list[str] = []
    for arg in args:
        arg_origin = typing.get_origin(arg)
        if arg in _TYPE_WORDS:
            words.append(_TYPE_WORDS[arg])
        elif arg is dict or arg_origin is dict:
            words.append("a mapping")
        elif arg_origin is tuple:
            words.append(
                f"a list like [{', '.join(_TYPE_WORDS.get(a, str(a)).split()[-1] for a in typing.get_args(arg))}]"
            )
    return " or ".join(dict.fromkeys(words)) or str(hint)


def check_hyperparams(algo: str, hyperparams: Mapping[str, Any], where: str = "agent.hyperparams") -> None:
    """Fail naming the key when a hyperparameter is not an argument of the algorithm, or of the wrong type.

    Types come from the constructor's annotations, so ``learning_rate=abc`` fails here,
    before a run starts, instead of deep inside SB3 once training is under way.
    """
    cls = ALGORITHMS[algo]
    accepted = accepted_hyperparams(algo)
    for key in sorted(hyperparams):
        if key not in accepted:
            hint = " (servegym sets it: use the top-level seed=N)" if key == "seed" else ""
            raise ConfigError(
                f"{where}.{key}: {cls.__name__} has no hyperparameter {key!r}{hint}; it accepts: {', '.join(accepted)}"
            )
    hints = _type_hints(cls)
    for key, value in hyperparams.items():
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"{where}.{key} = {value!r} is invalid: {cls.__name__} takes {_describe(hints[key])}")


def make_vec_env(
    env_id: str,
    env_kwargs: Mapping[str, Any],
    n_envs: int,
    seed: int,
    algo: str,
    subprocess: bool = False,
) -> VecEnv:
    """``n_envs`` copies of ``env_id`` as an SB3 VecEnv, seeded from :func:`training_seed` (``seed``) on.

    Each copy is wrapped in ``Monitor`` (episode returns for SB3's logs) and, for SAC on a
    discrete environment, in :class:`DiscreteAsBox`.
    """
    from stable_baselines3.common.monitor import Monitor

    def factory(rank: int) -> Callable[[], gym.Env[Any, Any]]:
        def make() -> gym.Env[Any, Any]:
            env: gym.Env[Any, Any] = gym.make(env_id, **dict(env_kwargs))
            if algo == "sac" and isinstance(env.action_space, spaces.Discrete):
                env = DiscreteAsBox(env)
            env = Monitor(env)
            env.reset(seed=training_seed(seed) + rank)
            return env

        return make

    fns = [factory(i) for i in range(n_envs)]
    venv: VecEnv = SubprocVecEnv(fns) if subprocess and n_envs > 1 else DummyVecEnv(fns)
    venv.seed(training_seed(seed))
    return venv


def build_model(
    algo: str,
    venv: VecEnv,
    hyperparams: Mapping[str, Any],
    seed: int,
    policy: str = "MlpPolicy",
    device: str = "cpu",
) -> BaseAlgorithm:
    """An untrained SB3 model of ``algo`` on ``venv``, after validating algorithm and hyperparameters."""
    check_algorithm(algo, venv.action_space)
    check_hyperparams(algo, hyperparams)
    try:
        # deep copy: SB3 writes into nested dicts such as policy_kwargs, which must not leak into the next model
        kwargs = copy.deepcopy(dict(hyperparams))
        return ALGORITHMS[algo](policy, venv, seed=seed, device=device, verbose=0, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"agent.hyperparams: {ALGORITHMS[algo].__name__} rejected them: {exc}") from exc


def rollout_timesteps(model: BaseAlgorithm) -> int | None:
    """Timesteps one collection of experience takes; ``learn`` only stops at a multiple of it.

    On-policy learners (PPO, A2C, MaskablePPO) collect a rollout of ``n_steps`` on each of
    ``n_envs`` environments; off-policy learners (DQN, SAC) ``train_freq`` steps on each,
    when ``train_freq`` counts steps. None when it counts episodes, whose length is not
    known in advance.
    """
    if isinstance(model, OnPolicyAlgorithm):
        return int(model.n_steps) * int(model.n_envs)
    if isinstance(model, OffPolicyAlgorithm):
        freq: Any = model.train_freq  # typed as given (int or tuple); a TrainFreq once the model is set up
        if isinstance(freq, TrainFreq) and freq.unit == TrainFrequencyUnit.STEP:
            return int(freq.frequency) * int(model.n_envs)
    return None


class SB3Policy:
    """A trained SB3 model as a servegym policy: deterministic actions on raw observations.

    Attributes an exporter reads: ``model`` (the SB3 algorithm), ``algo``, ``layout``,
    ``obs_rms`` (``(mean, var)`` of VecNormalize, or None), ``clip_obs``, ``epsilon`` and
    ``discrete_n`` (the ``n`` of :class:`DiscreteAsBox`, or None). ``act`` normalises the
    observation with the frozen statistics — ``clip((obs - mean) / sqrt(var + epsilon),
    -clip_obs, clip_obs)`` as VecNormalize does — and post-processes the network's
    action exactly as training did.
    """

    def __init__(
        self,
        model: BaseAlgorithm,
        algo: str,
        layout: Layout,
        obs_rms: tuple[np.ndarray, np.ndarray] | None = None,
        clip_obs: float = 10.0,
        epsilon: float = 1e-8,
        discrete_n: int | None = None,
        env_id: str = "",
    ) -> None:
        self.model = model
        self.algo = algo
        self.layout = layout
        self.obs_rms = obs_rms
        self.clip_obs = float(clip_obs)
        self.epsilon = float(epsilon)
        self.discrete_n = discrete_n
        self.env_id = env_id

    @classmethod
    def from_training(cls, model: BaseAlgorithm, algo: str, layout: Layout, env_id: str) -> SB3Policy:
        """Freeze a model and its VecNormalize statistics (if its env has them) into a policy."""
        venv = model.get_env()
        obs_rms = None
        clip_obs, epsilon = 10.0, 1e-8
        if isinstance(venv, VecNormalize) and venv.norm_obs:
            rms: Any = venv.obs_rms  # a RunningMeanStd: servegym observations are flat vectors
            obs_rms = (np.array(rms.mean, dtype=np.float64), np.array(rms.var, dtype=np.float64))
            clip_obs, epsilon = float(venv.clip_obs), float(venv.epsilon)
        discrete_n = None
        if algo == "sac" and venv is not None:
            wrapped = venv.get_attr("n") if venv.has_attr("n") else None
            discrete_n = int(wrapped[0]) if wrapped else None
        return cls(model, algo, layout, obs_rms, clip_obs, epsilon, discrete_n, env_id)

    def normalise(self, observation: np.ndarray) -> np.ndarray:
        """The observation as the network saw it during training."""
        obs = np.asarray(observation, dtype=np.float32)
        if self.obs_rms is None:
            return obs
        mean, var = self.obs_rms
        scaled = np.clip((obs - mean) / np.sqrt(var + self.epsilon), -self.clip_obs, self.clip_obs)
        return np.asarray(scaled, dtype=np.float32)

    def act(self, observation: np.ndarray, action_masks: np.ndarray | None = None) -> Any:
        """The deterministic action for one raw observation (masks only matter for MaskablePPO)."""
        from servegym.policies.base import checked_observation

        obs = self.normalise(checked_observation(observation, self.layout, f"SB3Policy({self.algo})"))
        if self.algo == "maskable_ppo":
            action, _ = self.model.predict(obs, deterministic=True, action_masks=action_masks)  # type: ignore[call-arg]
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        if self.discrete_n is not None:
            return to_discrete(action, self.discrete_n)
        if np.ndim(action) == 0:
            return int(action)
        return np.asarray(action)

    def reset(self) -> None:
        """Stateless: a feed-forward network remembers nothing between decisions."""

    def save(self, directory: Path) -> None:
        """Write ``model.zip`` (SB3's format), ``obs_rms.npz`` and ``sb3.json`` into ``directory``.

        ``sb3.json`` records, as JSON, what SB3 pickles into ``model.zip`` and acting needs
        (``model``: policy class, spaces, policy kwargs, clip range, train frequency), so
        :meth:`load` never unpickles.
        """
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / "model.zip")
        if self.obs_rms is not None:
            np.savez(directory / "obs_rms.npz", mean=self.obs_rms[0], var=self.obs_rms[1])
        meta = {
            "algo": self.algo,
            "env_id": self.env_id,
            "clip_obs": self.clip_obs,
            "epsilon": self.epsilon,
            "discrete_n": self.discrete_n,
            "layout": layout_to_json(self.layout),
            "model": model_record(self.model),
        }
        (directory / "sb3.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> SB3Policy:
        """Read a policy written by :meth:`save`, without unpickling anything (see :func:`load_model`)."""
        meta_path = directory / "sb3.json"
        meta = json.loads(meta_path.read_text())
        algo = meta["algo"]
        if algo not in ALGORITHMS:
            raise PolicyLoadError(f"{meta_path}: unknown algorithm {algo!r}; known: {', '.join(ALGORITHMS)}")
        layout = layout_from_json(meta["layout"])
        model = load_model(directory / "model.zip", algo, layout, meta.get("model"))
        obs_rms = None
        if (directory / "obs_rms.npz").exists():
            try:
                with np.load(directory / "obs_rms.npz", allow_pickle=False) as f:
                    obs_rms = (f["mean"], f["var"])
            except ValueError as exc:  # arrays of objects need pickle: refused
                raise PolicyLoadError(f"{directory / 'obs_rms.npz'}: refused, {exc}") from None
        return cls(model, algo, layout, obs_rms, meta["clip_obs"], meta["epsilon"], meta["discrete_n"], meta["env_id"])


# -- loading model.zip without unpickling -----------------------------------------------------

_TORCH_CLASSES = (
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.activation.ELU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.GELU",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.rmsprop.RMSprop",
    "torch.optim.sgd.SGD",
)
"""Classes a policy kwarg may name (activation functions, optimizers): looked up by name, never unpickled."""

_BEFORE_LEARN = frozenset(
    {
        "_last_obs",
        "_last_episode_starts",
        "_last_original_obs",
        "ep_info_buffer",
        "ep_success_buffer",
        "rollout_buffer_class",
        "replay_buffer_class",
        "lr_schedule",
        "exploration_schedule",
    }
)
"""Pickled entries of ``model.zip`` a loaded model gets as SB3 sets them before ``learn``: None.

Rollout state, episode statistics, default buffers (the only ones servegym trains
with), and schedules ``_setup_model`` rebuilds from the JSON hyperparameters.
"""


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _space_record(space: spaces.Space[Any]) -> dict[str, Any] | None:
    """``space`` as JSON, for the spaces servegym's envs have (None for any other)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return {"type": "multi_discrete", "nvec": space.nvec.tolist(), "start": space.start.tolist()}
    if isinstance(space, spaces.Box):
        return {
            "type": "box",
            "shape": list(space.shape),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "dtype": str(space.dtype),
        }
    return None


def _space(record: dict[str, Any]) -> spaces.Space[Any]:
    kind = record["type"]
    if kind == "discrete":
        return spaces.Discrete(int(record["n"]), start=int(record.get("start", 0)))
    if kind == "multi_discrete":
        return spaces.MultiDiscrete(np.array(record["nvec"], np.int64), start=record.get("start"))
    if kind == "box":
        dtype = np.dtype(str(record["dtype"]))
        if dtype.kind != "f":
            raise ValueError(f"a Box of dtype {dtype}")
        shape = tuple(int(n) for n in record["shape"])
        low = np.array(record["low"], dtype).reshape(shape)
        return spaces.Box(low, np.array(record["high"], dtype).reshape(shape), shape, dtype)
    raise ValueError(f"unknown space type {kind!r}")


def _kwarg_record(value: Any) -> Any:
    """A policy kwarg as JSON: a class by name (``{"class": ...}``), containers item by item."""
    if isinstance(value, type):
        return {"class": _class_name(value)}
    if isinstance(value, dict):
        return {str(k): _kwarg_record(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_kwarg_record(v) for v in value]
    return value


def model_record(model: BaseAlgorithm) -> dict[str, Any]:
    """What SB3 pickles into ``model.zip`` that acting needs, as JSON (servegym's record for :func:`load_model`)."""
    aliases = [alias for alias, policy_cls in model.policy_aliases.items() if type(model.policy) is policy_cls]
    kwargs = _kwarg_record(model.policy_kwargs)
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):  # an object JSON cannot name: loading falls back to SB3's copy, or refuses
        kwargs = None
    record: dict[str, Any] = {
        "policy": aliases[0] if aliases else None,
        "observation_space": _space_record(model.observation_space),
        "action_space": _space_record(model.action_space),
        "policy_kwargs": kwargs,
    }
    clip_range = getattr(model, "clip_range", None)
    if callable(clip_range) and clip_range(1.0) == clip_range(0.0):  # a constant; a schedule is not recorded
        record["clip_range"] = float(clip_range(1.0))
    train_freq = getattr(model, "train_freq", None)
    if isinstance(train_freq, TrainFreq):
        record["train_freq"] = [int(train_freq.frequency), train_freq.unit.value]
    return record


def _readable_numbers(text: Any, dtype: type) -> list[Any]:
    """The numbers of ``str(array)`` ("[ 3  4 10]"), as SB3 writes beside a pickled space."""
    tokens = str(text).replace("[", " ").replace("]", " ").replace(",", " ").split()
    return [dtype(t) for t in tokens]


def _readable_space(entry: dict[str, Any]) -> dict[str, Any]:
    """A space record from the readable attributes SB3 keeps beside the pickle (directories before records)."""
    kind = str(entry.get(":type:", ""))
    if kind.endswith(".MultiDiscrete'>"):
        return {"type": "multi_discrete", "nvec": _readable_numbers(entry["nvec"], int)}
    if kind.endswith(".Discrete'>"):
        return {"type": "discrete", "n": int(entry["n"]), "start": int(entry.get("start", 0))}
    if kind.endswith(".Box'>"):
        return {
            "type": "box",
            "shape": json.loads(entry["_shape"]) if isinstance(entry["_shape"], str) else entry["_shape"],
            "low": _readable_numbers(entry["low"], float),
            "high": _readable_numbers(entry["high"], float),
            "dtype": str(entry["dtype"]),
        }
    raise ValueError(f"a space of {kind or 'unknown type'}")


def _readable_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    """Policy kwargs from SB3's readable copy: JSON values as they are, ``"<class 'x.Y'>"`` as a class record."""
    kwargs: dict[str, Any] = {}
    for key, value in entry.items():
        if key in (":type:", ":serialized:"):
            continue
        named = re.fullmatch(r"<class '([\w.]+)'>", value) if isinstance(value, str) else None
        kwargs[key] = {"class": named.group(1)} if named else value
    return kwargs


def _kwargs(record: Any, where: str) -> Any:
    """Policy kwargs from their JSON record, classes looked up among :data:`_TORCH_CLASSES`."""
    if isinstance(record, dict) and set(record) == {"class"}:
        name = str(record["class"])
        if name not in _TORCH_CLASSES:
            raise ValueError(f"{where} names class {name}, not one servegym loads ({', '.join(_TORCH_CLASSES)})")
        module, _, qualname = name.rpartition(".")
        return getattr(importlib.import_module(module), qualname)
    if isinstance(record, dict):
        return {k: _kwargs(v, f"{where}.{k}") for k, v in record.items()}
    if isinstance(record, list):
        return [_kwargs(v, where) for v in record]
    if isinstance(record, str) and record.startswith("<") and record.endswith(">"):
        raise ValueError(f"{where} is {record}, which SB3 could only keep as a pickle")
    return record


def _replacements(algo: str, data: dict[str, Any], layout: Layout, record: dict[str, Any]) -> dict[str, Any]:
    """For every entry SB3 pickled into ``data``, the value to use instead; ValueError naming one without."""
    cls = ALGORITHMS[algo]
    pickled = sorted(k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v)
    # SB3 never saves an env; one named in the data would be built with gym.make, importing its module
    out: dict[str, Any] = {"env": None}
    for key in pickled:
        try:
            out[key] = _replacement(cls, key, data[key], layout, record)
        except KeyError as exc:
            raise ValueError(f"entry {key!r} cannot be rebuilt: SB3's readable copy of it lacks {exc}") from None
    return out


def _replacement(
    cls: type[BaseAlgorithm], key: str, entry: dict[str, Any], layout: Layout, record: dict[str, Any]
) -> Any:
    """Pickled entry ``key`` of ``cls``'s data, from ``record``, ``layout`` or the entry's readable copy."""
    defaults = inspect.signature(cls.__init__).parameters
    if key in _BEFORE_LEARN:
        return None
    if key == "policy_class":
        alias = record.get("policy") or "MlpPolicy"  # every agent config servegym ships uses MlpPolicy
        if alias not in cls.policy_aliases:
            raise ValueError(f"policy {alias!r} is not one of {cls.__name__}'s ({', '.join(cls.policy_aliases)})")
        return cls.policy_aliases[alias]
    if key == "observation_space":
        recorded = record.get("observation_space")
        space = _space(recorded) if recorded else spaces.Box(layout.low, layout.high, dtype=np.float32)
        if space.shape != (len(layout.names),):
            raise ValueError(f"observation space {space} does not match the {len(layout.names)} features")
        return space
    if key == "action_space":
        return _space(record.get("action_space") or _readable_space(entry))
    if key == "policy_kwargs":
        recorded = record.get("policy_kwargs")
        return _kwargs(recorded if recorded is not None else _readable_kwargs(entry), "policy_kwargs")
    if key == "clip_range" and key in defaults:
        return float(record.get(key, defaults[key].default))
    if key == "train_freq" and key in defaults:
        freq = record.get(key, defaults[key].default)
        return tuple(freq) if isinstance(freq, list) else freq
    raise ValueError(f"entry {key!r} is a pickle servegym keeps no record of")


def load_model(path: Path, algo: str, layout: Layout, record: dict[str, Any] | None = None) -> BaseAlgorithm:
    """The SB3 model in ``path`` (a ``model.zip``), loaded without unpickling anything from it.

    SB3's ``load`` would unpickle (cloudpickle) every entry of the archive's ``data`` that
    is not JSON. Here each such entry is replaced (``custom_objects``) by a value servegym
    builds itself: from ``record`` (:func:`model_record`, kept in ``sb3.json``) and the
    ``layout``, or, for a directory written before that record, from the readable copy SB3
    stores beside each pickle (the action space's ``n``/``nvec``/bounds, policy kwargs
    with classes by name, looked up in :data:`_TORCH_CLASSES`). Entries only ``learn``
    uses are set as before training (:data:`_BEFORE_LEARN`; a policy directory is for
    acting, training resumes from checkpoints); a clip range or train frequency
    recorded nowhere is the algorithm's default. An entry servegym cannot replace is
    refused, not unpickled. The ``.pth`` tensors must load with torch's weights-only
    unpickler. The loaded network must match the saved weights exactly, so a wrong
    space or class fails here. Raises :class:`PolicyLoadError` naming the file.
    """
    import torch

    try:
        raw = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            data = json.loads(archive.read("data").decode())
            tensors = [name for name in archive.namelist() if Path(name).suffix == ".pth"]
            for name in tensors:  # older SB3 versions read them unrestricted: checked whatever SB3 does
                torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
    except (OSError, EOFError, KeyError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise PolicyLoadError(f"{path}: not a readable SB3 model archive ({type(exc).__name__}: {exc})") from None
    except pickle.UnpicklingError as exc:
        raise PolicyLoadError(
            f"{path}: refused, a tensor file holds more than tensors ({_first_line(exc)}); loading it could run code"
        ) from None
    if not isinstance(data, dict):
        raise PolicyLoadError(f"{path}: its data entry is not a JSON object")
    try:
        custom_objects = _replacements(algo, data, layout, record or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyLoadError(f"{path}: refused, {exc}; loading it as SB3 does would unpickle it") from None
    try:
        return ALGORITHMS[algo].load(io.BytesIO(raw), device="cpu", custom_objects=custom_objects)
    except (KeyError, RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise PolicyLoadError(f"{path}: the {algo} model does not load ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
